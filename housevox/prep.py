"""Audio preprocessing: source tracks -> 30 s zero-crossing segments at -11 LUFS, 24-bit 44.1 kHz WAV.

`python -m housevox.prep --input tracks/ --output data/segments` writes `<track>_<nnn>.wav`,
`manifest.jsonl` (one row per segment: captions from sidecars, the lyrics sung in that segment from
`<stem>.lrc`, tempo/key/time signature given or measured) and `report.json`.
Each track is finished with a done-marker keyed by its content hash and the settings, so a
re-run skips finished tracks and a killed run completes; every file is written temp + rename.
"""

import argparse
import concurrent.futures
import hashlib
import json
import math
import multiprocessing
import os
import re
import signal
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from housevox.atomic import write_json, write_text
from housevox.audio import analysis
from housevox.audio.channels import downmix_to_stereo, mono_mix
from housevox.audio.io import load_audio, quantize_pcm24, write_pcm24
from housevox.audio.loudness import capped_gain_db, db_to_amplitude, integrated_lufs, true_peak_dbtp
from housevox.audio.resample import resample
from housevox.audio.slicing import plan_segments
from housevox.errors import HousevoxError, UsageError, run_cli
from housevox.jsonfile import read_json_object
from housevox.lyrics import LrcError, parse_lrc, plain_lyrics, window_lyrics
from housevox.metas import METAS, MetaError, measured_value, normalise

PREP_VERSION = 1  # bump when the audio written for the same input and settings changes
SAMPLE_RATE = 44100
SEGMENT_S = 30.0
OVERLAP_S = 1.0
SEARCH_S = 0.010
AUDIO_SUFFIXES = {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc"}
# Audio that libsndfile cannot decode: collected from folders anyway, so the report names each file and the
# fix, instead of the track silently missing from the dataset.
UNSUPPORTED_SUFFIXES = {".m4a", ".aac", ".mp4", ".wma", ".alac", ".ape", ".wv", ".caf"}
CAPTION_FIELDS = ("caption", "lyrics", "bpm", "key", "timesignature", "language")
OVERRIDE_HINT = 'override a value in the track\'s <stem>.json sidecar, e.g. {"bpm": 124, "key": "F# minor", "timesignature": "4"}'
DONE_DIR = ".prep-done"


@dataclass(frozen=True)
class Settings:
    """Everything that changes a track's result (written audio, measured metas): part of its done-marker key."""

    target_lufs: float = -11.0
    true_peak_ceiling: float = -1.0
    stereo: bool = False
    keep_short: bool = False
    analyze: bool = True

    def track_key(self, track: str, source: str, source_sha256: str) -> str:
        fixed = dict(version=PREP_VERSION, sample_rate=SAMPLE_RATE, segment_s=SEGMENT_S, overlap_s=OVERLAP_S, search_s=SEARCH_S,
                     analysis_version=analysis.ANALYSIS_VERSION if self.analyze else None)
        blob = json.dumps([track, source, source_sha256, asdict(self), fixed], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class Job:
    source: Path
    track: str
    output: Path
    settings: Settings

    @property
    def source_label(self) -> str:
        return source_label(self.source, self.output)


def source_label(source: Path, output: Path) -> str:
    """The source as written into manifest, report and markers: relative to the output folder, so the
    same project in another folder (or on another machine) writes the same bytes."""
    try:
        return Path(os.path.relpath(source, output.resolve())).as_posix()
    except ValueError:  # another drive on Windows
        return source.as_posix()


def collect_inputs(paths: Sequence[Path], output: Path) -> list[Path]:
    """Files given directly, plus audio files found recursively in folders (skipping the output folder)."""
    output = output.resolve()
    sources = set()
    for path in paths:
        if not path.exists():
            raise UsageError(f"input not found: {path}")
        if path.is_dir():
            found = [
                p for p in path.rglob("*")
                if p.suffix.lower() in AUDIO_SUFFIXES | UNSUPPORTED_SUFFIXES and not p.name.startswith(".") and p.is_file()
                and output not in p.resolve().parents
            ]
            if not found:
                raise UsageError(f"no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) in input folder: {path}")
            sources.update(p.resolve() for p in found)
        else:
            sources.add(path.resolve())
    return sorted(sources)


def assign_track_ids(sources: Sequence[Path]) -> dict[Path, str]:
    """Track id = file stem; a later source (in path order) that repeats a stem gets -2, -3, ..."""
    ids, used = {}, set()
    for source in sorted(sources):
        track, n = source.stem, 2
        while track in used:
            track, n = f"{source.stem}-{n}", n + 1
        ids[source] = track
        used.add(track)
    return ids


def read_captions(source: Path, default_caption: str | None) -> dict:
    """Caption fields from `<stem>.json`, else `<stem>.txt` / `<stem>.lyrics.txt`, else --caption; None when absent.

    Timed lyrics come from the sidecar's `lyrics_lrc` text, else `<stem>.lrc`: `lrc` holds the text and
    `lrc_origin` what names it in a warning. A sidecar `keyscale` (ACE-Step's name) stands in for `key`.
    Given bpm / key / timesignature are normalised to ACE-Step's vocabulary (housevox.metas), what was
    typed kept under `typed`; a value that cannot be mapped fails the track with the sidecar and field named.
    """
    fields = dict.fromkeys(CAPTION_FIELDS) | {"lrc": None, "lrc_origin": None, "typed": {}}
    sidecar = source.with_suffix(".json")
    if sidecar.is_file():
        data = read_json_object(sidecar, "caption sidecar")
        fields.update({k: data[k] for k in CAPTION_FIELDS if k in data})
        if fields["key"] is None and data.get("keyscale") is not None:
            fields["key"] = data["keyscale"]
        for field in METAS:
            if fields[field] is not None and str(fields[field]).strip():
                try:
                    fields["typed"][field], fields[field] = fields[field], normalise(field, fields[field])
                except MetaError as exc:
                    raise HousevoxError(f"{sidecar}: {exc}") from None
            else:
                fields[field] = None
        if isinstance(data.get("lyrics_lrc"), str):
            fields["lrc"], fields["lrc_origin"] = data["lyrics_lrc"], f"{sidecar.name} lyrics_lrc"
    lrc = source.with_suffix(".lrc")
    if fields["lrc"] is None and lrc.is_file():
        try:
            fields["lrc"], fields["lrc_origin"] = lrc.read_text(encoding="utf-8-sig"), lrc.name
        except (OSError, UnicodeDecodeError) as exc:
            raise HousevoxError(f"{lrc}: unreadable lyrics ({exc})") from None
    for field, path in (("caption", source.with_suffix(".txt")), ("lyrics", source.with_name(source.stem + ".lyrics.txt"))):
        if fields[field] is None and path.is_file():
            fields[field] = path.read_text(encoding="utf-8").strip()
    if fields["caption"] is None:
        fields["caption"] = default_caption
    return fields


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise HousevoxError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return digest.hexdigest()


def process_track(job: Job) -> dict:
    """Segment one track (or reuse its finished result); problems with the input come back as a reason."""
    result = {"source": job.source_label, "track": job.track, "status": "failed", "reason": None,
              "rows": [], "skipped_segments": [], "warnings": []}
    try:
        sha = sha256_file(job.source)
        key = job.settings.track_key(job.track, job.source_label, sha)
        marker = job.output / DONE_DIR / f"{job.track}.json"
        done = _read_marker(marker, key)
        if done is not None and all((job.output / row["file"]).is_file() for row in done["rows"]):
            return done | {"reused": True}
        result |= _segment_track(job, sha)
    except HousevoxError as exc:
        result["reason"] = str(exc).removeprefix(f"{job.source}: ")  # the row names the source already
        return result
    _remove_stale_segments(job.output, job.track, {row["file"] for row in result["rows"]})
    write_json(marker, result | {"key": key})
    return result


def _read_marker(marker: Path, key: str) -> dict | None:
    try:
        done = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return done if done.get("key") == key else None


def _segment_track(job: Job, sha: str) -> dict:
    """Load, downmix, resample, slice and normalise one track, writing each segment's WAV."""
    settings = job.settings
    audio, source_sr = load_audio(job.source)
    warnings = []
    if audio.shape[0] > 2:
        warnings.append(f"{audio.shape[0]} channels downmixed to stereo")
        audio = downmix_to_stereo(audio)
    if settings.stereo and audio.shape[0] == 1:
        audio = np.repeat(audio, 2, axis=0)
    audio = resample(audio, source_sr, SAMPLE_RATE)
    duration_s = audio.shape[1] / SAMPLE_RATE
    mix = mono_mix(audio)
    plan = plan_segments(mix, SAMPLE_RATE, SEGMENT_S, OVERLAP_S, SEARCH_S, settings.keep_short)
    out = {"status": "ok", "source_sha256": sha, "duration_s": round(duration_s, 6), "warnings": warnings,
           "rows": [], "skipped_segments": []}
    if not plan:
        return out | {"status": "skipped", "reason": f"shorter than {SEGMENT_S:g} s ({duration_s:.2f} s); use --keep-short"}
    for index, segment in enumerate(plan):
        part = audio[:, segment.start:segment.end]
        lufs_in = integrated_lufs(part, SAMPLE_RATE)
        if math.isinf(lufs_in):
            out["skipped_segments"].append({"segment_index": index, "reason": "silent: no 400 ms block above the BS.1770 absolute gate (-70 LUFS)"})
            continue
        true_peak_in = true_peak_dbtp(part)
        gain_db, capped = capped_gain_db(lufs_in, true_peak_in, settings.target_lufs, settings.true_peak_ceiling)
        pcm = quantize_pcm24(part.astype(np.float64) * db_to_amplitude(gain_db))
        name = f"{job.track}_{index:03d}.wav"
        write_pcm24(job.output / name, pcm, SAMPLE_RATE)
        out["rows"].append({
            "file": name, "track": job.track, "source": job.source_label, "source_sha256": sha,
            "segment_index": index, "start_sample": segment.start, "end_sample": segment.end,
            "start_s": round(segment.start / SAMPLE_RATE, 6), "end_s": round(segment.end / SAMPLE_RATE, 6),
            "sample_rate": SAMPLE_RATE, "channels": int(pcm.shape[0]),
            "lufs_in": round(lufs_in, 4), "gain_db": round(gain_db, 4),
            # K-weighting, block energies, the relative gate and the true peak all scale with the gain,
            # so both follow from the input; only blocks crossing the -70 LUFS absolute gate could
            # differ. Tests re-measure the written files and check them against ffmpeg.
            "lufs_out": round(lufs_in + gain_db, 4), "true_peak_dbtp": round(true_peak_in + gain_db, 4),
            "capped": capped,
            "zero_crossing_start": segment.zero_crossing_start, "zero_crossing_end": segment.zero_crossing_end,
        })
    if not out["rows"]:
        return out | {"status": "skipped", "reason": "silent: no segment above the BS.1770 absolute gate (-70 LUFS)"}
    if settings.analyze:
        metas = analysis.analyze(mix, SAMPLE_RATE)
        out["analysis"] = None if metas is None else metas.as_dict()
    return out


def segment_lyrics(rows: list[dict], captions: dict, duration_s: float) -> tuple[list[str | None], str | None, list[str]]:
    """(lyrics per row, "lrc" or "untimed" or None, warnings): each segment's own lines when the lyrics are
    timed; a malformed LRC line is reported by file and line and the track keeps its lyrics untimed."""
    warnings, untimed = [], captions["lyrics"]
    if captions["lrc"] is not None:
        try:
            lines = parse_lrc(captions["lrc"], duration_s)
        except LrcError as exc:
            warnings.append(f"{captions['lrc_origin']} {exc}; the lyrics are used untimed")
            untimed = untimed or plain_lyrics(captions["lrc"]) or None
        else:
            windows = [(row["start_sample"] / SAMPLE_RATE, row["end_sample"] / SAMPLE_RATE) for row in rows]
            return window_lyrics(lines, windows), "lrc", warnings
    if untimed and len(rows) > 1:
        warnings.append(f"untimed lyrics: each of the {len(rows)} segments gets the whole text"
                        " (a <stem>.lrc gives each segment the lines sung in it)")
    return [untimed] * len(rows), "untimed" if untimed else None, warnings


def track_metas(captions: dict, measured: dict | None) -> dict:
    """bpm / key / timesignature: the sidecar's value (normalised, beside what was typed) when it gives one,
    else the measured one (N/A below its confidence threshold)."""
    metas = {}
    for field in METAS:
        given, found = captions[field], (measured or {}).get(field)
        if given is not None:
            metas[field] = {"value": given, "source": "given", "typed": captions["typed"][field]}
        elif found is not None:
            metas[field] = {"value": measured_value(field, found), "source": "measured", "confidence": found["confidence"]}
        else:
            metas[field] = {"value": None, "source": "missing"}
    return metas


def manifest_rows(result: dict, captions: dict) -> list[dict]:
    """A finished track's rows with their conditions; adds its lyric warnings and `metas` to `result`."""
    rows = sorted(result["rows"], key=lambda row: row["segment_index"])
    lyrics, lyrics_source, warnings = segment_lyrics(rows, captions, result["duration_s"])
    result["warnings"] = result["warnings"] + warnings
    result["metas"] = track_metas(captions, result.get("analysis"))
    fields = {k: captions[k] for k in CAPTION_FIELDS} | {k: m["value"] for k, m in result["metas"].items()}
    sources = {k: {n: v for n, v in m.items() if n != "value"} for k, m in result["metas"].items()}
    return [row | fields | {"lyrics": text, "lyrics_source": lyrics_source, "metas_source": sources}
            for row, text in zip(rows, lyrics)]


def _remove_stale_segments(output: Path, track: str, keep: set[str]) -> None:
    """Drop this track's files that this run did not write: segments of an older version of the
    input, and temp files a killed run left behind (atomic_path names them `.<name>.<random>.tmp`)."""
    pattern = re.compile(r"\.?" + re.escape(track) + r"_\d{3,}\.wav(\..+\.tmp)?")
    if not output.is_dir():  # nothing written yet (a first track that was skipped)
        return
    for path in output.iterdir():
        if pattern.fullmatch(path.name) and path.name not in keep:
            path.unlink(missing_ok=True)


def _init_worker() -> None:
    # One torch thread per process: --workers processes share the cores. Ctrl-C is the parent's
    # job: it cancels queued tracks and lets running ones finish their temp + rename.
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_jobs(jobs: Sequence[Job], workers: int) -> Iterator[dict]:
    """Yield one result per job, in completion order; workers > 1 uses a process pool."""
    if workers <= 1:
        yield from map(process_track, jobs)
        return
    # Fork where available: workers inherit the imported torch instead of paying seconds to import it.
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
        futures = [pool.submit(process_track, job) for job in jobs]
        try:
            for future in concurrent.futures.as_completed(futures):
                yield future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _spread(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"min": round(min(values), 4), "max": round(max(values), 4), "mean": round(float(np.mean(values)), 4),
            "spread": round(max(values) - min(values), 4)}


def build_report(results: list[dict], rows: list[dict], settings: Settings) -> dict:
    """QC summary: counts, reasons, loudness spread and the format; no timestamps, so re-runs match."""
    tracks = [{k: r.get(k) for k in ("track", "source", "status", "reason", "duration_s", "warnings", "skipped_segments")}
              | {"segments": len(r["rows"])} for r in results]
    metas = [{"track": r["track"], **r["metas"]} for r in results if r.get("metas")]
    return {
        "format": {"container": "WAV", "subtype": "PCM_24", "sample_rate": SAMPLE_RATE},
        "target_lufs": settings.target_lufs,
        "true_peak_ceiling_dbtp": settings.true_peak_ceiling,
        "segment_s": SEGMENT_S,
        "overlap_s": OVERLAP_S,
        "counts": {
            "tracks": len(results),
            **{f"tracks_{status}": sum(r["status"] == status for r in results) for status in ("ok", "skipped", "failed")},
            "segments": len(rows),
            "segments_capped": sum(row["capped"] for row in rows),
            "segments_skipped": sum(len(r["skipped_segments"]) for r in results),
        },
        "lufs_in": _spread([row["lufs_in"] for row in rows]),
        "lufs_out": _spread([row["lufs_out"] for row in rows]),
        "true_peak_max_dbtp": max((row["true_peak_dbtp"] for row in rows), default=None),
        "capped": [row["file"] for row in rows if row["capped"]],
        "skipped": [{"source": r["source"], "reason": r["reason"]} for r in results if r["status"] == "skipped"],
        "failed": [{"source": r["source"], "reason": r["reason"]} for r in results if r["status"] == "failed"],
        "tracks": tracks,
        "analysis": settings.analyze,
        "metas": metas,
        "metas_hint": OVERRIDE_HINT,
    }


def _print_summary(report: dict, output: Path, reused: int) -> None:
    c = report["counts"]
    print(f"prep: {c['tracks']} tracks ({c['tracks_ok']} ok, {c['tracks_skipped']} skipped, {c['tracks_failed']} failed"
          f"{f', {reused} reused from a previous run' if reused else ''}); {c['segments']} segments in {output}")
    if report["lufs_out"]:
        lo = report["lufs_out"]
        print(f"loudness: {lo['min']:.2f} .. {lo['max']:.2f} LUFS (spread {lo['spread']:.2f} LU, target {report['target_lufs']:g});"
              f" {c['segments_capped']} capped at {report['true_peak_ceiling_dbtp']:g} dBTP;"
              f" {c['segments_skipped']} silent segments skipped")
    for entry in report["skipped"] + report["failed"]:
        print(f"  {entry['source']}: {entry['reason']}")
    if report["metas"]:
        print("metas (given wins; measured with a confidence 0-1, low = worth a listen; N/A = too unsure to say):")
        print(metas_table(report["metas"]))
        unsure = [f"{m['track']} ({', '.join(f for f in METAS if m[f]['value'] == 'N/A')})" for m in report["metas"]
                  if any(m[f]["value"] == "N/A" for f in METAS)]
        if unsure:
            print(f"  N/A, worth setting in the sidecar: {'; '.join(unsure)}")
        print(f"  {report['metas_hint']}")
    print(f"report: {output / 'report.json'}")


def metas_table(metas: list[dict]) -> str:
    """The per-track bpm / key / time signature table of the printed summary."""
    def cell(meta: dict) -> str:
        if meta["source"] == "missing":
            return "N/A"
        typed = f" ({meta['typed']})" if meta.get("typed") not in (None, meta["value"]) and str(meta["typed"]) != str(meta["value"]) else ""
        return f"{meta['value']}{typed} {meta['source']}" + (f" {meta['confidence']:.2f}" if "confidence" in meta else "")

    table = [["track", "bpm", "key", "time signature"]] + [[m["track"], *(cell(m[f]) for f in METAS)] for m in metas]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m housevox.prep", description=__doc__.splitlines()[0])
    p.add_argument("--input", type=Path, nargs="+", required=True, help="audio files and/or folders (searched recursively)")
    p.add_argument("--output", type=Path, required=True, help="folder for segments, manifest.jsonl and report.json")
    p.add_argument("--target-lufs", type=float, default=-11.0, help="integrated loudness per segment (default -11)")
    p.add_argument("--true-peak-ceiling", type=float, default=-1.0, help="gain is capped so the 4x true peak stays below (dBTP)")
    p.add_argument("--workers", type=int, default=2, help="parallel processes (default 2)")
    p.add_argument("--stereo", action="store_true", help="write mono sources as stereo (duplicated channel)")
    p.add_argument("--keep-short", action="store_true", help=f"keep tracks shorter than {SEGMENT_S:g} s as one segment")
    p.add_argument("--caption", help="caption for tracks without a sidecar")
    p.add_argument("--strict", action="store_true", help="exit non-zero if any track failed or was skipped")
    p.add_argument("--no-analyze", dest="analyze", action="store_false",
                   help="do not measure tempo, key and time signature (values not in a sidecar stay N/A)")
    args = p.parse_args(argv)
    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    if not all(map(math.isfinite, (args.target_lufs, args.true_peak_ceiling))):
        raise UsageError("--target-lufs and --true-peak-ceiling must be finite numbers")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sources = collect_inputs(args.input, args.output)
    track_ids = assign_track_ids(sources)
    settings = Settings(args.target_lufs, args.true_peak_ceiling, args.stereo, args.keep_short, args.analyze)
    captions, results, jobs = {}, [], []
    for source in sources:
        try:
            captions[source_label(source, args.output)] = read_captions(source, args.caption)
            jobs.append(Job(source, track_ids[source], args.output, settings))
        except HousevoxError as exc:
            results.append({"source": source_label(source, args.output), "track": track_ids[source], "status": "failed", "reason": str(exc),
                            "rows": [], "skipped_segments": [], "warnings": []})
    with tqdm(total=len(jobs), unit="track", file=sys.stderr, desc="prep") as bar:
        for result in run_jobs(jobs, args.workers):
            for warning in result["warnings"]:
                tqdm.write(f"warning: {result['source']}: {warning}", file=sys.stderr)
            results.append(result)
            bar.update()
    results.sort(key=lambda r: r["source"])
    rows = []
    for result in results:
        if result["rows"]:
            before = len(result["warnings"])
            rows += manifest_rows(result, captions[result["source"]])
            for warning in result["warnings"][before:]:
                print(f"warning: {result['source']}: {warning}", file=sys.stderr)
    write_text(args.output / "manifest.jsonl", "".join(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n" for row in rows))
    report = build_report(results, rows, settings)
    write_json(args.output / "report.json", report)
    _print_summary(report, args.output, sum(bool(r.get("reused")) for r in results))
    if not rows:
        raise HousevoxError(f"no segments written; reasons in {args.output / 'report.json'}")
    problems = report["counts"]["tracks_failed"] + report["counts"]["tracks_skipped"]
    if args.strict and problems:
        raise HousevoxError(f"--strict: {problems} track(s) failed or were skipped; reasons in {args.output / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
