import json
import os

import pytest

from segloop.io import atomic_path, atomic_write_json
from segloop.trainers.split import case_key, stable_split


def items(n):
    return [{"image": f"/data/case_{i:03d}.nii.gz", "label": f"/data/labels/final/case_{i:03d}.nii.gz"} for i in range(n)]


def test_split_is_stable_as_the_datastore_grows():
    train20, val20 = stable_split(items(20), 0.25)
    train60, val60 = stable_split(items(60), 0.25)
    assert val20 and train20
    ids = lambda lst: {d["image"] for d in lst}  # noqa: E731
    assert ids(val20) <= ids(val60) and ids(train20) <= ids(train60)  # nobody changes side
    assert 0.1 < len(val60) / 60 < 0.4


def test_split_trains_on_everything_when_too_few_cases():
    assert stable_split(items(1), 0.5) == (items(1), [])
    assert stable_split(items(5), 0.0) == (items(5), [])
    assert stable_split(items(2), 0.01) == (items(2), [])


def test_small_campaigns_validate_only_on_cases_no_run_trained_on():
    trained_on, val_before = set(), set()
    for n in range(1, 15):
        train, val = stable_split(items(n), 0.01, keep_val=val_before, ever_trained=trained_on)
        train_ids, val_ids = {case_key(d) for d in train}, {case_key(d) for d in val}
        assert not train_ids & val_ids and len(train_ids | val_ids) == n
        assert not val_ids & trained_on  # never validate on a case some earlier run trained on
        assert val_before <= val_ids  # the validation set only grows
        if n >= 3:
            assert val_ids
        trained_on |= train_ids
        val_before = val_ids
    assert len(val_before) == 1  # with a tiny fraction the one guaranteed case is all


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    dest = tmp_path / "state.json"
    atomic_write_json(str(dest), {"version": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(str(dest)) as tmp:
            with open(tmp, "w") as f:
                f.write('{"version": 2')  # half written
            raise RuntimeError("crash while writing")
    assert json.loads(dest.read_text()) == {"version": 1}
    assert os.listdir(tmp_path) == ["state.json"]
