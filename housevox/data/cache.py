"""Content-addressed segment cache: VAE latents + text condition per 30 s segment, built once.

Each entry `<cache_dir>/entries/<key>.safetensors` is keyed by sha256 over (audio bytes,
caption fields, checkpoint fingerprint, format version), so an edited caption or a new
track rebuilds only its own entries and another checkpoint rebuilds everything. Entries
are written atomically one by one, so a crash loses at most the entry in flight and the
next build resumes; `index.json` is written last and is all that training reads up front.
"""

import gc
import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from safetensors import SafetensorError, safe_open
from tqdm import tqdm

from housevox.acestep import load_silence_latent, load_vae, open_checkpoint
from housevox.acestep.conditioning import ConditionBuilder, context_latents
from housevox.atomic import save_safetensors, write_json
from housevox.audio.channels import downmix_to_stereo
from housevox.audio.io import load_audio
from housevox.audio.resample import resample
from housevox.errors import HousevoxError
from housevox.jsonfile import jsonl_rows

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
CACHE_DTYPE = torch.float32  # every device encodes in fp32 (bf16 latents on CUDA differed from the CPU's)
REFERENCE_ENCODING = "float32@cpu"
VAE_SAMPLE_RATE = 48_000
SEGMENT_SAMPLES = 1_440_000  # exactly 30.0 s at 48 kHz
LATENT_FRAMES = 750  # 30 s at 25 latent frames/s (Oobleck hop 1920)
# Manifest caption field → index/header name: there `key` is the entry key, so the musical key is `keyscale`.
RECORD_FIELDS = {"caption": "caption", "lyrics": "lyrics", "bpm": "bpm", "key": "keyscale",
                 "timesignature": "timesignature", "language": "language"}
TENSOR_DTYPES = {
    "target_latents": {"F32"},
    "encoder_hidden_states": {"F32"},
    "encoder_attention_mask": {"BOOL", "U8"},
    "context_latents": {"F32"},
}
_STAT_FIELDS = ("size", "mtime_ns")


@dataclass
class CacheBuildReport:
    built: int = 0
    reused: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (segment file, reason)


def encoding_name(dtype: torch.dtype, device: torch.device | str) -> str:
    """How an entry's tensors were computed: the encoders' dtype and the device class whose kernels ran them."""
    return f"{str(dtype).removeprefix('torch.')}@{torch.device(device).type}"


def entry_key(audio_sha256: str, caption: str, lyrics: str | None, meta: dict, checkpoint_fingerprint: str,
              encoding: str = REFERENCE_ENCODING) -> str:
    """sha256 over everything that changes an entry's tensors; `meta` holds bpm/keyscale/timesignature/language.

    The reference encoding (fp32 on the CPU) keeps the keys caches had before encodings were named;
    any other is part of the key, so entries encoded differently are never mixed in one cache.
    """
    fields = [CACHE_FORMAT_VERSION, audio_sha256, caption, lyrics, meta, checkpoint_fingerprint]
    blob = json.dumps(fields if encoding == REFERENCE_ENCODING else [*fields, encoding], sort_keys=True,
                      ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def entry_path(cache_dir: str | os.PathLike, key: str) -> Path:
    return Path(cache_dir) / "entries" / f"{key}.safetensors"


def posterior_seed(key: str) -> int:
    """The VAE posterior sample's seed, fixed per entry so a rebuild gives identical latents."""
    return int(key[:15], 16)


def read_index(cache_dir: str | os.PathLike) -> list[dict]:
    """The entries listed in `<cache_dir>/index.json` (one dict per segment)."""
    return _read_index_doc(cache_dir, required=True)["entries"]


def _read_index_doc(cache_dir, required: bool) -> dict | None:
    path = Path(cache_dir) / "index.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if required:
            raise HousevoxError(f"{path}: no cache index; build the cache first (prepare_data)") from None
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        if required:
            raise HousevoxError(f"{path}: unreadable cache index ({exc})") from None
        return None
    if not isinstance(doc, dict) or doc.get("format_version") != CACHE_FORMAT_VERSION or not isinstance(doc.get("entries"), list):
        if required:
            raise HousevoxError(f"{path}: cache index of another format; rebuild the cache")
        return None
    return doc


def entry_problem(path: Path, key: str, dims: tuple[int, int] | None = None) -> str | None:
    """Why the entry file at `path` cannot be used for `key` (header only, no tensor data read), or None.

    safetensors refuses a file whose size does not match its header, so a torn or truncated
    write is caught here; `dims` = (latent width D, condition width E) checks shapes too.
    """
    if not path.is_file():
        return "missing"
    try:
        with safe_open(path, "pt") as fh:
            meta = fh.metadata() or {}
            shapes = {name: (fh.get_slice(name).get_dtype(), fh.get_slice(name).get_shape()) for name in fh.keys()}
    except (SafetensorError, OSError) as exc:
        return f"unreadable ({str(exc).splitlines()[0]})"
    if meta.get("key") != key or meta.get("format_version") != str(CACHE_FORMAT_VERSION):
        return "header key or format version does not match"
    return _shape_problem(shapes, dims)


def _shape_problem(shapes: dict[str, tuple[str, list[int]]], dims: tuple[int, int] | None) -> str | None:
    if set(shapes) != set(TENSOR_DTYPES):
        return f"tensors {sorted(shapes)}, expected {sorted(TENSOR_DTYPES)}"
    for name, (dtype, _) in shapes.items():
        if dtype not in TENSOR_DTYPES[name]:
            return f"{name} has dtype {dtype}"
    target, hidden, mask, context = (shapes[n][1] for n in ("target_latents", "encoder_hidden_states",
                                                            "encoder_attention_mask", "context_latents"))
    if len(target) != 2 or len(hidden) != 2 or len(mask) != 1 or len(context) != 2:
        return "tensor ranks do not match [T, D], [L, E], [L], [T, 2D]"
    if context != [target[0], 2 * target[1]] or mask[0] != hidden[0] or hidden[0] == 0:
        return f"inconsistent shapes target {target}, context {context}, condition {hidden}, mask {mask}"
    if target[0] != LATENT_FRAMES:
        return f"{target[0]} latent frames, expected {LATENT_FRAMES}"
    if dims is not None and (target[1], hidden[1]) != tuple(dims):
        return f"widths D={target[1]}, E={hidden[1]} do not match the checkpoint's {dims}"
    return None


def load_entry(path: str | os.PathLike, key: str | None = None) -> dict[str, torch.Tensor]:
    """Read one entry (safetensors memory-maps the file) and validate it; HousevoxError names the file."""
    path = Path(path)
    problem = entry_problem(path, key if key is not None else path.stem)
    if problem is None:
        with safe_open(path, "pt") as fh:
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}
        # A sum is NaN/Inf iff some element is (or the values are absurdly large): one pass, ~5x cheaper than isfinite().all().
        bad = [name for name, t in tensors.items() if t.is_floating_point() and not t.sum().isfinite()]
        problem = f"{bad[0]} holds NaN or Inf" if bad else None
    if problem is not None:
        raise HousevoxError(f"{path}: bad cache entry ({problem})")
    tensors["encoder_attention_mask"] = tensors["encoder_attention_mask"].bool()
    return tensors


def _read_manifest(segments_dir: Path, report: CacheBuildReport) -> list[dict]:
    path = segments_dir / "manifest.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise HousevoxError(f"{path}: no manifest.jsonl; run `python -m housevox.prep` first") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HousevoxError(f"{path}: unreadable manifest ({exc})") from None
    rows = []
    for lineno, row, problem in jsonl_rows(lines):
        if problem:
            report.skipped.append((f"manifest.jsonl:{lineno}", problem))
            continue
        if not isinstance(row, dict) or not isinstance(row.get("file"), str) or row.get("track") is None:
            report.skipped.append((f"manifest.jsonl:{lineno}", "row lacks `file` or `track`"))
            continue
        rows.append(row)
    return rows


def _segment_path(segments_dir: Path, name: str) -> Path:
    """The WAV a manifest row names, refusing anything that resolves outside the segments folder."""
    if Path(name).is_absolute():
        raise HousevoxError("absolute path in manifest")
    path = (segments_dir / name).resolve()
    if not path.is_relative_to(segments_dir.resolve()):
        raise HousevoxError("path leaves the segments folder")
    return path


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _plan_row(row: dict, segments_dir: Path, default_caption: str, fingerprint: str, known: dict, encoding: str) -> dict:
    """The index record for one manifest row; the audio hash is reused while size and mtime are unchanged."""
    path = _segment_path(segments_dir, row["file"])
    try:
        st = path.stat()
    except OSError as exc:
        raise HousevoxError(f"cannot read ({exc.strerror or exc})") from None
    stat = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    _check_duration(path)
    old = known.get(row["file"])
    audio_sha = old["audio_sha256"] if old and all(old.get(k) == stat[k] for k in _STAT_FIELDS) else None
    if audio_sha is None:
        try:
            audio_sha = _sha256_file(path)
        except OSError as exc:
            raise HousevoxError(f"cannot read ({exc.strerror or exc})") from None
    fields = {name: row.get(field) for field, name in RECORD_FIELDS.items()}
    fields["caption"] = fields["caption"] or default_caption
    meta = {k: fields[k] for k in ("bpm", "keyscale", "timesignature", "language")}
    key = entry_key(audio_sha, fields["caption"], fields["lyrics"], meta, fingerprint, encoding)
    return {"key": key, "entry": f"entries/{key}.safetensors", "file": row["file"], "track": str(row["track"]),
            "segment_index": row.get("segment_index"), "audio_sha256": audio_sha, **stat, **fields}


def _check_duration(path: Path) -> None:
    """Refuse unreadable or short WAVs from the header alone, before any encoder is loaded for them."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise HousevoxError(f"cannot read audio ({str(exc).rsplit(': ', 1)[-1].strip()})") from None
    if -(-info.frames * VAE_SAMPLE_RATE // info.samplerate) < SEGMENT_SAMPLES:
        raise HousevoxError(f"{info.frames / info.samplerate:.3f} s long, shorter than 30.0 s")


def segment_audio(path: Path) -> torch.Tensor:
    """A segment WAV as [1, 2, 1,440,000] float32 at 48 kHz: resampled, mono duplicated, trimmed to 30.0 s."""
    audio, rate = load_audio(path)
    if audio.shape[0] == 1:
        audio = np.concatenate([audio, audio])
    elif audio.shape[0] > 2:
        audio = downmix_to_stereo(audio)
    audio = resample(audio, rate, VAE_SAMPLE_RATE)
    if audio.shape[1] < SEGMENT_SAMPLES:
        raise HousevoxError(f"{audio.shape[1] / VAE_SAMPLE_RATE:.3f} s after resampling, shorter than 30.0 s")
    return torch.from_numpy(np.ascontiguousarray(audio[:, :SEGMENT_SAMPLES]))[None]


class _Encoders:
    """VAE, text encoder and condition encoder, loaded only when an entry must be built."""

    def __init__(self, checkpoint_dir, device, dtype):
        self.device, self.dtype = torch.device(device), dtype
        self.vae = load_vae(checkpoint_dir, dtype=dtype, device=device)
        self.condition = ConditionBuilder.from_checkpoint(checkpoint_dir, dtype=dtype, device=device)
        self.silence = load_silence_latent(checkpoint_dir)

    @torch.no_grad()
    def build(self, record: dict, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        posterior = self.vae.encode(audio.to(self.device, self.dtype)).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(posterior_seed(record["key"])))
        latents = (posterior.mean.float() + posterior.std.float() * noise.to(self.device))[0].T.cpu()
        if latents.shape[0] != LATENT_FRAMES:
            raise HousevoxError(f"VAE gave {latents.shape[0]} latent frames for 30 s, expected {LATENT_FRAMES}")
        cond = self.condition.encode(record["caption"], record["lyrics"], bpm=record["bpm"], key=record["keyscale"],
                                     timesignature=record["timesignature"], language=record["language"],
                                     duration_s=SEGMENT_SAMPLES / VAE_SAMPLE_RATE)
        return {
            "target_latents": latents.contiguous(),
            "encoder_hidden_states": cond.encoder_hidden_states.float(),
            "encoder_attention_mask": cond.encoder_attention_mask.bool(),
            "context_latents": context_latents(self.silence, LATENT_FRAMES).float(),
        }

    def free(self) -> None:
        """Drop every encoder so training never shares memory with them."""
        del self.vae, self.condition, self.silence
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _header_metadata(record: dict, fingerprint: str, encoders_dtype: torch.dtype, encoders_device: torch.device
                     ) -> dict[str, str]:
    meta = {"key": record["key"], "format_version": str(CACHE_FORMAT_VERSION), "checkpoint_fingerprint": fingerprint,
            "encoding": encoding_name(encoders_dtype, encoders_device),
            "track": record["track"], "file": record["file"], "segment_index": str(record["segment_index"])}
    meta.update({k: str(record[k]) for k in RECORD_FIELDS.values() if record[k] is not None})
    return meta


def build_cache(segments_dir, checkpoint_dir, cache_dir, default_caption: str = "", device="cpu",
                dtype: torch.dtype | None = None) -> CacheBuildReport:
    """Make `cache_dir` hold one valid entry per readable manifest row, building only what is missing.

    Encoders run in fp32 (CACHE_DTYPE) on every device, TF32 off, unless `dtype` says otherwise; the
    encoding (dtype and device class) is part of each entry's key.
    """
    device, dtype = torch.device(device), dtype or CACHE_DTYPE
    encoding = encoding_name(dtype, device)
    segments_dir, cache_dir = Path(segments_dir), Path(cache_dir)
    report = CacheBuildReport()
    rows = _read_manifest(segments_dir, report)
    ckpt = open_checkpoint(checkpoint_dir)
    fingerprint = ckpt.fingerprint()
    dims = (ckpt.config.audio_acoustic_hidden_dim, ckpt.config.encoder_hidden_size)
    old = _read_index_doc(cache_dir, required=False)
    if old is not None and old.get("checkpoint_fingerprint") != fingerprint:
        log.warning("%s was built with another checkpoint; rebuilding every entry for %s", cache_dir, ckpt.root)
    known = {r["file"]: r for r in (old or {}).get("entries", []) if isinstance(r, dict) and "file" in r}

    records, todo, planned = [], [], set()
    for row in rows:
        try:
            record = _plan_row(row, segments_dir, default_caption, fingerprint, known, encoding)
        except HousevoxError as exc:
            report.skipped.append((row["file"], str(exc)))
            continue
        records.append(record)
        if record["key"] in planned:
            continue  # identical audio and caption: one entry serves both rows
        planned.add(record["key"])
        if entry_problem(entry_path(cache_dir, record["key"]), record["key"], dims) is None:
            report.reused += 1
        else:
            todo.append(record)

    failed = _build_entries(todo, segments_dir, checkpoint_dir, cache_dir, fingerprint, device, dtype, report)
    records = [r for r in records if r["key"] not in failed]
    for record in records:
        record["T"], record["L"] = _entry_lengths(entry_path(cache_dir, record["key"]))
    write_json(cache_dir / "index.json", {"format_version": CACHE_FORMAT_VERSION, "checkpoint_fingerprint": fingerprint,
                                          "checkpoint": str(ckpt.root), "entries": records})
    _prune(cache_dir, {r["key"] for r in records})
    for file, reason in report.skipped:
        log.warning("skipped %s: %s", file, reason)
    return report


def _build_entries(todo, segments_dir, checkpoint_dir, cache_dir, fingerprint, device, dtype, report) -> set[str]:
    """Encode every planned entry; returns the keys whose audio could not be used."""
    failed: set[str] = set()
    if not todo:
        return failed
    encoders = _Encoders(checkpoint_dir, device, dtype)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32 here
    try:
        for record in tqdm(todo, desc="building segment cache", unit="segment", file=sys.stderr, dynamic_ncols=True):
            try:
                audio = segment_audio(_segment_path(segments_dir, record["file"]))
            except HousevoxError as exc:
                report.skipped.append((record["file"], str(exc).removeprefix(f"{segments_dir / record['file']}: ")))
                failed.add(record["key"])
                continue
            save_safetensors(encoders.build(record, audio), entry_path(cache_dir, record["key"]),
                             metadata=_header_metadata(record, fingerprint, dtype, device))
            report.built += 1
    finally:
        encoders.free()
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return failed


def _entry_lengths(path: Path) -> tuple[int, int]:
    with safe_open(path, "pt") as fh:
        return fh.get_slice("target_latents").get_shape()[0], fh.get_slice("encoder_hidden_states").get_shape()[0]


def _prune(cache_dir: Path, keep: set[str]) -> None:
    """Delete entries no manifest row uses any more (old captions, another checkpoint) and torn temp files."""
    folder = cache_dir / "entries"
    for path in folder.glob("*.safetensors"):
        if path.stem not in keep:
            path.unlink(missing_ok=True)
    for path in folder.glob(".*.tmp"):
        path.unlink(missing_ok=True)
