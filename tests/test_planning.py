"""The automatic model's self-configuration: fingerprint, plan, DynUNet topology, deep supervision."""

import json
import math
import os

import numpy as np
import pytest
import torch

from segloop.configs.options import parse_options
from segloop.labels import DEFAULT_LABELS
from segloop.networks import PRESETS, build_network, dynunet_topology, has_deep_supervision
from segloop.planning.fingerprint import summarize_cases
from segloop.planning.plan import (
    MIN_VOXELS_ACROSS,
    PLAN_FILE,
    even_sample,
    labelled_pairs,
    load_or_make_plan,
    plan_training,
)
from segloop.trainers.segmentation import StackedDeepSupervisionLoss, main_head


def analyzer_case(spacing, size_vox, tumour_shapes):
    """A per-case report in the layout of MONAI's DataAnalyzer (only the keys the fingerprint reads)."""
    intensity = {"percentile_00_5": -10.0, "percentile_99_5": 200.0, "mean": 80.0, "stdev": 35.0}
    shapes = {1: [[80, 90, 40]], 2: [[25, 50, 30]], 3: [[26, 30, 29], [31, 28, 21]], 4: tumour_shapes}
    return {
        "image_stats": {"spacing": list(spacing), "sizemm": [n * s for n, s in zip(size_vox, spacing)]},
        "image_foreground_stats": {"intensity": [intensity]},
        "label_stats": {
            "labels": [0, 1, 2, 3, 4],
            "label": [{"shape": [size_vox], "ncomponents": 1}]
            + [{"shape": shapes[k], "ncomponents": len(shapes[k])} for k in (1, 2, 3, 4)],
        },
    }


CASES = [
    analyzer_case((1.0, 1.0, 3.0), (320, 320, 64), [[9, 10, 4]]),  # thinnest: min(9, 10, 12) = 9 mm
    analyzer_case((1.2, 1.2, 2.5), (280, 280, 80), [[20, 20, 8], [12, 14, 6]]),  # 20 mm, 14.4 mm
    analyzer_case((0.8, 0.8, 5.0), (400, 400, 40), [[40, 30, 5]]),  # 24 mm
]


def test_fingerprint_reads_spacing_sizes_intensities_and_the_thinnest_instances_in_mm():
    fp = summarize_cases(CASES, DEFAULT_LABELS)
    assert fp["cases"] == 3 and fp["spacing_mm"] == [1.0, 1.0, 3.0]
    assert fp["size_mm"] == [320.0, 320.0, 200.0]
    assert fp["foreground_hu"]["percentile_00_5"] == -10.0 and fp["foreground_hu"]["percentile_99_5"] == 200.0
    tumour = fp["structures"]["tumor"]
    assert tumour["cases"] == 3 and tumour["components_per_case"] == pytest.approx(4 / 3, abs=0.01)
    assert tumour["thinnest_mm"]["median"] == pytest.approx(np.median([9, 20, 14.4, 24]), abs=0.01)
    assert fp["structures"]["kidney"]["components_per_case"] == 2.0
    with pytest.raises(ValueError):
        summarize_cases([], DEFAULT_LABELS)


def test_plan_resolves_the_smallest_structure_within_the_presets_budget():
    fp = summarize_cases(CASES, DEFAULT_LABELS)
    cpu = plan_training(fp, PRESETS["unetr_cpu"])
    # the tumour's thin instances (p10 ~ 10.6 mm) want 10.6 / 6 mm; the CPU budget stops at 2 mm in
    # plane, and the slice axis is never finer than the data's median 3 mm
    assert cpu["target_spacing"] == [2.0, 2.0, 3.0]
    assert cpu["why"]["smallest_structure"] == "tumor" and cpu["why"]["min_voxels_across"] == MIN_VOXELS_ACROSS
    roi = cpu["roi_size"]
    assert all(v % PRESETS["unetr_cpu"].size_multiple == 0 for v in roi)
    assert math.prod(roi) <= 1.15 * math.prod(PRESETS["unetr_cpu"].roi_size)
    assert roi[0] == roi[1] > roi[2]  # shaped like the median case: 160 x 160 x 67 voxels at that spacing
    assert cpu["hu_window"] == [-10.0, 200.0]
    # a GPU preset may go finer, down to the data's own median spacing
    gpu = plan_training(fp, PRESETS["dynunet"])
    assert gpu["target_spacing"][0] < 2.0 and gpu["target_spacing"][0] >= 1.0
    assert gpu["dynunet"]["strides"][0] == [1, 1, 1]
    # with only large structures, the preset's own (coarser) spacing stays
    big = dict(fp, structures={k: v for k, v in fp["structures"].items() if k == "liver"})
    assert plan_training(big, PRESETS["unetr_cpu"])["target_spacing"] == [3.0, 3.0, 3.0]


def test_dynunet_topology_follows_the_nnunet_rule_for_anisotropic_windows():
    kernels, strides = dynunet_topology((128, 128, 32), (0.8, 0.8, 5.0))
    assert strides[0] == [1, 1, 1]
    assert strides[1] == [2, 2, 1] and strides[2] == [2, 2, 1]  # z waits until in-plane caught up
    assert kernels[0] == [3, 3, 1]  # no 3-voxel kernel across 5 mm slices at 0.8 mm in plane
    assert all(min(128 // math.prod(s[0] for s in strides), 32 // math.prod(s[2] for s in strides)) >= 4 for _ in [0])
    iso_k, iso_s = dynunet_topology((64, 64, 64), (3.0, 3.0, 3.0))
    assert iso_s == [[1, 1, 1]] + [[2, 2, 2]] * 4 and all(k == [3, 3, 3] for k in iso_k)


def test_dynunet_trains_with_deep_supervision_and_infers_one_output():
    net = build_network("dynunet_cpu", 5, (32, 32, 32), target_spacing=(3.0, 3.0, 3.0))
    assert has_deep_supervision(net) and not has_deep_supervision(build_network("unetr_cpu", 5, (64, 64, 64)))
    x, y = torch.rand(2, 1, 32, 32, 32), torch.randint(0, 5, (2, 1, 32, 32, 32))
    net.train()
    out = net(x)
    assert out.shape[:3] == (2, 3, 5)  # main output and two auxiliary heads, stacked on dim 1
    from monai.losses import DiceCELoss

    loss = StackedDeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True))
    value = loss(out, y)
    value.backward()
    assert torch.isfinite(value)
    # the main head alone gives a different (unweighted) loss: the auxiliary heads count
    assert not torch.isclose(value, DiceCELoss(to_onehot_y=True, softmax=True)(out[:, 0], y))
    assert main_head(out[0]).shape == (5, 32, 32, 32) and main_head(out[0, 0]).shape == (5, 32, 32, 32)
    net.eval()
    with torch.no_grad():
        assert net(x[:1]).shape == (1, 5, 32, 32, 32)


def test_swinunetr_preset_builds():
    net = build_network("swinunetr_cpu", 5, (64, 64, 64), dropout=0.1)
    with torch.no_grad():
        assert net(torch.rand(1, 1, 64, 64, 64)).shape == (1, 5, 64, 64, 64)


def test_a_plan_is_made_once_before_training_and_then_frozen(tmp_path, monkeypatch):
    studies = tmp_path / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    for case in ("case_000", "case_001"):
        (studies / f"{case}.nii.gz").write_bytes(b"")
        (studies / "labels" / "final" / f"{case}.nii.gz").write_bytes(b"")
    (studies / "case_002.nii.gz").write_bytes(b"")  # unlabelled
    pairs = labelled_pairs(str(studies))
    assert [os.path.basename(i) for i, _ in pairs] == ["case_000.nii.gz", "case_001.nii.gz"]

    calls = []

    def fake_fingerprint(sample, labels):
        calls.append(list(sample))
        return summarize_cases(CASES, labels)

    monkeypatch.setattr("segloop.planning.plan.dataset_fingerprint", fake_fingerprint)
    folder = str(tmp_path / "model" / "segmentation")
    preset = PRESETS["unetr_cpu"]
    assert load_or_make_plan(folder, preset, [], DEFAULT_LABELS, trained=False) is None  # no labels yet
    assert load_or_make_plan(folder, preset, pairs, DEFAULT_LABELS, trained=True) is None  # weights already shaped
    plan = load_or_make_plan(folder, preset, pairs, DEFAULT_LABELS, trained=False)
    assert plan["target_spacing"] == [2.0, 2.0, 3.0] and len(calls) == 1
    assert json.load(open(os.path.join(folder, PLAN_FILE)))["roi_size"] == plan["roi_size"]
    # frozen: more labels later do not re-plan, and a plan for another network is not used
    assert load_or_make_plan(folder, preset, pairs * 3, DEFAULT_LABELS, trained=True) == plan and len(calls) == 1
    assert load_or_make_plan(folder, PRESETS["dynunet_cpu"], pairs, DEFAULT_LABELS, trained=True) is None
    assert even_sample(list(range(40)), 5) == [0, 10, 20, 29, 39]


def test_plan_option_is_validated():
    assert parse_options({}).plan == "off"
    assert parse_options({"plan": "AUTO"}).plan == "auto"
    with pytest.raises(ValueError, match="plan must be auto or off"):
        parse_options({"plan": "yes"})


@pytest.mark.parametrize("name", ["unetr_cpu", "dynunet_cpu", "swinunetr_cpu", "segresnet"])
def test_every_network_gives_a_unit_embedding_for_diversity_scoring(name):
    from segloop.scoring.embedding import image_embedding

    roi = PRESETS[name].roi_size if name != "segresnet" else (64, 64, 64)
    net = build_network(name, 5, roi)
    a = image_embedding(net, torch.rand(1, 70, 70, 40), roi, "cpu")
    b = image_embedding(net, torch.rand(1, 70, 70, 40) ** 3, roi, "cpu")
    assert np.linalg.norm(a) == pytest.approx(1.0, abs=1e-4) and a != b


def test_a_process_the_server_started_reads_the_plan_but_never_makes_one(tmp_path, monkeypatch):
    from segloop.server.lifecycle import SERVER_PID_ENV, in_server_subprocess

    monkeypatch.delenv(SERVER_PID_ENV, raising=False)
    assert not in_server_subprocess()
    monkeypatch.setenv(SERVER_PID_ENV, str(os.getpid()))
    assert not in_server_subprocess()  # the server itself
    monkeypatch.setenv(SERVER_PID_ENV, str(os.getpid() + 1))
    assert in_server_subprocess()
    monkeypatch.setattr("segloop.planning.plan.dataset_fingerprint", lambda sample, labels: summarize_cases(CASES, labels))
    folder = str(tmp_path / "segmentation")
    pairs = [("a.nii.gz", "a_label.nii.gz")]
    preset = PRESETS["unetr_cpu"]
    assert load_or_make_plan(folder, preset, pairs, DEFAULT_LABELS, trained=False, may_create=False) is None
    made = load_or_make_plan(folder, preset, pairs, DEFAULT_LABELS, trained=False)
    assert load_or_make_plan(folder, preset, pairs, DEFAULT_LABELS, trained=False, may_create=False) == made


def test_the_app_config_plans_from_the_datastore_and_serves_and_trains_at_the_plan(tmp_path):
    """Through the app's own TaskConfig on generated cases: MONAI's DataAnalyzer fingerprint, the
    plan file, and the infer task, the trainer and the network all at the planned geometry."""
    from segloop.data.sample import write_sample_data
    from segloop_bench.training import build_task_config

    root = str(tmp_path)
    write_sample_data(root, cases=3, seed=3, labelled=2, progress=None, shape=(96, 96, 48), spacing=(3.0, 3.0, 4.0))
    studies = f"{root}/studies"
    config = build_task_config(studies, {"plan": "auto"})
    plan = config.plan
    assert plan is not None and plan["fingerprint"]["cases"] == 2
    assert plan["fingerprint"]["spacing_mm"] == [3.0, 3.0, 4.0]
    assert plan["target_spacing"] == [3.0, 3.0, 4.0]  # never finer than the data
    infer, trainer = config.infer(), config.trainer()
    assert tuple(infer.roi_size) == tuple(trainer.roi_size) == tuple(plan["roi_size"])
    assert config.network.feat_size == tuple(v // 16 for v in plan["roi_size"])  # the UNETR was built for the window
    assert trainer.hu_window == tuple(plan["hu_window"])
    assert os.path.exists(os.path.join(studies, ".segloop", "model", "segmentation", PLAN_FILE))
    assert build_task_config(studies, {"plan": "auto", "roi_size": "[64,64,64]"}).plan is None  # set by hand
