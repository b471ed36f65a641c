"""The default CPU model learns: a bounded training run reaches held-out organ Dice far above chance."""

import json

import numpy as np
import pytest

from segloop.data.sample import write_sample_data
from segloop.evaluation.training import evaluate, mean_per_label, train

pytestmark = pytest.mark.slow

EPOCHS = 16  # 8 cases a epoch: 128 iterations of the unetr_cpu preset, about 2 minutes on 2 CPU threads


def test_default_model_learns_an_organ_on_held_out_cases(tmp_path, capsys):
    root = str(tmp_path)
    write_sample_data(root, cases=10, seed=7, labelled=8, progress=None)
    run = train(f"{root}/studies", {"max_epochs": EPOCHS, "val_split": 0.0, "seed": 0})
    assert run["stats"]["current_iteration"] == EPOCHS * 8
    scores = evaluate(f"{root}/studies", f"{root}/ground_truth", ["case_008", "case_009"])
    mean = mean_per_label(scores)
    with capsys.disabled():
        print(f"\nheld-out Dice after {run['seconds']} s ({run['stats']['current_iteration']} iterations): "
              + json.dumps({k: round(v, 3) for k, v in mean.items()}))
    # Chance level: an organ fills at most ~4% of these volumes, so a blind guess scores well under
    # 0.1. Two minutes of CPU training reliably learn one organ well, but which one first varies
    # with the CPU's floating-point order (seeded runs here learnt the liver, 0.76-0.83; one CI
    # machine learnt the kidney, 0.65, first); the 10-minute benchmark learns liver and kidneys.
    organs = {k: mean[k] for k in ("liver", "spleen", "kidney")}
    assert max(organs.values()) > 0.5, organs
    assert all(np.isfinite(v) for v in scores["case_008"].values())


def test_unchanged_cases_are_not_decoded_again_across_runs(tmp_path):
    """Runs share a persistent cache of the deterministic pre-processing, keyed by label timestamp."""
    import os

    root = str(tmp_path)
    write_sample_data(root, cases=2, seed=9, labelled=2, progress=None)
    studies = f"{root}/studies"
    first = train(studies, {"max_epochs": 1, "val_split": 0.0})
    cache = os.path.join(studies, ".segloop", "model", "segmentation", "cache")
    entries = sorted(os.listdir(cache))
    assert len(entries) == 2  # one pre-processed entry per labelled case
    mtimes = {e: os.path.getmtime(os.path.join(cache, e)) for e in entries}
    second = train(studies, {"max_epochs": 1, "val_split": 0.0})
    assert sorted(os.listdir(cache)) == entries  # reused, not rebuilt
    assert {e: os.path.getmtime(os.path.join(cache, e)) for e in entries} == mtimes
    assert first["stats"]["version"]["version"] == 1 and second["stats"]["version"]["parent"] == 1
