"""Flow matching for ACE-Step base models: pure functions for training and the sampling schedule.

x_t = t·noise + (1 − t)·x0 and the DiT predicts the velocity noise − x0; t = 1 is
pure noise, t = 0 the clean latent.
"""

import torch


def sample_timesteps(batch: int, mu: float, sigma: float, generator: torch.Generator | None = None,
                     device=None) -> torch.Tensor:
    """Logit-normal t = sigmoid(N(mu, sigma)): most training signal at mid noise levels."""
    normal = torch.randn(batch, generator=generator, device=generator.device if generator else device)
    return torch.sigmoid(normal * sigma + mu).to(device)


def noisy_latents(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = t.view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return t * noise + (1 - t) * x0


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x0


def sample_losses(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[B]: each sample's mean squared error, so a batch's loss can weigh samples, not batches."""
    return (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)


def shifted_timesteps(steps: int, shift: float = 1.0, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """linspace(1, 0, steps + 1) warped by t' = s·t / (1 + (s − 1)·t): shift > 1 spends more steps at high noise.

    Computed in `dtype` itself, as upstream does (bf16 on GPU rounds differently from fp32 cast down).
    """
    t = torch.linspace(1.0, 0.0, steps + 1, device=device, dtype=dtype)
    return t if shift == 1.0 else shift * t / (1 + (shift - 1) * t)
