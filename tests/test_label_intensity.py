"""Per-structure intensity augmentation (segloop/transforms/label_intensity.py) and the trainer's
``structure_shift_hu`` option that turns it on."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from segloop.errors import ClientError
from segloop.server.request_params import check_train_params
from segloop.transforms.label_intensity import RandLabelIntensityShiftd


def sample():
    """A (1, 8, 8, 4) image of random values and a label map with structures 1 and 3 (2 absent)."""
    generator = torch.Generator().manual_seed(0)
    label = torch.zeros((1, 8, 8, 4))
    label[:, :4, :4] = 1
    label[:, 5:, 5:, :2] = 3
    image = MetaTensor(torch.rand((1, 8, 8, 4), generator=generator), affine=torch.eye(4) * 2)
    return {"image": image, "label": label}


def test_each_present_structure_moves_by_one_offset_of_its_own_and_nothing_else_moves():
    data = sample()
    shift = RandLabelIntensityShiftd(keys="image", label_key="label", offsets=(-0.2, 0.2), prob=1.0)
    shift.set_random_state(seed=4)
    out = shift(data)
    moved = out["image"] - data["image"]
    label = data["label"]
    assert torch.equal(moved[label == 0], torch.zeros_like(moved[label == 0]))  # background as it was
    offsets = {}
    for value in (1, 3):
        inside = moved[label == value]
        assert torch.allclose(inside, inside[0].expand_as(inside), atol=1e-6)  # one offset per structure
        offsets[value] = float(inside[0])
        assert -0.2 <= offsets[value] <= 0.2 and offsets[value] != 0
    assert offsets[1] != pytest.approx(offsets[3])  # drawn independently
    assert torch.equal(out["label"], label) and isinstance(out["image"], MetaTensor)
    assert torch.equal(out["image"].affine, data["image"].affine)
    assert torch.equal(data["image"], sample()["image"])  # the input is not modified in place

    # the same seed gives the same draws; another seed others
    again = RandLabelIntensityShiftd(keys="image", label_key="label", offsets=(-0.2, 0.2), prob=1.0)
    again.set_random_state(seed=4)
    assert torch.equal(again(sample())["image"], out["image"])
    again.set_random_state(seed=5)
    assert not torch.equal(again(sample())["image"], out["image"])


def test_probability_zero_and_an_empty_label_leave_the_image_as_it_is():
    data = sample()
    never = RandLabelIntensityShiftd(keys="image", label_key="label", offsets=(-0.2, 0.2), prob=0.0)
    assert torch.equal(never(data)["image"], data["image"])
    empty = dict(data, label=torch.zeros_like(data["label"]))
    always = RandLabelIntensityShiftd(keys="image", label_key="label", offsets=(-0.2, 0.2), prob=1.0)
    assert torch.equal(always(empty)["image"], data["image"])
    # numpy images are shifted too (every channel alike)
    two_channels = {"image": np.stack([data["image"][0].numpy()] * 2), "label": data["label"]}
    moved = always(two_channels)["image"] - two_channels["image"]
    assert isinstance(moved, np.ndarray) and np.allclose(moved[0], moved[1]) and np.abs(moved).max() > 0
    with pytest.raises(ValueError, match="low <= high"):
        RandLabelIntensityShiftd(keys="image", label_key="label", offsets=(0.2, -0.2))


def test_a_structure_appears_in_about_prob_of_the_draws():
    shift = RandLabelIntensityShiftd(keys="image", label_key="label", offsets=(-1, 1), prob=0.25)
    shift.set_random_state(seed=0)
    hits = sum(1 in shift.draws([1, 3]) for _ in range(2000))
    assert 0.21 < hits / 2000 < 0.29


def test_the_automatic_models_trainer_adds_it_in_window_units_and_the_prompt_models_does_not(tmp_path):
    from segloop.data.sample import write_sample_data
    from segloop_bench.training import build_task_config

    write_sample_data(str(tmp_path), cases=1, seed=3, labelled=1, progress=None, shape=(32, 32, 16), spacing=(6.0, 6.0, 8.0))
    conf = {"roi_size": "[32,32,32]", "target_spacing": "[6,6,6]"}
    trainer = build_task_config(f"{tmp_path}/studies", conf).trainer()
    assert build_task_config(f"{tmp_path}/studies", conf, name="prompt").trainer()._config["structure_shift_hu"] == 0.0

    class Ctx:
        request = {}

    def shifts(request):
        Ctx.request = request
        return [t for t in trainer.train_pre_transforms(Ctx) if isinstance(t, RandLabelIntensityShiftd)]

    assert shifts({"structure_shift_hu": 0}) == []
    (default,) = shifts({})  # on by default for the automatic model
    width = trainer.hu_window[1] - trainer.hu_window[0]
    assert trainer._config["structure_shift_hu"] == 40.0 and default.offsets == pytest.approx((-40 / width, 40 / width))
    (added,) = shifts({"structure_shift_hu": 20})
    assert added.offsets == pytest.approx((-20 / width, 20 / width)) and added.prob == 0.25
    for bad in (-1, "x"):
        with pytest.raises(ValueError, match="structure_shift_hu"):
            shifts({"structure_shift_hu": bad})
    # through /train the server refuses those with a 400 before any run starts
    for bad in (-1, "x", 501, True):
        with pytest.raises(ClientError) as e:
            check_train_params({"structure_shift_hu": bad}, trainer._config, "segmentation")
        assert e.value.status_code == 400 and "structure_shift_hu" in e.value.message
    assert check_train_params({"structure_shift_hu": 40}, trainer._config, "segmentation")[0] == {"structure_shift_hu": 40}
