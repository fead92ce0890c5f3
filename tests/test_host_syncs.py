"""No host sync per micro-batch: the training step reads nothing back, the optimizer step reads one norm, the sampler
reads its timestep grid once. A sync is `aten._local_scalar_dense` (`.item()`, `bool(tensor)`), counted at dispatch,
except on tensors computed only from the step's own host draws (noise, t, CFG drop: drawn on the CPU from seeded
generators before they go to the device), which a CUDA run reads without waiting for the GPU."""

import logging

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from housevox.acestep.sampler import sample_latents
from housevox.train.callbacks import NonFiniteLossGuard
from housevox.train.synthetic import SyntheticBaseLoRA, base_config, synthetic_sample

aten = torch.ops.aten


class Syncs(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0
        self.host_drawn: set[int] = set()  # storages computed only from seeded-generator draws

    def _drawn(self, t: torch.Tensor) -> bool:
        return t.untyped_storage().data_ptr() in self.host_drawn

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        if func is aten._local_scalar_dense.default:
            self.count += not self._drawn(args[0])
        out = func(*args, **kwargs)
        drawn = kwargs.get("generator") is not None or (inputs and all(self._drawn(t) for t in inputs))
        if drawn and isinstance(out, torch.Tensor):
            self.host_drawn.add(out.untyped_storage().data_ptr())
        return out


def test_training_step_has_no_sync_and_the_optimizer_step_one(caplog):
    logging.getLogger("housevox").setLevel(logging.ERROR)
    module = SyntheticBaseLoRA(base_config("tiny"), rank=4, alpha=4.0, seed=3, cfg_ratio=0.5, max_grad_norm=0.5,
                               optimizer_type="adamw")
    module.configure_model()
    module.run_seed = 3
    optimizer = module.configure_optimizers()
    batches = []
    for i in range(3):  # three micro-batches of one accumulated step, drawn on the host as on_before_batch_transfer does
        batch = {k: v.unsqueeze(0) for k, v in synthetic_sample(module.config, 40, 12, seed=i).items()}
        batch["index"] = torch.tensor([i])
        batches.append({**batch, **module.sample_draws([i], 40, module.config.audio_acoustic_hidden_dim)})
    assert any(b["drop"] is not None for b in batches) and any(b["drop"] is None for b in batches)
    with Syncs() as micro:
        for batch_idx, batch in enumerate(batches):
            module.training_step(batch, batch_idx)["loss"].backward()
    assert micro.count == 0
    reference = [p.grad.clone() for p in module.trainable_parameters()]
    with Syncs() as step:
        NonFiniteLossGuard().on_before_optimizer_step(None, module, optimizer)
        module.configure_gradient_clipping(optimizer)
    assert step.count == 1
    # the clipping with the guard's norm is clip_grad_norm_ to the bit
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in reference]
    for p, g in zip(params, reference):
        p.grad = g
    total = torch.nn.utils.clip_grad_norm_(params, 0.5)
    assert torch.equal(total, module.last_grad_norm)
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(params, module.trainable_parameters()))


def test_sampler_reads_its_grid_once_not_every_step():
    def dit(x, t, r, cond, context):
        return 0.1 * x

    counts = {}
    for steps in (3, 12):
        noise = torch.randn(1, 16, 64, generator=torch.Generator().manual_seed(0))
        with Syncs() as seen:
            sample_latents(dit, noise, torch.zeros(1, 5, 8), torch.zeros(1, 5, 8), torch.zeros(1, 16, 128), steps,
                           guidance_scale=3.0, dcw=True)
        counts[steps] = seen.count
    assert counts[3] == counts[12]
