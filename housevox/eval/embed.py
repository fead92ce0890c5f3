"""Audio (and text) embeddings for FAD and the CLAP score: LAION CLAP through transformers, or the checkpoint's VAE.

Every clip is 48 kHz stereo float32 [2, S], the format renders and segments share. An
embedding turns one clip into [n, D] vectors: FAD fits its Gaussian to all vectors of a
set (fadtk's per-window convention), the CLAP score compares each vector with the prompt.
"""

from pathlib import Path

import numpy as np
import torch

from housevox.acestep.hub import split_revision
from housevox.audio.resample import resample
from housevox.errors import HousevoxError


SAMPLE_RATE = 48_000
DEFAULT_CLAP = "laion/larger_clap_music"


class ClapEmbedding:
    """CLAP audio windows (the model's own length, 10 s for LAION's) and caption embeddings, unit-normalised."""

    def __init__(self, model, processor, name: str, device: torch.device | str = "cpu"):
        self.model, self.processor = model.eval().to(device), processor
        self.device, self.record = torch.device(device), {"kind": "clap", "model": name}

    @classmethod
    def from_pretrained(cls, name: str = DEFAULT_CLAP, device: torch.device | str = "cpu") -> "ClapEmbedding":
        """A model folder (never the hub), or a hub repo `name[@revision]` fetched into the Hugging Face cache on
        first use (transformers downloads through huggingface_hub; HF_HUB_OFFLINE=1 reads the cache only)."""
        from huggingface_hub.utils import HFValidationError, validate_repo_id
        from transformers import ClapModel, ClapProcessor

        local = Path(name).expanduser().is_dir()
        repo, revision = (name, None) if local else split_revision(name)
        if not local:
            try:
                validate_repo_id(repo)
            except HFValidationError:
                raise HousevoxError(f"CLAP model {name}: no such folder (nor a hub repo id such as {DEFAULT_CLAP})") from None
        try:
            processor = ClapProcessor.from_pretrained(repo, revision=revision, local_files_only=local)
            model = ClapModel.from_pretrained(repo, revision=revision, local_files_only=local)
        except (OSError, ValueError):  # not cached and no hub / no such repo or revision / a broken folder
            fetch = f"hf download {repo}" + (f" --revision {revision}" if revision else "")
            raise HousevoxError(
                f"CLAP model {name}: {'cannot load the folder' if local else 'not in the local Hugging Face cache and the hub cannot be reached (offline, no network or no such repo)'}; "
                f"fetch it once (`{fetch}`) or use --embedding vae") from None
        embedding = cls(model, processor, name, device)
        if not local:  # the commit the cache resolved: eval.json says which weights scored
            from huggingface_hub import try_to_load_from_cache

            config = try_to_load_from_cache(repo, "config.json", revision=revision)
            if isinstance(config, str):
                embedding.record["revision"] = Path(config).parent.name
        return embedding

    scores_text = True

    def windows(self, clip: torch.Tensor) -> list[np.ndarray]:
        """Mono windows of the model's length; a last partial window counts when at least half full."""
        features = self.processor.feature_extractor
        mono = clip.float().mean(0).numpy()
        if features.sampling_rate != SAMPLE_RATE:
            mono = resample(mono[None], SAMPLE_RATE, features.sampling_rate)[0]
        size = features.nb_max_samples
        starts = range(0, max(len(mono) - size // 2, 1), size)
        return [mono[s:s + size] for s in starts]

    @torch.no_grad()
    def audio(self, clip: torch.Tensor) -> np.ndarray:
        inputs = self.processor.feature_extractor(self.windows(clip), sampling_rate=self.processor.feature_extractor.sampling_rate,
                                                  return_tensors="pt")
        # No window exceeds the model's length, so none is "longer": the extractor's random pick of one is undone.
        inputs["is_longer"] = torch.zeros_like(inputs["is_longer"])
        out = self.model.get_audio_features(**{k: v.to(self.device) for k, v in inputs.items()})
        return out.pooler_output.double().cpu().numpy()

    @torch.no_grad()
    def text(self, captions: list[str]) -> np.ndarray:
        tokens = self.processor.tokenizer(captions, padding=True, truncation=True, return_tensors="pt")
        out = self.model.get_text_features(**{k: v.to(self.device) for k, v in tokens.items()})
        return out.pooler_output.double().cpu().numpy()


class VaeEmbedding:
    """The checkpoint's own VAE: one 64-wide posterior-mean latent per 1/25 s frame. No download, no text side."""

    record = {"kind": "vae"}
    scores_text = False

    def __init__(self, vae):
        self.vae = vae

    @torch.no_grad()
    def audio(self, clip: torch.Tensor) -> np.ndarray:
        param = next(self.vae.parameters())
        posterior = self.vae.encode(clip[None].to(param.device, param.dtype)).latent_dist
        return posterior.mean[0].T.double().cpu().numpy()


def load_embedding(kind: str, vae, clap_model: str = DEFAULT_CLAP, device: torch.device | str = "cpu"):
    """`vae` (the checkpoint's VAE, already loaded for decoding) or `clap` (`clap_model` from the local cache)."""
    if kind == "vae":
        return VaeEmbedding(vae)
    if kind == "clap":
        return ClapEmbedding.from_pretrained(clap_model, device)
    raise HousevoxError(f"embedding {kind!r}: choose clap or vae")


def clap_scores(embedding, clips_vectors: list[np.ndarray], captions: list[str]) -> list[float]:
    """Per take: mean cosine between its caption and each of its audio windows (CLAP vectors are unit length)."""
    text = embedding.text(captions)
    return [float((vectors @ t).mean()) for vectors, t in zip(clips_vectors, text, strict=True)]
