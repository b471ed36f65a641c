"""``segloop-bench eval uncertainty``: a PNG of where the served model is unsure, and how calibrated it is.

Runs the automatic infer task with ``uncertainty: true`` on one image of a datastore and draws,
on the axial slice with the most predicted foreground: the CT (abdominal window), the label map's
outlines, and the uncertainty map as a heat overlay; next to it, the reliability diagram of the
serving version before and after temperature scaling (when its run had validation cases).
"""

import os
from typing import Dict, Optional

import nibabel as nib
import numpy as np

from segloop_bench.training import build_task_config
from segloop.transforms import DEFAULT_HU_WINDOW


def axial_slice(volume: np.ndarray, image: nib.Nifti1Image, index: int) -> np.ndarray:
    """Slice ``index`` along the image's superior-inferior axis, displayed with R on the viewer's
    left and anterior up (radiological convention), whatever the voxel order on disk."""
    ras = nib.as_closest_canonical(nib.Nifti1Image(volume, image.affine))
    return np.fliplr(np.rot90(np.asarray(ras.dataobj)[:, :, index]))


def draw(ct, labels, uncertainty, calibration: Optional[Dict], title: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if calibration else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 5.5))
    ax = axes[0] if panels > 1 else axes
    low, high = DEFAULT_HU_WINDOW
    ax.imshow(ct, cmap="gray", vmin=low, vmax=high)
    heat = ax.imshow(np.ma.masked_less(uncertainty, 0.05), cmap="inferno", vmin=0, vmax=1, alpha=0.6)
    for value in np.unique(labels[labels > 0]):
        ax.contour(labels == value, levels=[0.5], colors=[plt.cm.tab10(int(value) % 10)], linewidths=1)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.colorbar(heat, ax=ax, fraction=0.046, label="normalised entropy (0 = certain)")
    if calibration:
        ax = axes[1]
        for key, style in (("reliability_before", "o-"), ("reliability_after", "s-")):
            rows = calibration[key]
            ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], style, label=key.split("_")[1])
        ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect")
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        before, after = calibration["before"]["ece"], calibration["after"]["ece"]
        ax.set_title(f"validation voxels: ECE {before:.4f} -> {after:.4f} at T = {calibration['temperature']}", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(studies: str, image_id: str, out: str, conf: Optional[Dict[str, str]] = None) -> Dict:
    """Infer with uncertainty on ``image_id`` and write the PNG to ``out``; returns the result JSON."""
    config = build_task_config(studies, conf)
    task = config.infer()
    path = os.path.join(studies, f"{image_id}.nii.gz")
    result_file, result = task({"image": path, "uncertainty": True})
    image = nib.load(path)
    labels = np.asarray(nib.load(result_file).dataobj)
    os.unlink(result_file)
    uncertainty = np.asarray(nib.load(config.uncertainty_maps.path(result["uncertainty"]["token"])).dataobj)
    ras_labels = np.asarray(nib.as_closest_canonical(nib.Nifti1Image(labels, image.affine)).dataobj)
    index = int(np.argmax((ras_labels > 0).sum(axis=(0, 1))))
    calibration = config.registry.state()["versions"]
    record = next((v for v in calibration if v["version"] == result.get("model_version")), {})
    title = (
        f"{image_id}, model version {result.get('model_version')}: label outlines, uncertainty "
        f"(mean {result['uncertainty']['mean']:.3f})\nconfidence {result['label_confidence']}"
    )
    draw(
        axial_slice(np.asarray(image.dataobj, dtype=np.float32), image, index),
        axial_slice(labels, image, index),
        axial_slice(uncertainty, image, index),
        record.get("calibration"),
        title,
        out,
    )
    return result


def main(args) -> int:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    conf = dict(kv.split("=", 1) for kv in args.conf)
    result = render(args.studies, args.image, args.out, conf)
    print(f"uncertainty mean {result['uncertainty']['mean']}, label confidence {result['label_confidence']}")
    print(f"wrote {args.out}")
    return 0
