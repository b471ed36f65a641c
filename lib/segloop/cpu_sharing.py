"""OpenMP settings for the processes of a SegLoop server, which share the CPU.

A running campaign has up to three busy processes: the server answering ``/infer``, MONAI Label's
training subprocess and its scoring subprocess, each with as many torch threads as there are
cores. PyTorch's CPU kernels run on libgomp, whose threads, unless told otherwise, spin for a
while at every barrier and so keep the cores the other processes are waiting for. With
``OMP_WAIT_POLICY=PASSIVE`` they sleep instead. Measured on this project's 2-core machine with
``benchmarks/openmp_contention.py`` (``benchmarks/results/openmp_contention.json``; training and
scoring at niceness 10, as SegLoop runs them), spinning against passive:

* beside the server's forward passes and a scoring loop, training made 0.05 against 0.36 steps a
  second (a pass took 0.40 against 0.34 s);
* beside the forward passes only, 0.18 against 0.74 steps a second (0.29 against 0.32 s a pass);
* alone, 1.12 against 1.06 steps a second (0.29 against 0.27 s a pass).

The niceness keeps the server's passes fast either way (without it, in an earlier run of the
script, a pass beside training and scoring took 3.74 s spinning, 0.88 s passive); spinning costs
the background jobs their progress: a niced run spends its small share of the CPU spinning. Alone,
passive cost a training process 5-20% of its steps a second in four runs, so a training run that
has the CPU to itself (``segloop bench``, the tests' in-process training) keeps the default; only
server processes get the setting.

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
