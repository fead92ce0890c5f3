"""Write a random-init checkpoint folder in exactly the upstream layout.

`python -m housevox.acestep.fixture OUT --preset tiny` gives tests and the demo a
real checkpoint to load through the production code, with no download: config.json,
sharded model safetensors + index, silence_latent.pt, a tiny `vae/` and a tiny
`Qwen3-Embedding-0.6B/` whose tokenizer is trained offline.
"""

import argparse
import json
import re
import sys
import warnings
from pathlib import Path

import torch

from housevox import atomic
from housevox.acestep.checkpoint import TEXT_ENCODER_DIRNAME
from housevox.acestep.config import AceStepConfig
from housevox.acestep.modules import build_condition_encoder, build_dit
from housevox.acestep.presets import PRESETS, REAL_VAE
from housevox.errors import HousevoxError, UsageError, run_cli
from housevox.seeding import isolated_global_rng

TINY_VAE = dict(
    encoder_hidden_size=8, downsampling_ratios=[2, 4, 4, 6, 10], channel_multiples=[1, 1, 1, 1, 1],
    decoder_channels=4, decoder_input_channels=4, audio_channels=2, sampling_rate=48000,
)
_TOKENIZER_CORPUS = """# Instruction
Fill the audio semantic mask based on the given conditions:
# Caption
house music style, soulful vocal performance, driving groove, vocal track singing, 122 bpm
deep house, classic house piano chord, rhythmic bassline, 909 percussion, clear mix, female voice
# Metas
- bpm: 122
- timesignature: 4
- keyscale: A minor
- duration: 30 seconds
# Languages
en
# Lyric
[Verse] [Chorus] [Hook] You took your love away from me. Left me dancing with your memory.
Why did you leave me? Why did you walk away? ooh yeah baby tonight we dance
0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,:;!?'"-[]()#
"""

_REVERSE_RENAMES = (
    (".to_q.", ".q_proj."), (".to_k.", ".k_proj."), (".to_v.", ".v_proj."), (".to_out.0.", ".o_proj."),
    (".norm_q.", ".q_norm."), (".norm_k.", ".k_norm."),
)


def to_upstream_key(part: str, key: str) -> str:
    """Inverse of `checkpoint.convert_upstream_key` for the parts housevox loads."""
    if key == "null_condition_emb":
        return key
    key = "." + key
    for new, old in _REVERSE_RENAMES:
        key = key.replace(new, old)
    key = key[1:].replace("proj_in_conv.", "proj_in.1.").replace("proj_out_conv.", "proj_out.1.")
    return f"{part}.{key}"


def _audio_tokenizer_state(raw: dict) -> dict[str, torch.Tensor]:
    """Random `tokenizer.*`/`detokenizer.*` tensors shaped like upstream's (skipped on load, present on disk)."""
    from diffusers.pipelines.ace_step.modeling_ace_step import AceStepAudioTokenDetokenizer, AceStepAudioTokenizer

    dims = dict(
        hidden_size=raw.get("encoder_hidden_size", raw["hidden_size"]),
        intermediate_size=raw.get("encoder_intermediate_size", raw["intermediate_size"]),
        num_attention_heads=raw.get("encoder_num_attention_heads", raw["num_attention_heads"]),
        num_key_value_heads=raw.get("encoder_num_key_value_heads", raw["num_key_value_heads"]),
        head_dim=raw["head_dim"], num_attention_pooler_hidden_layers=raw["num_attention_pooler_hidden_layers"],
    )
    out = {}
    tok = AceStepAudioTokenizer(fsq_dim=raw["fsq_dim"], fsq_input_levels=raw["fsq_input_levels"], **dims)
    detok = AceStepAudioTokenDetokenizer(**dims)
    for part, module in (("tokenizer", tok), ("detokenizer", detok)):
        for key, value in module.state_dict().items():
            out[to_upstream_key(part, key)] = value
    return out


def upstream_state_dict(cfg: AceStepConfig, seed: int) -> dict[str, torch.Tensor]:
    """Every upstream key with random values (norms and biases too, so a loader that skips one fails a parity test)."""
    with isolated_global_rng(seed):
        dit, enc = build_dit(cfg, device="cpu"), build_condition_encoder(cfg, device="cpu")
        tokenizer_state = _audio_tokenizer_state(cfg.raw)
    state = {to_upstream_key("decoder", k): v for k, v in dit.state_dict().items()}
    for key, value in enc.state_dict().items():
        if key != "silence_latent":
            state[to_upstream_key("encoder", key)] = value
    state.update(tokenizer_state)
    gen = torch.Generator().manual_seed(seed + 1)
    for key, value in state.items():
        if re.search(r"norm.*\.weight$|\.bias$", key):
            state[key] = value + 0.1 * torch.randn(value.shape, generator=gen)
    return state


def write_sharded(state: dict[str, torch.Tensor], folder: Path, stem: str, shard_bytes: int) -> None:
    shards, current, size = [], {}, 0
    for key in sorted(state):
        nbytes = state[key].numel() * state[key].element_size()
        if current and size + nbytes > shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[key], size = state[key], size + nbytes
    shards.append(current)
    if len(shards) == 1:
        atomic.save_safetensors(shards[0], folder / f"{stem}.safetensors", {"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"{stem}-{i:05d}-of-{len(shards):05d}.safetensors"
        atomic.save_safetensors(shard, folder / name, {"format": "pt"})
        weight_map.update({k: name for k in shard})
    total = sum(t.numel() * t.element_size() for t in state.values())
    atomic.write_json(folder / f"{stem}.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})


def random_vae(seed: int, dims: dict):
    from diffusers import AutoencoderOobleck

    with warnings.catch_warnings(), isolated_global_rng(seed):
        warnings.simplefilter("ignore", FutureWarning)  # Oobleck still uses the old weight_norm API
        return AutoencoderOobleck(**dims)


def write_vae(folder: Path, seed: int, dims: dict, state: dict[str, torch.Tensor] | None = None) -> None:
    config = {"_class_name": "AutoencoderOobleck", **dims}
    atomic.write_json(folder / "config.json", config)
    state = state if state is not None else random_vae(seed, dims).state_dict()
    atomic.save_safetensors({k: v.contiguous() for k, v in state.items()}, folder / "diffusion_pytorch_model.safetensors",
                            {"format": "pt"})


def build_offline_tokenizer():
    """A byte-level BPE tokenizer trained on a fixed corpus: deterministic, no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_TOKENIZER_CORPUS.splitlines(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def write_text_encoder(folder: Path, width: int, seed: int) -> None:
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = build_offline_tokenizer()
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=max(width // 2, 8), max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    with isolated_global_rng(seed):
        model = Qwen3Model(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def make_fixture(out: str | Path, preset: str = "tiny", seed: int = 0, num_layers: int | None = None,
                 shard_mb: float = 0.5, with_aux: bool = True, dit_state: dict[str, torch.Tensor] | None = None,
                 vae_state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the checkpoint folder; `xl`/`2b` write weights too, so keep `num_layers` small for those.

    `dit_state` (housevox DiT keys) and `vae_state` replace the random DiT and VAE: the demo base is
    written this way, through the same writer as every random fixture.
    """
    if preset not in PRESETS:
        raise UsageError(f"--preset: unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    raw = json.loads(json.dumps(PRESETS[preset]))
    if num_layers is not None:
        layer_types = [raw["layer_types"][i % 2] for i in range(num_layers)]
        raw.update(num_hidden_layers=num_layers, num_audio_decoder_hidden_layers=num_layers, layer_types=layer_types)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = AceStepConfig.from_upstream(raw)
    state = upstream_state_dict(cfg, seed)
    if dit_state is not None:
        trained = {to_upstream_key("decoder", k): v.detach().contiguous() for k, v in dit_state.items()}
        if trained.keys() - state.keys():
            raise ValueError(f"dit_state has keys the checkpoint does not: {sorted(trained.keys() - state.keys())[:3]}")
        state.update(trained)
    write_sharded(state, out, "model", int(shard_mb * 2**20))
    tiny = preset.startswith("tiny")
    frames = 3000 if tiny else 15000
    silence = 0.1 * torch.randn(1, cfg.timbre_hidden_dim, frames, generator=torch.Generator().manual_seed(seed + 2))
    atomic.save_torch(silence, out / "silence_latent.pt")
    if with_aux:
        write_vae(out / "vae", seed + 3, TINY_VAE if tiny else REAL_VAE, vae_state)
        write_text_encoder(out / TEXT_ENCODER_DIRNAME, cfg.text_hidden_dim, seed + 4)
    atomic.write_json(out / "config.json", raw)  # last: a folder with config.json is complete
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m housevox.acestep.fixture", description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder to write the checkpoint into")
    parser.add_argument("--preset", default="tiny", help=f"one of {', '.join(PRESETS)} (default tiny)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-layers", type=int, help="override the DiT depth (to make a small xl/2b-wide model)")
    parser.add_argument("--shard-mb", type=float, default=0.5, help="max shard size in MiB (default 0.5)")
    parser.add_argument("--no-aux", action="store_true", help="skip vae/ and the text encoder")
    args = parser.parse_args(argv)
    if args.preset in ("xl", "2b") and args.num_layers is None:
        raise HousevoxError(f"--preset {args.preset}: full-size random weights are many GB; add --num-layers N")
    path = make_fixture(args.out, args.preset, args.seed, args.num_layers, args.shard_mb, not args.no_aux)
    print(f"wrote {args.preset} checkpoint to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
