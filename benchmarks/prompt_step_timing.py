"""Time the prompt model's training step and zoom-out-zoom-in latency for one preset on one device.

    PYTHONPATH=lib python benchmarks/prompt_step_timing.py prompt cuda 8
    PYTHONPATH=lib python benchmarks/prompt_step_timing.py prompt_cpu cpu 8

Prints one JSON line: ``crop_s`` (the trainer's random crop of two 2 x roi windows from one case at
the zoom-in spacing), ``step_s`` (``PromptInteraction``: views, prompts, up to two simulated
corrections, then one bfloat16-autocast forward / backward / AdamW step; binary cross-entropy
stands in for the trainer's loss), both mean seconds over ``steps`` steps after two warm-ups, and
``latency_s``: one positive click with the label on the liver, spleen and kidney of a held-out
128 x 128 x 64 case, after one warm-up round. The weights are untrained (seeded), so two code
versions see the same regions; run it once per version (``PYTHONPATH``) to compare them.
"""

import json
import sys
import time
import types

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, RandCropByLabelClassesd, SpatialPadd
from scipy import ndimage

from segloop.data.phantom import generate_case
from segloop.networks.prompt import build_prompt_network, get_prompt_preset
from segloop.prompts.encoding import Prompt
from segloop.prompts.simulation import region_centre
from segloop.prompts.zoom import ZoomOutZoomIn
from segloop.trainers.prompt_interaction import PADDING, PromptInteraction


def main(name: str, device: str, steps: int) -> dict:
    torch.manual_seed(0)
    preset = get_prompt_preset(name)
    dev = torch.device(device)
    net = build_prompt_network(name, 4).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=preset.lr)
    amp = dict(device_type=dev.type, dtype=torch.bfloat16)

    img, lab, aff, _ = generate_case("c", 303, 0)
    zoom = np.abs(np.diag(aff)[:3]) / np.asarray(preset.fine_spacing)
    image = torch.as_tensor(ndimage.zoom(np.clip((img.astype(np.float32) + 175) / 425, 0, 1), zoom, order=1))[None]
    label = torch.as_tensor(ndimage.zoom(lab, zoom, order=0).astype(np.float32))[None]
    crop = tuple(2 * r for r in preset.roi_size)
    crops = Compose([
        SpatialPadd(keys=("image", "label"), spatial_size=crop),
        RandCropByLabelClassesd(keys=("image", "label"), label_key="label", spatial_size=crop, num_classes=5,
                                ratios=[0.0] + [1.0] * 4, num_samples=2, warn=False),
    ])

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def inferer(x, network, label=None):
        with torch.autocast(**amp):
            return network(x, label=label)

    def iteration(engine, batch):
        x, y, q = batch["image"].to(dev), batch["label"].to(dev), batch["class_index"].to(dev)
        with torch.autocast(**amp):
            out = net(x, label=q)
        used = y.flatten(2)[:, :, 0] != PADDING
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out.float()[used], y[used])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync()
        return loss

    engine = types.SimpleNamespace(state=types.SimpleNamespace(device=dev), network=net, inferer=inferer, _iteration=iteration)
    interaction = PromptInteraction(preset.roi_size, num_labels=4, seed=0, size_multiple=net.size_multiple)
    timing = {"crop_s": 0.0, "step_s": 0.0}
    for k in range(steps + 2):
        t0 = time.time()
        items = crops({"image": MetaTensor(image), "label": MetaTensor(label)})
        batch = {key: torch.stack([torch.as_tensor(i[key]) for i in items]) for key in ("image", "label")}
        t1 = time.time()
        interaction(engine, batch)
        if k >= 2:
            timing["crop_s"] += (t1 - t0) / steps
            timing["step_s"] += (time.time() - t1) / steps

    net.eval()
    himg, hlab, haff, _ = generate_case("c", 304, 16, shape=(128, 128, 64), spacing=(2.6, 2.6, 3.4))
    himage = MetaTensor(torch.as_tensor(himg[None].astype(np.float32)), affine=torch.as_tensor(haff))
    pipeline = ZoomOutZoomIn(net, preset.roi_size, preset.coarse_spacing, preset.fine_spacing, device=device)
    latency = []
    for structure in (1, 2, 3, 1, 2, 3):
        t = time.time()
        pipeline(himage, Prompt(positive=[region_centre(hlab == structure)], label=structure))
        sync()
        latency.append(time.time() - t)
    return {"preset": name, "device": device, "steps": steps, **{k: round(v, 3) for k, v in timing.items()},
            "latency_s": [round(v, 3) for v in latency[3:]]}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]))), flush=True)
