import os

import torch

from segloop.configs.segmentation import Segmentation
from segloop.trainers.segmentation import per_label_dice


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
