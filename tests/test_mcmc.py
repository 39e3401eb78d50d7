"""MCMC kernels: exact moments on Gaussians, mean-free moves, +inf rejection, resumable driver."""

import math

import pytest
import torch

from boltzgen.sampling import (
    ChainState,
    energy_and_grad,
    hmc_step,
    init_chain_state,
    mala_step,
    project_mean_free,
    run_hmc,
    run_mala,
    run_mcmc,
)


def _gaussian(dim, seed=1):
    """Correlated Gaussian N(mu, cov): energy callable, mean, covariance (float64)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    cov = a @ a.T / dim + 0.2 * torch.eye(dim, dtype=torch.float64)
    mu = torch.linspace(-1.0, 2.0, dim, dtype=torch.float64)
    prec = torch.linalg.inv(cov)

    def energy(x):
        d = x - mu
        return 0.5 * ((d @ prec) * d).sum(-1)

    return energy, mu, cov


def _z_scores(samples, mu, cov):
    """Per-chain time averages of x and x x^T (chains independent) → z-scores of the exact
    mean and covariance entries. samples: (S, C, D)."""
    s = samples.to(torch.float64)
    first = s.mean(0)  # (C, D)
    second = torch.einsum("scd,sce->cde", s - mu, s - mu) / s.shape[0]  # (C, D, D)
    c = s.shape[1]
    z_mean = (first.mean(0) - mu) / (first.std(0) / math.sqrt(c))
    iu = torch.triu_indices(mu.shape[0], mu.shape[0])
    sec = second[:, iu[0], iu[1]]
    z_cov = (sec.mean(0) - cov[iu[0], iu[1]]) / (sec.std(0) / math.sqrt(c))
    return z_mean, z_cov


@pytest.mark.parametrize("dim,run", [(10, run_mala), (2, run_hmc)])
def test_gaussian_moments(dim, run):
    """Chains started from exact samples stay exact: mean and covariance within 4.5 sigma."""
    energy, mu, cov = _gaussian(dim)
    g = torch.Generator().manual_seed(0)
    chains = 256
    x0 = mu + torch.randn(chains, dim, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    res = run(x0, energy, 400, g, burn_in=100, thin=2, step_size=0.05)
    assert res.samples.shape == (200, chains, dim)
    assert res.energy.shape == (200, chains) and res.energy.dtype == torch.float64
    assert 0.4 < float(res.acceptance.mean()) < 0.8
    z_mean, z_cov = _z_scores(res.samples, mu, cov)
    assert z_mean.abs().max() < 4.5, z_mean
    assert z_cov.abs().max() < 4.5, z_cov


def test_mala_converges_from_far_start_and_adapts():
    """A 2-D correlated Gaussian from a point far away: burn-in reaches the target acceptance
    and the frozen chain has the exact mean."""
    energy, mu, cov = _gaussian(2, seed=3)
    g = torch.Generator().manual_seed(1)
    x0 = torch.full((128, 2), 10.0, dtype=torch.float64)
    res = run_mala(x0, energy, 600, g, burn_in=400, thin=3, step_size=1e-3)
    assert abs(float(res.acceptance.mean()) - 0.574) < 0.05
    assert torch.allclose(res.step_size, res.step_size[0].expand(128))  # global adaptation
    z_mean, z_cov = _z_scores(res.samples, mu, cov)
    assert z_mean.abs().max() < 4.5 and z_cov.abs().max() < 4.5


def test_per_chain_adaptation_gives_per_chain_step_sizes():
    energy, _, _ = _gaussian(2)
    g = torch.Generator().manual_seed(2)
    res = run_mala(torch.zeros(8, 2, dtype=torch.float64), energy, 10, g, burn_in=50, adapt="per_chain")
    assert res.step_size.shape == (8,) and res.step_size.unique().numel() > 1


def test_mean_free_keeps_centre_of_mass():
    """Mean-free MALA and HMC on a non-translation-invariant energy never move the centre."""
    torch.manual_seed(0)

    def energy(x):  # anchored, not translation invariant
        return 0.5 * (x - 0.3).pow(2).sum((-2, -1))

    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, 5, 3, generator=g, dtype=torch.float64)
    com = x.mean(1)
    for step in (mala_step, hmc_step):
        y = x
        for _ in range(20):
            y = step(y, energy, 0.1, g, mean_free=True).x
        assert torch.allclose(y.mean(1), com, atol=1e-12)
        assert not torch.allclose(y, x)
    assert torch.allclose(project_mean_free(x).mean(1), torch.zeros(16, 3, dtype=torch.float64), atol=1e-14)


def test_infinite_energy_proposals_rejected():
    """Proposals into a region of +inf (or NaN) energy are never accepted; a chain starting at
    +inf accepts the first finite proposal."""

    def energy(x):
        u = 0.5 * x.pow(2).sum(-1)
        return torch.where(
            x[:, 0] > 0.5, torch.full_like(u, math.inf), torch.where(x[:, 0] < -3, torch.full_like(u, math.nan), u)
        )

    g = torch.Generator().manual_seed(4)
    x = torch.zeros(500, 2, dtype=torch.float64)
    for _ in range(30):
        out = mala_step(x, energy, 0.5, g)
        assert bool((out.x[:, 0] <= 0.5).all()) and bool(torch.isfinite(out.energy).all())
        x = out.x
    out = hmc_step(x, energy, 0.5, g, n_leapfrog=5)
    assert bool((out.x[:, 0] <= 0.5).all())
    start = torch.ones(4, 2, dtype=torch.float64)  # u = +inf here
    u, grad = energy_and_grad(energy, start)
    assert bool(torch.isinf(u).all()) and bool((grad == 0).all())
    out = mala_step(start, energy, 1.0, g)
    moved = out.accepted
    assert bool(torch.isfinite(out.energy[moved]).all()) and bool(torch.isinf(out.energy[~moved]).all())


def test_energy_and_grad_forms_agree():
    """Autograd callable, (u, grad) callable and a TargetSystem give the same energies and gradients."""
    from boltzgen.systems import load

    target = load("lj13")
    x = target.positions.expand(3, 13, 3) + 0.01 * torch.randn(
        3, 13, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    u1, g1 = energy_and_grad(target, x)
    u2, g2 = energy_and_grad(target.reduced_energy, x)
    u3, g3 = energy_and_grad(lambda y: (u1, g1), x)
    assert torch.allclose(u1, u2) and torch.allclose(g1, g2) and torch.equal(g1, g3)


def test_resume_equals_uninterrupted():
    """Continuing from the state (and generator state) of a shorter run gives the full run exactly."""
    energy, _, _ = _gaussian(3)
    x0 = torch.zeros(4, 3, dtype=torch.float64)
    kw = dict(burn_in=30, thin=5, step_size=0.1)
    full = run_mala(x0, energy, 100, torch.Generator().manual_seed(7), **kw)
    g = torch.Generator().manual_seed(7)
    part = run_mala(x0, energy, 40, g, **kw)
    assert part.samples.shape[0] == 8
    state = ChainState(
        **{
            k: getattr(part.state, k)
            for k in ("x", "energy", "grad", "step_size", "step", "n_accepted", "samples", "sample_energy")
        }
    )
    rest = run_mcmc(None, energy, 100, g, state=state, **kw)
    assert torch.equal(rest.samples, full.samples) and torch.equal(rest.acceptance, full.acceptance)


def test_bad_input():
    energy, _, _ = _gaussian(2)
    x = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="positive"):
        mala_step(x, energy, 0.0)
    with pytest.raises(ValueError, match="shape"):
        mala_step(x, energy, torch.ones(3))
    with pytest.raises(ValueError, match="kernel"):
        run_mcmc(x, energy, 1, kernel="gibbs")
    with pytest.raises(ValueError, match="target_acceptance"):
        run_mala(x, energy, 1, target_acceptance=1.5)
    with pytest.raises(ValueError, match="n_leapfrog"):
        hmc_step(x, energy, 0.1, n_leapfrog=0)
    assert init_chain_state(x, energy, 0.1).step_size.shape == (2,)


def test_multiple_time_step_hmc_keeps_a_split_gaussian_exact():
    """U = a U_s + b U_f with a soft correlated U_s and a stiff U_f: chains of mts_hmc_step started
    from exact samples of exp(−U) keep its mean and covariance (the integrator is symplectic and
    reversible, so the Metropolis step makes it exact); the parts it returns are the energies at
    the new states; it keeps a centre of mass fixed when mean-free."""
    from boltzgen.sampling.mcmc import mts_hmc_step

    dim = 4
    slow, mu, cov_s = _gaussian(dim, seed=2)
    stiff = torch.tensor([400.0, 1.0, 150.0, 0.0], dtype=torch.float64)

    def fast(x):
        return 0.5 * (stiff * x * x).sum(-1)

    a, b = 0.7, 0.6
    prec = a * torch.linalg.inv(cov_s) + b * torch.diag(stiff)
    cov = torch.linalg.inv(prec)
    mean = cov @ (a * torch.linalg.inv(cov_s) @ mu)
    g = torch.Generator().manual_seed(5)
    chains = 256
    x = mean + torch.randn(chains, dim, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    samples, accs = [], []
    current = None
    for i in range(300):
        out = mts_hmc_step(x, slow, fast, 0.4, g, weights=(a, b), n_inner=12, current=current)
        x, current = out.x, (out.slow, out.slow_grad, out.fast, out.fast_grad)
        accs.append(float(out.accept_prob.mean()))
        if i % 2:
            samples.append(x)
    assert 0.3 < sum(accs) / len(accs) < 0.99
    us, gs = energy_and_grad(slow, x)
    assert torch.allclose(out.slow, us) and torch.allclose(out.fast, fast(x)) and torch.allclose(out.slow_grad, gs)
    z_mean, z_cov = _z_scores(torch.stack(samples), mean, cov)
    assert z_mean.abs().max() < 4.5, z_mean
    assert z_cov.abs().max() < 4.5, z_cov

    # mean-free: the centre of mass stays
    def anchored(y):
        return 0.5 * (y - 0.3).pow(2).sum((-2, -1))

    y0 = torch.randn(8, 5, 3, generator=g, dtype=torch.float64)
    y = y0
    for _ in range(10):
        y = mts_hmc_step(y, anchored, anchored, 0.3, g, n_inner=3, mean_free=True).x
    assert torch.allclose(y.mean(1), y0.mean(1), atol=1e-12) and not torch.allclose(y, y0)
    with pytest.raises(ValueError, match="n_inner must be at least 1"):
        mts_hmc_step(x, slow, fast, 0.1, g, n_inner=0)
