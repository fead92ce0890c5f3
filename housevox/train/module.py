"""`HouseVoxLoRA`: a LoRA, LoKr or DoRA on the frozen ACE-Step DiT, trained with the flow-matching loss.

The run seed decides everything random: the LoRA initialisation (per module, from
(run seed, module path)) and every draw of a step (noise, t, CFG dropout, LoRA dropout)
per sample, from (run seed, epoch, sample index). The loss is a sum over samples divided
by the micro-batch size, so each sample weighs 1 / (batch_size · accumulate) in its optimizer
step whatever the split (a short last batch included): 1 × 4, 2 × 2 and 4 × 1 train the same
LoRA up to float summation order (LoKr's rank dropout, drawn inside PEFT from the global RNG,
is seeded per micro-batch instead). A run's LoRA depends only on its config, data, base and seed,
and a resumed run repeats the same losses exactly: nothing but the loop counters has to survive a crash.
"""

import logging
import secrets
from pathlib import Path

import lightning as L
import torch
from torchmetrics.aggregation import MeanMetric

from housevox.acestep import AceStepConfig, compile_blocks, flow, load_dit, load_null_condition, locate_checkpoint, model_dtype
from housevox.errors import HousevoxError
from housevox.lora import (
    LoRASettings,
    apply_lora,
    init_lora_weights,
    load_lora_into,
    read_lora,
    set_adapter_compute_dtype,
    set_sample_seeds,
)
from housevox.seeding import derived_generator, derived_seed
from housevox.train.optim import OPTIMIZERS, build_optimizer
from housevox.train.quantize import QUANTIZE_MODES, QuantiseOnArrival, quantize_frozen_base

log = logging.getLogger("housevox")

VAL_TIMESTEPS = (0.1, 0.3, 0.5, 0.7, 0.9)
VAL_NOISE_SEED = 20260501
ADAPTER_COMPUTE_DTYPES = {"auto": None, "bf16": torch.bfloat16, "fp32": torch.float32}


def adapter_compute_dtype(setting: str, base_dtype: torch.dtype) -> torch.dtype | None:
    """The dtype the adapters' matmuls run in (None: PEFT's fp32); `auto` follows the base (bf16 on CUDA)."""
    dtype = ADAPTER_COMPUTE_DTYPES[setting] or (torch.bfloat16 if base_dtype == torch.bfloat16 else torch.float32)
    return None if dtype == torch.float32 else dtype


def flow_sample_losses(dit, batch: dict, t: torch.Tensor, noise: torch.Tensor,
                       null_condition: torch.Tensor | None = None, drop: torch.Tensor | None = None) -> torch.Tensor:
    """[B] flow-matching losses: predict noise − x0 at x_t = t·noise + (1 − t)·x0; `drop` rows get the null condition.

    A padded batch (`batch["padded"]`, set by the collate) masks each row's padding out of the
    cross-attention, so each row's loss is its segment's loss alone. Shared by the LoRA step and
    the demo base's full training, so both learn the same thing.
    """
    dtype = next(dit.parameters()).dtype
    x0 = batch["target_latents"].float()
    cond = batch["encoder_hidden_states"]
    if drop is not None:
        null = null_condition.to(cond.dtype).expand_as(cond)
        cond = torch.where(drop.view(-1, 1, 1), null, cond)
    mask = batch["encoder_attention_mask"] if batch.get("padded") else None
    x_t = flow.noisy_latents(x0, noise, t)
    t_in = t.to(dtype)
    pred = dit(x_t.to(dtype), t_in, t_in, cond.to(dtype), batch["context_latents"].to(dtype), encoder_attention_mask=mask)
    return flow.sample_losses(pred, flow.velocity_target(x0, noise))


class HouseVoxLoRA(L.LightningModule):
    def __init__(
        self,
        checkpoint_dir: str,
        rank: int = 128,
        alpha: float = 128.0,
        dropout: float = 0.0,
        target_modules_str: str = "q_proj k_proj v_proj o_proj gate_proj up_proj down_proj",
        attention_type: str = "both",
        bias: str = "none",
        adapter_type: str = "lora",
        lokr_factor: int = -1,
        lokr_decompose_both: bool = False,
        lokr_full_matrix: bool = False,
        lokr_rank_dropout: float = 0.0,
        learning_rate: float = 5e-5,
        weight_decay: float = 0.01,
        max_grad_norm: float = 1.0,
        warmup_steps: int = 100,
        optimizer_type: str = "adamw8bit",
        scheduler_type: str = "cosine_restarts",
        num_cycles: int = 4,
        cycle_steps: int | None = None,
        cfg_ratio: float = 0.0,
        shift: float = 1.0,
        num_inference_steps: int = 50,
        seed: int = -1,
        gradient_checkpointing: bool | str = "auto",
        offload_encoder: bool = False,
        save_every: int = 5,
        log_every: int = 10,
        log_heavy_every: int = 25,
        sample_every_n_epochs: int = 0,
        eval_every_n_epochs: int = 0,
        eval_takes: int = 8,
        eval_embedding: str = "clap",
        checkpoint_every_n_steps: int = 50,
        checkpoint_every_minutes: float = 10.0,
        max_nonfinite_steps: int = 10,
        min_8bit_size: int = 4096,
        quantize_base: str = "none",
        init_lora: str | None = None,
        adapter_compute_dtype: str = "auto",
        compile: bool = False,
    ):
        """LoRA training of the ACE-Step DiT; the arguments are the seed config's fields.

        Args:
            checkpoint_dir: ACE-Step v1.5 checkpoint folder (or `demo:tiny`).
            rank: LoRA rank r.
            alpha: LoRA alpha; the update is scaled by alpha / rank.
            dropout: LoRA dropout probability.
            target_modules_str: space-separated module names (upstream names: q_proj k_proj v_proj o_proj gate_proj up_proj down_proj).
            attention_type: which attention blocks the q/k/v/o names adapt: both, self or cross.
            bias: LoRA bias mode (none).
            adapter_type: lora, lokr (PEFT LoKrConfig) or dora (PEFT LoraConfig(use_dora=True)).
            lokr_factor: LoKr's Kronecker split of each dimension (-1: near its square root).
            lokr_decompose_both: LoKr: make the small Kronecker factor low-rank too.
            lokr_full_matrix: LoKr: both factors full (scale 1; rank and alpha unused).
            lokr_rank_dropout: LoKr rank dropout probability (off by default).
            learning_rate: peak learning rate.
            weight_decay: AdamW weight decay.
            max_grad_norm: clip the total gradient norm to this value (0 disables).
            warmup_steps: linear warmup, in optimizer steps.
            optimizer_type: adamw8bit (bitsandbytes) or adamw.
            scheduler_type: cosine_restarts or constant.
            num_cycles: equal cosine cycles after warmup; the run ends in a trough.
            cycle_steps: fixed cycle length in optimizer steps instead of num_cycles (linted).
            cfg_ratio: probability of replacing the condition by the null embedding (CFG dropout).
            shift: inference timestep shift, stored in LoRA metadata (not used by the loss).
            num_inference_steps: inference steps, stored in LoRA metadata (not used by the loss).
            seed: run seed; -1 draws one, logs it and stores it in checkpoints.
            gradient_checkpointing: recompute DiT block activations in backward to save memory (+~48 % FLOPs);
                auto: off when the predicted peak without it fits the card with 10 % to spare, on otherwise,
                and off on the CPU (no card to fit); the fit's log says which and why.
            offload_encoder: accepted for seed compatibility; encoders only ever live while the cache is built.
            save_every: export the LoRA every N epochs (and at the end).
            log_every: log step loss every N optimizer steps.
            log_heavy_every: log grad-norm and LoRA-norm histograms every N optimizer steps.
            sample_every_n_epochs: render a preview clip every N epochs (0 = off).
            eval_every_n_epochs: score the LoRA export every N epochs (a multiple of save_every; 0 = off): FAD of
                eval_takes renders to the training and held-out segments and the CLAP score, into eval.json and
                eval/* scalars, as `python -m housevox.eval` does. Costs GPU time (the lint states how much).
            eval_takes: takes rendered per scored export (and once for the base).
            eval_embedding: clap (laion/larger_clap_music from the local Hugging Face cache) or vae.
            checkpoint_every_n_steps: write last.ckpt every N optimizer steps.
            checkpoint_every_minutes: also write last.ckpt when this many minutes passed since the last save (0 = off).
            max_nonfinite_steps: stop after this many non-finite steps in a row.
            min_8bit_size: tensors with fewer elements keep fp32 Adam state in adamw8bit.
            quantize_base: low-memory mode for 8-16 GB cards: none, int8 or nf4 (bitsandbytes) frozen base under the LoRA.
            init_lora: start a new run from this LoRA (PEFT folder, ComfyUI or diffusers file) instead of zero;
                its rank and targets must match, its alphas are kept. Ignored when resuming a checkpoint.
            adapter_compute_dtype: auto (bf16 adapter matmuls on a bf16 base, i.e. on CUDA; fp32 on the CPU), bf16
                or fp32. The adapter weights, their gradients and optimizer state stay fp32 in every case.
            compile: torch.compile the DiT's transformer block (regional: one compiled block serves every layer;
                a one-time compile cost at the first steps, the lint states it). Off until measured on a GPU.
        """
        super().__init__()
        self.save_hyperparameters()
        self.lora_settings = LoRASettings(
            rank=rank, alpha=alpha, dropout=dropout, target_modules_str=target_modules_str, attention_type=attention_type,
            bias=bias, adapter_type=adapter_type, lokr_factor=lokr_factor, lokr_decompose_both=lokr_decompose_both,
            lokr_full_matrix=lokr_full_matrix, lokr_rank_dropout=lokr_rank_dropout,
        )
        if optimizer_type not in OPTIMIZERS:
            raise HousevoxError(f"model.optimizer_type: unknown optimizer {optimizer_type!r} (choose from {', '.join(OPTIMIZERS)})")
        if scheduler_type not in ("cosine_restarts", "constant"):
            raise HousevoxError(f"model.scheduler_type: unknown scheduler {scheduler_type!r} (cosine_restarts or constant)")
        if not 0.0 <= cfg_ratio < 1.0:
            raise HousevoxError(f"model.cfg_ratio: {cfg_ratio} must be in [0, 1)")
        if eval_every_n_epochs < 0 or (eval_every_n_epochs and eval_every_n_epochs % save_every):
            raise HousevoxError(f"model.eval_every_n_epochs: {eval_every_n_epochs} must be 0 (off) or a multiple of "
                                f"save_every ({save_every}): only exported epochs are scored")
        if eval_embedding not in ("clap", "vae"):
            raise HousevoxError(f"model.eval_embedding: {eval_embedding!r} is not clap or vae")
        if eval_every_n_epochs and eval_takes < 2:
            raise HousevoxError(f"model.eval_takes: {eval_takes} must be at least 2 (FAD needs two takes)")
        if adapter_compute_dtype not in ADAPTER_COMPUTE_DTYPES:
            raise HousevoxError(f"model.adapter_compute_dtype: {adapter_compute_dtype!r} is not one of "
                                f"{', '.join(ADAPTER_COMPUTE_DTYPES)}")
        if not isinstance(gradient_checkpointing, bool) and gradient_checkpointing != "auto":
            raise HousevoxError(f"model.gradient_checkpointing: {gradient_checkpointing!r} is not true, false or auto")
        if quantize_base not in QUANTIZE_MODES:
            raise HousevoxError(f"model.quantize_base: {quantize_base!r} is not one of {', '.join(QUANTIZE_MODES)}")
        if adapter_type == "lokr" and quantize_base == "nf4":
            raise HousevoxError("model.quantize_base: nf4 does not work with adapter_type lokr (PEFT's LoKr cannot add its "
                                "update to a packed 4-bit weight); use int8 or none")
        self.base_name, self.base_sources = Path(checkpoint_dir).name, {}  # describe_base refines both
        self.config, self.base_fingerprint = self.describe_base(checkpoint_dir)
        self.run_seed = int(seed) if seed >= 0 else None
        self.seed_was_drawn = False
        self.dit = None
        self.plan = None
        self.checkpointing = None  # gradient_checkpointing resolved (auto decided) in configure_model
        self.step_grad_norm = None  # this step's total gradient norm, from the non-finite guard, for clipping
        self.strict_loading = False  # checkpoints hold the LoRA only, never the frozen base
        # The epoch's mean loss; its running sum goes into checkpoints, so a mid-epoch resume reports
        # (and writes into the LoRA metadata) the same train/loss_epoch as an uninterrupted run.
        self.epoch_loss = MeanMetric(nan_strategy="disable")
        self.epoch_loss_epoch = None  # the epoch whose losses epoch_loss holds

    def describe_base(self, checkpoint_dir: str) -> tuple[AceStepConfig, str]:
        """Config and fingerprint of the frozen base (a benchmark overrides this and `load_base`)."""
        ckpt = locate_checkpoint(checkpoint_dir)
        self.base_name, self.base_sources = ckpt.name, dict(ckpt.sources)  # hub models: the commits resolved
        return ckpt.config, ckpt.fingerprint()

    def load_base(self, dtype: torch.dtype, device: torch.device, quantize: str = "none") -> tuple[torch.nn.Module, torch.Tensor]:
        """The frozen DiT (its block Linears quantised as they load, for int8/nf4) and the null condition [1, E]."""
        checkpoint_dir = self.hparams.checkpoint_dir
        as_loaded = QuantiseOnArrival(quantize) if quantize != "none" else None
        return (load_dit(checkpoint_dir, dtype=dtype, device=device, as_loaded=as_loaded),
                load_null_condition(checkpoint_dir)[0])

    def configure_model(self) -> None:
        if self.dit is not None:
            return
        device = self.trainer.strategy.root_device if self._trainer else torch.device("cpu")
        dit, null_condition = self.load_base(model_dtype(device), device, self.hparams.quantize_base)
        base_dtype = next(p.dtype for p in dit.parameters() if p.is_floating_point())
        if device.type == "cuda":  # TF32 for what stays fp32 (the loss, the norms): deterministic, ~10-bit mantissa
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        if self.hparams.quantize_base != "none":  # what the load did not quantise yet (a base built in memory)
            quantize_frozen_base(dit, self.hparams.quantize_base)
        self.plan = apply_lora(dit, self.lora_settings)
        set_adapter_compute_dtype(dit, adapter_compute_dtype(self.hparams.adapter_compute_dtype, base_dtype))
        init_lora_weights(dit, self.ensure_run_seed())
        if self.hparams.init_lora:
            load_lora_into(dit, read_lora(self.hparams.init_lora), source=str(self.hparams.init_lora))
        self.checkpointing = self.choose_checkpointing(device)
        if self.checkpointing:
            dit.enable_gradient_checkpointing()
        if self.hparams.compile:
            compile_blocks(dit)
        self.dit = dit.train()
        self.register_buffer("null_condition", null_condition.to(device), persistent=False)

    def choose_checkpointing(self, device: torch.device) -> bool:
        """`gradient_checkpointing` as set; for `auto`, what the planner decided (plan.callback.CheckpointingAuto,
        from the predicted peak on this card), else on for CUDA (the safe side) and off on the CPU."""
        setting = self.hparams.gradient_checkpointing
        if isinstance(setting, bool):
            return setting
        if self.checkpointing is not None:
            return self.checkpointing
        on = device.type == "cuda"
        log.info("gradient_checkpointing auto: %s (%s)", "on" if on else "off",
                 "no memory plan for this card" if on else f"training on the {device.type}: no card memory to fit")
        return on

    def ensure_run_seed(self) -> int:
        """Draw `seed: -1` before the adapters exist, since they are initialised from it; every rank gets rank 0's draw.

        A resumed run draws too (configure_model runs before the checkpoint restore), then
        `on_load_checkpoint` replaces the draw and the restored LoRA replaces its init.
        """
        if self.run_seed is None:
            drawn = secrets.randbelow(2**31)
            self.run_seed = int(self.trainer.strategy.broadcast(drawn, src=0)) if self._trainer else drawn
            self.seed_was_drawn = True
        return self.run_seed

    def on_fit_start(self) -> None:
        """After any checkpoint restore, before the first batch: a resumed run already has its seed."""
        self.ensure_run_seed()
        if self.seed_was_drawn:
            log.info("seed -1: drew run seed %d (stored in checkpoints for exact resume)", self.run_seed)
        self._share_seed()

    def _share_seed(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if datamodule is not None and self.run_seed is not None:
            datamodule.seed = self.run_seed

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    def sample_losses(self, batch: dict, t: torch.Tensor, noise: torch.Tensor,
                      drop: torch.Tensor | None = None) -> torch.Tensor:
        """[B] flow-matching losses of the adapted DiT (see `flow_sample_losses`)."""
        return flow_sample_losses(self.dit, batch, t, noise, self.null_condition if drop is not None else None, drop)

    def flow_loss(self, batch: dict, t: torch.Tensor, noise: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """The mean of `sample_losses`."""
        return self.sample_losses(batch, t, noise, drop).mean()

    def sample_draws(self, index: list[int], frames: int, channels: int) -> dict:
        """Each sample's noise, t and CFG drop from its own generator (run seed, epoch, sample index), on the host.

        Independent of the batch a sample lands in, its position there, the rank and the split.
        """
        noise, t, drop = [], [], []
        for i in index:
            gen = derived_generator(self.run_seed, self.current_epoch, i)
            noise.append(torch.randn((frames, channels), generator=gen))
            t.append(flow.sample_timesteps(1, self.config.timestep_mu, self.config.timestep_sigma, gen))
            drop.append(torch.rand(1, generator=gen) < self.hparams.cfg_ratio)
        drop = torch.cat(drop)
        return {"noise": torch.stack(noise), "t": torch.cat(t), "drop": drop if drop.any() else None,
                "sample_seeds": [derived_seed(self.run_seed, self.current_epoch, i, "dropout") for i in index]}

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Draw a training batch's randomness while it is still on the host: no device→host sync in the step."""
        if self._trainer is not None and self.trainer.training and isinstance(batch, dict) and "noise" not in batch:
            x0 = batch["target_latents"]
            batch.update(self.sample_draws(batch["index"].tolist(), x0.shape[1], x0.shape[2]))
        return batch

    def micro_batch_size(self, batch: dict) -> int:
        """The configured samples per micro-batch (a short last batch still divides by it)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        return getattr(datamodule, "micro_batch_size", None) or batch["target_latents"].shape[0]

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        """{"loss": Σ sample losses / batch_size (Lightning divides by accumulate), "sample_losses": [B], detached}."""
        x0 = batch["target_latents"]
        if "noise" not in batch:
            batch = {**batch, **self.sample_draws(batch["index"].tolist(), x0.shape[1], x0.shape[2])}
        set_sample_seeds(self.dit, batch["sample_seeds"])
        # LoKr rank dropout draws from the global RNG: seeded per micro-batch, from its first sample.
        torch.manual_seed(batch["sample_seeds"][0])
        losses = self.sample_losses(batch, batch["t"].to(self.device), batch["noise"].to(self.device),
                                    None if batch["drop"] is None else batch["drop"].to(self.device))
        if self.epoch_loss_epoch != self.current_epoch:
            self.epoch_loss.reset()
            self.epoch_loss_epoch = self.current_epoch
        # The weight as a device tensor made on the device: a Python int would be copied host → device every micro-batch.
        mean_loss = losses.detach().mean()
        self.epoch_loss.update(mean_loss, torch.full_like(mean_loss, float(x0.shape[0])))
        self.log("train/loss_epoch", self.epoch_loss, on_step=False, on_epoch=True, batch_size=x0.shape[0])
        return {"loss": losses.sum() / self.micro_batch_size(batch), "sample_losses": losses.detach()}

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Deterministic: fixed noise per sample (whatever the batch size), the same t grid every epoch, no CFG dropout."""
        x0 = batch["target_latents"]
        noise = torch.stack([torch.randn(x0.shape[1:], generator=derived_generator(VAL_NOISE_SEED, i))
                             for i in batch["index"].tolist()]).to(self.device)
        losses = [self.flow_loss(batch, torch.full((x0.shape[0],), t, device=self.device), noise) for t in VAL_TIMESTEPS]
        self.log("val/loss", torch.stack(losses).mean(), on_epoch=True, batch_size=x0.shape[0], sync_dist=True)

    def configure_optimizers(self):
        return build_optimizer(self.trainable_parameters(), self.hparams.optimizer_type, self.hparams.learning_rate,
                               self.hparams.weight_decay, self.hparams.min_8bit_size)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip with the norm the non-finite guard already computed for this step (one norm per step), as
        clip_grad_norm_ does: get_total_norm, then clip_grads_with_norm_."""
        params = [p for p in self.trainable_parameters() if p.grad is not None]
        norm, self.step_grad_norm = self.step_grad_norm, None
        if not params:
            return
        if norm is None:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        max_norm = self.hparams.max_grad_norm if self.hparams.max_grad_norm > 0 else float("inf")
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
        self.last_grad_norm = norm

    def run_identity(self) -> dict:
        """What a checkpoint must agree on to be resumed into this module."""
        ls = self.lora_settings
        return {
            "rank": self.hparams.rank, "alpha": float(self.hparams.alpha), "attention_type": self.hparams.attention_type,
            "target_modules": list(self.plan.module_paths) if self.plan else [],
            "base_fingerprint": self.base_fingerprint,
            "adapter_type": ls.adapter_type,
            "lokr": [ls.lokr_factor, ls.lokr_decompose_both, ls.lokr_full_matrix] if ls.adapter_type == "lokr" else None,
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["housevox"] = {"run_seed": self.run_seed, **self.run_identity()}
        checkpoint["housevox"]["epoch_loss"] = {"epoch": self.epoch_loss_epoch,
                                                "sum": self.epoch_loss.mean_value.detach().cpu().clone(),
                                                "weight": self.epoch_loss.weight.detach().cpu().clone()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("housevox")
        if saved is None:
            raise HousevoxError("checkpoint was not written by housevox (no 'housevox' section); refusing to resume")
        mine = self.run_identity()
        saved = {"adapter_type": "lora", "lokr": None, **saved}  # checkpoints from before LoKr/DoRA are LoRA
        for key in ("adapter_type", "rank", "alpha", "attention_type", "target_modules", "lokr", "base_fingerprint"):
            if saved.get(key) != mine[key]:
                what = {"base_fingerprint": "base checkpoint", "lokr": "LoKr split (lokr_factor, lokr_decompose_both, "
                        "lokr_full_matrix)"}.get(key, key)
                raise HousevoxError(f"cannot resume: the checkpoint was trained with a different {what}; "
                                    f"start a new run (--run_name) or restore the original setting")
        self.run_seed = int(saved["run_seed"])
        self.seed_was_drawn = False
        log.info("resuming with run seed %d from the checkpoint", self.run_seed)
        if saved.get("epoch_loss"):  # the running epoch loss: a mid-epoch resume reports the whole epoch's mean
            self.epoch_loss.mean_value = saved["epoch_loss"]["sum"].to(self.epoch_loss.mean_value.device)
            self.epoch_loss.weight = saved["epoch_loss"]["weight"].to(self.epoch_loss.weight.device)
            self.epoch_loss_epoch = saved["epoch_loss"]["epoch"]
        self._share_seed()
