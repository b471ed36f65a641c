"""Processes that end promptly: with their parent (Linux's parent-death signal), and without a
last garbage collection over everything MONAI's imports created."""

import atexit
import ctypes
import gc
import signal
import sys

PR_SET_PDEATHSIG = 1


def end_with_parent() -> bool:
    """Ask the kernel to send this process SIGTERM when its parent dies, even by SIGKILL. Returns
    whether it is armed (not off Linux). Also usable as a ``subprocess.Popen`` ``preexec_fn``."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def exit_without_collecting() -> None:
    """At interpreter exit, move every object to the collector's permanent generation
    (``gc.freeze``) before the interpreter tears its modules down: teardown's collections then skip
    the millions of objects ``import monai`` creates, which took seconds per process on a 2-core
    CPU (every training run, scoring job and server stop paid it). The operating system frees the
    memory. Only cyclic garbage left at exit goes uncollected; objects freed by reference counting
    during teardown, and atexit handlers, behave as before."""
    atexit.register(gc.freeze)
