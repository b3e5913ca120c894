"""The app as a user starts it (``streamlit run app.py``) on a free loopback port, for the browser and
load tests: ``serve(runs_dir, **env)`` yields (url, process) and stops it after (SIGTERM, then kill)."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(runs: Path, log: Path, **env: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """The server, its output in ``log``; the app's default worker processes unless ``env`` says otherwise."""
    port = free_port()
    streamlit = shutil.which("streamlit", path=str(Path(sys.executable).parent)) or "streamlit"
    full_env = {**os.environ, "DISTILL_RUNS": str(runs), "DISTILL_WORKERS": "processes", **env}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [streamlit, "run", "app.py", "--server.headless", "true", "--server.port", str(port),
             "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT, text=True,
        )
        try:
            deadline = time.time() + 60
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    if proc.poll() is not None or time.time() > deadline:
                        raise RuntimeError(f"streamlit did not start: {log.read_text()[-2000:]}") from None
                    time.sleep(0.3)
            yield f"http://127.0.0.1:{port}", proc
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
