"""The Laplace-proposal estimate of a known energy's noisy marginal, against exact answers."""

import math

import pytest
import torch

from boltzgen.diffusion import gaussian_log_prob, project_mean_free
from boltzgen.diffusion.laplace import finite_difference_hessian, laplace_log_marginal, marginal_pairs


def _harmonic(k):
    def energy_and_grad(x):
        return 0.5 * k * x.pow(2).flatten(1).sum(1), k * x

    return energy_and_grad


@pytest.mark.parametrize("mean_free", [False, True])
def test_harmonic_marginal_is_exact(mean_free):
    """u = k|x|²/2: ∫ exp(−u) N(y; a x, v) dx = (2π/k)^(d/2) N(y; 0, v + a²/k), and every weight is equal."""
    k, a, v = 7.0, 0.8, 0.05
    y = torch.randn(6, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = project_mean_free(y) if mean_free else y
    r = laplace_log_marginal(_harmonic(k), y, a, v, mean_free=mean_free, generator=torch.Generator().manual_seed(1))
    d = 9 if mean_free else 12
    exact = 0.5 * d * math.log(2 * math.pi / k) + gaussian_log_prob(y, 0.0, v + a * a / k, mean_free=mean_free)
    torch.testing.assert_close(r.log_p, exact, rtol=0, atol=1e-9)
    assert float(r.log_w.std(1).max()) < 1e-9 and bool(r.converged.all())
    # Tweedie: the proposal's mean gives the exact score of the Gaussian marginal, -y / (v + a²/k)
    torch.testing.assert_close((a * r.mode - y) / v, -y / (v + a * a / k), rtol=0, atol=1e-8)
    if mean_free:
        assert float(r.x.mean(-2).abs().max()) < 1e-12  # draws stay on the zero-centre subspace


def test_anharmonic_marginal_against_quadrature():
    """A quartic well in 1D: the estimate from a start far from the mode matches a quadrature."""

    def quartic(x):
        return (x.pow(4) + 2 * x.pow(2) - x).flatten(1).sum(1), 4 * x.pow(3) + 4 * x - 1

    a, v = 0.95, 0.02
    y = torch.tensor([[0.3], [1.2], [-0.7]], dtype=torch.float64)
    r = laplace_log_marginal(
        quartic, y, a, v, start=torch.full_like(y, 3.0), n_draws=4000, generator=torch.Generator().manual_seed(2)
    )
    xs = torch.linspace(-4, 4, 400001, dtype=torch.float64)
    for i in range(3):
        f = -(xs**4 + 2 * xs**2 - xs) - (y[i, 0] - a * xs) ** 2 / (2 * v) - 0.5 * math.log(2 * math.pi * v)
        exact = float(torch.logsumexp(f, 0) + math.log(float(xs[1] - xs[0])))
        assert abs(float(r.log_p[i]) - exact) < 3e-3
    assert bool(r.converged.all())


def test_hessian_by_differences():
    """The central-difference Hessian of a coupled quartic against its formula."""
    m = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)

    def grad(x):
        return x @ m + x.pow(3)

    x = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    h = finite_difference_hessian(grad, x, 1e-4)
    exact = m + torch.diag_embed(3 * x.pow(2))
    torch.testing.assert_close(h, exact, rtol=0, atol=1e-7)


def test_bad_arguments():
    y = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="n_draws"):
        laplace_log_marginal(_harmonic(1.0), y, 1.0, 0.1, n_draws=0)
    with pytest.raises(ValueError, match="a > 0 and v > 0"):
        laplace_log_marginal(_harmonic(1.0), y, 1.0, 0.0)


def test_marginal_pairs_match_the_exact_gmm_marginal_and_its_loss_vanishes():
    """Two-mode GMM: log p̂_t(y) − log p_t(y) is one constant per level (the normaliser), so the
    marginal-matching loss of the exact marginal model is zero to the estimate's noise."""
    from boltzgen.diffusion import VPSchedule
    from boltzgen.losses import marginal_loss
    from boltzgen.sampling import ExactMarginalModel
    from boltzgen.systems import load

    target = load("gmm-two-modes", dim=2)
    schedule = VPSchedule()
    exact = ExactMarginalModel(target, schedule)
    x0 = target.sample(64, torch.Generator().manual_seed(4)).double()

    def energy_and_grad(x):
        u, force = target.reduced_energy_and_force(x)
        return u, -force

    times = [1e-3, 1e-2, 0.05]
    y, log_p, t, spread, score = marginal_pairs(
        energy_and_grad, x0, schedule, times, generator=torch.Generator().manual_seed(5)
    )
    assert bool((spread < 0.05).all())
    assert y.shape == (3, 64, 2) and log_p.shape == (3, 64) and score.shape == (3, 64, 2)
    for i, ti in enumerate(times):
        tt = torch.full((64,), ti, dtype=torch.float64)
        resid = log_p[i] + exact.energy(y[i], tt)
        assert float(resid.std()) < 1e-3
        # the Laplace score against the exact one, relative to the score's own size (1/sigma_t)
        _, exact_score = exact.energy_and_score(y[i], tt)
        sigma = float(schedule.sigma(torch.tensor(ti)))
        err = (sigma * (score[i] - exact_score)).abs()
        assert float(err.max()) < 0.02 and float(err.mean()) < 1e-3
    assert float(marginal_loss(exact, y, t, log_p)) < 1e-6
    assert float(marginal_loss(exact, y, t, log_p, score).detach()) < 1e-5
    # a wrong score shows, on the DSM scale
    assert float(marginal_loss(exact, y, t, log_p, score + 1.0).detach()) > 1e-3
