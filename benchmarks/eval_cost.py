"""Cost of `python -m housevox.eval` per scored epoch: renders + embeddings, measured on the tiny model,
and a FLOP-based estimate for XL (FlopCounterMode on meta-device copies: nothing is allocated or run).

    python benchmarks/eval_cost.py                       # tiny, CPU, 8 takes of 30 s, 50 steps
    python benchmarks/eval_cost.py --takes 8 --steps 50 --threads 1

Per epoch an eval renders `takes` takes (DiT steps with CFG, then the VAE decode) and embeds
them; once per eval it also renders the base's takes and embeds the reference segments.
Prints a summary and appends a JSON line to benchmarks/results/eval_cost.jsonl.
"""

import argparse
import datetime
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from housevox.acestep import load_dit, open_checkpoint
from housevox.acestep.config import AceStepConfig
from housevox.acestep.fixture import REAL_VAE, make_fixture
from housevox.acestep.modules import build_dit
from housevox.acestep.presets import PRESETS
from housevox.eval.embed import VaeEmbedding
from housevox.eval.prompts import EvalTake, Prompt
from housevox.eval.render import DEFAULT_GUIDANCE_SCALE, DEFAULT_DURATION_S, Renderer, RenderSettings, render_takes
from housevox.lora import LoRASettings, apply_lora

RESULTS = Path(__file__).resolve().parent / "results" / "eval_cost.jsonl"
SEED_TARGETS = "q_proj k_proj v_proj o_proj gate_proj up_proj down_proj"
XL_COND_LEN = 769  # caption + lyrics condition tokens of the seed's 30 s segments (DESIGN §7)
H100_BF16_PEAK_TFLOPS = 989.0


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def xl_forward_tflop(frames: int, cond_len: int) -> float:
    """One XL DiT forward (batch 1, seed LoRA r 128 on all seven names) on the meta device."""
    config = AceStepConfig.from_upstream(PRESETS["xl"])
    dit = build_dit(config, device="meta")
    apply_lora(dit, LoRASettings(rank=128, alpha=128.0, target_modules_str=SEED_TARGETS))
    dit.eval()
    d, e = config.audio_acoustic_hidden_dim, config.encoder_hidden_size
    x, hidden = torch.empty(1, frames, d, device="meta"), torch.empty(1, cond_len, e, device="meta")
    ctx, t = torch.empty(1, frames, 2 * d, device="meta"), torch.empty(1, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        dit(x, t, t, hidden, ctx)
    return counter.get_total_flops() / 1e12


def xl_vae_tflop(seconds: float) -> tuple[float, float]:
    """(decode, encode) TFLOP of the real Oobleck VAE for one stereo clip, on the meta device."""
    from diffusers import AutoencoderOobleck

    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore", FutureWarning)
        vae = AutoencoderOobleck(**REAL_VAE).eval()
    samples = round(seconds * 25) * 1920
    with torch.no_grad(), FlopCounterMode(display=False) as dec:
        vae.decode(torch.empty(1, REAL_VAE["decoder_input_channels"], samples // 1920, device="meta"))
    with torch.no_grad(), FlopCounterMode(display=False) as enc:
        vae.encode(torch.empty(1, 2, samples, device="meta"))
    return dec.get_total_flops() / 1e12, enc.get_total_flops() / 1e12


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--takes", type=int, default=8)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--duration", type=float, default=DEFAULT_DURATION_S)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: see RESULTS.md on oversubscribed VMs)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = open_checkpoint(make_fixture(Path(tmp) / "acestep-v15-tiny", preset="tiny", seed=0))
        device = torch.device("cpu")
        renderer = Renderer.from_checkpoint(ckpt, device)
        dit = load_dit(ckpt, dtype=torch.float32, device=device)
        apply_lora(dit, LoRASettings(rank=16, alpha=16.0, target_modules_str=SEED_TARGETS))
        settings = RenderSettings.of(duration_s=args.duration, steps=args.steps, guidance_scale=DEFAULT_GUIDANCE_SCALE,
                                     shift=1.0)
        take = [EvalTake(Prompt("house music style, soulful vocal performance, 122 bpm"), 42)]
        clips = []
        render_s = timed(lambda: clips.extend(render_takes(dit, renderer, take, settings, 1.0)), args.repeats)
        latents = render_takes(dit, renderer, take, settings, 1.0, decode=False)
        embed_s = timed(lambda: VaeEmbedding().latents(latents[0]), args.repeats)  # the vae embedding reads latents
    render, embed = statistics.median(render_s), statistics.median(embed_s)
    per_epoch = args.takes * (render + embed)

    frames = round(args.duration * 25)
    fwd = xl_forward_tflop(frames, XL_COND_LEN)
    dec, enc = xl_vae_tflop(args.duration)
    xl_take = args.steps * 2 * fwd + dec
    xl_epoch = args.takes * (xl_take + enc)
    row = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "takes": args.takes, "steps": args.steps, "duration_s": args.duration, "threads": args.threads,
        "tiny_render_s": render_s, "tiny_vae_embed_s": embed_s, "tiny_s_per_epoch": round(per_epoch, 2),
        "xl_dit_forward_tflop": round(fwd, 3), "xl_vae_decode_tflop": round(dec, 3), "xl_vae_encode_tflop": round(enc, 3),
        "xl_tflop_per_take": round(xl_take, 1), "xl_tflop_per_epoch": round(xl_epoch, 1),
        "xl_render_share": round(args.takes * args.steps * 2 * fwd / xl_epoch, 4),
    }
    print(f"tiny (CPU, {args.threads} thread): render {render:.2f} s/take (median of {render_s}), "
          f"VAE embedding {embed:.2f} s/take; per epoch ({args.takes} takes) {per_epoch:.1f} s")
    print(f"XL estimate (FLOPs, not measured): DiT forward {fwd:.2f} TFLOP (T {frames}, L {XL_COND_LEN}), "
          f"VAE decode {dec:.2f}, encode {enc:.2f} TFLOP; per take {xl_take:.0f} TFLOP "
          f"({args.steps} steps x 2 CFG), per epoch {xl_epoch:.0f} TFLOP, DiT share {row['xl_render_share']:.1%}; "
          f"at 40 % of an H100's {H100_BF16_PEAK_TFLOPS:g} TFLOP/s peak: ~{xl_epoch / (0.4 * H100_BF16_PEAK_TFLOPS):.0f} s "
          "per epoch (estimate)")
    RESULTS.parent.mkdir(exist_ok=True)
    with open(RESULTS, "a") as fh:
        fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
