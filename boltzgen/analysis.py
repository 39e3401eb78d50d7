"""Analysis of (weighted) samples: torsions, histograms, free-energy profiles and Wasserstein distances.

The functions notebooks and ``boltzgen analyze`` use. Every function takes optional log-weights
``log_w`` of shape (B,) (``None``: all samples weigh the same); weights are normalised through
log-sum-exp, so log-weights spanning hundreds of units, or all shifted by a constant, give the same
answers. A log-weight of −inf (weight zero) is allowed; NaN or +inf is a ValueError. Free energies
are in kT (F = −ln p), angles in radians, reduced energies dimensionless (u = U/kT).

- :func:`torsions`: backbone φ and ψ (through mdtraj, :func:`boltzgen.states.phi_psi`; per residue
  :func:`boltzgen.states.backbone_torsions`);
- :func:`weighted_histogram`, :func:`free_energy_profile` (with bootstrap errors),
  :func:`free_energy_surface` (the Ramachandran free-energy map);
- :func:`state_free_energy_metrics`: F_k − F_0 of a system's states (and ΔF for two) as metrics;
- :func:`energy_w2`: exact 1-D Wasserstein-2 distance between two weighted energy distributions;
- :func:`torsion_w2`: Wasserstein-2 distance on the torus of (φ, ψ), exact optimal assignment of
  ``n`` resampled points each (the convention of the equivariant-flow-matching papers, which use
  POT ``emd`` on the periodic distance).
"""

from __future__ import annotations

import builtins
import math
from typing import NamedTuple, Optional

import numpy as np
from scipy.special import logsumexp

from . import weights as W
from .states import phi_psi

__all__ = [
    "torsions",
    "weighted_histogram",
    "free_energy_profile",
    "FreeEnergyProfile",
    "free_energy_surface",
    "energy_w2",
    "energy_w2_floor",
    "torsion_w2",
    "state_free_energy_metrics",
    "bootstrap_clusters",
]

TWO_PI = 2.0 * math.pi
builtins_range = builtins.range  # `range` is a parameter name below


# ---------------------------------------------------------------------------- helpers
def _log_w(log_w, n: int, name: str = "log_w") -> np.ndarray:
    """(n,) float64 log-weights (zeros for None), checked, with at least one nonzero weight."""
    if log_w is None:
        return np.zeros(n)
    lw = W.check_log_weights(log_w, name)
    if lw.shape[0] != n:
        raise ValueError(f"{name} has {lw.shape[0]} entries but there are {n} samples")
    W.require_some_weight(lw, name)
    return lw


def _weighted_values(values, log_w, name: str = "values", lw_name: str = "log_w"):
    """Values (B, ...) and normalised weights (B,) with zero-weight samples dropped.

    Non-finite values are allowed only where the weight is zero.
    """
    v = W.as_float64(values)
    if v.ndim == 0:
        v = v.reshape(1)
    if v.shape[0] == 0:
        raise ValueError(f"{name} is empty: no samples")
    lw = _log_w(log_w, v.shape[0], lw_name)
    keep = np.isfinite(lw)
    rows_bad = ~np.isfinite(v.reshape(v.shape[0], -1)).all(axis=1)
    bad = rows_bad & keep
    if bad.any():
        idx = np.flatnonzero(bad)
        raise ValueError(
            f"{name} is not finite at {idx.size} samples with nonzero weight (indices {W.format_indices(idx)}); "
            "give such samples log-weight -inf or remove them"
        )
    v, lw = v[keep], lw[keep]
    return v, W.normalized_weights(lw), lw


# ---------------------------------------------------------------------------- torsions
def torsions(x_or_traj, topology=None) -> tuple[np.ndarray, np.ndarray]:
    """Backbone torsions φ and ψ in radians (mdtraj), :func:`boltzgen.states.phi_psi`.

    For alanine dipeptide in the built-in atom order φ is atoms (4, 6, 8, 14) and ψ is
    (6, 8, 14, 16), zero-based.

    Parameters
    ----------
    x_or_traj : array (B, N, 3) or (N, 3) in nm (NumPy or torch), or mdtraj.Trajectory
        Configurations.
    topology : mdtraj.Topology, optional
        Required with coordinate arrays.

    Returns
    -------
    phi, psi : ndarray, float64, radians in (−π, π]
        Shape (B,) for a molecule with one φ and one ψ (alanine dipeptide); (B, K) for K torsions.

    Raises
    ------
    ValueError
        No topology for coordinates, mismatched atom count, or no φ torsion in the topology.
    """
    return phi_psi(x_or_traj, topology)


# ---------------------------------------------------------------------------- histograms
def weighted_histogram(values, log_w=None, bins=50, range=None, density: bool = True):
    """Histogram of weighted samples, weights normalised through log-sum-exp.

    Parameters
    ----------
    values : array, shape (B,)
        One value per sample (any unit). Non-finite values are allowed only with weight zero.
    log_w : array (B,), optional
        Log-weights (None: unweighted); −inf is weight zero.
    bins : int or array of edges
        As for ``numpy.histogram``.
    range : (float, float), optional
        Lower and upper edge (default: min and max of the samples with nonzero weight).
    density : bool
        True: a probability density (integrates to 1 over ``range``, units 1/unit of ``values``).
        False: the fraction of the total weight in each bin (sums to 1 when every sample lies in
        ``range``; an unweighted histogram is counts / B).

    Returns
    -------
    hist : ndarray, shape (n_bins,), float64
    edges : ndarray, shape (n_bins + 1,), float64
    """
    v, w, _ = _weighted_values(values, log_w)
    if v.ndim != 1:
        raise ValueError(f"values must be one number per sample, shape (B,); got shape {v.shape}")
    hist, edges = np.histogram(v, bins=bins, range=range, weights=w, density=density)
    return hist.astype(np.float64), edges.astype(np.float64)


class FreeEnergyProfile(NamedTuple):
    """A 1-D free-energy profile F(s) = −ln p(s) + const, in kT.

    Attributes
    ----------
    centers : ndarray (n_bins,)
        Bin centres (unit of the collective variable, radians for torsions).
    f_kT : ndarray (n_bins,)
        Free energy in kT, shifted so that its minimum is 0; +inf in bins without weight.
    f_err_kT : ndarray (n_bins,)
        Bootstrap standard error of −ln p per bin (kT); NaN in empty bins (and everywhere when
        ``n_bootstrap == 0``), inf where some bootstrap replicate leaves the bin empty.
    counts : ndarray (n_bins,), int
        Number of samples (with nonzero weight) in each bin.
    ess : ndarray (n_bins,)
        Kish effective sample size of the weights within each bin (0 for empty bins).
    edges : ndarray (n_bins + 1,)
        Bin edges.
    """

    centers: np.ndarray
    f_kT: np.ndarray
    f_err_kT: np.ndarray
    counts: np.ndarray
    ess: np.ndarray
    edges: np.ndarray


def _bin_index(v: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value as numpy.histogram assigns it (last bin closed); −1 outside the edges."""
    n_bins = edges.shape[0] - 1
    idx = np.searchsorted(edges, v, side="right") - 1
    idx = np.where(v == edges[-1], n_bins - 1, idx)
    return np.where((idx < 0) | (idx >= n_bins), -1, idx)


class _Binned:
    """Samples grouped by bin once, for log-sum-exp per bin in O(B) (also for bootstrap replicates)."""

    def __init__(self, idx: np.ndarray, widths: np.ndarray):
        self.order = np.argsort(idx, kind="stable")
        b = idx[self.order]
        self.starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
        self.lengths = np.diff(np.r_[self.starts, b.size])
        self.group_bin = b[self.starts]  # −1: the group outside the range
        self.log_widths = np.log(widths)

    def log_density(self, l_sorted: np.ndarray) -> np.ndarray:
        """ln p per bin from log-weights in sorted order (−inf allowed): weight fraction / width."""
        m = np.maximum.reduceat(l_sorted, self.starts)
        m = np.where(np.isfinite(m), m, 0.0)
        with np.errstate(divide="ignore"):
            log_mass = np.log(np.add.reduceat(np.exp(l_sorted - np.repeat(m, self.lengths)), self.starts)) + m
        total = logsumexp(log_mass)
        out = np.full(self.log_widths.shape[0], -np.inf)
        inside = self.group_bin >= 0
        out[self.group_bin[inside]] = log_mass[inside] - total
        return out - self.log_widths


def free_energy_profile(
    values, log_w=None, bins=60, range=(-math.pi, math.pi), n_bootstrap: int = 200, seed=0, block_size: int = 1
) -> FreeEnergyProfile:
    """Free-energy profile F(s) = −ln p(s) of weighted samples of a collective variable s, in kT.

    p is the histogram density of the whole (weighted) sample, samples outside ``range``
    included in the normalisation; F is shifted so that its minimum is 0.

    Parameters
    ----------
    values : array, shape (B,)
        The collective variable per sample (radians for torsions). Non-finite values are allowed
        only with weight zero.
    log_w : array (B,), optional
        Log-weights (None: unweighted).
    bins : int or array of edges
        Number of bins over ``range``, or the edges.
    range : (float, float)
        Lower and upper edge (default (−π, π), for torsions); ignored when ``bins`` gives edges.
    n_bootstrap : int
        Bootstrap replicates (samples resampled with replacement, weights kept) for ``f_err_kT``;
        0 skips the bootstrap.
    seed : int, numpy Generator or None
        Random state of the bootstrap.
    block_size : int
        Block length of the bootstrap (:func:`boltzgen.weights.bootstrap`): 1 for independent
        samples, longer than the correlation time for a trajectory (see
        :func:`boltzgen.weights.block_size_for`).

    Returns
    -------
    FreeEnergyProfile
        ``(centers, f_kT, f_err_kT, counts, ess, edges)``, each (n_bins,) except edges.
    """
    v, _, lw = _weighted_values(values, log_w)
    if v.ndim != 1:
        raise ValueError(f"values must be one number per sample, shape (B,); got shape {v.shape}")
    if np.ndim(bins) == 0:
        edges = np.linspace(float(range[0]), float(range[1]), int(bins) + 1)
    else:
        edges = np.asarray(bins, dtype=np.float64)
    if edges.ndim != 1 or edges.shape[0] < 2 or not (np.diff(edges) > 0).all():
        raise ValueError("bins must be a positive number or increasing edges")
    widths = np.diff(edges)
    centers = 0.5 * (edges[1:] + edges[:-1])
    idx = _bin_index(v, edges)
    n_bins = widths.shape[0]

    binned = _Binned(idx, widths)
    lw_sorted = lw[binned.order]
    log_p = binned.log_density(lw_sorted)
    with np.errstate(invalid="ignore"):
        f = -log_p
        f = f - np.min(f) if np.isfinite(f).any() else f
    counts = np.bincount(idx[idx >= 0], minlength=n_bins)
    inside = idx >= 0
    wrel = np.exp(lw - lw.max())
    s1 = np.bincount(idx[inside], weights=wrel[inside], minlength=n_bins)
    s2 = np.bincount(idx[inside], weights=wrel[inside] ** 2, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        bin_ess = np.where(s2 > 0, s1**2 / np.where(s2 > 0, s2, 1.0), 0.0)

    err = np.full(n_bins, np.nan)
    if n_bootstrap:
        if int(n_bootstrap) < 2:
            raise ValueError(f"n_bootstrap must be 0 (no errors) or at least 2, got {n_bootstrap}")
        # Resampling B samples with replacement = multiplying each weight by its multiplicity c_i.
        rng = W.rng_from_seed(seed)
        n = lw.shape[0]
        reps = np.empty((int(n_bootstrap), n_bins))
        with np.errstate(divide="ignore"):
            for r in builtins_range(int(n_bootstrap)):
                c = np.bincount(W.bootstrap_indices(n, rng, block_size), minlength=n)[binned.order]
                reps[r] = binned.log_density(lw_sorted + np.log(c))
        finite = np.isfinite(reps)
        with np.errstate(invalid="ignore"):
            sd = np.std(np.where(finite, reps, 0.0), axis=0, ddof=1)
        err = np.where(finite.all(axis=0), sd, np.inf)
        err = np.where(np.isfinite(f), err, np.nan)
    return FreeEnergyProfile(centers, f, err, counts, bin_ess, edges)


def free_energy_surface(phi, psi, log_w=None, bins=60, range=((-math.pi, math.pi), (-math.pi, math.pi))):
    """Two-dimensional free-energy surface F(φ, ψ) = −ln p(φ, ψ) in kT (Ramachandran map).

    Parameters
    ----------
    phi, psi : array, shape (B,)
        Two collective variables per sample (radians for torsions).
    log_w : array (B,), optional
        Log-weights (None: unweighted).
    bins : int or (int, int)
        Bins per axis.
    range : ((float, float), (float, float))
        Edges of each axis (default (−π, π) for both).

    Returns
    -------
    F : ndarray, shape (bins_phi, bins_psi), float64
        Free energy in kT with minimum 0; +inf where a bin has no weight. ``F[i, j]`` is the bin
        of phi_edges[i:i+2] and psi_edges[j:j+2] (plot ``F.T`` with φ on the horizontal axis).
    phi_edges : ndarray, shape (bins_phi + 1,)
    psi_edges : ndarray, shape (bins_psi + 1,)
    """
    a = W.as_float64(phi).reshape(-1)
    b = W.as_float64(psi).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"phi has {a.shape[0]} entries but psi has {b.shape[0]}")
    v, w, _ = _weighted_values(np.stack([a, b], axis=1), log_w, name="phi/psi")
    hist, xe, ye = np.histogram2d(v[:, 0], v[:, 1], bins=bins, range=range, weights=w)
    area = np.outer(np.diff(xe), np.diff(ye))
    with np.errstate(divide="ignore"):
        f = -np.log(hist / area)
    if np.isfinite(f).any():
        f = f - np.min(f[np.isfinite(f)])
    return f, xe.astype(np.float64), ye.astype(np.float64)


# ---------------------------------------------------------------------------- Wasserstein distances
def energy_w2(u, u_ref, log_w=None, log_w_ref=None) -> float:
    """Exact Wasserstein-2 distance between two weighted 1-D empirical distributions.

    For measures on the line, W2² = ∫₀¹ (F⁻¹(p) − G⁻¹(p))² dp with F⁻¹, G⁻¹ the quantile functions.
    The quantile functions of weighted empirical measures are step functions, so the integral is
    a finite sum over the merged breakpoints of the two cumulative weights: exact, with no binning.
    POT's ``ot.wasserstein_1d(u, u_ref, w, w_ref, p=2)`` computes the same sum (its square root
    agrees to float rounding); it is not used because POT is not a dependency of the package and
    this sum is all that is needed.

    Parameters
    ----------
    u, u_ref : array, shape (B,) and (B_ref,)
        Values of the two samples (typically reduced energies u = U/kT, dimensionless).
        Non-finite values with weight zero are dropped.
    log_w, log_w_ref : array, optional
        Log-weights of each sample (None: unweighted).

    Returns
    -------
    float
        W2 in the unit of ``u`` (kT for reduced energies); 0 for identical distributions.

    Raises
    ------
    ValueError
        A non-finite value with nonzero weight, all weights zero, or mismatched lengths.
    """
    a, wa, _ = _weighted_values(u, log_w, "u", "log_w")
    b, wb, _ = _weighted_values(u_ref, log_w_ref, "u_ref", "log_w_ref")
    if a.ndim != 1 or b.ndim != 1:
        raise ValueError(f"energy_w2 needs one value per sample; got shapes {a.shape} and {b.shape}")
    ia, ib = np.argsort(a, kind="stable"), np.argsort(b, kind="stable")
    a, wa, b, wb = a[ia], wa[ia], b[ib], wb[ib]
    ca, cb = np.cumsum(wa), np.cumsum(wb)
    ca /= ca[-1]
    cb /= cb[-1]
    levels = np.union1d(ca, cb)  # sorted, ends at 1
    levels = levels[levels > 0]
    dp = np.diff(np.r_[0.0, levels])
    qa = a[np.minimum(np.searchsorted(ca, levels, side="left"), a.size - 1)]
    qb = b[np.minimum(np.searchsorted(cb, levels, side="left"), b.size - 1)]
    return float(math.sqrt(max(float(np.sum(dp * (qa - qb) ** 2)), 0.0)))


def energy_w2_floor(u_ref, n=None, log_w_ref=None, n_draws: int = 50, seed=0, log_w=None) -> float:
    """Energy W2 that a perfect sampler scores against a reference: its sampling noise alone.

    The mean, over ``n_draws`` repetitions, of :func:`energy_w2` between draws (with replacement,
    by the reference's weights) from the reference and the whole reference: ``n`` unweighted
    draws, or, given the log-weights ``log_w`` of a weighted sample, as many draws as it has
    entries carrying those weights (a sampler whose particles are exact and independent but
    weighted as these are). An empirical distribution of n independent draws sits at a W2 distance
    of order σ/√n from the one it was drawn from, so differences of a sampler's energy W2 below
    this value are sampling noise (a yardstick, not a bound: weights that track the target can
    land below it). For SMC, whose particles descend from few ancestors, the floor at the lineage
    ESS (:func:`boltzgen.weights.lineage_ess`) gives the other side.

    Parameters
    ----------
    u_ref : array, shape (B_ref,)
        Reference values (reduced energies, kT).
    n : float, optional
        Number of unweighted independent draws (rounded; at least 1), e.g. a lineage ESS.
    log_w_ref : array, optional
        Log-weights of the reference (None: unweighted).
    n_draws : int
        Repetitions averaged.
    seed : int or None
        Random state of the draws.
    log_w : array, shape (B,), optional
        Log-weights of the sample (instead of ``n``).

    Returns
    -------
    float
        Mean W2 in the unit of ``u_ref``.

    Raises
    ------
    ValueError
        Neither or both of ``n`` and ``log_w``; ``n`` not finite; ``n_draws`` below 1; invalid
        values or weights.
    """
    if (n is None) == (log_w is None):
        raise ValueError("give either n (a number of draws) or log_w (the weights of a sample)")
    if int(n_draws) < 1:
        raise ValueError(f"n_draws must be at least 1, got {n_draws}")
    if log_w is not None:
        lw = W.check_log_weights(log_w, "log_w")
        W.require_some_weight(lw, "log_w")
        m = lw.shape[0]
    else:
        if not math.isfinite(float(n)):
            raise ValueError(f"n must be a finite number of draws, got {n}")
        lw, m = None, max(1, int(round(float(n))))
    b, wb, lw_b = _weighted_values(u_ref, log_w_ref, "u_ref", "log_w_ref")
    if b.ndim != 1:
        raise ValueError(f"energy_w2_floor needs one value per sample; got shape {b.shape}")
    rng = np.random.default_rng(seed)
    return float(np.mean([energy_w2(b[rng.choice(b.size, size=m, p=wb)], b, lw, lw_b) for _ in range(int(n_draws))]))


def _as_angles(angles, name: str) -> np.ndarray:
    if isinstance(angles, tuple) and len(angles) == 2:  # the (phi, psi) pair of torsions()
        angles = np.stack([W.as_float64(angles[0]).reshape(-1), W.as_float64(angles[1]).reshape(-1)], axis=1)
    a = W.as_float64(angles)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"{name} must be angles of shape (B, 2) (or (B, D)); got shape {a.shape}")
    return a


def _resample(a: np.ndarray, log_w, n: int, weighted: bool, rng: np.random.Generator, name: str) -> np.ndarray:
    v, w, _ = _weighted_values(a, log_w, name, "log_w" if name == "angles" else "log_w_ref")
    if not weighted and v.shape[0] >= n:
        return v[rng.choice(v.shape[0], size=n, replace=False)]
    return v[rng.choice(v.shape[0], size=n, replace=True, p=w)]


def torsion_w2(angles, angles_ref, log_w=None, log_w_ref=None, n: int = 2000, seed=0) -> float:
    """Wasserstein-2 distance between two (weighted) samples of torsions on the torus.

    The ground cost is the squared periodic distance, Σ_k min(|d_k|, 2π − |d_k|)² with d_k the
    difference of angle k (mod 2π). Each sample is brought to ``n`` equally weighted points:
    weighted samples (or unweighted ones with fewer than ``n`` points) by multinomial resampling
    with probabilities equal to the normalised weights, unweighted ones with at least ``n`` points
    by drawing ``n`` without replacement. The optimal assignment between the two point sets
    (``scipy.optimize.linear_sum_assignment``, exact) gives W2 = sqrt(mean cost). This is the
    convention of the equivariant-flow-matching papers: POT's ``ot.emd2`` with uniform weights on
    the same cost matrix gives the same optimum (to float rounding); scipy's exact assignment is
    used because POT is not a dependency of the package.

    Parameters
    ----------
    angles, angles_ref : array, shape (B, 2) and (B_ref, 2), radians
        (φ, ψ) per sample (any period-2π angles; (B, D) works the same). The ``(phi, psi)`` tuple
        returned by :func:`torsions` is accepted too.
    log_w, log_w_ref : array, optional
        Log-weights of each sample (None: unweighted).
    n : int
        Points per sample for the assignment (time grows as n³).
    seed : int or None
        Random state of the resampling. Both samples are drawn with generators of the same seed,
        so identical inputs give W2 = 0.

    Returns
    -------
    float
        W2 in radians.
    """
    from scipy.optimize import linear_sum_assignment

    a = _as_angles(angles, "angles")
    b = _as_angles(angles_ref, "angles_ref")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"angles have {a.shape[1]} coordinates but angles_ref has {b.shape[1]}")
    if int(n) < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    n = int(n)
    pa = _resample(a, log_w, n, log_w is not None, np.random.default_rng(seed), "angles")
    pb = _resample(b, log_w_ref, n, log_w_ref is not None, np.random.default_rng(seed), "angles_ref")
    d = np.abs(pa[:, None, :] - pb[None, :, :]) % TWO_PI
    d = np.minimum(d, TWO_PI - d)
    cost = np.sum(d * d, axis=-1)
    rows, cols = linear_sum_assignment(cost)
    return float(math.sqrt(cost[rows, cols].mean()))


# ---------------------------------------------------------------------------- states
def bootstrap_clusters(log_w, runs=None, lineages=None) -> tuple:
    """The clusters an SMC sample's free-energy bootstrap draws, and how to name them.

    Particles of one SMC lineage (the descendants of one particle at t = 1, the "Eve" clusters of
    Lee & Whiteley 2018) are one draw, and lineages are nearly independent of each other, also
    across independent runs: the bootstrap over all lineages gives calibrated errors where the
    bootstrap over a few runs (two to four) understates them (docs/theory.md, "Errors of pooled
    runs"). Without lineages (sample files written before they were kept) the runs are the
    clusters; without either, single samples.

    Parameters
    ----------
    log_w : array, shape (B,)
        Log-weights of the samples (clusters without weight are not counted).
    runs : array of int, shape (B,), optional
        Independent-run label of each sample (``smc_run`` of a sample file).
    lineages : array of int, shape (B,), optional
        Lineage label of each sample, distinct across runs (``smc_lineage`` of a sample file).

    Returns
    -------
    groups : ndarray of int, shape (B,), or None
        Cluster label of each sample, None for the bootstrap of single samples.
    method : str
        The bootstrap in words, e.g. ``"bootstrap of the 84 lineages (ancestors at t = 1) of
        4 independent SMC runs"``.
    """
    lw = np.asarray(log_w, dtype=np.float64)
    n_runs = None if runs is None else int(np.unique(np.asarray(runs)).size)
    if lineages is not None:
        lineages = np.asarray(lineages).astype(np.int64)
        n = int(np.unique(lineages[np.isfinite(lw)]).size)
        of = "one SMC run" if n_runs in (None, 1) else f"{n_runs} independent SMC runs"
        return lineages, f"bootstrap of the {n} lineages (ancestors at t = 1) of {of}"
    if runs is not None and n_runs >= 2:
        return np.asarray(runs).astype(np.int64), f"bootstrap of the {n_runs} independent runs"
    return None, "bootstrap of samples"


def _finite(value) -> Optional[float]:
    return float(value) if value is not None and math.isfinite(value) else None


def state_free_energy_metrics(
    log_w, labels, names, *, seed=0, n_bootstrap: int = 200, block_size=1, groups=None
) -> dict:
    """Free energies of a system's states as JSON-ready metrics (a note instead of an error).

    Parameters
    ----------
    log_w : array, shape (B,)
        Log-weights of the samples.
    labels : array of int, shape (B,)
        State label of each sample (:meth:`boltzgen.states.StateSet.assign`).
    names : sequence of str
        The K state names (``StateSet.names``).
    seed, n_bootstrap, groups
        As for :func:`boltzgen.weights.state_free_energies`.
    block_size : int or "auto"
        Bootstrap block length; ``"auto"`` from the state indicators (MD trajectories).

    Returns
    -------
    dict
        ``state_counts`` (samples per state), ``bootstrap_block_size``,
        ``state_free_energies_kT`` and ``state_free_energies_err_kT`` (F_k − F_0 in kT, None
        where undefined) or ``state_free_energies_note``; for two states also ``delta_f_kT``,
        ``delta_f_err_kT`` (F(names[1]) − F(names[0]), None when undefined, then with
        ``delta_f_note``) and ``delta_f_definition``.
    """
    names = list(names)
    lab = np.asarray(labels, dtype=np.int64)
    k = len(names)
    block = W.resolve_block_size(block_size, *(lab == i for i in builtins_range(k)))
    out: dict = {"state_counts": np.bincount(lab, minlength=k).tolist(), "bootstrap_block_size": block}
    try:
        est = W.state_free_energies(log_w, lab, k, groups=groups, seed=seed, n_bootstrap=n_bootstrap, block_size=block)
    except ValueError as exc:
        est = None
        out.update(state_free_energies_kT=None, state_free_energies_note=str(exc))
    else:
        out.update(
            state_free_energies_kT=[_finite(e.value) for e in est],
            state_free_energies_err_kT=[_finite(e.error) for e in est],
        )
    if k == 2:
        out["delta_f_definition"] = f"F({names[1]}) - F({names[0]}) in kT"
        value = None if est is None else _finite(est[1].value)
        out.update(delta_f_kT=value, delta_f_err_kT=None if value is None else _finite(est[1].error))
        if value is None:
            reason = out.get("state_free_energies_note") or f"no sample of {names[1]} has weight"
            out["delta_f_note"] = f"{names[1]} vs {names[0]}: {reason}"
    return out
