import os

import pytest

from segloop.data.sample import write_sample_data

os.environ.setdefault("MONAI_LABEL_TRACKING_ENABLED", "false")


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory):
    """Six generated cases (seed 1), no labels in the datastore; ground truth beside it."""
    root = str(tmp_path_factory.mktemp("sample"))
    write_sample_data(root, cases=6, seed=1, labelled=0, progress=None)
    return root
