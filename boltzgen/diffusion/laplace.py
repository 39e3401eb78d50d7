"""The exact noisy marginal of a known energy at low noise, by a Laplace-proposal importance sum.

For a target density exp(−u(x)) and the forward kernel x_t = a x_0 + sqrt(v) ε, the marginal at
time t is, up to the target's normaliser,

    p_t(y) ∝ ∫ exp(−u(x)) N(y; a x, v I) dx.

At low noise the integrand is sharply peaked: its log is −f(x) with

    f(x) = u(x) + ‖y − a x‖² / (2 v),

whose Hessian is ∇²u + (a² / v) I. :func:`laplace_log_marginal` finds the mode of f by damped
Newton steps (with the Hessian of u by central differences of its gradient, negative curvature
clipped to zero), then draws K points from the Gaussian q = N(mode, (∇²u⁺ + a²/v)⁻¹) and
returns the importance estimate

    log p̂_t(y) = log (1/K) Σ_k exp(−u(x_k)) N(y; a x_k, v) / q(x_k).

Ẑ = p̂ is unbiased for every K ≥ 1 whatever the quality of q; q only sets its variance (zero for a
quadratic u). For molecules (``mean_free``) every density lives on the zero-centre subspace of
d = 3(N − 1) dimensions. Uses: the error of a learned energy E(y, t) at low t is the spread of
E(y, t) + log p̂_t(y) over noisy configurations (a constant for the exact model), and a hand-over
from the diffusion to the target in one importance step (docs/theory.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import torch

from .noise import gaussian_log_prob, project_mean_free

__all__ = [
    "LaplaceMarginal",
    "MarginalPairs",
    "finite_difference_hessian",
    "laplace_log_marginal",
    "marginal_pairs",
    "target_energy_in_model_units",
]


def target_energy_in_model_units(target, length_scale: float) -> Callable:
    """The ``energy_and_grad`` of this module for a target seen in model units y = x / ℓ.

    Parameters
    ----------
    target : TargetSystem
        Has ``reduced_energy_and_force(x)`` (x in its own units).
    length_scale : float
        ℓ.

    Returns
    -------
    callable
        y (M, *event) -> (u(ℓ y) (M,), ∇_y u(ℓ y) = −ℓ force (M, *event)), float64 on y's device.
    """

    def energy_and_grad(y):
        u, force = target.reduced_energy_and_force(length_scale * y)
        return u.to(torch.float64).to(y.device), -length_scale * force.to(torch.float64).to(y.device)

    return energy_and_grad


def finite_difference_hessian(grad: Callable, x: torch.Tensor, step: float, chunk: int = 64) -> torch.Tensor:
    """Hessians of an energy from central differences of its gradient, symmetrised.

    Parameters
    ----------
    grad : callable
        x (M, *event) float64 -> ∇u(x) (M, *event).
    x : tensor, shape (B, *event), float64
        Points.
    step : float
        Difference step h (units of x).
    chunk : int
        Points per call of ``grad`` (each costs 2 d configurations).

    Returns
    -------
    tensor, shape (B, d, d), float64
        H[b] = (∇²u(x_b) + ∇²u(x_b)ᵀ) / 2 with d the number of coordinates, error O(h²).
    """
    b, event = x.shape[0], x.shape[1:]
    d = int(math.prod(event))
    eye = step * torch.eye(d, dtype=x.dtype, device=x.device).reshape((d,) + tuple(event))
    out = []
    for i in range(0, b, chunk):
        xc = x[i : i + chunk]
        shifted = torch.cat(
            [(xc[:, None] + eye).reshape((-1,) + tuple(event)), (xc[:, None] - eye).reshape((-1,) + tuple(event))]
        )
        g = grad(shifted).reshape(2, xc.shape[0], d, d)
        h = (g[0] - g[1]) / (2.0 * step)
        out.append(0.5 * (h + h.transpose(1, 2)))
    return torch.cat(out)


@dataclass
class LaplaceMarginal:
    """Result of :func:`laplace_log_marginal`.

    Attributes
    ----------
    log_p : tensor (B,), float64
        log p̂_t(y): log of the importance estimate of ∫ exp(−u(x)) N(y; a x, v) dx (−inf where
        every draw had an infinite energy).
    log_w : tensor (B, K), float64
        The K importance log-weights of each y (their spread measures the proposal's quality).
    x : tensor (B, K, *event), float64
        The K draws x_k ~ q(· | y).
    mode : tensor (B, *event), float64
        The mean of the Laplace proposal: the mode of f after the Newton steps (and one more
        Newton step from where they stopped). For a quadratic u it is E[x | y] exactly, so
        (a · mode − y) / v is then the exact score ∇ log p_t(y) (Tweedie), and near it at low noise.
    converged : tensor (B,), bool
        Whether ‖∇f‖ at the mode fell below ``tol`` · sqrt(d) (in kT per unit of x).
    """

    log_p: torch.Tensor
    log_w: torch.Tensor
    x: torch.Tensor
    mode: torch.Tensor
    converged: torch.Tensor


def _proposal_precision(hessian: torch.Tensor, kappa: float, event: tuple, mean_free: bool):
    """Eigen-decomposition of A = ∇²u⁺ + κ I (on the zero-centre subspace when mean_free)."""
    if mean_free:  # P H P, with P applied to the rows, then to the columns
        b, d = hessian.shape[0], hessian.shape[-1]
        rows = project_mean_free(hessian.reshape((b, d) + event)).reshape(b, d, d)
        hessian = project_mean_free(rows.transpose(1, 2).reshape((b, d) + event)).reshape(b, d, d)
    lam, vec = torch.linalg.eigh(hessian)
    return lam.clamp(min=0.0) + kappa, vec


def _solve(lam: torch.Tensor, vec: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """A⁻¹ rhs for A = V diag(λ) Vᵀ, rhs (B, d)."""
    return (vec @ ((vec.transpose(1, 2) @ rhs[..., None]) / lam[..., None]))[..., 0]


def laplace_log_marginal(
    energy_and_grad: Callable,
    y: torch.Tensor,
    a: float,
    v: float,
    start: Optional[torch.Tensor] = None,
    *,
    n_draws: int = 4,
    newton_steps: int = 30,
    hessian_step: float = 1e-4,
    tol: float = 1e-3,
    mean_free: bool = False,
    generator: Optional[torch.Generator] = None,
) -> LaplaceMarginal:
    """log ∫ exp(−u(x)) N(y; a x, v I) dx by importance sampling from a Laplace proposal (module docstring).

    Parameters
    ----------
    energy_and_grad : callable
        x (M, *event) float64 -> (u (M,), ∇u (M, *event)): the reduced energy (kT) and its gradient;
        u = +inf where not evaluable.
    y : tensor, shape (B, *event)
        Noisy configurations (units of x).
    a, v : float
        The forward kernel y = a x + sqrt(v) ε (v per coordinate, units of x²), e.g.
        ``schedule.transition(0, t)``.
    start : tensor (B, *event), optional
        Where the Newton steps start (default y / a); a clean configuration near y is best.
    n_draws : int
        K ≥ 1 draws per y.
    newton_steps : int
        At most this many damped Newton steps (each halves its step until f decreases).
    hessian_step : float
        Central-difference step of the Hessian (units of x).
    tol : float
        Converged when ‖∇f‖ / sqrt(d) < tol.
    mean_free : bool
        Configurations (B, N, 3) on the zero-centre subspace.
    generator : torch.Generator, optional

    Returns
    -------
    LaplaceMarginal
    """
    if n_draws < 1 or newton_steps < 0:
        raise ValueError(f"need n_draws >= 1 and newton_steps >= 0, got {n_draws} and {newton_steps}")
    if not (a > 0 and v > 0):
        raise ValueError(f"the kernel needs a > 0 and v > 0, got a={a}, v={v}")
    y = y.detach().to(torch.float64)
    proj = project_mean_free if mean_free else (lambda z: z)
    x0 = proj(y / a if start is None else start.detach().to(torch.float64))
    x, gf, converged = _newton_mode(energy_and_grad, y, a, v, x0, newton_steps, hessian_step, tol, mean_free)
    lam, vec = _proposal_precision(
        finite_difference_hessian(lambda z: proj(energy_and_grad(z)[1].to(torch.float64)), x, hessian_step),
        a * a / v,
        tuple(y.shape[1:]),
        mean_free,
    )
    mode = x + proj(_solve(lam, vec, -gf.flatten(1)).reshape(y.shape))  # the last Newton step: mean of q
    xk, log_q = _gaussian_draws(mode, lam, vec, a * a / v, n_draws, mean_free, generator)
    b, k, event = y.shape[0], n_draws, tuple(y.shape[1:])
    flat = xk.reshape((b * k,) + event)
    u = energy_and_grad(flat)[0].to(torch.float64)
    y_rep = y[:, None].expand((b, k) + event).reshape((b * k,) + event)
    log_w = (-u + gaussian_log_prob(y_rep, a * flat, v, mean_free=mean_free)).reshape(b, k) - log_q
    log_w = torch.where(torch.isfinite(log_w), log_w, torch.full_like(log_w, -math.inf))
    log_p = torch.logsumexp(log_w, dim=1) - math.log(k)
    return LaplaceMarginal(log_p, log_w, xk, mode, converged)


def _newton_mode(energy_and_grad, y, a, v, x, newton_steps, hessian_step, tol, mean_free):
    """Damped Newton steps towards the mode of f(x) = u(x) + ‖y − a x‖² / (2 v), from x.

    Returns the point reached, ∇f there and whether ‖∇f‖ / sqrt(d) < tol, for each y.
    """
    event = tuple(y.shape[1:])
    proj = project_mean_free if mean_free else (lambda z: z)
    kappa = a * a / v

    def grad_u(z):
        return proj(energy_and_grad(z)[1].to(torch.float64))

    def objective(z, yz):
        u, g = energy_and_grad(z)
        u, g = u.to(torch.float64), proj(g.to(torch.float64))
        f = u + 0.5 * kappa * (yz / a - z).pow(2).flatten(1).sum(1)
        return torch.where(torch.isfinite(f), f, torch.full_like(f, math.inf)), g - (a / v) * (yz - a * z)

    f, gf = objective(x, y)
    d = gf[0].numel()
    for _ in range(newton_steps):
        todo = torch.isfinite(f) & (gf.flatten(1).norm(dim=1) >= tol * math.sqrt(d))
        if not bool(todo.any()):
            break
        lam, vec = _proposal_precision(
            finite_difference_hessian(grad_u, x[todo], hessian_step), kappa, event, mean_free
        )
        step = proj(_solve(lam, vec, -gf[todo].flatten(1)).reshape((-1,) + event))
        xs, fs, gs = x[todo], f[todo], gf[todo]
        scale = torch.ones(xs.shape[0], dtype=torch.float64)
        searching = torch.ones(xs.shape[0], dtype=torch.bool)
        for _ in range(20):  # backtracking: halve the step until f decreases
            trial = xs + scale.reshape((-1,) + (1,) * len(event)) * step
            ft, gt = objective(trial, y[todo])
            ok = searching & (ft <= fs)
            xs[ok], fs[ok], gs[ok] = trial[ok], ft[ok], gt[ok]
            searching &= ~ok
            scale = torch.where(searching, 0.5 * scale, scale)
            if not bool(searching.any()):
                break
        x[todo], f[todo], gf[todo] = xs, fs, gs
    return x, gf, gf.flatten(1).norm(dim=1) < tol * math.sqrt(d)


def _gaussian_draws(mode, lam, vec, kappa, n_draws, mean_free, generator):
    """K draws of N(mode, A⁻¹) with A = V diag(λ) Vᵀ, and their log-densities (on the d − 3
    dimensional zero-centre subspace when mean_free, where the translations carry λ = κ).

    Returns x (B, K, *event) and log q (B, K).
    """
    b, event = mode.shape[0], tuple(mode.shape[1:])
    d = lam.shape[-1]
    proj = project_mean_free if mean_free else (lambda z: z)
    xi = torch.randn((b, n_draws, d), dtype=torch.float64, generator=generator)
    delta = proj((vec[:, None] @ (xi / lam.sqrt()[:, None])[..., None])[..., 0].reshape((b * n_draws,) + event))
    delta = delta.reshape((b, n_draws, d))
    quad = ((delta @ vec).pow(2) * lam[:, None]).sum(-1)
    d_sub = d - 3 if mean_free else d
    log_det = lam.log().sum(-1) - (3 * math.log(kappa) if mean_free else 0.0)
    log_q = -0.5 * quad + 0.5 * log_det[:, None] - 0.5 * d_sub * math.log(2 * math.pi)
    return mode[:, None] + delta.reshape((b, n_draws) + event), log_q


class MarginalPairs(NamedTuple):
    """Result of :func:`marginal_pairs` (L time levels of M noisy copies)."""

    y: torch.Tensor  #: (L, M, *event): the noisy configurations
    log_p: torch.Tensor  #: (L, M): log p̂_t(y), up to one constant per level
    t: torch.Tensor  #: (L,): the times
    spread: torch.Tensor  #: (L,): mean std of each copy's K importance log-weights
    score: torch.Tensor  #: (L, M, *event): (a · mode − y) / v, the score of p_t at y (Laplace)


def marginal_pairs(
    energy_and_grad: Callable,
    x0: torch.Tensor,
    schedule,
    times,
    *,
    mean_free: bool = False,
    n_draws: int = 4,
    generator: Optional[torch.Generator] = None,
) -> tuple:
    """Noisy copies of clean samples at each time, with the log of their exact marginal density.

    For each t in ``times``, y = a x0 + sqrt(v) ε with (a, v) = ``schedule.transition(0, t)``,
    and log p̂_t(y) by :func:`laplace_log_marginal` started at x0. A model of the target then
    has E(y, t) + log p̂_t(y) constant over y at each t (the training term of
    :func:`boltzgen.losses.marginal_loss`).

    Parameters
    ----------
    energy_and_grad : callable
        As for :func:`laplace_log_marginal`, in the units of ``x0``.
    x0 : tensor, shape (M, *event)
        Clean samples of the target (float64 is used).
    schedule : Schedule
    times : sequence of float
        L times in (0, 1].
    mean_free, n_draws, generator
        As for :func:`laplace_log_marginal` (the generator also draws ε).

    Returns
    -------
    MarginalPairs
        ``y`` (L, M, *event), ``log_p`` (L, M), ``t`` (L,), ``spread`` (L,) and ``score``
        (L, M, *event), all float64. ``spread`` is the mean over the copies of the standard
        deviation of their K importance log-weights: the estimate's own accuracy at each time (0
        for a harmonic u; about its error for K draws). ``score`` is ∇_y log p_t(y) from the
        Laplace proposal's mean (exact for a harmonic u; it needs no draws, so it is as smooth in
        y as the mode is, unlike a one-sample denoising target).
    """
    x0 = x0.detach().to(torch.float64)
    proj = project_mean_free if mean_free else (lambda z: z)
    x0 = proj(x0)
    ys, logs, spreads, scores = [], [], [], []
    for t in times:
        a, v = (float(z) for z in schedule.transition(0.0, float(t)))
        eps = proj(torch.randn(x0.shape, dtype=torch.float64, generator=generator))
        y = a * x0 + math.sqrt(v) * eps
        r = laplace_log_marginal(
            energy_and_grad, y, a, v, start=x0, n_draws=n_draws, mean_free=mean_free, generator=generator
        )
        ys.append(y)
        logs.append(r.log_p)
        scores.append(proj(a * r.mode - y) / v)
        finite = torch.isfinite(r.log_w).all(1)
        spreads.append(r.log_w[finite].std(1).mean() if n_draws > 1 and bool(finite.any()) else torch.tensor(math.nan))
    times_t = torch.tensor([float(t) for t in times], dtype=torch.float64)
    spread = torch.stack(spreads).to(torch.float64)
    return MarginalPairs(torch.stack(ys), torch.stack(logs), times_t, spread, torch.stack(scores))
