"""SMC along the diffusion path, resampling and chirality: exact answers.

- exact GMM energies (F = 0) with the GMM as target: ESS near 1, log Z ≈ 0, mode weights 2/3 : 1/3;
- deliberately wrong models: the weights still recover 2/3 : 1/3;
- a mean-free harmonic "molecule" with length scale ≠ 1: log Z matches the exact 3(N − 1)-dim value;
- resampling schemes are unbiased, systematic has the lowest variance;
- chirality of alanine dipeptide is detected and fixed.
"""

import json
import math

import numpy as np
import pytest
import torch
from helpers import ZeroNet

from boltzgen.energy import EnergyModel
from boltzgen.sampling import (
    ExactMarginalModel,
    SMCSettings,
    all_l_form,
    chiral_centres,
    count_wrong,
    fix_chirality,
    in_l_region,
    is_l_form,
    resample,
    signed_volume,
    smc_sample,
)
from boltzgen.sampling.resampling import ess_fraction, log_mean_exp
from boltzgen.systems.base import TargetSystem
from boltzgen.systems.gmm import GaussianMixture, two_modes
from boltzgen.units import REDUCED_UNIT_TEMPERATURE

try:
    from boltzgen.model import TrainedModel
except ImportError:  # before the model module exists
    from boltzgen.train import TrainedModel


# ---------------------------------------------------------------------------- helpers
#: What these tests were written against (and what they check): a fixed linear β grid (no adaptive
#: cess), no final moves, no chirality fold, noisy-configuration state labels. Each test states
#: the rest; the defaults of SMCSettings (the CLI's) differ in exactly these four.
FIXED = {
    "anneal": {"cess": None},
    "final": {"mcmc_steps": 0},
    "chirality": False,
    "resampling": {"denoised_labels": False},
}


def settings(**groups) -> SMCSettings:
    """:data:`FIXED` with some settings changed: ``settings(diffusion={"n_steps": 8}, anneal={"n_levels": 2})``."""
    return SMCSettings.from_dict(FIXED).updated(groups)


class HarmonicMolecule(TargetSystem):
    """u(x) = ½ Σ_i k_i ‖x_i − x̄‖² / s²: translation invariant, exact log Z on the 3(N − 1)-dim
    subspace."""

    def __init__(self, k, scale):
        super().__init__("harmonic", (len(k), 3), REDUCED_UNIT_TEMPERATURE)
        self.k = torch.as_tensor(k, dtype=torch.float64) / scale**2

    def _positions(self):
        return 0.1 * torch.randn(
            self.event_shape[0], 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64
        )

    def _reduced_energy(self, x):
        xc = x - x.mean(1, keepdim=True)
        return 0.5 * (self.k[:, None] * xc**2).sum((1, 2))

    def exact_log_z(self):
        n = self.event_shape[0]
        p = torch.eye(n, dtype=torch.float64) - 1.0 / n
        lam = torch.linalg.eigvalsh(p @ torch.diag(self.k) @ p)[1:]  # drop the zero mode (translations)
        return 0.5 * 3 * (n - 1) * math.log(2 * math.pi) - 1.5 * float(torch.log(lam).sum())


def gaussian_molecule_model(length_scale, dtype=torch.float32, n_atoms: int = 4):
    inner = EnergyModel(ZeroNet(), (n_atoms, 3), mean_free=True, sigma_data=1.0, log_normaliser="none")
    return TrainedModel(inner.to(dtype), length_scale)


def rare_mixture():
    """A 97 : 3 two-mode mixture, a deliberately wrong exact-marginal model of it, the side of the
    midpoint (1 in the rare mode) and a smooth version of that side (a tilt coordinate)."""
    base = two_modes(2)
    target = GaussianMixture(base.means, base.stds, [0.97, 0.03], standardise=False)
    model = ExactMarginalModel(target, perturbation=lambda y, t: 0.3 * torch.sin(3 * y[:, 0]))
    mid = float(target.means.sum(1).mean())
    sign = 1.0 if float(target.means[1].sum() - target.means[0].sum()) > 0 else -1.0

    def side(x):
        return ((x.sum(1) - mid) * sign > 0).long()

    def soft_side(x):
        return torch.sigmoid(4 * sign * (x.sum(1) - mid))

    return target, model, side, soft_side


def weighted_mode_fraction(target, r):
    in_first = (target.responsibilities(r.x)[:, 0] > 0.5).double()
    w = r.weights
    p = float((w * in_first).sum())
    ess = 1.0 / float((w**2).sum())
    return p, math.sqrt(max(p * (1 - p), 1e-3) / ess)


# ---------------------------------------------------------------------------- resampling
@pytest.mark.parametrize("method", ["systematic", "stratified", "multinomial", "residual"])
def test_resampling_is_unbiased(method):
    g = torch.Generator().manual_seed(0)
    n, reps = 16, 4000
    log_w = torch.randn(n, generator=g, dtype=torch.float64) * 1.5
    log_w[3] = -math.inf  # weight zero: never selected
    w = torch.softmax(log_w, 0)
    counts = torch.stack([torch.bincount(resample(log_w, g, method), minlength=n) for _ in range(reps)]).double()
    assert counts.shape == (reps, n) and bool((counts.sum(1) == n).all())
    assert float(counts[:, 3].max()) == 0.0
    mean, se = counts.mean(0), counts.std(0) / math.sqrt(reps)
    assert bool(((mean - n * w).abs() <= 4.5 * se + 1e-9).all()), (mean, n * w)
    if method == "systematic":  # every count is floor or ceil of n w_i
        assert bool(((counts - n * w).abs() < 1.0 + 1e-9).all())


@pytest.mark.parametrize("method", ["systematic", "multinomial"])
def test_resampling_within_states_keeps_each_state_and_is_unbiased(method):
    """resample_by_state: every live state keeps its number of particles and its total weight
    exactly; the weight a particle passes on is w_i in expectation; the slots of a state whose
    weights are all zero go to the live states in proportion to their total weights."""
    from boltzgen.sampling.resampling import resample_by_state

    g = torch.Generator().manual_seed(0)
    log_w = torch.randn(12, generator=g, dtype=torch.float64) * 1.5
    log_w[:3] -= 30.0  # state 0: far lighter than the others, as a state the model puts too high
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2])
    reps, passed = 3000, torch.zeros(12, dtype=torch.float64)
    for _ in range(reps):
        idx, new = resample_by_state(log_w, labels, g, method)
        assert bool((labels[idx] == labels).all())  # every slot stays in its state
        for s in range(3):
            torch.testing.assert_close(torch.logsumexp(new[labels == s], 0), torch.logsumexp(log_w[labels == s], 0))
        passed += torch.zeros(12, dtype=torch.float64).index_add_(0, idx, new.exp())
    mean = passed / reps
    for s in range(3):  # relative to the state's weight: E[passed_i] = w_i
        m = labels == s
        ratio = mean[m] / log_w[m].exp()
        assert bool(((ratio - 1.0).abs() < 0.15).all()), (s, ratio)
    # a dead state gives its slots away; the totals of the live ones are kept
    dead = log_w.clone()
    dead[labels == 2] = -math.inf
    idx, new = resample_by_state(dead, labels, g, method)
    assert bool((labels[idx] != 2).all())
    torch.testing.assert_close(torch.logsumexp(new, 0), torch.logsumexp(dead, 0))
    # nothing to do when every state's ESS is above the threshold
    assert resample_by_state(torch.zeros(12, dtype=torch.float64), labels, g, method, ess_threshold=0.5) is None
    with pytest.raises(ValueError, match="labels"):
        resample_by_state(log_w, labels[:5], g, method)


@pytest.mark.parametrize("method", ["systematic", "multinomial"])
def test_balanced_resampling_within_states_shares_the_slots_equally_and_is_unbiased(method):
    """resample_by_state(balance=True): every live state gets B / L slots (13 particles, 3 states:
    5, 4, 4) whatever its own count, keeps its total weight exactly, and the weight a particle
    passes on is w_i in expectation; a state with no weight gets no slot."""
    from boltzgen.sampling.resampling import resample_by_state

    g = torch.Generator().manual_seed(0)
    log_w = torch.randn(13, generator=g, dtype=torch.float64)
    log_w[:2] -= 5.0
    labels = torch.tensor([0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2])  # counts 2, 8, 3
    reps, passed = 3000, torch.zeros(13, dtype=torch.float64)
    for _ in range(reps):
        idx, new = resample_by_state(log_w, labels, g, method, balance=True)
        assert torch.bincount(labels[idx], minlength=3).tolist() == [5, 4, 4]
        for s in range(3):
            torch.testing.assert_close(
                torch.logsumexp(new[labels[idx] == s], 0), torch.logsumexp(log_w[labels == s], 0)
            )
        passed += torch.zeros(13, dtype=torch.float64).index_add_(0, idx, new.exp())
    ratio = passed / reps / log_w.exp()
    assert bool(((ratio - 1.0).abs() < 0.15).all()), ratio
    dead = log_w.clone()
    dead[labels == 0] = -math.inf
    idx, new = resample_by_state(dead, labels, g, method, balance=True)
    assert torch.bincount(labels[idx], minlength=3).tolist() == [0, 7, 6]
    torch.testing.assert_close(torch.logsumexp(new, 0), torch.logsumexp(dead, 0))


@pytest.mark.parametrize("balance", [False, True])
def test_resampling_to_fewer_slots_keeps_each_states_weight_and_the_normaliser(balance):
    """resample_by_state(n_out=m): m slots shared by the live states (in proportion to their
    counts, or equally with ``balance``), log_mean_exp of the log-weights (the normaliser
    estimate of B particles) and each state's share of it unchanged exactly, and the weight a
    particle passes on is w_i m / B in expectation."""
    from boltzgen.sampling.resampling import resample_by_state

    g = torch.Generator().manual_seed(3)
    log_w = torch.randn(40, generator=g, dtype=torch.float64)
    labels = torch.tensor([0] * 30 + [1] * 8 + [2] * 2)
    m, reps = 10, 1500
    passed, passed2 = torch.zeros(40, dtype=torch.float64), torch.zeros(40, dtype=torch.float64)
    for _ in range(reps):
        idx, new = resample_by_state(log_w, labels, g, "systematic", balance=balance, n_out=m)
        assert idx.shape == new.shape == (m,)
        assert torch.bincount(labels[idx], minlength=3).tolist() == ([4, 3, 3] if balance else [6, 3, 1])
        torch.testing.assert_close(log_mean_exp(new), log_mean_exp(log_w))
        for s in range(3):
            torch.testing.assert_close(
                torch.logsumexp(new[labels[idx] == s], 0) - math.log(m),
                torch.logsumexp(log_w[labels == s], 0) - math.log(40),
            )
        one = torch.zeros(40, dtype=torch.float64).index_add_(0, idx, new.exp())
        passed, passed2 = passed + one, passed2 + one**2
    mean, expected = passed / reps, log_w.exp() * m / 40
    se = ((passed2 / reps - mean**2) / reps).sqrt()
    assert bool(((mean - expected).abs() < 5 * se + 1e-12).all()), (mean - expected) / se
    with pytest.raises(ValueError, match="3 states with weight into 2 slots"):
        resample_by_state(log_w, labels, g, n_out=2)


def test_systematic_has_lower_variance_than_multinomial():
    g = torch.Generator().manual_seed(1)
    n, reps = 32, 2000
    log_w = torch.randn(n, generator=g, dtype=torch.float64)
    var = {}
    for method in ("systematic", "multinomial"):
        c = torch.stack([torch.bincount(resample(log_w, g, method), minlength=n) for _ in range(reps)]).double()
        var[method] = float(c.var(0).sum())
    assert var["systematic"] < 0.5 * var["multinomial"]


def test_resampling_input_checks_and_ess():
    with pytest.raises(ValueError, match="weight zero"):
        resample(torch.full((4,), -math.inf, dtype=torch.float64))
    with pytest.raises(ValueError):
        resample(torch.tensor([0.0, math.nan]))
    with pytest.raises(ValueError):
        resample(torch.zeros(3), method="nope")
    assert ess_fraction(torch.zeros(10)) == pytest.approx(1.0)
    assert ess_fraction(torch.tensor([0.0, -math.inf, -math.inf, -math.inf])) == pytest.approx(0.25)
    assert float(log_mean_exp(torch.log(torch.tensor([1.0, 3.0], dtype=torch.float64)))) == pytest.approx(math.log(2))


# ---------------------------------------------------------------------------- SMC on the GMM
def test_smc_exact_gmm_energies():
    """E = −log p_t exactly (F = 0), target = the GMM (normalised): ESS ≈ 1, log Z ≈ 0, weights 2/3."""
    target = two_modes(2)
    model = ExactMarginalModel(target)
    r = smc_sample(
        model,
        target,
        1000,
        torch.Generator().manual_seed(0),
        settings=settings(diffusion={"n_steps": 60}, anneal={"n_levels": 8, "mcmc_steps": 2}),
    )
    assert r.x.shape == (1000, 2) and r.log_weights.dtype == torch.float64
    assert float(r.ess.min()) > 0.8 and r.ess_fraction > 0.8
    assert abs(r.log_z) < 0.05  # a few standard errors (sd ≈ 0.01 at ESS 0.9, N = 1000)
    assert abs(r.log_z_diffusion) < 0.05  # the marginals are normalised too
    p, se = weighted_mode_fraction(target, r)
    assert abs(p - 2 / 3) < 4.5 * se
    # bookkeeping
    n_levels = 1 + 60 + 8
    assert r.ess.shape == r.acceptance.shape == r.step_size.shape == r.t.shape == r.beta.shape == (n_levels,)
    assert r.n_target_evals == 1000 * (1 + 8 * 2)
    assert r.n_model_evals == 1000 * (1 + 60 + 8 * 2)
    assert float(torch.logsumexp(r.log_weights, 0)) - math.log(1000) == pytest.approx(r.log_z)
    acc = r.acceptance[-8:]
    assert bool((acc > 0.3).all() & (acc < 0.9).all())
    assert bool(torch.isnan(r.acceptance[:61]).all())
    torch.testing.assert_close(r.reduced_energy, target.reduced_energy(r.x))
    json.dumps(r.summary())


@pytest.mark.parametrize("wrong", ["weights", "shifted"])
def test_smc_wrong_model_recovers_true_mode_weights(wrong):
    target = two_modes(2)
    run = settings(diffusion={"n_steps": 40}, anneal={"n_levels": 10, "mcmc_steps": 3})
    exact = smc_sample(ExactMarginalModel(target), target, 1000, torch.Generator().manual_seed(1), settings=run)
    if wrong == "weights":
        wrong_gmm = GaussianMixture(target.means, target.stds, [1.0, 1.0], standardise=False)
    else:
        wrong_gmm = GaussianMixture(target.means + 0.15, 1.2 * target.stds, [1.0, 2.0], standardise=False)
    model = ExactMarginalModel(wrong_gmm)
    r = smc_sample(model, target, 1000, torch.Generator().manual_seed(1), settings=run)
    p, se = weighted_mode_fraction(target, r)
    assert abs(p - 2 / 3) < 4.5 * se, (p, se)
    assert abs(r.log_z) < 0.15
    assert float(r.ess.min()) < float(exact.ess.min())  # the weights had work to do
    # the model alone (no final target) is wrong: its mode weights are those of the wrong mixture
    alone = smc_sample(model, None, 1000, torch.Generator().manual_seed(2), settings=run)
    q, se_q = weighted_mode_fraction(target, alone)
    expected = float(wrong_gmm.weights[0])
    assert abs(q - expected) < 4.5 * se_q and abs(q - 2 / 3) > 4.5 * se_q


def test_conditional_ess_formula_and_adaptive_increment():
    from boltzgen.sampling.smc import conditional_ess, next_beta_increment

    g = torch.Generator().manual_seed(5)
    log_w = torch.randn(50, generator=g, dtype=torch.float64)
    log_w[7] = -math.inf
    incr = torch.randn(50, generator=g, dtype=torch.float64) * 2.0
    w = np.exp(log_w.numpy() - np.logaddexp.reduce(log_w.numpy()))
    v = np.exp(incr.numpy())
    expected = (w * v).sum() ** 2 / (w * v**2).sum()
    assert conditional_ess(log_w, incr) == pytest.approx(expected, rel=1e-12)
    assert conditional_ess(log_w, torch.full_like(incr, 3.0)) == pytest.approx(1.0)
    # the increment hits the target CESS, or is the whole remaining step when that is cheap enough
    slope = incr * 10.0
    slope[3] = -math.inf  # a dead particle
    step = next_beta_increment(log_w, slope, 0.7, 0.9)
    assert 0 < step < 0.7
    assert conditional_ess(log_w, torch.where(torch.isfinite(slope), step * slope, slope)) == pytest.approx(
        0.9, abs=1e-6
    )
    assert next_beta_increment(log_w, 1e-6 * incr, 0.7, 0.9) == 0.7


def test_smc_adaptive_annealing_and_final_moves_recover_mode_weights():
    """A wrong model (equal mode weights, shifted, too wide) annealed on an adaptive β grid: each
    level keeps the CESS at the target, the grid ends at 1, and the weights recover 2/3 : 1/3;
    moves on the target after the last reweighting keep them (and the reported energies)."""
    target = two_modes(2)
    wrong_gmm = GaussianMixture(target.means + 0.15, 1.3 * target.stds, [1.0, 1.0], standardise=False)
    model = ExactMarginalModel(wrong_gmm)
    r = smc_sample(
        model,
        target,
        2000,
        torch.Generator().manual_seed(4),
        settings=settings(
            diffusion={"n_steps": 30}, anneal={"n_levels": 2, "cess": 0.97, "mcmc_steps": 2}, final={"mcmc_steps": 5}
        ),
    )
    betas = r.beta[r.beta > 0]
    assert 2 < len(betas) < 64 and float(betas[-1]) == 1.0 and bool((betas[1:] > betas[:-1]).all())
    assert r.summary()["n_anneal_levels"] == len(betas)
    p, se = weighted_mode_fraction(target, r)
    assert abs(p - 2 / 3) < 4.5 * se, (p, se)
    assert abs(r.log_z) < 0.15
    assert 0.3 < r.final_acceptance < 0.9
    torch.testing.assert_close(r.reduced_energy, target.reduced_energy(r.x))
    with pytest.raises(ValueError, match="anneal.cess"):
        settings(anneal={"cess": 1.5})
    with pytest.raises(ValueError, match="either betas"):
        settings(anneal={"cess": 0.5, "betas": [1.0]})
    # at most max_levels levels (the last one jumps to beta = 1), at least n_levels

    def adaptive(n_levels, cess, **anneal):
        return settings(
            diffusion={"n_steps": 10}, anneal={"n_levels": n_levels, "cess": cess, "mcmc_steps": 1, **anneal}
        )

    capped = smc_sample(model, target, 200, torch.Generator().manual_seed(4), settings=adaptive(2, 0.99, max_levels=3))
    assert [float(b) for b in capped.beta[capped.beta > 0]][-1] == 1.0 and int((capped.beta > 0).sum()) == 3
    floor = smc_sample(model, target, 200, torch.Generator().manual_seed(4), settings=adaptive(8, 0.01))
    np.testing.assert_allclose(floor.beta[floor.beta > 0].numpy(), np.arange(1, 9) / 8, atol=1e-12)
    thirds = smc_sample(
        model, target, 200, torch.Generator().manual_seed(4), settings=adaptive(3, 0.01)
    )  # 1/3 + 1/3 + 1/3 < 1 in floating point
    np.testing.assert_allclose(thirds.beta[thirds.beta > 0].numpy(), [1 / 3, 2 / 3, 1.0], atol=1e-12)


def test_smc_tempering_puts_more_particles_in_a_rare_mode_and_the_weights_still_recover_it():
    """A 97 : 3 mixture with the exact model: tempering the diffusion stage (b = 0.5 at t_min)
    multiplies the particles in the rare mode (its free energy, 3.5 kT up, becomes ~1.7 kT) and
    the weights still give 3 %, with log Z ≈ 0."""
    base = two_modes(2)
    target = GaussianMixture(base.means, base.stds, [0.97, 0.03], standardise=False)
    model = ExactMarginalModel(target)
    counts = {}
    for b in (1.0, 0.5):
        r = smc_sample(
            model,
            target,
            2000,
            torch.Generator().manual_seed(0),
            settings=settings(
                diffusion={"n_steps": 40, "tempering": b}, anneal={"n_levels": 4, "cess": 0.9, "mcmc_steps": 2}
            ),
        )
        rare = (target.responsibilities(r.x)[:, 1] > 0.5).double()
        counts[b] = int(rare.sum())
        w = r.weights
        p = float((w * rare).sum())
        # standard error of a self-normalised estimate: sqrt(Σ w_i² (f_i − p)²)
        se = math.sqrt(float((w**2 * (rare - p) ** 2).sum()))
        assert abs(p - 0.03) < 4.5 * se, (b, p, se)
        assert abs(r.log_z) < 0.1
    assert counts[1.0] < 100 and counts[0.5] > 3 * counts[1.0], counts
    with pytest.raises(ValueError, match="diffusion.tempering"):
        settings(diffusion={"tempering": 0.0})


@pytest.mark.parametrize("perturbed", [False, True])
def test_smc_resampling_within_states_still_recovers_the_mode_weights(perturbed):
    """SMC with ``states`` (the side of the midpoint): with the exact model ESS ≈ 1, log Z ≈ 0 and
    2/3 : 1/3; with a deliberately wrong model the weights still give 2/3 (resampling at
    ESS < 0.9, so it happens often)."""
    target = two_modes(2)
    perturbation = (lambda y, t: 0.8 * torch.sin(3 * y[:, 0])) if perturbed else None
    model = ExactMarginalModel(target, perturbation=perturbation)
    seen = []

    def side(x):
        labels = (x.sum(1) > 0).long()
        seen.append(labels.clone())
        return labels

    r = smc_sample(
        model,
        target,
        2000,
        torch.Generator().manual_seed(1),
        states=side,
        settings=settings(
            diffusion={"n_steps": 30},
            anneal={"n_levels": 4, "cess": 0.9, "mcmc_steps": 2},
            resampling={"ess_threshold": 0.9},
        ),
    )
    assert len(seen) > 30 and (r.resampled or not perturbed)
    p, se = weighted_mode_fraction(target, r)
    assert abs(p - 2 / 3) < 4.5 * se, (p, se)
    if not perturbed:
        assert abs(r.log_z) < 0.1 and r.ess_fraction > 0.8
    with pytest.raises(ValueError, match="integer labels"):
        smc_sample(
            model,
            target,
            10,
            torch.Generator().manual_seed(0),
            states=lambda x: torch.zeros(3, dtype=torch.long),
            settings=settings(diffusion={"n_steps": 2}, resampling={"ess_threshold": 1.0}),
        )


def test_smc_balance_states_gives_a_rare_mode_half_the_particles_and_keeps_its_weight():
    """A 97 : 3 mixture, states = the side of the midpoint, a deliberately wrong model: with
    ``balance_states`` the annealing starts, and ends, with half of the particles in each mode
    (without: a few % in the rare one), and over independent runs the weights still give 3 %.
    (Within one run the rare mode's weight is that of the diffusion stage, shared by all its
    copies: the spread over runs, not the final weights, measures its error.)"""
    target, model, side, _ = rare_mixture()

    def run(seed, balance):
        r = smc_sample(
            model,
            target,
            500,
            torch.Generator().manual_seed(seed),
            states=side,
            settings=settings(
                diffusion={"n_steps": 30},
                anneal={"n_levels": 4, "cess": 0.9, "mcmc_steps": 2},
                resampling={"balance_states": balance},
            ),
        )
        rare = side(r.x).double()
        return int(rare.sum()), float((r.weights * rare).sum())

    assert run(0, False)[0] < 50
    out = [run(seed, True) for seed in range(8)]
    assert all(abs(n_rare - 250) < 20 for n_rare, _ in out), out
    p = np.array([o[1] for o in out])
    assert abs(p.mean() - 0.03) < 4 * p.std(ddof=1) / math.sqrt(len(p)), p
    with pytest.raises(ValueError, match="balance_states needs states"):
        smc_sample(
            model,
            target,
            10,
            torch.Generator().manual_seed(0),
            settings=settings(diffusion={"n_steps": 2}, resampling={"balance_states": True}),
        )


def test_smc_keep_states_holds_each_states_particles_and_stays_exact():
    """States that cut the common mode of a 97 : 3 mixture in half (x_0 above its mean), so moves
    cross the cut all the time, and the wrong model of :func:`rare_mixture`. With
    ``anneal.keep_states`` every run ends with exactly the balanced counts (moves that cross are
    rejected, resampling stays within states); without, the moves shift particles across. Over
    runs the weight of the cut side and log Z match the exact values (the mixture is normalised)."""
    from scipy.stats import norm

    target, model, _, _ = rare_mixture()
    cut = float(target.means[0, 0])
    exact = sum(
        float(w) * norm.sf(cut, float(m[0]), float(s[0])) for w, m, s in zip(target.weights, target.means, target.stds)
    )

    def upper(x):
        return (x[:, 0] > cut).long()

    def run(seed, keep):
        r = smc_sample(
            model,
            target,
            400,
            torch.Generator().manual_seed(seed),
            states=upper,
            settings=settings(
                diffusion={"n_steps": 30},
                anneal={"n_levels": 4, "cess": 0.9, "mcmc_steps": 3, "keep_states": keep},
                resampling={"balance_states": True},
                final={"mcmc_steps": 3},
            ),
        )
        side = upper(r.x)
        return int(side.sum()), float((r.weights * side.double()).sum()), r.log_z

    assert any(n != 200 for n, _, _ in (run(seed, False) for seed in range(2)))
    out = [run(seed, True) for seed in range(10)]
    assert all(n == 200 for n, _, _ in out), out
    p = np.array([o[1] for o in out])
    assert abs(p.mean() - exact) < 4 * p.std(ddof=1) / math.sqrt(len(p)), (p, exact)
    assert abs(np.mean([o[2] for o in out])) < 0.1


@pytest.mark.parametrize("tempering", [1.0, 0.5])
def test_smc_denoised_states_label_tweedie_estimates(tempering):
    """With ``resampling.denoised_labels`` the diffusion stage labels E[y_0 | y_t] = (y_t − σ_t² ∇E) / α_t.

    Target N(μ, s² I) with μ far from the origin and the exact model: the posterior mean lies
    within a few s of μ at every noise level (its spread is α s² / (α² s² + σ²)^½ ≤ s, at most
    s / √b for particles of the tempered density exp(−b E)), while the noisy configurations at
    t = 1 lie near the origin, |μ| / s = 12 standard deviations away. Resampling at every level
    calls ``states`` at every level."""
    mu, s = torch.tensor([3.0, -2.0], dtype=torch.float64), 0.3
    target = GaussianMixture(mu[None], torch.full((1, 2), s, dtype=torch.float64), [1.0], standardise=False)
    model = ExactMarginalModel(target)
    radius = 6.0 / math.sqrt(tempering)
    for denoise in (True, False):
        seen = []

        def states(x, seen=seen):
            seen.append(float(((x - mu) / s).abs().max()))
            return torch.zeros(x.shape[0], dtype=torch.long)

        r = smc_sample(
            model,
            target,
            256,
            torch.Generator().manual_seed(0),
            states=states,
            settings=settings(
                diffusion={"n_steps": 20, "tempering": tempering},
                anneal={"n_levels": 2, "mcmc_steps": 1},
                resampling={"denoised_labels": denoise, "ess_threshold": 1.0},
            ),
        )
        assert len(seen) == 1 + 20 + 1  # the prior, every diffusion level, the first beta (not the last)
        if denoise:
            assert max(seen) < radius, seen
        else:
            assert seen[0] > 2 * radius, seen[0]
        assert abs(r.log_z) < 0.2


def test_smc_counts_the_ancestors_that_survive_resampling():
    target = two_modes(2)
    run = settings(diffusion={"n_steps": 10}, anneal={"n_levels": 2, "mcmc_steps": 1})
    never = smc_sample(
        ExactMarginalModel(target),
        target,
        300,
        torch.Generator().manual_seed(0),
        settings=run.updated({"resampling": {"ess_threshold": 0.0}}),
    )
    assert never.resampled == [] and never.n_ancestors == never.n_ancestors_anneal == 300
    # no particle shares an ancestor: the lineage ESS is the ESS of the final weights
    assert never.ancestors.tolist() == list(range(300))
    assert never.lineage_ess == pytest.approx(never.ess_fraction * 300, rel=1e-12)
    always = smc_sample(
        ExactMarginalModel(target),
        target,
        300,
        torch.Generator().manual_seed(0),
        settings=run.updated({"resampling": {"ess_threshold": 1.0}}),
    )
    assert len(always.resampled) == 1 + 10 + 1  # every level but the last
    assert 1 <= always.n_ancestors < 300 and always.n_ancestors <= always.n_ancestors_anneal <= 300
    summary = always.summary()
    assert summary["n_ancestors"] == always.n_ancestors and summary["n_ancestors_anneal"] == always.n_ancestors_anneal
    assert (
        set(always.ancestors.tolist()) <= set(range(300)) and len(set(always.ancestors.tolist())) == always.n_ancestors
    )
    assert 1.0 <= always.lineage_ess <= always.n_ancestors and summary["lineage_ess"] == always.lineage_ess


def test_a_wider_diffusion_keeps_more_lineages_and_the_weights_stay_exact():
    """``diffusion.particle_factor`` k: the diffusion draws k B particles, the annealing starts
    from B of them. On the 97 : 3 mixture with the wrong model of :func:`rare_mixture` (states:
    the side of the midpoint, balanced), the runs return B particles, keep more distinct
    ancestors than k = 1, and over independent runs the rare mode's weight is still 3 % and the
    mean of Ẑ is the mixture's normaliser 1 (log Z is 0: the target is normalised)."""
    target, model, side, _ = rare_mixture()

    def run(seed, factor):
        return smc_sample(
            model,
            target,
            200,
            torch.Generator().manual_seed(seed),
            states=side,
            settings=settings(
                diffusion={"n_steps": 30, "particle_factor": factor},
                anneal={"n_levels": 4, "cess": 0.9, "mcmc_steps": 2},
                resampling={"balance_states": True},
            ),
        )

    wide = [run(seed, 4) for seed in range(12)]
    narrow = [run(seed, 1) for seed in range(12)]
    assert all(r.n_particles == 200 and r.ancestors.max() < 800 for r in wide)
    assert np.mean([r.n_ancestors for r in wide]) > 1.5 * np.mean([r.n_ancestors for r in narrow])
    p = np.array([float((r.weights * side(r.x).double()).sum()) for r in wide])
    assert abs(p.mean() - 0.03) < 4 * p.std(ddof=1) / math.sqrt(len(p)), p
    z = np.exp([r.log_z for r in wide])
    assert abs(z.mean() - 1.0) < 4 * z.std(ddof=1) / math.sqrt(len(z)), z
    with pytest.raises(ValueError, match="particle_factor 2 needs a target"):
        smc_sample(model, None, 10, settings=settings(diffusion={"n_steps": 2, "particle_factor": 2}))
    with pytest.raises(ValueError, match="diffusion.particle_factor: above 1 needs anneal.handover 'geometric'"):
        settings(diffusion={"particle_factor": 2}, anneal={"handover": "laplace"})


def test_recorder_sees_the_particles_after_every_reweighting():
    from boltzgen.sampling.stages import SMCRecorder

    class Seen(SMCRecorder):
        def __init__(self):
            super().__init__()
            self.seen = []

        def particles(self, state):
            self.seen.append((state.t, state.beta, state.n, float(state.ess), state.ancestors["start"].numel()))

    target = two_modes(2)
    recorder = Seen()
    run = settings(diffusion={"n_steps": 6}, anneal={"n_levels": 3, "mcmc_steps": 1})
    r = smc_sample(
        ExactMarginalModel(target), target, 50, torch.Generator().manual_seed(1), settings=run, recorder=recorder
    )
    assert len(recorder.seen) == len(r.ess) == len(recorder.ess_trace)  # one look per reweighting, t = 1 first
    assert [s[3] for s in recorder.seen] == pytest.approx(r.ess.tolist())
    assert recorder.seen[0][:2] == (1.0, 0.0) and recorder.seen[-1][1] == 1.0
    assert all(s[2] == 50 and s[4] == 50 for s in recorder.seen)


@pytest.mark.parametrize("mcmc", ["mala", "hmc"])
def test_smc_mcmc_moves_in_the_diffusion_stage(mcmc):
    target = two_modes(2)
    model = ExactMarginalModel(target)
    r = smc_sample(
        model,
        target,
        500,
        torch.Generator().manual_seed(3),
        settings=settings(
            diffusion={"n_steps": 20, "mcmc_steps": 2, "kernel": "euler"},
            anneal={"n_levels": 4, "mcmc_steps": 2},
            moves={"kernel": mcmc, "n_leapfrog": 3},
            resampling={"ess_threshold": 0.9},
        ),
    )
    assert abs(r.log_z) < 0.1
    p, se = weighted_mode_fraction(target, r)
    assert abs(p - 2 / 3) < 4.5 * se
    acc = r.acceptance[1:]
    assert bool(torch.isfinite(acc).all())
    alpha_star = 0.574 if mcmc == "mala" else 0.65
    assert abs(float(acc[8:20].mean()) - alpha_star) < 0.15  # adapted towards the target acceptance
    assert bool((acc[-4:] > 0.2).all())
    assert len(r.resampled) > 0
    per_move = 1 if mcmc == "mala" else 3
    assert r.n_model_evals == 500 * (1 + 20 + 20 * 2 * per_move + 4 * 2 * per_move)


def test_smc_is_reproducible_and_checks_arguments():
    target = two_modes(2)
    model = ExactMarginalModel(target)
    run = settings(diffusion={"n_steps": 8}, anneal={"n_levels": 2, "mcmc_steps": 1})
    a = smc_sample(model, target, 64, torch.Generator().manual_seed(5), settings=run)
    b = smc_sample(model, target, 64, torch.Generator().manual_seed(5), settings=run)
    assert torch.equal(a.x, b.x) and torch.equal(a.log_weights, b.log_weights)
    with pytest.raises(ValueError, match="diffusion.kernel"):
        settings(diffusion={"kernel": "nope"})
    with pytest.raises(ValueError, match="anneal.betas"):
        settings(anneal={"betas": [0.5, 0.9]})
    with pytest.raises(ValueError, match="differ"):
        smc_sample(model, two_modes(3), 8, settings=run)
    with pytest.raises(ValueError, match="n_particles"):
        smc_sample(model, target, 0, settings=run)


def test_smc_all_weights_zero_is_a_clear_error():
    class Nowhere(TargetSystem):
        def __init__(self):
            super().__init__("nowhere", (2,), REDUCED_UNIT_TEMPERATURE)

        def _positions(self):
            return torch.zeros(2, dtype=torch.float64)

        def _reduced_energy(self, x):
            return torch.full((x.shape[0],), math.inf, dtype=torch.float64) + 0 * x.sum(1)

    from boltzgen.cli import classify_error
    from boltzgen.sampling import SMCFailure

    model = ExactMarginalModel(two_modes(2))
    with pytest.raises(SMCFailure, match="weight zero") as failure:
        smc_sample(
            model,
            Nowhere(),
            32,
            torch.Generator().manual_seed(0),
            settings=settings(diffusion={"n_steps": 4}, anneal={"n_levels": 2}),
        )
    status, message = classify_error(failure.value)  # the command line: one line, not a bug report
    assert status == 1 and "outside the target's support" in message


# ---------------------------------------------------------------------------- molecules
@pytest.mark.parametrize("mcmc", ["mala", "hmc", "mts"])
def test_smc_log_z_of_mean_free_harmonic_molecule(mcmc):
    """Model: the Gaussian marginals of N(0, I) data in y = x/ℓ (ℓ = 0.1), 4 atoms, mean-free;
    target: an anisotropic harmonic molecule. log Z counts d = 9 dimensions and the Jacobian ℓ^9
    (a wrong d would be off by 3 log ℓ ≈ −6.9)."""
    ls = 0.1
    target = HarmonicMolecule([1.0, 2.0, 0.5, 1.5], scale=1.3 * ls)
    model = gaussian_molecule_model(ls)
    r = smc_sample(
        model,
        target,
        600,
        torch.Generator().manual_seed(0),
        settings=settings(
            diffusion={"n_steps": 30},
            anneal={"n_levels": 12, "mcmc_steps": 3, "inner_steps": 4 if mcmc == "mts" else 0},
            moves={"kernel": "mala" if mcmc == "mts" else mcmc, "n_leapfrog": 3},
        ),
    )
    assert r.dim == 9 and r.length_scale == ls
    if mcmc == "mts":  # multiple-time-step HMC in the annealing, near HMC's acceptance
        anneal_acceptance = r.acceptance[r.beta > 0]
        assert 0.3 < float(anneal_acceptance.mean()) < 0.99
    assert r.x.shape == (600, 4, 3)
    assert float(r.x.mean(1).abs().max()) < 1e-10  # particles stay mean-free
    assert abs(r.log_z - target.exact_log_z()) < 0.08, (r.log_z, target.exact_log_z())
    # the model's own normaliser in x: (2π ℓ² c²)^{9/2}, c² ≈ 1
    c2 = float(model.inner.c2(torch.tensor(model.t_min, dtype=torch.float64)))
    assert r.log_z_diffusion == pytest.approx(4.5 * math.log(2 * math.pi * ls**2 * c2), abs=1e-3)
    assert r.ess_fraction > 0.5


def test_smc_chirality_fold_halves_z():
    """A mirror-symmetric molecule with one 'chiral centre' (atoms 0..3): folding onto the L-form
    restricts the target to half of space, so log Z drops by log 2, and every particle is L."""
    ls = 0.1
    target = HarmonicMolecule([1.0, 2.0, 0.5, 1.5], scale=1.3 * ls)
    model = gaussian_molecule_model(ls)
    centres = np.array([[0, 1, 2, 3]])
    r = smc_sample(
        model,
        target,
        600,
        torch.Generator().manual_seed(1),
        settings=settings(diffusion={"n_steps": 20}, anneal={"n_levels": 8, "mcmc_steps": 3}, chirality=centres),
    )
    assert bool(in_l_region(r.x, centres).all())
    assert 200 < r.n_reflected < 400  # about half of the particles came out D
    assert abs(r.log_z - (target.exact_log_z() - math.log(2))) < 0.08


def test_smc_target_is_the_all_l_region_with_two_centres():
    """Two centres on disjoint atoms of an isotropic harmonic molecule have independent hands, a
    quarter of space each for LL, LD, DL and DD. The fold maps DD and DL onto LL and LD; the target is
    the all-L region, so log Z drops by log 4 and no surviving particle has a D centre."""
    ls = 0.1
    target = HarmonicMolecule([1.0] * 8, scale=1.3 * ls)
    model = gaussian_molecule_model(ls, n_atoms=8)
    centres = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
    r = smc_sample(
        model,
        target,
        800,
        torch.Generator().manual_seed(2),
        settings=settings(diffusion={"n_steps": 20}, anneal={"n_levels": 8, "mcmc_steps": 3}, chirality=centres),
    )
    alive = r.weights > 0
    assert bool(all_l_form(r.x[alive], centres).all()) and count_wrong(r.x[alive], centres) == 0
    assert abs(r.log_z - (target.exact_log_z() - math.log(4))) < 0.1, (r.log_z, target.exact_log_z() - math.log(4))


# ---------------------------------------------------------------------------- alanine dipeptide
@pytest.fixture(scope="module")
def aldp():
    from boltzgen.systems import load

    target = load("aldp-vacuum", n_workers=0)
    yield target
    target.close()


def test_chirality_of_alanine_dipeptide(aldp):
    target = aldp
    centres = chiral_centres(target.topology)
    assert centres.tolist() == [[6, 8, 14, 10]]  # N, CA, C, CB of the alanine
    x = target.positions
    assert float(signed_volume(x, centres)[0]) > 0 and bool(is_l_form(x, centres).all())
    mirror = -x
    assert float(signed_volume(mirror, centres)[0]) < 0
    batch = torch.stack([x, mirror, x + 0.3, 2.0 * x.mean(0) - x])
    fixed, n, mask = fix_chirality(batch, centres, return_mask=True)
    assert n == 2 and mask.tolist() == [False, True, False, True]
    assert torch.equal(fixed[0], batch[0]) and torch.equal(fixed[2], batch[2])  # untouched
    assert bool(is_l_form(fixed, centres).all()) and count_wrong(fixed, centres) == 0
    assert count_wrong(batch, centres) == 2
    torch.testing.assert_close(fixed[1] - fixed[1].mean(0), x - x.mean(0))  # the reflection undoes the mirror
    torch.testing.assert_close(fixed.mean(1), batch.mean(1))  # centre of mass kept
    # amber is mirror symmetric: the mirror image (and the fixed one) has the original's energy
    u = target.reduced_energy(torch.stack([x, mirror, fixed[1]]))
    torch.testing.assert_close(u[1:], u[:1].expand(2), rtol=1e-9, atol=1e-6)
    one, n1 = fix_chirality(mirror, centres)
    assert n1 == 1 and one.shape == x.shape


class GaussianAround:
    """Mean-free Gaussian diffusion marginals of data N(μ, s² I) (y units): E = ‖P y − α μ‖² / (2 c_t²)."""

    mean_free = True
    sigma_data = 1.0
    t_min = 1e-3

    def __init__(self, mu, s):
        from boltzgen.diffusion import VPSchedule

        self.mu, self.s, self.schedule, self.event_shape = mu, s, VPSchedule(), tuple(mu.shape)

    def energy(self, y, t):
        from boltzgen.diffusion import project_mean_free

        a = float(self.schedule.alpha(t))
        c2 = a * a * self.s**2 + float(self.schedule.sigma2(t))
        return 0.5 * (project_mean_free(y) - a * self.mu).pow(2).sum((1, 2)) / c2


def test_smc_on_openmm_target_smoke(aldp):
    """The final stage with OpenMM forces (in-process bridge): runs, L-form particles, energies
    that match the target's, evaluation counts."""
    ls = 0.15
    x0 = aldp.positions
    model = GaussianAround((x0 - x0.mean(0)) / ls, 0.02)
    r = smc_sample(
        model,
        aldp,
        64,
        torch.Generator().manual_seed(0),
        length_scale=ls,
        settings=settings(diffusion={"n_steps": 10}, anneal={"n_levels": 4, "mcmc_steps": 2}, chirality="auto"),
    )
    assert r.x.shape == (64, 22, 3) and math.isfinite(r.log_z)
    assert r.n_target_evals == 64 * (1 + 4 * 2)
    assert bool(in_l_region(r.x, chiral_centres(aldp.topology)).all())
    finite = torch.isfinite(r.log_weights)
    torch.testing.assert_close(r.reduced_energy[finite], aldp.reduced_energy(r.x[finite]))
    assert bool(torch.isfinite(r.acceptance[-4:]).all())


def test_chirality_of_achiral_systems():
    assert chiral_centres(None).shape == (0, 4)
    x = torch.randn(3, 5, 3, generator=torch.Generator().manual_seed(0))
    fixed, n = fix_chirality(x, np.zeros((0, 4), dtype=np.int64))
    assert n == 0 and torch.equal(fixed, x)


# ---------------------------------------------------------------------------- stages one by one
def marginal_samples(gmm, n, t, schedule, generator):
    """Exact draws of the diffused mixture p_t: α_t y_0 + σ_t ε with y_0 ~ the mixture."""
    y0 = gmm.sample(n, generator).to(torch.float64)
    tt = torch.tensor(float(t), dtype=torch.float64)
    eps = torch.randn(y0.shape, generator=generator, dtype=torch.float64)
    return float(schedule.alpha(tt)) * y0 + float(schedule.sigma(tt)) * eps


def test_diffusion_stage_alone_with_the_exact_model_keeps_every_weight_and_log_z():
    from boltzgen.sampling import SMCProblem, SMCRecorder, run_diffusion, start_at_prior

    target = two_modes(2)
    problem = SMCProblem.build(
        ExactMarginalModel(target), None, torch.Generator().manual_seed(0), settings(diffusion={"n_steps": 40})
    )
    recorder = SMCRecorder()
    state = run_diffusion(start_at_prior(problem, 1000, recorder), problem, recorder)
    assert state.t == problem.t_min and state.level == 40 and len(recorder.ess_trace) == 41
    assert recorder.times[0] == 1.0 and recorder.times[-1] == problem.t_min and set(recorder.betas) == {0.0}
    assert min(recorder.ess_trace) > 0.8 and abs(state.log_z_diffusion) < 0.05
    assert state.n_model_evals == 1000 * 41 and state.n_target_evals == 0
    p = float(((target.responsibilities(state.y)[:, 0] > 0.5).double() * torch.softmax(state.log_w, 0)).sum())
    assert abs(p - 2 / 3) < 0.05


def test_annealing_stage_alone_from_exact_t_min_samples_gives_log_z():
    """Particles drawn exactly from a wrong model's t_min marginal (normalised, so log Z_ref = 0),
    annealed to the normalised two-mode target: log Z ≈ 0 and mode weights 2/3 within error."""
    from boltzgen.sampling import SMCProblem, SMCRecorder, run_annealing, start_from

    target = two_modes(2)
    wrong = GaussianMixture(target.means + 0.15, 1.3 * target.stds, [1.0, 1.0], standardise=False)
    model = ExactMarginalModel(wrong)
    g = torch.Generator().manual_seed(3)
    problem = SMCProblem.build(model, target, g, settings(anneal={"n_levels": 4, "cess": 0.9, "mcmc_steps": 2}))
    recorder = SMCRecorder()
    y = marginal_samples(wrong, 2000, problem.t_min, model.schedule, g)
    state = run_annealing(start_from(problem, y, problem.t_min, recorder), problem, recorder)
    assert state.beta == 1.0 and recorder.betas[-1] == 1.0 and len(recorder.betas) == state.level + 1
    log_z = float(log_mean_exp(state.log_w))
    w = torch.softmax(state.log_w, 0)
    se = math.sqrt(float((w**2).sum()) * 2000)  # relative error of Ẑ ≈ sqrt(B Σ w²) / sqrt(B)
    assert abs(log_z) < 4.5 * se / math.sqrt(2000) + 0.02, (log_z, se)
    p = float((w * (target.responsibilities(state.y)[:, 0] > 0.5).double()).sum())
    assert abs(p - 2 / 3) < 0.05, p
    torch.testing.assert_close(state.u, target.reduced_energy(state.y))


def test_final_moves_alone_keep_the_weights_and_the_target():
    """Moves on the target from exact target samples: weights untouched, no model evaluation,
    the target's mode weights and energies kept."""
    from boltzgen.sampling import SMCProblem, SMCRecorder, run_final_moves, start_from

    target = two_modes(2)
    g = torch.Generator().manual_seed(4)
    problem = SMCProblem.build(ExactMarginalModel(target), target, g, settings(final={"mcmc_steps": 20}))
    recorder = SMCRecorder()
    state = start_from(
        problem,
        target.sample(2000, g).to(torch.float64),
        problem.t_min,
        recorder,
        log_w=torch.linspace(-1.0, 1.0, 2000, dtype=torch.float64),
    )
    log_w, evals = state.log_w.clone(), state.n_model_evals
    run_final_moves(state, problem, recorder)
    assert torch.equal(state.log_w, log_w) and state.n_model_evals == evals
    assert state.n_target_evals == 2000 * (1 + 20) and len(recorder.final_acceptance) == 20
    assert 0.3 < float(np.mean(recorder.final_acceptance)) < 0.95
    frac = float((target.responsibilities(state.y)[:, 0] > 0.5).double().mean())
    assert abs(frac - 2 / 3) < 4.5 * math.sqrt(2 / 9 / 2000)
    torch.testing.assert_close(state.u, target.reduced_energy(state.y))


def test_hmc_final_moves_relax_the_energy_in_fewer_forces_than_mala():
    """final.kernel hmc: from an overdispersed start (every coordinate at 3 x its width), 20 HMC
    moves of 5 leapfrog steps bring the mean energy of an anisotropic Gaussian to its exact value
    d/2 (over the minimum), where 100 MALA moves (the same target forces) stay well above it; the
    weights are untouched and every leapfrog step counts as a target evaluation."""
    from boltzgen.sampling import SMCProblem, SMCRecorder, run_final_moves, start_from

    d, n = 24, 1000
    stds = np.geomspace(0.1, 1.0, d)
    target = GaussianMixture(np.zeros((1, d)), stds[None], [1.0], standardise=False)
    u_min = float(target.reduced_energy(torch.zeros(1, d, dtype=torch.float64)))
    means = {}
    for kernel, moves in (("hmc", 20), ("mala", 100)):
        g = torch.Generator().manual_seed(7)
        final = {"mcmc_steps": moves, "kernel": kernel, "n_leapfrog": 5}
        problem = SMCProblem.build(ExactMarginalModel(target), target, g, settings(final=final))
        recorder = SMCRecorder()
        x0 = 3.0 * torch.as_tensor(stds) * torch.randn(n, d, generator=g, dtype=torch.float64)
        state = start_from(problem, x0, problem.t_min, recorder, log_w=torch.zeros(n, dtype=torch.float64))
        log_w = state.log_w.clone()
        run_final_moves(state, problem, recorder)
        assert torch.equal(state.log_w, log_w)
        assert state.n_target_evals == n * (1 + 100)
        torch.testing.assert_close(state.u, target.reduced_energy(state.y))
        means[kernel] = float(state.u.mean()) - u_min
    exact, error = d / 2, math.sqrt(d / 2 / n)  # u - u_min ~ chi2_d / 2: variance d/2
    assert abs(means["hmc"] - exact) < 4 * error, means
    assert means["mala"] - exact > 10 * error, means


def test_chirality_fold_alone_reflects_the_wrong_handed_particles():
    from boltzgen.sampling import SMCProblem, SMCRecorder, fold_chirality, start_from

    ls, centres = 0.1, np.array([[0, 1, 2, 3]])
    target = HarmonicMolecule([1.0, 2.0, 0.5, 1.5], scale=1.3 * ls)
    problem = SMCProblem.build(
        gaussian_molecule_model(ls), target, torch.Generator().manual_seed(0), settings(chirality=centres)
    )
    y = torch.randn(200, 4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    state = start_from(problem, y - y.mean(1, keepdim=True), problem.t_min, SMCRecorder())
    wrong, grad = count_wrong(state.y, centres), state.grad.clone()
    fold_chirality(state, problem)
    assert state.n_reflected == wrong > 0 and state.fold == pytest.approx(math.log(2))
    assert bool(in_l_region(state.y, centres).all())
    flipped = ~torch.isclose(state.grad, grad).reshape(200, -1).all(1)
    assert int(flipped.sum()) == wrong  # the gradient of a mirror-symmetric energy flips with the particle


def test_a_recorder_receives_the_trace():
    from boltzgen.sampling import SMCRecorder

    target = two_modes(2)
    recorder = SMCRecorder()
    r = smc_sample(
        ExactMarginalModel(target),
        target,
        200,
        torch.Generator().manual_seed(0),
        recorder=recorder,
        settings=settings(
            diffusion={"n_steps": 10},
            anneal={"n_levels": 3, "mcmc_steps": 1},
            final={"mcmc_steps": 2},
            resampling={"ess_threshold": 1.0},
        ),
    )
    assert torch.equal(r.ess_trace, torch.tensor(recorder.ess_trace, dtype=torch.float64))
    assert r.resampled == recorder.resampled and len(recorder.resampled) == 1 + 10 + 2
    assert recorder.betas[-3:] == pytest.approx([1 / 3, 2 / 3, 1.0]) and len(recorder.final_acceptance) == 2
    assert r.final_acceptance == pytest.approx(float(np.mean(recorder.final_acceptance)))
    assert r.settings.final.mcmc_steps == 2


def test_states_may_be_a_state_set_with_assign():
    """An object with ``assign`` (a StateSet) labels as its ``assign`` does: the same run."""
    target = two_modes(2)
    model = ExactMarginalModel(target)

    def side(x):
        return (x.sum(1) > 0).long()

    class Sides:
        def assign(self, x):
            return side(x).numpy()

    run = settings(
        diffusion={"n_steps": 10},
        anneal={"n_levels": 2, "mcmc_steps": 1},
        resampling={"ess_threshold": 0.9, "balance_states": True},
    )
    a = smc_sample(model, target, 200, torch.Generator().manual_seed(0), states=side, settings=run)
    b = smc_sample(model, target, 200, torch.Generator().manual_seed(0), states=Sides(), settings=run)
    assert torch.equal(a.x, b.x) and torch.equal(a.log_weights, b.log_weights)


def test_chirality_auto_folds_only_molecules_with_chiral_centres():
    target = two_modes(2)
    model = ExactMarginalModel(target)
    r = smc_sample(
        model,
        target,
        32,
        torch.Generator().manual_seed(0),
        settings=settings(diffusion={"n_steps": 4}, anneal={"n_levels": 1}, chirality="auto"),
    )
    assert r.n_reflected == 0
    with pytest.raises(ValueError, match="topology"):
        smc_sample(model, target, 32, settings=settings(chirality=True))


def test_diffusion_models_follow_the_protocol():
    from boltzgen.sampling import DiffusionModel

    assert isinstance(ExactMarginalModel(two_modes(2)), DiffusionModel)
    assert isinstance(gaussian_molecule_model(0.1).inner, DiffusionModel)
    assert not isinstance(object(), DiffusionModel)


# ---------------------------------------------------------------------------- settings
def test_settings_defaults_are_the_command_line_defaults():
    s = SMCSettings()
    assert (s.diffusion.n_steps, s.diffusion.spacing, s.diffusion.t_min, s.diffusion.kernel) == (
        100,
        "quadratic",
        None,
        "ddpm",
    )
    assert (s.diffusion.mcmc_steps, s.diffusion.tempering) == (0, 1.0)
    assert (s.anneal.n_levels, s.anneal.cess, s.anneal.max_levels, s.anneal.mcmc_steps) == (16, 0.9, 64, 5)
    assert s.final.mcmc_steps == 50 and s.chirality == "auto"
    assert (s.moves.kernel, s.moves.acceptance, s.moves.n_leapfrog) == ("mala", 0.574, 5)
    assert (
        s.resampling.ess_threshold,
        s.resampling.method,
        s.resampling.denoised_labels,
        s.resampling.balance_states,
    ) == (0.5, "systematic", True, False)


def test_settings_round_trip_through_a_plain_dict():
    s = SMCSettings.from_dict(
        {
            "diffusion": {"n_steps": 7, "t_min": 0.05},
            "anneal": {"betas": [0.25, 1], "cess": None},
            "chirality": np.array([[6, 8, 14, 10]]),
            "batch_size": 64,
        }
    )
    d = s.to_dict()
    assert d["anneal"]["betas"] == [0.25, 1.0] and d["chirality"] == [[6, 8, 14, 10]]
    assert json.loads(json.dumps(d)) == d and SMCSettings.from_dict(d) == s
    assert s.updated({"anneal": {"n_levels": 3}}).anneal == s.anneal.__class__(n_levels=3, betas=(0.25, 1.0), cess=None)
    assert SMCSettings.from_dict(None) == SMCSettings() == SMCSettings.from_dict(SMCSettings().to_dict())


@pytest.mark.parametrize(
    "changes, name",
    [
        ({"diffusion": {"n_steps": 0}}, "diffusion.n_steps"),
        ({"diffusion": {"n_steps": 2.5}}, "diffusion.n_steps"),
        ({"diffusion": {"spacing": "cubic"}}, "diffusion.spacing"),
        ({"diffusion": {"t_min": 1.0}}, "diffusion.t_min"),
        ({"diffusion": {"kernel": "heun"}}, "diffusion.kernel"),
        ({"diffusion": {"mcmc_steps": -1}}, "diffusion.mcmc_steps"),
        ({"diffusion": {"step_size": 0.0}}, "diffusion.step_size"),
        ({"diffusion": {"tempering": 1.5}}, "diffusion.tempering"),
        ({"diffusion": {"particle_factor": 0}}, "diffusion.particle_factor"),
        ({"anneal": {"n_levels": -1}}, "anneal.n_levels"),
        ({"anneal": {"betas": [0.5, 0.4, 1.0], "cess": None}}, "anneal.betas"),
        ({"anneal": {"cess": 1.0}}, "anneal.cess"),
        ({"anneal": {"max_levels": 0}}, "anneal.max_levels"),
        ({"anneal": {"mcmc_steps": True}}, "anneal.mcmc_steps"),
        ({"anneal": {"step_size": -0.1}}, "anneal.step_size"),
        ({"final": {"mcmc_steps": -5}}, "final.mcmc_steps"),
        ({"moves": {"kernel": "nuts"}}, "moves.kernel"),
        ({"moves": {"target_acceptance": 1.0}}, "moves.target_acceptance"),
        ({"moves": {"n_leapfrog": 0}}, "moves.n_leapfrog"),
        ({"moves": {"adapt_rate": -1.0}}, "moves.adapt_rate"),
        ({"resampling": {"ess_threshold": 1.5}}, "resampling.ess_threshold"),
        ({"resampling": {"method": "greedy"}}, "resampling.method"),
        ({"resampling": {"denoised_labels": "yes"}}, "resampling.denoised_labels"),
        ({"chirality": "maybe"}, "chirality"),
        ({"chirality": [[0.5, 1, 2, 3]]}, "chirality"),
        ({"batch_size": -1}, "batch_size"),
        ({"progress": "no"}, "progress"),
        ({"diffusion": 3}, "diffusion"),
    ],
)
def test_settings_reject_bad_values_naming_them(changes, name):
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        SMCSettings.from_dict(changes)


def test_settings_reject_unknown_keys_naming_them():
    with pytest.raises(ValueError, match=r"anneal\.cesss: unknown key"):
        SMCSettings.from_dict({"anneal": {"cesss": 0.5}})
    with pytest.raises(ValueError, match="n_steps: unknown key"):
        SMCSettings.from_dict({"n_steps": 10})
    with pytest.raises(ValueError, match=r"final\.steps: unknown key"):
        SMCSettings().updated({"final": {"steps": 3}})
    with pytest.raises(ValueError, match="diffusion: must be a DiffusionSettings"):
        SMCSettings(diffusion={"n_steps": 3})


# ---------------------------------------------------------------------------- slow: unbiasedness
@pytest.mark.slow
def test_smc_normaliser_is_unbiased_over_repetitions():
    """E[Ẑ] = Z: with a perturbed model and small N, the mean of Ẑ over independent runs is 1."""
    target = two_modes(2)
    model = ExactMarginalModel(target, perturbation=lambda y, t: 0.3 * torch.sin(3 * y[:, 0]))
    z = []
    for seed in range(150):
        r = smc_sample(
            model,
            target,
            64,
            torch.Generator().manual_seed(seed),
            settings=settings(diffusion={"n_steps": 30, "mcmc_steps": 1}, anneal={"n_levels": 8, "mcmc_steps": 2}),
        )
        z.append(math.exp(r.log_z))
    z = np.asarray(z)
    assert abs(z.mean() - 1.0) < 4 * z.std() / math.sqrt(len(z))


def test_sampler_says_when_the_annealing_cap_is_reached():
    """A wrong model and a cap of 2 adaptive levels: the run jumps to beta = 1 and says so."""
    target = two_modes(2)
    model = ExactMarginalModel(GaussianMixture(target.means + 1.0, 0.5 * target.stds, [1.0, 1.0], standardise=False))
    with pytest.warns(RuntimeWarning, match="reached its cap of 2 levels"):
        r = smc_sample(
            model,
            target,
            200,
            torch.Generator().manual_seed(0),
            settings=settings(
                diffusion={"n_steps": 5}, anneal={"cess": 0.99, "n_levels": 1, "max_levels": 2, "mcmc_steps": 0}
            ),
        )
    assert any("cap of 2 levels" in w for w in r.warnings)
    exact = smc_sample(
        ExactMarginalModel(target),
        target,
        200,
        torch.Generator().manual_seed(0),
        settings=settings(diffusion={"n_steps": 5}, anneal={"n_levels": 2, "mcmc_steps": 0}),
    )
    assert exact.warnings == []


def test_a_state_without_weight_at_the_end_is_reported():
    """A named state that no weighted particle reaches is a warning in the result, not a silent gap."""
    from boltzgen.states import function_states

    target = two_modes(2)
    model = ExactMarginalModel(target)
    run = settings(diffusion={"n_steps": 10}, anneal={"n_levels": 2, "mcmc_steps": 1})
    far = function_states(lambda x: (torch.as_tensor(x)[:, 0] > 1e3).long().numpy(), ["near", "far"])
    with pytest.warns(RuntimeWarning, match="state far holds no particle"):
        result = smc_sample(model, target, 64, torch.Generator().manual_seed(0), states=far, settings=run)
    assert any("state far" in w for w in result.warnings) and not any("state near" in w for w in result.warnings)
    sides = function_states(lambda x: (torch.as_tensor(x).sum(1) > 0).long().numpy(), ["left", "right"])
    result = smc_sample(model, target, 64, torch.Generator().manual_seed(0), states=sides, settings=run)
    assert not any("holds no particle" in w for w in result.warnings)


# ---------------------------------------------------------------------------- annealed diffusion weights
def test_annealed_diffusion_weights_give_log_z_and_mode_weights_of_a_wrong_model():
    """diffusion.weights 'annealed' (rescale, reweight by the energy change, MALA moves): with the
    exact marginals the diffusion stage's log Z is 0 and the mode weights 2 : 1; with marginals
    perturbed by a time-dependent term that no forward process produces, the whole run (diffusion,
    then annealing to the target) still gives log Z ≈ 0 and 2/3 within error."""
    from boltzgen.sampling import SMCProblem, SMCRecorder, run_diffusion, start_at_prior

    target = two_modes(2)
    run = settings(diffusion={"n_steps": 40, "weights": "annealed", "mcmc_steps": 2})
    problem = SMCProblem.build(ExactMarginalModel(target), None, torch.Generator().manual_seed(0), run)
    recorder = SMCRecorder()
    state = run_diffusion(start_at_prior(problem, 2000, recorder), problem, recorder)
    assert abs(state.log_z_diffusion) < 0.05 and min(recorder.ess_trace) > 0.3
    p = float(((target.responsibilities(state.y)[:, 0] > 0.5).double() * torch.softmax(state.log_w, 0)).sum())
    assert abs(p - 2 / 3) < 0.05

    wrong = ExactMarginalModel(target, perturbation=lambda y, t: 0.8 * (1 - t) * torch.sin(3 * y[:, 0]))
    r = smc_sample(
        wrong,
        target,
        2000,
        torch.Generator().manual_seed(1),
        settings=settings(
            diffusion={"n_steps": 40, "weights": "annealed", "mcmc_steps": 2},
            anneal={"n_levels": 4, "cess": 0.9, "mcmc_steps": 2},
        ),
    )
    assert abs(r.log_z) < 0.1, r.log_z
    p, se = weighted_mode_fraction(target, r)
    assert abs(p - 2 / 3) < 4.5 * se + 0.01, (p, se)


def test_annealed_diffusion_weights_count_the_jacobian_of_the_rescaling():
    """Mean-free harmonic molecule in y = x/ℓ: the annealed diffusion stage's log Z is the model's
    own normaliser (2π ℓ² c²)^{9/2}; leaving out the d log(α_t'/α_t) of the rescaling would miss
    it by (9/2) log of the prior's variance ratio."""
    ls = 0.1
    model = gaussian_molecule_model(ls)
    r = smc_sample(
        model,
        None,
        500,
        torch.Generator().manual_seed(0),
        settings=settings(diffusion={"n_steps": 30, "weights": "annealed", "mcmc_steps": 1}),
    )
    c2 = float(model.inner.c2(torch.tensor(model.t_min, dtype=torch.float64)))
    assert r.log_z_diffusion == pytest.approx(4.5 * math.log(2 * math.pi * ls**2 * c2), abs=0.03)
    assert float(r.x.mean(1).abs().max()) < 1e-10


def test_annealed_diffusion_weights_need_moves():
    with pytest.raises(ValueError, match="diffusion.mcmc_steps: must be at least 1 with diffusion.weights"):
        SMCSettings.from_dict({"diffusion": {"weights": "annealed"}})
    with pytest.raises(ValueError, match="diffusion.weights: must be one of"):
        SMCSettings.from_dict({"diffusion": {"weights": "ais", "mcmc_steps": 1}})


# ---------------------------------------------------------------------------- Laplace hand-over
def test_laplace_handover_gives_log_z_and_mode_weights():
    """anneal.handover 'laplace' on the two-mode GMM: with the exact marginals the one step loses
    almost nothing at t_min = 0.01 (the posterior is nearly Gaussian), log Z ≈ 0 and the modes
    2 : 1; with time-perturbed marginals log Z and the mode weight stay right within error."""
    target = two_modes(2)
    run = settings(diffusion={"n_steps": 40, "t_min": 0.01}, anneal={"handover": "laplace"})
    r = smc_sample(ExactMarginalModel(target), target, 2000, torch.Generator().manual_seed(0), settings=run)
    assert abs(r.log_z) < 0.03 and r.ess[-1] > 0.95 * r.ess[-2], (r.log_z, r.ess[-2:])
    assert float(r.beta[-1]) == 1.0 and int((r.beta > 0).sum()) == 1
    p, se = weighted_mode_fraction(target, r)
    assert abs(p - 2 / 3) < 4.5 * se + 0.01, (p, se)
    wrong = ExactMarginalModel(target, perturbation=lambda y, t: 0.8 * (1 - t) * torch.sin(3 * y[:, 0]))
    r = smc_sample(wrong, target, 2000, torch.Generator().manual_seed(1), settings=run)
    assert abs(r.log_z) < 0.1, r.log_z
    p, se = weighted_mode_fraction(target, r)
    assert abs(p - 2 / 3) < 4.5 * se + 0.01, (p, se)


def test_laplace_handover_on_a_molecule_counts_the_subspace_and_folds_after_the_step():
    """Mean-free harmonic molecule in y = x/ℓ: log Z of the hand-over is the exact one on the
    9-dimensional subspace; with a chiral centre the step is followed by the fold, log Z drops by
    log 2 and every particle is L."""
    ls = 0.1
    target = HarmonicMolecule([1.0, 2.0, 0.5, 1.5], scale=1.3 * ls)
    model = gaussian_molecule_model(ls, dtype=torch.float64)
    run = settings(diffusion={"n_steps": 30, "t_min": 0.01}, anneal={"handover": "laplace"})
    r = smc_sample(model, target, 1000, torch.Generator().manual_seed(0), settings=run)
    assert abs(r.log_z - target.exact_log_z()) < 0.08, (r.log_z, target.exact_log_z())
    assert float(r.x.mean(1).abs().max()) < 1e-10
    centres = np.array([[0, 1, 2, 3]])
    r = smc_sample(model, target, 1000, torch.Generator().manual_seed(1), settings=run.updated({"chirality": centres}))
    assert bool(in_l_region(r.x, centres).all()) and 300 < r.n_reflected < 700
    assert abs(r.log_z - (target.exact_log_z() - math.log(2))) < 0.08


def test_handover_setting_is_checked():
    with pytest.raises(ValueError, match="anneal.handover: must be one of"):
        SMCSettings.from_dict({"anneal": {"handover": "newton"}})


def test_lineage_bootstrap_error_of_one_run_matches_the_spread_between_runs():
    """One SMC run's particles share ancestors: a bootstrap over its particles understates the
    error of ΔF between runs; one over its lineages (ancestors at t = 1, the clusters boltzgen
    sample uses for a single run) matches the spread of independent runs."""
    from boltzgen.weights import delta_f

    d = 8
    target = two_modes(d)
    wrong = GaussianMixture(np.asarray(target.means) * 0.9 + 0.3, 1.4 * np.ones(2), [1.0, 1.0], standardise=False)
    direction = np.ones(d) / np.sqrt(d)

    def states(x):
        return (np.asarray(x).reshape(len(x), -1) @ direction > 0).astype(np.int64)

    run = settings(diffusion={"n_steps": 20}, anneal={"n_levels": 8, "mcmc_steps": 2}, final={"mcmc_steps": 0})
    values, by_particle, by_lineage = [], [], []
    for seed in range(30):
        r = smc_sample(
            ExactMarginalModel(wrong), target, 128, torch.Generator().manual_seed(seed), settings=run, states=states
        )
        lw, label = r.log_weights.numpy(), states(r.x.numpy())
        values.append(delta_f(lw, label == 0, label == 1, seed=seed).value)
        by_particle.append(delta_f(lw, label == 0, label == 1, seed=seed).error)
        by_lineage.append(delta_f(lw, label == 0, label == 1, seed=seed, groups=r.ancestors.numpy()).error)
    spread = float(np.std(values, ddof=1))
    assert abs(np.mean(values) - math.log(2.0)) < 3 * spread / math.sqrt(len(values))  # consistent: F_B − F_A = ln 2
    assert np.median(by_particle) < 0.7 * spread  # the particles' bootstrap understates the error
    assert 0.7 * spread < np.median(by_lineage) < 1.4 * spread


def test_run_seeds_and_sizes():
    """Each run's seed depends only on the sample's seed and the run's place, never on how many runs
    follow; the sizes share the particles, the first runs taking the remainder."""
    from boltzgen.sampling.runs import run_seeds, run_sizes

    five, three = run_seeds(7, 5), run_seeds(7, 3)
    assert five[:3] == three and len(set(five)) == 5
    assert run_seeds(8, 3) != three
    assert all(0 <= s < 2**63 for s in five)
    assert run_sizes(31, 3) == [11, 10, 10] and run_sizes(4, 4) == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="runs must lie between 1"):
        run_sizes(3, 4)


def test_quickstart_smc_settings_are_unbiased_for_a_rare_state_the_model_gets_wrong():
    """The shipped quickstart's SMC settings (diffusion to t_min, adaptive annealing with
    multiple-time-step HMC moves, keep_states, balanced per-state resampling) on a 97.5 : 2.5
    mixture whose model puts 30 % in the rare mode, shifted and too wide: over independent runs
    the rare state's weight (the mean of the runs' shares, and the Ẑ-weighted pool the sampler
    uses) matches the exact one."""
    from scipy.stats import norm

    from boltzgen.workflow import load_recipe

    base = two_modes(2)
    target = GaussianMixture(base.means, base.stds, [0.975, 0.025], standardise=False)
    wrong = GaussianMixture(base.means + 0.1, 1.2 * base.stds, [0.7, 0.3], standardise=False)
    model = ExactMarginalModel(wrong, perturbation=lambda y, t: 0.3 * torch.sin(3 * y[:, 0]))
    mid = float(target.means.sum(1).mean())
    sign = 1.0 if float(target.means[1].sum() - target.means[0].sum()) > 0 else -1.0

    def side(x):
        return ((x.sum(1) - mid) * sign > 0).long()

    exact = sum(  # x_1 + x_2 is normal within each mode
        float(w) * norm.sf(sign * mid, sign * float(m.sum()), float(torch.sqrt((s**2).sum())))
        for w, m, s in zip(target.weights, target.means, target.stds)
    )
    run = SMCSettings.from_dict(load_recipe("quickstart", "default")["sample"]["settings"])
    assert run.anneal.keep_states and run.anneal.inner_steps > 0 and run.resampling.balance_states
    shares, log_z = [], []
    for seed in range(24):
        r = smc_sample(model, target, 128, torch.Generator().manual_seed(seed), settings=run, states=side)
        shares.append(float((r.weights * side(r.x).double()).sum()))
        log_z.append(r.log_z)
    shares, z = np.array(shares), np.exp(np.array(log_z))
    se = shares.std(ddof=1) / math.sqrt(len(shares))
    assert abs(shares.mean() - exact) < 4 * se, (shares.mean(), se, exact)
    assert abs((z * shares).sum() / z.sum() - exact) < 4 * se
    assert abs(np.mean(log_z)) < 0.1  # the mixture is normalised
