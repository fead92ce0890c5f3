"""Find and read ACE-Step v1.5 checkpoint folders, strictly and lazily.

Two layouts load: upstream's original one (`config.json`, `model*.safetensors`,
`silence_latent.pt`, sibling `vae/` and `Qwen3-Embedding-0.6B/`) and diffusers'
(`model_index.json` with `transformer/`, `condition_encoder/`, ...). A value that is no folder but an
ACE-Step model name (`acestep-v15-xl-base[@revision]`) is resolved in the hub cache by `hub.py`. Modules are
built on the meta device and filled shard by shard straight into the target dtype,
so peak RAM stays near one copy of the weights.
"""

import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from housevox.acestep import hub
from housevox.acestep.config import AceStepConfig
from housevox.acestep.hub import TEXT_ENCODER_DIRNAME, VAE_DIRNAME
from housevox.errors import HousevoxError
from housevox.jsonfile import read_json_object

_FINGERPRINT_BYTES = 1 << 20
SKIPPED_PREFIXES = ("tokenizer.", "detokenizer.")  # the audio tokenizer: not used for text-to-music LoRA

_ATTN_RENAMES = (
    (re.compile(r"\.q_proj\."), ".to_q."),
    (re.compile(r"\.k_proj\."), ".to_k."),
    (re.compile(r"\.v_proj\."), ".to_v."),
    (re.compile(r"\.o_proj\."), ".to_out.0."),
    (re.compile(r"\.q_norm\."), ".norm_q."),
    (re.compile(r"\.k_norm\."), ".norm_k."),
)


def convert_upstream_key(key: str) -> tuple[str, str] | None:
    """Map an upstream key to (part, diffusers key); None for keys housevox knowingly skips."""
    if key.startswith(SKIPPED_PREFIXES):
        return None
    if key == "null_condition_emb":
        return "condition_encoder", key
    part, sep, rest = key.partition(".")
    if not sep or part not in ("decoder", "encoder"):
        return "unknown", key
    for pattern, repl in _ATTN_RENAMES:
        rest = pattern.sub(repl, rest)
    if part == "decoder":
        rest = rest.replace("proj_in.1.", "proj_in_conv.").replace("proj_out.1.", "proj_out_conv.")
        return "dit", rest
    return "condition_encoder", rest


@dataclass(frozen=True)
class WeightSet:
    """The safetensors files of one part and the key each tensor gets in the module."""

    files: tuple[Path, ...]
    convert: Callable[[str], tuple[str, str] | None]

    def keys_by_file(self) -> dict[Path, list[str]]:
        out = {}
        for path in self.files:
            try:
                with safe_open(path, "pt") as fh:
                    out[path] = list(fh.keys())
            except (SafetensorError, OSError, ValueError) as exc:
                raise HousevoxError(f"{path}: unreadable safetensors file ({_short(exc)})") from None
        return out


@dataclass(frozen=True)
class CheckpointFolder:
    """Where every piece of one checkpoint lives."""

    root: Path
    layout: str  # "original" | "diffusers"
    config: AceStepConfig
    dit: WeightSet
    condition_encoder: WeightSet
    silence_latent_path: Path | None
    vae_dir: Path | None
    text_encoder_dir: Path | None
    tokenizer_dir: Path | None
    name: str = ""  # the model's name: the folder's, or the hub model's (whose folder is a commit hash)
    sources: tuple[tuple[str, str], ...] = ()  # hub checkpoints: (part, "repo@commit[:subfolder/]")

    def fingerprint(self) -> str:
        """sha256 over config, sizes and the head and tail of every weight file (VAE and text encoder too).

        Cheap on a 9 GB checkpoint yet changes when any file is replaced, so a cache
        built with another checkpoint is detected; mtimes are left out so a copy matches, and the
        model's name stands for its folder's, so a hub snapshot matches a downloaded folder.
        """
        digest = hashlib.sha256()
        files = {*self.dit.files, *self.condition_encoder.files}
        if self.silence_latent_path:
            files.add(self.silence_latent_path)
        for folder in (self.vae_dir, self.text_encoder_dir, self.tokenizer_dir):
            if folder:
                files.update(p for p in folder.iterdir() if p.is_file())
        named = {(f"{self.name or self.root.name}/{p.name}" if p.parent == self.root else str(p.relative_to(p.parent.parent))): p
                 for p in files}
        for name, path in sorted(named.items()):
            size = path.stat().st_size
            digest.update(f"{name}:{size}".encode())
            with open(path, "rb") as fh:
                digest.update(fh.read(_FINGERPRINT_BYTES))
                if size > 2 * _FINGERPRINT_BYTES:
                    fh.seek(-_FINGERPRINT_BYTES, 2)
                    digest.update(fh.read())
        digest.update(json.dumps(self.config.raw, sort_keys=True).encode())
        return digest.hexdigest()


def _short(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _read_json(path: Path) -> dict:
    return read_json_object(path)


def _weight_files(folder: Path, stem: str) -> tuple[Path, ...]:
    """Single `stem.safetensors`, or the shards its `stem.safetensors.index.json` lists (all must exist)."""
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise HousevoxError(f"{index}: no weight_map")
        shards = tuple(folder / name for name in sorted(set(weight_map.values())))
        missing = [p.name for p in shards if not p.is_file()]
        if missing:
            raise HousevoxError(f"{index}: missing shard {', '.join(missing)}")
        return shards
    single = folder / f"{stem}.safetensors"
    if single.is_file():
        return (single,)
    raise HousevoxError(f"{folder}: no {stem}.safetensors or {stem}.safetensors.index.json")


def _find_sibling(root: Path, name: str) -> Path | None:
    for candidate in (root / name, root.parent / name):
        if candidate.is_dir():
            return candidate
    return None


def locate_checkpoint(path: "str | Path | CheckpointFolder") -> CheckpointFolder:
    """Work out the layout of `path` and where its parts are; errors name what is wrong."""
    if isinstance(path, CheckpointFolder):
        return path
    root = Path(path).expanduser()
    if not root.exists():
        if hub.parse_model_name(str(path)) is not None:
            return _locate_hub(hub.resolve_checkpoint(str(path)))
        raise HousevoxError(f"{root}: checkpoint folder does not exist (nor an ACE-Step v1.5 model name: "
                            f"{hub.model_names()})")
    if not root.is_dir():
        raise HousevoxError(f"{root}: not a folder (give the checkpoint folder, e.g. acestep-v15-xl-base/)")
    if (root / "model_index.json").is_file():
        return _locate_diffusers(root)
    if (root / "config.json").is_file():
        return _locate_original(root)
    raise HousevoxError(f"{root}: not an ACE-Step v1.5 checkpoint (no config.json or model_index.json)")


def _locate_hub(found: hub.HubCheckpoint) -> CheckpointFolder:
    """A hub model: the DiT's own snapshot folder, with the VAE and text encoder from the shared repo's."""
    local = _locate_original(found.dit_dir)
    return replace(local, vae_dir=found.vae_dir, text_encoder_dir=found.text_encoder_dir,
                   tokenizer_dir=found.text_encoder_dir, name=found.name, sources=tuple(found.sources.items()))


def _locate_original(root: Path) -> CheckpointFolder:
    raw = _read_json(root / "config.json")
    if raw.get("model_type") not in (None, "acestep") and "hidden_size" not in raw:
        raise HousevoxError(f"{root / 'config.json'}: model_type {raw.get('model_type')!r} is not ACE-Step")
    config = AceStepConfig.from_upstream(raw, source=str(root / "config.json"))
    files = _weight_files(root, "model")
    silence = root / "silence_latent.pt"
    text_dir = _find_sibling(root, TEXT_ENCODER_DIRNAME)
    return CheckpointFolder(
        root=root, layout="original", config=config,
        dit=WeightSet(files, convert_upstream_key), condition_encoder=WeightSet(files, convert_upstream_key),
        silence_latent_path=silence if silence.is_file() else None,
        vae_dir=_find_sibling(root, VAE_DIRNAME), text_encoder_dir=text_dir, tokenizer_dir=text_dir, name=root.name,
    )


def _locate_diffusers(root: Path) -> CheckpointFolder:
    index = _read_json(root / "model_index.json")
    for part in ("transformer", "condition_encoder"):
        if part not in index or not (root / part).is_dir():
            raise HousevoxError(f"{root / 'model_index.json'}: no {part}/ folder")
    dit_cfg = _read_json(root / "transformer" / "config.json")
    enc_cfg = _read_json(root / "condition_encoder" / "config.json")
    raw = {k: v for k, v in dit_cfg.items() if not k.startswith("_")}
    width = raw.get("encoder_hidden_size") or enc_cfg.get("hidden_size") or raw.get("hidden_size")
    raw.pop("encoder_hidden_size", None)
    if width != raw.get("hidden_size"):  # the XL layout: a narrower condition encoder, described by its own config
        raw.update(
            encoder_hidden_size=width,
            encoder_intermediate_size=enc_cfg.get("intermediate_size"),
            encoder_num_attention_heads=enc_cfg.get("num_attention_heads"),
            encoder_num_key_value_heads=enc_cfg.get("num_key_value_heads"),
        )
    for key in ("text_hidden_dim", "timbre_hidden_dim", "num_lyric_encoder_hidden_layers", "num_timbre_encoder_hidden_layers"):
        if key in enc_cfg:
            raw[key] = enc_cfg[key]
    config = AceStepConfig.from_upstream(raw, source=str(root / "transformer" / "config.json"))

    def part(name: str) -> WeightSet:
        return WeightSet(_weight_files(root / name, "diffusion_pytorch_model"), lambda k, n=name: (n, k))

    return CheckpointFolder(
        root=root, layout="diffusers", config=config,
        dit=WeightSet(part("transformer").files, lambda k: ("dit", k)),
        # The silence latent is a buffer of any length T here; loading.py reads it on its own.
        condition_encoder=WeightSet(
            part("condition_encoder").files, lambda k: None if k == "silence_latent" else ("condition_encoder", k)
        ),
        silence_latent_path=None,
        vae_dir=root / "vae" if (root / "vae").is_dir() else None,
        text_encoder_dir=root / "text_encoder" if (root / "text_encoder").is_dir() else None,
        tokenizer_dir=root / "tokenizer" if (root / "tokenizer").is_dir() else None, name=root.name,
    )


def expected_shapes(module: nn.Module, exclude: Iterable[str] = ()) -> dict[str, tuple[int, ...]]:
    skip = set(exclude)
    return {k: tuple(v.shape) for k, v in module.state_dict(keep_vars=True).items() if k not in skip}


def check_keys(ws: WeightSet, wanted: dict[str, dict[str, tuple[int, ...]]]) -> list[str]:
    """Every file key must map to a known part with the right shape, and every wanted key must exist.

    `wanted` maps part name → {key: shape}. Returns problems as one-line strings.
    """
    problems, seen = [], {part: set() for part in wanted}
    for path, keys in ws.keys_by_file().items():
        with safe_open(path, "pt") as fh:
            for key in keys:
                target = ws.convert(key)
                if target is None:
                    continue
                part, new_key = target
                if part not in wanted or new_key not in wanted[part]:
                    problems.append(f"{path.name}: unexpected key {key}")
                    continue
                shape = tuple(fh.get_slice(key).get_shape())
                if shape != wanted[part][new_key]:
                    problems.append(f"{path.name}: {key} has shape {list(shape)}, expected {list(wanted[part][new_key])}")
                seen[part].add(new_key)
    for part, keys in wanted.items():
        for key in sorted(set(keys) - seen[part]):
            problems.append(f"{ws.files[0].parent}: missing key for {part}: {key}")
    return problems


def _assign(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Put `tensor` in place of the (meta) parameter or buffer `name`, as load_state_dict(assign=True) does."""
    owner_name, _, leaf = name.rpartition(".")
    try:
        owner = module.get_submodule(owner_name)
    except AttributeError:
        return  # a key this module does not have: ignored, as load_state_dict(strict=False) did
    if leaf in owner._parameters:
        owner._parameters[leaf] = nn.Parameter(tensor, requires_grad=owner._parameters[leaf].requires_grad)
    elif leaf in owner._buffers:
        owner._buffers[leaf] = tensor


def load_part(module: nn.Module, ws: WeightSet, part: str, dtype: torch.dtype, device, exclude: Iterable[str] = (),
              as_loaded: Callable[[nn.Module, str], None] | None = None) -> None:
    """Fill a meta-device `module` with the tensors of `part`, one tensor at a time.

    Each tensor is converted, moved and assigned before the next is read, so the load holds the
    module plus one tensor; `as_loaded(module, name)` runs right after each assignment (the
    low-memory mode quantises a Linear there, before the next weight arrives).
    """
    for path, keys in ws.keys_by_file().items():
        wanted = [(key, target[1]) for key in keys if (target := ws.convert(key)) is not None and target[0] == part]
        if not wanted:
            continue
        truncated = f"{path}: cannot read tensors, the file may be truncated"
        try:
            fh = safe_open(path, "pt", device="cpu")
        except (SafetensorError, OSError) as exc:
            raise HousevoxError(f"{truncated} ({_short(exc)})") from None
        with fh:
            for key, name in wanted:
                try:
                    tensor = fh.get_tensor(key)
                except (SafetensorError, OSError, RuntimeError) as exc:
                    raise HousevoxError(f"{truncated} ({_short(exc)})") from None
                if tensor.is_floating_point():
                    tensor = tensor.to(dtype)
                _assign(module, name, tensor.to(device))
                del tensor
                if as_loaded is not None:
                    as_loaded(module, name)
    leftover = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta and n not in set(exclude)]
    if leftover:
        raise HousevoxError(f"{ws.files[0].parent}: no weights for {part} key {leftover[0]}")
