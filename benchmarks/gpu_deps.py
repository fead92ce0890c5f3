"""Which of benchmarks/gpu_wheels.txt this Python lacks, and is the wheel folder complete: gpu_check.sh's offline step.

    python benchmarks/gpu_deps.py missing WHEELS_DIR    # prints the wheel files to install (none: nothing)
    python benchmarks/gpu_deps.py check WHEELS_DIR      # the folder: one wheel per line, total < 60 MB

The machine's torch (with its torchaudio), lightning, peft and transformers are used as they are when they meet MACHINE's
minimums (no wheel can replace them within 60 MB); a listed package counts as present when it is
installed at pyproject's range (or at all, for those pyproject does not name).
"""

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PINS = ROOT / "benchmarks" / "gpu_wheels.txt"
MAX_BYTES = 60_000_000
MACHINE = {"torch": "2.6", "torchaudio": "2.6", "lightning": "2.5", "peft": "0.17", "transformers": "4.51"}  # what housevox needs


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in PINS.read_text().splitlines()]
    return {_norm(name): version for name, version in (line.split("==") for line in lines if line)}


def ranges() -> dict[str, Requirement]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {_norm(r.name): r for r in map(Requirement, deps)}


def installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def wheel_for(folder: Path, name: str, version: str) -> Path | None:
    stem = f"{name.replace('-', '_')}-{version}-"
    return next((w for w in sorted(folder.glob("*.whl")) if _norm(w.name).startswith(_norm(stem))), None)


def machine_problems() -> list[str]:
    problems = []
    for name, minimum in MACHINE.items():
        have = installed(name)
        if have is None or Version(have).release < Version(minimum).release:
            problems.append(f"{name} {have or 'missing'}: the machine needs {name} >= {minimum} installed "
                            f"(gpu_check uses the machine's own; no wheel folder replaces it)")
    return problems


def missing() -> list[tuple[str, str]]:
    want = ranges()
    out = []
    for name, version in pins().items():
        have = installed(name)
        if have is None or (name in want and not want[name].specifier.contains(have, prereleases=True)):
            out.append((name, version))
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("missing", "check"):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    folder = Path(argv[1])
    if argv[0] == "check":
        problems = machine_problems()
        total = 0
        for name, version in pins().items():
            wheel = wheel_for(folder, name, version) if folder.is_dir() else None
            if wheel is None:
                problems.append(f"{folder}: no wheel for {name}=={version} (see the pip download command in {PINS.name})")
            else:
                total += wheel.stat().st_size
                print(f"  {wheel.name}  {wheel.stat().st_size / 1e6:.1f} MB")
        print(f"wheel folder {folder}: {total / 1e6:.1f} MB of {MAX_BYTES / 1e6:.0f} MB allowed")
        if total > MAX_BYTES:
            problems.append(f"{folder}: {total / 1e6:.1f} MB is over {MAX_BYTES / 1e6:.0f} MB")
        for name in MACHINE:
            print(f"  machine's {name}: {installed(name) or 'missing'}")
        for p in problems:
            print(f"gpu_deps: {p}", file=sys.stderr)
        return 1 if problems else 0
    need = missing()
    wheels = [wheel_for(folder, name, version) for name, version in need]
    absent = [f"{n}=={v}" for (n, v), w in zip(need, wheels) if w is None]
    if absent:
        print(f"gpu_deps: {folder} has no wheel for {', '.join(absent)}", file=sys.stderr)
        return 1
    print(" ".join(str(w) for w in wheels))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
