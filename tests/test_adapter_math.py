"""bf16 adapter math (`adapter_compute_dtype`): fp32 master weights, no fp32 matmuls, losses close to PEFT's fp32 math."""

import logging

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from housevox.acestep import flow
from housevox.errors import HousevoxError
from housevox.lora.targets import lora_layers
from housevox.train.synthetic import SyntheticBaseLoRA, base_config, synthetic_sample

LOSS_RTOL = 0.01  # bf16 keeps 8 mantissa bits; measured: per-step losses within 0.24 % over 12 optimizer steps
STEPS = 12
aten = torch.ops.aten


def _module(compute: str, base_dtype: torch.dtype) -> SyntheticBaseLoRA:
    logging.getLogger("housevox").setLevel(logging.ERROR)
    module = SyntheticBaseLoRA(base_config("tiny"), base_dtype=base_dtype, rank=8, alpha=8.0, adapter_compute_dtype=compute,
                               optimizer_type="adamw", learning_rate=3e-3, gradient_checkpointing=False, seed=7)
    module.configure_model()
    return module


def _train(module: SyntheticBaseLoRA) -> list[float]:
    optimizer = module.configure_optimizers()
    cfg = module.config
    batch = {k: v.unsqueeze(0) for k, v in synthetic_sample(cfg, 40, 12).items()}
    losses = []
    for step in range(STEPS):
        gen = torch.Generator().manual_seed(step)
        noise = torch.randn(batch["target_latents"].shape, generator=gen)
        t = flow.sample_timesteps(1, cfg.timestep_mu, cfg.timestep_sigma, gen)
        loss = module.flow_loss(batch, t, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


class _Matmuls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.dtypes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (aten.mm.default, aten.addmm.default):
            self.dtypes.append(args[1 if func is aten.addmm.default else 0].dtype)
        return func(*args, **(kwargs or {}))


def test_bf16_adapter_math_on_a_bf16_base_matches_fp32_math_within_tolerance():
    fp32, bf16 = _module("fp32", torch.bfloat16), _module("bf16", torch.bfloat16)
    ref, got = _train(fp32), _train(bf16)
    assert got != ref  # the two paths really differ
    assert max(abs(a - b) / abs(a) for a, b in zip(ref, got)) < LOSS_RTOL
    assert ref[-1] < ref[0] and got[-1] < got[0]  # both learn
    trainable = [p for p in bf16.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in trainable)


def test_bf16_adapter_math_runs_no_fp32_matmul_and_auto_follows_the_base():
    batch = {k: v.unsqueeze(0) for k, v in synthetic_sample(_module("fp32", torch.float32).config, 40, 12).items()}
    t, noise = torch.tensor([0.5]), torch.randn(batch["target_latents"].shape, generator=torch.Generator().manual_seed(0))
    dtypes = {}
    for compute in ("fp32", "bf16", "auto"):
        module = _module(compute, torch.bfloat16)
        with _Matmuls() as seen:
            module.flow_loss(batch, t, noise).backward()
        dtypes[compute] = seen.dtypes
    assert torch.float32 in dtypes["fp32"] and set(dtypes["bf16"]) == {torch.bfloat16}
    assert dtypes["auto"] == dtypes["bf16"]  # auto: a bf16 base gets bf16 adapter math


def test_auto_on_an_fp32_base_is_peft_math_bit_for_bit():
    """The CPU run (fp32 base) keeps PEFT's own path: same losses to the bit, same exports and resume as before."""
    auto, fp32 = _module("auto", torch.float32), _module("fp32", torch.float32)
    assert all(layer.cast_input_dtype_enabled and "forward" not in vars(layer) for layer in lora_layers(auto.dit).values())
    assert _train(auto) == _train(fp32)


def test_unknown_compute_dtype_names_the_field():
    with pytest.raises(HousevoxError, match="model.adapter_compute_dtype"):
        SyntheticBaseLoRA(base_config("tiny"), adapter_compute_dtype="fp16")


@pytest.mark.parametrize("card_gib, expected", [(24.0, False), (0.05, True)])
def test_gradient_checkpointing_auto_follows_the_predicted_peak(caplog, card_gib, expected):
    from housevox.plan.callback import checkpointing_needed

    module = SyntheticBaseLoRA(base_config("tiny"), rank=8, alpha=8.0, gradient_checkpointing="auto")
    with caplog.at_level(logging.INFO, logger="housevox"):
        assert checkpointing_needed(module, card_gib) is expected
    assert f"gradient_checkpointing auto: {'on' if expected else 'off'} (predicted peak without it" in caplog.text
    module.checkpointing = expected  # what CheckpointingAuto sets before configure_model
    assert module.choose_checkpointing(torch.device("cuda")) is expected


def test_gradient_checkpointing_auto_without_a_plan_is_on_for_cuda_and_off_for_the_cpu():
    module = SyntheticBaseLoRA(base_config("tiny"), gradient_checkpointing="auto")
    assert module.choose_checkpointing(torch.device("cuda")) and not module.choose_checkpointing(torch.device("cpu"))


def test_gradient_checkpointing_true_and_false_are_honoured_and_others_refused():
    assert SyntheticBaseLoRA(base_config("tiny"), gradient_checkpointing=True).choose_checkpointing(torch.device("cuda"))
    assert not SyntheticBaseLoRA(base_config("tiny"), gradient_checkpointing=False).choose_checkpointing(torch.device("cuda"))
    with pytest.raises(HousevoxError, match="model.gradient_checkpointing"):
        SyntheticBaseLoRA(base_config("tiny"), gradient_checkpointing="sometimes")
