import os

import torch

from segloop.configs.prompt import InteractiveSegmentation
from segloop.configs.segmentation import Segmentation
from segloop.trainers.handlers import configure_autocast, per_label_dice
from segloop.trainers.segmentation import DEFAULT_LR


def make_config(tmp_path, **conf):
    config = Segmentation()
    config.init("segmentation", str(tmp_path / "model"), {k: str(v) for k, v in conf.items()}, None)
    return config


def test_training_resumes_from_the_published_model_unless_from_scratch(tmp_path):
    start = tmp_path / "start.pt"
    torch.save({"model": {}}, start)
    config = make_config(tmp_path, checkpoint=start)
    trainer = config.trainer()
    trainer._run = {"request": {}}
    assert trainer.load_path("unused") == str(start)  # nothing published yet: the configured checkpoint
    torch.save({"model": {}}, config.published_path)
    assert trainer.load_path("unused") == config.published_path  # fine-tune the serving model
    trainer._run = {"request": {"from_scratch": True}}
    assert trainer.load_path("unused") is None
    assert config.infer().get_path() == config.published_path  # the published model serves


def test_infer_and_trainer_share_geometry_and_labels(tmp_path):
    config = make_config(tmp_path, network="segresnet", roi_size="[32, 32, 32]", target_spacing="[2, 2, 2]")
    infer, trainer = config.infer(), config.trainer()
    assert infer.roi_size == trainer.roi_size == (32, 32, 32)
    assert infer.target_spacing == trainer.target_spacing == (2.0, 2.0, 2.0)
    assert infer.labels == trainer.label_map == {"liver": 1, "spleen": 2, "kidney": 3, "tumor": 4}
    assert os.path.dirname(config.published_path) == str(tmp_path / "model")
    out = config.network(torch.zeros(1, 1, 32, 32, 32))
    assert out.shape == (1, 5, 32, 32, 32)


def test_unetr_presets_build_with_the_requested_input_size():
    from segloop.networks import build_network

    net = build_network("unetr_cpu", 5, (64, 64, 64))
    with torch.no_grad():
        assert net(torch.zeros(1, 1, 64, 64, 64)).shape == (1, 5, 64, 64, 64)
    full = build_network("unetr", 5, (96, 96, 96))
    assert sum(p.numel() for p in full.parameters()) > 80e6  # the paper-size model (about 90M parameters)


def test_per_label_dice_metric_names_follow_label_order():
    assert list(per_label_dice({"tumor": 4, "liver": 1})) == ["dice_liver", "dice_tumor"]


def test_each_prompt_preset_trains_at_its_own_learning_rate(tmp_path):
    rates = {}
    for preset in ("prompt_cpu", "prompt"):
        config = InteractiveSegmentation()
        config.init("prompt", str(tmp_path / preset), {"prompt_network": preset}, None)
        rates[preset] = config.trainer()._config["lr"]
    assert rates == {"prompt_cpu": DEFAULT_LR, "prompt": 3e-4}  # the full-size preset diverged at 3e-3


class _Engine:
    def __init__(self, amp):
        self.amp, self.amp_kwargs, self.scaler = amp, {}, "float16 scaler"


def test_gpu_training_autocasts_to_bfloat16_where_the_gpu_has_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    engine = _Engine(amp=True)
    configure_autocast(engine, "auto")
    assert engine.amp_kwargs == {"dtype": torch.bfloat16}
    assert not engine.scaler.is_enabled()  # bfloat16 needs no loss scaling; the engine still autocasts
    kept = _Engine(amp=True)
    configure_autocast(kept, "float16")
    assert kept.amp_kwargs == {} and kept.scaler == "float16 scaler"  # MONAI's float16 default
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    older = _Engine(amp=True)
    configure_autocast(older, "auto")
    assert older.amp_kwargs == {} and older.scaler == "float16 scaler"


def test_amp_off_trains_in_float32_on_a_gpu(tmp_path):
    trainer = make_config(tmp_path, device="cuda", amp="off").trainer()
    assert trainer._amp is False
    assert make_config(tmp_path, device="cuda").trainer()._amp is True
    assert make_config(tmp_path, device="cpu").trainer()._amp is False


def test_prompt_runs_warm_up_decay_and_clip_and_segmentation_runs_keep_a_constant_rate(tmp_path):
    config = InteractiveSegmentation()
    config.init("prompt", str(tmp_path / "prompt"), {}, None)
    prompt = config.trainer()._config
    segmentation = make_config(tmp_path).trainer()._config
    assert prompt["lr_schedule"][0] == "cosine" and prompt["grad_clip"] == 1.0  # 3 of 8 runs collapsed without
    assert segmentation["lr_schedule"][0] == "constant" and segmentation["grad_clip"] == 0.0


def test_crop_ratios_and_class_weights_come_per_class_from_the_request(tmp_path):
    import pytest
    from monai.transforms import RandCropByLabelClassesd

    trainer = make_config(tmp_path).trainer()
    assert trainer.per_class({}, "crop_ratios") is None  # default: equal crop centres, no loss weights
    assert trainer.per_class({"crop_ratios": "[1,1,1,1,4]"}, "crop_ratios") == [1, 1, 1, 1, 4]
    assert trainer.per_class({"class_weights": "1,1,1,1,3"}, "class_weights") == [1, 1, 1, 1, 3]
    for bad in ("[1,1,1,4]", "[1,1,1,1,-1]", "[0,0,0,0,0]", "[1,1,1,1,\"x\"]", "a,b"):
        with pytest.raises(ValueError):
            trainer.per_class({"crop_ratios": bad}, "crop_ratios")

    class Ctx:
        request = {"crop_ratios": "[1,1,1,1,4]", "class_weights": "[1,1,1,1,3]"}

    crop = next(t for t in trainer.train_pre_transforms(Ctx) if isinstance(t, RandCropByLabelClassesd))
    assert list(crop.cropper.ratios) == [1, 1, 1, 1, 4]
    loss = trainer.loss_function(Ctx)
    assert loss.cross_entropy.weight.tolist() == [1, 1, 1, 1, 3]
