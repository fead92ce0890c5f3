"""Reading any libsndfile format as float32; writing 24-bit PCM (WAV, FLAC) atomically."""

import os
import re

import numpy as np
import soundfile as sf

from housevox.atomic import atomic_path
from housevox.errors import HousevoxError

PCM24_SCALE = 2**23

# libsndfile logs "data : <header size> (should be <bytes present>)" when a WAV/AIFF was cut short.
_CHUNK_SIZE_MISMATCH = re.compile(r"^\s*(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Streaming writers put 0 or 0xFFFFFFFF in the size field to mean "unknown"; that is not truncation.
_UNKNOWN_CHUNK_SIZES = {0, 0xFFFFFFFF}


def load_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read an audio file as float32 [channels, samples] without clipping float data above 0 dBFS.

    Raises HousevoxError naming the file when it cannot be decoded, is empty or truncated,
    or holds NaN/Inf samples, so one bad track never ends a batch with a traceback.
    """
    try:
        with sf.SoundFile(path) as f:
            declared = f.frames
            sample_rate = f.samplerate
            data = f.read(dtype="float32", always_2d=True)
            log = f.extra_info
    except sf.LibsndfileError as exc:  # its error_string omits the path that we put in front
        reason = exc.error_string.removeprefix("Error : ").rstrip(".")
        hint = "; convert it to WAV or FLAC first, e.g. ffmpeg -i in.m4a out.wav" if "not recognised" in reason else ""
        raise HousevoxError(f"{path}: cannot read audio ({reason}){hint}") from None
    except (OSError, RuntimeError) as exc:
        raise HousevoxError(f"{path}: cannot read audio ({exc})") from None
    for header_size, present in _CHUNK_SIZE_MISMATCH.findall(log):
        if int(header_size) not in _UNKNOWN_CHUNK_SIZES and int(present) < int(header_size):
            raise HousevoxError(f"{path}: truncated file (header declares {header_size} data bytes, {present} present)")
    if data.shape[0] < declared:
        raise HousevoxError(f"{path}: truncated file (header declares {declared} frames, {data.shape[0]} decoded)")
    if data.shape[0] == 0:
        raise HousevoxError(f"{path}: no audio samples")
    if not np.isfinite(data).all():
        raise HousevoxError(f"{path}: contains NaN or Inf samples")
    return np.ascontiguousarray(data.T), sample_rate


def quantize_pcm24(audio: np.ndarray) -> np.ndarray:
    """Round float samples to 24-bit integers (as int32), saturating the one code +1.0 would overflow."""
    return np.clip(np.rint(audio * PCM24_SCALE), -PCM24_SCALE, PCM24_SCALE - 1).astype(np.int32)


def write_pcm24(path: str | os.PathLike, pcm24: np.ndarray, sample_rate: int, container: str = "WAV") -> None:
    """Write quantize_pcm24 output [channels, samples] as 24-bit PCM (WAV or FLAC) via temp file + rename.

    soundfile takes int32 as left-aligned 32-bit samples, so shifting by 8 bits hands libsndfile
    exactly our 24-bit codes and the file reads back bit for bit.
    """
    with atomic_path(path) as tmp:
        sf.write(tmp, pcm24.T << 8, sample_rate, subtype="PCM_24", format=container)
