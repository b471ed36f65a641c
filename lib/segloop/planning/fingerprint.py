"""A labelled dataset's fingerprint, from MONAI Auto3DSeg's ``DataAnalyzer``.

What the planner reads from the campaign's final labels (nnU-Net's "dataset fingerprint"):

* ``spacing_mm``: the median voxel spacing per axis (RAS order, after reorientation);
* ``size_mm``: the median physical extent per axis;
* ``foreground_hu``: intensity percentiles (0.5, 99.5), mean and sd over every labelled voxel;
* ``structures``: per label name, how many cases hold it, its components per case and the
  thinnest extent of each component in mm (``thinnest_mm``: 10th percentile and median over all
  components), i.e. how small the smallest instances are, which decides the spacing a network
  must see them at.

The statistics come from MONAI's analyzer (``do_ccp``: connected components with their bounding
boxes in voxels); this module only turns its per-case report into millimetres and summaries.
"""

import logging
import os
import tempfile
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np

logger = logging.getLogger(__name__)

FINGERPRINT_VERSION = 1


def _percentile(values: Sequence[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values, dtype=float), q)), 2) if len(values) else float("nan")


def analyze_cases(pairs: Sequence[Tuple[str, str]]) -> List[Dict]:
    """MONAI ``DataAnalyzer`` per-case statistics of (image, label) file pairs (CPU, one process)."""
    from monai.apps.auto3dseg import DataAnalyzer

    datalist = {"training": [{"image": image, "label": label} for image, label in pairs]}
    with tempfile.TemporaryDirectory(prefix="segloop-fingerprint-") as scratch:
        analyzer = DataAnalyzer(
            datalist, dataroot="", output_path=os.path.join(scratch, "datastats.yaml"),
            device="cpu", worker=0, do_ccp=True, hist_bins=0,
        )
        report = analyzer.get_all_case_stats()
    return list(report["stats_by_cases"])


def summarize_cases(cases: Sequence[Mapping], labels: Mapping[str, int]) -> Dict:
    """The fingerprint (see module doc) of ``DataAnalyzer`` per-case reports."""
    if not cases:
        raise ValueError("a fingerprint needs at least one labelled case")
    spacings = np.asarray([case["image_stats"]["spacing"] for case in cases], dtype=float)
    sizes = np.asarray([case["image_stats"]["sizemm"] for case in cases], dtype=float)
    foreground = [case["image_foreground_stats"]["intensity"][0] for case in cases]
    names = {index: name for name, index in labels.items()}
    thinnest: Dict[str, List[float]] = {name: [] for name in labels}
    components: Dict[str, List[int]] = {name: [] for name in labels}
    for case, spacing in zip(cases, spacings):
        stats = case["label_stats"]
        for uid, entry in zip(stats["labels"], stats["label"]):
            name = names.get(int(uid))
            if name is None:
                continue
            shapes = entry.get("shape") or []
            components[name].append(int(entry.get("ncomponents") or len(shapes)))
            thinnest[name].extend(float(min(np.asarray(shape, dtype=float) * spacing)) for shape in shapes)
    return {
        "version": FINGERPRINT_VERSION,
        "cases": len(cases),
        "spacing_mm": [round(float(v), 3) for v in np.median(spacings, axis=0)],
        "size_mm": [round(float(v), 1) for v in np.median(sizes, axis=0)],
        "foreground_hu": {
            "percentile_00_5": round(float(np.median([f["percentile_00_5"] for f in foreground])), 1),
            "percentile_99_5": round(float(np.median([f["percentile_99_5"] for f in foreground])), 1),
            "mean": round(float(np.mean([f["mean"] for f in foreground])), 1),
            "stdev": round(float(np.mean([f["stdev"] for f in foreground])), 1),
        },
        "structures": {
            name: {
                "cases": len(components[name]),
                "components_per_case": round(float(np.mean(components[name])), 2) if components[name] else 0.0,
                "thinnest_mm": {"p10": _percentile(thinnest[name], 10), "median": _percentile(thinnest[name], 50)},
            }
            for name in labels
            if components[name]
        },
    }


def dataset_fingerprint(pairs: Sequence[Tuple[str, str]], labels: Mapping[str, int]) -> Dict:
    """Fingerprint of the labelled cases ``pairs`` ([(image path, label path)])."""
    return summarize_cases(analyze_cases(pairs), labels)
