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
