"""Safety by inspection of housevox/: no pickle of foreign data, no shell, no eval."""

import re
from pathlib import Path

import pytest

SOURCES = sorted((Path(__file__).resolve().parents[2] / "housevox").rglob("*.py"))
FORBIDDEN = {
    r"\bpickle\.loads?\(": "pickle load",
    r"\bos\.system\(": "os.system",
    r"\bos\.popen\(": "os.popen",
    r"shell\s*=\s*True": "subprocess with shell=True",
    r"(?<![\w.])eval\(": "eval",
    r"(?<![\w.])exec\(": "exec",
    r"\byaml\.load\(": "yaml.load (use safe_load)",
    r"\bnp\.load\([^)]*allow_pickle\s*=\s*True": "numpy pickle",
    r"\.bin\b.*torch\.load|torch\.load.*\.bin\b": "torch.load of a .bin",
}


def test_sources_found():
    assert len(SOURCES) > 20


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_no_unsafe_calls(path):
    text = path.read_text()
    for pattern, what in FORBIDDEN.items():
        assert not re.search(pattern, text), f"{path}: {what}"
    for call in re.finditer(r"torch\.load\(", text):
        args = text[call.end(): text.find("\n", call.end())]
        assert "weights_only=True" in args, f"{path}: torch.load without weights_only=True"
