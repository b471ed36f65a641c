"""Class sampling planned from the structures' sizes (segloop.planning.sampling) and its use by the trainer."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from segloop.labels import DEFAULT_LABELS
from segloop.planning.sampling import SMALL_CROP_RATIO, SMALL_LOSS_WEIGHT, class_sampling, label_volumes_ml


def test_a_structure_under_a_tenth_of_the_typical_volume_is_cropped_and_weighted_more():
    volumes = {"liver": 700.0, "spleen": 120.0, "kidney": 90.0, "tumor": 8.0}  # typical (median) 105 ml
    sampling = class_sampling(volumes, DEFAULT_LABELS)
    assert sampling["crop_ratios"] == [1, 1, 1, 1, SMALL_CROP_RATIO]
    assert sampling["class_weights"] == [1, 1, 1, 1, SMALL_LOSS_WEIGHT]
    assert sampling["small_structures"] == ["tumor"]
    # a tumour at 11 ml is above a tenth of 105 ml: every class equal
    assert class_sampling({**volumes, "tumor": 11.0}, DEFAULT_LABELS)["crop_ratios"] == [1] * 5
    # a label no case holds keeps 1; the channel order follows the label indices, not the dict order
    labels = {"tumor": 2, "liver": 1, "kidney": 3}
    sampling = class_sampling({"liver": 700.0, "tumor": 5.0}, labels)
    assert sampling["crop_ratios"] == [1, 1, SMALL_CROP_RATIO, 1]
    assert class_sampling({}, DEFAULT_LABELS)["crop_ratios"] == [1] * 5


def write_label(path, spacing, blocks, flip=False):
    data = np.zeros((40, 40, 20), dtype=np.uint8)
    for value, (x, y, z, n) in blocks.items():
        data[x:x + n, y:y + n, z:z + n] = value
    affine = np.diag([*spacing, 1.0])
    if flip:  # LPS: negative axes, same voxel volume
        affine[0, 0], affine[1, 1] = -spacing[0], -spacing[1]
    nib.save(nib.Nifti1Image(data, affine), str(path))


def test_label_volumes_are_medians_in_ml_over_the_files_that_hold_each_label(tmp_path):
    write_label(tmp_path / "a.nii.gz", (2.0, 2.0, 2.0), {1: (0, 0, 0, 10), 4: (20, 20, 10, 2)})  # 8 ml, 0.064 ml
    write_label(tmp_path / "b.nii.gz", (1.0, 1.0, 4.0), {1: (0, 0, 0, 10), 4: (20, 20, 10, 3)}, flip=True)  # 4 ml, 0.108 ml
    write_label(tmp_path / "c.nii.gz", (1.0, 1.0, 1.0), {1: (0, 0, 0, 20)})  # 8 ml, no tumour
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    paths = [str(tmp_path / n) for n in ("a.nii.gz", "b.nii.gz", "c.nii.gz", "broken.nii.gz")]
    volumes = label_volumes_ml(paths, DEFAULT_LABELS)
    assert volumes == {"liver": pytest.approx(8.0), "tumor": pytest.approx((0.064 + 0.108) / 2)}


def test_a_training_run_plans_its_class_sampling_and_records_it(tmp_path):
    """Through the app's config and trainer on generated cases: with ``class_sampling: auto`` the run
    samples tumour-centred crops 4x as often and weighs the tumour 3x, and the version record says
    so (with ``equal`` nothing is planned); a request's lists override the plan."""
    from monai.transforms import RandCropByLabelClassesd

    from segloop.data.sample import write_sample_data
    from segloop_bench.training import build_task_config, train

    root = str(tmp_path)
    write_sample_data(root, cases=3, seed=3, labelled=3, progress=None, shape=(64, 64, 32), spacing=(6.0, 6.0, 8.0))
    studies = f"{root}/studies"
    conf = {"roi_size": "[32,32,32]", "target_spacing": "[6,6,6]", "amp": "off"}
    train(studies, {"max_iterations": 2, "val_split": 0.0, "seed": 0, "class_sampling": "equal"}, conf)
    config = build_task_config(studies, conf)
    assert "sampling" not in config.registry.state()["versions"][-1]  # equal: nothing planned
    train(studies, {"max_iterations": 2, "val_split": 0.0, "seed": 0, "class_sampling": "auto"}, conf)
    version = config.registry.state()["versions"][-1]
    sampling = version["sampling"]
    assert sampling["small_structures"] == ["tumor"], sampling["volumes_ml"]
    assert sampling["crop_ratios"] == [1, 1, 1, 1, SMALL_CROP_RATIO]

    trainer = config.trainer()
    trainer._run = {"sampling": sampling}

    class Ctx:
        request = {}

    crop = next(t for t in trainer.train_pre_transforms(Ctx) if isinstance(t, RandCropByLabelClassesd))
    assert list(crop.cropper.ratios) == [1, 1, 1, 1, SMALL_CROP_RATIO]
    assert trainer.loss_function(Ctx).cross_entropy.weight.tolist() == [1, 1, 1, 1, SMALL_LOSS_WEIGHT]
    Ctx.request = {"crop_ratios": json.dumps([1, 1, 1, 1, 1]), "class_weights": "[1,1,1,1,1]"}
    crop = next(t for t in trainer.train_pre_transforms(Ctx) if isinstance(t, RandCropByLabelClassesd))
    assert list(crop.cropper.ratios) == [1] * 5
    assert trainer.loss_function(Ctx).cross_entropy.weight.tolist() == [1] * 5


def test_a_staged_run_starts_equal_and_switches_once_when_the_organs_are_learnt(tmp_path):
    """``class_sampling: staged``: a real run starts with equal crops and loss, records its plan and
    stage; the switch (driven here by the training Dice an epoch end would give) sets the plan's crop
    ratios and weighted loss, once, and only when every organ some case holds is learnt."""
    from ignite.engine import Engine, Events
    from monai.transforms import RandCropByLabelClassesd

    from segloop.data.sample import write_sample_data
    from segloop.trainers.staged_sampling import ORGANS_LEARNT_DICE, StagedClassSampling
    from segloop_bench.training import build_task_config, train

    root = str(tmp_path)
    write_sample_data(root, cases=3, seed=3, labelled=3, progress=None, shape=(64, 64, 32), spacing=(6.0, 6.0, 8.0))
    studies = f"{root}/studies"
    conf = {"roi_size": "[32,32,32]", "target_spacing": "[6,6,6]", "amp": "off"}
    run = train(studies, {"max_iterations": 2, "val_split": 0.0, "seed": 0}, conf)  # the default: staged
    assert {f"dice_{n}" for n in DEFAULT_LABELS} <= set(run["stats"]["train"]["metrics"])  # what the switch reads
    config = build_task_config(studies, conf)
    sampling = config.registry.state()["versions"][-1]["sampling"]
    assert (sampling["mode"], sampling["stage"], sampling["switched_at_iteration"]) == ("staged", "equal", None)
    assert sampling["crop_ratios"] == [1, 1, 1, 1, SMALL_CROP_RATIO]

    trainer = config.trainer()
    trainer._run = {"sampling": {k: v for k, v in sampling.items() if k not in ("stage", "switched_at_iteration")}}

    class Ctx:
        request = {}

    crop = next(t for t in trainer.train_pre_transforms(Ctx) if isinstance(t, RandCropByLabelClassesd))
    loss = trainer.loss_function(Ctx)
    assert list(crop.cropper.ratios) == [1] * 5 and loss.first.cross_entropy.weight is None
    assert loss.then.cross_entropy.weight.tolist() == [1, 1, 1, 1, SMALL_LOSS_WEIGHT]
    assert set(trainer.train_additional_metrics(Ctx)) == {f"dice_{n}" for n in DEFAULT_LABELS}

    staged = trainer.staged_sampling(Ctx.request)
    engine = Engine(lambda e, b: None)
    StagedClassSampling(crop, loss, staged).attach(engine)
    learnt = {"dice_liver": 0.95, "dice_spleen": ORGANS_LEARNT_DICE, "dice_kidney": 0.9, "dice_tumor": 0.0}
    epochs = iter([{**learnt, "dice_spleen": ORGANS_LEARNT_DICE - 0.01}, {**learnt, "dice_kidney": float("nan")}, learnt, {}])

    engine.add_event_handler(Events.EPOCH_STARTED, lambda e: setattr(e.state, "metrics", next(epochs)))
    switched = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: switched.append(loss.switched))
    engine.run([0, 1], max_epochs=4)
    assert switched == [False, False, True, True]  # spleen short, kidney NaN, then learnt (the tumour is not watched)
    assert staged["switched_at_iteration"] == 6 and staged["stage"] == "small structures"
    assert list(crop.cropper.ratios) == [1, 1, 1, 1, SMALL_CROP_RATIO]
    pred, target = torch.randn(1, 5, 8, 8, 8), torch.randint(0, 5, (1, 1, 8, 8, 8))
    assert loss(pred, target).item() == pytest.approx(loss.then(pred, target).item())

    # a request that sets the lists itself is not staged
    assert trainer.staged_sampling({"crop_ratios": "[1,1,1,1,1]"}) is None
