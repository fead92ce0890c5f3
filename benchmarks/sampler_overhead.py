"""APG + DCW cost per sampling step against the DiT call, on the tiny model.

Times (a) one guided DiT call ([x; x] with [condition; null], batch 2), (b) one sampling
step without the DiT (the DiT replaced by a replay of its output) for APG + DCW and for
plain CFG without DCW, and (c) whole `sample_latents` runs with the real DiT both ways.
The tiny DiT (hidden 64, 2 layers, upstream's 64 latent channels) is far cheaper than XL's while APG and DCW cost the same per latent element,
so the ratios printed here are an upper bound for real models.

    .venv/bin/python benchmarks/sampler_overhead.py [--frames 750] [--steps 20] [--repeats 5] [--threads 1]
"""

import argparse
import statistics
import time

import torch

from housevox.acestep import AceStepConfig, initial_noise, sample_latents
from housevox.acestep.modules import build_dit
from housevox.acestep.presets import PRESETS
from housevox.acestep.sampler import LATENT_CHANNELS

CONDITION_TOKENS = 769  # the training cache's L for a typical caption + lyrics
# The tiny preset keeps 4 latent channels for its CPU VAE; APG and DCW cost per latent element,
# so the benchmark gives the tiny DiT upstream's 64 channels (the upstream_tinyA shape).
UPSTREAM_LATENTS = {"audio_acoustic_hidden_dim": 64, "timbre_hidden_dim": 64, "in_channels": 192}


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=750, help="latent frames (750 = a 30 s take)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)  # the random-init weights only; every sampler draw has its own generator
    config = AceStepConfig.from_upstream({**PRESETS["tiny"], **UPSTREAM_LATENTS})
    dit, cond_dim, channels = build_dit(config, device="cpu").eval(), config.encoder_hidden_size, LATENT_CHANNELS
    gen = torch.Generator().manual_seed(0)
    cond = torch.randn(1, CONDITION_TOKENS, cond_dim, generator=gen)
    null = torch.randn(1, 1, cond_dim, generator=gen).expand_as(cond)
    silence = torch.randn(1, args.frames, channels, generator=gen)
    context = torch.cat([silence, torch.full_like(silence, 2.0)], -1)
    noise = initial_noise([1], args.frames, "cpu", torch.float32, channels)
    x2, t2 = torch.cat([noise, noise]), torch.full((2,), 0.5)
    with torch.no_grad():
        v2 = dit(x2, t2, t2, torch.cat([cond, null]), context.expand(2, -1, -1))

    def run(model, steps, **kwargs):
        return lambda: sample_latents(model, noise, cond, null, context, steps, shift=3.0, guidance_scale=7.0, **kwargs)

    def replay(*_):
        return v2

    with torch.no_grad():
        dit_call = median_seconds(lambda: dit(x2, t2, t2, torch.cat([cond, null]), context.expand(2, -1, -1)),
                                  args.repeats * 4)
    many = 200  # replay steps per timed run: the sampler alone is well under a millisecond a step
    step = {(guidance, dcw): median_seconds(run(replay, many, guidance=guidance, dcw=dcw), args.repeats) / many
            for guidance in ("apg", "cfg") for dcw in (True, False)}
    apg_dcw, cfg_plain = step["apg", True], step["cfg", False]
    full_apg = median_seconds(run(dit, args.steps, guidance="apg", dcw=True), args.repeats) / args.steps
    full_cfg = median_seconds(run(dit, args.steps, guidance="cfg", dcw=False), args.repeats) / args.steps

    print(f"tiny DiT, T {args.frames}, L {CONDITION_TOKENS}, {args.threads} thread(s), medians of {args.repeats}")
    print(f"guided DiT call (batch 2):          {dit_call * 1e3:8.3f} ms")
    print(f"step without DiT, APG + DCW:        {apg_dcw * 1e3:8.3f} ms  ({apg_dcw / dit_call:.1%} of the DiT call)")
    print(f"step without DiT, plain CFG:        {cfg_plain * 1e3:8.3f} ms  ({cfg_plain / dit_call:.1%} of the DiT call)")
    print(f"APG + DCW over plain CFG:           {(apg_dcw - cfg_plain) * 1e3:8.3f} ms  "
          f"({(apg_dcw - cfg_plain) / dit_call:.1%} of the DiT call)")
    print(f"  of which APG (over CFG):          {(step['apg', False] - cfg_plain) * 1e3:8.3f} ms, "
          f"DCW: {(step['cfg', True] - cfg_plain) * 1e3:.3f} ms")
    print(f"whole sampler per step, APG + DCW:  {full_apg * 1e3:8.3f} ms; plain CFG: {full_cfg * 1e3:.3f} ms "
          f"(ratio {full_apg / full_cfg:.3f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
