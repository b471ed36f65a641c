"""No orphans: training and scoring subprocesses end with the server that started them.

* In the server, SIGTERM and SIGINT first stop MONAI Label's background subprocesses (SIGTERM,
  then SIGKILL after a grace period), then go on to uvicorn's own handler (graceful shutdown).
  Without this, uvicorn waits for the thread that reads a training run's output, so the server
  either hangs until the run ends or, killed, leaves the run going alone.
* In each subprocess, Linux's parent-death signal: if the server dies, even by SIGKILL, the
  subprocess receives SIGTERM. A run cut short records no version, so the labels it saw stay new.
"""

import logging
import os
import signal
import subprocess
import time
from typing import Callable, Iterable

from segloop.processes import end_with_parent

logger = logging.getLogger(__name__)

SERVER_PID_ENV = "SEGLOOP_SERVER_PID"
GRACE_S = 5.0


def mark_server_process() -> None:
    """Called in the server: its subprocesses inherit the variable and know their parent."""
    os.environ[SERVER_PID_ENV] = str(os.getpid())


def in_server_subprocess() -> bool:
    """True in a training or scoring process the server started (not in the server, nor in a
    process without a server, such as the benchmarks' in-process training)."""
    server = os.environ.get(SERVER_PID_ENV)
    return bool(server) and server != str(os.getpid())


def die_with_server() -> None:
    """Called in a subprocess of the server (no-op in the server itself or off Linux). A torchrun
    worker's parent is torchrun, which the training launcher ends with itself (trainers/distributed.py)."""
    server = os.environ.get(SERVER_PID_ENV)
    if not server or server == str(os.getpid()):
        return
    parent = os.getppid() if os.environ.get("TORCHELASTIC_RUN_ID") else int(server)
    if not end_with_parent():
        return
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def stop_processes(processes: Iterable[subprocess.Popen], grace_s: float = GRACE_S) -> int:
    """SIGTERM each live process, SIGKILL those still alive after ``grace_s``; returns how many."""
    live = [p for p in processes if p.poll() is None]
    for p in live:
        p.terminate()
    deadline = time.time() + grace_s
    for p in live:
        try:
            p.wait(timeout=max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
    return len(live)


def stop_children_on_signals(children: Callable[[], Iterable[subprocess.Popen]]) -> None:
    """Chain a handler in front of the current SIGTERM / SIGINT handlers (uvicorn's)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)

        def handler(signum, frame, previous=previous):
            stopped = stop_processes(list(children()))
            if stopped:
                logger.info(f"stopped {stopped} background process(es) before shutting down")
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:
                signal.signal(signum, signal.SIG_DFL)
                signal.raise_signal(signum)

        signal.signal(sig, handler)


def monai_label_children() -> Iterable[subprocess.Popen]:
    """MONAI Label's running train / scoring / batch-infer subprocesses."""
    from monailabel.utils.async_tasks.utils import background_processes

    return [p for procs in list(background_processes.values()) for p in list(procs.values())]
