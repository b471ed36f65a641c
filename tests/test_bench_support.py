"""The benchmark package's support code: result provenance and the baselines that learn nothing."""

import json

import nibabel as nib
import numpy as np

from segloop_bench.baselines import ball_at, box_fill_dice, equivalent_radius_mm, mean_label_dice
from segloop_bench.provenance import write_result


def test_a_result_carries_its_provenance_and_is_written_whole(tmp_path):
    path = tmp_path / "bench" / "result.json"
    write_result(str(path), {"dice": float("nan"), "steps": 3}, "a ball at the click", argv=["segloop-bench", "bench", "x"])
    result = json.loads(path.read_text())
    assert result["steps"] == 3 and result["dice"] is None  # NaN is not JSON
    p = result["provenance"]
    assert p["baseline"] == "a ball at the click" and p["command"] == "segloop-bench bench x"
    assert len(p["commit"]) == 40 and isinstance(p["dirty"], bool)
    assert p["machine"]["cpu"] and p["machine"]["torch_threads"] >= 1 and "cpu_native_bfloat16" in p["machine"]
    assert p["packages"]["monai"] and p["packages"]["torch"] and p["date"]
    assert [f.name for f in path.parent.iterdir()] == ["result.json"]  # no temporary file left


def test_the_ball_has_the_volume_of_its_radius_in_mm():
    ball = ball_at((60, 60, 30), (1.0, 1.0, 2.0), (30, 30, 15), 10.0)
    volume = ball.sum() * 2.0
    assert abs(volume - 4 / 3 * np.pi * 1000) / (4 / 3 * np.pi * 1000) < 0.05
    assert abs(equivalent_radius_mm(ball, (1.0, 1.0, 2.0)) - 10.0) < 0.2


def test_the_box_baseline_is_the_box_itself():
    target = np.zeros((10, 10, 10), bool)
    target[2:6, 2:6, 2:6] = True
    assert box_fill_dice(target, (2, 2, 2), (5, 5, 5)) == 1.0
    assert box_fill_dice(target, (2, 2, 2), (5, 5, 9)) < 1.0


def test_the_mean_label_is_the_training_labels_majority_in_a_shared_frame(tmp_path):
    def label(shift):
        data = np.zeros((40, 40, 20), np.uint8)
        data[5 + shift:20 + shift, 5:20, 5:15] = 1
        path = tmp_path / f"label_{shift}.nii.gz"
        nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 3.0, 1.0])), str(path))
        return str(path)

    train = [label(0), label(1), label(2)]
    scores = mean_label_dice(train, label(1), {"liver": 1})
    assert 0.85 < scores["liver"] <= 1.0  # the majority of three shifted boxes sits on the middle one
    assert mean_label_dice(train, label(15), {"liver": 1})["liver"] < 0.2


def test_segfm_protocol_scores_the_box_then_each_correction():
    """SegFM3D's arm: the box alone, then five corrections, each scored by Dice and NSD (MONAI's
    surface Dice); the area under each curve sums the six steps."""
    from segloop_bench.interactive import _segfm_summary, box_then_clicks, surface_dice

    target = np.zeros((24, 24, 16), bool)
    target[6:18, 6:18, 4:12] = True
    assert surface_dice(target, target, (1.0, 1.0, 2.0)) == 1.0
    shifted = np.roll(target, 6, axis=0)
    assert 0.0 < surface_dice(shifted, target, (1.0, 1.0, 2.0)) < 1.0

    answers = []

    def pipeline(image, prompt, previous=None):  # grows by a slab with every click it is given
        clicks = len(prompt.positive) + len(prompt.negative)
        answers.append((prompt.box is not None, clicks, previous is not None))
        mask = np.zeros(target.shape, bool)
        mask[6 : 12 + clicks, 6:18, 4:12] = True
        return mask, {}

    session = box_then_clicks(pipeline, None, target, (1.0, 1.0, 2.0))
    assert answers[0] == (True, 0, False) and [a[1] for a in answers[1:]] == [1, 2, 3, 4, 5] and all(a[2] for a in answers[1:])
    assert len(session["dice"]) == len(session["nsd"]) == 6 and session["dice"] == sorted(session["dice"])
    summary = _segfm_summary([session, session])
    assert summary["final_dsc"] == round(session["dice"][-1], 4)
    assert summary["dsc_auc"] == round(float(np.trapz(session["dice"])), 4) and summary["dsc_auc"] <= 5
