"""Prompt-model precision: bfloat16 autocast only where the hardware computes it natively."""

import pytest
import torch

from segloop.networks import precision
from segloop.networks.precision import AutocastInferer, autocast_for, native_bfloat16

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


def test_autocast_inferer_hands_back_float32_logits(monkeypatch):
    monkeypatch.setattr(precision, "native_bfloat16", lambda device: True)
    conv = torch.nn.Conv3d(1, 1, 3, padding=1)
    x = torch.rand(1, 1, 8, 8, 8)
    out = AutocastInferer(CPU)(x, conv)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert torch.allclose(out, conv(x), atol=0.05)  # bfloat16 keeps about 3 significant digits


@pytest.mark.parametrize("native", [True, False])
def test_prompt_training_uses_bfloat16_on_a_cpu_that_has_it(monkeypatch, native):
    from types import SimpleNamespace

    from segloop.trainers import prompt as prompt_trainer

    monkeypatch.setattr(prompt_trainer, "native_bfloat16", lambda device: native)
    task = object.__new__(prompt_trainer.PromptTrainer)  # only the precision option matters here
    task.amp_mode = "auto"
    context = SimpleNamespace(device="cpu")
    assert isinstance(task.train_inferer(context), AutocastInferer) == native
    task.amp_mode = "off"
    assert not isinstance(task.train_inferer(context), AutocastInferer)
