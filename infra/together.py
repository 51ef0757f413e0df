"""``python -m infra.together``: the API and the session host as two processes, started and stopped
together (``just run``, ``just demo``). Ctrl-C or SIGTERM stops both; if either exits, so does the
other, and the exit code is the first one's. In production, run them apart: ``python -m api`` and
``python -m session_host``, each under its own supervisor.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

STOP_TIMEOUT = 20.0


def main() -> int:
    processes = [
        subprocess.Popen([sys.executable, "-m", "session_host"]),
        subprocess.Popen([sys.executable, "-m", "api"]),
    ]
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping and all(process.poll() is None for process in processes):
        time.sleep(0.2)
    code = next((process.returncode for process in processes if process.returncode is not None), 0)
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return code


if __name__ == "__main__":
    sys.exit(main())
