"""ACE-Step v1.5 text-to-music sampling as upstream's `generate_audio` does it: Euler, APG, DCW.

Upstream guides with APG (momentum, a norm cap over time and an orthogonal projection) rather
than textbook CFG, and corrects every Euler step with a one-level Haar wavelet blend (DCW).
Both change what a take sounds like, so housevox renders with the same math: a LoRA heard
here is the LoRA ACE-Step renders. Noise, schedule and latents stay in the model's dtype.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from housevox.acestep.flow import shifted_timesteps

GUIDANCE_MODES = ("apg", "cfg")
APG_MOMENTUM = -0.75
APG_NORM_THRESHOLD = 2.5
DCW_SCALER = 0.05  # low band, weighted by t
DCW_HIGH_SCALER = 0.02  # high band, weighted by 1 − t
TIME_DIM = 1  # latents are [B, T, C]; APG norms and DCW wavelets run along time
LATENT_CHANNELS = 64
_HAAR = math.sqrt(0.5)


def initial_noise(seeds: Sequence[int], frames: int, device, dtype: torch.dtype,
                  channels: int = LATENT_CHANNELS) -> torch.Tensor:
    """[len(seeds), frames, channels]: one row per seed, each from its own generator on `device`, as upstream."""
    rows = [torch.randn([1, frames, channels], generator=torch.Generator(device).manual_seed(seed),
                        device=device, dtype=dtype) for seed in seeds]
    return torch.cat(rows)


def classifier_free_guidance(v_cond: torch.Tensor, v_null: torch.Tensor, scale: float) -> torch.Tensor:
    """Textbook CFG: v_null + s·(v_cond − v_null)."""
    return v_null + scale * (v_cond - v_null)


def apg_guidance(v_cond: torch.Tensor, v_null: torch.Tensor, scale: float,
                 running: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream's APG with η = 0; returns (guided velocity, new momentum average).

    The guidance direction is a momentum average, capped in L2 norm over time per
    (batch, channel), and only its part orthogonal to v_cond (fp64 projection) is added.
    """
    diff = v_cond - v_null
    if running is not None:
        diff = diff + APG_MOMENTUM * running
    running = diff
    norm = diff.norm(p=2, dim=TIME_DIM, keepdim=True)
    diff = diff * torch.minimum(torch.ones_like(diff), APG_NORM_THRESHOLD / norm)
    unit = F.normalize(v_cond.double(), dim=TIME_DIM)
    d64 = diff.double()
    orthogonal = (d64 - (d64 * unit).sum(dim=TIME_DIM, keepdim=True) * unit).to(diff.dtype)
    return v_cond + (scale - 1) * orthogonal, running


def haar_dwt(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One-level Haar DWT along time of [B, T, C], zero-padded to even T: (low, high) [B, ⌈T/2⌉, C]."""
    if x.shape[TIME_DIM] % 2:
        x = F.pad(x, (0, 0, 0, 1))
    even, odd = x[:, 0::2], x[:, 1::2]
    return (even + odd) * _HAAR, (even - odd) * _HAAR


def haar_idwt(low: torch.Tensor, high: torch.Tensor, frames: int) -> torch.Tensor:
    even, odd = (low + high) * _HAAR, (low - high) * _HAAR
    return torch.stack([even, odd], dim=TIME_DIM + 1).flatten(TIME_DIM, TIME_DIM + 1)[:, :frames]


def dcw_correction(x_next: torch.Tensor, x0_estimate: torch.Tensor, t: float,
                   scaler: float = DCW_SCALER, high_scaler: float = DCW_HIGH_SCALER) -> torch.Tensor:
    """Upstream's DCW "double" mode: push each Haar band of x_next away from the clean estimate's (in fp32)."""
    low, high = haar_dwt(x_next.float())
    low0, high0 = haar_dwt(x0_estimate.float())
    low = low + scaler * t * (low - low0)
    high = high + high_scaler * (1 - t) * (high - high0)
    return haar_idwt(low, high, x_next.shape[TIME_DIM]).to(x_next.dtype)


@torch.no_grad()
def sample_latents(dit, noise: torch.Tensor, encoder_hidden_states: torch.Tensor,
                   null_encoder_hidden_states: torch.Tensor, context_latents: torch.Tensor, steps: int,
                   shift: float = 1.0, guidance_scale: float = 7.0, guidance: str = "apg", dcw: bool = True,
                   dcw_scaler: float = DCW_SCALER, dcw_high_scaler: float = DCW_HIGH_SCALER,
                   encoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Integrate from `noise` [B, T, 64] (t = 1) to the final latent [B, T, 64] (t = 0).

    `dit(x, t, r, encoder_hidden_states, context_latents)` is called once per step: on
    [x; x] with [condition; null] when `guidance_scale` > 1, else on x with the condition
    alone (no guidance). APG momentum lives in this call only. Conditions [B, L, E] and
    context [B, T, 128] are moved to the noise's device and dtype.

    Several takes render in one batch: conditions (and nulls) of different lengths padded to one L
    with `encoder_attention_mask` [B, L] (True = token), passed on to the DiT, which masks the padding
    out; APG and DCW work per row, so each row is the take rendered alone.
    """
    if guidance not in GUIDANCE_MODES:
        raise ValueError(f"guidance {guidance!r}: expected one of {', '.join(GUIDANCE_MODES)}")
    if steps < 1:
        raise ValueError(f"steps {steps}: must be at least 1")
    cond, null, context = (x.to(noise) for x in (encoder_hidden_states, null_encoder_hidden_states, context_latents))
    guided = guidance_scale > 1
    mask = {} if encoder_attention_mask is None else {"encoder_attention_mask": encoder_attention_mask.to(noise.device)}
    if guided:
        cond, context = torch.cat([cond, null]), torch.cat([context, context])
        mask = {name: torch.cat([m, m]) for name, m in mask.items()}
    grid = shifted_timesteps(steps, shift, device=noise.device, dtype=noise.dtype)
    x, running = noise, None
    host_grid = grid.tolist()  # DCW's t on the host, read once here instead of a device sync every step
    for step, (t, t_next) in enumerate(zip(grid[:-1], grid[1:])):
        batch_x = torch.cat([x, x]) if guided else x
        t_in = t.expand(batch_x.shape[0])
        v = dit(batch_x, t_in, t_in, cond, context, **mask)
        if guided:
            v_cond, v_null = v.chunk(2)
            if guidance == "apg":
                v, running = apg_guidance(v_cond, v_null, guidance_scale, running)
            else:
                v = classifier_free_guidance(v_cond, v_null, guidance_scale)
        x_next = x - v * (t - t_next)
        if dcw:
            x_next = dcw_correction(x_next, x - v * t, host_grid[step], dcw_scaler, dcw_high_scaler)
        x = x_next
    return x
