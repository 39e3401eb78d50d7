"""Exact-answer evaluation on Gaussian mixtures: an exact energy model scores perfectly."""

import math

import pytest
import torch
from torch import nn

import boltzgen.systems as systems
from boltzgen.diffusion import VPSchedule
from boltzgen.evaluate import marginal_ess, mode_weights


class ExactModel(nn.Module):
    """E(y, t) = −log p_t(y) + const of the mixture in model coordinates y = x / length_scale."""

    def __init__(self, target, length_scale, shift=0.0, width=1.0):
        super().__init__()
        from boltzgen.evaluate import rescaled

        self.target = rescaled(target, length_scale)
        self.schedule, self.t_min = VPSchedule(), 1e-3
        self.shift, self.width = shift, width  # add `shift` to the energy of mode 1; widen modes
        self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def energy(self, y, t):
        comp = self.target._component_log_prob(
            y.to(torch.float64), self.schedule.alpha(torch.tensor(t)), self.schedule.sigma2(torch.tensor(t))
        )
        stds = self.target.stds
        if self.width != 1.0:  # every component's variance multiplied by width² (same normalisation per mode)
            a, s2 = self.schedule.alpha(torch.tensor(t)), self.schedule.sigma2(torch.tensor(t))
            var = a**2 * stds**2 + s2
            diff = y.unsqueeze(1) - a * self.target.means
            comp = -0.5 * ((diff**2) / (self.width**2 * var) + torch.log(2 * math.pi * self.width**2 * var)).sum(-1)
        comp = comp + self.target.weights.log()
        comp[:, 1] = comp[:, 1] - self.shift
        return -torch.logsumexp(comp, 1)


@pytest.mark.parametrize("scales", [(1.0,), (0.7, 1.0, 1.5)])
def test_mode_weights_of_the_exact_model(scales):
    target = systems.load("gmm-two-modes", dim=2)
    model = ExactModel(target, 2.0)
    out = mode_weights(model, target, length_scale=2.0, n_per_mode=2048, scales=scales)
    assert out["max_relative_error"] < 1e-6
    assert out["weights"][0] == pytest.approx(2 / 3, abs=1e-3)
    shifted = mode_weights(
        ExactModel(target, 2.0, shift=math.log(2.0)), target, length_scale=2.0, n_per_mode=2048, scales=scales
    )
    assert shifted["weights"][0] == pytest.approx(0.8, abs=0.01)  # 2 : 1/2 after the shift


def test_defensive_proposal_handles_wider_model_modes():
    target = systems.load("gmm-two-modes", dim=2)
    model = ExactModel(target, 1.0, width=1.4)  # same weights, modes 1.4 times too wide
    mixed = mode_weights(model, target, n_per_mode=4096)
    plain = mode_weights(model, target, n_per_mode=4096, scales=(1.0,))
    assert min(mixed["ess_fraction"]) > 2 * min(plain["ess_fraction"])
    assert mixed["weights"][0] == pytest.approx(2 / 3, abs=0.02)
    with pytest.raises(ValueError):
        mode_weights(model, target, n_per_mode=16, scales=(0.0,))


def test_marginal_ess_of_the_exact_model_is_one():
    target = systems.load("gmm-two-modes", dim=2)
    out = marginal_ess(ExactModel(target, 1.0), target, [1e-3, 0.5], n=512)
    assert all(e["ess_fraction"] == pytest.approx(1.0) for e in out)
