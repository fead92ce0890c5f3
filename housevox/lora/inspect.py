"""`inspect`: what a LoRA file holds and why it is the size it is, from its header alone.

The seed blamed alpha for a file size; the size is Σ r·(in+out) parameters times the
bytes per value, so printing that arithmetic settles such questions.
"""

from collections import Counter

from housevox.lora.formats import LoRAFile
from housevox.lora.targets import module_kind

_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "F8_E4M3": 1, "F8_E5M2": 1}
_FORMAT_NAMES = {
    "peft": "PEFT adapter (ACE-Step, ComfyUI)",
    "comfyui": "ComfyUI single file (lora_down/lora_up/alpha)",
    "diffusers": "diffusers (AceStepPipeline.load_lora_weights)",
}


def _range(values) -> str:
    values = list(values)
    lo, hi = min(values), max(values)
    return f"{lo:g}" if lo == hi else f"{lo:g}..{hi:g}"


def describe(lf: LoRAFile) -> list[str]:
    """The inspect report as lines."""
    shapes = lf.shapes
    ranks = {m: a[0] for m, (a, _) in shapes.items()}
    kinds = Counter(module_kind(m) for m in shapes)
    params = sum(r * (shapes[m][0][1] + shapes[m][1][0]) for m, r in ranks.items())
    layers = sorted({int(m.split(".")[1]) for m in shapes})
    scales = [lf.alpha[m] / r for m, r in ranks.items()]
    lines = [
        f"file: {lf.file}",
        f"format: {_FORMAT_NAMES[lf.format]}",
        f"modules: {len(shapes)} (self {kinds['self']} / cross {kinds['cross']} / mlp {kinds['mlp']}), "
        f"layers {layers[0]}..{layers[-1]}",
        f"rank: {_range(ranks.values())}  alpha: {_range(lf.alpha.values())} ({lf.alpha_source})  "
        f"scale alpha/r: {_range(round(s, 4) for s in scales)}",
        f"dtype: {', '.join(f'{d} ({n} tensors)' for d, n in sorted(lf.dtypes.items()))}",
        f"parameters: {params:,} = sum over modules of r*(in+out):",
    ]
    groups = Counter()
    for m, r in ranks.items():
        block, name = m.split(".")[2:4]
        groups[(block, name, r, shapes[m][0][1], shapes[m][1][0])] += 1
    for (block, name, r, n_in, n_out), count in groups.items():
        each = r * (n_in + n_out)
        lines.append(f"  {block}.{name}: {r}*({n_in}+{n_out}) = {each:,} x {count} = {each * count:,}")
    per_value = {_BYTES.get(d) for d in lf.dtypes}
    if len(per_value) == 1 and None not in per_value:
        nbytes = per_value.pop()
        data = params * nbytes
        line = f"size: {params:,} params x {nbytes} bytes = {data:,} bytes ({data / 1e6:.1f} MB)"
        if lf.file.is_file():
            size = lf.file.stat().st_size
            line += f"; on disk {size / 1e6:.1f} MB ({size - data:,} bytes of header and alpha scalars)"
        lines.append(line)
    lines.append(
        f"  (bf16 {params * 2 / 1e6:.1f} MB, fp32 {params * 4 / 1e6:.1f} MB.) alpha is one number per module and "
        "only scales the update by alpha/r: it never changes the file size; rank, targets and dtype do."
    )
    if lf.metadata:
        lines.append("metadata:")
        lines += [f"  {k}: {v}" for k, v in sorted(lf.metadata.items())]
    return lines
