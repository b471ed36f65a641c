"""Write a folder of synthetic studies: images for the datastore, ground truth kept apart.

Layout of ``out``::

    out/studies/case_000.nii.gz ...           images (int16 HU) - point the server here
    out/studies/labels/final/case_000.nii.gz  only for the first ``labelled`` cases
    out/ground_truth/case_000.nii.gz ...      labels for every case (never read by the server)
    out/ground_truth/novel/case_000.nii.gz    structures the label map lacks (aorta, vertebra,
                                              bowel gas): clicks-only segmentation of the unlabelled
    out/ground_truth/cases.json               label maps and the random draw of every case
    out/dicom/case_000/0000.dcm ...           with ``dicom``: each image as a CT series (the
                                              second case's files out of order), for a PACS
"""

import os
import time
from typing import Callable, Optional, Tuple

import nibabel as nib
import numpy as np

from segloop.data.dicom_series import write_ct_series
from segloop.data.phantom import NOVEL_STRUCTURES, render_drawn_case
from segloop.io import atomic_path, atomic_write_json
from segloop.labels import DEFAULT_LABELS


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str) -> None:
    """Save with both qform and sform set (code 1, scanner), atomically."""
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, tmp)


def write_sample_data(
    out: str,
    cases: int = 8,
    seed: int = 0,
    labelled: int = 0,
    progress: Optional[Callable[[str], None]] = print,
    shape: Optional[Tuple[int, int, int]] = None,
    spacing: Optional[Tuple[float, float, float]] = None,
    first_index: int = 0,
    mixed: bool = False,
    dicom: bool = False,
) -> dict:
    """Generate ``cases`` phantoms under ``out``; returns the manifest written to ``cases.json``.

    Existing files are overwritten; the same ``seed`` always yields the same volumes. ``shape`` and
    ``spacing`` fix the grid of every case; ``first_index`` numbers cases from there (case_{index}); ``mixed`` draws
    each case's subpopulation (contrast phase, body size, tumour burden, anatomy; see
    ``segloop.data.phantom.draw_population``), recorded as ``population`` in ``cases.json``;
    ``dicom`` also writes each image as a DICOM CT series (``segloop.data.dicom_series``), the
    second case with its slices out of order, and records the UIDs as ``dicom`` in ``cases.json``.
    """
    if cases < 1:
        raise ValueError("cases must be >= 1")
    if not 0 <= labelled <= cases:
        raise ValueError(f"labelled must be between 0 and cases ({cases}), got {labelled}")
    studies = os.path.join(out, "studies")
    truth = os.path.join(out, "ground_truth")
    final = os.path.join(studies, "labels", "final")
    for d in (studies, truth, os.path.join(truth, "novel")):
        os.makedirs(d, exist_ok=True)
    manifest = {"labels": dict(DEFAULT_LABELS), "novel_labels": dict(NOVEL_STRUCTURES), "seed": seed, "mixed": mixed, "cases": []}
    start = time.time()
    for n, i in enumerate(range(first_index, first_index + cases)):
        case_id = f"case_{i:03d}"
        case, spec = render_drawn_case(case_id, seed, i, shape=shape, spacing=spacing, mixed=mixed)
        image, label, affine = case.image, case.label, case.affine
        save_nifti(image, affine, os.path.join(studies, f"{case_id}.nii.gz"))
        save_nifti(label, affine, os.path.join(truth, f"{case_id}.nii.gz"))
        save_nifti(case.novel, affine, os.path.join(truth, "novel", f"{case_id}.nii.gz"))
        if n < labelled:
            os.makedirs(final, exist_ok=True)
            save_nifti(label, affine, os.path.join(final, f"{case_id}.nii.gz"))
        if dicom:
            shuffled = n == 1
            uids = write_ct_series(image, affine, os.path.join(out, "dicom", case_id), case_id, seed, shuffled=shuffled)
            spec = dict(spec, dicom=dict(uids, shuffled=shuffled))
        manifest["cases"].append(spec)
        if progress:
            progress(
                f"[{n + 1}/{cases}] {case_id}: {spec['orientation']} {tuple(spec['shape'])} voxels at "
                f"{tuple(spec['spacing'])} mm, {spec['population']} ({time.time() - start:.1f} s)"
            )
    atomic_write_json(os.path.join(truth, "cases.json"), manifest)
    return manifest
