"""Fuzzing the audio loader and prep with hypothesis: random bytes and valid-but-weird WAVs either load or give a clean error."""

import io
import warnings

import numpy as np
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from housevox.audio.io import load_audio
from housevox.errors import HousevoxError, run_cli
from housevox.prep import main as prep_main



def fuzz(n: int) -> settings:
    return settings(max_examples=n, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True)
COUNTS = {"random bytes": 0, "weird wav": 0, "prep folders": 0}
SUFFIXES = [".wav", ".flac", ".ogg", ".mp3", ".aiff"]
SUBTYPES = ["PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE", "PCM_U8"]


def check_load(path) -> None:
    try:
        audio, rate = load_audio(path)
    except HousevoxError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
        return
    assert audio.dtype == np.float32 and audio.ndim == 2 and audio.shape[1] > 0 and rate > 0
    assert np.isfinite(audio).all()


def wav_bytes(rate: int, channels: int, subtype: str, frames: int, special: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    data = rng.uniform(-1.5, 1.5, (frames, channels))
    if special != "none" and frames and subtype in ("FLOAT", "DOUBLE"):
        data[rng.integers(frames), 0] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[special]
    buf = io.BytesIO()
    sf.write(buf, data, rate, subtype=subtype, format="WAV")
    return buf.getvalue()


weird_wav = st.builds(wav_bytes, rate=st.sampled_from([1, 8, 1000, 8000, 22050, 44100, 48000, 96000, 192000, 384000])
                      | st.integers(1, 384000), channels=st.integers(1, 8), subtype=st.sampled_from(SUBTYPES),
                      frames=st.integers(0, 3 * 8000), special=st.sampled_from(["none", "nan", "inf", "-inf"]),
                      seed=st.integers(0, 2**16))


@fuzz(150)
@given(data=st.binary(max_size=4096) | st.builds(lambda h, b: h + b, st.sampled_from([b"RIFF", b"fLaC", b"OggS", b"ID3", b"FORM"]),
                                                 st.binary(max_size=2048)),
       suffix=st.sampled_from(SUFFIXES))
def test_random_bytes(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("bytes") / f"x{suffix}"
    path.write_bytes(data)
    check_load(path)
    COUNTS["random bytes"] += 1


@fuzz(150)
@given(blob=weird_wav, cut=st.none() | st.floats(0.0, 1.0))
def test_weird_wavs(tmp_path_factory, blob, cut):
    path = tmp_path_factory.mktemp("wav") / "x.wav"
    path.write_bytes(blob if cut is None else blob[: int(len(blob) * cut)])
    check_load(path)
    COUNTS["weird wav"] += 1


@fuzz(20)
@given(files=st.lists(weird_wav | st.binary(max_size=512), min_size=1, max_size=3))
def test_prep_on_weird_folders(tmp_path_factory, capsys, files):
    root = tmp_path_factory.mktemp("prep")
    (root / "in").mkdir()
    for i, blob in enumerate(files):
        (root / "in" / f"t{i}.wav").write_bytes(blob)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = run_cli(prep_main, ["--input", str(root / "in"), "--output", str(root / "out"), "--workers", "1"])
    err = capsys.readouterr().err
    assert code in (0, 1, 2) and "Traceback" not in err and "unexpected" not in err, (code, err[-1500:])
    COUNTS["prep folders"] += 1


def test_report_counts():
    print(f"fuzz examples run: {COUNTS}")
