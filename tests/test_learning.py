"""The default CPU model learns: a bounded training run reaches held-out organ Dice far above chance."""

import json

import numpy as np
import pytest
from monai.utils import set_determinism

from segloop.data.sample import write_sample_data
from segloop.evaluation.training import evaluate, mean_per_label, train

pytestmark = pytest.mark.slow

EPOCHS = 24  # 8 cases a epoch: 192 iterations of the unetr_cpu preset, 285 s in float32, 168 s in bfloat16 (2 threads)


def test_default_model_learns_an_organ_on_held_out_cases(tmp_path, capsys):
    root = str(tmp_path)
    write_sample_data(root, cases=10, seed=7, labelled=8, progress=None)
    # The run's seed covers training, not the initial weights, which the config draws when it builds
    # the network: without this they depend on every test before this one, and the same 128
    # iterations learnt the liver (0.93) alone and nothing at all (0.0) after the rest of the suite.
    set_determinism(seed=0)
    run = train(f"{root}/studies", {"max_epochs": EPOCHS, "val_split": 0.0, "seed": 0})
    assert run["stats"]["current_iteration"] == EPOCHS * 8
    scores = evaluate(f"{root}/studies", f"{root}/ground_truth", ["case_008", "case_009"])
    mean = mean_per_label(scores)
    with capsys.disabled():
        print(f"\nheld-out Dice after {run['seconds']} s ({run['stats']['current_iteration']} iterations): "
              + json.dumps({k: round(v, 3) for k, v in mean.items()}))
    # Chance level: an organ fills at most ~4% of these volumes, so a blind guess scores well under
    # 0.1. Which organ is learnt first varies with the initial weights and the CPU's floating-point
    # order (earlier runs here learnt the liver, 0.76-0.83; one CI machine the kidney, 0.65). From
    # these seeded weights 128 iterations learnt nothing; 192 learnt liver 0.86 and kidney 0.48.
    # The 10-minute benchmark learns liver and kidneys.
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
