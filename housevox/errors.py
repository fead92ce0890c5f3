"""User-facing errors: one line, the file or field named, a non-zero exit, no traceback."""

import os
import sys
import traceback
from collections.abc import Callable, Sequence


class HousevoxError(Exception):
    """A problem with the user's input that they can fix; printed as one line."""

    exit_code = 1


class UsageError(HousevoxError):
    """Bad command-line input (missing path, empty folder): exit 2 like argparse."""

    exit_code = 2


class Stopped(Exception):
    """The user stopped a run (Ctrl-C, SIGTERM) and it saved what it reached: not an error. The message says
    where things are and how to go on; the exit code is the shell's for the signal (130, 143)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run a CLI entry point, turning housevox errors and Ctrl-C into one line and an exit code."""
    try:
        return main(argv) or 0
    except HousevoxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Stopped as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, details on request
        if os.environ.get("HOUSEVOX_DEBUG"):
            traceback.print_exc()
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"error: unexpected {type(exc).__name__}: {detail} (set HOUSEVOX_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1
