"""The prompt model's label-only answers merged into an automatic proposal (segloop.infers.prompt_proposal).
Through the real server on the trained prompt model: tests/test_prompt_e2e.py."""

import numpy as np
import pytest

from segloop.infers.prompt_proposal import merge_structure_masks


def test_the_smaller_structure_keeps_a_voxel_two_masks_claim():
    liver = np.zeros((8, 8, 8), bool)
    liver[1:7, 1:7, 1:7] = True
    tumour = np.zeros_like(liver)
    tumour[3:5, 3:5, 3:5] = True  # inside the liver
    kidney = np.zeros_like(liver)
    kidney[6:8, 6:8, 6:8] = True  # overlaps the liver's corner voxel (6, 6, 6)
    merged = merge_structure_masks({1: liver, 4: tumour, 3: kidney})
    assert merged.dtype == np.uint8 and merged.shape == liver.shape
    assert (merged[tumour] == 4).all() and (merged[kidney] == 3).all()
    assert (merged[liver & ~tumour & ~kidney] == 1).all() and (merged[~(liver | tumour | kidney)] == 0).all()
    # the order masks come in does not matter; equal sizes: the lower value is painted first
    assert np.array_equal(merge_structure_masks({3: kidney, 1: liver, 4: tumour}), merged)
    a, b = np.zeros_like(liver), np.zeros_like(liver)
    a[0, 0, :2], b[0, 0, 1:3] = True, True
    assert merge_structure_masks({2: b, 1: a})[0, 0, :3].tolist() == [1, 2, 2]
    assert not merge_structure_masks({1: np.zeros_like(liver), 2: np.zeros_like(liver)}).any()


@pytest.mark.parametrize("flag, names", [("false", {"prompt", "prompt_scribbles"}), ("true", {"prompt", "prompt_scribbles", "prompt_seg"})])
def test_the_proposal_task_is_served_only_when_asked_for_as_a_segmentation_model(tmp_path, flag, names):
    from segloop_bench.training import build_task_config

    config = build_task_config(str(tmp_path), {"prompt_proposal": flag}, name="prompt")
    tasks = config.infer()
    assert set(tasks) == names
    if flag == "true":
        info = tasks["prompt_seg"].info()
        assert info["type"] == "segmentation" and "prompts" not in info
        assert tasks["prompt_seg"].labels == tasks["prompt"].labels and tasks["prompt_seg"].model_name == "prompt"
