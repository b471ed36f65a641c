"""The benchmark package's support code: result provenance and the baselines that learn nothing."""

import json
import os

import nibabel as nib
import numpy as np
import pytest

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


def _seed_report(seed, liver_curve, noc_per_case, p95):
    curve = lambda first: {"dice_after_clicks": [first + 0.05 * k for k in range(5)], "noc@90": 5.0,  # noqa: E731
                           "noc@90_per_case": [None, None]}
    labels = {}
    for organ in ("liver", "spleen", "kidney"):
        clicks_only = {"dice_after_clicks": liver_curve, "noc@90": 2.0, "noc@90_per_case": noc_per_case} if organ == "liver" else curve(0.5)
        labels[organ] = {"clicks_only": clicks_only, "label_and_clicks": curve(0.95), "baseline_ball_dice": 0.6,
                         "text_dice": 0.9, "label_only_dice": 0.95}
    return {"labels": labels, "novel_structures": {"aorta": {"clicks_only": curve(0.2), "baseline_ball_oracle_dice": 0.2}},
            "training": {"request": {"seed": seed}}, "latency_http": {
                "latency_s_p95": p95, "latency_s_median": 0.2, "server_task_s_p95": p95 - 0.01,
                "clicks_only": {"latency_s_p95": p95 + 0.5, "latency_s_median": 0.3, "server_task_s_p95": p95 + 0.49}}}


def test_the_seed_summary_gives_mean_and_sd_and_never_calls_an_unreached_noc_met():
    from segloop_bench.prompt_seeds import summarize

    summary = summarize([_seed_report(0, [0.9, 0.95, 0.96, 0.97, 0.97], [1, 2], 0.4),
                         _seed_report(1, [0.8, 0.92, 0.95, 0.96, 0.97], [2, 3], 0.6)])
    measures = summary["measures"]
    assert summary["seeds"] == [0, 1]
    assert measures["clicks_only@1"]["liver"]["mean"] == 0.85 and measures["clicks_only@1"]["liver"]["sd"] == 0.0707
    assert not measures["clicks_only@1"]["target"]["met"]  # spleen and kidney at 0.5
    assert measures["clicks_only_noc@90"]["liver"]["mean"] == 2.0
    assert measures["clicks_only_noc@90"]["spleen"]["mean"] is None and not measures["clicks_only_noc@90"]["target"]["met"]
    assert measures["latency_http_p95_s"]["label_and_clicks"]["mean"] == 0.5
    assert measures["latency_http_p95_s"]["clicks_only"]["mean"] == 1.0 and measures["latency_http_p95_s"]["target"]["met"]
    report = _seed_report(2, [0.8] * 5, [1, 1], 0.7)  # clicks alone over 1 s at p95: the target is not met
    assert not summarize([report])["measures"]["latency_http_p95_s"]["target"]["met"]
    # The gain counts only structures below 0.9 after one click: the liver (0.9 / 0.8 first) only in seed 1's arm.
    assert measures["gain_1_to_5"]["clicks_only"]["mean"] > 0.05


def test_bench_auto_arms_and_picture(tmp_path):
    from segloop_bench.bench_auto import parse_arm, plot

    assert parse_arm("unetr_cpu") == {"name": "unetr_cpu", "model": "segmentation", "infer": "segmentation",
                                      "conf": {"network": "unetr_cpu", "plan": "off"}, "request": {}}
    prompt = parse_arm("prompt")  # the prompt model's label-only answers as the proposal
    assert (prompt["model"], prompt["infer"], prompt["conf"]) == ("prompt", "prompt_seg", {"prompt_proposal": "true"})
    assert parse_arm("dynunet_cpu+plan")["conf"] == {"network": "dynunet_cpu", "plan": "auto"}
    tumour = parse_arm("unetr_cpu+plan+tumour")
    assert tumour["conf"]["plan"] == "auto" and set(tumour["request"]) == {"crop_ratios", "class_weights"}
    assert parse_arm("unetr_cpu+shift")["request"] == {"structure_shift_hu": 40.0}
    assert parse_arm("unetr_cpu+tumour+noshift")["request"] == {"crop_ratios": "[1,1,1,1,4]", "class_weights": "[1,1,1,1,3]",
                                                                "structure_shift_hu": 0.0}
    for bad in ("unetr_cpu+fast", "unetr_cpu+plan+plan", "unetr_cpu+shift+noshift"):
        with pytest.raises(ValueError):
            parse_arm(bad)
    dice = {"liver": 0.9, "spleen": 0.8, "kidney": 0.85, "tumor": 0.1}
    report = {
        "budget_min": 1, "train_cases": ["a"], "held_out_cases": ["b"],
        "arms": {"unetr_cpu": {"held_out_dice_mean": dice}},
        "upstream": {"held_out_dice_mean": {k: 0.0 for k in dice}},
        "baselines": {"mean_label": {k: 0.5 for k in dice}, "hu_threshold": {k: 0.3 for k in dice}},
    }
    path = tmp_path / "auto.png"
    plot(report, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_auto_reuses_only_an_arm_trained_with_the_options_asked_for(tmp_path):
    from segloop.io import atomic_write_json
    from segloop_bench.bench_auto import ARM_RECORD, arm_folder, parse_arm, reused_arm
    from segloop_bench.errors import HarnessError

    arm, work = parse_arm("prompt"), str(tmp_path)
    with pytest.raises(HarnessError, match="not found"):
        reused_arm(arm, work, 1800)
    record = {"folder": arm_folder(arm, work), "model": "prompt", "infer": "prompt_seg", "conf": arm["conf"], "request": {},
              "training": {"wall_s": 1801.0, "iterations": 700, "budget_min": 30.0, "provenance": {"commit": "abc"}}}
    os.makedirs(record["folder"])
    atomic_write_json(os.path.join(record["folder"], ARM_RECORD), record)
    assert reused_arm(arm, work, 1800) == record
    with pytest.raises(HarnessError, match="other options or minutes"):
        reused_arm(arm, work, 600)  # trained for 30 minutes, asked for 10
    with pytest.raises(HarnessError, match="other options or minutes"):
        reused_arm(dict(arm, request={"crop_ratios": "[1,1,1,1,4]"}), work, 1800)
