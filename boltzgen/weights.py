"""Importance weights and the estimators built on them (float64 throughout).

A sample x from a proposal with log-density log q(x), reweighted to the Boltzmann target
p(x) ∝ exp(−u(x)) (u the reduced energy), has log-weight

    log w(x) = −u(x) − log q(x).

Configurations the target cannot evaluate have u = +inf, hence log w = −inf (weight zero).
Every estimator here works with log-weights through log-sum-exp, so log-weights that span
hundreds or thousands of units, or are all shifted by a constant, give the same answers.

Inputs may be NumPy arrays, torch tensors or sequences; outputs are NumPy float64 arrays or Python
floats. Estimates with an error bar are :class:`Estimate` tuples ``(value, error)``.

Error handling: a log-weight of NaN or +inf is a ValueError (it is a bug upstream, not a weight);
all weights zero (every log-weight −inf) is a ValueError that says so, never a NaN.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, NamedTuple, Optional, Union

import numpy as np

__all__ = [
    "Estimate", "log_weights", "logsumexp", "normalized_weights", "ess", "ess_fraction", "log_z",
    "expectation", "delta_f", "delta_f_point", "bootstrap", "bootstrap_indices", "group_members", "pool_runs", "block_size_for",
    "resolve_block_size",
    "phi_psi", "phi_states", "has_phi", "PHI_ATOMS", "PSI_ATOMS",
]

#: Zero-based atoms of φ and ψ in the built-in alanine-dipeptide topology (``systems/aldp.pdb``),
#: the atom order of the published Boltzmann-generator data sets.
PHI_ATOMS = (4, 6, 8, 14)
PSI_ATOMS = (6, 8, 14, 16)

SeedLike = Union[None, int, np.random.Generator]


class Estimate(NamedTuple):
    """An estimate and its standard error (same units; ``error`` may be ``inf``)."""

    value: Any
    error: Any


# ---------------------------------------------------------------------------- input handling
def _as_float64(a, name: str) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def _check_log_w(log_w, name: str = "log_w") -> np.ndarray:
    """(B,) float64 log-weights; NaN or +inf raise, −inf (weight zero) is allowed."""
    lw = _as_float64(log_w, name)
    if lw.ndim != 1:
        raise ValueError(f"{name} must be one log-weight per sample, shape (B,); got shape {lw.shape}")
    if lw.shape[0] == 0:
        raise ValueError(f"{name} is empty: no samples")
    bad = np.isnan(lw) | (lw == np.inf)
    if bad.any():
        idx = np.flatnonzero(bad)
        raise ValueError(f"{name} has {idx.size} NaN or +inf entries (indices {_first(idx)}); log-weights must be "
                         "finite or -inf (weight zero)")
    return lw


def _first(idx: np.ndarray, k: int = 5) -> str:
    shown = ", ".join(str(int(i)) for i in idx[:k])
    return shown + (", ..." if idx.size > k else "")


def _require_some_weight(lw: np.ndarray, name: str = "log_w") -> None:
    if not np.isfinite(lw).any():
        raise ValueError(f"all {lw.shape[0]} weights are zero (every entry of {name} is -inf): no sample has "
                         "nonzero weight under the target, so there is nothing to estimate")


def _rng(seed: SeedLike) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def logsumexp(a, axis: Optional[int] = None):
    """log Σ exp(a), stable for large |a|; −inf when every entry is −inf (never NaN).

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
    a = _as_float64(a, "a")
    m = np.max(a, axis=axis, keepdims=True) if a.size else np.array(-np.inf)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True)) + m
    out = np.squeeze(out, axis=axis) if axis is not None else out.reshape(())
    return float(out) if out.ndim == 0 else out


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
    u = _as_float64(reduced_energy, "reduced_energy").reshape(-1)
    lq = _as_float64(log_q, "log_q").reshape(-1)
    if u.shape != lq.shape:
        raise ValueError(f"reduced_energy has {u.shape[0]} entries but log_q has {lq.shape[0]}")
    bad = ~np.isfinite(lq)
    if bad.any():
        idx = np.flatnonzero(bad)
        raise ValueError(f"log_q has {idx.size} non-finite entries (indices {_first(idx)}); the proposal "
                         "log-density must be finite at every sample")
    if (u == -np.inf).any():
        idx = np.flatnonzero(u == -np.inf)
        raise ValueError(f"reduced_energy is -inf at {idx.size} samples (indices {_first(idx)}); "
                         "the target energy is broken there")
    u = np.where(np.isnan(u), np.inf, u)
    return -u - lq


def normalized_weights(log_w) -> np.ndarray:
    """Self-normalised weights w_i / Σ_j w_j.

    Parameters
    ----------
    log_w : array, shape (B,)
        Log-weights (−inf allowed).

    Returns
    -------
    ndarray, shape (B,), float64
        Non-negative, summing to 1.
    """
    lw = _check_log_w(log_w)
    _require_some_weight(lw)
    return np.exp(lw - logsumexp(lw))


def ess(log_w) -> float:
    """Kish effective sample size (Σw)² / Σw², from log-weights.

    Parameters
    ----------
    log_w : array, shape (B,)

    Returns
    -------
    float
        Between 1 and B.
    """
    lw = _check_log_w(log_w)
    _require_some_weight(lw)
    return float(np.exp(2.0 * logsumexp(lw) - logsumexp(2.0 * lw)))


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
    lw = _check_log_w(log_w)
    return ess(lw) / lw.shape[0]


# ---------------------------------------------------------------------------- bootstrap
def bootstrap(statistic: Callable[..., Any], *arrays, n_bootstrap: int = 200, seed: SeedLike = 0,
              block_size: int = 1, groups=None) -> np.ndarray:
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
    if not arrays:
        raise ValueError("bootstrap needs at least one array to resample")
    arrays = tuple(np.asarray(a) for a in arrays)
    n = arrays[0].shape[0]
    for a in arrays[1:]:
        if a.shape[0] != n:
            raise ValueError(f"bootstrap arrays have different lengths: {n} and {a.shape[0]}")
    if n_bootstrap < 2:
        raise ValueError(f"n_bootstrap must be at least 2, got {n_bootstrap}")
    rng = _rng(seed)
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
        raise ValueError(f"groups must be {n} integer labels, one per sample; got {groups.dtype} of shape {groups.shape}")
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
        lw = _check_log_w(lw)
        _require_some_weight(lw)
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
    f = _as_float64(series, "series")
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


def resolve_block_size(block_size: Union[int, str], in_a, in_b) -> int:
    """The bootstrap block length for a ΔF between two states: an int as given, or ``"auto"``.

    Parameters
    ----------
    block_size : int or "auto"
        A positive integer, or ``"auto"``: :func:`block_size_for` of the two state indicators
        along the samples (for a time-ordered trajectory).
    in_a, in_b : boolean array, shape (B,)
        State membership of each sample, in trajectory order.

    Returns
    -------
    int
    """
    if isinstance(block_size, str):
        if block_size != "auto":
            raise ValueError(f"block_size must be a positive integer or 'auto', got {block_size!r}")
        return block_size_for(np.stack([np.asarray(in_a), np.asarray(in_b)], 1).astype(np.float64))
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
        warnings.warn(f"{what}: {frac:.0%} of bootstrap replicates are undefined (too few samples with weight); "
                      "the error is reported as inf", RuntimeWarning, stacklevel=3)
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
    lw = _check_log_w(log_w)
    _require_some_weight(lw)
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
    lw = _check_log_w(log_w)
    f = _as_float64(values, "values")
    if f.ndim == 0 or f.shape[0] != lw.shape[0]:
        raise ValueError(f"values have {f.shape[0] if f.ndim else 0} rows but log_w has {lw.shape[0]} entries")
    _require_some_weight(lw)
    keep = np.isfinite(lw)
    lw, f = lw[keep], f[keep]
    if not np.isfinite(f).all():
        rows = np.flatnonzero(~np.isfinite(f.reshape(f.shape[0], -1)).all(axis=1))
        raise ValueError(f"values are not finite at {rows.size} samples with nonzero weight")

    def mean(lw_, f_):
        w = np.exp(lw_ - logsumexp(lw_))
        return np.tensordot(w, f_, axes=(0, 0))

    mu = mean(lw, f)
    if method == "delta":
        w = np.exp(lw - logsumexp(lw))
        err = np.sqrt(np.tensordot(w ** 2, (f - mu) ** 2, axes=(0, 0)))
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


def delta_f(log_w, in_a, in_b, *, x=None, n_bootstrap: int = 200, seed: SeedLike = 0,
            block_size: Union[int, str] = 1, groups=None) -> Estimate:
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
    lw = _check_log_w(log_w)
    n = lw.shape[0]
    a = _state_mask(in_a, "A", n, x)
    b = _state_mask(in_b, "B", n, x)
    _require_some_weight(lw)
    for name, mask in (("A", a), ("B", b)):
        if not mask.any():
            raise ValueError(f"state {name} is empty: none of the {n} samples is in state {name}")
        if not np.isfinite(lw[mask]).any():
            raise ValueError(f"state {name} has no weight: all {int(mask.sum())} samples in state {name} have "
                             "zero weight (log-weight -inf)")

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


# ---------------------------------------------------------------------------- torsions
def _trajectory(x_or_traj, topology):
    import mdtraj

    if isinstance(x_or_traj, mdtraj.Trajectory):
        return x_or_traj
    if topology is None:
        raise ValueError("phi_psi needs a topology when given coordinates (or pass an mdtraj.Trajectory)")
    x = _as_float64(x_or_traj, "x")
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[1:] != (topology.n_atoms, 3):
        raise ValueError(f"coordinates of shape {x.shape} do not match a topology of {topology.n_atoms} atoms "
                         f"(expected (B, {topology.n_atoms}, 3))")
    return mdtraj.Trajectory(x.astype(np.float32), topology)


def phi_psi(x_or_traj, topology=None) -> tuple[np.ndarray, np.ndarray]:
    """Backbone torsions φ and ψ in radians, computed with ``mdtraj.compute_phi/psi``.

    For alanine dipeptide in the built-in atom order φ is atoms (4, 6, 8, 14) and ψ (6, 8, 14, 16).

    Parameters
    ----------
    x_or_traj : array (B, N, 3) or (N, 3) in nm (NumPy or torch), or mdtraj.Trajectory
    topology : mdtraj.Topology, optional
        Required for coordinate arrays.

    Returns
    -------
    phi, psi : ndarray, float64, in (−π, π]
        Shape (B,) when the molecule has one φ (one ψ) torsion, as alanine dipeptide does;
        (B, K) for K torsions otherwise.

    Raises
    ------
    ValueError
        No φ torsion in the topology (needs a C−N−CA−C backbone across residues).
    """
    import mdtraj

    traj = _trajectory(x_or_traj, topology)
    _, phi = mdtraj.compute_phi(traj)
    _, psi = mdtraj.compute_psi(traj)
    if phi.shape[1] == 0:
        raise ValueError("the topology has no phi torsion (needs a C-N-CA-C backbone across residues)")
    phi, psi = phi.astype(np.float64), psi.astype(np.float64)
    phi = phi[:, 0] if phi.shape[1] == 1 else phi
    psi = psi[:, 0] if psi.ndim == 2 and psi.shape[1] == 1 else psi
    return phi, psi


def has_phi(topology) -> bool:
    """True when the topology has a backbone φ torsion (alanine-dipeptide-like molecules).

    Parameters
    ----------
    topology : mdtraj.Topology or None
        Topology to inspect.

    Returns
    -------
    bool
        False for ``None`` and for topologies mdtraj cannot analyse.
    """
    import mdtraj

    if topology is None:
        return False
    empty = mdtraj.Trajectory(np.zeros((1, topology.n_atoms, 3), dtype=np.float32), topology)
    try:
        return mdtraj.compute_phi(empty)[0].shape[0] > 0
    except Exception:  # topologies mdtraj cannot analyse (e.g. no residues)
        return False


def phi_states(x_or_traj, topology=None) -> tuple[np.ndarray, np.ndarray]:
    """The standard two states of alanine dipeptide: A = {φ < 0}, B = {φ > 0}.

    A holds the C7eq / β / αR basins, B the αL / C7ax basins; ``delta_f(log_w, *phi_states(x, top))``
    is then F(φ > 0) − F(φ < 0) in kT.

    Parameters
    ----------
    x_or_traj, topology
        As for :func:`phi_psi`; the molecule must have exactly one φ torsion.

    Returns
    -------
    in_a, in_b : ndarray of bool, shape (B,)
    """
    phi, _ = phi_psi(x_or_traj, topology)
    if phi.ndim != 1:
        raise ValueError(f"phi_states needs a molecule with one phi torsion; this one has {phi.shape[1]}")
    return phi < 0, phi > 0
