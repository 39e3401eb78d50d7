"""Composed energy models (issue 23): products and mixtures sampled by SMC, against exact answers."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from boltzgen.compose import mixture, product
from boltzgen.sampling.exact import ExactMarginalModel
from boltzgen.sampling.settings import SMCSettings
from boltzgen.sampling.smc import smc_sample
from boltzgen.systems import GaussianMixture

T_MIN = 1e-3


def mixtures():
    """Two 2-D mixtures with modes at x = -4 and +4 (unstandardised, exact diffused marginals)."""
    means = [[-4.0, 0.0], [4.0, 0.0]]
    a = GaussianMixture(means, [1.0, 1.0], [0.5, 0.5], name="a", standardise=False)
    b = GaussianMixture(means, [1.5, 1.5], [0.2, 0.8], name="b", standardise=False)
    return a, b


def marginal(gmm, t, schedule):
    """(weights, means, variances) of the diffused mixture at time t (isotropic components)."""
    alpha, s2 = float(schedule.alpha(torch.tensor(t))), float(schedule.sigma2(torch.tensor(t)))
    return gmm.weights.numpy(), alpha * gmm.means.numpy(), alpha**2 * gmm.stds[:, 0].numpy() ** 2 + s2


def run(model, seed=0, n=600, runs=4):
    """R SMC runs with MCMC moves along the path (the composed path is not the diffused
    composition, so the particles must be moved): pooled log Z, its error, and the weight of x < 0."""
    settings = SMCSettings.from_dict({"diffusion": {"n_steps": 100, "t_min": T_MIN, "mcmc_steps": 5}})
    g = torch.Generator().manual_seed(seed)
    results = [smc_sample(model, None, n, g, settings=settings) for _ in range(runs)]
    log_z_runs = np.array([r.log_z for r in results])
    log_z = float(np.logaddexp.reduce(log_z_runs) - math.log(runs))
    err = float(np.std(np.exp(log_z_runs - log_z), ddof=1) / math.sqrt(runs))
    lefts = [float(r.weights.numpy()[r.x[:, 0].numpy() < 0].sum() / r.weights.numpy().sum()) for r in results]
    z = np.exp(log_z_runs - log_z)
    return log_z, err, float(np.sum(z * np.array(lefts)) / z.sum())


def test_product_of_experts_log_z_and_mode_weights_are_exact():
    a, b = mixtures()
    ma, mb = ExactMarginalModel(a, t_min=T_MIN), ExactMarginalModel(b, t_min=T_MIN)
    wa, mua, va = marginal(a, T_MIN, ma.schedule)
    wb, mub, vb = marginal(b, T_MIN, mb.schedule)
    # N(y; m, S) N(y; n, T) = N(m; n, S + T) N(y; c, C): the product is a mixture of the pairs
    log_pi, centres, cvars = [], [], []
    for j in range(2):
        for k in range(2):
            s = va[j] + vb[k]
            log_pi.append(
                math.log(wa[j] * wb[k]) - ((mua[j] - mub[k]) ** 2).sum() / (2 * s) - math.log(2 * math.pi * s)
            )
            c_var = va[j] * vb[k] / s
            centres.append((mua[j] * vb[k] + mub[k] * va[j]) / s)
            cvars.append(c_var)
    log_z = float(np.logaddexp.reduce(log_pi))
    pi = np.exp(np.array(log_pi) - log_z)
    left = float(sum(p * norm.cdf(-c[0] / math.sqrt(v)) for p, c, v in zip(pi, centres, cvars)))
    value, err, left_smc = run(product([ma, mb], [1.0, 1.0]))
    assert abs(value - log_z) < 4 * err + 0.02
    assert abs(left_smc - left) < 0.03


def test_mixture_of_models_is_the_mixture():
    a, b = mixtures()
    ma, mb = ExactMarginalModel(a, t_min=T_MIN), ExactMarginalModel(b, t_min=T_MIN)
    value, err, left = run(mixture([ma, mb], [0.3, 0.7]), seed=1)
    assert abs(value) < 4 * err + 0.02  # normalised components: the mixture is normalised
    assert abs(left - (0.3 * 0.5 + 0.7 * 0.2)) < 0.03
    # two halves of one model are that model again
    value, err, left = run(product([ma, ma], [0.5, 0.5]), seed=2)
    assert abs(value) < 4 * err + 0.02 and abs(left - 0.5) < 0.03


def test_composition_refuses_mismatched_models():
    a, _ = mixtures()
    other = GaussianMixture([[0.0, 0.0, 0.0]], [1.0], [1.0], standardise=False)
    with pytest.raises(ValueError, match="different configurations"):
        product([ExactMarginalModel(a), ExactMarginalModel(other)], [1, 1])
    with pytest.raises(ValueError, match="one coefficient per model"):
        mixture([ExactMarginalModel(a)], [0.5, 0.5])
    with pytest.raises(ValueError, match="positive"):
        mixture([ExactMarginalModel(a), ExactMarginalModel(a)], [1.0, -1.0])
