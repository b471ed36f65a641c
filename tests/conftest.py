import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

import pretrain

from segloop.data.sample import write_sample_data

os.environ.setdefault("MONAI_LABEL_TRACKING_ENABLED", "false")


@pytest.fixture(autouse=True)
def torch_threads_restored():
    """Each test leaves torch's thread count as it found it. The distributed tests pin 1 thread to
    match their ranks; left so, every later in-process run (the prompt model's pretraining among
    them) trained on 1 of the 2 cores."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


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
    conf = {"models": "segmentation,prompt", "retrain_max_seconds": "4", "first_run_max_seconds": "4"}
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


@pytest.fixture(scope="session")
def realm():
    from realm import Realm

    realm = Realm()
    yield realm
    realm.httpd.shutdown()


# The campaign settings of the authenticated server: two reads per case, review on (the auth test
# only needs auth; the campaign test needs both).
AUTH_CAMPAIGN_CONF = {"reads_per_case": "2", "review": "true", "agreement_threshold": "0.7"}


@pytest.fixture(scope="session")
def auth_server(sample_root, realm, tmp_path_factory):
    """The sample studies served with authentication on (tokens from :func:`realm`), the automatic
    model only, no automatic training, and a campaign of two reads per case with review. Shared by
    tests/test_auth.py and tests/test_campaign_e2e.py (in that order)."""
    from segloop_bench.server import running_server

    base = tmp_path_factory.mktemp("auth")
    studies = str(base / "studies")
    shutil.copytree(os.path.join(sample_root, "studies"), studies)
    env = {"MONAI_LABEL_AUTH_ENABLE": "true", "MONAI_LABEL_AUTH_REALM_URI": realm.uri, "MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}
    conf = {"models": "segmentation", "auto_train": "false", **AUTH_CAMPAIGN_CONF}
    with running_server(studies, conf=conf, log_path=str(base / "server.log"), env=env) as handle:
        handle.studies = studies
        yield handle


LEARNING_HELD_OUT = ("case_008", "case_009", "case_010", "case_011")

# fixture name -> the model it waits for (tests/pretrain.py). Both runs are seeded step budgets: a
# background run gives the in-process run's model (the prompt model's arm figures were identical, float32).
PRETRAINED = {"trained_segmentation": "segmentation", "trained_prompt": "prompt"}
_background = {}  # kind -> (process, root)


@pytest.hookimpl(trylast=True)  # after -m / -k deselection: only what the selected tests need
def pytest_collection_modifyitems(session, config, items):
    """Start the background training runs the selected tests need, and run those tests last."""
    needed = {kind for item in items for name, kind in PRETRAINED.items() if name in item.fixturenames}
    if not needed or config.getoption("collectonly"):
        return
    items.sort(key=lambda item: any(name in item.fixturenames for name in PRETRAINED))  # stable: file order otherwise
    for kind in sorted(needed):
        root = tempfile.mkdtemp(prefix=f"segloop-pretrain-{kind}-")
        log = open(os.path.join(root, "pretrain.log"), "w")
        process = subprocess.Popen(
            [sys.executable, os.path.join(os.path.dirname(__file__), "pretrain.py"), kind, root],
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=lambda: os.nice(19),
            env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"),  # idle threads sleep, as in SegLoop's own runs: no spinning beside the tests
        )
        _background[kind] = (process, root)


def pytest_sessionfinish(session, exitstatus):
    for process, root in _background.values():
        if process.poll() is None:
            process.kill()
            process.wait()
        shutil.rmtree(root, ignore_errors=True)


def pretrained(kind, tmp_path_factory):
    """``{"root", "run"}`` of model ``kind`` (tests/pretrain.py): the background run's, waited for
    (the tests that do not need it have run: it has the CPU to itself), else trained here."""
    if kind in _background:
        process, root = _background[kind]
        others = [p for k, (p, _) in _background.items() if k != kind and p.poll() is None]
        for other in others:  # paused while this one is awaited: it gets both cores
            other.send_signal(signal.SIGSTOP)
        try:
            status = process.wait()
        finally:
            for other in others:
                other.send_signal(signal.SIGCONT)
        if status == 0 and os.path.isfile(os.path.join(root, pretrain.RESULT)):
            with open(os.path.join(root, pretrain.RESULT)) as f:
                return {"root": root, "run": json.load(f)}
        with open(os.path.join(root, "pretrain.log")) as f:
            print(f"background {kind} training failed (exit {process.returncode}), training here:\n{f.read()[-2000:]}")
    root = str(tmp_path_factory.mktemp(f"pretrain_{kind}"))
    return {"root": root, "run": pretrain.KINDS[kind](root)}


@pytest.fixture(scope="session")
def trained_segmentation(tmp_path_factory):
    """The default automatic model trained for LEARNING_EPOCHS on 8 labelled cases (seed 7,
    case_000..case_007); case_008..case_011 are held out (ground truth only). Shared by the
    learning, promotion, crash-safety and adversarial tests; tests that change it work on a copy."""
    return pretrained("segmentation", tmp_path_factory)
