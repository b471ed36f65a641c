"""Training-step time of SegLoop's CPU networks: float32 in the default and the channels-last
layout, and bfloat16 autocast, side by side.

    python benchmarks/training_step_precision.py [out.json] [steps]

One step as the trainers take it: a batch of 2 windows (one case, ``samples_per_case`` 2 for the
segmentation network; two windows for the prompt network), forward, loss in float32, backward,
AdamW. Each arm trains its own copy of the same seeded network; the arms alternate step by step,
so all see the same machine load; the first two steps of each are warm-ups. Prints and writes
(default ``benchmarks/results/training_step_precision/training_step_precision.json``) the median
seconds per step of each arm, and whether the CPU computes bfloat16 natively. Without it the
bfloat16 arm is left out (emulated, many times slower; SegLoop trains there in float32,
channels-last: ``segloop.networks.memory_format``).
"""

import contextlib
import copy
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from segloop.networks import DEFAULT_NETWORK, build_network, get_preset
from segloop.networks.memory_format import to_channels_last
from segloop.networks.precision import native_bfloat16
from segloop.networks.prompt import DEFAULT_PROMPT_NETWORK, build_prompt_network, get_prompt_preset
from segloop_bench.provenance import write_result

CHANNELS_LAST = torch.channels_last_3d
# arm -> (autocast context, memory layout of the weights and the batch)
ARMS = {
    "float32": (contextlib.nullcontext, torch.contiguous_format),
    "float32_channels_last": (contextlib.nullcontext, CHANNELS_LAST),
    "bfloat16_autocast": (lambda: torch.autocast("cpu", dtype=torch.bfloat16), torch.contiguous_format),
}


def cases():
    """(name, network, batch, loss of the network's output) for each CPU default network."""
    torch.manual_seed(0)
    seg_roi = get_preset(DEFAULT_NETWORK).roi_size
    prompt_roi = get_prompt_preset(DEFAULT_PROMPT_NETWORK).roi_size
    seg_y = torch.randint(0, 5, (2, *seg_roi))
    prompt_y = (torch.rand(2, 1, *prompt_roi) > 0.5).float()
    return [
        (DEFAULT_NETWORK, build_network(DEFAULT_NETWORK, 5, seg_roi), torch.rand(2, 1, *seg_roi), {},
         lambda out: F.cross_entropy(out.float(), seg_y)),
        (DEFAULT_PROMPT_NETWORK, build_prompt_network(DEFAULT_PROMPT_NETWORK, 4), torch.rand(2, 5, *prompt_roi),
         {"label": torch.tensor([1, 2])}, lambda out: F.binary_cross_entropy_with_logits(out.float(), prompt_y)),
    ]


def main(out_path: str, steps: int) -> dict:
    report = {
        "machine": {"cpu_threads": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "native_bfloat16": native_bfloat16(torch.device("cpu")), "platform": platform.platform()},
        "steps": steps,
        "networks": {},
    }
    # Emulated bfloat16 (a CPU without it) takes many times float32's step and SegLoop never uses it there.
    measured = {arm: v for arm, v in ARMS.items() if report["machine"]["native_bfloat16"] or not arm.startswith("bfloat16")}
    report["arms_not_measured"] = sorted(set(ARMS) - set(measured))
    for name, network, x, kwargs, loss_of in cases():
        arms = {}
        for arm, (context, layout) in measured.items():
            copy_ = copy.deepcopy(network)
            if layout is CHANNELS_LAST:
                to_channels_last(copy_)
            arms[arm] = (copy_, torch.optim.AdamW(copy_.parameters(), lr=1e-4), x.contiguous(memory_format=layout), context)
        times = {arm: [] for arm in measured}
        for step in range(steps + 2):
            for arm, (net, optimiser, batch, context) in arms.items():
                start = time.time()
                with context():
                    loss = loss_of(net(batch, **kwargs))
                loss.backward()
                optimiser.step()
                optimiser.zero_grad()
                if step >= 2:
                    times[arm].append(time.time() - start)
        row = {f"{arm}_step_s": round(statistics.median(t), 3) for arm, t in times.items()}
        row["channels_last_speed-up"] = round(row["float32_step_s"] / row["float32_channels_last_step_s"], 2)
        if "bfloat16_autocast_step_s" in row:
            row["bfloat16_speed-up"] = round(row["float32_step_s"] / row["bfloat16_autocast_step_s"], 2)
        report["networks"][name] = row
        print(name, json.dumps(row), flush=True)
    write_result(out_path, report, "float32 in the default layout (the same network and batch, steps alternating with the other arms)")
    print(f"wrote {out_path}")
    return report


if __name__ == "__main__":
    default_out = "benchmarks/results/training_step_precision/training_step_precision.json"
    main(sys.argv[1] if len(sys.argv) > 1 else default_out,
         int(sys.argv[2]) if len(sys.argv) > 2 else 8)
