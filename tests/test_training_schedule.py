"""Learning-rate schedule and gradient clipping of training runs (segloop.trainers.handlers)."""

import math

import pytest
import torch

from segloop.trainers.handlers import BudgetCosineLR, clip_gradients


class _Progress:
    def __init__(self):
        self.done = 0.0

    def fraction(self):
        return self.done


def test_learning_rate_warms_up_then_decays_over_the_budget():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=3e-3)
    progress = _Progress()
    schedule = BudgetCosineLR(optimizer, progress, warmup=0.1, floor=0.02)
    rates = []
    for done in (0.0, 0.05, 0.1, 0.55, 1.0):
        progress.done = done
        schedule._on_iteration(None)
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates[0] == pytest.approx(0.02 * 3e-3)  # starts at the floor
    assert rates[0] < rates[1] < rates[2] == pytest.approx(3e-3)  # linear warm-up to the base rate
    assert rates[3] == pytest.approx(3e-3 * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * 0.5))))  # half-way down
    assert rates[4] == pytest.approx(0.02 * 3e-3)  # the run ends at the floor


def test_gradients_are_clipped_to_the_norm_before_each_step():
    weight = torch.nn.Parameter(torch.zeros(4))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    clip_gradients(optimizer, max_norm=1.0)
    weight.grad = torch.full((4,), 10.0)  # norm 20
    optimizer.step()
    assert torch.linalg.vector_norm(weight.detach()).item() == pytest.approx(1.0, rel=1e-4)
    weight.grad = torch.full((4,), 0.1)  # norm 0.2: under the limit, untouched
    before = weight.detach().clone()
    optimizer.step()
    assert torch.allclose(before - weight.detach(), torch.full((4,), 0.1))
