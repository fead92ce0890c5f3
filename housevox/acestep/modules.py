"""The ACE-Step networks as housevox uses them: diffusers' classes, made faithful to upstream.

diffusers 0.42 pools the timbre encoder at frame 0 for every layout; upstream's XL
code prepends the learned `special_token` to each reference clip and pools that
position instead. `UpstreamTimbreEncoder` does what upstream does for both layouts.
"""

import torch
import torch.nn.functional as F
from diffusers.models.transformers.ace_step_transformer import (
    AceStepTransformer1DModel,
    _ace_step_rotary_freqs,
    _create_4d_mask,
    _is_flash_attention_backend,
)
from diffusers.pipelines.ace_step.modeling_ace_step import AceStepConditionEncoder, AceStepTimbreEncoder

from housevox.acestep.config import AceStepConfig


class AceStepDiT(AceStepTransformer1DModel):
    """The DiT, called as `dit(x_t, t, r, encoder_hidden_states, context_latents)` → velocity [B, T, 64].

    diffusers' forward drops any condition mask, so conditions of different lengths could not share a
    batch. This forward is diffusers' with one addition: `encoder_attention_mask` [B, L] (True = token)
    masks padded condition tokens out of every block's cross-attention, so each row of a padded batch
    gets the velocity of its segment alone. With mask None (nothing padded) it computes exactly what
    diffusers and upstream compute.
    """

    def forward(self, hidden_states, timestep, timestep_r, encoder_hidden_states, context_latents,
                encoder_attention_mask: torch.Tensor | None = None):
        temb_t, proj_t = self.time_embed(timestep)
        temb_r, proj_r = self.time_embed_r(timestep - timestep_r)
        temb, timestep_proj = temb_t + temb_r, proj_t + proj_r
        x = torch.cat([context_latents, hidden_states], dim=-1)
        frames = x.shape[1]
        if frames % self.patch_size:
            x = F.pad(x, (0, 0, 0, self.patch_size - frames % self.patch_size))
        x = self.proj_in_conv(x.transpose(1, 2)).transpose(1, 2)
        encoder_hidden_states = self.condition_embedder(encoder_hidden_states)
        seq_len, dtype, device = x.shape[1], x.dtype, x.device
        rope = _ace_step_rotary_freqs(seq_len, self.head_dim, self.rope_theta, device, dtype)
        sliding = None
        if not _is_flash_attention_backend(self.layers[0].self_attn.processor):
            sliding = _create_4d_mask(seq_len=seq_len, dtype=dtype, device=device,
                                      sliding_window=self.config.sliding_window, is_sliding_window=True, is_causal=False)
        cross_mask = condition_mask(encoder_attention_mask)
        for layer, kind in zip(self.layers, self.layer_types):
            self_mask = sliding if kind == "sliding_attention" else None
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(layer, x, rope, timestep_proj, self_mask, encoder_hidden_states,
                                                      cross_mask)
            else:
                x = layer(x, rope, timestep_proj, self_mask, encoder_hidden_states, cross_mask)
        shift, scale = (self.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
        x = (self.norm_out(x) * (1 + scale) + shift).type_as(x)
        return self.proj_out_conv(x.transpose(1, 2)).transpose(1, 2)[:, :frames, :]


def condition_mask(encoder_attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """[B, L] token mask → the cross-attention's boolean [B, 1, 1, L] keep-mask.

    Callers pass None for an unpadded batch (they know on the host, so no device sync here).
    """
    return None if encoder_attention_mask is None else encoder_attention_mask.bool()[:, None, None, :]


class UpstreamTimbreEncoder(AceStepTimbreEncoder):
    """Timbre encoder that prepends `special_token` (XL) or not (2B), as upstream does."""

    def __init__(self, *args, prepend_special_token: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.prepend_special_token = prepend_special_token

    def forward(self, refer_audio_acoustic_hidden_states_packed, refer_audio_order_mask):
        hidden_states = self.embed_tokens(refer_audio_acoustic_hidden_states_packed)
        if self.prepend_special_token:
            token = self.special_token.to(hidden_states.dtype).expand(hidden_states.shape[0], -1, -1)
            hidden_states = torch.cat([token, hidden_states], dim=1)
        seq_len, dtype, device = hidden_states.shape[1], hidden_states.dtype, hidden_states.device
        position_embeddings = _ace_step_rotary_freqs(seq_len, self.head_dim, self.rope_theta, device, dtype)
        sliding_mask = _create_4d_mask(
            seq_len=seq_len, dtype=dtype, device=device, sliding_window=self.sliding_window,
            is_sliding_window=True, is_causal=False,
        )
        for layer, kind in zip(self.layers, self._layer_types):
            mask = sliding_mask if kind == "sliding_attention" else None
            hidden_states = layer(hidden_states=hidden_states, position_embeddings=position_embeddings, attention_mask=mask)
        pooled = self.norm(hidden_states)[:, 0, :]
        return self.unpack_timbre_embeddings(pooled, refer_audio_order_mask)


class ConditionEncoder(AceStepConditionEncoder):
    """diffusers' condition encoder with the upstream timbre pooling for this layout."""

    def __init__(self, *, xl_layout: bool, **kwargs):
        super().__init__(**kwargs)
        old = self.timbre_encoder
        self.timbre_encoder = UpstreamTimbreEncoder(
            hidden_size=kwargs["hidden_size"],
            intermediate_size=kwargs["intermediate_size"],
            timbre_hidden_dim=kwargs["timbre_hidden_dim"],
            num_timbre_encoder_hidden_layers=kwargs["num_timbre_encoder_hidden_layers"],
            num_attention_heads=kwargs["num_attention_heads"],
            num_key_value_heads=kwargs["num_key_value_heads"],
            head_dim=kwargs["head_dim"],
            rope_theta=kwargs["rope_theta"],
            attention_bias=kwargs["attention_bias"],
            rms_norm_eps=kwargs["rms_norm_eps"],
            sliding_window=kwargs["sliding_window"],
            prepend_special_token=xl_layout,
        ).to(old.special_token.device)
        del old


def compile_blocks(dit: AceStepDiT) -> None:
    """Regional torch.compile: each transformer block in place, one graph shared by all (same code, weights as inputs).

    Compiling blocks rather than the whole DiT keeps the compile to one block's graph (seconds to a
    minute, once per process and condition-length pattern) and leaves gradient checkpointing, PEFT
    adapters and bitsandbytes layers working (what dynamo cannot trace runs eagerly).
    """
    for block in dit.layers:
        block.compile()


def build_dit(cfg: AceStepConfig, device: str | torch.device = "meta") -> AceStepDiT:
    with torch.device(device):
        return AceStepDiT(**cfg.dit_kwargs())


def build_condition_encoder(cfg: AceStepConfig, device: str | torch.device = "meta") -> ConditionEncoder:
    with torch.device(device):
        return ConditionEncoder(xl_layout=cfg.xl_layout, **cfg.condition_encoder_kwargs())
