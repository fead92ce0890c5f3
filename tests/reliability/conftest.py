"""Reliability tests import the test-only helpers (fork server client, crash points) from tests/helpers."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
