"""The demo base: a tiny ACE-Step checkpoint whose DiT has learned a family of synthesised house grooves.

Demo machinery, not a training mode of `housevox.fit`: family A (house grooves of several tempi,
keys and chord instruments, with captions and timed lyrics) goes through `housevox.prep` and the
segment cache like any user data, and every DiT parameter of a random-init tiny checkpoint is
trained on it with the LoRA step's own flow-matching loss. The result is written through the
fixture's checkpoint writer, so every loader reads it unchanged. Single-threaded and seeded: the
same bytes in any folder on any machine.

The random-init tiny VAE has a posterior std of ~0.7 around a mean that barely moves (std ~0.015
over time), so its latent *samples* are 99.9 % noise and no DiT can learn a style from them. The
demo VAE's encoder is therefore set (not trained) to a four-band energy analyser in the Oobleck
layout, standardised on family A with a posterior std of 1e-4; its decoder stays random, so renders
still sound like noise. The eval's `vae` embedding scores latents, which is where the styles differ.
"""

import logging
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from housevox.atomic import write_json

log = logging.getLogger("housevox")

FAMILY_STYLE = "house"
FAMILY_TRACKS = 8
FAMILY_TRACK_S = 30.0  # exactly one 30 s segment per track: eight grooves for the price of eight cache entries
CALIBRATION_SEGMENTS = 3
TRAIN_STEPS = 600
LEARNING_RATE = 2e-3
WARMUP_STEPS = 30
CFG_RATIO = 0.15
POSTERIOR_LOG_STD = -30.0  # softplus(-30) + 1e-4: the posterior std is the 1e-4 floor


def _weight(state: dict, prefix: str) -> torch.Tensor:
    g, v = state[f"{prefix}.weight_g"], state[f"{prefix}.weight_v"]
    return g * v / v.flatten(1).norm(dim=1).view(-1, *([1] * (v.ndim - 1)))


# The analyser encoder: which residual unit squares which filtered channel into which energy channel.
# Block i's input runs at 48 kHz / (1, 2, 8, 32, 192); the binomial high-pass passes above ~1/6 of that rate.
_SMOOTH = torch.tensor([1.0, 6, 15, 20, 15, 6, 1]) / 64
_HIGH_PASS = -_SMOOTH + torch.tensor([0.0, 0, 0, 1, 0, 0, 0])
_IDENTITY = torch.tensor([0.0, 0, 0, 1, 0, 0, 0])
ENERGY_BANDS = (  # (block, source channel, tap filter, energy channel): above ~8 kHz, ~1-3 kHz, ~250-750 Hz, below ~125 Hz
    (0, 1, _IDENTITY, 3), (2, 0, _HIGH_PASS, 4), (3, 0, _HIGH_PASS, 5), (4, 0, _IDENTITY, 6),
)
QUIET = -12.0  # Snake log-alpha: x + sin²(e^-12·x) is the identity to 1e-10
# x + sin²(a·x) adds ~(a·x)² for small a·x and saturates towards 1/2 beyond: a compressive power meter.
# Each band's a puts family A's RMS at SATURATION, so louder bands (another style's lead) are compressed, not blown up.
SATURATION = 0.8


def _set_conv(state: dict, prefix: str, weight: torch.Tensor) -> None:
    """A weight-normed conv's (g, v) for `weight`, with an all-zero row kept finite (g = 0, v = 1)."""
    norm = weight.flatten(1).norm(dim=1)
    state[f"{prefix}.weight_g"] = norm.view(-1, *([1] * (weight.ndim - 1))).clone()
    state[f"{prefix}.weight_v"] = torch.where((norm == 0).view(-1, *([1] * (weight.ndim - 1))), torch.ones_like(weight), weight)
    state[f"{prefix}.bias"] = torch.zeros(weight.shape[0])


def analyser_encoder_state(vae, clips: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The VAE's weights with the encoder set to a four-band energy analyser (mean channels: sub, low-mid, mid, high).

    Built from the Oobleck layout itself: the first conv splits mono into a full-band and a
    >8 kHz channel; in chosen residual units a conv filters a channel, a Snake squares it
    (x + sin²x) and a 1×1 conv adds it to an energy channel; every strided conv is a per-channel
    box average (the decimation), so each energy channel ends as its band's mean power per 1/25 s.
    """
    state = {k: v.clone() for k, v in vae.state_dict().items()}
    enc = vae.encoder
    width = enc.conv1.out_channels
    first = torch.zeros(width, 2, 7)
    first[0, :, :] = 0.5 * _IDENTITY
    first[1, :, :] = 0.5 * _HIGH_PASS
    _set_conv(state, "encoder.conv1", first)
    squares = {(b, src): (taps, dst) for b, src, taps, dst in ENERGY_BANDS}
    for name in state:
        if name.startswith("encoder.") and name.endswith((".alpha", ".beta")):
            state[name] = torch.full_like(state[name], QUIET if name.endswith(".alpha") else 0.0)
    for b, block in enumerate(enc.block):
        for u in (1, 2, 3):
            unit = f"encoder.block.{b}.res_unit{u}"
            filt, route = torch.zeros(width, width, 7), torch.zeros(width, width, 1)
            if u == 1:
                for (blk, src), (taps, dst) in squares.items():
                    if blk == b:
                        filt[src, src] = taps
                        route[dst, src, 0] = 1.0
                        state[f"{unit}.snake2.alpha"][0, src, 0] = 0.0
            _set_conv(state, f"{unit}.conv1", filt)
            _set_conv(state, f"{unit}.conv2", route)
        k = block.conv1.kernel_size[0]
        _set_conv(state, f"encoder.block.{b}.conv1", torch.eye(width)[:, :, None].expand(width, width, k) / k)
    head = torch.zeros(enc.conv2.out_channels, width, 3)
    for out, (_, _, _, dst) in enumerate(reversed(ENERGY_BANDS)):
        head[out, dst, 1] = 1.0
    _set_conv(state, "encoder.conv2", head)
    vae.load_state_dict(state)
    with torch.no_grad():
        power = torch.cat([vae.encode(clip).latent_dist.mean[0].T for clip in clips]).mean(0)  # ≈ band power (a = 1)
    for out, (b, src, _, _) in enumerate(reversed(ENERGY_BANDS)):
        state[f"encoder.block.{b}.res_unit1.snake2.alpha"][0, src, 0] = float(torch.log(SATURATION / power[out].sqrt()))
    return state


def calibrated_vae_state(vae, clips: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The VAE's weights with its encoder head standardising each mean channel over `clips` and a 1e-4 posterior std."""
    with torch.no_grad():
        means = torch.cat([vae.encode(clip).latent_dist.mean[0].T for clip in clips])  # [frames, D]
    centre, scale = means.mean(0), means.std(0)
    state = {k: v.clone() for k, v in vae.state_dict().items()}
    width = centre.numel()
    head = _weight(state, "encoder.conv2")  # [2D, C, k]: mean rows, then log-std rows
    bias = state["encoder.conv2.bias"].clone()
    head[:width] /= scale.view(-1, 1, 1)
    bias[:width] = (bias[:width] - centre) / scale
    head[width:] = 0.0
    bias[width:] = POSTERIOR_LOG_STD
    _set_conv(state, "encoder.conv2", head)
    state["encoder.conv2.bias"] = bias
    return state


def _family_segments(work: Path, seed: int) -> Path:
    from housevox import prep
    from housevox.demo_audio import synthesize_demo_tracks

    tracks, segments = work / "tracks", work / "segments"
    if not (segments / "manifest.jsonl").is_file():
        if len(list(tracks.glob("*.wav"))) < FAMILY_TRACKS:
            log.info("demo base: synthesising %d %s grooves (family A) in %s", FAMILY_TRACKS, FAMILY_STYLE, tracks)
            synthesize_demo_tracks(tracks, FAMILY_TRACKS, seed=seed, duration_s=FAMILY_TRACK_S, style=FAMILY_STYLE)
        prep.main(["--input", str(tracks), "--output", str(segments), "--workers", "1"])
    return segments


def _init_checkpoint(path: Path, segments: Path, seed: int) -> Path:
    """The random-init tiny checkpoint, its VAE head calibrated on family A (the base before training)."""
    from housevox.acestep.fixture import TINY_VAE, make_fixture, random_vae
    from housevox.data.cache import segment_audio

    if not (path / "config.json").is_file():
        clips = [segment_audio(f) for f in sorted(segments.glob("*.wav"))[:CALIBRATION_SEGMENTS]]
        vae = random_vae(seed + 3, TINY_VAE).eval()  # the VAE make_fixture writes for this seed, decoder kept
        vae.load_state_dict(analyser_encoder_state(vae, clips))
        make_fixture(path, preset="tiny", seed=seed, vae_state=calibrated_vae_state(vae, clips))
    return path


def _lr_factor(step: int) -> float:
    import math

    if step < WARMUP_STEPS:
        return (step + 1) / WARMUP_STEPS
    return 0.5 * (1 + math.cos(math.pi * (step - WARMUP_STEPS) / (TRAIN_STEPS - WARMUP_STEPS)))


def train_dit(init: Path, segments: Path, seed: int) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Every DiT parameter trained on the family's cache with the LoRA step's loss; (weights, loss per step)."""
    from housevox.acestep import flow, load_dit, load_null_condition, locate_checkpoint
    from housevox.data import SegmentCacheDataModule
    from housevox.seeding import derived_generator
    from housevox.generate import CHUNK_MASK_AUTO
    from housevox.train.module import flow_sample_losses

    data = SegmentCacheDataModule(str(segments), str(init), batch_size=1, val_fraction=0.0, seed=seed)
    data.prepare_data()
    data.setup("fit")
    dit = load_dit(init).train().requires_grad_(True)
    null = load_null_condition(init)[0]
    config = locate_checkpoint(init).config
    optimizer = torch.optim.AdamW(dit.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor)
    losses, step, epoch = [], 0, 0
    with tqdm(total=TRAIN_STEPS, desc="demo base: training the DiT on family A", unit="step", file=sys.stderr) as bar:
        while step < TRAIN_STEPS:
            loader = data.train_dataloader()
            loader.batch_sampler.set_epoch(epoch)
            for batch in loader:
                if step == TRAIN_STEPS:
                    break
                x0 = batch["target_latents"]
                gen = derived_generator(seed, "demo-base", step)
                noise = torch.randn(x0.shape, generator=gen)
                t = flow.sample_timesteps(x0.shape[0], config.timestep_mu, config.timestep_sigma, gen)
                drop = torch.rand(x0.shape[0], generator=gen) < CFG_RATIO
                if torch.rand((), generator=gen) < 0.5:  # half the steps see inference's "auto" chunk mask
                    width = x0.shape[-1]
                    batch["context_latents"] = torch.cat([batch["context_latents"][..., :width],
                                                          torch.full_like(x0, CHUNK_MASK_AUTO)], dim=-1)
                loss = flow_sample_losses(dit, batch, t, noise, null, drop).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(dit.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
                step += 1
                bar.update()
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            epoch += 1
    return {k: v.detach() for k, v in dit.state_dict().items()}, losses


def build_demo_base(out: Path, work: Path, seed: int = 0) -> Path:
    """Write the trained demo base to `out` (config.json last); `work` keeps family A and the random-init base."""
    from housevox.acestep.fixture import make_fixture
    from housevox.acestep.loading import load_vae

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one reduction order: the same bytes on every machine
    try:
        segments = _family_segments(work, seed)
        init = _init_checkpoint(work / "init" / "acestep-v15-tiny", segments, seed)
        state, losses = train_dit(init, segments, seed)
        vae_state = load_vae(init).state_dict()
        make_fixture(out, preset="tiny", seed=seed, dit_state=state, vae_state=vae_state)
    finally:
        torch.set_num_threads(threads)
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    write_json(work / "build.json", {"family": FAMILY_STYLE, "tracks": FAMILY_TRACKS, "steps": TRAIN_STEPS,
                                     "learning_rate": LEARNING_RATE, "loss_first_20": first, "loss_last_20": last,
                                     "init_checkpoint": "init/acestep-v15-tiny", "segments": "segments"})
    log.info("demo base: flow loss %.3f -> %.3f over %d steps; wrote %s", first, last, TRAIN_STEPS, out)
    return out
