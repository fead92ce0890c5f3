"""uv.lock is the install: it must cover pyproject.toml exactly and pin what pyproject allows."""

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def lock() -> dict:
    return tomllib.loads((ROOT / "uv.lock").read_text(encoding="utf-8"))


def declared(project: dict) -> list[tuple]:
    """pyproject's requirements in the form uv records them (name, extras, specifier, marker)."""
    rows = [(req, None) for req in project["project"]["dependencies"]]
    rows += [(req, extra) for extra, reqs in project["project"].get("optional-dependencies", {}).items() for req in reqs]
    out = []
    for text, extra in rows:
        req = Requirement(text)
        marker = f"extra == '{extra}'" if extra else (str(req.marker) if req.marker else None)
        out.append((canonicalize_name(req.name), tuple(sorted(req.extras)), str(SpecifierSet(str(req.specifier))), marker))
    return sorted(out)


def recorded(locked: dict) -> list[tuple]:
    """What the lock was resolved for: the root package's requires-dist."""
    root = next(p for p in locked["package"] if p["name"] == "housevox")
    return sorted((canonicalize_name(r["name"]), tuple(sorted(r.get("extras", []))), str(SpecifierSet(r.get("specifier", ""))),
                   r.get("marker")) for r in root["metadata"]["requires-dist"])


def locked_versions(locked: dict) -> dict[str, list[Version]]:
    versions: dict[str, list[Version]] = {}
    for package in locked["package"]:
        versions.setdefault(canonicalize_name(package["name"]), []).append(Version(package["version"]))
    return versions


def test_lock_is_not_stale_against_pyproject():
    """A dependency added, removed or re-ranged in pyproject.toml without `make lock` fails here."""
    missing = sorted(set(declared(pyproject())) ^ set(recorded(lock())))
    assert missing == [], f"uv.lock is stale against pyproject.toml (run `make lock`): {missing}"


def test_every_dependency_is_pinned_inside_its_range():
    versions = locked_versions(lock())
    for name, _, specifier, _ in declared(pyproject()):
        assert name in versions, f"{name} is not in uv.lock"
        for version in versions[name]:
            assert version in SpecifierSet(specifier), f"{name} {version} is outside {specifier}"


def test_torch_and_torchaudio_are_a_matching_pair():
    versions = locked_versions(lock())
    torch, torchaudio = versions["torch"], versions["torchaudio"]
    assert len(torch) == len(torchaudio) == 1 and torch[0].base_version == torchaudio[0].base_version
    pins = {name: spec for name, _, spec, _ in declared(pyproject()) if name in ("torch", "torchaudio")}
    assert pins == {"torch": f"=={torch[0]}", "torchaudio": f"=={torch[0]}"}


def test_lock_covers_linux_and_windows():
    locked, project = lock(), pyproject()
    assert sorted(locked["supported-markers"]) == sorted(project["tool"]["uv"]["environments"])
    assert any("linux" in m for m in locked["supported-markers"]) and any("win32" in m for m in locked["supported-markers"])


@pytest.mark.parametrize("edit", ["add", "range"])
def test_staleness_check_catches_an_edit(edit):
    """The check above fails for a pyproject that differs from the lock (so it can fail at all)."""
    project = pyproject()
    deps = project["project"]["dependencies"]
    if edit == "add":
        deps.append("librosa>=0.10")
    else:
        deps[:] = ["tqdm>=4.0" if d.startswith("tqdm") else d for d in deps]
    assert set(declared(project)) != set(recorded(lock()))
