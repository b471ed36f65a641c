"""Datasets in and out: a campaign exported as an nnU-Net v2 raw dataset (checked by nnU-Net's own
``verify_dataset_integrity``) and as an MSD task, and imported back voxel for voxel; bad datasets
are refused and leave nothing behind."""

import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest

from segloop.cli import main as segloop
from segloop.data.datasets import export_dataset, import_dataset
from segloop.data.sample import write_sample_data
from segloop.labels import DEFAULT_LABELS
from segloop.server.datastore import SegLoopDatastore


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    """Four small cases, three with a final label (one carrying a consensus record)."""
    root = str(tmp_path_factory.mktemp("campaign"))
    write_sample_data(root, cases=4, seed=3, labelled=3, progress=None, shape=(40, 40, 20))
    studies = os.path.join(root, "studies")
    store = SegLoopDatastore(studies, labels=DEFAULT_LABELS, auto_reload=False)
    store.update_label_info("case_001", "final", {"reads": ["dr_a", "dr_b"], "consensus": "STAPLE", "annotator": "dr_a, dr_b"})
    return studies


def voxels(path):
    return np.asarray(nib.load(path).dataobj)


def same_case(studies_a, studies_b, case, label=True):
    a, b = nib.load(os.path.join(studies_a, f"{case}.nii.gz")), nib.load(os.path.join(studies_b, f"{case}.nii.gz"))
    assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)) and np.allclose(a.affine, b.affine)
    if label:
        la, lb = (os.path.join(s, "labels", "final", f"{case}.nii.gz") for s in (studies_a, studies_b))
        assert np.array_equal(voxels(la), voxels(lb))


def test_nnunet_export_passes_nnunets_own_check_and_imports_back(campaign, tmp_path, capsys):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    assert segloop(["export", "--studies", campaign, "--format", "nnunet", "--out", str(tmp_path), "--dataset-id", "7"]) == 0
    folder = str(tmp_path / "Dataset007_SegLoop")
    meta = json.load(open(os.path.join(folder, "dataset.json")))
    assert meta["labels"] == {"background": 0, "liver": 1, "spleen": 2, "kidney": 3, "tumor": 4}
    assert meta["numTraining"] == 3 and meta["channel_names"] == {"0": "CT"} and meta["file_ending"] == ".nii.gz"
    assert sorted(os.listdir(os.path.join(folder, "imagesTr"))) == [f"case_00{i}_0000.nii.gz" for i in range(3)]
    assert os.listdir(os.path.join(folder, "imagesTs")) == ["case_003_0000.nii.gz"]
    assert meta["segloop"]["cases"]["case_001"]["consensus"] == "STAPLE"
    verify_dataset_integrity(folder, num_processes=1)  # raises on anything nnU-Net would not train on

    studies = str(tmp_path / "imported")
    assert segloop(["import", "--from", folder, "--studies", studies]) == 0
    assert """--conf labels '{"liver":1,"spleen":2,"kidney":3,"tumor":4}'""" in capsys.readouterr().out
    for case in ("case_000", "case_001", "case_002"):
        same_case(campaign, studies, case)
    same_case(campaign, studies, "case_003", label=False)
    store = SegLoopDatastore(studies, labels=DEFAULT_LABELS, auto_reload=False)
    assert sorted(store.get_labeled_images()) == ["case_000", "case_001", "case_002"]
    assert store.get_label_info("case_000", "final")["imported_from"].startswith("nnunet:")
    assert segloop(["export", "--studies", campaign, "--format", "nnunet", "--out", str(tmp_path), "--dataset-id", "7"]) == 2  # exists


def test_msd_round_trip_and_renumbered_sparse_labels(campaign, tmp_path):
    folder = export_dataset(campaign, str(tmp_path), "msd", dataset_id=3, name="Abdomen")
    meta = json.load(open(os.path.join(folder, "dataset.json")))
    assert os.path.basename(folder) == "Task03_Abdomen" and meta["modality"] == {"0": "CT"}
    assert meta["labels"] == {"0": "background", "1": "liver", "2": "spleen", "3": "kidney", "4": "tumor"}
    assert meta["training"][0] == {"image": "./imagesTr/case_000.nii.gz", "label": "./labelsTr/case_000.nii.gz"}
    assert meta["test"] == ["./imagesTs/case_003.nii.gz"] and meta["numTest"] == 1
    studies = str(tmp_path / "from_msd")
    result = import_dataset(folder, studies)
    assert result["format"] == "msd" and result["labelled"] == 3 and result["unlabelled"] == 1
    for case in ("case_000", "case_001", "case_002"):
        same_case(campaign, studies, case)

    # A campaign whose label values have gaps is renumbered in label order (nnU-Net needs 0, 1, 2, ...).
    sparse = str(tmp_path / "sparse")
    shutil.copytree(campaign, sparse)
    path = os.path.join(sparse, "labels", "final", "case_000.nii.gz")
    img = nib.load(path)
    data = np.asarray(img.dataobj).copy()
    data[data == 4] = 9  # tumour stored as 9
    data[(data == 2) | (data == 3)] = 0
    nib.save(nib.Nifti1Image(data.astype(np.uint8), img.affine), path)
    for case in ("case_001", "case_002"):
        os.unlink(os.path.join(sparse, "labels", "final", f"{case}.nii.gz"))
    os.unlink(os.path.join(sparse, "datastore_v2.json"))
    folder = export_dataset(sparse, str(tmp_path / "out_sparse"), "nnunet", labels='{"liver":1,"tumor":9}')
    meta = json.load(open(os.path.join(folder, "dataset.json")))
    assert meta["labels"] == {"background": 0, "liver": 1, "tumor": 2} and meta["numTraining"] == 1
    exported = voxels(os.path.join(folder, "labelsTr", "case_000.nii.gz"))
    assert np.array_equal(exported, np.select([data == 1, data == 9], [1, 2], 0))


def test_bad_datasets_are_refused_and_leave_nothing(campaign, tmp_path):
    folder = export_dataset(campaign, str(tmp_path), "nnunet", dataset_id=9)
    studies = str(tmp_path / "new")

    def refused(change, match):
        broken = str(tmp_path / "broken")
        shutil.rmtree(broken, ignore_errors=True)
        shutil.copytree(folder, broken)
        change(broken)
        with pytest.raises(ValueError, match=match):
            import_dataset(broken, studies)
        assert not os.path.exists(studies) and not os.path.exists(studies + ".importing")

    def edit_json(**changes):
        def change(path):
            meta = json.load(open(os.path.join(path, "dataset.json")))
            meta.update(changes)
            json.dump(meta, open(os.path.join(path, "dataset.json"), "w"))
        return change

    def bad_label(path):  # a value the dataset does not name
        label = os.path.join(path, "labelsTr", "case_001.nii.gz")
        img = nib.load(label)
        data = np.asarray(img.dataobj).copy()
        data[0, 0, 0] = 7
        nib.save(nib.Nifti1Image(data, img.affine), label)

    def shifted_label(path):  # off the image's grid
        label = os.path.join(path, "labelsTr", "case_002.nii.gz")
        img = nib.load(label)
        affine = img.affine.copy()
        affine[0, 3] += 5
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), label)

    refused(edit_json(channel_names={"0": "CT", "1": "PET"}), "one CT channel")
    refused(edit_json(numTraining=5), "numTraining")
    refused(lambda p: os.unlink(os.path.join(p, "labelsTr", "case_002.nii.gz")), "no labelsTr")
    refused(bad_label, "case_001|label")
    refused(shifted_label, "grid|affine|geometry")
    refused(edit_json(labels={"background": 0, "liver": [1, 2]}), "region-based")
    refused(lambda p: json.dump({"name": "x"}, open(os.path.join(p, "dataset.json"), "w")), "neither")
    os.makedirs(studies)
    open(os.path.join(studies, "x"), "w").close()
    with pytest.raises(ValueError, match="not empty"):
        import_dataset(folder, studies)
