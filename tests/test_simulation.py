"""A short campaign simulation with the server's own datastore, scoring, strategies and trainer."""

import json
import os

import pytest

from segloop.campaign.registry import ModelRegistry
from segloop_bench.simulate import Simulation, write_report

pytestmark = pytest.mark.slow

TINY = {"roi_size": "[32,32,32]", "target_spacing": "[6,6,6]", "mc_samples": "2", "tta_samples": "2"}


def test_short_simulation_writes_curves_for_each_strategy(sample_root, tmp_path):
    sim = Simulation(
        os.path.join(sample_root, "studies"), os.path.join(sample_root, "ground_truth"), str(tmp_path / "work"),
        rounds=1, per_round=2, initial=1, test_cases=2, first_iterations=2, round_iterations=2,
        full_iterations=2, conf=TINY, progress=lambda line: None,
    )
    assert sim.test == ["case_004", "case_005"] and len(sim.pool) == 4
    report = sim.run(["random", "hybrid", "epistemic", "foreground_random"], seeds=[0])
    paths = write_report(report, str(tmp_path / "out"))
    assert os.path.getsize(paths["png"]) > 10_000
    saved = json.load(open(paths["json"]))
    assert set(saved["curves"]) == {"random", "hybrid", "epistemic", "foreground_random"}
    assert saved["goal"]["baseline"] == "foreground_random" and "met" in saved["goal"]
    # foreground_random read the class voxel counts the entropy scoring stored
    fg_scores = json.load(open(tmp_path / "work" / "seed0" / "foreground_random" / ".segloop" / "model" / "segmentation" / "scores.json"))
    assert all(len(r["class_voxels"]) == 5 for r in fg_scores["images"].values() if not r.get("label_ts"))
    for name, points in report["runs"].items():
        start, round_1 = points["0"]
        assert start["labels"] == 1 and round_1["labels"] == 3
        assert len(set(round_1["chosen"])) == 2 and not set(round_1["chosen"]) & set(start["chosen"])
        assert set(round_1["chosen"]) <= set(sim.pool)
        assert 0 <= round_1["dice"]["mean"] <= 1
        # the strategy's campaign ran the app's trainer: a start version and one incremental version
        versions = ModelRegistry(str(tmp_path / "work" / "seed0" / name / ".segloop" / "model"), "segmentation").history()
        assert [v["version"] for v in versions] == [1, 2] and versions[1]["request"]["incremental"] is True
    assert report["runs"]["random"]["0"][1]["scoring_s"] == 0.0  # random needs no scores
    scores = json.load(open(tmp_path / "work" / "seed0" / "hybrid" / ".segloop" / "model" / "segmentation" / "scores.json"))
    assert all("embedding" in r for r in scores["images"].values())
    curve = saved["curves"]["hybrid"]
    assert curve["labels"] == [1, 3] and len(curve["mean_dice"]) == 2
    assert saved["target"]["mean_dice"] == pytest.approx(0.95 * saved["full_data"]["mean_dice"], abs=1e-3)

    # A stopped simulation resumes from its checkpoint: finished campaigns are not run again.
    checkpoint = tmp_path / "partial.json"
    checkpoint.write_text(json.dumps({"runs": {"hybrid": report["runs"]["hybrid"]}, "finished": False}))
    lines = []
    sim.progress = lines.append
    resumed = sim.run(["hybrid", "random"], seeds=[0], checkpoint=str(checkpoint))
    assert "seed 0 hybrid: resumed from" in lines[0]
    assert resumed["runs"]["hybrid"] == json.loads(json.dumps(report["runs"]["hybrid"]))
    assert any("random round 1/1" in line for line in lines)
    assert set(json.load(open(checkpoint))["runs"]) == {"hybrid", "random"}


def test_a_simulation_stopped_between_rounds_resumes_from_its_last_round(sample_root, tmp_path):
    class Stop(Exception):
        pass

    def stop_after_round_1(line):
        if "hybrid round 1/2" in line:
            raise Stop(line)

    args = (os.path.join(sample_root, "studies"), os.path.join(sample_root, "ground_truth"), str(tmp_path / "work"))
    budget = dict(rounds=2, per_round=1, initial=1, test_cases=2, first_iterations=2, round_iterations=2, full_iterations=2, conf=TINY)
    checkpoint = str(tmp_path / "partial.json")
    with pytest.raises(Stop):
        Simulation(*args, progress=stop_after_round_1, **budget).run(["hybrid"], seeds=[0], checkpoint=checkpoint)
    stopped = json.load(open(checkpoint))
    assert [p["labels"] for p in stopped["runs"]["hybrid"]["0"]] == [1, 2]
    lines = []
    report = Simulation(*args, progress=lines.append, **budget).run(["hybrid"], seeds=[0], checkpoint=checkpoint)
    assert any("resuming after round 1" in line for line in lines)
    assert not any("initial labels" in line for line in lines)  # the seed's start was not trained again
    points = report["runs"]["hybrid"]["0"]
    assert [p["labels"] for p in points] == [1, 2, 3] and points[1] == stopped["runs"]["hybrid"]["0"][1]
    versions = ModelRegistry(str(tmp_path / "work" / "seed0" / "hybrid" / ".segloop" / "model"), "segmentation").history()
    assert len(versions) == 3


def test_simulation_refuses_a_pool_too_small_for_the_campaign(sample_root, tmp_path):
    with pytest.raises(ValueError, match="cannot hold"):
        Simulation(os.path.join(sample_root, "studies"), os.path.join(sample_root, "ground_truth"), str(tmp_path),
                   rounds=3, per_round=2, initial=1, test_cases=2)
