"""Float32 CPU training holds the network and its batches channels-last (segloop.networks.memory_format)."""

import copy

import pytest
import torch
import torch.nn.functional as F

from segloop.networks import build_network, memory_format
from segloop.networks.memory_format import ChannelsLastInferer, to_channels_last, to_default_layout, trains_channels_last

CHANNELS_LAST = torch.channels_last_3d


@pytest.mark.parametrize("native", [True, False])
def test_only_float32_cpu_training_is_channels_last(monkeypatch, native):
    monkeypatch.setattr(memory_format, "native_bfloat16", lambda device: native)
    assert trains_channels_last(torch.device("cpu"), "auto") == (not native)  # bfloat16 autocast keeps the default layout
    assert trains_channels_last(torch.device("cpu"), "off")
    assert trains_channels_last("cpu", "float16")  # a GPU mode: float32 on a CPU
    assert not trains_channels_last(torch.device("cuda"), "off")


def gradients(network, x, y, inferer):
    """Gradients of one cross-entropy step of ``network`` (float32 after the loss)."""
    network.zero_grad()
    F.cross_entropy(inferer(x, network).float(), y).backward()
    return {name: p.grad.float().clone() for name, p in network.named_parameters() if p.grad is not None}


def worst_error(got, exact):
    """The largest relative error (Frobenius norm) of one parameter's gradient against ``exact``."""
    return max(((grad - exact[name]).norm() / exact[name].norm()).item() for name, grad in got.items())


def test_the_channels_last_step_is_as_exact_as_the_default_layout_and_keeps_the_optimisers_parameters():
    torch.manual_seed(0)
    network = build_network("unetr_cpu", 3, (32, 32, 32))
    x, y = torch.rand(2, 1, 32, 32, 32), torch.randint(0, 3, (2, 32, 32, 32))
    exact = gradients(copy.deepcopy(network).double(), x.double(), y, lambda inputs, net: net(inputs))
    default = gradients(network, x, y, lambda inputs, net: net(inputs))
    optimiser = torch.optim.AdamW(network.parameters())
    parameters = [id(p) for p in network.parameters()]

    to_channels_last(network)
    assert [id(p) for p in network.parameters()] == parameters  # the optimiser's own tensors
    assert [id(p) for g in optimiser.param_groups for p in g["params"]] == parameters
    convs = [m for m in network.modules() if isinstance(m, torch.nn.Conv3d)]
    assert all(m.weight.is_contiguous(memory_format=CHANNELS_LAST) for m in convs)
    seen = []
    spy = convs[1].register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous(memory_format=CHANNELS_LAST)))
    channels_last = gradients(network, x, y, ChannelsLastInferer())
    spy.remove()
    assert seen == [True]
    # Against float64 gradients, within float32 rounding as the default layout is (which is off by
    # up to about 1% on a thin convolution's weights).
    assert channels_last.keys() == default.keys()
    assert worst_error(channels_last, exact) <= 2 * max(worst_error(default, exact), 1e-3)
    optimiser.step()

    to_default_layout(network)
    assert all(m.weight.is_contiguous() for m in convs)
    assert [id(p) for p in network.parameters()] == parameters


def test_a_float32_cpu_training_run_trains_channels_last_and_hands_back_the_default_layout(tmp_path):
    """Through the app's config and trainer: every step's batch reaches the network channels-last and
    its weights are; after the run the network (which the process's inference may share) is back in the
    default layout and the published version's weights load into a fresh network."""
    from segloop.data.sample import write_sample_data
    from segloop.server.datastore import SegLoopDatastore
    from segloop_bench.training import build_task_config

    root = str(tmp_path)
    write_sample_data(root, cases=2, seed=3, labelled=2, progress=None, shape=(64, 64, 32), spacing=(6.0, 6.0, 8.0))
    studies = f"{root}/studies"
    config = build_task_config(studies, {"roi_size": "[32,32,32]", "target_spacing": "[6,6,6]", "amp": "off"})
    trainer = config.trainer()
    # the first convolution of the CT itself (the layers after a normalisation get its layout)
    conv = next(m for m in trainer._network.modules() if isinstance(m, torch.nn.Conv3d) and m.kernel_size == (3, 3, 3))
    layouts = []
    spy = conv.register_forward_pre_hook(lambda m, args: layouts.append(
        (torch.is_grad_enabled(), args[0].is_contiguous(memory_format=CHANNELS_LAST), m.weight.is_contiguous(memory_format=CHANNELS_LAST))))
    trainer({"max_iterations": 2, "val_split": 0.0, "seed": 0}, SegLoopDatastore(studies, labels=config.labels))
    spy.remove()
    training = [layout for grad, *layout in layouts if grad]
    assert len(training) == 2 and all(layout == [True, True] for layout in training), layouts
    assert all(m.weight.is_contiguous() for m in trainer._network.modules() if isinstance(m, torch.nn.Conv3d))
    assert config.registry.state()["versions"][-1]["status"] in ("promoted", "first")
    fresh = build_task_config(studies, {"roi_size": "[32,32,32]", "target_spacing": "[6,6,6]", "amp": "off"})
    path, _ = fresh.infer()({"image": f"{studies}/case_000.nii.gz"})
    assert path.endswith(".nii.gz")
