"""A three-person campaign through the real server with authentication on: two annotators and a
reviewer, two reads per case, review required (the shared ``auth_server`` of conftest.py).

Reads come from tokens (never from a client's word), a case goes to two different annotators and
never twice to one, only approved reads make a final label, two approved reads make a STAPLE
consensus that the automatic model then trains on, a rejection goes back to its annotator with
the comment, disagreeing reads wait for a reviewer's adjudication, and the roles hold.
"""

import json
import os

import nibabel as nib
import numpy as np
import pytest
import requests
from scipy import ndimage

from realm import ADMIN, ANNOTATOR, REVIEWER
from segloop.labels import DEFAULT_LABELS
from segloop_bench.server import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def people(auth_server, realm):
    tokens = {"dr_a": realm.token([ANNOTATOR], username="dr_a"), "dr_b": realm.token([ANNOTATOR], username="dr_b"),
              "rev": realm.token([REVIEWER], username="rev")}

    def call(who, method, path, **kwargs):
        headers = {"Authorization": f"Bearer {tokens[who]}"}
        return requests.request(method, auth_server.url + path, headers=headers, timeout=120, **kwargs)

    return call


def truth(sample_root, case):
    return os.path.join(sample_root, "ground_truth", f"{case}.nii.gz")


def edited(sample_root, case, tmp_path, change):
    """The ground truth of ``case`` with ``change`` applied to its label array, as a file."""
    img = nib.load(truth(sample_root, case))
    label = np.asarray(img.dataobj).copy()
    change(label)
    path = str(tmp_path / f"{case}_{abs(hash(change.__name__))}.nii.gz")
    nib.save(nib.Nifti1Image(label.astype(np.uint8), img.affine), path)
    return path


def submit(call, who, case, path, **params):
    with open(path, "rb") as f:
        r = call(who, "PUT", "/datastore/label", params={"image": case},
                 data={"params": json.dumps(params)}, files={"label": (f"{case}.nii.gz", f)})
    assert r.status_code == 200, r.text
    return r.json()


def next_case(call, who):
    r = call(who, "POST", "/activelearning/first", json={"client_id": "someone_else"})
    assert r.status_code == 200, r.text
    return r.json()


def has_final(call, case):
    """Whether the case has a final label (MONAI Label answers label info with {} when it has none)."""
    return call("rev", "GET", "/segloop/campaign/reads", params={"image": case}).json()["case"]["state"] == "final"


def review(call, who, case, annotator, approve, comment=""):
    return call(who, "POST", "/segloop/review", json={"image": case, "annotator": annotator, "approve": approve, "comment": comment})


def test_two_annotators_a_reviewer_and_a_consensus_that_trains(people, auth_server, realm, sample_root, tmp_path):
    call = people
    # dr_a reads a case; it needs a second read by someone else.
    first = next_case(call, "dr_a")
    case = first["id"]
    assert first["client_id"] == "dr_a"
    answer = submit(call, "dr_a", case, truth(sample_root, case), annotator="mallory")
    assert answer["read"]["annotator"] == "dr_a" and answer["read"]["tool"] == "manual"
    assert answer["case"]["state"] == "open" and answer["case"]["needed"] == 2
    # dr_a is never handed it again; dr_b is.
    assert case not in {next_case(call, "dr_a")["id"] for _ in range(3)}
    handed = [next_case(call, "dr_b")["id"] for _ in range(6)]
    assert case in handed
    answer = submit(call, "dr_b", case, edited(sample_root, case, tmp_path, lambda lab: lab.__setitem__(
        ndimage.binary_erosion(lab == DEFAULT_LABELS["liver"]) ^ (lab == DEFAULT_LABELS["liver"]), 0)))
    assert answer["case"]["state"] == "waiting_review"  # two reads, none approved: nothing trains yet
    assert not has_final(call, case)

    # The reviewer's queue; annotators may not review, nor see the queue.
    assert call("dr_a", "GET", "/segloop/review").status_code == 403
    assert review(call, "dr_a", case, "dr_b", True).status_code == 403
    queue = call("rev", "GET", "/segloop/review").json()["queue"]
    assert {(r["image"], r["annotator"]) for r in queue} >= {(case, "dr_a"), (case, "dr_b")}
    assert review(call, "rev", case, "dr_a", False).status_code == 400  # a rejection needs a comment
    assert review(call, "rev", "no_such_case", "dr_a", True).status_code == 404
    assert review(call, "rev", case, "dr_x", True).status_code == 404

    # Approve both: the STAPLE consensus becomes the final label, with the agreement.
    assert review(call, "rev", case, "dr_a", True, "fine").json()["case"]["state"] == "waiting_review"
    settled = review(call, "rev", case, "dr_b", True).json()
    assert settled["case"]["state"] == "final"
    agreement = settled["case"]["agreement"]
    assert 0.7 < agreement["mean_dice"]["liver"] < 1.0 and agreement["mean_dice"]["spleen"] == 1.0
    assert agreement["mean_hd95_mm"]["liver"] > 0
    final = call("rev", "GET", "/datastore/label/info", params={"label": case, "tag": "final"}).json()
    assert final["consensus"] == "STAPLE" and final["reads"] == ["dr_a", "dr_b"]

    # ... and the automatic model trains on it.
    r = call("rev", "POST", "/train/segmentation", json={"max_iterations": 2, "max_epochs": 1, "val_split": 0.0})
    assert r.status_code == 403  # training is the admin's (the campaign lead)
    admin = {"Authorization": f"Bearer {realm.token([ADMIN], username='lead')}"}
    r = requests.post(f"{auth_server.url}/train/segmentation", headers=admin, json={"max_iterations": 2, "max_epochs": 1, "val_split": 0.0}, timeout=60)
    assert r.status_code == 200, r.text
    model = lambda: requests.get(f"{auth_server.url}/segloop/models/segmentation", headers=admin, timeout=30).json()  # noqa: E731
    wait_for(lambda: model()["serving_version"] and not model()["training_run"], 300, 1.0, "the run on the consensus")
    trained_on = model()["versions"][-1]["labels_used"]
    assert case in trained_on


def test_a_rejection_goes_back_to_its_annotator_and_disagreement_waits_for_adjudication(people, sample_root, tmp_path):
    call = people
    reads = lambda case: call("rev", "GET", "/segloop/campaign/reads", params={"image": case}).json()  # noqa: E731
    open_cases = [c for c in ("case_002", "case_003", "case_004", "case_005") if not reads(c)["reads"]]
    case, other = open_cases[:2]
    submit(call, "dr_a", case, truth(sample_root, case))
    submit(call, "dr_b", case, truth(sample_root, case))
    assert review(call, "rev", case, "dr_a", True).status_code == 200
    out = review(call, "rev", case, "dr_b", False, "spleen tip missing on the lowest slices").json()
    assert out["case"]["state"] == "open" and out["case"]["rejected"] == ["dr_b"]
    # dr_b gets the case back first, with the comment; the annotator's list says the same.
    back = next_case(call, "dr_b")
    assert back["id"] == case  # (MONAI Label's endpoint fills "strategy" with its own record)
    assert back["returned"]["comment"] == "spleen tip missing on the lowest slices" and back["returned"]["reviewer"] == "rev"
    listed = call("dr_b", "GET", "/segloop/returned").json()
    assert listed["annotator"] == "dr_b" and [r["image"] for r in listed["returned"]] == [case]
    submit(call, "dr_b", case, truth(sample_root, case))
    assert review(call, "rev", case, "dr_b", True).json()["case"]["state"] == "final"
    assert call("dr_b", "GET", "/segloop/returned").json()["returned"] == []

    # Two reads that disagree (one has no spleen): flagged, no final label, until a reviewer adjudicates.
    submit(call, "dr_a", other, truth(sample_root, other))
    submit(call, "dr_b", other, edited(sample_root, other, tmp_path, lambda lab: lab.__setitem__(lab == DEFAULT_LABELS["spleen"], 0)))
    review(call, "rev", other, "dr_a", True)
    out = review(call, "rev", other, "dr_b", True).json()
    assert out["case"]["state"] == "adjudication" and out["case"]["agreement"]["flagged"]
    assert out["case"]["agreement"]["mean_dice"]["spleen"] == 0.0
    assert reads(other)["case"]["state"] == "adjudication"
    assert not has_final(call, other)
    with open(truth(sample_root, other), "rb") as f:
        denied = call("dr_a", "PUT", "/datastore/label", params={"image": other},
                      data={"params": json.dumps({"adjudication": True})}, files={"label": (f"{other}.nii.gz", f)})
    assert denied.status_code == 403
    with open(truth(sample_root, other), "rb") as f:
        r = call("rev", "PUT", "/datastore/label", params={"image": other},
                 data={"params": json.dumps({"adjudication": True})}, files={"label": (f"{other}.nii.gz", f)})
    assert r.status_code == 200, r.text
    assert reads(other)["case"]["state"] == "final"
    # Reads are the server's own tags: a client cannot write one directly.
    with open(truth(sample_root, other), "rb") as f:
        r = call("dr_a", "PUT", "/datastore/label", params={"image": other, "tag": "read-dr_b"}, files={"label": (f"{other}.nii.gz", f)})
    assert r.status_code == 400


def test_the_campaign_report_page_renders_in_a_browser(people, auth_server, realm, tmp_path):
    """``segloop report`` against the campaign above (run after it), opened in headless chromium."""
    from segloop.cli import main as segloop
    from segloop_bench.browser import screenshot_page

    report = people("rev", "GET", "/segloop/campaign").json()
    assert report["throughput"]["per_annotator"]["dr_b"]["reads"] >= 3
    assert report["review"]["per_reviewer"]["rev"]["rejected"] >= 1
    assert report["agreement"]["flagged"] and report["cases"]["by_state"]["final"] >= 2
    assert [p["labels_seen"] for p in report["models"]["segmentation"]["learning_curve"]][0] >= 1
    out = str(tmp_path / "report")
    token = realm.token([ANNOTATOR], username="lead")
    assert segloop(["report", "--server", auth_server.url, "--out", out, "--token", token]) == 0
    seen = screenshot_page(os.path.join(out, "index.html"), str(tmp_path / "campaign_report.png"))
    print(seen)
    assert seen["title"] == "SegLoop campaign" and not seen["errors"]
    assert seen["images"] >= 3 and seen["images_loaded"] == seen["images"]  # throughput, review, agreement (no validation run here)
    assert os.path.getsize(seen["screenshot"]) > 50_000


def test_the_campaigns_consensus_labels_export_to_nnunet_and_start_a_new_campaign(people, auth_server, tmp_path):
    """The campaign above (run after it), exported while its server runs, and imported back."""
    from segloop.cli import main as segloop

    final = [c for c in (f"case_00{i}" for i in range(6)) if has_final(people, c)]
    assert len(final) >= 3
    assert segloop(["export", "--studies", auth_server.studies, "--format", "nnunet", "--out", str(tmp_path), "--dataset-id", "42"]) == 0
    folder = tmp_path / "Dataset042_SegLoop"
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["numTraining"] == len(final) and sorted(meta["segloop"]["cases"]) == sorted(final)
    assert any(c.get("consensus") == "STAPLE" and c.get("reads") == ["dr_a", "dr_b"] for c in meta["segloop"]["cases"].values())
    assert len(os.listdir(folder / "imagesTs")) == 6 - len(final)
    studies = str(tmp_path / "next_campaign")
    assert segloop(["import", "--from", str(folder), "--studies", studies]) == 0
    for case in final:
        exported = nib.load(os.path.join(auth_server.studies, "labels", "final", f"{case}.nii.gz"))
        imported = nib.load(os.path.join(studies, "labels", "final", f"{case}.nii.gz"))
        assert np.array_equal(np.asarray(exported.dataobj), np.asarray(imported.dataobj))
