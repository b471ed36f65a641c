"""The default CPU model learns: every organ beats baselines that learn nothing, on held-out cases."""

import json
import os

import numpy as np
import pytest
import torch

from conftest import LEARNING_HELD_OUT
from pretrain import LEARNING_EPOCHS
from segloop.data.sample import write_sample_data
from segloop.labels import DEFAULT_LABELS
from segloop.networks.precision import native_bfloat16
from segloop_bench.baselines import hu_ranges, hu_threshold_dice, mean_label_dice
from segloop_bench.training import evaluate, mean_per_label, train

pytestmark = pytest.mark.slow

ORGANS = ("liver", "spleen", "kidney")
MARGIN = 0.05  # Dice over the mean-label baseline, per organ
# Known on a CPU without native bfloat16 (issue 23; README, "The automatic model"): in float32 the
# default's spleen stays at training Dice 0 for most of the 384 iterations and is missed on the
# held-out cases (0.011 and, at 192 iterations, 0.007 against the mean label's 0.459). There the
# test still asserts the other organs and reports the spleen as an expected failure.
FLOAT32_MISSES = {"spleen"}


def test_default_model_beats_the_mean_label_on_every_organ(trained_segmentation, capsys):
    root, run = trained_segmentation["root"], trained_segmentation["run"]
    assert run["stats"]["current_iteration"] == LEARNING_EPOCHS * 8
    truth = lambda case: os.path.join(root, "ground_truth", f"{case}.nii.gz")  # noqa: E731
    scores = evaluate(f"{root}/studies", f"{root}/ground_truth", list(LEARNING_HELD_OUT))
    model = mean_per_label(scores)
    train_labels = [truth(f"case_{i:03d}") for i in range(8)]
    mean_label = mean_per_label({c: mean_label_dice(train_labels, truth(c), DEFAULT_LABELS) for c in LEARNING_HELD_OUT})
    ranges = hu_ranges([{"image": f"{root}/studies/case_{i:03d}.nii.gz", "label": train_labels[i]} for i in range(8)], DEFAULT_LABELS)
    threshold = mean_per_label(
        {c: hu_threshold_dice(ranges, {"image": f"{root}/studies/{c}.nii.gz", "label": truth(c)}, DEFAULT_LABELS) for c in LEARNING_HELD_OUT}
    )
    bfloat16 = native_bfloat16(torch.device("cpu"))
    with capsys.disabled():
        line = lambda d: json.dumps({k: round(d[k], 3) for k in ORGANS})  # noqa: E731
        print(f"\nheld-out Dice after {run['seconds']} s ({run['stats']['current_iteration']} iterations, "
              f"{'bfloat16' if bfloat16 else 'float32'}): model {line(model)}, "
              f"mean-label baseline {line(mean_label)}, HU-threshold baseline {line(threshold)}")
    assert all(np.isfinite(v) for v in scores[LEARNING_HELD_OUT[0]].values())
    below = {k: (round(model[k], 3), round(mean_label[k], 3)) for k in ORGANS if not model[k] > mean_label[k] + MARGIN}
    if below and not bfloat16 and set(below) <= FLOAT32_MISSES:
        pytest.xfail(f"float32: the default misses {sorted(below)} at this budget (model, baseline): {below}")
    assert not below, f"organs not {MARGIN} above the mean-label baseline (model, baseline): {below}"


def test_unchanged_cases_are_not_decoded_again_across_runs(tmp_path):
    """Runs share a persistent cache of the deterministic pre-processing, keyed by label timestamp."""
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
