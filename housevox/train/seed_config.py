"""The seed's flat JSON config → housevox's LightningCLI config (model / data / trainer)."""

from pathlib import Path

from housevox.errors import HousevoxError
from housevox.jsonfile import read_json_object
from housevox.lora.targets import ADAPTER_TYPES

MODEL_FIELDS = (
    "adapter_type", "rank", "alpha", "dropout", "target_modules_str", "attention_type", "bias",
    "lokr_factor", "lokr_decompose_both", "lokr_full_matrix", "lokr_rank_dropout", "learning_rate", "weight_decay",
    "max_grad_norm", "warmup_steps", "optimizer_type", "scheduler_type", "cfg_ratio", "shift", "num_inference_steps",
    "seed", "gradient_checkpointing", "offload_encoder", "save_every", "log_every", "log_heavy_every",
    "sample_every_n_epochs",
)
IGNORED_FIELDS = ("name", "description")


def seed_to_config(seed: dict, source: str = "seed config") -> dict:
    unknown = sorted(set(seed) - set(MODEL_FIELDS) - set(IGNORED_FIELDS) - {"batch_size", "gradient_accumulation", "epochs"})
    if unknown:
        raise HousevoxError(f"{source}: unknown field(s) {', '.join(unknown)}")
    if seed.get("adapter_type", "lora") not in ADAPTER_TYPES:
        raise HousevoxError(f"{source}: adapter_type {seed['adapter_type']!r} is not one of {', '.join(ADAPTER_TYPES)}")
    config: dict = {"model": {k: seed[k] for k in MODEL_FIELDS if k in seed}, "data": {}, "trainer": {}}
    if "batch_size" in seed:
        config["data"]["batch_size"] = seed["batch_size"]
    if "gradient_accumulation" in seed:
        config["trainer"]["accumulate_grad_batches"] = seed["gradient_accumulation"]
    if "epochs" in seed:
        config["trainer"]["max_epochs"] = seed["epochs"]
    if "name" in seed:
        config["run_name"] = seed["name"]
    return config


def load_seed_json(path: str | Path) -> dict:
    return seed_to_config(read_json_object(path, "seed config"), str(path))
