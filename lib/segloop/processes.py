"""Subprocesses that end with their parent (Linux's parent-death signal)."""

import ctypes
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
