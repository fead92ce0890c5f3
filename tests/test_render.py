"""Renders without spikes: the tiled VAE decode is the whole decode (no seams), gradients are freed before a render."""

import pytest
import torch

from housevox.acestep import load_vae
from housevox.generate import DECODE_OVERLAP_FRAMES, DECODE_TILE_FRAMES, decode_tiled

SEAM_TOLERANCE = 1e-5  # max |tiled - whole| / max |whole|; measured 5e-7 .. 3e-6 (fp32 summation order) at overlap 8


@pytest.fixture(scope="module")
def vae(tiny_checkpoint):
    return load_vae(tiny_checkpoint)


def _latents(vae, frames: int) -> torch.Tensor:
    return torch.randn(1, vae.config.decoder_input_channels, frames, generator=torch.Generator().manual_seed(frames))


def _error(vae, frames: int, tile: int, overlap: int) -> float:
    latents = _latents(vae, frames)
    with torch.no_grad():
        whole = vae.decode(latents).sample
    tiled = decode_tiled(vae, latents, tile=tile, overlap=overlap)
    assert tiled.shape == whole.shape
    return ((tiled - whole).abs().max() / whole.abs().max()).item()


@pytest.mark.parametrize("frames", [41, 97, 203])
def test_tiled_decode_equals_the_whole_decode(vae, frames):
    """Tiles of 16 frames with 8 frames of context (the production default is 256 + 32): several lengths, ragged ends."""
    assert _error(vae, frames, tile=16, overlap=8) < SEAM_TOLERANCE


def test_too_little_context_shows_seams(vae):
    """The comparison can fail: 2 frames of context are inside the decoder's reach and leave audible seams."""
    assert _error(vae, 97, tile=16, overlap=2) > 100 * SEAM_TOLERANCE


def test_production_tiles_on_a_longer_take(vae):
    frames = DECODE_TILE_FRAMES + 2 * DECODE_OVERLAP_FRAMES + 45
    assert _error(vae, frames, DECODE_TILE_FRAMES, DECODE_OVERLAP_FRAMES) < SEAM_TOLERANCE


def test_preview_renders_without_the_last_steps_gradients(monkeypatch):
    from housevox import generate
    from housevox.generate import Take
    from housevox.train import preview
    from housevox.train.synthetic import SyntheticBaseLoRA, base_config

    module = SyntheticBaseLoRA(base_config("tiny"), rank=4, alpha=4.0, seed=0)
    module.configure_model()
    for p in module.trainable_parameters():
        p.grad = torch.ones_like(p)
    seen = []

    class Probe:
        def render(self, dit, take):
            seen.append([p.grad for p in module.trainable_parameters()])
            return torch.zeros(2, 4)

    monkeypatch.setattr(generate.Renderer, "from_checkpoint", classmethod(lambda cls, ckpt, device: Probe()))
    preview.AudioPreview.render(module, Take(caption="x"))
    assert seen and all(g is None for g in seen[0])
