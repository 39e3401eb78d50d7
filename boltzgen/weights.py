"""Importance weights and the estimators built on them (float64 throughout, plain arrays only).

A sample x from a proposal with log-density log q(x), reweighted to the Boltzmann target
p(x) ∝ exp(−u(x)) (u the reduced energy), has log-weight

    log w(x) = −u(x) − log q(x).

Configurations the target cannot evaluate have u = +inf, hence log w = −inf (weight zero).
Every estimator here works with log-weights through log-sum-exp (``scipy.special.logsumexp``)
or a max shift, so log-weights that span hundreds or thousands of units, or are all shifted by a
constant, give the same answers.

Inputs may be NumPy arrays, torch tensors or sequences; outputs are NumPy float64 arrays or Python
floats. Estimates with an error bar are :class:`Estimate` tuples ``(value, error)``. States are
given as boolean masks or integer labels (e.g. from :meth:`boltzgen.states.StateSet.assign`);
nothing here knows about molecules. Conventions: ``docs/design.md`` (weights).

Error handling: a log-weight of NaN or +inf is a ValueError (it is a bug upstream, not a weight);
all weights zero (every log-weight −inf) is a ValueError that says so, never a NaN.

Shared helpers for other modules (public, documented): :func:`as_float64`,
:func:`check_log_weights`, :func:`require_some_weight`, :func:`format_indices`,
:func:`rng_from_seed`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, NamedTuple, Optional, Union

import numpy as np
from scipy.special import logsumexp as _scipy_logsumexp

__all__ = [
    "Estimate",
    "as_float64",
    "check_log_weights",
    "require_some_weight",
    "format_indices",
    "rng_from_seed",
    "logsumexp",
    "log_weights",
    "normalized_weights",
    "ess",
    "ess_fraction",
    "lineage_ess",
    "log_z",
    "expectation",
    "delta_f",
    "delta_f_point",
    "state_free_energies",
    "state_free_energies_point",
    "bootstrap",
    "bootstrap_indices",
    "jackknife",
    "group_members",
    "pool_runs",
    "block_size_for",
    "resolve_block_size",
    "bar",
    "mbar_path",
]

SeedLike = Union[None, int, np.random.Generator]


class Estimate(NamedTuple):
    """An estimate and its standard error (same units; ``error`` may be ``inf``)."""

    value: Any
    error: Any


# ---------------------------------------------------------------------------- shared helpers
def as_float64(a) -> np.ndarray:
    """A NumPy float64 array of ``a`` (torch tensors are detached and moved to the CPU).

    Parameters
    ----------
    a : array_like or torch.Tensor

    Returns
    -------
    ndarray, float64, the shape of ``a``
    """
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def check_log_weights(log_w, name: str = "log_w") -> np.ndarray:
    """Checked log-weights: one per sample, finite or −inf (weight zero).

    Parameters
    ----------
    log_w : array_like, shape (B,)
    name : str
        How error messages name the array.

    Returns
    -------
    ndarray, shape (B,), float64

    Raises
    ------
    ValueError
        Not one-dimensional, empty, or with NaN or +inf entries.
    """
    lw = as_float64(log_w)
    if lw.ndim != 1:
        raise ValueError(f"{name} must be one log-weight per sample, shape (B,); got shape {lw.shape}")
    if lw.shape[0] == 0:
        raise ValueError(f"{name} is empty: no samples")
    bad = np.isnan(lw) | (lw == np.inf)
    if bad.any():
        idx = np.flatnonzero(bad)
        raise ValueError(
            f"{name} has {idx.size} NaN or +inf entries (indices {format_indices(idx)}); log-weights "
            "must be finite or -inf (weight zero)"
        )
    return lw


def require_some_weight(log_w: np.ndarray, name: str = "log_w") -> None:
    """Raise a ValueError that says so when every weight is zero (every log-weight −inf).

    Parameters
    ----------
    log_w : ndarray, shape (B,)
        Checked log-weights (:func:`check_log_weights`).
    name : str
        How the message names the array.
    """
    if not np.isfinite(log_w).any():
        raise ValueError(
            f"all {log_w.shape[0]} weights are zero (every entry of {name} is -inf): no sample has "
            "nonzero weight under the target, so there is nothing to estimate"
        )


def format_indices(idx, k: int = 5) -> str:
    """The first ``k`` indices as ``"3, 7, 9, ..."``, for error messages.

    Parameters
    ----------
    idx : array of int
    k : int
        How many to show.

    Returns
    -------
    str
    """
    idx = np.asarray(idx).reshape(-1)
    shown = ", ".join(str(int(i)) for i in idx[:k])
    return shown + (", ..." if idx.size > k else "")


def rng_from_seed(seed: SeedLike) -> np.random.Generator:
    """A NumPy Generator: the one given, or ``numpy.random.default_rng(seed)``.

    Parameters
    ----------
    seed : int, numpy.random.Generator or None

    Returns
    -------
    numpy.random.Generator
    """
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def logsumexp(a, axis: Optional[int] = None):
    """log Σ exp(a) (``scipy.special.logsumexp``); −inf when every entry is −inf, without a warning.

    Parameters
    ----------
    a : array
        Values (float64), −inf allowed.
    axis : int, optional
        Axis to reduce (default: all).

    Returns
    -------
    float or ndarray
    """
    with np.errstate(divide="ignore"):
        out = _scipy_logsumexp(as_float64(a), axis=axis)
    return float(out) if np.ndim(out) == 0 else out


# ---------------------------------------------------------------------------- weights
def log_weights(reduced_energy, log_q) -> np.ndarray:
    """Importance log-weights log w = −u(x) − log q(x).

    Parameters
    ----------
    reduced_energy : array, shape (B,)
        Reduced target energies u(x) = U(x)/kT. +inf (or NaN: not evaluable) gives weight zero.
    log_q : array, shape (B,)
        Log-density of the proposal at each sample; must be finite.

    Returns
    -------
    ndarray, shape (B,), float64
        Log-weights; −inf where the energy is +inf.

    Raises
    ------
    ValueError
        Mismatched lengths, non-finite ``log_q``, or an energy of −inf.
    """
    u = as_float64(reduced_energy).reshape(-1)
    lq = as_float64(log_q).reshape(-1)
    if u.shape != lq.shape:
        raise ValueError(f"reduced_energy has {u.shape[0]} entries but log_q has {lq.shape[0]}")
    bad = ~np.isfinite(lq)
    if bad.any():
        idx = np.flatnonzero(bad)
        raise ValueError(
            f"log_q has {idx.size} non-finite entries (indices {format_indices(idx)}); the proposal "
            "log-density must be finite at every sample"
        )
    if (u == -np.inf).any():
        idx = np.flatnonzero(u == -np.inf)
        raise ValueError(
            f"reduced_energy is -inf at {idx.size} samples (indices {format_indices(idx)}); "
            "the target energy is broken there"
        )
    u = np.where(np.isnan(u), np.inf, u)
    return -u - lq


def normalized_weights(log_w) -> np.ndarray:
    """Self-normalised weights w_i / Σ_j w_j, computed with a max shift (exp(log w − max log w)).

    The one weight normalisation of the package: the estimators, :func:`ess` and the analysis
    functions all use it.

    Parameters
    ----------
    log_w : array, shape (B,)
        Log-weights (−inf allowed; not all of them).

    Returns
    -------
    ndarray, shape (B,), float64
        Non-negative, summing to 1.
    """
    lw = check_log_weights(log_w)
    require_some_weight(lw)
    w = np.exp(lw - lw.max())
    return w / w.sum()


def ess(log_w) -> float:
    """Kish effective sample size (Σw)² / Σw² = 1 / Σ w̄_i² (a count), from log-weights.

    The package's one ESS convention: :func:`ess` is a number of samples, :func:`ess_fraction`
    the same divided by B.

    Parameters
    ----------
    log_w : array, shape (B,)
        Log-weights (−inf allowed; not all of them).

    Returns
    -------
    float
        Between 1 and B.
    """
    w = normalized_weights(log_w)
    return float(1.0 / np.sum(w * w))


def ess_fraction(log_w) -> float:
    """Kish ESS divided by the number of samples B.

    Parameters
    ----------
    log_w : array, shape (B,)
        Log-weights (−inf allowed; not all of them).

    Returns
    -------
    float
        ESS / B ∈ [1/B, 1].
    """
    lw = check_log_weights(log_w)
    return ess(lw) / lw.shape[0]


def lineage_ess(log_w, lineages) -> float:
    """Kish ESS of the weights summed over lineages: 1 / Σ_a W̄_a², W̄_a = Σ_{i: lineage_i = a} w̄_i.

    SMC particles that descend from one ancestor share its history, so they are one draw, not
    many: with ``lineages`` the index of each particle's ancestor at the start of the run (its
    "Eve"), this counts the independent draws a weighted estimate rests on. It lies between 1 and
    the number of distinct lineages with weight, and equals :func:`ess` when no two particles share
    an ancestor. An estimate whose weight sits on a few lineages scatters between independent runs
    beyond what a bootstrap over its particles shows (docs/design.md, "Weights").

    Parameters
    ----------
    log_w : array, shape (B,)
        Log-weights (−inf allowed; not all of them).
    lineages : array of int, shape (B,)
        Lineage of each sample (e.g. ``SMCResult.ancestors``; for pooled runs a label that also
        names the run).

    Returns
    -------
    float
        Between 1 and the number of lineages.

    Raises
    ------
    ValueError
        When the shapes differ or every weight is zero.
    """
    lw = check_log_weights(log_w)
    lineages = np.asarray(lineages).reshape(-1)
    if lineages.shape != lw.shape:
        raise ValueError(f"lineages must have one entry per log-weight ({lw.shape[0]}), got shape {lineages.shape}")
    w = normalized_weights(lw)
    _, index = np.unique(lineages, return_inverse=True)
    per_lineage = np.bincount(index.reshape(-1), weights=w)
    return float(1.0 / np.sum(per_lineage * per_lineage))


# ---------------------------------------------------------------------------- bootstrap
def bootstrap(
    statistic: Callable[..., Any], *arrays, n_bootstrap: int = 200, seed: SeedLike = 0, block_size: int = 1, groups=None
) -> np.ndarray:
    """Non-parametric bootstrap: the statistic on ``n_bootstrap`` resamplings of the samples.

    Rows (the first axis) of all ``arrays`` are resampled jointly with replacement. With
    ``block_size`` b > 1 it is the circular block bootstrap (Politis & Romano 1992): ⌈B / b⌉
    runs of b consecutive rows, each starting at a uniform random row and wrapping around, cut to
    B rows. Use it for time series (MD frames), whose correlations the plain bootstrap (b = 1)
    ignores; b should exceed the correlation time (:func:`block_size_for`). With ``groups`` it
    is the cluster bootstrap: whole groups (e.g. independent SMC runs, whose particles share one
    path history) are drawn with replacement, as many as there are.

    Parameters
    ----------
    statistic : callable
        ``statistic(*resampled_arrays)`` → float or array.
    *arrays : arrays with the same first dimension B
    n_bootstrap : int
        Number of replicates.
    seed : int, numpy Generator or None
        Random state (a seeded ``numpy.random.Generator`` is built from an int).
    block_size : int
        Rows per block (default 1: independent rows).
    groups : array of int, shape (B,), optional
        Group label of each row (cluster bootstrap; excludes ``block_size`` > 1).

    Returns
    -------
    ndarray, shape (n_bootstrap, *statistic_shape), float64
        One row per replicate.
    """
    arrays, n = _rows_of(arrays, "bootstrap")
    if n_bootstrap < 2:
        raise ValueError(f"n_bootstrap must be at least 2, got {n_bootstrap}")
    rng = rng_from_seed(seed)
    members = None
    if groups is not None:
        if _positive_block(block_size) != 1:
            raise ValueError("bootstrap takes either groups or a block_size, not both")
        members = group_members(groups, n)
    out = []
    for _ in range(int(n_bootstrap)):
        if members is None:
            idx = bootstrap_indices(n, rng, block_size)
        else:
            idx = np.concatenate([members[k] for k in rng.integers(0, len(members), size=len(members))])
        out.append(np.asarray(statistic(*(a[idx] for a in arrays)), dtype=np.float64))
    return np.stack(out)


def jackknife(statistic: Callable[..., float], *arrays, groups) -> Estimate:
    """Leave-one-group-out jackknife: the statistic with its leading bias removed, and its error.

    With G independent groups (e.g. SMC runs), θ̂ the statistic of all rows and θ̂₍₋g₎ that of the
    rows outside group g, the estimate is G θ̂ − (G − 1) mean_g θ̂₍₋g₎ (Quenouille's correction:
    a statistic that is a smooth function of the groups' means, such as a ΔF from runs pooled by
    their Ẑ, has a bias a/G + O(1/G²), and the correction removes a/G) and the error
    √((G − 1)/G Σ_g (θ̂₍₋g₎ − mean)²) (Efron & Stein). The correction costs spread: for a ΔF
    of few SMC runs it is a check on the bias of pooling them (a log of a pooled estimate is biased
    by about half its relative variance over G), not a better estimate
    (``benchmarks/run_pooling.py``).

    Parameters
    ----------
    statistic : callable
        ``statistic(*row_subsets)`` → float.
    *arrays : arrays with the same first dimension B
    groups : array of int, shape (B,)
        Group label of each row; at least 2 groups.

    Returns
    -------
    Estimate
        ``(corrected value, jackknife standard error)``. When some leave-one-out statistic is not
        finite (one group alone carries a state, say), the correction is undefined: the value is
        then the plain statistic and the error inf, with a RuntimeWarning.
    """
    arrays, n = _rows_of(arrays, "jackknife")
    members = group_members(groups, n)
    full = float(statistic(*arrays))
    loo = []
    for m in members:
        keep = np.ones(n, dtype=bool)
        keep[m] = False
        loo.append(float(statistic(*(a[keep] for a in arrays))))
    loo = np.asarray(loo)
    g = len(members)
    if not (np.isfinite(loo).all() and math.isfinite(full)):
        warnings.warn(
            f"jackknife: {int((~np.isfinite(loo)).sum())} of {g} leave-one-out values are undefined "
            "(a state rests on one group); the value is uncorrected and its error inf",
            RuntimeWarning,
            stacklevel=2,
        )
        return Estimate(full, math.inf)
    mean = float(loo.mean())
    return Estimate(g * full - (g - 1) * mean, float(math.sqrt((g - 1) / g * np.sum((loo - mean) ** 2))))


def _rows_of(arrays: tuple, what: str) -> tuple:
    """The arrays as numpy arrays and their common number of rows (an error names ``what``)."""
    if not arrays:
        raise ValueError(f"{what} needs at least one array to resample")
    arrays = tuple(np.asarray(a) for a in arrays)
    n = arrays[0].shape[0]
    for a in arrays[1:]:
        if a.shape[0] != n:
            raise ValueError(f"{what} arrays have different lengths: {n} and {a.shape[0]}")
    return arrays, n


def group_members(groups, n: int) -> list:
    """Row indices of each group, for the cluster bootstrap.

    Parameters
    ----------
    groups : array of int, shape (B,)
        Group label of each row.
    n : int
        Rows B (checked against ``groups``).

    Returns
    -------
    list of ndarray of int64
        One index array per distinct label, in label order.

    Raises
    ------
    ValueError
        If the labels are not integers of length B, or there are fewer than 2 groups.
    """
    groups = np.asarray(groups)
    if groups.shape != (n,) or not np.issubdtype(groups.dtype, np.integer):
        raise ValueError(
            f"groups must be {n} integer labels, one per sample; got {groups.dtype} of shape {groups.shape}"
        )
    labels = np.unique(groups)
    if labels.size < 2:
        raise ValueError(f"the cluster bootstrap needs at least 2 groups (independent runs), got {labels.size}")
    return [np.flatnonzero(groups == label) for label in labels]


def pool_runs(log_w_runs, log_z_runs) -> np.ndarray:
    """Log-weights of independent SMC (or importance-sampling) runs pooled into one sample.

    Each run's weights are normalised and scaled by its estimate Ẑ_r of the normalising
    constant, so the pooled weights estimate the target as one run with all the particles would
    (Ẑ-weighted pooling: unbiased for Z · E[f]; a run whose path found little mass counts little).

    Parameters
    ----------
    log_w_runs : sequence of arrays, shapes (B_r,)
        Each run's log-weights.
    log_z_runs : sequence of float
        Each run's log Ẑ_r.

    Returns
    -------
    ndarray, shape (Σ B_r,), float64
        The runs' log-weights one after the other.
    """
    if len(log_w_runs) != len(log_z_runs) or not len(log_w_runs):
        raise ValueError(f"need one log Z per run: {len(log_w_runs)} runs, {len(log_z_runs)} log Z values")
    out = []
    for lw, lz in zip(log_w_runs, log_z_runs):
        lw = check_log_weights(lw)
        require_some_weight(lw)
        out.append(lw - logsumexp(lw) + float(lz))
    return np.concatenate(out)


def bootstrap_indices(n: int, rng: np.random.Generator, block_size: int = 1) -> np.ndarray:
    """Row indices of one bootstrap replicate of n rows (circular blocks of ``block_size``).

    Parameters
    ----------
    n : int
        Rows B.
    rng : numpy.random.Generator
    block_size : int
        b ≥ 1 (capped at n): ⌈n / b⌉ runs of b consecutive rows from uniform random starts,
        wrapping around, cut to n rows; b = 1 is the plain bootstrap.

    Returns
    -------
    ndarray of int64, shape (n,)
    """
    b = min(_positive_block(block_size), n)
    starts = rng.integers(0, n, size=-(-n // b))
    return ((starts[:, None] + np.arange(b)[None, :]) % n).reshape(-1)[:n]


def block_size_for(series, min_blocks: int = 16) -> int:
    """Block length for the block bootstrap of a time series, by Flyvbjerg–Petersen blocking.

    The series is averaged over blocks of 1, 2, 4, … rows; the standard error of its mean
    estimated from the block means grows with the block length until the blocks are longer than
    the correlation time, then levels off. This returns the block length (a power of 2, with at
    least ``min_blocks`` blocks) at which that estimate is largest: a conservative choice, since
    too short a block underestimates the error of correlated data.

    pymbar's ``timeseries.statistical_inefficiency`` estimates a related but different quantity
    (g = 1 + 2τ from the autocorrelation function, not a block length); using it would change
    the block lengths, hence the error bars of MD trajectories, and add a dependency, so the
    blocking estimate stays here.

    Parameters
    ----------
    series : array, shape (T,) or (T, k)
        The observable(s) along the trajectory (e.g. the indicator of a state); with k columns the
        largest block length over the columns.
    min_blocks : int
        Fewest blocks allowed (default 16).

    Returns
    -------
    int
        Block length in rows (1 for uncorrelated data or series shorter than 2 · min_blocks).
    """
    f = as_float64(series)
    f = f.reshape(f.shape[0], -1)
    best = 1
    for col in f.T:
        b, top, size = 1, -1.0, 1
        while f.shape[0] // b >= int(min_blocks):
            m = f.shape[0] // b
            means = col[: m * b].reshape(m, b).mean(1)
            se = float(means.std(ddof=1) / math.sqrt(m))
            if se > top:
                top, size = se, b
            b *= 2
        best = max(best, size)
    return best


def resolve_block_size(block_size: Union[int, str], *indicators) -> int:
    """The bootstrap block length of an estimate between states: an int as given, or ``"auto"``.

    Parameters
    ----------
    block_size : int or "auto"
        A positive integer, or ``"auto"``: :func:`block_size_for` of the state indicators along
        the samples (for a time-ordered trajectory).
    *indicators : boolean arrays, shape (B,)
        State membership of each sample, in trajectory order (e.g. ``in_a, in_b``).

    Returns
    -------
    int
    """
    if isinstance(block_size, str):
        if block_size != "auto":
            raise ValueError(f"block_size must be a positive integer or 'auto', got {block_size!r}")
        return block_size_for(np.stack([np.asarray(m) for m in indicators], 1).astype(np.float64))
    return _positive_block(block_size)


def _positive_block(block_size) -> int:
    b = int(block_size)
    if b < 1 or b != block_size:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    return b


def _bootstrap_error(replicates: np.ndarray, what: str) -> Any:
    """Standard deviation over replicates; inf (with a warning) if some replicates are not finite."""
    finite = np.isfinite(replicates)
    if not finite.all():
        frac = 1.0 - finite.mean()
        warnings.warn(
            f"{what}: {frac:.1%} of bootstrap replicates are undefined (too few samples with weight); "
            "the error is reported as inf",
            RuntimeWarning,
            stacklevel=3,
        )
    with np.errstate(invalid="ignore"):
        err = np.std(replicates, axis=0, ddof=1)
    err = np.where(finite.all(axis=0), err, np.inf)
    return float(err) if np.ndim(err) == 0 else err


# ---------------------------------------------------------------------------- estimators
def log_z(log_w, *, method: str = "delta", n_bootstrap: int = 200, seed: SeedLike = 0) -> Estimate:
    """Log of the normalising-constant estimate, log Ẑ = log (1/B Σ w_i).

    With exp(−u) the unnormalised target and q a normalised proposal, Ẑ is unbiased for
    Z = ∫ exp(−u(x)) dx.

    Parameters
    ----------
    log_w : array, shape (B,)
    method : {"delta", "bootstrap"}
        Standard error of log Ẑ by the delta method, sqrt((B/ESS − 1)/(B − 1)) = (std of w /
        sqrt(B)) / mean w, or by the bootstrap.
    n_bootstrap, seed
        Bootstrap options (``method="bootstrap"``).

    Returns
    -------
    Estimate
        ``(log Ẑ, standard error)``, floats.
    """
    lw = check_log_weights(log_w)
    require_some_weight(lw)
    n = lw.shape[0]
    value = logsumexp(lw) - math.log(n)
    if method == "delta":
        if n < 2:
            return Estimate(value, math.inf)
        return Estimate(value, math.sqrt(max(n / ess(lw) - 1.0, 0.0) / (n - 1)))
    if method == "bootstrap":
        reps = bootstrap(lambda a: logsumexp(a) - math.log(n), lw, n_bootstrap=n_bootstrap, seed=seed)
        return Estimate(value, _bootstrap_error(reps, "log_z"))
    raise ValueError(f"unknown error method {method!r}; use 'delta' or 'bootstrap'")


def expectation(values, log_w, *, method: str = "delta", n_bootstrap: int = 200, seed: SeedLike = 0) -> Estimate:
    """Self-normalised importance-sampling average Σ w_i f_i / Σ w_i.

    Parameters
    ----------
    values : array, shape (B,) or (B, ...)
        f(x_i) per sample. Entries of zero-weight samples are ignored (they may be NaN).
    log_w : array, shape (B,)
    method : {"delta", "bootstrap"}
        Standard error by the delta method, sqrt(Σ w̄_i² (f_i − μ̂)²) with w̄ the normalised
        weights, or by the bootstrap.
    n_bootstrap, seed
        Bootstrap options.

    Returns
    -------
    Estimate
        ``(mean, standard error)``: floats for (B,) values, arrays of shape values.shape[1:] otherwise.
    """
    lw = check_log_weights(log_w)
    f = as_float64(values)
    if f.ndim == 0 or f.shape[0] != lw.shape[0]:
        raise ValueError(f"values have {f.shape[0] if f.ndim else 0} rows but log_w has {lw.shape[0]} entries")
    require_some_weight(lw)
    keep = np.isfinite(lw)
    lw, f = lw[keep], f[keep]
    if not np.isfinite(f).all():
        rows = np.flatnonzero(~np.isfinite(f.reshape(f.shape[0], -1)).all(axis=1))
        raise ValueError(f"values are not finite at {rows.size} samples with nonzero weight")

    def mean(lw_, f_):
        return np.tensordot(normalized_weights(lw_), f_, axes=(0, 0))

    mu = mean(lw, f)
    if method == "delta":
        w = normalized_weights(lw)
        err = np.sqrt(np.tensordot(w**2, (f - mu) ** 2, axes=(0, 0)))
    elif method == "bootstrap":
        err = _bootstrap_error(bootstrap(mean, lw, f, n_bootstrap=n_bootstrap, seed=seed), "expectation")
    else:
        raise ValueError(f"unknown error method {method!r}; use 'delta' or 'bootstrap'")
    if np.ndim(mu) == 0:
        return Estimate(float(mu), float(err))
    return Estimate(np.asarray(mu), np.asarray(err))


def _state_mask(state, name: str, n: int, x) -> np.ndarray:
    if callable(state):
        if x is None:
            raise ValueError(f"state {name} is a function of the configurations: pass x=")
        state = state(x)
    if hasattr(state, "detach"):
        state = state.detach().cpu().numpy()
    mask = np.asarray(state)
    if mask.dtype != bool:
        if not np.isin(mask, (0, 1)).all():
            raise ValueError(f"state {name} must be a boolean array (or a function returning one)")
        mask = mask.astype(bool)
    mask = mask.reshape(-1)
    if mask.shape[0] != n:
        raise ValueError(f"state {name} has {mask.shape[0]} entries but log_w has {n}")
    return mask


def delta_f(
    log_w,
    in_a,
    in_b,
    *,
    x=None,
    n_bootstrap: int = 200,
    seed: SeedLike = 0,
    block_size: Union[int, str] = 1,
    groups=None,
) -> Estimate:
    """Free-energy difference ΔF_AB = F_B − F_A = −ln(Σ_{x∈B} w / Σ_{x∈A} w), in kT.

    Parameters
    ----------
    log_w : array, shape (B,)
        Log-weights of samples of the target.
    in_a, in_b : boolean array (B,), or callable
        Membership of each sample in state A and state B; a callable is applied to ``x`` and must
        return such an array (e.g. ``lambda x: phi_states(x, top)[1]``).
    x : configurations, optional
        Passed to callable states.
    n_bootstrap : int
        Bootstrap replicates for the standard error.
    seed : int, numpy Generator or None
        Random state of the bootstrap.
    block_size : int or "auto"
        Block length of the bootstrap (:func:`bootstrap`): 1 (default) for independent samples
        (importance sampling, SMC); for a time-ordered trajectory (MD, replica exchange) a length
        above its correlation time, or ``"auto"`` (:func:`resolve_block_size`). The plain
        bootstrap of correlated frames underestimates the error.
    groups : array of int, shape (B,), optional
        Independent-run label of each sample (:func:`pool_runs`): the error is then that of the
        cluster bootstrap over runs. Particles of one SMC run share their path's weight history,
        so the plain bootstrap of one run's particles misses the run-to-run spread of ΔF.

    Returns
    -------
    Estimate
        ``(ΔF_AB, bootstrap standard error)`` in kT (floats). The error is inf (with a
        RuntimeWarning) when some bootstrap replicates leave a state without weight (e.g.
        resampled runs none of which reached state B): a trimmed spread would hide exactly the
        runs that say the estimate is not yet settled.

    Raises
    ------
    ValueError
        Mismatched lengths; all weights zero; a state with no sample of nonzero weight.
    """
    lw = check_log_weights(log_w)
    n = lw.shape[0]
    a = _state_mask(in_a, "A", n, x)
    b = _state_mask(in_b, "B", n, x)
    require_some_weight(lw)
    for name, mask in (("A", a), ("B", b)):
        if not mask.any():
            raise ValueError(f"state {name} is empty: none of the {n} samples is in state {name}")
        if not np.isfinite(lw[mask]).any():
            raise ValueError(
                f"state {name} has no weight: all {int(mask.sum())} samples in state {name} have "
                "zero weight (log-weight -inf)"
            )

    value = delta_f_point(lw, a, b)
    block_size = resolve_block_size(block_size, a, b)
    reps = bootstrap(delta_f_point, lw, a, b, n_bootstrap=n_bootstrap, seed=seed, block_size=block_size, groups=groups)
    return Estimate(value, _bootstrap_error(reps, "delta_f"))


def delta_f_point(log_w, in_a, in_b) -> float:
    """The ΔF_AB = F_B − F_A of :func:`delta_f` without an error: +inf when state B has no sample
    or no weight, −inf when A has none (e.g. in one bootstrap replicate, or one of several
    independent runs), nan when neither has any.

    Parameters
    ----------
    log_w : array, shape (B,)
        Log-weights.
    in_a, in_b : boolean array, shape (B,)
        State membership.

    Returns
    -------
    float
        ΔF in kT; ±inf or nan as above.
    """
    lw, a, b = np.asarray(log_w, dtype=np.float64), np.asarray(in_a, dtype=bool), np.asarray(in_b, dtype=bool)
    if not (a.any() or b.any()):
        return math.nan
    if not b.any():  # no sample in B: Σ_B w = 0
        return math.inf
    if not a.any():
        return -math.inf
    with np.errstate(invalid="ignore"):
        return float(-(logsumexp(lw[b]) - logsumexp(lw[a])))


def _label_array(labels, n_states: int, n: int) -> np.ndarray:
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    lab = np.asarray(labels)
    if lab.shape != (n,) or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(
            f"labels must be {n} integer state labels, one per sample; got {lab.dtype} of shape {lab.shape}"
        )
    if int(n_states) < 1:
        raise ValueError(f"n_states must be at least 1, got {n_states}")
    if lab.size and (lab.min() < 0 or lab.max() >= n_states):
        raise ValueError(f"labels must lie in [0, {n_states}), got [{lab.min()}, {lab.max()}]")
    return lab.astype(np.int64)


def state_free_energies_point(log_w, labels, n_states: int) -> np.ndarray:
    """F_k − F_0 = −ln(Σ_{x∈k} w / Σ_{x∈0} w) for every state k, in kT, without errors.

    Parameters
    ----------
    log_w : array, shape (B,)
        Log-weights.
    labels : array of int, shape (B,)
        State label of each sample, in [0, n_states).
    n_states : int
        Number of states K.

    Returns
    -------
    ndarray, shape (K,), float64
        Entry 0 is 0 when state 0 has weight; +inf for a state without weight; nan everywhere when
        state 0 has none (e.g. in a bootstrap replicate).
    """
    lw = np.asarray(log_w, dtype=np.float64)
    lab = np.asarray(labels)
    with np.errstate(divide="ignore"):
        log_mass = np.array([logsumexp(lw[lab == k]) for k in range(int(n_states))])
    if not np.isfinite(log_mass[0]):
        return np.full(int(n_states), np.nan)
    return -(log_mass - log_mass[0])


def state_free_energies(
    log_w,
    labels,
    n_states: int,
    *,
    groups=None,
    seed: SeedLike = 0,
    n_bootstrap: int = 200,
    block_size: Union[int, str] = 1,
) -> list:
    """Free energy of every state relative to state 0, F_k − F_0 in kT, with bootstrap errors.

    For two states, entry 1 is :func:`delta_f` of ``labels == 0`` and ``labels == 1`` with the
    same value and, for the same seed and options, the same error.

    Parameters
    ----------
    log_w : array, shape (B,)
        Log-weights of samples of the target.
    labels : array of int, shape (B,)
        State label of each sample in [0, n_states) (e.g. :meth:`boltzgen.states.StateSet.assign`).
    n_states : int
        Number of states K.
    groups : array of int, shape (B,), optional
        Independent-run label of each sample: the cluster bootstrap over runs (as :func:`delta_f`).
    seed : int, numpy Generator or None
        Random state of the bootstrap.
    n_bootstrap : int
        Bootstrap replicates.
    block_size : int or "auto"
        Block length of the bootstrap, as for :func:`delta_f` (``"auto"`` from the state
        indicators along a trajectory).

    Returns
    -------
    list of Estimate, length K
        ``(F_k − F_0, standard error)`` in kT (floats); ``Estimate(0.0, 0.0)`` for k = 0. A state
        with no sample of nonzero weight gets ``(inf, nan)``; an error is inf (with a
        RuntimeWarning) when some replicates leave the state without weight.

    Raises
    ------
    ValueError
        Bad labels or lengths, all weights zero, or state 0 without weight (the reference).
    """
    lw = check_log_weights(log_w)
    lab = _label_array(labels, n_states, lw.shape[0])
    require_some_weight(lw)
    if not np.isfinite(lw[lab == 0]).any():
        raise ValueError(
            f"state 0 has no weight ({int(np.sum(lab == 0))} samples, all with log-weight -inf or none): "
            "free energies relative to it are undefined"
        )
    value = state_free_energies_point(lw, lab, n_states)
    block = resolve_block_size(block_size, *(lab == k for k in range(int(n_states))))
    reps = bootstrap(
        lambda a, b: state_free_energies_point(a, b, n_states),
        lw,
        lab,
        n_bootstrap=n_bootstrap,
        seed=seed,
        block_size=block,
        groups=groups,
    )
    has_weight = np.isfinite(value)
    errors = np.full(value.shape, np.nan)
    if has_weight.any():
        errors[has_weight] = np.atleast_1d(_bootstrap_error(reps[:, has_weight], "state_free_energies"))
    errors[0] = 0.0
    return [Estimate(float(v), float(e)) for v, e in zip(value, errors)]


# ---------------------------------------------------------------------------- between two targets
def _bar_point(du_a: np.ndarray, w_a: np.ndarray, du_b: np.ndarray, w_b: np.ndarray) -> float:
    """BAR's ΔF for normalised weights w of each side (effective counts from their ESS)."""
    from scipy.optimize import brentq
    from scipy.special import expit

    n_a, n_b = 1.0 / np.sum(w_a**2), 1.0 / np.sum(w_b**2)
    m = math.log(n_a / n_b)

    def balance(df: float) -> float:  # increasing in df; zero at the BAR estimate
        return n_a * np.sum(w_a * expit(-(m + du_a - df))) - n_b * np.sum(w_b * expit(-(-m - du_b + df)))

    lo = float(min(du_a.min(), -du_b.max())) - 50.0  # brackets: every term saturates beyond these
    hi = float(max(du_a.max(), -du_b.min())) + 50.0
    return float(brentq(balance, lo, hi, xtol=1e-12))


def bar(du_a, du_b, log_w_a=None, log_w_b=None, *, n_bootstrap: int = 200, seed: SeedLike = 0) -> Estimate:
    """ΔF = F_B − F_A = −log(Z_B / Z_A) in kT by Bennett's acceptance ratio, weighted samples allowed.

    With samples of A (Δu = u_B − u_A on them) and of B (Δu on them), BAR solves
    n_A Σ_A w_i f(M + Δu_i − ΔF) = n_B Σ_B w_j f(−M − Δu_j + ΔF) for ΔF, f the Fermi function,
    M = log(n_A / n_B). Importance-weighted samples (SMC output, reweighted MD) enter with their
    normalised weights w and count as their ESS n; equal weights give the usual BAR (Shirts et al.
    2003), the minimum-variance estimator from two-sided data.

    Parameters
    ----------
    du_a : array, shape (B_A,)
        u_B(x) − u_A(x) (kT) on the samples of A.
    du_b : array, shape (B_B,)
        u_B(x) − u_A(x) (kT) on the samples of B.
    log_w_a, log_w_b : array, optional
        Log-weights of the samples of A and of B (default: equal).
    n_bootstrap : int
        Bootstrap replicates of the error (samples of each side resampled with their weights).
    seed : int or Generator

    Returns
    -------
    Estimate
        ``(ΔF, standard error)`` in kT.

    Raises
    ------
    ValueError
        For empty sides, non-finite Δu where the weight is nonzero, or weights that are all zero.
    """
    sides = []
    for name, du, lw in (("A", du_a, log_w_a), ("B", du_b, log_w_b)):
        du = as_float64(du).reshape(-1)
        lw = np.zeros_like(du) if lw is None else check_log_weights(lw, f"log-weights of the samples of {name}")
        if du.shape != lw.shape or du.size == 0:
            raise ValueError(f"the samples of {name} need one energy difference per sample (got {du.size}, {lw.size})")
        require_some_weight(lw, f"log-weights of the samples of {name}")
        keep = np.isfinite(lw)
        if not np.all(np.isfinite(du[keep])):
            raise ValueError(f"u_B − u_A is not finite on samples of {name} that have weight")
        sides.append((du[keep], normalized_weights(lw[keep])))
    (da, wa), (db, wb) = sides
    value = _bar_point(da, wa, db, wb)
    rng = rng_from_seed(seed)
    reps = []
    for _ in range(n_bootstrap):
        ia, ib = rng.integers(0, da.size, da.size), rng.integers(0, db.size, db.size)
        ra, rb = wa[ia], wb[ib]
        if ra.sum() > 0 and rb.sum() > 0:
            reps.append(_bar_point(da[ia], ra / ra.sum(), db[ib], rb / rb.sum()))
    return Estimate(value, _bootstrap_error(np.array(reps), "bar"))


def _pymbar():
    """pymbar, imported with its import-time notices (no JAX, timeseries caveats) kept quiet."""
    import logging

    logging.getLogger("pymbar").setLevel(logging.ERROR)
    import pymbar
    from pymbar import timeseries

    return pymbar, timeseries


def mbar_path(du_states, lambdas, *, subsample: bool = True) -> dict:
    """ΔF = F(λ=1) − F(λ=0) in kT by MBAR along the linear path u_λ = u_A + λ (u_B − u_A).

    Samples of each state λ_k enter through Δu = u_B − u_A alone: u_A is common to every state
    of a sample and cancels in MBAR (Shirts & Chodera 2008), so the reduced energies of sample n
    in state k are λ_k Δu_n. MD frames are correlated; with ``subsample`` each state's series is
    thinned by its statistical inefficiency g of Δu (pymbar's ``timeseries``) before MBAR, so the
    analytic error counts independent samples only. The solver and its asymptotic error are
    pymbar's (a well-kept implementation of the estimator and its covariance).

    Parameters
    ----------
    du_states : sequence of arrays, one per state, shape (T_k,)
        u_B(x) − u_A(x) (kT) on the time-ordered samples of state k.
    lambdas : sequence of float, shape (K,)
        λ of each state, increasing from 0 to 1.
    subsample : bool
        Thin each series by its statistical inefficiency first.

    Returns
    -------
    dict
        ``delta_f_kT``, ``delta_f_err_kT``; ``f_kT`` (F(λ_k) − F(0), shape (K,)) with ``f_err_kT``;
        ``statistical_inefficiency`` (g per state), ``n_independent`` (samples per state used);
        ``overlap_min`` (smallest overlap between neighbouring states, MBAR's overlap matrix: below
        about 0.03 the path needs more states).

    Raises
    ------
    ValueError
        Fewer than 2 states, λ not increasing from 0 to 1, a state without samples, or a
        non-finite Δu.
    """
    lambdas = as_float64(lambdas).reshape(-1)
    if lambdas.size < 2 or lambdas[0] != 0.0 or lambdas[-1] != 1.0 or np.any(np.diff(lambdas) <= 0):
        raise ValueError(f"lambdas must increase from 0 to 1 with at least 2 states, got {lambdas.tolist()}")
    if len(du_states) != lambdas.size:
        raise ValueError(f"{len(du_states)} sample series for {lambdas.size} states")
    pymbar, timeseries = _pymbar()
    kept, g = [], []
    for k, du in enumerate(du_states):
        du = as_float64(du).reshape(-1)
        if du.size == 0:
            raise ValueError(f"state {k} (lambda {lambdas[k]:g}) has no samples")
        if not np.all(np.isfinite(du)):
            raise ValueError(f"u_B − u_A is not finite on samples of state {k} (lambda {lambdas[k]:g})")
        g_k = 1.0
        if subsample and du.size > 2 and np.ptp(du) > 0:
            g_k = float(timeseries.statistical_inefficiency(du))
            du = du[np.asarray(timeseries.subsample_correlated_data(du, g=g_k), dtype=int)]
        kept.append(du)
        g.append(g_k)
    du_all = np.concatenate(kept)
    u_kn = lambdas[:, None] * du_all[None, :]
    n_k = np.array([d.size for d in kept])
    mbar = pymbar.MBAR(u_kn, n_k, solver_protocol="robust")
    result = mbar.compute_free_energy_differences()
    overlap = mbar.compute_overlap()["matrix"]
    f, df = result["Delta_f"][0], result["dDelta_f"][0]
    return {
        "delta_f_kT": float(f[-1]),
        "delta_f_err_kT": float(df[-1]),
        "f_kT": [float(v) for v in f],
        "f_err_kT": [float(v) for v in df],
        "statistical_inefficiency": g,
        "n_independent": [int(v) for v in n_k],
        "overlap_min": float(min(overlap[k, k + 1] for k in range(lambdas.size - 1))),
    }
