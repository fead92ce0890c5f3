"""What diffusers' ACE-Step loader does with an adapter file, judged from its key names by diffusers' own code.

`AceStepPipeline.load_lora_weights` runs `lora_state_dict` (drops `dora_scale`, renames ACE-Step's
original PEFT keys to diffusers' names only when some key holds `q_proj` or `k_proj`), refuses a
state dict with a key lacking `lora`, and hands the transformer only the keys under `transformer.`:
so a PEFT file whose targets are MLP-only keeps its `base_model.model.` keys and is ignored without
an error. `diffusers_reading` runs the same `lora_state_dict` on the names and applies those two rules.
"""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DiffusersReading:
    verdict: str  # "loads" | "refuses" | "ignores"
    modules: int  # modules the transformer receives
    detail: str

    def line(self) -> str:
        return f"diffusers (AceStepPipeline.load_lora_weights): {self.verdict} {self.detail}"


def diffusers_reading(keys: list[str]) -> DiffusersReading:
    from diffusers.loaders import AceStepLoraLoaderMixin
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # its DoRA notice is ours to word
    try:
        state = AceStepLoraLoaderMixin.lora_state_dict({k: torch.empty(0) for k in keys})
    finally:
        diffusers_logging.set_verbosity(verbosity)
    bad = sorted(k for k in state if "lora" not in k)
    if bad:
        return DiffusersReading("refuses", 0, f"this file (its key {bad[0]} has no 'lora': a ComfyUI or LoKr layout)")
    ignored = sorted(k for k in state if not k.startswith("transformer."))
    modules = len({k.rsplit(".lora", 1)[0] for k in state if k.startswith("transformer.")})
    if ignored:
        return DiffusersReading("ignores", modules, f"{len(ignored)} of {len(state)} tensors without an error (e.g. "
                                f"{ignored[0]}: its ACE-Step detection needs a q_proj/k_proj key, so MLP-only targets "
                                "stay unrenamed); give it `python -m housevox.lora convert … --to diffusers`")
    return DiffusersReading("loads", modules, f"all {modules} modules")
