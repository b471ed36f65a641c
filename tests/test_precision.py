"""Inference precision: bfloat16 autocast only where the hardware computes it natively; float32 CPU
passes with their convolutions on oneDNN."""

import pytest
import torch

from segloop.networks import precision
from segloop.networks.onednn import onednn_convolutions
from segloop.networks.precision import AutocastInferer, autocast_for, inference_context, native_bfloat16
from segloop.networks.prompt import build_prompt_network

CPU = torch.device("cpu")


def conv_dtype(context) -> torch.dtype:
    conv = torch.nn.Conv3d(2, 2, 3)
    with context:
        return conv(torch.rand(1, 2, 6, 6, 6)).dtype


@pytest.mark.parametrize("native", [True, False])
def test_auto_runs_bfloat16_on_a_cpu_only_where_it_is_native(monkeypatch, native):
    monkeypatch.setattr(precision, "native_bfloat16", lambda device: native)
    assert conv_dtype(autocast_for(CPU, "auto")) == (torch.bfloat16 if native else torch.float32)
    assert conv_dtype(autocast_for(CPU, "off")) == torch.float32
    assert conv_dtype(autocast_for(CPU, "float16")) == torch.float32  # float16 is a GPU mode


def test_native_bfloat16_follows_the_cpu_instruction_sets(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert not native_bfloat16(CPU)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert native_bfloat16(CPU) == torch.backends.mkldnn.is_available()
    assert not native_bfloat16(torch.device("meta"))


def test_a_onednn_isa_cap_below_bfloat16_keeps_float32(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # how a lab (or a benchmark) emulates an older CPU
    assert not native_bfloat16(CPU)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx512_core_bf16")
    assert native_bfloat16(CPU) == torch.backends.mkldnn.is_available()
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX512_CORE")
    assert not native_bfloat16(CPU)


def test_autocast_inferer_hands_back_float32_logits(monkeypatch):
    monkeypatch.setattr(precision, "native_bfloat16", lambda device: True)
    conv = torch.nn.Conv3d(1, 1, 3, padding=1)
    x = torch.rand(1, 1, 8, 8, 8)
    out = AutocastInferer(CPU)(x, conv)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert torch.allclose(out, conv(x), atol=0.05)  # bfloat16 keeps about 3 significant digits


@pytest.mark.parametrize("trainer", ["segmentation", "prompt"])
@pytest.mark.parametrize("native", [True, False])
def test_training_uses_bfloat16_on_a_cpu_that_has_it(monkeypatch, native, trainer):
    from types import SimpleNamespace

    from segloop.trainers import prompt as prompt_trainer
    from segloop.trainers import segmentation as segmentation_trainer

    monkeypatch.setattr(segmentation_trainer, "native_bfloat16", lambda device: native)
    cls = {"segmentation": segmentation_trainer.SegmentationTrainer, "prompt": prompt_trainer.PromptTrainer}[trainer]
    task = object.__new__(cls)  # only the precision option matters here
    task.amp_mode = "auto"
    context = SimpleNamespace(device="cpu")
    assert isinstance(task.train_inferer(context), AutocastInferer) == native
    task.amp_mode = "off"
    assert not isinstance(task.train_inferer(context), AutocastInferer)


def conv_inputs_on_onednn(network: torch.nn.Module, run) -> list:
    """Whether each Conv3d of ``network`` got a oneDNN tensor while ``run()`` ran (the spy hooks
    are registered last, so they see the input the other hooks hand on)."""
    seen = []
    spies = [
        m.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_mkldnn))
        for m in network.modules() if isinstance(m, torch.nn.Conv3d)
    ]
    run()
    for spy in spies:
        spy.remove()
    return seen


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")
def test_float32_cpu_inference_runs_every_convolution_on_onednn_with_the_same_logits():
    from monai.data import MetaTensor

    torch.manual_seed(0)
    network = build_prompt_network("prompt_cpu", 2).eval()
    x = MetaTensor(torch.rand(1, 5, 16, 16, 16))  # the zoom passes hand the network a MetaTensor
    label = torch.tensor([1])
    with torch.no_grad():
        native = network(x, label=label)
        with onednn_convolutions(network):
            inside = conv_inputs_on_onednn(network, lambda: network(x, label=label))
            routed = network(x, label=label)
        after = conv_inputs_on_onednn(network, lambda: network(x, label=label))
    assert inside and all(inside)
    assert not any(after)  # the hooks are gone on exit
    assert not routed.is_mkldnn and routed.dtype == torch.float32
    assert torch.allclose(routed, native, atol=1e-4)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")
def test_onednn_routing_steps_aside_for_training_and_for_bfloat16():
    torch.manual_seed(0)
    network = build_prompt_network("prompt_cpu", 2)
    x = torch.rand(1, 5, 16, 16, 16)
    label = torch.tensor([1])
    with onednn_convolutions(network):
        training = conv_inputs_on_onednn(network, lambda: network(x, label=label).sum().backward())
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            bfloat16 = conv_inputs_on_onednn(network, lambda: network(x, label=label))
    assert training and not any(training)
    assert network.image_encoder.encoder.conv_init.weight.grad is not None
    assert bfloat16 and not any(bfloat16)


@pytest.mark.parametrize("native", [True, False])
def test_inference_context_routes_float32_cpu_passes_only(monkeypatch, native):
    monkeypatch.setattr(precision, "native_bfloat16", lambda device: native)
    network = build_prompt_network("prompt_cpu", 2).eval()
    x = torch.rand(1, 5, 16, 16, 16)

    def routed(mode, onednn=True):
        with torch.no_grad(), inference_context(network, CPU, mode, onednn):
            seen = conv_inputs_on_onednn(network, lambda: network(x, label=torch.tensor([1])))
        return all(seen)

    assert routed("off") == torch.backends.mkldnn.is_available()
    assert not routed("off", onednn=False)
    assert routed("auto") == (not native and torch.backends.mkldnn.is_available())
