"""The two models the slow tests share, trained once a session: the default automatic model
(``trained_segmentation``) and the prompt model (``test_prompt_e2e``'s ``trained_prompt``).

``tests/conftest.py`` starts one background process per model as the session's tests are
collected, at the lowest CPU priority, and runs the tests that need them last: the runs take
the CPU the other tests leave idle (waiting on servers, polling), and a fixture waits only for
what is left. Budgets are iterations with seeded initial weights, so a run gives the same model
wherever and beside whatever it runs. Without a background run (a single test selected with
``-p no:...``, or the process failed) the fixture trains in-process with the same function.

    python tests/pretrain.py <segmentation|prompt> <root>   # writes <root>/pretrain.json at the end
"""

import json
import os
import sys

from segloop.data.sample import write_sample_data

LEARNING_EPOCHS = 48  # 8 cases an epoch: 384 iterations of the unetr_cpu preset
PROMPT_TRAIN_STEPS = 296  # about 180 s with bfloat16 on 2 threads, 760 s in float32
RESULT = "pretrain.json"


def train_segmentation(root: str) -> dict:
    """12 generated cases (seed 7), case_000..case_007 labelled; the default model trained for
    LEARNING_EPOCHS on them. The run's seed covers training, not the initial weights, which the
    config draws when it builds the network: ``set_determinism`` fixes those too."""
    from monai.utils import set_determinism

    from segloop_bench.training import train

    write_sample_data(root, cases=12, seed=7, labelled=8, progress=None)
    set_determinism(seed=0)
    return train(f"{root}/studies", {"max_epochs": LEARNING_EPOCHS, "val_split": 0.0, "seed": 0})


def train_prompt(root: str) -> dict:
    """10 generated cases (seed 7), 8 labelled; the prompt model for PROMPT_TRAIN_STEPS steps. A step
    budget, not a time budget: under a 180 s budget four runs gave three-click Dice 0.64-0.75 and
    failed the bars."""
    from monai.utils import set_determinism

    from segloop_bench.training import train

    write_sample_data(root, cases=10, seed=7, labelled=8, progress=None)
    set_determinism(seed=0)
    # No time budget: in the background a run's wall time depends on the tests beside it, and the
    # learning-rate schedule follows whichever of the time and step budgets is further along.
    request = {"max_epochs": 100000, "max_iterations": PROMPT_TRAIN_STEPS, "max_seconds": 0, "val_split": 0.0, "seed": 0}
    return train(f"{root}/studies", request, name="prompt")


KINDS = {"segmentation": train_segmentation, "prompt": train_prompt}


def write_result(root: str, run: dict) -> None:
    temporary = os.path.join(root, RESULT + ".tmp")
    with open(temporary, "w") as f:
        json.dump(run, f, default=str)
    os.replace(temporary, os.path.join(root, RESULT))  # whole or absent: the waiting fixture reads it once


if __name__ == "__main__":
    kind, root = sys.argv[1], sys.argv[2]
    write_result(root, KINDS[kind](root))
