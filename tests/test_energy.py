"""EnergyModel against exact Gaussian algebra, finite differences and itself."""

import json
import math

import pytest
import torch
from torch import nn

from boltzgen.diffusion import VESchedule, VPSchedule, gaussian_log_prob, project_mean_free
from boltzgen.energy import EnergyModel, LogNormaliser
from boltzgen.systems.gmm import GaussianMixture
from boltzgen.testing import CallCounter

F64 = torch.float64


class TinyNet(nn.Module):
    """Small non-invariant MLP net(x, t) -> (B,); ``zero_last`` gives the zero network."""

    def __init__(self, event_shape, hidden=16, zero_last=False, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        d = math.prod(event_shape)
        self.layers = nn.Sequential(
            nn.Linear(d + 1, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1)
        )
        if zero_last:
            nn.init.zeros_(self.layers[-1].weight)
            nn.init.zeros_(self.layers[-1].bias)

    def forward(self, x, t):
        return self.layers(torch.cat([x.flatten(1), t[:, None]], dim=1)).squeeze(-1)


def _model(event_shape, zero=False, dtype=F64, **options):
    model = EnergyModel(TinyNet(event_shape, zero_last=zero), event_shape, **options)
    if not zero:
        with torch.no_grad():
            for p in model.normaliser.parameters():
                p.normal_(generator=torch.Generator().manual_seed(7))
    return model.to(dtype)


@pytest.mark.parametrize("schedule", [VPSchedule(), VESchedule(0.01, 20.0, spacing="edm")], ids=["vp", "ve"])
def test_zero_network_is_the_exact_gaussian_marginal(schedule):
    sigma_data = 0.7
    model = _model((3,), zero=True, schedule=schedule, sigma_data=sigma_data)
    gauss = GaussianMixture([[0.0, 0.0, 0.0]], [sigma_data], [1.0], standardise=False)
    g = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(6, 3, generator=g, dtype=F64)
    t = torch.tensor([1e-3, 0.01, 0.1, 0.3, 0.7, 1.0], dtype=F64)
    exact = gauss.log_prob_t(x, t, schedule)
    # -E + F is the normalised log-density; E alone matches -log p_t up to a constant of t
    torch.testing.assert_close(model.log_prob(x, t), exact, rtol=1e-12, atol=1e-12)
    e = model.energy(x, 0.2)
    diff = e + gauss.log_prob_t(x, 0.2, schedule)
    torch.testing.assert_close(diff, diff[:1].expand(6), rtol=0, atol=1e-12)
    torch.testing.assert_close(model.score(x, t), gauss.score_t(x, t, schedule), rtol=1e-12, atol=1e-12)


def test_zero_network_molecule_is_the_mean_free_gaussian_marginal():
    n_atoms, sigma_data = 5, 0.3
    model = _model((n_atoms, 3), zero=True, sigma_data=sigma_data)
    assert model.mean_free and model.dim == 3 * (n_atoms - 1)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, n_atoms, 3, generator=g, dtype=F64) + 3.0  # not centred: the COM is ignored
    t = torch.tensor([0.001, 0.2, 0.5, 1.0], dtype=F64)
    c2 = model.schedule.alpha(t) ** 2 * sigma_data**2 + model.schedule.sigma2(t)
    exact = gaussian_log_prob(x, 0.0, c2, mean_free=True)
    torch.testing.assert_close(model.log_prob(x, t), exact, rtol=1e-12, atol=1e-12)
    score = model.score(x, t)
    torch.testing.assert_close(score, -project_mean_free(x) / c2[:, None, None], rtol=1e-12, atol=1e-12)
    assert score.sum(1).abs().max() < 1e-12


@pytest.mark.parametrize("event_shape", [(3,), (4, 3)])
@pytest.mark.parametrize("output_scale", ["none", "edm"])
def test_energy_and_score_is_one_pass_and_matches_separate_calls(event_shape, output_scale):
    model = _model(event_shape, output_scale=output_scale)
    model.net = CallCounter(model.net)
    g = torch.Generator().manual_seed(2)
    x = torch.randn((5,) + event_shape, generator=g, dtype=F64)
    t = torch.rand(5, generator=g, dtype=F64)
    e, s = model.energy_and_score(x, t)
    assert len(model.net.calls) == 1
    assert e.shape == (5,) and s.shape == x.shape and not e.requires_grad and not s.requires_grad
    torch.testing.assert_close(e, model.energy(x, t).detach())
    torch.testing.assert_close(s, model.score(x, t))
    # a float time equals a constant tensor of times
    torch.testing.assert_close(model.energy(x, 0.4), model.energy(x, torch.full((5,), 0.4, dtype=F64)))
    # with create_graph the score carries a graph to the parameters
    e, s = model.energy_and_score(x, t, create_graph=True)
    (s**2).sum().backward()
    assert model.net.inner.layers[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("event_shape", [(3,), (4, 3)])
def test_score_is_minus_energy_gradient_by_finite_differences(event_shape):
    model = _model(event_shape, output_scale="edm", schedule=VESchedule())
    g = torch.Generator().manual_seed(3)
    x = torch.randn((3,) + event_shape, generator=g, dtype=F64)
    t = torch.tensor([0.05, 0.4, 0.9], dtype=F64)
    score = model.score(x, t).reshape(3, -1)
    flat = x.reshape(3, -1)
    h = 1e-6
    for j in range(flat.shape[1]):
        step = torch.zeros_like(flat)
        step[:, j] = h
        with torch.no_grad():
            fd = (model.energy((flat + step).reshape(x.shape), t) - model.energy((flat - step).reshape(x.shape), t)) / (
                2 * h
            )
        torch.testing.assert_close(score[:, j], -fd, rtol=1e-6, atol=1e-6)


def test_molecular_energy_is_translation_invariant():
    model = _model((4, 3))
    x = torch.randn(3, 4, 3, dtype=F64)
    moved = x + torch.tensor([0.3, -1.0, 2.0], dtype=F64)
    torch.testing.assert_close(model.energy(moved, 0.3), model.energy(x, 0.3))
    with pytest.raises(ValueError, match="shape"):
        model.energy(torch.randn(3, 5, 3, dtype=F64), 0.3)


@pytest.mark.parametrize("kind", ["grid", "mlp", "none"])
def test_state_dict_and_config_round_trip(kind):
    model = _model(
        (4, 3),
        log_normaliser=kind,
        schedule=VESchedule(spacing="edm"),
        sigma_data=0.5,
        t_min=0.01,
        n_levels=9,
        net_config={"name": "tiny", "hidden": 16},
    )
    if kind == "mlp":
        with torch.no_grad():
            model.normaliser.mlp[-1].weight.normal_()
    config = json.loads(json.dumps(model.config()))
    fresh = EnergyModel.from_config(config, lambda cfg: TinyNet((4, 3), hidden=cfg["hidden"], seed=11)).to(F64)
    x = torch.randn(5, 4, 3, dtype=F64)
    t = torch.linspace(0.01, 1.0, 5, dtype=F64)
    assert not torch.equal(fresh.energy(x, t), model.energy(x, t))
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.energy(x, t), model.energy(x, t))
    assert torch.equal(fresh.log_normaliser(t), model.log_normaliser(t))
    assert fresh.config() == model.config()
    assert fresh.t_min == 0.01 and fresh.schedule == model.schedule and fresh.mean_free


def test_log_normaliser_grid_interpolates_linearly_and_has_its_own_group():
    model = _model((2,), zero=True, t_min=0.1, n_levels=4)  # geometric grid 0.1, 0.215, 0.464, 1.0
    grid = model.normaliser.grid.to(F64)
    torch.testing.assert_close(
        grid, torch.tensor([0.1, 0.1 ** (2 / 3), 0.1 ** (1 / 3), 1.0], dtype=F64), rtol=1e-6, atol=0
    )
    values = torch.tensor([0.0, 3.0, -3.0, 1.0], dtype=F64)
    with torch.no_grad():
        model.normaliser.values.copy_(values)
    mid = 0.5 * (grid[:-1] + grid[1:])
    t = torch.cat([grid, mid, torch.tensor([0.0, 1.5], dtype=F64)])
    gauss = -0.5 * 2 * torch.log(2 * math.pi * model.c2(t))
    expected = torch.cat([values, 0.5 * (values[:-1] + values[1:]), values[[0, -1]]])
    torch.testing.assert_close(model.log_normaliser(t) - gauss, expected, rtol=0, atol=1e-6)
    # a model.pt of a uniform grid (written before the geometric one) keeps its grid and values
    old = _model((2,), zero=True, t_min=0.1, n_levels=4)
    old.load_state_dict({**model.state_dict(), "normaliser.grid": torch.tensor([0.1, 0.4, 0.7, 1.0])})
    t = torch.tensor([0.1, 0.25, 0.4, 0.55, 0.85, 1.0, 0.0, 1.5], dtype=F64)
    gauss = -0.5 * 2 * torch.log(2 * math.pi * old.c2(t))
    torch.testing.assert_close(
        old.log_normaliser(t) - gauss,
        torch.tensor([0.0, 1.5, 3.0, 0.0, -1.0, 1.0, 0.0, 1.0], dtype=F64),
        rtol=0,
        atol=1e-6,
    )
    assert model.log_normaliser(0.25).shape == ()
    groups = model.parameter_groups(1e-3, log_normaliser_lr=1e-2, weight_decay=1e-4)
    assert [gr["lr"] for gr in groups] == [1e-3, 1e-2]
    ids = [{id(p) for p in gr["params"]} for gr in groups]
    assert ids[1] == {id(model.normaliser.values)} and not ids[0] & ids[1]
    assert ids[0] | ids[1] == {id(p) for p in model.parameters()}
    assert LogNormaliser("none").forward(t).abs().max() == 0


def test_float32_default():
    model = EnergyModel(TinyNet((4, 3)), (4, 3))
    x = torch.randn(3, 4, 3)
    e, s = model.energy_and_score(x, 0.5)
    assert e.dtype == torch.float32 and s.dtype == torch.float32
    assert model.log_normaliser(0.5).dtype == torch.float32
    torch.testing.assert_close(
        model.denoise(x, 0.5), (x + model.schedule.sigma2(0.5).float() * s) / model.schedule.alpha(0.5).float()
    )
