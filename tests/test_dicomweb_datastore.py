"""The DICOMweb datastore against a real Orthanc (started here on a free loopback port): series in,
labels out as DICOM SEG with the right provenance, read back voxel for voxel by a fresh server's
datastore, a bounded series cache, and clear 4xx answers for bad input."""

import os

import nibabel as nib
import numpy as np
import pytest
from dicomweb_client import DICOMwebClient

from segloop.data.sample import write_sample_data
from segloop.dicom.seg import reorient_to
from segloop.errors import ClientError
from segloop.labels import DEFAULT_LABELS
from segloop.pacs.orthanc import OrthancServer, find_orthanc, install_orthanc
from segloop.server.dicomweb import SegLoopDICOMwebDatastore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """Orthanc with three sample series; yields (server, sample root, manifest)."""
    try:
        install_orthanc()
    except Exception as e:  # pragma: no cover - only where apt-get cannot run
        pytest.fail(f"Orthanc is needed and could not be installed: {e}")
    root = str(tmp_path_factory.mktemp("pacs_sample"))
    manifest = write_sample_data(root, cases=3, seed=5, progress=None, shape=(40, 36, 12), spacing=(7.0, 7.5, 9.0), dicom=True)
    with OrthancServer(str(tmp_path_factory.mktemp("orthanc"))) as server:
        server.upload(os.path.join(root, "dicom"))
        yield server, root, manifest


def datastore(server, cache, **kwargs):
    return SegLoopDICOMwebDatastore(DICOMwebClient(url=server.dicomweb_url), DEFAULT_LABELS, cache_path=str(cache), **kwargs)


def truth_on(image_uri, root, case_id):
    image, truth = nib.load(image_uri), nib.load(os.path.join(root, "ground_truth", f"{case_id}.nii.gz"))
    return reorient_to(np.asarray(truth.dataobj), truth.affine, image.affine, image.shape), image.affine


def test_series_labels_and_seg_round_trip_through_orthanc(pacs, tmp_path):
    assert find_orthanc()
    server, root, manifest = pacs
    cases = {c["dicom"]["series"]: c for c in manifest["cases"]}
    store = datastore(server, tmp_path / "cache_a")
    assert sorted(store.list_images()) == sorted(cases)
    shuffled = next(uid for uid, c in cases.items() if c["dicom"]["shuffled"])
    image_uri = store.get_image_uri(shuffled)
    original = nib.load(os.path.join(root, "studies", f"{cases[shuffled]['case_id']}.nii.gz"))
    a, b = nib.as_closest_canonical(nib.load(image_uri)), nib.as_closest_canonical(original)
    assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))

    label, affine = truth_on(image_uri, root, cases[shuffled]["case_id"])
    path = str(tmp_path / "label.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), path)
    store.save_label(shuffled, path, "final", {"annotator": "dr_a"})
    assert shuffled in store.get_labeled_images() and shuffled not in store.get_unlabeled_images()
    client = DICOMwebClient(url=server.dicomweb_url)
    segs = client.search_for_series(search_filters={"Modality": "SEG"})
    assert len(segs) == 1
    seg_uid = segs[0]["0020000E"]["Value"][0]
    seg = client.retrieve_series(cases[shuffled]["dicom"]["study"], seg_uid)[0]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == shuffled
    assert seg.ContentCreatorName.family_name == "dr_a"
    assert {s.SegmentAlgorithmType for s in seg.SegmentSequence} == {"MANUAL"}  # no proposal was served

    # a fresh server (empty cache) reads the SEG back onto its own converted image, voxel for voxel
    fresh = datastore(server, tmp_path / "cache_b")
    assert shuffled in fresh.get_labeled_images()
    back = nib.load(fresh.get_label_uri(seg_uid, "final", image_id=shuffled))
    assert np.array_equal(np.asarray(back.dataobj), label)
    assert any(item["image"].endswith(".nii.gz") and item["label"] for item in fresh.datalist())


def test_algorithm_type_follows_the_served_proposal(pacs, tmp_path):
    server, root, manifest = pacs
    case = manifest["cases"][0]
    uid = case["dicom"]["series"]
    proposal_file = str(tmp_path / "proposal.nii.gz")
    store = datastore(server, tmp_path / "cache", proposal_of=lambda image_id: {"file": proposal_file, "version": 4})
    label, affine = truth_on(store.get_image_uri(uid), root, case["case_id"])
    nib.save(nib.Nifti1Image(label, affine), proposal_file)
    path = str(tmp_path / "label.nii.gz")
    kinds = []
    for final in (label, np.where(label == 2, 0, label).astype(label.dtype)):  # as proposed, then edited
        nib.save(nib.Nifti1Image(final, affine), path)
        store.save_label(uid, path, "final", {"annotator": "dr_b"})
        kinds.append(store.get_label_info(uid, "final")["segment_algorithm_type"])
    assert kinds == ["AUTOMATIC", "SEMIAUTOMATIC"]
    client = DICOMwebClient(url=server.dicomweb_url)
    seg_uid = store.get_label_info(uid, "final")["SeriesInstanceUID"]
    seg = client.retrieve_series(case["dicom"]["study"], seg_uid)[0]
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (seg.SegmentSequence[0].SegmentAlgorithmName, algorithm.AlgorithmVersion) == ("SegLoop", "segmentation v4")


def test_bad_input_is_a_client_error_and_stores_nothing(pacs, tmp_path):
    server, root, manifest = pacs
    store = datastore(server, tmp_path / "cache")
    client = DICOMwebClient(url=server.dicomweb_url)
    before = len(client.search_for_series(search_filters={"Modality": "SEG"}))
    uid = manifest["cases"][2]["dicom"]["series"]
    image = nib.load(store.get_image_uri(uid))
    wrong = str(tmp_path / "wrong.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), image.affine), wrong)
    with pytest.raises(ClientError) as error:
        store.save_label(uid, wrong, "final", {})
    assert 400 <= error.value.status_code < 500
    unknown_value = str(tmp_path / "unknown.nii.gz")
    nib.save(nib.Nifti1Image(np.full(image.shape, 9, np.uint8), image.affine), unknown_value)
    with pytest.raises(ClientError):
        store.save_label(uid, unknown_value, "final", {})
    with pytest.raises(ClientError) as error:
        store.get_image_uri("1.2.3.4.5.999")
    assert error.value.status_code == 422
    with pytest.raises(ClientError) as error:
        store.get_image_uri("../../etc")
    assert error.value.status_code == 400
    assert len(client.search_for_series(search_filters={"Modality": "SEG"})) == before


def test_the_series_cache_is_bounded(pacs, tmp_path):
    server, _, manifest = pacs
    store = datastore(server, tmp_path / "cache", max_cached_series=2)
    for case in manifest["cases"]:
        store.get_image_uri(case["dicom"]["series"])
    root = store._datastore.image_path()
    cached = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    assert cached == sorted(c["dicom"]["series"] for c in manifest["cases"][1:])
    assert not os.path.exists(os.path.join(root, manifest["cases"][0]["dicom"]["series"] + ".nii.gz"))
    # what was evicted is fetched again on demand
    assert os.path.exists(store.get_image_uri(manifest["cases"][0]["dicom"]["series"]))
