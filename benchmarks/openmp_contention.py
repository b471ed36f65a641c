"""Inference latency and training throughput when the server, a training run and the scoring job
share the CPU, under each OpenMP wait policy.

    python benchmarks/openmp_contention.py [out.json] [seconds]

In a campaign, MONAI Label's server answers ``/infer`` while its training subprocess trains and its
scoring subprocess scores, each process with as many torch threads as there are cores. PyTorch's
CPU kernels run on libgomp, whose idle threads spin (``OMP_WAIT_POLICY`` unset or ``ACTIVE``) and
so burn the cores the other processes wait for. This script runs, as separate processes started
with the policy in their environment:

* ``infer``: the default segmentation network's forward pass on one training window (64^3 for
  ``unetr_cpu``), the server's side (median and max seconds of 12 passes after a warm-up);
* ``train``: prompt-model training steps (two 48^3 windows, forward / backward / AdamW), the
  training subprocess (steps per second over its run: ``seconds`` alone; beside ``infer``, from
  its start until ``infer`` ends, so partly alone);
* ``score``: the segmentation network's forward passes in a loop, the scoring subprocess.

``train`` and ``score`` run at niceness 10, as SegLoop's training runs and scoring job do. Each
runs alone and together (``infer`` + ``train``, ``infer`` + ``train`` + ``score``), under each
policy; the script writes the figures as JSON (default
``benchmarks/results/openmp_contention/openmp_contention.json``).
"""

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from segloop.cpu_sharing import lower_priority
from segloop_bench.provenance import write_result

# libgomp's settings per policy: unset it spins 300,000 rounds before sleeping at a barrier,
# PASSIVE sleeps at once; GOMP_SPINCOUNT sets the rounds between.
POLICIES = {
    "default": {},
    "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
}
BACKGROUND_NICE = 10  # the trainers' and the scoring job's default ``nice``
STARTUP_S = 10.0  # imports and network construction of a worker, before ``infer`` starts beside it


def _segmentation_network():
    from segloop.networks import DEFAULT_NETWORK, build_network, get_preset

    roi = get_preset(DEFAULT_NETWORK).roi_size
    return build_network(DEFAULT_NETWORK, 5, roi).eval(), roi


def worker(role: str, stop_file: str) -> dict:
    """One process's workload; returns its figures. ``train`` and ``score`` run until ``stop_file`` exists."""
    running = lambda: not os.path.exists(stop_file)  # noqa: E731
    if role != "infer":
        lower_priority(BACKGROUND_NICE)  # as SegLoop's training runs and scoring job do
    torch.manual_seed(0)
    if role == "train":
        from segloop.networks.prompt import build_prompt_network

        net = build_prompt_network("prompt_cpu", 4)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        x, label = torch.rand(2, 5, 48, 48, 48), torch.tensor([1, 2])
        start, steps = time.time(), 0
        while running():
            loss = net(x, label=label).float().mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            steps += 1
        return {"train_steps_per_s": round(steps / (time.time() - start), 3)}
    net, roi = _segmentation_network()
    x = torch.rand(1, 1, *roi)
    with torch.no_grad():
        net(x)
        if role == "score":
            while running():
                net(x)
            return {}
        times = []
        for _ in range(12):
            t = time.time()
            net(x)
            times.append(time.time() - t)
    return {"infer_s_median": round(statistics.median(times), 3), "infer_s_max": round(max(times), 3)}


def scenario(roles, policy: str, seconds: float) -> dict:
    """Start ``roles`` as processes under ``policy``; ``infer`` starts once the others are running,
    and the others stop when it ends (alone, after ``seconds``)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(POLICIES[policy])
    stop_file = os.path.join(tempfile.mkdtemp(prefix="segloop-omp-"), "stop")
    cmd = lambda role: [sys.executable, __file__, "--worker", role, stop_file]  # noqa: E731
    background = [subprocess.Popen(cmd(r), env=env, stdout=subprocess.PIPE, text=True) for r in roles if r != "infer"]
    result = {}
    if "infer" in roles:
        time.sleep(STARTUP_S if background else 0)
        out = subprocess.run(cmd("infer"), env=env, stdout=subprocess.PIPE, text=True, check=True).stdout
        result.update(json.loads(out.strip().splitlines()[-1]))
    if background:
        time.sleep(seconds if "infer" not in roles else 0)
        open(stop_file, "w").close()
    for p in background:
        out, _ = p.communicate()
        result.update(json.loads(out.strip().splitlines()[-1]))
    return result


def main(out_path: str, seconds: float) -> dict:
    report = {
        "machine": {"cpu_threads": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform()},
        "train_alone_seconds": seconds,
        "scenarios": [],
    }
    for roles in (("infer",), ("train",), ("infer", "train"), ("infer", "train", "score")):
        for policy in POLICIES:
            row = {"processes": "+".join(roles), "omp_wait_policy": policy, **scenario(roles, policy, seconds)}
            print(json.dumps(row), flush=True)
            report["scenarios"].append(row)
    write_result(out_path, report, "OMP_WAIT_POLICY unset (libgomp's spinning default): same processes, machine and run")
    print(f"wrote {out_path}")
    return report


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        print(json.dumps(worker(sys.argv[2], sys.argv[3])))
    else:
        main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/openmp_contention/openmp_contention.json",
             float(sys.argv[2]) if len(sys.argv) > 2 else 30.0)
