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


@pytest.fixture(scope="module")
def slicer_studies(sample_root, tmp_path_factory):
    """A datastore for the Slicer module's end-to-end tests, one copy per test module: the six sample
    cases, case_000..case_002 labelled (both models train on them at server start), case_003..case_005 left."""
    path = str(tmp_path_factory.mktemp("slicer") / "studies")
    shutil.copytree(os.path.join(sample_root, "studies"), path)
    os.makedirs(os.path.join(path, "labels", "final"))
    for case in ("case_000", "case_001", "case_002"):
        shutil.copy(os.path.join(sample_root, "ground_truth", f"{case}.nii.gz"), os.path.join(path, "labels", "final"))
    return path
