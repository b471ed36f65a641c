"""Start and stop a real MONAI Label server in a subprocess (tests, benchmarks, Slicer-module tests)."""

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Dict, Iterator, Optional

import requests

from segloop.cpu_sharing import shared_cpu_env
from segloop.pacs.orthanc import free_port

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SEGLOOP_APP = os.path.join(REPO_ROOT, "MONAILabelApp")


def wait_for(predicate, timeout: float, every: float = 0.5, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy (returned) or ``timeout`` s pass."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def server_env() -> Dict[str, str]:
    env = dict(os.environ)
    # MONAI Label's launcher and its train subprocesses run `python` from PATH: use this interpreter.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["MONAI_LABEL_TRACKING_ENABLED"] = "false"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return dict(shared_cpu_env(env))


# For a server whose test or benchmark needs no active-learning scores: MONAI Label then starts no
# scoring job at start-up and after each version (a job at the default MC-dropout and TTA settings
# takes the cores the runs under test need).
NO_SCORING = {"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}


@contextmanager
def running_server(
    studies: str,
    app: str = SEGLOOP_APP,
    conf: Optional[Dict[str, str]] = None,
    port: Optional[int] = None,
    log_path: Optional[str] = None,
    startup_timeout: float = 180.0,
    env: Optional[Dict[str, str]] = None,
) -> Iterator["ServerHandle"]:
    """Run ``monailabel start_server`` on 127.0.0.1 until the block exits; yields its handle.
    ``env``: variables set on top of :func:`server_env` (auth settings, ``TMPDIR``)."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", app, "--studies", studies]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    for key, value in (conf or {}).items():
        cmd += ["--conf", key, str(value)]
    log = open(log_path or os.devnull, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**server_env(), **(env or {})}, start_new_session=True)
    handle = ServerHandle(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        handle.wait_ready(startup_timeout)
        yield handle
    finally:
        handle.stop()
        log.close()


class ServerHandle:
    def __init__(self, url: str, proc: subprocess.Popen, log_path: Optional[str]):
        self.url = url
        self.proc = proc
        self.log_path = log_path

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path or not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])

    def wait_ready(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with code {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/info/", timeout=5).status_code in (200, 401):  # 401: auth is on
                    return
            except requests.RequestException:
                pass
            time.sleep(1.0)
        raise TimeoutError(f"server not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        # A training run the server started while shutting down missed the SIGTERM and would go on
        # alone (one ran for 20 CPU-minutes beside the next tests): end whatever is left of the group.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def memory_mb(self) -> float:
        """Resident memory (MiB) of the server and all its children (train subprocesses included)."""
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
            procs = [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            return 0.0
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total / 2**20
