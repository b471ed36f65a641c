"""Training runs on several processes or nodes, through ``torchrun`` and ``torch.distributed``.

The server starts every training run as MONAI Label does (one subprocess, status in ``GET /train/``).
When the run's request asks for more than one process (``train_procs`` per node x ``train_nodes``),
that subprocess becomes the *launcher*: it runs ``torchrun`` with the same MONAI Label entry point
and request, waits, and hands back what rank 0 wrote. Each worker builds the app as the server's
subprocess would, joins the process group from torchrun's environment (``env://``; NCCL on GPUs,
gloo on CPUs) and trains its shard of the cases (MONAI's ``partition_dataset``, in MONAI Label's
train loader) inside ``DistributedDataParallel``, which averages gradients across ranks. Rank 0
alone writes progress, validates the candidate, records the version and publishes it.

Other nodes join with the same command and ``--node_rank`` (see the README, "Scaling out").
"""

import json
import logging
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from segloop.processes import end_with_parent

logger = logging.getLogger(__name__)

# torchrun's own environment: a worker knows its place from these.
WORLD_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


@dataclass(frozen=True)
class World:
    """One torchrun worker's place: ``rank`` of ``size`` processes, ``local_rank`` on its node."""

    rank: int
    local_rank: int
    size: int


def torchrun_world() -> Optional[World]:
    """This process's place when torchrun started it with more than one process, else None."""
    if not all(name in os.environ for name in WORLD_ENV):
        return None
    world = World(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]))
    return world if world.size > 1 else None


def backend_for(device: torch.device) -> str:
    """The collective backend for ``device``: NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def _layout(request: Dict) -> Tuple[int, int]:
    """(processes per node, nodes) of a training request (``train_procs``, ``train_nodes``; at least 1)."""
    return max(1, int(request.get("train_procs", 1) or 1)), max(1, int(request.get("train_nodes", 1) or 1))


def requested_processes(request: Dict) -> int:
    """Total processes a training request asks for (``train_procs`` x ``train_nodes``)."""
    procs, nodes = _layout(request)
    return procs * nodes


def torchrun_command(request: Dict, node_rank: int = 0) -> List[str]:
    """The command every node runs for ``request`` (this node's ``node_rank``): ``torchrun``
    around MONAI Label's own entry point, the request passed unchanged (its ``run_id`` fixed, so
    every rank names the run alike). One node rendezvous on a free local port (``--standalone``);
    several meet at ``train_rdzv`` (``host:port`` of node 0, reachable from every node)."""
    procs, nodes = _layout(request)
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--nproc_per_node", str(procs)]
    if nodes == 1:
        command.append("--standalone")
    else:
        endpoint = str(request.get("train_rdzv") or "")
        if not endpoint:
            raise ValueError("train_nodes > 1 needs train_rdzv: host:port of node 0, reachable from every node")
        command += ["--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", str(request["run_id"]),
                    "--node_rank", str(node_rank)]
    worker_request = {k: v for k, v in request.items() if k not in ("device", "local_rank")}  # each rank picks its device
    command += ["-m", "monailabel.interfaces.utils.app", "-m", "train", "-r", json.dumps(worker_request, separators=(",", ":"))]
    return command


def run_torchrun(request: Dict) -> int:
    """Run node 0's workers for ``request`` and wait; their output goes to this process's log
    (the server shows it in ``GET /train/``). Returns torchrun's exit code."""
    command = torchrun_command(request)
    logger.info(f"distributed training: {requested_processes(request)} processes: {shlex.join(command)}")
    # torchrun ends with this launcher (stopped from the server, or the server gone) and ends its workers.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=end_with_parent)
    for line in process.stdout:
        line = line.rstrip()
        if line:
            print(line, flush=True)
    return process.wait()


def rank_device(requested: str, world: World) -> torch.device:
    """A worker's device: its node-local GPU when the run asks for CUDA and has one, else the CPU."""
    if str(requested).startswith("cuda") and torch.cuda.is_available():
        device = torch.device(f"cuda:{world.local_rank % torch.cuda.device_count()}")
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def all_ranks_agree(flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any (a no-op outside a process group). Ranks that
    each judged a time budget on their own clock could otherwise stop at different epochs, and the
    rank still training would wait forever for the others' gradients."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())

