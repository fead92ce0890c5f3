"""Reading the small JSON files users hand to housevox (sidecars, configs), with one-line errors."""

import json
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
