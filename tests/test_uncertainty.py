"""Uncertainty measures, calibration, the scoring job and the uncertainty map of /infer."""

import os
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.inferers import SlidingWindowInferer
from monai.transforms import Compose

from segloop.activelearning import build_strategies
from segloop.data.phantom import generate_case
from segloop.data.sample import save_nifti
from segloop.server.datastore import SegLoopDatastore
from segloop.metrics.calibration import CalibrationAccumulator, expected_calibration_error, fit_temperature
from segloop_bench.training import build_task_config
from segloop.infers import SegmentationInfer
from segloop.infers.uncertainty import UncertaintyMaps
from segloop.labels import DEFAULT_LABELS
from segloop.scoring import SCORING_METHOD
from segloop.scoring.uncertainty import (
    entropy_map,
    has_dropout,
    mc_dropout_samples,
    summarize_samples,
    tta_samples,
)
from segloop.transforms import load_and_normalize


class IntensityRule(torch.nn.Module):
    """'liver' where the normalised intensity exceeds 0.5, background below: unsure only near that
    threshold (the other organs are ruled out everywhere)."""

    def forward(self, x):
        logits = torch.full((x.shape[0], 5, *x.shape[2:]), -20.0, dtype=x.dtype)
        logits[:, 0] = -20 * (x[:, 0] - 0.5)
        logits[:, 1] = 20 * (x[:, 0] - 0.5)
        return logits


def test_entropy_is_zero_when_certain_and_one_when_uniform():
    certain = torch.zeros(5, 2, 2, 2)
    certain[3] = 1
    assert torch.allclose(entropy_map(certain), torch.zeros(2, 2, 2), atol=1e-4)
    assert torch.allclose(entropy_map(torch.full((5, 2, 2, 2), 0.2)), torch.ones(2, 2, 2), atol=1e-4)


def test_mutual_information_separates_disagreement_from_shared_doubt():
    shared_doubt = torch.full((4, 2, 3, 3, 3), 0.5)  # every sample unsure in the same way
    disagree = torch.zeros(4, 2, 3, 3, 3)
    disagree[0::2, 1], disagree[1::2, 0] = 1, 1  # samples confidently contradict each other
    doubt, conflict = summarize_samples(shared_doubt), summarize_samples(disagree)
    assert doubt["entropy"] == pytest.approx(1.0, abs=1e-3) and doubt["mutual_information"] == pytest.approx(0, abs=1e-4)
    assert conflict["entropy"] == pytest.approx(1.0, abs=1e-3) and conflict["mutual_information"] > 0.99
    assert conflict["variance"] > doubt["variance"]


def test_mc_dropout_samples_differ_and_leave_the_network_in_eval_mode():
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 1), torch.nn.Dropout(0.5), torch.nn.Conv3d(8, 3, 1))
    assert has_dropout(net) and not has_dropout(torch.nn.Sequential(torch.nn.Conv3d(1, 3, 1)))
    inferer = SlidingWindowInferer((8, 8, 8))
    samples = mc_dropout_samples(net, torch.rand(1, 8, 8, 8), inferer, "cpu", samples=3)
    assert samples.shape == (3, 3, 8, 8, 8)
    assert not torch.allclose(samples[0], samples[1])
    assert torch.allclose(samples.sum(dim=1), torch.ones(3, 8, 8, 8), atol=1e-5)
    assert not any(m.training for m in net.modules())


def test_tta_predictions_are_flipped_back_onto_the_image_grid(tmp_path):
    image, label, affine, _ = generate_case("tta", seed=5, index=1)
    path = str(tmp_path / "tta.nii.gz")
    save_nifti(np.where(label == 1, 200, -1000).astype(np.int16), affine, path)
    item = Compose(load_and_normalize((3.0, 3.0, 3.0)))({"image": path})
    net, inferer = IntensityRule(), SlidingWindowInferer((32, 32, 32))
    samples = tta_samples(net, item, inferer, "cpu", samples=4, seed=1)
    plain = torch.softmax(inferer(item["image"][None], net), dim=1)[0]
    assert samples.shape == (4, *plain.shape)
    for sample in samples:  # a per-voxel rule commutes with flips: every inverted sample is the plain map
        assert (sample.argmax(0) == plain.argmax(0)).float().mean() > 0.999


def test_expected_calibration_error_on_known_inputs():
    # 100 voxels at confidence 0.8 of which 80 correct: perfectly calibrated
    confidence = torch.full((100,), 0.8)
    correct = torch.arange(100) < 80
    assert expected_calibration_error(confidence, correct) == pytest.approx(0.0, abs=1e-6)
    # 50 voxels at 0.95 all wrong, 50 at 0.55 all right: (0.5 * 0.95) + (0.5 * 0.45)
    confidence = torch.cat([torch.full((50,), 0.95), torch.full((50,), 0.55)])
    correct = torch.cat([torch.zeros(50, dtype=torch.bool), torch.ones(50, dtype=torch.bool)])
    assert expected_calibration_error(confidence, correct) == pytest.approx(0.95 * 0.5 + 0.45 * 0.5, abs=1e-6)


def test_temperature_scaling_recovers_the_overconfidence_factor():
    generator = torch.Generator().manual_seed(0)
    true_logits = torch.randn(20000, 3, generator=generator) * 1.5
    labels = torch.multinomial(torch.softmax(true_logits, dim=1), 1, generator=generator)[:, 0]
    overconfident = 3.0 * true_logits
    assert fit_temperature(overconfident, labels) == pytest.approx(3.0, rel=0.1)

    accumulator = CalibrationAccumulator(max_voxels_per_case=5000)
    for chunk in range(4):  # four "cases" of [C, H, W, D] logits
        rows = slice(chunk * 5000, (chunk + 1) * 5000)
        accumulator.add(overconfident[rows].T.reshape(3, 50, 10, 10), labels[rows].reshape(50, 10, 10))
    result = accumulator.result()
    assert result["voxels"] == 20000 and result["temperature"] == pytest.approx(3.0, rel=0.1)
    assert result["after"]["ece"] < 0.5 * result["before"]["ece"]
    assert CalibrationAccumulator().result() is None


@pytest.mark.parametrize("index", [0, 1])  # RAS and LPS phantoms
def test_uncertainty_map_has_the_input_grid_and_lights_up_at_the_boundary(tmp_path, index):
    image, label, affine, spec = generate_case("unc", seed=21, index=index)
    liver = label == DEFAULT_LABELS["liver"]
    path = str(tmp_path / "unc.nii.gz")
    save_nifti(np.where(liver, 200, -1000).astype(np.int16), affine, path)
    checkpoint = tmp_path / "rule.pt"
    torch.save({"model": IntensityRule().state_dict()}, checkpoint)
    task = SegmentationInfer(
        path=[str(checkpoint)], network=IntensityRule(), labels=DEFAULT_LABELS, target_spacing=(3.0, 3.0, 3.0),
        roi_size=(64, 64, 64), device="cpu", uncertainty_maps=UncertaintyMaps(str(tmp_path / "maps")),
    )
    plain_file, plain = task({"image": path})
    assert "uncertainty" not in plain and "label_confidence" not in plain  # only on request
    result_file, result = task({"image": path, "uncertainty": True})
    assert np.array_equal(np.asarray(nib.load(result_file).dataobj), np.asarray(nib.load(plain_file).dataobj))
    summary = result["uncertainty"]
    stored = nib.load(task.uncertainty_maps.path(summary["token"]))
    assert stored.shape == image.shape and np.allclose(stored.affine, affine, atol=1e-4)
    uncertainty = np.asarray(stored.dataobj)
    assert 0 <= uncertainty.min() and uncertainty.max() <= 1
    # uncertain where liver meets background (the rule's threshold), certain deep inside and outside
    from scipy.ndimage import binary_dilation, binary_erosion

    boundary = binary_dilation(liver, iterations=2) & ~binary_erosion(liver, iterations=2)
    assert uncertainty[boundary].mean() > 5 * uncertainty[~boundary].mean(), spec["orientation"]
    assert result["label_confidence"]["liver"] > 0.9 and result["label_confidence"]["spleen"] is None
    assert summary["url"] == f"/segloop/uncertainty/{summary['token']}"
    assert not UncertaintyMaps.valid("../../etc/passwd") and UncertaintyMaps.valid(summary["token"])


TINY = {"models": "segmentation", "roi_size": "[32,32,32]", "target_spacing": "[6,6,6]", "mc_samples": "3", "tta_samples": "2"}


def test_scoring_job_scores_stale_images_only_and_survives_a_bad_one(sample_root, tmp_path):
    studies = str(tmp_path / "studies")
    shutil.copytree(os.path.join(sample_root, "studies"), studies)
    os.makedirs(os.path.join(studies, "labels", "final"))
    shutil.copy(os.path.join(sample_root, "ground_truth", "case_000.nii.gz"), os.path.join(studies, "labels", "final"))
    with open(os.path.join(studies, "case_bad.nii.gz"), "wb") as f:
        f.write(b"\x1f\x8b not really a gzip NIfTI")

    def publish(config, seed):
        torch.manual_seed(seed)
        config.network.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)
        config.registry.record({"status": "promoted"}, config.network.state_dict(), promote=True)

    config = build_task_config(studies, TINY)
    datastore = SegLoopDatastore(studies, labels=config.labels)
    job = config.scoring_method()[SCORING_METHOD]
    assert job({}, datastore)["status"] == "skipped" and job.pending(datastore) == 0  # nothing serves yet
    publish(config, 0)
    assert job.pending(datastore) == len(datastore.list_images())  # what the server asks before starting a job

    summary = job({}, datastore)
    records = config.scores.records()
    unlabelled = sorted(set(datastore.list_images()) - {"case_000"})
    assert summary["version"] == 1 and summary["scored"] == len(unlabelled) + 1 and summary["errors"] == 1
    assert "error" in records["case_bad"]
    for image in set(unlabelled) - {"case_bad"}:
        record = records[image]
        assert record["version"] == 1 and set(record["components"]) == {"embedding", "entropy", "mc", "tta"}
        assert 0 <= record["entropy"] <= 1 and record["mc"]["mutual_information"] >= 0 and len(record["embedding"]) > 8
    assert records["case_000"]["components"] == ["embedding"] and "entropy" not in records["case_000"]
    job_state = config.scores.state()["job"]
    assert job_state["done"] == job_state["total"] == summary["scored"] and job_state["finished"]

    # current scores are not recomputed; the failed image waits for a new version or label (it would fail again)
    assert job.pending(datastore) == 0
    assert job({}, datastore)["scored"] == 0
    # a failed image does not stop the next-case choice
    picked = build_strategies(config.scores)["hybrid"]({"strategy": "hybrid"}, datastore)
    assert picked["id"] in set(unlabelled) - {"case_bad"} and "fallback" not in picked

    # a new serving version makes every score stale
    publish(config, 1)
    config = build_task_config(studies, TINY)
    assert config.scoring_method()[SCORING_METHOD]({}, datastore)["scored"] == len(unlabelled) + 1
    assert {r["version"] for i, r in config.scores.records().items() if i != "case_bad"} == {2}


@pytest.mark.parametrize("index", [0, 1])  # RAS and LPS voxel order
def test_overlay_slices_are_radiological_whatever_the_voxel_order(index):
    from segloop_bench.uncertainty_view import axial_slice

    image, label, affine, spec = generate_case("view", seed=21, index=index)
    nifti = nib.Nifti1Image(image, affine)
    liver = (label == DEFAULT_LABELS["liver"]).astype(np.uint8)
    ras = nib.as_closest_canonical(nib.Nifti1Image(liver, affine))
    k = int(np.argmax(np.asarray(ras.dataobj).sum(axis=(0, 1))))
    shown = axial_slice(liver, nifti, k)
    columns = np.nonzero(shown.any(axis=0))[0]
    # the liver lies on the patient's right, which a radiological view shows on the viewer's left
    assert columns.mean() < shown.shape[1] / 2, spec["orientation"]


def test_uncertainty_view_writes_a_png(sample_root, tmp_path):
    from segloop_bench.uncertainty_view import render

    studies = str(tmp_path / "studies")
    shutil.copytree(os.path.join(sample_root, "studies"), studies)
    config = build_task_config(studies, TINY)
    config.registry.record({"status": "promoted"}, config.network.state_dict(), promote=True)
    out = str(tmp_path / "overlay.png")
    result = render(studies, "case_001", out, TINY)
    assert os.path.getsize(out) > 20_000 and result["model_version"] == 1
