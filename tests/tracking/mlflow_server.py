"""A real MLflow tracking server (sqlite backend, local artifact store) on 127.0.0.1, started and
stopped by tests; its whole process group is killed on stop."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> None:
        exe = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or "mlflow"
        cmd = [exe, "server", "--backend-store-uri", f"sqlite:///{self.folder}/mlflow.db",
               "--artifacts-destination", str(self.folder / "artifacts"),
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        log = open(self.folder / "server.log", "ab")  # noqa: SIM115 - the server's, closed by stop
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.folder / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer within {timeout} s")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
