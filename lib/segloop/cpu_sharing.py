"""OpenMP settings for the processes of a SegLoop server, which share the CPU.

A running campaign has up to three busy processes: the server answering ``/infer``, MONAI Label's
training subprocess and its scoring subprocess, each with as many torch threads as there are
cores. PyTorch's CPU kernels run on libgomp, whose threads, unless told otherwise, spin for a
while at every barrier and so keep the cores the other processes are waiting for. With
``OMP_WAIT_POLICY=PASSIVE`` they sleep instead (both policies compared, with training and scoring
at niceness 10 as SegLoop runs them, by ``benchmarks/openmp_contention.py``, which writes
``benchmarks/results/openmp_contention/``).

The niceness keeps the server's passes fast under either policy; spinning costs the background
jobs their progress: a niced run spends its small share of the CPU spinning, so training beside
the server and the scoring job advances far more slowly. A process alone on the CPU loses a little
throughput to passive waiting, so a training run that has the CPU to itself (``segloop-bench``,
the tests' in-process training) keeps the default; only server processes get the setting.

libgomp reads the variable when it is loaded, so a process's own setting has to be in its
environment at start: :func:`shared_cpu_env` gives it to the server's subprocesses (MONAI Label
copies ``os.environ`` into each one it starts) and to servers that SegLoop's tools start; the
README's commands start the server itself with it.
"""

import os
from typing import Dict, MutableMapping, Optional

SHARED_CPU_SETTINGS: Dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE"}


def shared_cpu_env(environ: Optional[MutableMapping[str, str]] = None) -> MutableMapping[str, str]:
    """``environ`` (default ``os.environ``, changed in place) with :data:`SHARED_CPU_SETTINGS` added
    where it does not set them already: a user's own choice wins."""
    environ = os.environ if environ is None else environ
    for key, value in SHARED_CPU_SETTINGS.items():
        environ.setdefault(key, value)
    return environ


def lower_priority(nice: int) -> None:
    """Run this process at niceness ``nice`` (absolute, so repeated runs do not keep lowering it).

    Training runs and the scoring job call it so that the server's interactive requests come first."""
    try:
        current = os.getpriority(os.PRIO_PROCESS, 0)
        if nice > current:
            os.setpriority(os.PRIO_PROCESS, 0, min(19, nice))
    except (AttributeError, OSError):  # not on this platform / not permitted: run at normal priority
        pass
