"""The campaign on a PACS, end to end: Orthanc (started here on a free loopback port) holds the
sample series; the real MONAI Label server reads them through SegLoop's DICOMweb datastore; a
submitted label lands in Orthanc as a DICOM SEG with SegLoop's provenance; the automatic training
run that follows trains on it and serves a version; inference and active learning answer for
series ids; MONAI Label's bundled OHIF, in Debian's headless chromium, shows the CT and the
automatic segmentation over it. `segloop pacs` stops Orthanc and its command when terminated."""

import json
import os
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
import requests
from dicomweb_client import DICOMwebClient

from segloop.data.sample import write_sample_data
from segloop.dicom.seg import reorient_to
from segloop.pacs.orthanc import OrthancServer, free_port
from segloop_bench.server import NO_SCORING, running_server, wait_for

pytestmark = pytest.mark.slow

# Iteration budgets, not seconds: on a slow CI machine 15 s gave the first version 8 iterations and
# a model that marked 1 voxel; the time caps only stop a run that hangs.
CONF = {"models": "segmentation,prompt", "first_run_max_iterations": "{\"segmentation\":100,\"prompt\":20}", "retrain_max_iterations": "6",
        "first_run_max_seconds": "240", "retrain_max_seconds": "120",
        "roi_size": "[32,32,16]", "target_spacing": "[8,8,8]", "mc_samples": "0", "tta_samples": "0"}


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """(Orthanc, the SegLoop server on it, sample root, manifest, log path): one for the module."""
    root = str(tmp_path_factory.mktemp("pacs_e2e"))
    manifest = write_sample_data(root, cases=3, seed=7, progress=None, shape=(48, 40, 16), spacing=(7.0, 7.0, 8.0), dicom=True)
    log = os.path.join(root, "server.log")
    with OrthancServer(os.path.join(root, "orthanc")) as orthanc:
        orthanc.upload(os.path.join(root, "dicom"))
        conf = dict(CONF, model_dir=os.path.join(root, "model"))
        with running_server(orthanc.dicomweb_url, conf=conf, log_path=log, env=NO_SCORING) as server:
            yield orthanc, server, root, manifest, log


def serving(server, model="segmentation"):
    state = requests.get(f"{server.url}/segloop/models/{model}", timeout=30).json()
    return state["serving_version"] and not state["training_run"]


def test_label_becomes_a_seg_in_orthanc_and_trains_the_next_version(pacs, tmp_path):
    orthanc, server, root, manifest, log = pacs
    case = manifest["cases"][1]
    uid = case["dicom"]["series"]
    stats = requests.get(f"{server.url}/datastore/", params={"output": "stats"}, timeout=60).json()
    assert stats["total"] == 3 and stats["completed"] == 0
    picked = requests.post(f"{server.url}/activelearning/random", json={"client_id": "dr_a"}, timeout=120).json()
    assert picked["id"] in {c["dicom"]["series"] for c in manifest["cases"]}

    got = requests.get(f"{server.url}/datastore/image", params={"image": uid}, timeout=120)
    assert got.status_code == 200
    image_file = tmp_path / "image.nii.gz"
    image_file.write_bytes(got.content)
    image = nib.load(str(image_file))
    truth = nib.load(os.path.join(root, "ground_truth", f"{case['case_id']}.nii.gz"))
    label = reorient_to(np.asarray(truth.dataobj), truth.affine, image.affine, image.shape)
    label_file = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(label, image.affine), str(label_file))

    bad = requests.put(f"{server.url}/datastore/label", params={"image": uid, "tag": "final"},
                       files={"label": ("x.nii.gz", b"not a nifti")}, timeout=60)
    assert bad.status_code == 400
    saved = requests.put(
        f"{server.url}/datastore/label", params={"image": uid, "tag": "final"},
        data={"params": json.dumps({"annotator": "dr_a"})}, files={"label": open(label_file, "rb")}, timeout=120,
    )
    assert saved.status_code == 200, saved.text

    client = DICOMwebClient(url=orthanc.dicomweb_url)
    segs = client.search_for_series(search_filters={"Modality": "SEG"})
    assert len(segs) == 1
    seg = client.retrieve_series(case["dicom"]["study"], segs[0]["0020000E"]["Value"][0])[0]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
    assert seg.ContentCreatorName.family_name == "dr_a" and seg.SegmentSequence[0].SegmentAlgorithmType == "MANUAL"

    wait_for(lambda: serving(server), 300, 1.0, "version 1 from the PACS label")
    with open(log) as f:
        assert "Training on 1 case(s) (1 new)" in f.read()
    missing = requests.post(f"{server.url}/infer/segmentation", params={"image": "1.2.3.999", "output": "image"}, timeout=60)
    assert 400 <= missing.status_code < 500

    # The proposal for another series, with its uncertainty map, submitted unchanged: an
    # AUTOMATIC SEG naming the version that proposed it, and edit effort recorded.
    other = manifest["cases"][0]["dicom"]["series"]
    result = requests.post(f"{server.url}/infer/segmentation", params={"image": other, "output": "json"},
                           data={"params": json.dumps({"uncertainty": True})}, timeout=300)
    assert result.status_code == 200, result.text
    assert requests.get(f"{server.url}{result.json()['uncertainty']['url']}", timeout=60).status_code == 200
    proposal = requests.post(f"{server.url}/infer/segmentation", params={"image": other, "output": "image"}, timeout=300)
    assert proposal.status_code == 200
    proposal_file = tmp_path / "proposal.nii.gz"
    proposal_file.write_bytes(proposal.content)
    saved = requests.put(
        f"{server.url}/datastore/label", params={"image": other, "tag": "final"},
        data={"params": json.dumps({"annotator": "dr_b"})}, files={"label": open(proposal_file, "rb")}, timeout=120,
    )
    assert saved.status_code == 200, saved.text
    assert saved.json()["edit_effort"]["segmentation"]["changed_voxels_fraction"] == 0.0
    segs = client.search_for_series(search_filters={"Modality": "SEG"})
    newest = [s for s in segs if s["0020000E"]["Value"][0] != seg.SeriesInstanceUID]
    auto = client.retrieve_series(manifest["cases"][0]["dicom"]["study"], newest[0]["0020000E"]["Value"][0])[0]
    assert auto.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    assert auto.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion.startswith("segmentation v")

    # Bookings: the one unlabelled series goes to one annotator only (dr_a may hold it already:
    # the first random pick above booked it for dr_a when it drew that series).
    left = manifest["cases"][2]["dicom"]["series"]
    first = requests.post(f"{server.url}/activelearning/random", json={"client_id": "dr_c"}, timeout=120).json()
    second = requests.post(f"{server.url}/activelearning/random", json={"client_id": "dr_d"}, timeout=120).json()
    assert second == {}
    assert first == {} if picked["id"] == left else first["id"] == left


def test_ohif_in_a_browser_shows_the_ct_and_the_automatic_segmentation(pacs, tmp_path):
    from segloop_bench.browser import ohif_auto_segmentation

    orthanc, server, root, manifest, log = pacs
    wait_for(lambda: serving(server), 300, 1.0, "a serving version")
    artefacts = os.environ.get("SEGLOOP_TEST_ARTEFACTS") or str(tmp_path)
    study = manifest["cases"][2]["dicom"]["study"]
    # what the model marks on this series, through HTTP: the overlay must show it
    predicted = requests.post(f"{server.url}/infer/segmentation",
                              params={"image": manifest["cases"][2]["dicom"]["series"], "output": "image"}, timeout=300)
    path = tmp_path / "predicted.nii.gz"
    path.write_bytes(predicted.content)
    marked = int(np.count_nonzero(np.asarray(nib.load(str(path)).dataobj)))
    assert marked > 50, f"the served model marks only {marked} voxels: nothing for OHIF to show"
    seen = ohif_auto_segmentation(server.url, study, artefacts)
    print("OHIF:", seen, "marked voxels", marked)
    assert not seen["errors"], seen
    assert seen["grey_share_before"] > 0.01, seen  # the viewports render the CT
    assert seen["infer_status"] == 200, seen
    assert seen["newly_coloured_pixels"] > 100, seen  # a segmentation overlay appeared
    assert os.path.getsize(seen["screenshot"]) > 20_000


def test_the_slicer_modules_client_corrects_and_submits_a_pacs_case(pacs, tmp_path):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "SlicerModule", "SegLoop"))
    from SegLoopLib import SegLoopClient

    orthanc, server, root, manifest, log = pacs
    wait_for(lambda: serving(server), 300, 1.0, "a serving version")
    client = SegLoopClient(server.url, timeout=300)
    assert client.labels_of(client.info()) == {"liver": 1, "spleen": 2, "kidney": 3, "tumor": 4}
    case = manifest["cases"][2]
    uid = case["dicom"]["series"]
    image = client.download_image(uid, str(tmp_path))
    proposal, result = client.auto_segment("segmentation", uid, str(tmp_path / "proposal.nii.gz"))
    proposed = nib.load(proposal)
    assert proposed.shape == nib.load(image).shape
    corrected = np.asarray(proposed.dataobj).copy()
    corrected[corrected.shape[0] // 2 - 2: corrected.shape[0] // 2 + 2] = 1  # the annotator paints liver
    path = str(tmp_path / "corrected.nii.gz")
    nib.save(nib.Nifti1Image(corrected.astype(np.uint8), proposed.affine), path)
    answer = client.submit(uid, path, "dr_c", 42.0)
    assert answer["edit_effort"]["segmentation"]["changed_voxels_fraction"] > 0
    info = client.label_info(uid)
    assert info["segment_algorithm_type"] == "SEMIAUTOMATIC" and info["annotator"] == "dr_c"
    seg = DICOMwebClient(url=orthanc.dicomweb_url).retrieve_series(case["dicom"]["study"], info["SeriesInstanceUID"])[0]
    assert seg.ContentCreatorName.family_name == "dr_c"
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    assert client.datastore_status()["completed"] == 3

    # The prompt model on a series id: a click on the liver (voxel indices of the served image).
    wait_for(lambda: serving(server, "prompt"), 300, 1.0, "the prompt model's first version")
    truth = nib.load(os.path.join(root, "ground_truth", f"{case['case_id']}.nii.gz"))
    served = nib.load(image)
    liver = reorient_to(np.asarray(truth.dataobj), truth.affine, served.affine, served.shape) == 1
    inside = np.argwhere(liver)
    click = inside[np.argmin(np.linalg.norm(inside - inside.mean(axis=0), axis=1))]
    answer_file, answer = client.prompt_segment("prompt", uid, str(tmp_path / "click.nii.gz"), foreground=[click], text="liver")
    clicked = nib.load(answer_file)
    assert clicked.shape == served.shape and np.allclose(clicked.affine, served.affine, atol=1e-4)
    assert set(np.unique(np.asarray(clicked.dataobj))) <= {0, 1, 2, 3, 4}


def test_segloop_pacs_stops_orthanc_and_its_command_on_sigterm(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "segloop.cli", "pacs", "--storage", str(tmp_path / "orthanc"), "--port", str(port), "--",
         sys.executable, "-c", "import time; time.sleep(600)"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    wait_for(lambda: _answers(port), 60, 0.3, "Orthanc to answer")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    time.sleep(0.5)
    assert not _answers(port)


def _answers(port):
    try:
        return requests.get(f"http://127.0.0.1:{port}/system", timeout=2).ok
    except requests.RequestException:
        return False
