import json
import os

import nibabel as nib
import numpy as np
import pytest

from segloop.data.sample import save_nifti
from segloop.server.datastore import SegLoopDatastore
from segloop.errors import ClientError
from segloop.labels import DEFAULT_LABELS


@pytest.fixture
def store(tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    affine = np.diag([-1.5, -1.5, 3.0, 1.0])
    save_nifti(np.zeros((20, 18, 10), np.int16), affine, str(studies / "ct1.nii.gz"))
    return SegLoopDatastore(str(studies), labels=DEFAULT_LABELS), affine, tmp_path


def label_file(tmp_path, array, affine, name="label.nii.gz"):
    path = str(tmp_path / name)
    save_nifti(array, affine, path)
    return path


def expect(status, fn, *args, match=""):
    with pytest.raises(ClientError) as e:
        fn(*args)
    assert e.value.status_code == status, e.value.message
    assert match in e.value.message
    return e.value


def test_valid_label_is_saved_and_listed(store):
    ds, affine, tmp = store
    lab = np.zeros((20, 18, 10), np.uint8)
    lab[5:10, 5:10, 2:5] = DEFAULT_LABELS["liver"]
    ds.save_label("ct1", label_file(tmp, lab, affine), "final", {"annotator": "dr_a"})
    assert ds.get_labeled_images() == ["ct1"]
    saved = nib.load(ds.get_label_uri("ct1", "final"))
    assert np.array_equal(np.asarray(saved.dataobj), lab)
    config = json.load(open(os.path.join(ds._datastore_path, "datastore_v2.json")))
    assert config["objects"]["ct1"]["labels"]["final"]["info"]["annotator"] == "dr_a"
    assert not [f for f in os.listdir(ds._datastore_path) if f.startswith(".tmp")]


def test_bad_labels_are_refused_and_nothing_is_written(store):
    ds, affine, tmp = store
    good = np.zeros((20, 18, 10), np.uint8)
    expect(404, ds.save_label, "nope", label_file(tmp, good, affine), "final", {}, match="not in the datastore")
    expect(400, ds.save_label, "../ct1", label_file(tmp, good, affine), "final", {}, match="invalid image id")
    expect(400, ds.save_label, "ct1", label_file(tmp, good, affine), "../x", {}, match="invalid label tag")
    expect(422, ds.save_label, "ct1", label_file(tmp, np.zeros((20, 18, 9), np.uint8), affine), "final", {},
           match="shape")
    expect(422, ds.save_label, "ct1", label_file(tmp, good, np.diag([1.5, 1.5, 3.0, 1.0])), "final", {},
           match="affine")
    unknown = good.copy()
    unknown[0, 0, 0] = 9
    expect(422, ds.save_label, "ct1", label_file(tmp, unknown, affine), "final", {}, match="[9]")
    corrupt = tmp / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b garbage")
    expect(400, ds.save_label, "ct1", str(corrupt), "final", {}, match="not a readable NIfTI")
    assert ds.get_labeled_images() == []
    assert not os.listdir(os.path.join(ds._datastore_path, "labels", "final"))


def test_add_image_checks_header_and_refuses_overwrite(store):
    ds, affine, tmp = store
    new = str(tmp / "upload.nii.gz")
    save_nifti(np.zeros((8, 8, 8), np.int16), affine, new)
    assert ds.add_image("ct2", new, {}) == "ct2"
    assert os.path.exists(ds.get_image_uri("ct2"))
    expect(409, ds.add_image, "ct2", new, {}, match="already exists")
    flat = str(tmp / "flat.nii.gz")
    save_nifti(np.zeros((8, 8), np.int16), np.eye(4), flat)
    expect(400, ds.add_image, "ct3", flat, {}, match="3-D")
    png = tmp / "x.png"
    png.write_bytes(b"\x89PNG")
    expect(400, ds.add_image, "ct4", str(png), {}, match="only NIfTI")
    assert sorted(ds.list_images()) == ["ct1", "ct2"]


def test_auto_reload_hears_new_files_but_not_reads(tmp_path, monkeypatch):
    """The folder watcher still picks up an image copied into the folder by hand, but reading the
    folder's files (as training and scoring do all day) no longer reaches its event handler."""
    import shutil
    import time

    studies = tmp_path / "studies"
    studies.mkdir()
    affine = np.diag([-1.5, -1.5, 3.0, 1.0])
    save_nifti(np.zeros((8, 8, 4), np.int16), affine, str(studies / "ct1.nii.gz"))
    store = SegLoopDatastore(str(studies), labels=DEFAULT_LABELS, auto_reload=True)
    try:
        events = []
        handler = store._handler
        original = handler.dispatch
        monkeypatch.setattr(handler, "dispatch", lambda event: (events.append(event), original(event)))
        for _ in range(20):
            nib.load(str(studies / "ct1.nii.gz")).get_fdata()
            with open(str(studies / "ct1.nii.gz"), "rb") as f:
                f.read()
        time.sleep(1.0)
        assert events == []
        save_nifti(np.zeros((8, 8, 4), np.int16), affine, str(tmp_path / "ct2.nii.gz"))
        shutil.copy(str(tmp_path / "ct2.nii.gz"), str(studies / "ct2.nii.gz"))
        deadline = time.time() + 10
        while "ct2" not in store.list_images() and time.time() < deadline:
            time.sleep(0.1)
        assert "ct2" in store.list_images() and events
    finally:
        store._observer.stop()
