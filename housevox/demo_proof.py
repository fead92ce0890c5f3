"""`python -m housevox.demo_proof RUN_DIR`: the demo's proof that the run learned style B, in the eval's own terms.

The eval (`vae` embedding: the sampler's latents against the cache's latents, FAD per 1/25 s
frame) scores fixed takes (the run's prompts and seeds, as `housevox.eval` plans them) of: the
random-init base, the trained demo base, every exported epoch, and the last epoch at LoRA
scale 0 and 0.5. Each against style B (the run's training segments) and family A (the base's
training segments). Written to RUN_DIR/proof.json and printed; `housevox.card` shows the table.
"""

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from housevox.atomic import write_json
from housevox.errors import HousevoxError, run_cli
from housevox.jsonfile import read_json_object

log = logging.getLogger("housevox")

PROOF_FILE = "proof.json"
TAKES, STEPS, DURATION_S = 8, 20, 30.0
TARGET_B, TARGET_A = 0.7, 0.5  # the bars: last epoch FAD to B ≤ 0.7× base; trained base FAD to A ≤ 0.5× init


def _family_rows(base_work: Path) -> tuple[Path, list[dict]]:
    from housevox.data import read_index

    segments = base_work / "segments"
    return segments, read_index(segments / "cache")


def measure(run_dir: Path) -> dict:
    """Render and score every model of the proof; the document proof.json holds."""
    from housevox.acestep import load_dit, open_checkpoint
    from housevox.eval.__main__ import split_rows
    from housevox.eval.embed import load_embedding
    from housevox.eval.fad import fit_gaussian, frechet_distance
    from housevox.eval.prompts import DEFAULT_SEED, distinct_prompts, plan_takes
    from housevox.eval.render import DEFAULT_GUIDANCE_SCALE, Renderer, RenderSettings, render_takes
    from housevox.eval.score import embed_renders, reference_set
    from housevox.lora import load_lora_into, read_lora
    from housevox.report import load_run, run_config

    run = load_run(run_dir)
    if not run.saves:
        raise HousevoxError(f"{run.folder}: no LoRA exported yet")
    cfg = run_config(run)
    if not (cfg.get("model") or {}).get("checkpoint_dir"):
        raise HousevoxError(f"{run.folder / 'config.yaml'}: no model.checkpoint_dir (not a housevox fit run?)")
    checkpoint = Path(cfg["model"]["checkpoint_dir"])
    base_work = checkpoint.parent.parent / "base"
    init = base_work / "init" / checkpoint.name
    if not (init / "config.json").is_file():
        raise HousevoxError(f"{run.folder}: base {checkpoint} is not the demo base (no {init}); the proof is for make demo")
    segments, cache, train_rows, held_rows = split_rows(run, cfg.get("data") or {})
    default = (cfg.get("data") or {}).get("default_caption") or ""
    takes = plan_takes(distinct_prompts(train_rows, "train", default), distinct_prompts(held_rows, "held_out", default),
                       TAKES, DEFAULT_SEED)
    settings = RenderSettings.of(duration_s=DURATION_S, steps=STEPS, guidance_scale=DEFAULT_GUIDANCE_SCALE, shift=1.0)
    embedding = load_embedding("vae")
    family_segments, family_rows = _family_rows(base_work)
    refs = {"B": reference_set(embedding, segments, train_rows, cache),
            "A": reference_set(embedding, family_segments, family_rows, family_segments / "cache")}
    renderer = Renderer.from_checkpoint(open_checkpoint(checkpoint), torch.device("cpu"))

    def score(name: str, dit, scale: float) -> tuple[dict, list[torch.Tensor]]:
        log.info("proof: rendering %d takes of %s", len(takes), name)
        latents = render_takes(dit, renderer, takes, settings, scale, decode=False)
        vectors = fit_gaussian(np.concatenate(embed_renders(embedding, latents)))
        return {"model": name, **{f"fad_{k}": frechet_distance(vectors, ref.gaussian) for k, ref in refs.items()}}, latents

    rows = [score("random-init base", load_dit(init).eval(), 0.0)[0]]
    base_row, base_latents = score("demo base", load_dit(checkpoint).eval(), 0.0)
    rows.append(base_row)
    dit = load_dit(checkpoint).eval()
    for save in run.saves:
        load_lora_into(dit, read_lora(save.comfyui_file), source=str(save.comfyui_file))
        rows.append({**score(f"epoch {save.epoch}", dit, 1.0)[0], "epoch": save.epoch, "lora_scale": 1.0})
    last = run.saves[-1].epoch
    zero_row, zero_latents = score(f"epoch {last} at scale 0", dit, 0.0)
    half_row, _ = score(f"epoch {last} at scale 0.5", dit, 0.5)
    rows += [{**zero_row, "epoch": last, "lora_scale": 0.0}, {**half_row, "epoch": last, "lora_scale": 0.5}]
    final = next(r for r in rows if r.get("epoch") == last and r.get("lora_scale") == 1.0)
    sweep = [zero_row["fad_B"], half_row["fad_B"], final["fad_B"]]
    checks = {
        "fad_B_last_vs_base": final["fad_B"] / base_row["fad_B"],
        "fad_A_base_vs_random_init": base_row["fad_A"] / rows[0]["fad_A"],
        "scale_0_bitwise_base": all(torch.equal(a, b) for a, b in zip(zero_latents, base_latents, strict=True)),
        "sweep_monotone": sweep[0] > sweep[1] > sweep[2],
    }
    checks["passed"] = bool(checks["fad_B_last_vs_base"] <= TARGET_B and checks["fad_A_base_vs_random_init"] <= TARGET_A
                            and checks["scale_0_bitwise_base"] and checks["sweep_monotone"])
    return {"embedding": embedding.record, "render": settings.record(), "takes": [t.record() for t in takes],
            "reference": {k: ref.record() for k, ref in refs.items()}, "rows": rows, "checks": checks}


def proof_table_markdown(doc: dict) -> str:
    """FAD to B and to A per model, then the four checks against the issue's bars."""
    lines = ["| model | LoRA scale | FAD to style B (run's training set) | FAD to family A (base's training set) |",
             "|---|---:|---:|---:|"]
    for r in doc["rows"]:
        lines.append(f"| {r['model']} | {r.get('lora_scale', '—')} | {r['fad_B']:.4g} | {r['fad_A']:.4g} |")
    c = doc["checks"]
    lines += ["",
              f"- FAD to B, last epoch / demo base: {c['fad_B_last_vs_base']:.2f}× (bar ≤ {TARGET_B}×)",
              f"- FAD to A, demo base / random-init base: {c['fad_A_base_vs_random_init']:.3f}× (bar ≤ {TARGET_A}×)",
              f"- LoRA scale 0 renders the base bitwise: {'yes' if c['scale_0_bitwise_base'] else 'NO'}",
              f"- scale sweep 0 → 0.5 → 1 lowers FAD to B monotonically: {'yes' if c['sweep_monotone'] else 'NO'}",
              f"- all bars met: {'yes' if c['passed'] else 'NO'}"]
    return "\n".join(lines)


def read_proof(folder: Path) -> dict | None:
    path = Path(folder) / PROOF_FILE
    return read_json_object(path, "demo proof") if path.is_file() else None


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(prog="python -m housevox.demo_proof", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="the demo run folder (lightning_logs/demo)")
    args = p.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same renders on every machine
    try:
        doc = measure(args.run_dir)
    finally:
        torch.set_num_threads(threads)
    write_json(args.run_dir / PROOF_FILE, doc)
    s = doc["render"]
    print(f"\nDemo proof: FAD ({doc['embedding']['kind']} embedding: sampler latents vs cache latents, per frame) of "
          f"{len(doc['takes'])} takes, {s['steps']} steps, {s['duration_s']:g} s each\n")
    print(proof_table_markdown(doc))
    print(f"\nproof: {args.run_dir / PROOF_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
