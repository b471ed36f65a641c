"""OpenMP settings for the processes of a SegLoop server, which share the CPU.

A running campaign has up to three busy processes: the server answering ``/infer``, MONAI Label's
training subprocess and its scoring subprocess, each with as many torch threads as there are
cores. PyTorch's CPU kernels run on libgomp, whose threads, unless told otherwise, spin for a
while at every barrier and so keep the cores the other processes are waiting for. With
``OMP_WAIT_POLICY=PASSIVE`` they sleep instead. Measured on this project's 2-core machine with
``benchmarks/openmp_contention.py`` (``benchmarks/results/openmp_contention.json``), spinning
against passive:

* beside a training run and a scoring loop, a segmentation forward pass took 3.74 s against
  0.88 s, and training made 0.20 against 0.41 steps a second;
* beside a training run only: 2.47 s against 0.57 s, and 0.19 against 0.68 steps a second;
* alone, the forward pass took 0.32 s against 0.34 s, and training made 1.19 against 0.99 steps
  a second (a sixth fewer): a training run alone on the CPU (``segloop bench``, the tests'
  in-process training) keeps the default; only server processes get the setting.

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
