"""`inspect`: what an adapter file holds and why it is the size it is, from its header alone.

The seed blamed alpha for a file size; the size is the number of trained values times the
bytes per value (LoRA: Σ r·(in+out); LoKr: the Kronecker factors' sizes; DoRA: LoRA plus one
magnitude per output row), so printing that arithmetic settles such questions.
"""

import math
from collections import Counter

from housevox.lora.apps import diffusers_reading
from housevox.lora.formats import CONVENTION_KEY, LoRAFile
from housevox.lora.targets import ADAPTER_NAMES, module_kind

_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "F8_E4M3": 1, "F8_E5M2": 1}
_FORMAT_NAMES = {
    "peft": "PEFT adapter (ACE-Step, ComfyUI)",
    "comfyui": "ComfyUI single file (ComfyUI key names, .alpha per module)",
    "diffusers": "diffusers (AceStepPipeline.load_lora_weights)",
    "acestep-lokr": "ACE-Step LoKr file (its handler's LyCORIS loader)",
}
_SIZE_DRIVERS = {
    "lora": "rank, targets and dtype do",
    "dora": "rank, targets and dtype do (DoRA adds one magnitude per output row)",
    "lokr": "lokr_factor, the rank of split factors, targets and dtype do",
}


def _range(values) -> str:
    values = list(values)
    lo, hi = min(values), max(values)
    return f"{lo:g}" if lo == hi else f"{lo:g}..{hi:g}"


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _formula(kind: str, rank: int, parts: dict[str, tuple[int, ...]]) -> str:
    """How one module's value count is made up, in the adapter type's own terms."""
    if kind == "lokr":
        sides = []
        for side in ("w1", "w2"):
            full = parts.get(f"lokr_{side}")
            split = f"{_dims(parts[f'lokr_{side}_a'])}+{_dims(parts[f'lokr_{side}_b'])}" if full is None else None
            sides.append(f"{side} {_dims(full)}" if full is not None else f"{side} {split} (rank {rank})")
        return " + ".join(sides)
    (r, n_in), (n_out, _) = parts["A"], parts["B"]
    formula = f"{r}*({n_in}+{n_out})"
    return formula + f" + {n_out} (magnitude)" if kind == "dora" else formula


def describe(lf: LoRAFile) -> list[str]:
    """The inspect report as lines."""
    shapes, kind = lf.shapes, lf.adapter_type
    counts = {m: sum(math.prod(s) for s in parts.values()) for m, parts in shapes.items()}
    params = lf.params
    kinds = Counter(module_kind(m) for m in shapes)
    layers = sorted({int(m.split(".")[1]) for m in shapes})
    scales = [lf.scale(m) for m in shapes]
    lines = [
        f"file: {lf.file}",
        f"format: {_FORMAT_NAMES[lf.format]}",
        f"adapter: {ADAPTER_NAMES[kind]}",
        f"modules: {len(shapes)} (self {kinds['self']} / cross {kinds['cross']} / mlp {kinds['mlp']}), "
        f"layers {layers[0]}..{layers[-1]}",
        f"rank: {_range(lf.ranks.values())}  alpha: {_range(lf.alpha.values())} ({lf.alpha_source})  "
        f"scale alpha/r: {_range(round(s, 4) for s in scales)}",
        f"dtype: {', '.join(f'{d} ({n} tensors)' for d, n in sorted(lf.dtypes.items()))}",
        f"parameters: {params:,} = sum over modules of {'r*(in+out)' if kind == 'lora' else 'their tensors'}:",
    ]
    groups = Counter()
    for m, parts in shapes.items():
        block, name = m.split(".")[2:4]
        groups[(block, name, _formula(kind, lf.ranks[m], parts), counts[m])] += 1
    for (block, name, formula, each), count in groups.items():
        lines.append(f"  {block}.{name}: {formula} = {each:,} x {count} = {each * count:,}")
    if kind == "lokr":
        full = sum(1 for parts in shapes.values() if {"lokr_w1", "lokr_w2"} <= set(parts))
        lines.append(f"  {full} of {len(shapes)} modules have both factors full: ComfyUI and LyCORIS apply scale 1 "
                     "there and ignore alpha (housevox folds PEFT's alpha/r into lokr_w1 in those files)")
    if all(d in _BYTES for d in lf.values):
        data = sum(n * _BYTES[d] for d, n in lf.values.items())
        terms = " + ".join(f"{n:,} params x {_BYTES[d]} bytes" for d, n in sorted(lf.values.items()))
        line = f"size: {terms} = {data:,} bytes ({data / 1e6:.1f} MB)"
        if lf.file.is_file():
            size = lf.file.stat().st_size
            line += f"; on disk {size / 1e6:.1f} MB ({size - data:,} bytes of header and alpha scalars)"
        lines.append(line)
    lines.append(
        f"  (bf16 {params * 2 / 1e6:.1f} MB, fp32 {params * 4 / 1e6:.1f} MB.) alpha is one number per module and "
        f"only scales the update by alpha/r: it never changes the file size; {_SIZE_DRIVERS[kind]}."
    )
    if CONVENTION_KEY in lf.header:
        lines.append(f"convention: {lf.header[CONVENTION_KEY]}")
    lines.append(diffusers_reading(list(lf.keys)).line())
    if lf.metadata:
        lines.append("metadata:")
        lines += [f"  {k}: {v}" for k, v in sorted(lf.metadata.items())]
    return lines
