"""Cases whose stored files no longer decode are left out of training and listed (fast, no training)."""

import json
import os
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import torch

from segloop.campaign.loop import CampaignLoop
from segloop.campaign.registry import ModelRegistry
from segloop.labels import DEFAULT_LABELS
from segloop.trainers.quarantine import Quarantine, decode_error
from segloop.trainers.segmentation import SegmentationTrainer

OPTIONS = SimpleNamespace(labels=DEFAULT_LABELS, retrain_every=1, auto_train=False, retrain_debounce_s=0, retrain_max_seconds=0, first_run_max_seconds=0)


def write_nifti(path, seed=0):
    data = np.random.default_rng(seed).integers(-1000, 1000, size=(12, 12, 12)).astype(np.int16)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return str(path)


def cut_in_half(path):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


class Studies:
    """A datastore of final labels on disk: datalist() items and label timestamps."""

    def __init__(self, root, cases):
        os.makedirs(root / "labels", exist_ok=True)
        self.root, self.ts = root, {case: 1 for case in cases}
        for i, case in enumerate(cases):
            write_nifti(root / f"{case}.nii.gz", seed=i)
            write_nifti(root / "labels" / f"{case}.nii.gz", seed=100 + i)

    def datalist(self):
        return [{"image": str(self.root / f"{c}.nii.gz"), "label": str(self.root / "labels" / f"{c}.nii.gz")} for c in sorted(self.ts)]

    def get_labeled_images(self):
        return sorted(self.ts)

    def get_label_info(self, image_id, tag):
        return {"ts": self.ts[image_id]}


def test_truncated_files_do_not_decode(tmp_path):
    gz = write_nifti(tmp_path / "a.nii.gz")
    raw = write_nifti(tmp_path / "b.nii")
    assert decode_error(gz) is None and decode_error(raw) is None
    cut_in_half(gz)  # truncated gzip stream
    cut_in_half(raw)  # header intact, voxel data cut short
    assert decode_error(gz) and decode_error(raw)
    assert decode_error(str(tmp_path / "missing.nii.gz"))


def test_the_trainer_quarantines_unreadable_cases_and_releases_them_once_readable(tmp_path):
    studies = Studies(tmp_path / "studies", ["c0", "c1", "c2"])
    reg = ModelRegistry(str(tmp_path / "models"), "seg")
    trainer = SegmentationTrainer(str(tmp_path / "models"), torch.nn.Identity(), DEFAULT_LABELS, (3, 3, 3), (8, 8, 8), reg, device="cpu")
    loop = CampaignLoop("seg", reg, OPTIONS, datastore_fn=lambda: studies, train_config_fn=dict)
    assert [os.path.basename(d["image"]) for d in trainer.pre_process({}, studies)] == ["c0.nii.gz", "c1.nii.gz", "c2.nii.gz"]
    assert loop.summary()["quarantined"] == {}

    cut_in_half(str(studies.root / "labels" / "c1.nii.gz"))
    kept = trainer.pre_process({}, studies)
    assert [os.path.basename(d["image"]) for d in kept] == ["c0.nii.gz", "c2.nii.gz"]
    entry = json.load(open(reg.quarantine_path))["c1"]
    assert entry["file"] == "c1.nii.gz" and entry["error"] and entry["time"]
    assert loop.summary()["quarantined"]["c1"]["error"] == entry["error"]

    # the run sees c0 and c2; c1 waits for its label to be saved again (no retrain loop on a broken file)
    reg.record({"status": "promoted", "labels_seen": {"c0": 1, "c2": 1}}, {"w": torch.zeros(1)}, promote=True)
    assert loop.count_unseen() == 0
    studies.ts["c1"] = 2
    write_nifti(studies.root / "labels" / "c1.nii.gz", seed=7)  # re-saved: decodes again
    assert loop.count_unseen() == 1
    assert len(trainer.pre_process({}, studies)) == 3
    assert loop.summary()["quarantined"] == {}


def test_decode_results_are_cached_per_path_mtime_and_size(tmp_path):
    files = [write_nifti(tmp_path / f"{n}.nii.gz", seed=i) for i, n in enumerate(["i", "l"])]
    decoded = []
    quarantine = Quarantine(str(tmp_path / "quarantine.json"), decode=lambda p: decoded.append(p) or decode_error(p))
    item = {"image": files[0], "label": files[1]}
    for _ in range(3):
        assert quarantine.filter([dict(item)], lambda d: "i") == [item]
    assert decoded == files  # each unchanged file decoded once
    cut_in_half(files[0])
    assert quarantine.filter([dict(item)], lambda d: "i") == []
    assert decoded == files + [files[0]]
    assert list(quarantine.read()) == ["i"]
