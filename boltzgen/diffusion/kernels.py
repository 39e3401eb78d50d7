"""Reverse-diffusion kernels and time grids: schedule arithmetic shared by the sampler and the
training terms that mimic it (:func:`boltzgen.losses.path_loss`). ``boltzgen.sampling.sde``
re-exports both."""

from __future__ import annotations

import math

import torch

__all__ = ["SDE_METHODS", "TIME_SPACINGS", "reverse_kernel", "time_grid"]

#: Time grids of :func:`time_grid`.
TIME_SPACINGS = ("quadratic", "uniform", "log")
#: Reverse kernels of :func:`reverse_kernel`.
SDE_METHODS = ("ddpm", "euler")


def time_grid(
    n_steps: int, t_min: float = 1e-3, t_max: float = 1.0, spacing: str = "quadratic", device=None
) -> torch.Tensor:
    """Decreasing grid of ``n_steps + 1`` diffusion times from ``t_max`` to ``t_min`` (float64).

    Parameters
    ----------
    n_steps : int
        Number of reverse steps (≥ 1).
    t_min, t_max : float
        End points, 0 < t_min < t_max.
    spacing : {"quadratic", "uniform", "log"}
        ``"quadratic"``: t = t_min + (t_max − t_min) u² with u uniform (dense at small t);
        ``"uniform"``: uniform in t; ``"log"``: geometric in t.
    device : torch.device or str, optional
        Device of the result.

    Returns
    -------
    torch.Tensor, shape (n_steps + 1,), float64
        Times t[0] = t_max > t[1] > … > t[n_steps] = t_min (dimensionless).
    """
    n_steps = int(n_steps)
    if n_steps < 1:
        raise ValueError(f"n_steps must be at least 1, got {n_steps}")
    if not 0.0 < t_min < t_max:
        raise ValueError(f"need 0 < t_min < t_max, got {t_min}, {t_max}")
    if spacing not in TIME_SPACINGS:
        raise ValueError(f"unknown time spacing {spacing!r}; choose one of {TIME_SPACINGS}")
    u = torch.linspace(1.0, 0.0, n_steps + 1, dtype=torch.float64, device=device)
    if spacing == "uniform":
        t = t_min + (t_max - t_min) * u
    elif spacing == "quadratic":
        t = t_min + (t_max - t_min) * u * u
    else:
        t = torch.exp(math.log(t_min) + (math.log(t_max) - math.log(t_min)) * u)
    t[0], t[-1] = t_max, t_min
    return t


def reverse_kernel(
    schedule,
    y: torch.Tensor,
    score: torch.Tensor,
    t: float,
    t_next: float,
    method: str = "ddpm",
    sigma_data: float = 1.0,
) -> tuple[torch.Tensor, float]:
    """Gaussian reverse-diffusion kernel from time t to t_next < t: (mean, variance per coordinate).

    Parameters
    ----------
    schedule : Schedule
    y : tensor (B, *event_shape)
        Current states at time t.
    score : tensor like y
        s(y, t) = −∇E(y, t).
    t, t_next : float
    method : {"ddpm", "euler"}
        ``"ddpm"``: mean (y + v s)/a (Tweedie: the exact E[y_{t'} | y_t] for the exact score) and
        variance v c_{t'}² / c_t², c_t² = α_t² σ_data² + σ_t², with (a, v) the exact forward
        kernel from t' to t (:meth:`Schedule.transition`): the exact reverse kernel when the
        data are N(0, σ_data² I) (σ_data → 0 gives DDPM's posterior variance σ_{t'}² v / σ_t²,
        too narrow at small t for data of finite width). ``"euler"``: Euler–Maruyama of the
        reverse SDE, mean y − Δ (f(t) y − g(t)² s), variance g(t)² Δ, Δ = t − t'.
    sigma_data : float
        Per-coordinate scale of the data in model units (``"ddpm"`` only).

    Returns
    -------
    mean : tensor like y
    var : float
    """
    t, t_next = float(t), float(t_next)
    if not t_next < t:
        raise ValueError(f"a reverse step needs t_next < t, got t={t}, t_next={t_next}")
    if method == "ddpm":
        a, v = (float(z) for z in schedule.transition(t_next, t))
        sd2 = float(sigma_data) ** 2
        c2_next = float(schedule.alpha(t_next)) ** 2 * sd2 + float(schedule.sigma2(t_next))
        c2 = float(schedule.alpha(t)) ** 2 * sd2 + float(schedule.sigma2(t))
        return (y + v * score) / a, v * c2_next / c2
    if method == "euler":
        dt = t - t_next
        f, g2 = float(schedule.drift_coef(t)), float(schedule.g2(t))
        return y - dt * (f * y - g2 * score), g2 * dt
    raise ValueError(f"unknown reverse-SDE method {method!r}; choose one of {SDE_METHODS}")
