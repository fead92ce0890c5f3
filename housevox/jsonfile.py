"""Reading the small JSON files users hand to housevox (sidecars, configs), with one-line errors."""

import json
from collections.abc import Iterator
from pathlib import Path

from housevox.errors import HousevoxError


def read_json_object(path: str | Path, what: str = "JSON file") -> dict:
    """The JSON object in `path`; anything else (unreadable, invalid, a list) is a HousevoxError naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HousevoxError(f"{path}: unreadable {what} ({detail})") from None
    if not isinstance(data, dict):
        raise HousevoxError(f"{path}: a {what} must be a JSON object")
    return data


def jsonl_rows(lines: list[str]) -> Iterator[tuple[int, object, str | None]]:
    """(1-based line number, value, None) per non-blank JSONL line, or (line number, None, why) when it is not JSON."""
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line), None
        except json.JSONDecodeError as exc:
            yield lineno, None, f"not JSON ({exc.msg})"
