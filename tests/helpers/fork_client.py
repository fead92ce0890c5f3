"""Test-side client of fork_runner.py: run housevox CLIs in forked children, optionally SIGKILL them after a delay."""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

HELPERS = Path(__file__).resolve().parent
ROOT = HELPERS.parents[1]


class ForkServer:
    def __init__(self):
        env = {**os.environ, "PYTHONPATH": str(HELPERS), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, str(HELPERS / "fork_runner.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)

    def run(self, module: str, argv: list[str], log: Path, env: dict | None = None, kill_after: float | None = None) -> int:
        """Exit code of `python -m module argv` (-9 when killed); output appended to `log`."""
        request = {"module": module, "argv": [str(a) for a in argv], "env": env or {}, "log": str(log)}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        pid = json.loads(self.proc.stdout.readline())["pid"]
        timer = None
        if kill_after is not None:
            timer = threading.Timer(kill_after, _kill, (pid,))
            timer.start()
        rc = json.loads(self.proc.stdout.readline())["rc"]
        if timer is not None:
            timer.cancel()
        return rc

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
