import json
import os

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from segloop.data.phantom import NOVEL_STRUCTURES, draw_spec, generate_case, render_drawn_case
from segloop.data.sample import write_sample_data
from segloop.labels import DEFAULT_LABELS

TUMOR, KIDNEY, LIVER = DEFAULT_LABELS["tumor"], DEFAULT_LABELS["kidney"], DEFAULT_LABELS["liver"]


def world_centroid(label, affine, value):
    ijk = np.argwhere(label == value).mean(axis=0)
    return affine[:3, :3] @ ijk + affine[:3, 3]


def test_same_seed_same_case_and_other_seed_differs():
    a = generate_case("c", seed=3, index=0)
    b = generate_case("c", seed=3, index=0)
    c = generate_case("c", seed=4, index=0)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])
    assert a[3] == b[3]
    assert a[0].shape != c[0].shape or not np.array_equal(a[0], c[0])


def test_acquisition_parameters_cover_the_requested_ranges():
    specs = [draw_spec(f"c{i}", np.random.default_rng([0, i])) for i in range(60)]
    in_plane = [s.spacing[0] for s in specs]
    slices = [s.spacing[2] for s in specs]
    assert 0.6 <= min(in_plane) and max(in_plane) <= 1.6
    assert 1.5 <= min(slices) and max(slices) <= 5.0
    assert {s.orientation for s in specs} == {"RAS", "LPS"}
    assert len({s.shape for s in specs}) > 30  # sizes vary


@pytest.mark.parametrize("index", range(4))
def test_anatomy_labels_and_intensities(index):
    image, label, affine, spec = generate_case("c", seed=11, index=index)
    assert image.dtype == np.int16 and label.dtype == np.uint8 and image.shape == label.shape == spec["shape"]
    assert set(np.unique(label)) <= {0, *DEFAULT_LABELS.values()}
    for name in ("liver", "spleen", "kidney"):
        assert (label == DEFAULT_LABELS[name]).sum() > 500, name
    # Liver on the patient's right (+x in RAS world), spleen on the left, whatever the voxel order.
    assert world_centroid(label, affine, DEFAULT_LABELS["liver"])[0] > 20
    assert world_centroid(label, affine, DEFAULT_LABELS["spleen"])[0] < -20
    liver_hu = image[label == DEFAULT_LABELS["liver"]].mean()
    assert 35 < liver_hu < 95
    assert image[label == DEFAULT_LABELS["kidney"]].mean() > liver_hu + 30
    if (label == DEFAULT_LABELS["tumor"]).sum() > 50:  # hypodense to its host (liver or kidney)
        assert image[label == DEFAULT_LABELS["tumor"]].mean() < image[label == DEFAULT_LABELS["kidney"]].mean() - 10
    assert image.min() >= -1024 and image[label == 0].std() > 100  # air, fat, bone in the background


def test_orientation_matches_affine_signs():
    for index in range(8):
        _, _, affine, spec = generate_case("c", seed=2, index=index)
        signs = np.sign(np.diag(affine)[:3]).tolist()
        assert signs == ([1, 1, 1] if spec["orientation"] == "RAS" else [-1, -1, 1])
        assert np.allclose(np.abs(np.diag(affine)[:3]), spec["spacing"])


def test_write_sample_data_layout(tmp_path):
    manifest = write_sample_data(str(tmp_path), cases=3, seed=5, labelled=1, progress=None)
    studies, truth = tmp_path / "studies", tmp_path / "ground_truth"
    assert sorted(os.listdir(studies / "labels" / "final")) == ["case_000.nii.gz"]
    assert sorted(p for p in os.listdir(truth) if p.endswith(".nii.gz")) == [f"case_00{i}.nii.gz" for i in range(3)]
    assert json.loads((truth / "cases.json").read_text()) == json.loads(json.dumps(manifest))
    img = nib.load(str(studies / "case_001.nii.gz"))
    lab = nib.load(str(truth / "case_001.nii.gz"))
    assert img.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8
    assert np.allclose(img.affine, lab.affine) and int(img.header["qform_code"]) == 1
    assert not [p for p in os.listdir(studies) if p.startswith(".tmp")]
    # Structures the label map lacks: ground truth beside the labels, nothing of it in the studies.
    assert sorted(os.listdir(truth / "novel")) == [f"case_00{i}.nii.gz" for i in range(3)]
    novel = nib.load(str(truth / "novel" / "case_001.nii.gz"))
    assert novel.get_data_dtype() == np.uint8 and np.allclose(novel.affine, img.affine)
    assert manifest["novel_labels"] == NOVEL_STRUCTURES
    assert not [p for _, _, files in os.walk(studies) for p in files if "novel" in p]


@pytest.mark.parametrize("index", [0, 1])
def test_novel_structures_are_visible_and_apart_from_the_labels(index):
    case, _ = render_drawn_case("n", seed=5, index=index)
    counts = {name: int((case.novel == value).sum()) for name, value in NOVEL_STRUCTURES.items()}
    assert all(n > 200 for n in counts.values()), counts
    assert not np.any((case.novel > 0) & (case.label > 0))  # never where a labelled organ shows
    hu = {name: float(np.median(case.image[case.novel == value])) for name, value in NOVEL_STRUCTURES.items()}
    assert hu["vertebra"] > 300 and 100 < hu["aorta"] < 250 and hu["bowel_gas"] < -600, hu
    gas, count = ndimage.label(case.novel == NOVEL_STRUCTURES["bowel_gas"])
    assert count == 1  # one pocket: a click segments one structure
    assert np.array_equal(generate_case("n", 5, index)[0], case.image)  # one case, whichever way it is drawn


def test_write_sample_data_rejects_bad_counts(tmp_path):
    with pytest.raises(ValueError):
        write_sample_data(str(tmp_path), cases=2, labelled=3, progress=None)


def test_mixed_populations_change_the_anatomy_and_leave_default_cases_alone():
    plain, plain_spec = render_drawn_case("c", 0, 3, shape=(48, 48, 24), spacing=(8.0, 8.0, 10.0))
    again, _ = render_drawn_case("c", 0, 3, shape=(48, 48, 24), spacing=(8.0, 8.0, 10.0), mixed=False)
    assert plain_spec["population"] == "typical" and np.array_equal(plain.image, again.image)
    specs = {}
    for index in range(60):
        case, spec = render_drawn_case("c", 0, index, shape=(48, 48, 24), spacing=(8.0, 8.0, 10.0), mixed=True)
        specs[index] = (case, spec)
    phases = {s["phase"] for _, s in specs.values()}
    assert phases == {"portal", "arterial", "native"}
    assert {s["burden"] for _, s in specs.values()} == {"none", "typical", "many"}
    for case, spec in specs.values():
        if spec["burden"] == "none":
            assert not (case.label == TUMOR).any(), spec
        kidney_hu = np.median(case.image[ndimage.binary_erosion(case.label == KIDNEY)])
        if spec["phase"] == "native":
            assert kidney_hu < 80, spec  # unenhanced kidneys: soft-tissue density
        if spec["phase"] == "arterial":
            assert kidney_hu > 180, spec
    inversus = [(c, s) for c, s in specs.values() if s["situs"] == "inversus"]
    assert inversus, "10% situs inversus: expected some in 60 cases"
    for case, spec in inversus:  # the liver's centre lies on the patient's left (world x < 0)
        centre = np.argwhere(case.label == LIVER).mean(axis=0)
        assert (case.affine @ np.append(centre, 1))[0] < 0, spec
    assert any("small" in s["population"] for _, s in specs.values())
