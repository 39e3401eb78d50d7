"""Importance-weight estimators against exact Gaussian answers, shift invariance, clear errors."""

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import norm

from boltzgen import weights as W


def gaussian_is(n, d, s, mu=None, seed=0):
    """Proposal N(0, s² I) in d dims, unnormalised target exp(-|x - mu|²/2).

    Returns x, log w, exact log Z = d/2 log 2π and the exact E_q[w²]/E_q[w]² = (s²/sqrt(2s² - 1))^d.
    """
    rng = np.random.default_rng(seed)
    mu = np.zeros(d) if mu is None else np.asarray(mu, float)
    x = s * rng.standard_normal((n, d))
    log_q = -0.5 * (x**2).sum(1) / s**2 - d * math.log(s) - 0.5 * d * math.log(2 * math.pi)
    u = 0.5 * ((x - mu) ** 2).sum(1)
    log_z = 0.5 * d * math.log(2 * math.pi)
    ratio = (s**2 / math.sqrt(2 * s**2 - 1)) ** d
    return x, W.log_weights(u, log_q), log_z, ratio


def test_ess_and_log_z_match_exact_gaussian_answers():
    n, d, s = 100_000, 2, 1.5
    _, lw, exact_log_z, ratio = gaussian_is(n, d, s)
    # ESS / n -> E[w]² / E[w²] = 1 / ratio (≈ 0.691 here).
    assert W.ess_fraction(lw) == pytest.approx(1 / ratio, rel=0.02)
    assert W.ess(lw) == pytest.approx(n * W.ess_fraction(lw))
    est = W.log_z(lw)
    # Delta-method error against its exact value sqrt((ratio - 1)/n), and log Z within 4 errors.
    assert est.error == pytest.approx(math.sqrt((ratio - 1) / n), rel=0.05)
    assert abs(est.value - exact_log_z) < 4 * est.error
    boot = W.log_z(lw, method="bootstrap", n_bootstrap=50, seed=1)
    assert boot.value == est.value and boot.error == pytest.approx(est.error, rel=0.3)
    w = W.normalized_weights(lw)
    assert w.dtype == np.float64 and w.sum() == pytest.approx(1.0) and (w >= 0).all()


def test_expectations_converge_to_exact_mean():
    mu = np.array([0.5, -0.3])
    x, lw, _, _ = gaussian_is(100_000, 2, 1.5, mu=mu, seed=2)
    mean = W.expectation(x, lw)
    assert mean.value.shape == (2,) and (mean.error > 0).all()
    assert (np.abs(mean.value - mu) < 4 * mean.error).all()
    second = W.expectation(x[:, 0] ** 2, lw)
    assert isinstance(second.value, float)
    assert abs(second.value - (mu[0] ** 2 + 1)) < 4 * second.error
    boot = W.expectation(x[:, 0], lw, method="bootstrap", n_bootstrap=50, seed=0)
    assert boot.error == pytest.approx(mean.error[0], rel=0.3)
    # Torch inputs give the same answers.
    assert W.expectation(torch.from_numpy(x[:, 0]), torch.from_numpy(lw)).value == pytest.approx(mean.value[0])


def test_shift_by_thousands_is_harmless():
    x, lw, _, _ = gaussian_is(2000, 1, 1.5, seed=3)
    in_a, in_b = x[:, 0] < 0, x[:, 0] > 0
    ref = (W.ess(lw), W.normalized_weights(lw), W.expectation(x[:, 0], lw), W.delta_f(lw, in_a, in_b, seed=0))
    for shift in (-1000.0, 1000.0):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            lws = lw + shift
            assert W.ess(lws) == pytest.approx(ref[0], rel=1e-10)
            np.testing.assert_allclose(W.normalized_weights(lws), ref[1], rtol=1e-9)
            assert W.log_z(lws).value == pytest.approx(W.log_z(lw).value + shift, rel=1e-12)
            assert W.expectation(x[:, 0], lws).value == pytest.approx(ref[2].value, rel=1e-9)
            df = W.delta_f(lws, in_a, in_b, seed=0)
            assert df.value == pytest.approx(ref[3].value, abs=1e-9)
            assert df.error == pytest.approx(ref[3].error, rel=1e-6)
    # Log-weights spanning thousands of units: one sample carries all the weight, no overflow or NaN.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spread = np.array([0.0, -2000.0, -5000.0, -np.inf])
        assert W.ess(spread) == 1.0 and W.ess(spread + 3000) == 1.0
        assert W.normalized_weights(spread).tolist() == [1.0, 0.0, 0.0, 0.0]
        assert W.ess(np.array([700.0, 700.0])) == pytest.approx(2.0)


def two_state_toy(n, seed):
    """Target 2/3 N(-4, 1) + 1/3 N(4, 1) sampled from 1/2 N(-4, 1.2²) + 1/2 N(4, 1.2²)."""
    rng = np.random.default_rng(seed)
    comp = rng.integers(0, 2, n)
    x = np.where(comp == 0, -4.0, 4.0) + 1.2 * rng.standard_normal(n)
    log_q = np.logaddexp(np.log(0.5) + norm.logpdf(x, -4, 1.2), np.log(0.5) + norm.logpdf(x, 4, 1.2))
    u = -np.logaddexp(np.log(2 / 3) + norm.logpdf(x, -4, 1), np.log(1 / 3) + norm.logpdf(x, 4, 1))
    return x, W.log_weights(u, log_q)


def test_delta_f_two_state_toy_recovers_ln2_with_calibrated_error():
    # Exact F(x > 0) - F(x < 0), including the tiny mass each component leaks across 0.
    p_b = 2 / 3 * norm.sf(4) + 1 / 3 * norm.cdf(4)
    exact = -math.log(p_b / (1 - p_b))
    assert exact == pytest.approx(math.log(2), abs=1e-4)
    estimates, errors = [], []
    for seed in range(40):
        x, lw = two_state_toy(1000, seed)
        est = W.delta_f(lw, x < 0, x > 0, n_bootstrap=100, seed=seed)
        estimates.append(est.value)
        errors.append(est.error)
    x, lw = two_state_toy(1000, 0)
    # Callables of the configurations give the same estimate.
    same = W.delta_f(lw, lambda c: c < 0, lambda c: c > 0, x=x, n_bootstrap=100, seed=0)
    assert same == (estimates[0], errors[0])
    x, lw = two_state_toy(20_000, 1)
    big = W.delta_f(lw, x < 0, x > 0, n_bootstrap=50, seed=1)
    assert abs(big.value - exact) < 3 * big.error and big.error < 0.03
    # The bootstrap error matches the spread over independent repetitions; the mean is unbiased.
    spread = np.std(estimates, ddof=1)
    assert 0.7 < np.mean(errors) / spread < 1.4
    assert abs(np.mean(estimates) - exact) < 4 * spread / math.sqrt(len(estimates))


def test_all_zero_weights_and_empty_states_raise_clear_errors():
    dead = np.full(5, -np.inf)
    for fn in (
        W.ess,
        W.ess_fraction,
        W.normalized_weights,
        lambda lw: W.log_z(lw),
        lambda lw: W.expectation(np.arange(5.0), lw),
    ):
        with pytest.raises(ValueError, match="all 5 weights are zero"):
            fn(dead)
    with pytest.raises(ValueError, match="all 5 weights are zero"):
        W.delta_f(dead, np.ones(5, bool), np.ones(5, bool))
    lw = np.array([0.0, -1.0, -np.inf, -np.inf])
    a = np.array([True, True, False, False])
    with pytest.raises(ValueError, match="state B is empty"):
        W.delta_f(lw, a, np.zeros(4, bool))
    with pytest.raises(ValueError, match="state A is empty"):
        W.delta_f(lw, np.zeros(4, bool), a)
    with pytest.raises(ValueError, match="state B has no weight: all 2 samples"):
        W.delta_f(lw, a, ~a)
    with pytest.raises(ValueError, match="state B has 3 entries but log_w has 4"):
        W.delta_f(lw, a, np.ones(3, bool))
    with pytest.raises(ValueError, match="pass x="):
        W.delta_f(lw, a, lambda c: c > 0)
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        W.ess(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="values have 3 rows"):
        W.expectation(np.zeros(3), lw)
    # A state whose every bootstrap replicate may lose its one sample: error inf with a warning, no NaN.
    with pytest.warns(RuntimeWarning, match="undefined"):
        est = W.delta_f(np.zeros(20), np.arange(20) > 0, np.arange(20) == 0, n_bootstrap=50, seed=0)
    assert est.value == pytest.approx(math.log(19)) and est.error == math.inf


def test_log_weights_conventions_and_errors():
    lw = W.log_weights(np.array([1.0, np.inf, np.nan]), np.array([0.5, 0.0, 0.0]))
    assert lw.dtype == np.float64 and lw[0] == -1.5 and lw[1] == -np.inf and lw[2] == -np.inf
    assert W.log_weights(torch.tensor([2.0], dtype=torch.float64), torch.tensor([1.0])).tolist() == [-3.0]
    with pytest.raises(ValueError, match="reduced_energy has 2 entries but log_q has 3"):
        W.log_weights(np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError, match="log_q has 1 non-finite entries \\(indices 1\\)"):
        W.log_weights(np.zeros(2), np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="-inf"):
        W.log_weights(np.array([-np.inf]), np.zeros(1))


def test_bootstrap_helper_is_seeded():
    data = np.arange(50.0)
    a = W.bootstrap(np.mean, data, n_bootstrap=20, seed=4)
    assert a.shape == (20,)
    np.testing.assert_array_equal(a, W.bootstrap(np.mean, data, n_bootstrap=20, seed=4))
    assert not np.array_equal(a, W.bootstrap(np.mean, data, n_bootstrap=20, seed=5))
    pairs = W.bootstrap(
        lambda p, q: np.array([p.sum(), q.sum()]), data, data, n_bootstrap=5, seed=np.random.default_rng(0)
    )
    assert pairs.shape == (5, 2) and (pairs[:, 0] == pairs[:, 1]).all()
    with pytest.raises(ValueError, match="different lengths"):
        W.bootstrap(np.mean, data, data[:3])


def two_state_chain(n, p_b, rho, seed):
    """Stationary two-state Markov chain (True = state B with probability p_b) whose indicator has
    autocorrelation rho^k: jump A→B with a = p_b (1 − rho), B→A with b = (1 − p_b)(1 − rho)."""
    rng = np.random.default_rng(seed)
    a, b = p_b * (1 - rho), (1 - p_b) * (1 - rho)
    u = rng.random(n)
    s = np.empty(n, dtype=bool)
    s[0] = u[0] < p_b
    for i in range(1, n):
        s[i] = (u[i] < 1 - b) if s[i - 1] else (u[i] < a)
    return s


def test_block_bootstrap_gives_the_exact_error_of_a_correlated_trajectory():
    """ΔF between the two states of a Markov chain with indicator autocorrelation rho^k: the
    standard error of the fraction p̂ is sqrt(p (1 − p) / n · (1 + rho) / (1 − rho)) for large n,
    so that of ΔF = −ln(p̂ / (1 − p̂)) is that over p (1 − p). The block bootstrap with the
    automatic block length matches it (and the spread over independent chains); the plain
    bootstrap, which treats the frames as independent, is sqrt(19) ≈ 4.4 times too small."""
    p_b, rho, n = 0.1, 0.9, 20_000
    exact = math.sqrt(p_b * (1 - p_b) / n * (1 + rho) / (1 - rho)) / (p_b * (1 - p_b))
    lw = np.zeros(n)
    values, block_errors, plain_errors, blocks = [], [], [], []
    for seed in range(12):
        s = two_state_chain(n, p_b, rho, seed)
        blocks.append(W.block_size_for(np.stack([~s, s], 1).astype(float)))
        block = W.delta_f(lw, ~s, s, n_bootstrap=200, seed=seed, block_size="auto")
        plain = W.delta_f(lw, ~s, s, n_bootstrap=200, seed=seed)
        assert block.value == plain.value
        values.append(block.value)
        block_errors.append(block.error)
        plain_errors.append(plain.error)
    assert min(blocks) >= 32  # several correlation times (2 / (1 − rho) − 1 = 19 frames)
    assert 0.75 < np.mean(block_errors) / exact < 1.25, (np.mean(block_errors), exact)
    assert 0.6 < np.std(values, ddof=1) / exact < 1.5
    assert 3.0 < np.mean(block_errors) / np.mean(plain_errors) < 6.0
    assert abs(np.mean(values) + math.log(p_b / (1 - p_b))) < 4 * exact / math.sqrt(len(values))
    # uncorrelated frames: the block bootstrap agrees with the plain one
    s = np.random.default_rng(0).random(n) < p_b
    block, plain = (W.delta_f(lw, ~s, s, n_bootstrap=200, seed=1, block_size=b) for b in ("auto", 1))
    assert block.error == pytest.approx(plain.error, rel=0.25)


def test_bootstrap_blocks_are_circular_runs_and_block_one_is_the_plain_bootstrap():
    rng = np.random.default_rng(3)
    idx = W.bootstrap_indices(10, rng, 4)
    assert idx.shape == (10,)
    runs = idx[:8].reshape(2, 4)
    assert ((np.diff(runs, axis=1) % 10) == 1).all() and (idx[9] - idx[8]) % 10 == 1
    plain = W.bootstrap_indices(50, np.random.default_rng(7), 1)
    np.testing.assert_array_equal(plain, np.random.default_rng(7).integers(0, 50, size=50))
    assert W.bootstrap_indices(5, rng, 99).shape == (5,)  # a block longer than the data: one circular run
    for bad in (0, -2, 1.5):
        with pytest.raises(ValueError, match="block_size must be a positive integer"):
            W.bootstrap(np.mean, np.arange(5.0), n_bootstrap=3, block_size=bad)
    with pytest.raises(ValueError, match="'auto'"):
        W.delta_f(np.zeros(4), np.array([1, 1, 0, 0], bool), np.array([0, 0, 1, 1], bool), block_size="long")
    assert W.block_size_for(np.arange(20.0)) == 1  # too short for 16 blocks of 2


def test_state_free_energies_of_equal_weights_are_minus_log_count_ratios():
    """Equal weights: F_k - F_0 = -ln(n_k / n_0) exactly; an empty state is +inf (error nan)."""
    labels = np.repeat([0, 1, 2, 4], [40, 10, 20, 25])
    est = W.state_free_energies(np.zeros(labels.size), labels, 5, seed=0)
    assert len(est) == 5 and est[0] == (0.0, 0.0)
    for k, n_k in ((1, 10), (2, 20), (4, 25)):
        assert est[k].value == pytest.approx(-math.log(n_k / 40), abs=1e-12)
        assert 0 < est[k].error < 1
    assert est[3].value == math.inf and math.isnan(est[3].error)
    # a shift of every log-weight by thousands changes nothing; torch input is accepted
    shifted = W.state_free_energies(torch.full((labels.size,), 3000.0, dtype=torch.float64), labels, 5, seed=0)
    assert [e.value for e in shifted] == pytest.approx([e.value for e in est], abs=1e-12)
    np.testing.assert_array_equal(W.state_free_energies_point(np.zeros(4), np.array([1, 1, 1, 2]), 3), np.nan)


def test_state_free_energies_of_two_states_equal_delta_f_bit_for_bit():
    rng = np.random.default_rng(4)
    lw = rng.normal(0.0, 2.0, 600)
    labels = (rng.random(600) < 0.3).astype(np.int64)
    groups = np.repeat(np.arange(6), 100)
    for options in ({}, {"groups": groups}, {"block_size": 8}, {"block_size": "auto"}):
        est = W.state_free_energies(lw, labels, 2, seed=3, **options)
        ref = W.delta_f(lw, labels == 0, labels == 1, seed=3, **options)
        assert est[1].value == ref.value and est[1].error == ref.error


def test_state_free_energies_errors_are_clear():
    lw = np.zeros(6)
    with pytest.raises(ValueError, match="labels must be 6 integer state labels"):
        W.state_free_energies(lw, np.zeros(6), 2)
    with pytest.raises(ValueError, match="labels must lie in \\[0, 2\\), got \\[0, 2\\]"):
        W.state_free_energies(lw, np.array([0, 1, 2, 0, 0, 0]), 2)
    with pytest.raises(ValueError, match="state 0 has no weight"):
        W.state_free_energies(np.array([-np.inf, 0, 0, 0, 0, 0]), np.array([0, 1, 1, 1, 1, 1]), 2)
    with pytest.raises(ValueError, match="all 6 weights are zero"):
        W.state_free_energies(np.full(6, -np.inf), np.zeros(6, int), 1)


def test_shared_helpers_are_public_and_check_their_input():
    assert W.as_float64(torch.tensor([1, 2])).dtype == np.float64
    with pytest.raises(ValueError, match="log_w must be one log-weight per sample"):
        W.check_log_weights(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="my_w has 2 NaN or \\+inf entries \\(indices 0, 2\\)"):
        W.check_log_weights([np.nan, 0.0, np.inf], "my_w")
    with pytest.raises(ValueError, match="all 2 weights are zero"):
        W.require_some_weight(np.full(2, -np.inf))
    assert W.format_indices(np.arange(7)) == "0, 1, 2, 3, 4, ..." and W.format_indices([3]) == "3"
    g = np.random.default_rng(1)
    assert W.rng_from_seed(g) is g and W.rng_from_seed(5).integers(100) == np.random.default_rng(5).integers(100)
    # one normalisation (max shift) and one ESS convention: a count, and the count over B
    lw = np.array([0.0, math.log(3.0), -np.inf, 1000.0])
    np.testing.assert_array_equal(W.normalized_weights(lw), [0.0, 0.0, 0.0, 1.0])
    w = W.normalized_weights(lw[:3])
    np.testing.assert_allclose(w, [0.25, 0.75, 0.0], rtol=1e-15)
    assert W.ess(lw[:3]) == pytest.approx(1.0 / (0.25**2 + 0.75**2), rel=1e-15)
    assert W.ess_fraction(lw[:3]) == pytest.approx(W.ess(lw[:3]) / 3, rel=1e-15)
    assert W.logsumexp(np.full(3, -np.inf)) == -np.inf and W.logsumexp([0.0, 0.0]) == pytest.approx(math.log(2))


def _runs_with_path_noise(rng, n_runs=8, n_per_run=200, p_b=0.1, path_sd=1.0):
    """Independent 'SMC runs' whose particles share one run-level error of state B's weight."""
    log_w, log_z, in_b, groups = [], [], [], []
    for r in range(n_runs):
        b = rng.random(n_per_run) < p_b
        lw = np.where(b, rng.normal(0.0, path_sd), 0.0) + 0.1 * rng.standard_normal(n_per_run)
        log_w.append(lw)
        log_z.append(rng.normal(0.0, 0.3))
        in_b.append(b)
        groups.append(np.full(n_per_run, r))
    return W.pool_runs(log_w, log_z), np.concatenate(in_b), np.concatenate(groups)


def test_cluster_bootstrap_over_runs_gives_the_run_to_run_error_of_delta_f():
    """ΔF pooled from 8 runs whose state weight carries a shared per-run error (sd 1): the
    cluster bootstrap over runs matches the spread of the pooled estimate over 300 independent
    repetitions; the plain bootstrap of the particles is several times too small."""
    rng = np.random.default_rng(3)
    values, grouped, plain = [], [], []
    for rep in range(300):
        lw, b, groups = _runs_with_path_noise(rng)
        values.append(W.delta_f(lw, ~b, b, n_bootstrap=2, seed=rep).value)
        if rep < 30:
            grouped.append(W.delta_f(lw, ~b, b, groups=groups, n_bootstrap=200, seed=rep).error)
            plain.append(W.delta_f(lw, ~b, b, n_bootstrap=200, seed=rep).error)
    true_sd = float(np.std(values))
    assert 0.25 < true_sd < 0.6  # about 1 / sqrt(8) from the per-run error
    assert abs(np.mean(grouped) / true_sd - 1.0) < 0.3
    assert np.mean(plain) < 0.5 * true_sd


def test_pool_runs_weights_each_run_by_its_normalising_constant():
    lw = W.pool_runs([np.array([0.0, 0.0]), np.array([5.0, 5.0, 5.0, 5.0])], [math.log(2.0), math.log(6.0)])
    w = np.exp(lw)
    np.testing.assert_allclose(w, [1.0, 1.0, 1.5, 1.5, 1.5, 1.5])  # each run sums to its Z
    groups = np.array([0, 0, 1, 1, 1, 1])
    assert [m.tolist() for m in W.group_members(groups, 6)] == [[0, 1], [2, 3, 4, 5]]
    with pytest.raises(ValueError, match="one log Z per run"):
        W.pool_runs([np.zeros(2)], [0.0, 1.0])
    with pytest.raises(ValueError, match="at least 2 groups"):
        W.group_members(np.zeros(6, dtype=int), 6)
    with pytest.raises(ValueError, match="integer labels"):
        W.group_members(np.zeros(5, dtype=int), 6)
    with pytest.raises(ValueError, match="either groups or a block_size"):
        W.bootstrap(np.mean, np.arange(6.0), groups=groups, block_size=2)
    # every replicate of the cluster bootstrap is a union of whole runs
    reps = W.bootstrap(lambda g: np.bincount(g, minlength=2), groups, groups=groups, n_bootstrap=50, seed=0)
    assert set(map(tuple, reps.astype(int))) <= {(4, 0), (2, 4), (0, 8)}


def test_delta_f_error_when_some_resampled_runs_never_reach_state_b():
    """8 runs, only 2 of which reached B: a cluster-bootstrap replicate misses B (ΔF = +inf) with
    probability (6/8)^8 = 10 %, so the error is inf, not the spread of the other replicates; with B
    in 6 runs of 8 no replicate misses it and the error is finite."""
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(8), 50)
    lw = 0.5 * rng.standard_normal(400)
    rare = np.isin(groups, [2, 5]) & (rng.random(400) < 0.2)
    reps = W.bootstrap(W.delta_f_point, lw, ~rare, rare, n_bootstrap=400, seed=1, groups=groups)
    assert 0.03 < np.mean(reps == np.inf) < 0.2 and not np.isnan(reps).any()
    with pytest.warns(RuntimeWarning, match="undefined"):
        assert W.delta_f(lw, ~rare, rare, groups=groups, n_bootstrap=400, seed=1).error == math.inf
    common = (groups < 6) & (rng.random(400) < 0.2)
    est = W.delta_f(lw, ~common, common, groups=groups, n_bootstrap=400, seed=1)
    assert 0.05 < est.error < 2.0 and est.value == pytest.approx(W.delta_f_point(lw, ~common, common))
    # a run without a sample in B has ΔF = +inf, one without A -inf, an empty one nan
    assert W.delta_f_point(lw[:3], np.ones(3, bool), np.zeros(3, bool)) == math.inf
    assert W.delta_f_point(lw[:3], np.zeros(3, bool), np.ones(3, bool)) == -math.inf
    assert math.isnan(W.delta_f_point(lw[:3], np.zeros(3, bool), np.zeros(3, bool)))


def test_lineage_ess_counts_the_independent_draws_under_the_weights():
    log_w = np.log(np.array([0.45, 0.45, 0.05, 0.05]))
    # every sample its own lineage: the Kish ESS
    assert W.lineage_ess(log_w, [0, 1, 2, 3]) == pytest.approx(W.ess(log_w))
    # two lineages of weight 0.9 and 0.1: 1 / (0.81 + 0.01)
    assert W.lineage_ess(log_w, [7, 7, 3, 3]) == pytest.approx(1.0 / 0.82)
    # equal weights on two lineages: 2; all on one lineage: 1
    assert W.lineage_ess(log_w, [1, 2, 2, 1]) == pytest.approx(2.0)
    assert W.lineage_ess(log_w, [5, 5, 5, 5]) == pytest.approx(1.0)
    # a lineage whose particles all have weight zero does not count
    assert W.lineage_ess(np.log([0.5, 0.5, 0.0]), [0, 1, 2]) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="one entry per log-weight"):
        W.lineage_ess(log_w, [0, 1, 2])


def test_jackknife_reproduces_its_textbook_identities():
    """One row per group: the jackknife of the mean is the mean with error s/√G, and that of the
    plug-in variance (divisor G) is the unbiased variance (divisor G − 1), exactly."""
    x = np.random.default_rng(0).normal(size=7)
    groups = np.arange(7)
    mean = W.jackknife(np.mean, x, groups=groups)
    assert mean.value == pytest.approx(x.mean(), rel=1e-12)
    assert mean.error == pytest.approx(x.std(ddof=1) / math.sqrt(7), rel=1e-12)
    var = W.jackknife(np.var, x, groups=groups)
    assert var.value == pytest.approx(x.var(ddof=1), rel=1e-12)


def test_jackknife_leaves_whole_groups_out():
    """The statistic sees every group but one: with rows of group g all equal to g, the
    leave-one-out means are known in closed form."""
    groups = np.repeat(np.arange(3), [1, 2, 3])
    x = groups.astype(float)
    seen = []
    W.jackknife(lambda v: seen.append(sorted(set(v.tolist()))) or 0.0, x, groups=groups)
    assert seen == [[0.0, 1.0, 2.0], [1.0, 2.0], [0.0, 2.0], [0.0, 1.0]]


def test_jackknife_removes_the_bias_of_a_delta_f_from_few_runs():
    """Four runs whose state normalisers Ẑ_A, Ẑ_B are unbiased but log-normal (the common state's
    spread larger, as in a molecule whose large state holds several basins): ΔF of the runs
    pooled by their Ẑ is biased, to leading order by (v_B − v_A) / 2G (v the relative variances); the
    jackknife over runs removes it, at a somewhat larger spread, and its error matches that spread."""
    rng = np.random.default_rng(5)
    runs, sd_a, sd_b = 4, 1.0, 0.3
    truth = -math.log(0.1 / 0.9)
    in_a = np.tile([True, False], runs)
    groups = np.repeat(np.arange(runs), 2)
    plain, jack, errors = [], [], []
    for _ in range(2000):
        log_za = math.log(0.9) + rng.normal(0.0, sd_a, runs) - sd_a**2 / 2
        log_zb = math.log(0.1) + rng.normal(0.0, sd_b, runs) - sd_b**2 / 2
        log_w = np.stack([log_za, log_zb], axis=1).reshape(-1)
        plain.append(W.delta_f_point(log_w, in_a, ~in_a))
        estimate = W.jackknife(W.delta_f_point, log_w, in_a, ~in_a, groups=groups)
        jack.append(estimate.value)
        errors.append(estimate.error)
    plain, jack = np.asarray(plain) - truth, np.asarray(jack) - truth
    sem = jack.std() / math.sqrt(len(jack))
    leading = ((math.exp(sd_b**2) - 1) - (math.exp(sd_a**2) - 1)) / (2 * runs)  # about -0.2
    assert leading < plain.mean() < -6 * plain.std() / math.sqrt(len(plain))  # -0.13, sem 0.013
    assert abs(jack.mean()) < 3 * sem
    assert jack.std() > plain.std()  # the price of the correction
    assert np.sqrt(np.mean(np.square(errors))) == pytest.approx(jack.std(), rel=0.2)


def test_jackknife_is_undefined_when_a_state_rests_on_one_run():
    log_w = np.zeros(6)
    in_b = np.array([True, False, False, False, False, False])
    groups = np.repeat(np.arange(3), 2)
    with pytest.warns(RuntimeWarning, match="leave-one-out"):
        estimate = W.jackknife(W.delta_f_point, log_w, ~in_b, in_b, groups=groups)
    assert estimate.value == W.delta_f_point(log_w, ~in_b, in_b) and estimate.error == math.inf
    with pytest.raises(ValueError, match="at least 2 groups"):
        W.jackknife(np.mean, np.zeros(3), groups=np.zeros(3, dtype=int))
