"""Several reads per case, review and STAPLE consensus on a real SegLoopDatastore (fast: small
volumes, no server; the server's endpoints are tested in the campaign e2e test)."""

import nibabel as nib
import numpy as np
import pytest

from segloop.campaign.reads import CampaignRules, Reads, read_tag
from segloop.data.sample import save_nifti
from segloop.errors import ClientError
from segloop.labels import DEFAULT_LABELS
from segloop.metrics.agreement import pairwise_agreement, staple_consensus
from segloop.server.datastore import SegLoopDatastore

SHAPE = (24, 20, 12)
AFFINE = np.diag([1.5, 1.5, 3.0, 1.0])
LIVER, SPLEEN, TUMOR = DEFAULT_LABELS["liver"], DEFAULT_LABELS["spleen"], DEFAULT_LABELS["tumor"]


def organ_map(shift=0, tumour=False):
    lab = np.zeros(SHAPE, np.uint8)
    lab[4 + shift:16 + shift, 4:14, 2:9] = LIVER
    lab[18:22, 14:19, 3:8] = SPLEEN
    if tumour:
        lab[8:11, 8:11, 4:6] = TUMOR
    return lab


@pytest.fixture
def campaign(tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    for case in ("c1", "c2"):
        save_nifti(np.zeros(SHAPE, np.int16), AFFINE, str(studies / f"{case}.nii.gz"))
    store = SegLoopDatastore(str(studies), labels=DEFAULT_LABELS)

    def submit_as(reads, case, annotator, lab, **kw):
        path = str(tmp_path / f"{annotator}_{case}.nii.gz")
        save_nifti(lab, AFFINE, path)
        return reads.submit(case, annotator, path, **kw)

    def reads_with(**rules):
        return Reads(lambda: store, DEFAULT_LABELS, CampaignRules(**rules))

    return store, reads_with, submit_as


def final_of(store, case):
    return np.asarray(nib.load(store.get_label_uri(case, "final")).dataobj)


def refused(status, fn, *args, **kw):
    with pytest.raises(ClientError) as e:
        fn(*args, **kw)
    assert e.value.status_code == status, e.value.message
    return e.value.message


def test_read_tags_are_plain_and_distinct():
    assert read_tag("dr_a") == "read-dr_a"
    assert read_tag("dr a") != read_tag("dr_a") and read_tag("dr a").startswith("read-dr_a-")
    assert read_tag("../etc") != read_tag("___etc") and "/" not in read_tag("../etc")
    assert refused(400, read_tag, "")


def test_one_read_without_review_becomes_the_final_label(campaign):
    store, reads_with, submit = campaign
    reads = reads_with()
    out = submit(reads, "c1", "dr_a", organ_map(), tool="prompts", model_version=3)
    assert out["case"]["state"] == "final" and out["read"]["state"] == "submitted"
    assert np.array_equal(final_of(store, "c1"), organ_map())
    info = store.get_label_info("c1", "final")
    assert info["reads"] == ["dr_a"] and info["tool"] == "prompts" and info["model_version"] == 3
    assert store.get_labeled_images() == ["c1"]  # what the trainers read
    refused(400, submit, reads, "c2", "dr_a", organ_map(), tool="magic")


def test_two_reads_make_a_staple_consensus_and_a_case_never_goes_twice_to_one_annotator(campaign):
    store, reads_with, submit = campaign
    reads = reads_with(reads_per_case=2)
    assert submit(reads, "c1", "dr_a", organ_map(shift=0))["case"]["state"] == "open"
    assert "final" not in store.get_labels_by_image_id("c1")
    assert not reads.open_for("c1", "dr_a")  # has a read of it
    assert reads.open_for("c1", "dr_b")
    assert not reads.open_for("c1", "dr_b", booked_by_others=1)  # the second read is already booked by someone
    out = submit(reads, "c1", "dr_b", organ_map(shift=1))
    assert out["case"]["state"] == "final" and out["case"]["annotators"] == ["dr_a", "dr_b"]
    agreement = out["case"]["agreement"]
    assert 0.85 < agreement["mean_dice"]["liver"] < 1.0 and agreement["mean_dice"]["spleen"] == 1.0
    assert agreement["mean_hd95_mm"]["liver"] == pytest.approx(1.5)  # one voxel along the 1.5 mm axis
    final = final_of(store, "c1")
    assert np.array_equal(final, staple_consensus([organ_map(0), organ_map(1)]))
    info = store.get_label_info("c1", "final")
    assert info["consensus"] == "STAPLE" and info["reads"] == ["dr_a", "dr_b"]
    assert not reads.open_for("c1", "dr_c")


def test_staple_follows_the_majority_and_agreement_uses_monai_metrics():
    a, b, c = organ_map(0), organ_map(0), organ_map(3, tumour=True)
    consensus = staple_consensus([a, b, c])
    assert (consensus == a).mean() > 0.98
    result = pairwise_agreement({"a": a, "b": b, "c": c}, DEFAULT_LABELS, (1.5, 1.5, 3.0))
    assert result["pairs"][0]["dice"]["liver"] == 1.0 and result["pairs"][0]["hd95_mm"]["liver"] == 0.0
    assert result["mean_dice"]["tumor"] == pytest.approx(1 / 3, abs=1e-3)  # a and b agree there is none
    assert result["min_mean_dice"] == result["mean_dice"]["tumor"]
    with pytest.raises(ValueError):
        staple_consensus([a])


def test_disagreeing_reads_wait_for_adjudication_and_a_rejection_reopens_the_case(campaign):
    store, reads_with, submit = campaign
    reads = reads_with(reads_per_case=2, agreement_threshold=0.8)
    submit(reads, "c1", "dr_a", organ_map())
    out = submit(reads, "c1", "dr_b", organ_map(tumour=True))
    assert out["case"]["state"] == "adjudication" and out["case"]["agreement"]["flagged"]
    assert "final" not in store.get_labels_by_image_id("c1")
    assert store.get_image_info("c1")["segloop_agreement"]["min_mean_dice"] < 0.8
    assert not reads.open_for("c1", "dr_c")
    out = reads.review("c1", "dr_b", "rev", approve=False, comment="no tumour there")
    assert out["case"]["state"] == "open" and out["case"]["rejected"] == ["dr_b"]
    assert reads.open_for("c1", "dr_b") and reads.open_for("c1", "dr_c")
    assert reads.returned_to("dr_b")[0]["comment"] == "no tumour there"
    out = submit(reads, "c1", "dr_c", organ_map())
    assert out["case"]["state"] == "final" and store.get_label_info("c1", "final")["reads"] == ["dr_a", "dr_c"]


def test_with_review_only_approved_reads_train(campaign):
    store, reads_with, submit = campaign
    reads = reads_with(review=True)
    assert submit(reads, "c1", "dr_a", organ_map())["case"]["state"] == "waiting_review"
    assert "final" not in store.get_labels_by_image_id("c1")
    assert [r["image"] for r in reads.review_queue()] == ["c1"]
    assert "own read" in refused(409, reads.review, "c1", "dr_a", "dr_a", approve=True)
    assert "comment" in refused(400, reads.review, "c1", "dr_a", "rev", approve=False)
    refused(404, reads.review, "c1", "dr_x", "rev", approve=True)
    refused(404, reads.review, "c2", "dr_a", "rev", approve=True)
    out = reads.review("c1", "dr_a", "rev", approve=True, comment="good")
    assert out["case"]["state"] == "final" and reads.review_queue() == []
    assert np.array_equal(final_of(store, "c1"), organ_map())
    # a read rejected after it trained takes its final label away
    out = reads.review("c1", "dr_a", "rev2", approve=False, comment="spleen missed")
    assert out["case"]["state"] == "open" and "final" not in store.get_labels_by_image_id("c1")
    assert store.get_labeled_images() == []


def test_a_final_label_saved_directly_is_an_adjudication_and_stays(campaign):
    store, reads_with, submit = campaign
    reads = reads_with(reads_per_case=2, agreement_threshold=0.99)
    submit(reads, "c1", "dr_a", organ_map())
    submit(reads, "c1", "dr_b", organ_map(shift=2))
    assert reads.case_state("c1")["state"] == "adjudication"
    path = str(store._datastore_path) + "/../adjudicated.nii.gz"
    save_nifti(organ_map(shift=1), AFFINE, path)
    reads.review("c1", "dr_b", "rev", approve=False, comment="too wide")
    store.save_label("c1", path, "final", {"user": "rev", "adjudication": True})
    assert reads.settle("c1")["state"] == "final"
    assert not reads.open_for("c1", "dr_b")  # adjudicated: the rejected read does not come back
    assert np.array_equal(final_of(store, "c1"), organ_map(shift=1))


def test_the_campaign_report_counts_reads_reviews_agreement_and_versions(campaign, tmp_path):
    from types import SimpleNamespace

    from segloop.campaign.report import campaign_report
    from segloop.reporting.page import write_report

    store, reads_with, submit = campaign
    reads = reads_with(reads_per_case=2, review=True)
    submit(reads, "c1", "dr_a", organ_map(), tool="prompts")
    submit(reads, "c1", "dr_b", organ_map(shift=1))
    reads.review("c1", "dr_a", "rev", approve=True)
    reads.review("c1", "dr_b", "rev", approve=True)
    submit(reads, "c2", "dr_a", organ_map())
    submit(reads, "c2", "dr_b", organ_map(tumour=True))
    reads.review("c2", "dr_a", "rev", approve=False, comment="redo")
    submit(reads, "c2", "dr_a", organ_map())  # resubmitted: the rejection stays in the read's history
    reads.review("c2", "dr_a", "rev", approve=True)
    reads.review("c2", "dr_b", "rev", approve=True)  # disagree on the tumour: flagged
    history = [
        {"version": 1, "status": "promoted", "labels_seen": {"c1": 1}, "validation_cases": ["v"], "val_dice": {"liver": 0.5, "mean": 0.5},
         "calibration": {"temperature": 1.3, "before": {"ece": 0.05, "ece_foreground": 0.2}, "after": {"ece": 0.02, "ece_foreground": 0.1}}},
        {"version": 2, "status": "kept", "labels_seen": {"c1": 1, "c2": 1}, "validation_cases": ["v"], "val_dice": {"liver": 0.4, "mean": 0.4}},
        {"version": 3, "status": "failed", "labels_seen": {}},
    ]
    loop = SimpleNamespace(registry=SimpleNamespace(history=lambda: history, serving=lambda: 1),
                           effort=SimpleNamespace(summary=lambda: {"1": {"submissions": 2, "median_dice_proposal_vs_final": 0.8,
                                                                         "median_changed_voxels_fraction": 0.01}}))
    report = campaign_report(reads, {"segmentation": loop})
    dr_a = report["throughput"]["per_annotator"]["dr_a"]
    assert dr_a["reads"] == 2 and dr_a["submissions"] == 3 and dr_a["tool_prompts"] == 1
    assert dr_a["approved"] == 2 and dr_a["rejected"] == 1 and "waiting" not in dr_a
    assert sum(sum(day.values()) for day in report["throughput"]["per_day"].values()) == 4
    assert report["review"]["per_reviewer"]["rev"] == {"approved": 4, "rejected": 1}
    assert report["review"]["decisions"] == {"approved": 4, "rejected": 1}
    assert report["cases"]["by_state"] == {"final": 1, "adjudication": 1} and report["cases"]["final"] == 1
    assert report["agreement"]["flagged"] == ["c2"] and report["agreement"]["cases"]["c1"]["mean_dice"]["spleen"] == 1.0
    curve = report["models"]["segmentation"]["learning_curve"]
    assert [p["version"] for p in curve] == [1, 2] and curve[1]["labels_seen"] == 2  # the failed run is no point
    assert report["models"]["segmentation"]["calibration"][0]["ece_foreground_after"] == 0.1

    page = write_report(report, str(tmp_path / "report"))
    text = open(page).read()
    for picture in ("throughput.png", "review.png", "agreement.png", "learning_curve.png", "effort.png", "calibration.png"):
        assert f"src='{picture}'" in text and (tmp_path / "report" / picture).stat().st_size > 5000
    assert "waiting for adjudication: c2" in text and "dr_b" in text


def test_a_final_label_from_before_the_reads_stays_until_the_case_has_its_reads(campaign, tmp_path):
    store, reads_with, submit = campaign
    path = str(tmp_path / "imported.nii.gz")
    save_nifti(organ_map(shift=2), AFFINE, path)
    store.save_label("c1", path, "final", {"imported_from": "nnunet:x"})
    two = reads_with(reads_per_case=2)
    assert submit(two, "c1", "dr_a", organ_map())["case"]["state"] == "final"  # one read of two: the old label stays
    assert np.array_equal(final_of(store, "c1"), organ_map(shift=2))
    one = reads_with()
    submit(one, "c1", "dr_a", organ_map(shift=1))  # a case with its read: the read replaces it
    assert np.array_equal(final_of(store, "c1"), organ_map(shift=1))
    submit(one, "c1", "dr_a", organ_map())  # and each resubmission after it
    assert np.array_equal(final_of(store, "c1"), organ_map())
