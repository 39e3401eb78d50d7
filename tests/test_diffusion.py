"""Schedules, transition kernels, forward noising and mean-free Gaussians against exact algebra."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from boltzgen.diffusion import (
    VESchedule,
    VPSchedule,
    event_dim,
    gaussian_log_prob,
    project_mean_free,
    q_sample,
    sample_noise,
    schedule_from_config,
)

SCHEDULES = [VPSchedule(), VPSchedule(0.5, 10.0), VESchedule(), VESchedule(0.01, 50.0, spacing="edm")]
IDS = ["vp", "vp-custom", "ve-geometric", "ve-edm"]


def _subspace_basis(n_atoms):
    """Orthonormal basis Q (3N, 3(N-1)) of the zero-centre-of-mass subspace of R^{3N}."""
    proj = np.kron(np.eye(n_atoms) - np.ones((n_atoms, n_atoms)) / n_atoms, np.eye(3))
    w, v = np.linalg.eigh(proj)
    q = v[:, w > 0.5]
    assert q.shape == (3 * n_atoms, 3 * (n_atoms - 1))
    return q


def test_vp_is_variance_preserving_and_matches_closed_form():
    sched = VPSchedule()
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    torch.testing.assert_close(sched.alpha(t) ** 2 + sched.sigma2(t), torch.ones_like(t), rtol=0, atol=1e-14)
    log_alpha = -0.5 * (0.1 * t + 0.5 * 19.9 * t**2)
    torch.testing.assert_close(sched.log_alpha(t), log_alpha)
    torch.testing.assert_close(sched.sigma(t), (1 - torch.exp(2 * log_alpha)).sqrt())
    # float in, float64 out; float32 tensor in, float32 out
    assert sched.alpha(0.5).dtype == torch.float64
    assert sched.sigma(torch.tensor([0.5])).dtype == torch.float32


def test_ve_schedules_closed_form():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    geo = VESchedule(0.01, 50.0)
    torch.testing.assert_close(geo.sigma(t), 0.01 * (50.0 / 0.01) ** t)
    torch.testing.assert_close(geo.alpha(t), torch.ones_like(t))
    edm = VESchedule(0.002, 80.0, spacing="edm", rho=7.0)
    ref = (0.002 ** (1 / 7) + t * (80.0 ** (1 / 7) - 0.002 ** (1 / 7))) ** 7
    torch.testing.assert_close(edm.sigma(t), ref)
    assert edm.sigma(0.0).item() == pytest.approx(0.002) and edm.sigma(1.0).item() == pytest.approx(80.0)


@pytest.mark.parametrize("sched", SCHEDULES, ids=IDS)
def test_transitions_compose_and_match_marginals(sched):
    s = torch.tensor([0.0, 0.01, 0.2, 0.5, 0.001], dtype=torch.float64)
    u = torch.tensor([0.3, 0.05, 0.2001, 0.7, 0.002], dtype=torch.float64)
    t = torch.tensor([1.0, 0.9, 0.4, 0.70001, 0.003], dtype=torch.float64)
    a_su, v_su = sched.transition(s, u)
    a_ut, v_ut = sched.transition(u, t)
    a_st, v_st = sched.transition(s, t)
    torch.testing.assert_close(a_su * a_ut, a_st, rtol=1e-12, atol=0)
    torch.testing.assert_close(a_ut**2 * v_su + v_ut, v_st, rtol=1e-10, atol=0)
    # kernel consistent with the marginals: alpha_t = a alpha_s, sigma_t^2 = a^2 sigma_s^2 + v
    torch.testing.assert_close(a_st * sched.alpha(s), sched.alpha(t), rtol=1e-12, atol=0)
    torch.testing.assert_close(a_st**2 * sched.sigma2(s) + v_st, sched.sigma2(t), rtol=1e-10, atol=0)
    # tiny steps stay accurate (no cancellation)
    _, v = sched.transition(torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.3 + 1e-9, dtype=torch.float64))
    assert v.item() == pytest.approx(
        1e-9 * sched.d_sigma2(0.3).item() if sched.kind == "ve" else 1e-9 * sched.beta(0.3).item(), rel=1e-5
    )


@pytest.mark.parametrize("sched", SCHEDULES, ids=IDS)
def test_sde_coefficients_match_finite_differences(sched):
    t = torch.tensor([0.05, 0.3, 0.8], dtype=torch.float64)
    h = 1e-6
    d_log_alpha = (sched.log_alpha(t + h) - sched.log_alpha(t - h)) / (2 * h)
    d_sigma2 = (sched.sigma2(t + h) - sched.sigma2(t - h)) / (2 * h)
    torch.testing.assert_close(sched.drift_coef(t), d_log_alpha, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(sched.d_sigma2(t), d_sigma2, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(sched.g2(t), d_sigma2 - 2 * d_log_alpha * sched.sigma2(t), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("sched", SCHEDULES, ids=IDS)
def test_config_round_trip(sched):
    import json

    config = json.loads(json.dumps(sched.config()))
    rebuilt = schedule_from_config(config)
    assert type(rebuilt) is type(sched) and rebuilt == sched
    t = torch.linspace(0, 1, 5, dtype=torch.float64)
    torch.testing.assert_close(rebuilt.sigma(t), sched.sigma(t))
    assert isinstance(schedule_from_config(None), VPSchedule)
    with pytest.raises(ValueError):
        schedule_from_config({"kind": "nope"})


@pytest.mark.parametrize("mean_free", [False, True])
def test_q_sample_moments(mean_free):
    sched = VPSchedule()
    g = torch.Generator().manual_seed(0)
    n, shape = 20000, (4, 3)
    x0 = torch.randn(shape, generator=g, dtype=torch.float64)
    x0 = x0 - x0.mean(0) if mean_free else x0
    x0 = x0.expand((n,) + shape)
    t = 0.3
    x_t, eps = q_sample(sched, x0, t, g, mean_free=mean_free)
    alpha, sigma = sched.alpha(t).item(), sched.sigma(t).item()
    torch.testing.assert_close(x_t, alpha * x0 + sigma * eps)
    se = sigma / math.sqrt(n)
    assert (x_t.mean(0) - alpha * x0[0]).abs().max() < 5 * se
    var = x_t.var(0)
    expected = sigma**2 * ((1 - 1 / shape[0]) if mean_free else 1.0)
    assert (var / expected - 1).abs().max() < 5 * math.sqrt(2 / n)
    if mean_free:
        assert x_t.mean(1).abs().max() < 1e-12 + alpha * x0[0].mean(0).abs().max()
    # per-sample times
    tt = torch.rand(n, generator=g, dtype=torch.float64)
    x_t, eps = sched.q_sample(x0, tt, g, mean_free=mean_free)
    torch.testing.assert_close(x_t, sched.alpha(tt)[:, None, None] * x0 + sched.sigma(tt)[:, None, None] * eps)


def test_mean_free_noise_has_zero_com_and_projector_covariance():
    g = torch.Generator().manual_seed(1)
    n_atoms, n = 4, 60000
    eps = sample_noise((n, n_atoms, 3), g, mean_free=True, dtype=torch.float64)
    assert eps.mean(1).abs().max() < 1e-14
    cov = torch.einsum("bi,bj->ij", eps.reshape(n, -1), eps.reshape(n, -1)) / n
    proj = torch.from_numpy(np.kron(np.eye(n_atoms) - 1.0 / n_atoms, np.eye(3)))
    assert (cov - proj).abs().max() < 5 * math.sqrt(2 / n)
    assert event_dim((n_atoms, 3), True) == 3 * (n_atoms - 1) and event_dim((n_atoms, 3), False) == 3 * n_atoms
    # the generator alone fixes the draw
    a = sample_noise((2, 3, 3), torch.Generator().manual_seed(5), True)
    b = sample_noise((2, 3, 3), torch.Generator().manual_seed(5), True)
    torch.testing.assert_close(a, b)


def test_mean_free_log_density_is_normalised_on_the_subspace():
    """The mean-free Gaussian log-density equals an explicit Gaussian in 3(N-1) orthonormal
    coordinates of the subspace, so it integrates to one there."""
    n_atoms = 5
    q = _subspace_basis(n_atoms)
    rng = np.random.default_rng(2)
    var = 0.37
    mean = project_mean_free(torch.from_numpy(rng.standard_normal((1, n_atoms, 3))))
    z = rng.standard_normal((6, 3 * (n_atoms - 1)))
    x = torch.from_numpy((q @ z.T).T.reshape(6, n_atoms, 3)) + mean
    ours = gaussian_log_prob(x, mean, var, mean_free=True).numpy()
    ref = multivariate_normal(np.zeros(3 * (n_atoms - 1)), var * np.eye(3 * (n_atoms - 1))).logpdf(z)
    np.testing.assert_allclose(ours, ref, rtol=1e-12)
    # a shift of the centre of mass is projected away
    shifted = x + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    np.testing.assert_allclose(gaussian_log_prob(shifted, mean, var, mean_free=True).numpy(), ref, rtol=1e-12)
    # non-mean-free: full 3N-dimensional Gaussian
    flat = x.reshape(6, -1).numpy()
    ref_full = multivariate_normal(mean.reshape(-1).numpy(), var * np.eye(3 * n_atoms)).logpdf(flat)
    np.testing.assert_allclose(gaussian_log_prob(x, mean, var).numpy(), ref_full, rtol=1e-12)
    with pytest.raises(ValueError):
        gaussian_log_prob(x, mean, var, mean_free=True, n_atoms=4)


@pytest.mark.parametrize("sched", [VPSchedule(), VESchedule(spacing="edm")], ids=["vp", "ve-edm"])
def test_transition_log_prob_against_explicit_gaussian(sched):
    n_atoms = 3
    q = _subspace_basis(n_atoms)
    g = torch.Generator().manual_seed(3)
    x_s = project_mean_free(torch.randn(4, n_atoms, 3, generator=g, dtype=torch.float64))
    s = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    t = s + 0.15
    a, v = sched.transition(s, t)
    x_t = a[:, None, None] * x_s + v.sqrt()[:, None, None] * sample_noise(x_s.shape, g, True, dtype=torch.float64)
    ours = sched.transition_log_prob(x_t, x_s, s, t, mean_free=True, n_atoms=n_atoms)
    for b in range(4):
        z = q.T @ x_t[b].reshape(-1).numpy()
        mu = q.T @ (a[b] * x_s[b]).reshape(-1).numpy()
        ref = multivariate_normal(mu, v[b].item() * np.eye(len(z))).logpdf(z)
        assert ours[b].item() == pytest.approx(ref, rel=1e-12)
    # floats for s and t, and the (B, D) case
    y_s = torch.randn(3, 2, generator=g, dtype=torch.float64)
    y_t = torch.randn(3, 2, generator=g, dtype=torch.float64)
    a1, v1 = sched.transition(0.2, 0.5)
    ref = multivariate_normal(np.zeros(2), v1.item() * np.eye(2)).logpdf((y_t - a1 * y_s).numpy())
    np.testing.assert_allclose(sched.transition_log_prob(y_t, y_s, 0.2, 0.5).numpy(), ref, rtol=1e-12)
