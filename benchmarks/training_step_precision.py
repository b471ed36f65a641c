"""Training-step time of SegLoop's CPU networks in float32 and under bfloat16 autocast, side by side.

    python benchmarks/training_step_precision.py [out.json] [steps]

One step as the trainers take it: a batch of 2 windows (one case, ``samples_per_case`` 2 for the
segmentation network; two windows for the prompt network), forward, loss in float32, backward,
AdamW. The two precisions alternate step by step on the same network, so both see the same
machine load; the first two steps of each are warm-ups. Prints and writes (default
``benchmarks/results/training_step_precision/training_step_precision.json``) the median seconds per
step of each, and whether the CPU computes bfloat16 natively (without, autocast is emulated and SegLoop keeps float32).
"""

import contextlib
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from segloop.networks import DEFAULT_NETWORK, build_network, get_preset
from segloop.networks.precision import native_bfloat16
from segloop.networks.prompt import DEFAULT_PROMPT_NETWORK, build_prompt_network, get_prompt_preset
from segloop_bench.provenance import write_result

PRECISIONS = {
    "float32": contextlib.nullcontext,
    "bfloat16_autocast": lambda: torch.autocast("cpu", dtype=torch.bfloat16),
}


def cases():
    """(name, network, one training step's closure) for each CPU default network."""
    torch.manual_seed(0)
    seg_roi = get_preset(DEFAULT_NETWORK).roi_size
    seg = build_network(DEFAULT_NETWORK, 5, seg_roi)
    seg_x, seg_y = torch.rand(2, 1, *seg_roi), torch.randint(0, 5, (2, *seg_roi))
    prompt_roi = get_prompt_preset(DEFAULT_PROMPT_NETWORK).roi_size
    prompt = build_prompt_network(DEFAULT_PROMPT_NETWORK, 4)
    prompt_x, prompt_y = torch.rand(2, 5, *prompt_roi), (torch.rand(2, 1, *prompt_roi) > 0.5).float()
    return [
        (DEFAULT_NETWORK, seg, lambda: F.cross_entropy(seg(seg_x).float(), seg_y)),
        (DEFAULT_PROMPT_NETWORK, prompt, lambda: F.binary_cross_entropy_with_logits(
            prompt(prompt_x, label=torch.tensor([1, 2])).float(), prompt_y)),
    ]


def main(out_path: str, steps: int) -> dict:
    report = {
        "machine": {"cpu_threads": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "native_bfloat16": native_bfloat16(torch.device("cpu")), "platform": platform.platform()},
        "steps": steps,
        "networks": {},
    }
    for name, network, loss_of in cases():
        optimiser = torch.optim.AdamW(network.parameters(), lr=1e-4)
        times = {p: [] for p in PRECISIONS}
        for step in range(steps + 2):
            for precision, context in PRECISIONS.items():
                start = time.time()
                with context():
                    loss = loss_of()
                loss.backward()
                optimiser.step()
                optimiser.zero_grad()
                if step >= 2:
                    times[precision].append(time.time() - start)
        row = {f"{p}_step_s": round(statistics.median(t), 3) for p, t in times.items()}
        row["speed-up"] = round(row["float32_step_s"] / row["bfloat16_autocast_step_s"], 2)
        report["networks"][name] = row
        print(name, json.dumps(row), flush=True)
    write_result(out_path, report, "float32 (the same network and batch, steps alternating with bfloat16 autocast)")
    print(f"wrote {out_path}")
    return report


if __name__ == "__main__":
    default_out = "benchmarks/results/training_step_precision/training_step_precision.json"
    main(sys.argv[1] if len(sys.argv) > 1 else default_out,
         int(sys.argv[2]) if len(sys.argv) > 2 else 8)
