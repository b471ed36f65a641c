"""Datasets in and out of a campaign: nnU-Net v2 raw datasets and Medical Segmentation Decathlon
(MSD) tasks.

``export_dataset`` writes a local studies folder's *final* labels (what the models train on: the
approved reads, or their STAPLE consensus, when the campaign reviews or reads twice) with their
images, and the unlabelled images as the test set:

* ``nnunet``: ``Dataset<ID>_<name>/imagesTr/<case>_0000.nii.gz``, ``labelsTr/<case>.nii.gz``,
  ``imagesTs/``, and ``dataset.json`` with ``channel_names`` ``{"0": "CT"}``, ``labels`` (name ->
  value, background 0, values consecutive as nnU-Net requires: a campaign with gaps in its label
  values is renumbered in label order), ``numTraining`` and ``file_ending``;
* ``msd``: ``Task<ID>_<name>/imagesTr/<case>.nii.gz``, ``labelsTr/``, ``imagesTs/``, and the MSD
  ``dataset.json`` (``modality``, ``labels`` value -> name, ``training`` / ``test`` file lists).

Both ``dataset.json`` carry a ``segloop`` entry (ignored by both tools): the export time and, per
case, who made its final label and how (reads, consensus, review).

``import_dataset`` bootstraps a campaign from either kind (detected from ``dataset.json``): every
training case's image and label (checked as an upload would be: one 3-D volume, the label on the
image's grid with known values) and every test image, into a new studies folder that appears
only once everything checked out. It returns the ``--conf labels`` the server needs.
"""

import json
import os
import shutil
import time
from typing import Dict, List, Mapping, Optional, Tuple

import nibabel as nib
import numpy as np

from segloop.io import atomic_write_json
from segloop.labels import channel_map, parse_labels
from segloop.server.datastore import SegLoopDatastore
from segloop.validation import check_id

FORMATS = ("nnunet", "msd")
NIFTI = ".nii.gz"
NNUNET_CHANNEL = "_0000"  # nnU-Net's suffix of a case's first (here: only) channel


def _datastore(studies: str, labels: Mapping[str, int]) -> SegLoopDatastore:
    return SegLoopDatastore(studies, labels=labels, auto_reload=False)


def _write_nifti_copy(source: str, dest: str) -> None:
    """``source`` as ``dest`` (.nii.gz): copied when it already is one, else re-encoded."""
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    if source.endswith(NIFTI):
        shutil.copyfile(source, dest)
    else:
        nib.save(nib.load(source), dest)


def _write_label(source: str, dest: str, renumber: Optional[Dict[int, int]]) -> None:
    if renumber is None:
        return _write_nifti_copy(source, dest)
    img = nib.load(source)
    data = np.asarray(img.dataobj)
    out = np.zeros(data.shape, np.uint8)
    for old, new in renumber.items():
        out[data == old] = new
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    nib.save(nib.Nifti1Image(out, img.affine, img.header), dest)


def _provenance(info: Mapping) -> Dict:
    keep = ("annotator", "reads", "consensus", "tool", "model_version", "agreement", "user")
    return {k: info[k] for k in keep if k in info}


def export_dataset(
    studies: str, out: str, fmt: str, labels: Optional[Mapping[str, int]] = None, dataset_id: int = 501,
    name: str = "SegLoop",
) -> str:
    """Write the dataset; returns its folder. ``labels``: the campaign's ``--conf labels``."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    check_id(name, what="dataset name")
    labels = parse_labels(labels)
    store = _datastore(studies, labels)
    labelled = sorted(store.get_labeled_images())
    if not labelled:
        raise ValueError(f"{studies} has no final label to export")
    unlabelled = sorted(store.get_unlabeled_images())
    folder = os.path.join(out, f"Dataset{dataset_id:03d}_{name}" if fmt == "nnunet" else f"Task{dataset_id:02d}_{name}")
    if os.path.exists(folder):
        raise ValueError(f"{folder} exists; remove it or choose another --dataset-id / --name")
    # Consecutive values (nnU-Net requires them; MSD readers assume them): the channel order.
    mapping = channel_map(labels)
    renumber = None if all(k == v for k, v in mapping.items()) else mapping
    names = {mapping[index]: label for label, index in labels.items()}
    tmp = folder + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    image_name = (lambda case: f"{case}{NNUNET_CHANNEL}{NIFTI}") if fmt == "nnunet" else (lambda case: f"{case}{NIFTI}")
    cases = {}
    for case in labelled:
        _write_nifti_copy(store.get_image_uri(case), os.path.join(tmp, "imagesTr", image_name(case)))
        _write_label(store.get_label_uri(case, "final"), os.path.join(tmp, "labelsTr", f"{case}{NIFTI}"), renumber)
        cases[case] = _provenance(store.get_label_info(case, "final") or {})
    for case in unlabelled:
        _write_nifti_copy(store.get_image_uri(case), os.path.join(tmp, "imagesTs", image_name(case)))
    os.makedirs(os.path.join(tmp, "imagesTs"), exist_ok=True)
    segloop = {"exported": time.strftime("%Y-%m-%dT%H:%M:%S"), "studies": os.path.abspath(studies), "cases": cases}
    if fmt == "nnunet":
        meta = {
            "name": name,
            "description": "Exported from a SegLoop campaign: the final labels (approved reads or their consensus)",
            "channel_names": {"0": "CT"},
            "labels": {"background": 0, **{names[v]: v for v in sorted(names)}},
            "numTraining": len(labelled),
            "file_ending": NIFTI,
            "segloop": segloop,
        }
    else:
        meta = {
            "name": name,
            "description": "Exported from a SegLoop campaign: the final labels (approved reads or their consensus)",
            "tensorImageSize": "3D",
            "modality": {"0": "CT"},
            "labels": {"0": "background", **{str(v): names[v] for v in sorted(names)}},
            "numTraining": len(labelled),
            "numTest": len(unlabelled),
            "training": [{"image": f"./imagesTr/{c}{NIFTI}", "label": f"./labelsTr/{c}{NIFTI}"} for c in labelled],
            "test": [f"./imagesTs/{c}{NIFTI}" for c in unlabelled],
            "segloop": segloop,
        }
    atomic_write_json(os.path.join(tmp, "dataset.json"), meta)
    os.rename(tmp, folder)
    return folder


def detect_format(meta: Mapping) -> str:
    if "channel_names" in meta:
        return "nnunet"
    if "modality" in meta and "training" in meta:
        return "msd"
    raise ValueError("dataset.json is neither nnU-Net v2 (channel_names) nor MSD (modality, training)")


def _labels_of(meta: Mapping, fmt: str) -> Dict[str, int]:
    raw = meta.get("labels") or {}
    if fmt == "nnunet":
        if any(not isinstance(v, int) for v in raw.values()):
            raise ValueError("region-based nnU-Net labels (lists of values) cannot be imported: SegLoop labels are single values")
        pairs = {name: value for name, value in raw.items() if value != 0 and name != "ignore"}
    else:
        pairs = {name: int(value) for value, name in raw.items() if int(value) != 0}
    return parse_labels(json.dumps(pairs))


def _cases(src: str, meta: Mapping, fmt: str) -> Tuple[List[Tuple[str, str, Optional[str]]], int]:
    """[(case id, image file, label file or None)] and the number of channels."""
    if fmt == "nnunet":
        ending = meta.get("file_ending", NIFTI)
        channels = len(meta["channel_names"])
        found = []
        for folder, labelled in (("imagesTr", True), ("imagesTs", False)):
            path = os.path.join(src, folder)
            names = sorted(f for f in os.listdir(path) if f.endswith(NNUNET_CHANNEL + ending)) if os.path.isdir(path) else []
            for f in names:
                case = f[: -len(NNUNET_CHANNEL + ending)]
                label = os.path.join(src, "labelsTr", case + ending) if labelled else None
                if labelled and not os.path.isfile(label):
                    raise ValueError(f"{case}: no labelsTr/{case}{ending}")
                found.append((case, os.path.join(path, f), label))
        if len([c for c in found if c[2]]) != int(meta.get("numTraining", -1)):
            raise ValueError(f"dataset.json says numTraining {meta.get('numTraining')}, imagesTr holds {len([c for c in found if c[2]])}")
        return found, channels
    channels = len(meta["modality"])
    found = [(_stem(t["image"]), os.path.join(src, t["image"]), os.path.join(src, t["label"])) for t in meta["training"]]
    found += [(_stem(t), os.path.join(src, t), None) for t in meta.get("test", [])]
    return found, channels


def _stem(path: str) -> str:
    name = os.path.basename(path)
    for suffix in (NIFTI, ".nii", ".nrrd"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def import_dataset(src: str, studies: str) -> Dict[str, object]:
    """Import an nnU-Net v2 or MSD dataset folder into a new studies folder; returns the format,
    the labels (``--conf labels``) and the case counts. Nothing is left behind on an error."""
    with open(os.path.join(src, "dataset.json")) as f:
        meta = json.load(f)
    fmt = detect_format(meta)
    labels = _labels_of(meta, fmt)
    cases, channels = _cases(src, meta, fmt)
    if channels != 1:
        raise ValueError(f"SegLoop reads one CT channel per case; this dataset has {channels}")
    if os.path.exists(studies) and os.listdir(studies):
        raise ValueError(f"{studies} exists and is not empty: import into a new folder")
    tmp = studies.rstrip("/") + ".importing"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        store = _datastore(tmp, labels)
        source = f"{fmt}:{os.path.abspath(src)}"
        for case, image, label in cases:
            check_id(case, what="case id")
            if not os.path.isfile(image):
                raise ValueError(f"{case}: image {image} is missing")
            store.add_image(case, image, {"imported_from": source})
            if label is not None:
                store.save_label(case, label, "final", {"imported_from": source, "annotator": "imported"})
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(f"import stopped, nothing written: {getattr(e, 'detail', e)}") from e
    if os.path.isdir(studies):
        os.rmdir(studies)
    os.rename(tmp, studies)
    return {
        "format": fmt,
        "labels": labels,
        "labelled": sum(1 for c in cases if c[2]),
        "unlabelled": sum(1 for c in cases if not c[2]),
        "conf_labels": json.dumps(labels, separators=(",", ":")),
    }
