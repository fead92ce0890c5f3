"""Caption and lyrics → the DiT's cross-attention condition, exactly as upstream builds it.

One function serves the segment cache and `housevox.generate`, so a LoRA hears at
inference the same condition it was trained on.
"""

from dataclasses import dataclass

import torch

from housevox.acestep.config import AceStepConfig

INSTRUCTION = "Fill the audio semantic mask based on the given conditions:"
MAX_CAPTION_TOKENS = 256
MAX_LYRIC_TOKENS = 2048


def _meta(value) -> str:
    return "N/A" if value is None or str(value).strip() == "" else str(value)


def format_caption_prompt(caption: str, bpm=None, key=None, timesignature=None, duration_s: float = 30.0) -> str:
    """Upstream's SFT generation prompt; the section layout is what the text encoder was trained on."""
    metas = (
        f"- bpm: {_meta(bpm)}\n- timesignature: {_meta(timesignature)}\n"
        f"- keyscale: {_meta(key)}\n- duration: {int(duration_s)} seconds\n"
    )
    return f"# Instruction\n{INSTRUCTION}\n\n# Caption\n{caption}\n\n# Metas\n{metas}<|endoftext|>\n"


def format_lyrics_prompt(lyrics: str | None, language: str | None = "en") -> str:
    return f"# Languages\n{language or 'en'}\n\n# Lyric\n{lyrics or '[Instrumental]'}<|endoftext|>"


def context_latents(silence_latent: torch.Tensor, frames: int, chunk_mask: float = 1.0) -> torch.Tensor:
    """[frames, 2·D] = silence latent ‖ chunk mask: 'generate everything' for text-to-music.

    Training uses a mask of ones; upstream's inference default ("auto") sends 2.0 for a full take.
    """
    silence = silence_latent[0]
    if silence.shape[0] < frames:
        silence = silence.repeat((frames + silence.shape[0] - 1) // silence.shape[0], 1)
    silence = silence[:frames]
    return torch.cat([silence, torch.full_like(silence, chunk_mask)], dim=-1)


def pad_rows(rows: list[torch.Tensor]) -> torch.Tensor:
    """Stack [L_i, ...] tensors into [B, max L, ...], zero (False) after each row's end: conditions or their masks.

    The DiT masks the padding out of its cross-attention (`encoder_attention_mask`), so what the
    zeros are never matters.
    """
    longest = max(r.shape[0] for r in rows)
    return torch.stack([torch.cat([r, r.new_zeros((longest - r.shape[0], *r.shape[1:]))]) for r in rows])


@dataclass
class Condition:
    encoder_hidden_states: torch.Tensor  # [L, E]
    encoder_attention_mask: torch.Tensor  # [L] bool


class ConditionBuilder:
    """Holds the text encoder, tokenizer and condition encoder while conditions are built."""

    def __init__(self, text_encoder, tokenizer, condition_encoder, config: AceStepConfig):
        self.text_encoder, self.tokenizer, self.encoder, self.config = text_encoder, tokenizer, condition_encoder, config

    @classmethod
    def from_checkpoint(cls, checkpoint_dir, dtype=torch.float32, device="cpu") -> "ConditionBuilder":
        from housevox.acestep.loading import load_condition_encoder, load_text_encoder, open_checkpoint

        ckpt = open_checkpoint(checkpoint_dir)
        text_encoder, tokenizer = load_text_encoder(ckpt, dtype=dtype, device=device)
        return cls(text_encoder, tokenizer, load_condition_encoder(ckpt, dtype=dtype, device=device), ckpt.config)

    @property
    def device(self) -> torch.device:
        return self.encoder.null_condition_emb.device

    def _tokens(self, text: str, max_length: int) -> torch.Tensor:
        ids = self.tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt").input_ids
        return ids.to(self.device)

    @torch.no_grad()
    def encode(self, caption: str, lyrics: str | None = None, *, bpm=None, key=None, timesignature=None,
               language: str | None = "en", duration_s: float = 30.0) -> Condition:
        """Caption through the full Qwen3 model, lyrics through its token embeddings, then the condition encoder."""
        text_ids = self._tokens(format_caption_prompt(caption, bpm, key, timesignature, duration_s), MAX_CAPTION_TOKENS)
        lyric_ids = self._tokens(format_lyrics_prompt(lyrics, language), MAX_LYRIC_TOKENS)
        dtype = self.encoder.null_condition_emb.dtype
        text_hidden = self.text_encoder(input_ids=text_ids).last_hidden_state.to(dtype)
        lyric_hidden = self.text_encoder.get_input_embeddings()(lyric_ids).to(dtype)
        refer = self.encoder.silence_latent[:, : self.config.timbre_fix_frame].to(dtype)
        hidden, mask = self.encoder(
            text_hidden_states=text_hidden,
            text_attention_mask=torch.ones_like(text_ids),
            lyric_hidden_states=lyric_hidden,
            lyric_attention_mask=torch.ones_like(lyric_ids),
            refer_audio_acoustic_hidden_states_packed=refer,
            refer_audio_order_mask=torch.zeros(1, dtype=torch.long, device=self.device),
        )
        return Condition(hidden[0].float().cpu(), mask[0].bool().cpu())

    def null_condition(self, length: int) -> torch.Tensor:
        """[length, E] copies of the learned null embedding (the 'no condition' for CFG)."""
        return self.encoder.null_condition_emb[0].float().cpu().expand(length, -1).clone()
