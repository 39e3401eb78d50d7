"""Reverse SDE / probability-flow ODE samplers against exact answers (Gaussian mixture, mean-free Gaussian)."""

import math

import pytest
import torch
from helpers import ZeroNet

from boltzgen.diffusion import VESchedule, VPSchedule, gaussian_log_prob
from boltzgen.energy import EnergyModel
from boltzgen.sampling import ExactMarginalModel, probability_flow, reverse_kernel, reverse_sde, time_grid
from boltzgen.systems.gmm import two_modes
from boltzgen.train import TrainedModel


def gaussian_molecule(length_scale=0.1, sigma_data=1.0, dtype=torch.float32):
    inner = EnergyModel(ZeroNet(), (4, 3), mean_free=True, sigma_data=sigma_data, log_normaliser="none")
    return TrainedModel(inner.to(dtype), length_scale)


def mode_fraction(target, x):
    return float((target.responsibilities(x)[:, 0] > 0.5).double().mean())


def check_gmm_moments(target, x, n_sigma=4.5):
    """Mode weight 2/3, mean 0 and unit average variance (standardised mixture) within MC error."""
    n = x.shape[0]
    p = float(target.weights[0])
    frac = mode_fraction(target, x)
    assert abs(frac - p) < n_sigma * math.sqrt(p * (1 - p) / n), frac
    ref = target.sample(200_000, torch.Generator().manual_seed(123))
    mean, var = ref.mean(0), ref.var(0)
    fourth = ((ref - mean) ** 4).mean(0)
    se_mean = (var / n).sqrt()
    se_var = ((fourth - var**2) / n).sqrt()
    assert ((x.mean(0) - mean).abs() < n_sigma * se_mean).all(), (x.mean(0), mean)
    assert ((x.var(0) - var).abs() < n_sigma * se_var + 0.01).all(), (x.var(0), var)


# ---------------------------------------------------------------------------- grids and kernels
@pytest.mark.parametrize("spacing", ["quadratic", "uniform", "log"])
def test_time_grid(spacing):
    t = time_grid(10, 1e-3, 1.0, spacing)
    assert t.shape == (11,) and t.dtype == torch.float64
    assert t[0] == 1.0 and t[-1] == 1e-3
    assert bool((t[1:] < t[:-1]).all())
    with pytest.raises(ValueError):
        time_grid(0)
    with pytest.raises(ValueError):
        time_grid(10, spacing="cubic")


@pytest.mark.parametrize("schedule", [VPSchedule(), VESchedule(1e-2, 20.0)])
def test_ddpm_kernel_is_the_exact_reverse_kernel_for_gaussian_data(schedule):
    """Data N(0, s² I): y_t ~ N(0, c_t²), the exact reverse kernel y_{t'} | y_t is Gaussian with
    mean a c_{t'}²/c_t² y and variance v c_{t'}²/c_t²."""
    s2, t, t_next = 0.7**2, 0.4, 0.25
    y = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    c2 = lambda u: float(schedule.alpha(u)) ** 2 * s2 + float(schedule.sigma2(u))  # noqa: E731
    score = -y / c2(t)
    mean, var = reverse_kernel(schedule, y, score, t, t_next, "ddpm", sigma_data=math.sqrt(s2))
    a, v = (float(z) for z in schedule.transition(t_next, t))
    torch.testing.assert_close(mean, a * c2(t_next) / c2(t) * y)
    assert var == pytest.approx(v * c2(t_next) / c2(t), rel=1e-12)
    # Euler–Maruyama agrees to first order in the step
    m_e, v_e = reverse_kernel(schedule, y, score, t, t - 1e-5, "euler")
    m_d, v_d = reverse_kernel(schedule, y, score, t, t - 1e-5, "ddpm", sigma_data=math.sqrt(s2))
    assert v_e == pytest.approx(v_d, rel=1e-3)
    torch.testing.assert_close(m_e, m_d, rtol=0, atol=1e-8)
    with pytest.raises(ValueError):
        reverse_kernel(schedule, y, score, 0.2, 0.3)


# ---------------------------------------------------------------------------- exact GMM score
@pytest.mark.parametrize("method", ["ddpm", "euler"])
def test_reverse_sde_exact_gmm_score(method):
    target = two_modes(2)
    model = ExactMarginalModel(target)
    x = reverse_sde(model, 4000, torch.Generator().manual_seed(0), n_steps=100, method=method)
    assert x.shape == (4000, 2) and x.dtype == torch.float64
    check_gmm_moments(target, x)


def test_probability_flow_exact_gmm_score_and_log_density():
    target = two_modes(2)
    model = ExactMarginalModel(target)
    x, log_q = probability_flow(model, 3000, torch.Generator().manual_seed(1), n_steps=50, return_log_q=True)
    check_gmm_moments(target, x)
    # the ODE pushes the prior onto p_{t_min}: its log-density is log p_{t_min} (to integrator accuracy)
    err = log_q - target.log_prob_t(x, model.t_min)
    assert float(err.abs().mean()) < 0.01 and float(err.abs().max()) < 0.1
    # the Hutchinson divergence is unbiased
    x2, lq2 = probability_flow(
        model, 2000, torch.Generator().manual_seed(2), n_steps=30, return_log_q=True, divergence="hutchinson"
    )
    err2 = lq2 - target.log_prob_t(x2, model.t_min)
    assert abs(float(err2.mean())) < 5 * float(err2.std()) / math.sqrt(2000) + 0.01


def test_samplers_are_reproducible():
    model = ExactMarginalModel(two_modes(2))
    a = reverse_sde(model, 50, torch.Generator().manual_seed(7), n_steps=10)
    b = reverse_sde(model, 50, torch.Generator().manual_seed(7), n_steps=10)
    assert torch.equal(a, b)
    c = probability_flow(model, 50, torch.Generator().manual_seed(7), n_steps=10)
    d = probability_flow(model, 50, torch.Generator().manual_seed(7), n_steps=10)
    assert torch.equal(c, d)


# ---------------------------------------------------------------------------- molecules
def test_mean_free_reverse_sde_and_ode_in_target_units():
    """Gaussian 'molecule' (4 atoms, mean-free) with length scale 0.1: samples are centred, have
    covariance ℓ² c² P, and the ODE log-density counts 3(N − 1) dimensions and the Jacobian ℓ^−d."""
    ls = 0.1
    model = gaussian_molecule(ls)
    c2 = float(model.inner.c2(torch.tensor(model.t_min, dtype=torch.float64)))
    x = reverse_sde(model, 4000, torch.Generator().manual_seed(3), n_steps=50)
    assert x.shape == (4000, 4, 3)
    assert float(x.mean(1).abs().max()) < 1e-12
    # per-coordinate variance of a mean-free Gaussian N(0, ℓ² c² P): ℓ² c² (1 − 1/N)
    var = x.reshape(4000, -1).var(0)
    expected = ls**2 * c2 * (1 - 1 / 4)
    assert float((var / expected - 1).abs().max()) < 4.5 * math.sqrt(2 / 4000)

    x, log_q = probability_flow(model, 200, torch.Generator().manual_seed(4), n_steps=40, return_log_q=True)
    assert float(x.mean(1).abs().max()) < 1e-12
    exact = gaussian_log_prob(x, 0.0, ls**2 * c2, mean_free=True)  # counts d = 9 dimensions
    torch.testing.assert_close(log_q, exact, rtol=0, atol=2e-3)
    # in model coordinates the Jacobian term is absent
    y, log_qy = probability_flow(
        model, 200, torch.Generator().manual_seed(4), n_steps=40, return_log_q=True, return_y=True
    )
    torch.testing.assert_close(ls * y, x)
    torch.testing.assert_close(log_qy - 9 * math.log(ls), log_q)


def test_generator_on_another_device_is_refused():
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    model = gaussian_molecule().cuda()
    with pytest.raises(ValueError, match="generator"):
        reverse_sde(model, 4, torch.Generator(), n_steps=2)


def count_passes(model) -> list:
    """Patch model.energy to record the batch size of every call; returns that (growing) list."""
    sizes, energy = [], model.energy

    def counting(y, t):
        sizes.append(y.shape[0])
        return energy(y, t)

    model.energy = counting
    return sizes


def test_model_passes_in_chunks_give_the_same_energies_and_scores():
    """model_energy_and_score: the CPU default (cpu_eval_chunk: CPU_EVAL_CHUNK configurations of
    a flat event, the pair budget of a molecule), explicit chunks and one pass (batch_size=0)
    agree, and every chunk is evaluated (600 = 4 · 128 + 88)."""
    from boltzgen.sampling.sde import CPU_EVAL_CHUNK, model_energy_and_score

    model = ExactMarginalModel(two_modes(3))
    sizes = count_passes(model)
    y = torch.randn(600, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    e0, s0 = model_energy_and_score(model, y, 0.3, 0)
    assert sizes == [600]
    sizes.clear()
    e1, s1 = model_energy_and_score(model, y, 0.3)
    assert CPU_EVAL_CHUNK == 128 and sizes == [128] * 4 + [88]
    e2, s2 = model_energy_and_score(model, y, 0.3, 100)
    for e, s in ((e1, s1), (e2, s2)):
        torch.testing.assert_close(e, e0)
        torch.testing.assert_close(s, s0)


def test_cpu_chunks_of_molecules_hold_a_fixed_number_of_atom_pairs():
    """cpu_eval_chunk: CPU_EVAL_PAIRS // N² configurations of N atoms on a full graph (at least
    one, at most CPU_EVAL_CHUNK), CPU_EVAL_CHUNK for flat events and radius graphs;
    model_energy_and_score on a molecule uses it, with the model's own graph."""
    from boltzgen.bench import random_model
    from boltzgen.sampling.sde import (
        CPU_EVAL_CHUNK,
        CPU_EVAL_PAIRS,
        cpu_eval_chunk,
        model_energy_and_score,
        model_graph_kind,
    )

    assert cpu_eval_chunk((22, 3)) == CPU_EVAL_PAIRS // 484 == 128  # alanine dipeptide: the chunk of before
    assert cpu_eval_chunk((13, 3)) == CPU_EVAL_CHUNK > cpu_eval_chunk((55, 3)) == CPU_EVAL_PAIRS // 3025
    assert cpu_eval_chunk((1000, 3)) == 1
    assert cpu_eval_chunk((66,)) == CPU_EVAL_CHUNK
    assert cpu_eval_chunk((55, 3), "radius") == CPU_EVAL_CHUNK
    _, lj55 = random_model("lj55", None)  # the shipped lj55 network: a radius graph
    assert model_graph_kind(lj55) == "radius" and model_graph_kind(gaussian_molecule()) == "full"
    sizes = count_passes(lj55)
    model_energy_and_score(lj55, torch.randn(CPU_EVAL_CHUNK + 3, 55, 3, dtype=torch.float64), 0.5)
    assert sizes == [CPU_EVAL_CHUNK, 3]
    model = EnergyModel(ZeroNet(), (40, 3), mean_free=True, sigma_data=1.0, log_normaliser="none")
    sizes = count_passes(model)
    chunk = cpu_eval_chunk((40, 3))
    assert chunk == CPU_EVAL_PAIRS // 1600 < CPU_EVAL_CHUNK
    y = torch.randn(2 * chunk + 5, 40, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    e1, s1 = model_energy_and_score(model, y, 0.3)
    assert sizes[:2] == [chunk, chunk] and sum(sizes) == y.shape[0]
    e0, s0 = model_energy_and_score(model, y, 0.3, 0)
    torch.testing.assert_close(e1, e0)
    torch.testing.assert_close(s1, s0)


def test_corrector_moves_restore_the_marginal_that_coarse_steps_miss():
    """Two Euler steps leave the Gaussian molecule's variance far from the exact c²(t_min) ℓ²;
    Metropolis-adjusted corrector moves on the model's energy at each level bring it back."""
    ls, n = 0.1, 3000
    model = gaussian_molecule(ls, dtype=torch.float64)
    c2 = float(model.inner.c2(torch.tensor(model.t_min, dtype=torch.float64)))
    expected = ls**2 * c2 * (1 - 1 / 4)
    tol = 4.5 * math.sqrt(2 / n)

    def rel_var_error(x):
        return float((x.reshape(n, -1).var(0) / expected - 1).abs().max())

    coarse = reverse_sde(model, n, torch.Generator().manual_seed(5), n_steps=2, method="euler")
    assert rel_var_error(coarse) > 5 * tol
    fixed = reverse_sde(model, n, torch.Generator().manual_seed(5), n_steps=2, method="euler", mcmc_steps=40)
    assert float(fixed.mean(1).abs().max()) < 1e-12
    assert rel_var_error(fixed) < tol
    with pytest.raises(ValueError, match="mcmc_steps"):
        reverse_sde(model, 4, n_steps=2, mcmc_steps=-1)


def test_corrector_moves_keep_the_exact_gmm_marginal():
    target = two_modes(2)
    x = reverse_sde(ExactMarginalModel(target), 4000, torch.Generator().manual_seed(6), n_steps=100, mcmc_steps=2)
    check_gmm_moments(target, x)
