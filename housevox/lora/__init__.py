"""Adapters (LoRA, LoKr, DoRA) for the ACE-Step DiT: which modules get them and the file layouts."""

from housevox.lora.formats import (
    AdapterWeights,
    LoKrWeights,
    LoRAFile,
    LoRAWeights,
    extract_lora,
    load_lora_into,
    open_lora,
    read_lora,
    write_acestep_lokr,
    write_comfyui_file,
    write_diffusers_file,
    write_peft_folder,
)
from housevox.lora.targets import (
    ADAPTER_TYPES,
    ORIGINAL_TO_DIFFUSERS,
    LoRASettings,
    TargetPlan,
    apply_lora,
    init_lora_weights,
    resolve_targets,
    set_adapter_compute_dtype,
    set_lora_scale,
    set_sample_seeds,
    to_diffusers_path,
    to_original_path,
)

__all__ = [
    "ADAPTER_TYPES", "AdapterWeights", "LoKrWeights", "ORIGINAL_TO_DIFFUSERS", "LoRAFile", "LoRASettings", "LoRAWeights", "TargetPlan", "apply_lora", "extract_lora",
    "init_lora_weights", "load_lora_into", "open_lora", "read_lora", "resolve_targets", "set_adapter_compute_dtype", "set_lora_scale",
    "set_sample_seeds",
    "to_diffusers_path", "to_original_path", "write_acestep_lokr", "write_comfyui_file", "write_diffusers_file", "write_peft_folder",
]
