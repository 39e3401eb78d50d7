"""Resampling of weighted particles (SMC), in log space and float64.

Every scheme maps log-weights log w (B,) to ancestor indices (n,) such that the number of copies
N_i of particle i is unbiased: E[N_i] = n w_i / Σ_j w_j. They differ in variance:

- ``multinomial``: n independent draws from the categorical distribution (the highest variance);
- ``stratified``: one uniform in each of the n strata [(k − 1)/n, k/n) of the weight CDF;
- ``systematic``: one shared uniform offset for all strata (usually the lowest variance, the SMC
  default; N_i is always ⌊n w̄_i⌋ or ⌈n w̄_i⌉);
- ``residual``: ⌊n w̄_i⌋ copies deterministically, the rest multinomially.

Particles of weight zero (log-weight −inf) are never selected. Indices come out sorted (except
for ``residual``'s remainder, appended sorted), which keeps copies of one particle together.
Random numbers come only from the ``torch.Generator`` passed in.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

__all__ = [
    "RESAMPLING_METHODS",
    "resample",
    "systematic_resample",
    "stratified_resample",
    "multinomial_resample",
    "residual_resample",
    "resample_by_state",
    "normalised_weights",
    "ess_fraction",
    "log_mean_exp",
]


def _check(log_w) -> torch.Tensor:
    lw = torch.as_tensor(log_w)
    lw = lw.to(torch.float64) if torch.is_floating_point(lw) else lw.to(torch.float64)
    if lw.dim() != 1 or lw.numel() == 0:
        raise ValueError(f"log-weights must be a non-empty (B,) tensor, got shape {tuple(lw.shape)}")
    if bool(torch.isnan(lw).any()) or bool((lw == math.inf).any()):
        raise ValueError("log-weights contain NaN or +inf")
    if not bool(torch.isfinite(lw).any()):
        raise ValueError("all particles have weight zero (every log-weight is -inf): nothing to resample")
    return lw


def normalised_weights(log_w) -> torch.Tensor:
    """Self-normalised weights w_i / Σ_j w_j.

    Parameters
    ----------
    log_w : array_like, shape (B,)
        Log-weights (any constant offset; −inf allowed, NaN / +inf not).

    Returns
    -------
    torch.Tensor, shape (B,), float64
        Non-negative weights summing to 1.

    Raises
    ------
    ValueError
        On NaN / +inf, an empty or non-1-D input, or when every weight is zero.
    """
    return torch.softmax(_check(log_w), 0)


def log_mean_exp(log_w: torch.Tensor) -> torch.Tensor:
    """log((1/B) Σ exp(log_w)), e.g. a log normalising-constant estimate from log-weights.

    Parameters
    ----------
    log_w : array_like, shape (B,)
        Log-weights.

    Returns
    -------
    torch.Tensor, 0-dim, float64
        −inf when every weight is zero.
    """
    lw = torch.as_tensor(log_w, dtype=torch.float64)
    return torch.logsumexp(lw, 0) - math.log(lw.numel())


def ess_fraction(log_w) -> float:
    """Kish effective sample size over the number of particles, (Σw)² / (B Σw²).

    Parameters
    ----------
    log_w : array_like, shape (B,)
        Log-weights (any constant offset).

    Returns
    -------
    float
        ESS / B ∈ [1/B, 1]; 0 when all weights are zero.
    """
    lw = torch.as_tensor(log_w, dtype=torch.float64)
    if not bool(torch.isfinite(lw).any()):
        return 0.0
    return float(torch.exp(2.0 * torch.logsumexp(lw, 0) - torch.logsumexp(2.0 * lw, 0))) / lw.numel()


def _cdf(log_w) -> torch.Tensor:
    w = normalised_weights(log_w)
    cdf = torch.cumsum(w, 0)
    return cdf / cdf[-1]  # the last entry is exactly 1


def _invert(cdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Indices i with cdf[i − 1] ≤ u < cdf[i] (zero-weight particles are never chosen)."""
    idx = torch.searchsorted(cdf, u, right=True)
    return idx.clamp_(max=cdf.numel() - 1)


def _rand(shape, generator, device) -> torch.Tensor:
    """Uniforms drawn on the generator's device, moved to ``device``."""
    gdev = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, dtype=torch.float64, device=gdev).to(device)


def _n(log_w: torch.Tensor, n: Optional[int]) -> int:
    n = log_w.numel() if n is None else int(n)
    if n < 1:
        raise ValueError(f"need n >= 1 particles, got {n}")
    return n


def systematic_resample(log_w, n: Optional[int] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Systematic resampling: u_k = (U + k)/n, k = 0..n−1, one U ~ Uniform[0, 1).

    Parameters
    ----------
    log_w : tensor (B,)
        Log-weights (any constant offset; −inf allowed, NaN / +inf not).
    n : int, optional
        Number of indices to draw (default B).
    generator : torch.Generator, optional
        Source of the uniform.

    Returns
    -------
    LongTensor (n,), sorted ancestor indices in [0, B)
    """
    lw = _check(log_w)
    n = _n(lw, n)
    cdf = _cdf(lw)
    u0 = _rand((), generator, cdf.device)
    u = (u0 + torch.arange(n, dtype=torch.float64, device=cdf.device)) / n
    return _invert(cdf, u)


def stratified_resample(log_w, n: Optional[int] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Stratified resampling: u_k = (U_k + k)/n with independent U_k ~ Uniform[0, 1).

    Parameters
    ----------
    log_w : array_like, shape (B,)
        Log-weights (any constant offset; −inf allowed, NaN / +inf not).
    n : int, optional
        Number of indices to draw (default B).
    generator : torch.Generator, optional
        Source of the uniforms.

    Returns
    -------
    torch.LongTensor, shape (n,)
        Sorted ancestor indices in [0, B).
    """
    lw = _check(log_w)
    n = _n(lw, n)
    cdf = _cdf(lw)
    u = (_rand(n, generator, cdf.device) + torch.arange(n, dtype=torch.float64, device=cdf.device)) / n
    return _invert(cdf, u)


def multinomial_resample(log_w, n: Optional[int] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Multinomial resampling: n independent categorical draws.

    Parameters
    ----------
    log_w : array_like, shape (B,)
        Log-weights (any constant offset; −inf allowed, NaN / +inf not).
    n : int, optional
        Number of indices to draw (default B).
    generator : torch.Generator, optional
        Source of the uniforms.

    Returns
    -------
    torch.LongTensor, shape (n,)
        Sorted ancestor indices in [0, B).
    """
    lw = _check(log_w)
    n = _n(lw, n)
    cdf = _cdf(lw)
    u = _rand(n, generator, cdf.device)
    return _invert(cdf, torch.sort(u).values)


def residual_resample(log_w, n: Optional[int] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Residual resampling: ⌊n w̄_i⌋ copies of particle i, the remaining R = n − Σ⌊n w̄_i⌋ drawn
    multinomially with probabilities ∝ n w̄_i − ⌊n w̄_i⌋.

    Parameters
    ----------
    log_w : array_like, shape (B,)
        Log-weights (any constant offset; −inf allowed, NaN / +inf not).
    n : int, optional
        Number of indices to draw (default B).
    generator : torch.Generator, optional
        Source of the uniforms of the remainder.

    Returns
    -------
    torch.LongTensor, shape (n,)
        Ancestor indices in [0, B): the deterministic copies sorted, then the sorted remainder.
    """
    lw = _check(log_w)
    n = _n(lw, n)
    w = torch.softmax(lw, 0)
    nw = n * w
    copies = torch.floor(nw).to(torch.long)
    det = torch.repeat_interleave(torch.arange(lw.numel(), device=lw.device), copies)
    r = n - int(copies.sum())
    if r <= 0:
        return det[:n]
    resid = (nw - copies.to(torch.float64)).clamp_min(0.0)
    if float(resid.sum()) <= 0.0:  # rounding: fall back to the weights themselves
        resid = w
    cdf = torch.cumsum(resid, 0)
    cdf = cdf / cdf[-1]
    u = torch.sort(_rand(r, generator, lw.device)).values
    rest = torch.searchsorted(cdf, u, right=True).clamp_(max=lw.numel() - 1)
    return torch.cat([det, rest])


RESAMPLING_METHODS = {
    "systematic": systematic_resample,
    "stratified": stratified_resample,
    "multinomial": multinomial_resample,
    "residual": residual_resample,
}


def resample(
    log_w, generator: Optional[torch.Generator] = None, method: str = "systematic", n: Optional[int] = None
) -> torch.Tensor:
    """Ancestor indices drawn by ``method`` ∈ {"systematic", "stratified", "multinomial", "residual"}.

    Unbiased for every method: E[#copies of i] = n w_i / Σ_j w_j.

    Parameters
    ----------
    log_w : array_like, shape (B,)
        Log-weights (any constant offset; −inf allowed, NaN / +inf not).
    generator : torch.Generator, optional
        Source of randomness.
    method : {"systematic", "stratified", "multinomial", "residual"}
        Resampling scheme (see the module docstring).
    n : int, optional
        Number of indices to draw (default B).

    Returns
    -------
    torch.LongTensor, shape (n,)
        Ancestor indices in [0, B).

    Raises
    ------
    ValueError
        For an unknown ``method`` or invalid log-weights.
    """
    if method not in RESAMPLING_METHODS:
        raise ValueError(f"unknown resampling method {method!r}; choose one of {sorted(RESAMPLING_METHODS)}")
    return RESAMPLING_METHODS[method](log_w, n, generator)


def _shares(total: int, sizes: list) -> list:
    """``total`` slots split in proportion to ``sizes`` (largest remainders), at least one each."""
    n = len(sizes)
    quotas = [(total - n) * s / sum(sizes) for s in sizes]
    shares = [1 + int(q) for q in quotas]
    order = sorted(range(n), key=lambda k: int(quotas[k]) - quotas[k])
    for k in order[: total - sum(shares)]:
        shares[k] += 1
    return shares


def resample_by_state(
    log_w,
    labels,
    generator: Optional[torch.Generator] = None,
    method: str = "systematic",
    ess_threshold: float = 1.0,
    balance: bool = False,
    n_out: Optional[int] = None,
) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """Resample within each state separately: every state keeps its particles and its total weight.

    Particles with label s (n_s of them, total weight W_s) are replaced by n_s draws from their own
    weights, each with weight W_s / n_s. This is unbiased for every state's weighted measure —
    E[Σ_copies w'] = w_i for each particle i — so the weighted population, ``log_mean_exp`` of the
    log-weights (the normaliser estimate) and each state's total weight are unchanged in
    expectation and exactly, respectively. A state whose particles all have weight zero gives its
    slots to the live states, in proportion to their total weights (drawn with ``method``).

    Used by SMC when the model's free energies of states are wrong: resampling on the global
    weights would empty a state the model puts too high, before the annealing to the target can
    correct its weight; resampling within states keeps its particles (with small weights).

    Parameters
    ----------
    log_w : array_like, shape (B,)
        Log-weights (−inf allowed, not all).
    labels : array_like, shape (B,)
        Integer state of each particle.
    generator : torch.Generator, optional
    method : {"systematic", "stratified", "multinomial", "residual"}
        Scheme used within each state.
    ess_threshold : float
        A state is resampled only when its own ESS fraction is below this (default 1: always), or
        when it receives the slots of an emptied state.
    balance : bool
        Give every state with weight an equal share of the B slots (the first B mod L states one
        more) instead of its own count, and resample all of them. Each state keeps its total
        weight, so this too is unbiased for every state's measure; a rare state then gets as many
        particles as a common one (the error of its free energy is set by its particle count).
    n_out : int, optional
        Resample every state to fill this many slots instead of B (the slots shared equally with
        ``balance``, else in proportion to the states' particle counts, at least one each). The
        new weights are scaled by n_out / B, so ``log_mean_exp`` of the log-weights and every
        state's share of it are unchanged in expectation: the normaliser estimate of B particles
        carries over to n_out.

    Returns
    -------
    (indices, log_w) : LongTensor (n_out or B,), float64 tensor (n_out or B,)
        Ancestor of every slot and the new log-weights; None when no state needed resampling
        (never with ``balance`` or ``n_out``).

    Raises
    ------
    ValueError
        For invalid log-weights, all-zero weights, or labels of another shape.
    """
    lw = _check(log_w)
    labels = torch.as_tensor(labels, device=lw.device).reshape(-1)
    if labels.shape != lw.shape:
        raise ValueError(f"labels have shape {tuple(labels.shape)}, the log-weights {tuple(lw.shape)}")
    live, dead = [], []
    for state in torch.unique(labels):
        members = torch.nonzero(labels == state).reshape(-1)
        (live if bool(torch.isfinite(lw[members]).any()) else dead).append(members)
    if balance or n_out is not None:
        total = lw.numel() if n_out is None else int(n_out)
        if total < len(live):
            raise ValueError(f"cannot resample {len(live)} states with weight into {total} slots")
        shares = _shares(total, [1] * len(live) if balance else [m.numel() for m in live])
        index = torch.empty(total, dtype=torch.long, device=lw.device)
        new = torch.empty(total, dtype=lw.dtype, device=lw.device)
        scale, start = math.log(total) - math.log(lw.numel()), 0
        for members, share in zip(live, shares):
            slots = slice(start, start + share)
            start += share
            index[slots] = members[resample(lw[members], generator, method, n=share).to(lw.device)]
            new[slots] = torch.logsumexp(lw[members], 0) - math.log(share) + scale
        return index, new
    extra = torch.zeros(len(live), dtype=torch.long)
    free = torch.cat(dead) if dead else torch.zeros(0, dtype=torch.long, device=lw.device)
    if free.numel():
        totals = torch.stack([torch.logsumexp(lw[m], 0) for m in live])
        extra = torch.bincount(resample(totals, generator, method, n=int(free.numel())).cpu(), minlength=len(live))
    index = torch.arange(lw.numel(), device=lw.device)
    new = lw.clone()
    changed, used = False, 0
    for members, n_extra in zip(live, extra.tolist()):
        if n_extra == 0 and ess_fraction(lw[members]) >= ess_threshold:
            continue
        slots = torch.cat([members, free[used : used + n_extra]])
        used += n_extra
        pick = resample(lw[members], generator, method, n=int(slots.numel())).to(lw.device)
        index[slots] = members[pick]
        new[slots] = torch.logsumexp(lw[members], 0) - math.log(slots.numel())
        changed = True
    return (index, new) if changed else None
