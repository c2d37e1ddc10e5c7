"""Ctrl-C a rayproc CLI run mid-job, deterministically (shared by the resume tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


def interrupt_cli_run(args: list[str], store: str, *, markers: int, env: dict | None = None,
                      timeout: float = 180) -> subprocess.Popen:
    """Run ``rayproc ARGS``, wait until ``store`` holds ``markers`` progress markers, press Ctrl-C.

    A background shell (CI) starts children with SIGINT ignored, and Python then never raises
    KeyboardInterrupt: the CLI gets the default disposition, as from a terminal. The driver is
    frozen before the interrupt, so the run cannot finish between the check and the Ctrl-C: only
    the tasks already in flight on actors (a bounded number) can still land.
    """
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "rayproc", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    progress = os.path.join(store, "_progress")
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if os.path.isdir(progress) and len(os.listdir(progress)) >= markers:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.kill(proc.pid, signal.SIGSTOP)
    proc.send_signal(signal.SIGINT)
    os.kill(proc.pid, signal.SIGCONT)
    proc.communicate(timeout=60)
    return proc
