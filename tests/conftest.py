import os
import shutil

import pytest

from segloop.data.sample import write_sample_data

os.environ.setdefault("MONAI_LABEL_TRACKING_ENABLED", "false")


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory):
    """Six generated cases (seed 1), no labels in the datastore; ground truth beside it."""
    root = str(tmp_path_factory.mktemp("sample"))
    write_sample_data(root, cases=6, seed=1, labelled=0, progress=None)
    return root


@pytest.fixture(scope="session")
def slicer_template(sample_root, tmp_path_factory):
    """The Slicer module's campaign, trained once: the six sample cases, case_000..case_002
    labelled, and version 1 of both models, trained on them by a real server that then stopped
    (4 s each: the tests need a serving model, not a good one)."""
    import requests

    from segloop_bench.server import running_server, wait_for

    path = str(tmp_path_factory.mktemp("slicer_template") / "studies")
    shutil.copytree(os.path.join(sample_root, "studies"), path)
    os.makedirs(os.path.join(path, "labels", "final"))
    for case in ("case_000", "case_001", "case_002"):
        shutil.copy(os.path.join(sample_root, "ground_truth", f"{case}.nii.gz"), os.path.join(path, "labels", "final"))
    conf = {"models": "segmentation,prompt", "retrain_max_seconds": "4"}
    log = os.path.join(os.path.dirname(path), "server.log")
    with running_server(path, conf=conf, log_path=log, env={"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}) as server:
        state = lambda m: requests.get(f"{server.url}/segloop/models/{m}", timeout=30).json()  # noqa: E731
        wait_for(lambda: all(state(m)["serving_version"] and not state(m)["training_run"] for m in ("segmentation", "prompt")),
                 600, 1.0, "both models to serve")
    return path


@pytest.fixture(scope="module")
def slicer_studies(slicer_template, tmp_path_factory):
    """A copy of :func:`slicer_template` for one test module: its server starts with both models
    serving version 1 and nothing new to train on; case_003..case_005 are left to label."""
    path = str(tmp_path_factory.mktemp("slicer") / "studies")
    shutil.copytree(slicer_template, path)
    return path


LEARNING_EPOCHS = 48  # 8 cases an epoch: 384 iterations of the unetr_cpu preset
LEARNING_HELD_OUT = ("case_008", "case_009", "case_010", "case_011")


@pytest.fixture(scope="session")
def trained_segmentation(tmp_path_factory):
    """The default automatic model trained in-process for LEARNING_EPOCHS on 8 labelled cases
    (seed 7, case_000..case_007); case_008..case_011 are held out (ground truth only).
    Shared by the learning test and the promotion test; tests that change it work on a copy."""
    from monai.utils import set_determinism

    from segloop_bench.training import train

    root = str(tmp_path_factory.mktemp("learning"))
    write_sample_data(root, cases=12, seed=7, labelled=8, progress=None)
    # The run's seed covers training, not the initial weights, which the config draws when it builds
    # the network: without this they depend on every test that ran before.
    set_determinism(seed=0)
    run = train(f"{root}/studies", {"max_epochs": LEARNING_EPOCHS, "val_split": 0.0, "seed": 0})
    return {"root": root, "run": run}
