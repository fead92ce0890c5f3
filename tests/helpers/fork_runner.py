"""Test-only fork server: pays the torch/lightning import once, then runs each CLI call in a forked child.

Protocol on stdin/stdout, one JSON object a line:
  -> {"module": "housevox.fit", "argv": [...], "env": {...}, "log": "/path/to/log"}
  <- {"pid": 1234}           as soon as the child runs (the test may SIGKILL it)
  <- {"rc": 0}               when it ends; -9 when it was killed
The server itself never computes anything, so forking it is safe (no OpenMP pool to inherit).
"""

import importlib
import json
import os
import sys

import crash_points  # noqa: F401  (patches the atomic writes before anything is forked)
import housevox.fit
import housevox.prep
from housevox.errors import run_cli


def child(request: dict) -> None:
    fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(request.get("env", {}))
    main = importlib.import_module(request["module"]).main
    code = run_cli(main, request["argv"])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def serve() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            child(request)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    assert housevox.fit and housevox.prep
    serve()
