"""Gaussian noise, mean-free (zero centre-of-mass) noise and Gaussian log-densities.

Molecular configurations have shape (B, N, 3). Their energies are translation invariant, so the
diffusion of a molecule lives in the zero-centre-of-mass subspace
{x : Σ_i x_i = 0} ⊂ R^{3N}, of dimension d = 3(N − 1). Mean-free noise is a standard Gaussian
on that subspace: draw ε ~ N(0, I_{3N}) and subtract the mean over atoms, i.e. apply the
orthogonal projector P = (I_N − 1 1ᵀ/N) ⊗ I_3. Its covariance is P, and its density with
respect to the Lebesgue measure of the subspace is N(0, I_d) in any orthonormal coordinates of
the subspace; every log-density here counts d = 3(N − 1) dimensions for mean-free variables and
d = prod(event_shape) otherwise.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

__all__ = ["project_mean_free", "event_dim", "sample_noise", "sq_norm", "gaussian_log_prob", "q_sample"]


def project_mean_free(v: torch.Tensor) -> torch.Tensor:
    """Project a batch of (B, N, 3) vectors onto the zero-centre-of-mass subspace.

    Subtracts the (equal-weight) mean over atoms, axis −2, of each configuration.

    Parameters
    ----------
    v : torch.Tensor, shape (..., N, 3)
        Positions or vectors (any units, e.g. nm, or kT/nm for forces).

    Returns
    -------
    torch.Tensor, shape of ``v``
        ``v`` minus its mean over atoms (same units).

    Raises
    ------
    ValueError
        If ``v`` has fewer than two dimensions.
    """
    if v.dim() < 2:
        raise ValueError(f"mean-free vectors need shape (..., N, 3), got {tuple(v.shape)}")
    return v - v.mean(dim=-2, keepdim=True)


def event_dim(event_shape: Sequence[int], mean_free: bool = False) -> int:
    """Number of degrees of freedom of one configuration.

    Parameters
    ----------
    event_shape : sequence of int
        Shape of one configuration: (N, 3) for molecules, (D,) for toy targets.
    mean_free : bool
        Configurations live in the zero-centre-of-mass subspace (needs an (N, 3) shape).

    Returns
    -------
    int
        3(N − 1) for mean-free (N, 3) configurations and prod(event_shape) otherwise.
    """
    event_shape = tuple(int(s) for s in event_shape)
    d = math.prod(event_shape)
    if mean_free:
        if len(event_shape) != 2:
            raise ValueError(f"mean_free needs an (N, 3) event shape, got {event_shape}")
        d -= event_shape[-1]
    return d


def sample_noise(
    shape: Sequence[int],
    generator: Optional[torch.Generator] = None,
    mean_free: bool = False,
    *,
    dtype: Optional[torch.dtype] = None,
    device=None,
) -> torch.Tensor:
    """Standard Gaussian noise, projected to the zero-centre-of-mass subspace if ``mean_free``.

    Parameters
    ----------
    shape : sequence of int
        (B, *event_shape); (B, N, 3) when ``mean_free``.
    generator : torch.Generator, optional
        Source of randomness (on ``device``).
    mean_free : bool
        Subtract the mean over atoms (axis −2) of each configuration. The result has covariance
        P = (I_N − 1 1ᵀ/N) ⊗ I_3, i.e. it is N(0, I) on the 3(N − 1)-dimensional subspace.
    dtype, device
        Of the result (default dtype and CPU by default).

    Returns
    -------
    torch.Tensor, shape ``shape``
        ε ~ N(0, I) (dimensionless), mean-free over axis −2 if ``mean_free``.
    """
    eps = torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)
    return project_mean_free(eps) if mean_free else eps


def sq_norm(v: torch.Tensor, n_event_dims: int) -> torch.Tensor:
    """Squared Euclidean norm over the last ``n_event_dims`` axes: (*batch, *event) -> (*batch,).

    Parameters
    ----------
    v : torch.Tensor, shape (*batch, *event)
        Vectors (any units).
    n_event_dims : int
        Number of trailing axes summed over; 0 gives the elementwise square.

    Returns
    -------
    torch.Tensor, shape (*batch,)
        Σ v² over the event axes (units of ``v`` squared).
    """
    if n_event_dims == 0:
        return v * v
    return v.pow(2).flatten(start_dim=v.dim() - n_event_dims).sum(-1)


def gaussian_log_prob(
    x: torch.Tensor,
    mean,
    var,
    *,
    mean_free: bool = False,
    n_atoms: Optional[int] = None,
    event_ndim: Optional[int] = None,
) -> torch.Tensor:
    """Log-density of an isotropic Gaussian N(mean, var · I) over configurations.

    log N(x; μ, v) = −‖x − μ‖² / (2 v) − (d / 2) log(2π v),

    with d = 3(N − 1) for mean-free configurations (the density on the zero-centre-of-mass
    subspace; x − μ is projected onto it first) and d = number of coordinates otherwise.

    Parameters
    ----------
    x : tensor, shape (B, *event_shape)
    mean : tensor broadcastable to x, or 0
    var : float or tensor of shape (B,) (or broadcastable to (B,))
        Variance per coordinate (units of x squared).
    mean_free : bool
        Treat configurations (B, N, 3) as living in the zero-centre-of-mass subspace.
    n_atoms : int, optional
        N; inferred from ``x.shape[-2]`` when not given (checked when given).
    event_ndim : int, optional
        Number of event axes of ``x`` (default: 2 when ``mean_free``, else ``x.dim() − 1``).

    Returns
    -------
    tensor, shape (B,), dtype of x (promoted with ``var``)
    """
    if event_ndim is None:
        event_ndim = 2 if mean_free else x.dim() - 1
    diff = x - mean
    if mean_free:
        if x.shape[-1] != 3 or event_ndim != 2:
            raise ValueError(f"mean_free log-densities need configurations (B, N, 3), got {tuple(x.shape)}")
        if n_atoms is not None and int(n_atoms) != x.shape[-2]:
            raise ValueError(f"n_atoms={n_atoms} but configurations have {x.shape[-2]} atoms")
        diff = project_mean_free(diff)
    d = event_dim(x.shape[x.dim() - event_ndim :], mean_free)
    var = torch.as_tensor(var, dtype=x.dtype, device=x.device)
    return -0.5 * sq_norm(diff, event_ndim) / var - 0.5 * d * torch.log(2 * math.pi * var)


def _per_sample(values: torch.Tensor, n_event_dims: int) -> torch.Tensor:
    """Reshape a (B,)-shaped (or scalar) tensor to broadcast against (B, *event)."""
    return values.reshape(values.shape + (1,) * n_event_dims)


def q_sample(
    schedule,
    x0: torch.Tensor,
    t,
    generator: Optional[torch.Generator] = None,
    *,
    mean_free: bool = False,
    noise: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward noising x_t = α_t x_0 + σ_t ε.

    Parameters
    ----------
    schedule : schedule with ``alpha(t)`` and ``sigma(t)``
    x0 : tensor, shape (B, *event_shape)
        Clean configurations (centred, for molecules).
    t : float or tensor of shape (B,)
        Diffusion times.
    generator : torch.Generator, optional
    mean_free : bool
        Draw mean-free noise (configurations (B, N, 3)).
    noise : tensor like ``x0``, optional
        Use this ε instead of drawing one (it is used as given, not projected).

    Returns
    -------
    x_t, eps : tensors like ``x0``
    """
    if noise is None:
        noise = sample_noise(x0.shape, generator, mean_free, dtype=x0.dtype, device=x0.device)
    t = torch.as_tensor(t, dtype=x0.dtype, device=x0.device)
    n_ev = x0.dim() - 1 if t.dim() > 0 else 0
    alpha = _per_sample(schedule.alpha(t), n_ev)
    sigma = _per_sample(schedule.sigma(t), n_ev)
    return alpha * x0 + sigma * noise, noise
