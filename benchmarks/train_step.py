"""Speed and memory of one LoRA training step on the ACE-Step DiT, random-init weights (no download).

    python benchmarks/train_step.py --config xl --device cuda --steps 20
    python benchmarks/train_step.py --config tiny --device cpu
    python benchmarks/train_step.py --config xl --layers 1 --frames 100 --device cpu --steps 2 --warmup 1
    python benchmarks/train_step.py --config tiny --device cpu --adapter lokr   # or dora; lora is the default
    python benchmarks/train_step.py --config xl --batch-size 4 --accumulate 1   # or --batch-size auto

The step is production's: `HouseVoxLoRA` (only `describe_base`/`load_base` are replaced) run by a
Lightning Trainer with `housevox.fit`'s callbacks and defaults, the seed's LoRA (r 128, all seven
names, both attentions) and AdamW8bit; `--adapter lokr|dora` trains that adapter type at the same
rank and alpha instead (PEFT's LoKr / DoRA), and the trainable parameter count is reported with the step time. FLOPs are counted with FlopCounterMode on a meta-device
copy of the same model, so MFU (model FLOPs) and HFU (plus checkpoint recompute) need no extra
device memory. Prints a summary and appends a JSON line to benchmarks/results/train_step.jsonl.
"""

import argparse
import datetime
import importlib.util
import json
import platform
import re
import resource
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from housevox.acestep.config import AceStepConfig
from housevox.acestep.modules import build_dit
from housevox.data.datamodule import collate
from housevox.fit import TRAINER_DEFAULTS, callbacks
from housevox.lora import ADAPTER_TYPES, apply_lora
from housevox.plan.memory import GPUS, RunShape, auto_batch_size
from housevox.train.quantize import QUANTIZE_MODES
from housevox.train.synthetic import SyntheticBaseLoRA, base_config, synthetic_sample

RESULTS = Path(__file__).resolve().parent / "results" / "train_step.jsonl"
SEED_EPOCH_SEGMENTS = 232
SEED_EPOCHS = 100
# Dense bf16 tensor-core peaks in TFLOP/s, by device-name pattern; the first match wins.
BF16_PEAK_TFLOPS = ((r"H100 PCIe", 756.0), (r"H100", GPUS["h100"][1]), (r"H200", GPUS["h200"][1]),
                    (r"A100", GPUS["a100-80gb"][1]), (r"3090", GPUS["rtx3090"][1]), (r"4090", GPUS["rtx4090"][1]),
                    (r"\bL4\b", GPUS["l4"][1]))
# Everything the step's hyper-parameters need besides the base shape: the seed's LoRA, and no
# checkpoint or LoRA files written inside the timed window.
SEED_LORA = dict(rank=128, alpha=128.0, target_modules_str="q_proj k_proj v_proj o_proj gate_proj up_proj down_proj",
                 attention_type="both", optimizer_type="adamw8bit", seed=0, checkpoint_every_n_steps=0, save_every=10**6)


class RandomInitLoRA(SyntheticBaseLoRA):
    """`HouseVoxLoRA` on a random-init base of the shape `base` (`compile=True`: model.compile's regional blocks)."""

    def __init__(self, base: dict, **kwargs):
        super().__init__(base, weights="random", **kwargs)


class SyntheticSegments(Dataset):
    """`n` cache samples of the real shapes; the step's cost does not depend on the values, so all share one."""

    def __init__(self, cfg: AceStepConfig, n: int, frames: int, cond_len: int, seed: int = 0):
        self.n = n
        self.sample = synthetic_sample(cfg, frames, cond_len, seed)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        return {**self.sample, "index": index}


def synthetic_loader(cfg: AceStepConfig, n: int, frames: int, cond_len: int, pin_memory: bool = False,
                     batch_size: int = 1) -> DataLoader:
    return DataLoader(SyntheticSegments(cfg, n, frames, cond_len), batch_size=batch_size, collate_fn=collate,
                      pin_memory=pin_memory)


def micro_batch(args, raw: dict, lora_kwargs: dict, device: torch.device) -> tuple[int, int, str | None]:
    """(batch size, accumulation, why): --batch-size as given, or `auto` as housevox.fit resolves it (1 off a GPU)."""
    if args.batch_size != "auto":
        return int(args.batch_size), args.accumulate, None
    if device.type != "cuda":
        return 1, args.accumulate, f"batch_size auto: 1 x accumulate_grad_batches {args.accumulate} (not on a GPU)"
    shape = RunShape.from_settings(lora_kwargs, batch_size=1, frames=args.frames, cond_len=args.cond_len)
    budget = torch.cuda.get_device_properties(device).total_memory / 2**30
    b, why = auto_batch_size(raw, shape, budget, args.accumulate)
    return b, args.accumulate // b, why


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer(L.Callback):
    """Wall-clock time at every optimizer step (device synchronised) and the micro-batch losses (read once, at the end).

    Optionally profiles the timed steps.
    """

    def __init__(self, warmup: int, profiler: torch.profiler.profile | None = None):
        self.warmup, self.profiler = warmup, profiler
        self.marks: list[float] = []
        self.losses: list[torch.Tensor] = []
        self._seen = 0

    def on_train_start(self, trainer, pl_module) -> None:
        synchronize(pl_module.device)
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        self.marks.append(time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].detach())
        if trainer.global_step == self._seen:
            return
        self._seen = trainer.global_step
        synchronize(pl_module.device)
        self.marks.append(time.perf_counter())
        if self.profiler is not None and self._seen == self.warmup:
            self.profiler.start()

    def on_train_end(self, trainer, pl_module) -> None:
        if self.profiler is not None:
            self.profiler.stop()

    def step_times(self) -> list[float]:
        """Seconds of each optimizer step after the warm-up steps."""
        times = [b - a for a, b in zip(self.marks, self.marks[1:])]
        return times[self.warmup:]


def bench_logger(root: str):
    """TensorBoard, as housevox.fit logs; CSV where tensorboard is not installed (benchmarks/gpu_check.sh offline)."""
    if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
        return CSVLogger(root, name="bench")
    return TensorBoardLogger(root, name="bench", default_hp_metric=False)


def production_trainer(device: str, steps: int, accumulate: int, root: str, timer: StepTimer) -> L.Trainer:
    """housevox.fit's Trainer: its defaults, its callbacks and a TensorBoard logger; no progress bar."""
    return L.Trainer(**{**TRAINER_DEFAULTS, "accumulate_grad_batches": accumulate, "max_steps": steps, "max_epochs": 1},
                     callbacks=[*callbacks(), timer], logger=bench_logger(root),
                     accelerator=device, devices=1, enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir=root)


def count_flops(raw: dict, frames: int, cond_len: int, checkpointing: bool, lora_kwargs: dict) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs of one micro-batch, counted on a meta-device copy of the model."""
    module = RandomInitLoRA(raw, **lora_kwargs)
    dit = build_dit(module.config, device="meta")
    apply_lora(dit, module.lora_settings)
    if checkpointing:
        dit.enable_gradient_checkpointing()
    dit.train()
    module.dit = dit
    sample = SyntheticSegments(module.config, 1, frames, cond_len).sample
    batch = {name: torch.empty_like(value, device="meta")[None] for name, value in sample.items()}
    t = torch.empty(1, device="meta")
    with FlopCounterMode(display=False) as counter:
        loss = module.flow_loss(batch, t, torch.empty_like(batch["target_latents"]))
        forward = counter.get_total_flops()
        loss.backward()
    return float(forward), float(counter.get_total_flops())


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    return platform.machine()


def bf16_peak_tflops(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return cpu_model(), None
    name = torch.cuda.get_device_name(device)
    return name, next((peak for pattern, peak in BF16_PEAK_TFLOPS if re.search(pattern, name)), None)


def peak_memory(device: torch.device) -> dict:
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return {"peak_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30,
                "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30,
                "device_used_gib": (total - free) / 2**30}  # context + reserved cache: what nvidia-smi shows
    return {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}  # KiB on Linux


def run(args) -> dict:
    device = torch.device(args.device)
    raw = base_config(args.config, args.layers)
    lora_kwargs = dict(SEED_LORA, adapter_type=args.adapter, gradient_checkpointing=not args.no_checkpointing,
                       quantize_base=args.quantize)
    steps = args.warmup + args.steps
    batch_size, accumulate, auto_why = micro_batch(args, raw, lora_kwargs, device)
    model_fwd, model_total = count_flops(raw, args.frames, args.cond_len, False, lora_kwargs)
    _, hardware_total = count_flops(raw, args.frames, args.cond_len, not args.no_checkpointing, lora_kwargs)
    torch.manual_seed(0)
    module = RandomInitLoRA(raw, compile=args.compile, **lora_kwargs)
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]
                                      + ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
                                      ) if args.profile else None
    timer = StepTimer(args.warmup, profiler)
    loader = synthetic_loader(module.config, steps * batch_size * accumulate, args.frames, args.cond_len,
                              pin_memory=device.type == "cuda", batch_size=batch_size)
    with tempfile.TemporaryDirectory() as root:
        trainer = production_trainer(args.device, steps, accumulate, root, timer)
        trainer.fit(module, train_dataloaders=loader)
    times = timer.step_times()
    s_per_step = statistics.median(times)
    segments_per_s = batch_size * accumulate / s_per_step
    model_tflops = model_total * segments_per_s / 1e12
    hardware_tflops = hardware_total * segments_per_s / 1e12
    name, peak = bf16_peak_tflops(device)
    result = {
        "date": datetime.date.today().isoformat(), "device": name, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "config": args.config, "layers": module.config.num_hidden_layers, "frames": args.frames,
        "adapter": args.adapter, "rank": SEED_LORA["rank"],
        "adapter_params": sum(p.numel() for p in module.trainable_parameters()),
        "cond_len": args.cond_len, "batch_size": batch_size, "accumulate": accumulate, "auto": auto_why,
        "checkpointing": not args.no_checkpointing,
        "quantize": args.quantize, "compile": args.compile, "steps_timed": len(times),
        "s_per_step": s_per_step, "s_per_step_all": times, "segments_per_s": segments_per_s,
        "s_per_segment": 1 / segments_per_s,
        "model_tflop_per_segment": model_total / 1e12, "forward_tflop_per_segment": model_fwd / 1e12,
        "hardware_tflop_per_segment": hardware_total / 1e12,
        "achieved_model_tflops": model_tflops, "achieved_hardware_tflops": hardware_tflops,
        "bf16_peak_tflops": peak, "mfu": model_tflops / peak if peak else None,
        "hfu": hardware_tflops / peak if peak else None,
        "losses": torch.stack(timer.losses).float().tolist(),
        "seed_epoch_s": SEED_EPOCH_SEGMENTS / segments_per_s,
        "seed_run_h": SEED_EPOCHS * SEED_EPOCH_SEGMENTS / segments_per_s / 3600,
        **peak_memory(device),
    }
    if profiler is not None:
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile))
    return result


def report(r: dict) -> None:
    print(f"{r['config']} ({r['layers']} layers), {r['adapter']} r {r['rank']} ({r['adapter_params']:,} trained parameters), "
          f"T {r['frames']}, L {r['cond_len']}, batch {r['batch_size']} x accumulate {r['accumulate']}, "
          f"checkpointing {'on' if r['checkpointing'] else 'off'}, quantize {r['quantize']}, compile {r['compile']} "
          f"on {r['device']}")
    if r["auto"]:
        print(f"  {r['auto']}")
    print(f"  {r['s_per_step']:.3f} s/step (median of {r['steps_timed']}), {r['segments_per_s']:.2f} segments/s, "
          f"{r['s_per_segment']:.3f} s/segment")
    if "peak_allocated_gib" in r:
        print(f"  peak allocated {r['peak_allocated_gib']:.2f} GiB, reserved {r['peak_reserved_gib']:.2f} GiB")
    else:
        print(f"  peak RSS {r['peak_rss_gib']:.2f} GiB (CPU: whole-process peak resident memory, model build included)")
    print(f"  {r['model_tflop_per_segment']:.4g} TFLOP/segment model, {r['hardware_tflop_per_segment']:.4g} with recompute; "
          f"achieved {r['achieved_model_tflops']:.3g} TFLOP/s model, {r['achieved_hardware_tflops']:.3g} hardware")
    if r["mfu"] is not None:
        print(f"  MFU {100 * r['mfu']:.1f} %, HFU {100 * r['hfu']:.1f} % of {r['bf16_peak_tflops']:.0f} TFLOP/s bf16 peak")
    else:
        print("  MFU/HFU: no known bf16 peak for this device (TFLOP/s only)")
    print(f"  seed epoch ({SEED_EPOCH_SEGMENTS} segments): {r['seed_epoch_s']:.1f} s; "
          f"the seed's {SEED_EPOCHS} epochs: {r['seed_run_h']:.2f} h")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=("xl", "2b", "tiny"), default="xl")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps first")
    parser.add_argument("--accumulate", type=int, default=4, help="micro-batches per optimizer step")
    parser.add_argument("--batch-size", default="1", help="segments per micro-batch, or auto (as data.batch_size: auto, "
                        "with --accumulate as the effective batch)")
    parser.add_argument("--no-checkpointing", action="store_true", help="keep block activations instead of recomputing")
    parser.add_argument("--compile", action="store_true", help="torch.compile each DiT block")
    parser.add_argument("--quantize", choices=QUANTIZE_MODES, default="none", help="low-memory mode of the frozen base")
    parser.add_argument("--adapter", choices=ADAPTER_TYPES, default="lora", help="adapter type, at the seed's r 128 / alpha 128")
    parser.add_argument("--layers", type=int, help="override the depth (an XL-wide, shallow model for CPU smoke runs)")
    parser.add_argument("--frames", type=int, default=750, help="latent frames per segment (25 Hz: 750 = 30 s)")
    parser.add_argument("--cond-len", type=int, default=769, help="condition tokens")
    parser.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads); 1 is steadier on a shared machine")
    parser.add_argument("--json-out", type=Path, default=RESULTS, help="append the result as one JSON line here")
    parser.add_argument("--profile", type=int, default=0, metavar="ROWS", help="torch.profiler the timed steps, print top ROWS ops")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    report(result)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    with args.json_out.open("a") as fh:
        fh.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
