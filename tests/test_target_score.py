"""Target score matching and the energy pin (boltzgen.losses) against exact answers.

The references are written here from the formulas: the diffusion marginal of a Gaussian is
N(0, (α² s² + σ²) I), that of a Gaussian mixture is the mixture of the diffused components.
"""

import math

import pytest
import torch
from torch import nn

from boltzgen.diffusion import VPSchedule
from boltzgen.energy import EnergyModel
from boltzgen.losses import compute_loss, dsm_loss, mean_stiffness, target_score_weight


class _Zero(nn.Module):
    """A network that outputs 0: EnergyModel is then exactly the marginal of N(0, σ_data² I)."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        return torch.zeros(x.shape[0], dtype=x.dtype) + 0.0 * self.unused


class _Mixture(nn.Module):
    """Exact energy −log p_t of a diffused 1-D-per-axis Gaussian mixture, plus θ·h(x, t).

    Implements the loss protocol (schedule, t_min, event_shape, mean_free, energy,
    energy_and_score, log_normaliser); θ = 0 is the exact model.
    """

    def __init__(self, means, std, weights, theta=0.0):
        super().__init__()
        self.schedule, self.t_min, self.mean_free = VPSchedule(), 1e-3, False
        self.means = torch.as_tensor(means, dtype=torch.float64)  # (K, D)
        self.event_shape = (self.means.shape[1],)
        self.std = float(std)
        self.log_w = torch.log(torch.as_tensor(weights, dtype=torch.float64))
        self.theta = nn.Parameter(torch.tensor(float(theta), dtype=torch.float64))

    def energy(self, x, t):
        t = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0])
        a, s2 = self.schedule.alpha(t)[:, None, None], self.schedule.sigma2(t)[:, None, None]
        var = a**2 * self.std**2 + s2
        comp = -0.5 * (((x[:, None, :] - a * self.means) ** 2) / var + torch.log(2 * math.pi * var)).sum(-1)
        exact = -torch.logsumexp(comp + self.log_w, dim=1)
        return exact + self.theta * torch.sin(x).sum(-1) * (1.0 + t)

    def energy_and_score(self, x, t, create_graph=False):
        x = x.detach().requires_grad_(True)
        e = self.energy(x, t)
        (g,) = torch.autograd.grad(e.sum(), x, create_graph=create_graph)
        return e, -g

    def log_normaliser(self, t):
        return torch.zeros_like(torch.as_tensor(t, dtype=torch.float64))

    def sample(self, n, generator):
        k = torch.multinomial(self.log_w.exp(), n, replacement=True, generator=generator)
        return self.means[k] + self.std * torch.randn(n, self.event_shape[0], generator=generator, dtype=torch.float64)

    def force(self, x0):
        """∇ log p_0(x0) = −∇u, from the exact energy at t = 0."""
        with torch.no_grad():
            theta = self.theta.item()
            self.theta.zero_()
        _, score = self.energy_and_score(x0, torch.zeros(x0.shape[0], dtype=torch.float64))
        with torch.no_grad():
            self.theta.fill_(theta)
        return score.detach()


def test_gaussian_mix_is_the_exact_score_with_zero_variance():
    """For N(0, s² I) and κ = 1/s² the regression target is the true score for every sample."""
    torch.manual_seed(0)
    s = 0.3
    model = EnergyModel(_Zero(), (4,), sigma_data=s, t_min=1e-3).double()
    g = torch.Generator().manual_seed(1)
    x0 = s * torch.randn(512, 4, generator=g, dtype=torch.float64)
    force = -x0 / s**2
    exact = dsm_loss(model, x0, g, k=2, force=force, kappa=1 / s**2)["dsm"].detach().detach()
    plain = dsm_loss(model, x0, torch.Generator().manual_seed(1), k=2)["dsm"].detach()
    assert float(exact) < 1e-20  # every per-sample residual vanishes (float64 round-off only)
    assert float(plain) > 0.05  # DSM's target is noisy
    # a wrong stiffness keeps the target unbiased but not exact
    assert (
        float(dsm_loss(model, x0, torch.Generator().manual_seed(1), k=2, force=force, kappa=1.0)["dsm"].detach()) > 1e-3
    )


def test_mean_stiffness_of_gaussian_samples():
    g = torch.Generator().manual_seed(2)
    s = 0.25
    x0 = s * torch.randn(20000, 3, generator=g, dtype=torch.float64)
    assert mean_stiffness(-x0 / s**2, mean_free=False) == pytest.approx(1 / s**2, rel=0.02)
    # molecules: the mean-free projection, d = 3 (N - 1)
    y = s * torch.randn(20000, 5, 3, generator=g, dtype=torch.float64)
    y = y - y.mean(1, keepdim=True)
    assert mean_stiffness(-y / s**2, mean_free=True) == pytest.approx(1 / s**2, rel=0.02)


def test_weight_limits():
    sched = VPSchedule()
    t = torch.tensor([1e-5, 0.5, 1.0], dtype=torch.float64)
    w = target_score_weight(sched, t, kappa=100.0)
    assert w[0] > 0.99 and w[2] < 1e-3 and bool((w[1:] < w[:-1]).all())
    with pytest.raises(ValueError, match="kappa"):
        target_score_weight(sched, t, kappa=0.0)


def _mean_gradient(model, kappa, n_batches=24, batch=2000, seed=3):
    """Mean and standard error over batches of d(loss)/dθ."""
    grads = []
    for i in range(n_batches):
        g = torch.Generator().manual_seed(seed + i)
        x0 = model.sample(batch, g)
        force = model.force(x0) if kappa is not None else None
        model.zero_grad()
        dsm_loss(model, x0, g, k=2, force=force, kappa=kappa)["total"].backward()
        grads.append(float(model.theta.grad))
    grads = torch.tensor(grads)
    return float(grads.mean()), float(grads.std() / math.sqrt(n_batches))


@pytest.mark.parametrize("kappa", [None, 1.0, 30.0, 1000.0])
def test_exact_mixture_energy_is_a_stationary_point(kappa):
    """At the exact energies the expected gradient vanishes for DSM and for every target-score mix;
    a perturbed model (θ ≠ 0) is pulled back."""
    means = [[-2.0, 0.0], [2.0, 1.0]]
    exact = _Mixture(means, 0.3, [0.3, 0.7], theta=0.0)
    mean, err = _mean_gradient(exact, kappa)
    assert abs(mean) < 4 * err + 1e-12, (mean, err)
    wrong = _Mixture(means, 0.3, [0.3, 0.7], theta=0.2)
    mean, err = _mean_gradient(wrong, kappa, n_batches=6)
    assert mean > 10 * err  # the loss grows with θ here, so the gradient pushes θ back to 0


def test_target_score_lowers_the_gradient_noise_at_small_t():
    """The point of the mix: at small σ_t the force target is far less noisy than −ε."""
    exact = _Mixture([[-2.0, 0.0], [2.0, 1.0]], 0.3, [0.3, 0.7])
    g = torch.Generator().manual_seed(9)
    x0 = exact.sample(4000, g)
    t = torch.full((4000, 1), 0.01, dtype=torch.float64)
    noise = torch.randn(4000, 1, 2, generator=g, dtype=torch.float64)
    plain = dsm_loss(exact, x0, t=t, noise=noise)["dsm"].detach()
    mixed = dsm_loss(exact, x0, t=t, noise=noise, force=exact.force(x0), kappa=1 / 0.3**2)["dsm"].detach()
    assert float(mixed) < 1e-3 * float(plain)  # a Gaussian mode of the stiffness κ: exact


def test_energy_pin_is_the_spread_of_e_minus_u():
    model = EnergyModel(_Zero(), (3,), sigma_data=1.0, t_min=1e-3).double()
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(64, 3, generator=g, dtype=torch.float64)
    e = model.energy(x0, torch.full((64,), 1e-3, dtype=torch.float64)).detach()
    u = e + 5.0  # the model's energy up to a constant: no spread
    out = compute_loss(model, x0, g, loss="dsm", k=1, energy=u, lambda_pin=1.0)
    assert float(out["pin"].detach()) < 1e-20
    r = torch.randn(64, generator=g, dtype=torch.float64)
    out = compute_loss(model, x0, g, loss="dsm", k=1, energy=u + r, lambda_pin=2.0)
    assert float(out["pin"].detach()) == pytest.approx(float(((r - r.mean()) ** 2).mean()), rel=1e-10)
    with pytest.raises(ValueError, match="energy pinning needs"):
        compute_loss(model, x0, g, loss="dsm", k=1, lambda_pin=1.0)
