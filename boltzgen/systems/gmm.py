"""Analytic Gaussian-mixture targets with exact diffusion marginals.

``gmm-two-modes``: two isotropic components of equal width with weights 2/3 and 1/3, centres
8 standard deviations apart along the diagonal (1, …, 1)/√d: well separated, so that score
matching alone cannot see their relative weight.

``gmm-40``: 40 equal-weight components with centres drawn uniformly in [-40, 40]^d (fixed seed)
and diagonal variance softplus(1).

Both are standardised by one affine map x → (x − m)/s (m the mixture mean, s² the mean
per-coordinate variance), so the data have zero mean and unit average variance. Everything is
exact: log p of the data, log p_t of every marginal of a diffusion x_t = α_t x_0 + σ_t ε, and
sampling. Reduced units: kT = 1, reduced energy u = −log p (normalised, log Z = 0).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..units import REDUCED_UNIT_TEMPERATURE
from .base import TargetSystem


class GaussianMixture(TargetSystem):
    """Mixture of Gaussians with diagonal covariances, shape (D,) configurations.

    Parameters
    ----------
    means : array, shape (K, D)
        Component centres.
    stds : array, shape (K, D) or (K,)
        Component standard deviations (per coordinate, or isotropic).
    weights : array, shape (K,)
        Mixture weights (normalised here).
    name : str
        System name.
    standardise : bool
        Apply the affine map that gives the mixture zero mean and unit average variance.
    """

    def __init__(self, means, stds, weights, name: str = "gmm", standardise: bool = True):
        means = torch.as_tensor(np.asarray(means, dtype=np.float64))
        if means.dim() != 2:
            raise ValueError(f"means must have shape (K, D), got {tuple(means.shape)}")
        k, d = means.shape
        stds = torch.as_tensor(np.asarray(stds, dtype=np.float64))
        stds = stds.reshape(k, 1).expand(k, d).clone() if stds.dim() == 1 else stds
        weights = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        if stds.shape != (k, d) or weights.shape != (k,):
            raise ValueError(
                f"stds must be (K,) or (K, D) and weights (K,), got {tuple(stds.shape)}, {tuple(weights.shape)}"
            )
        if not (stds > 0).all() or not (weights > 0).all():
            raise ValueError("standard deviations and weights must be positive")
        weights = weights / weights.sum()
        if standardise:
            mean = (weights[:, None] * means).sum(0)
            var = (weights[:, None] * (stds**2 + (means - mean) ** 2)).sum(0).mean()
            scale = var.sqrt()
            means, stds = (means - mean) / scale, stds / scale
        super().__init__(name, (d,), REDUCED_UNIT_TEMPERATURE)
        self.means, self.stds, self.weights = means, stds, weights

    @property
    def n_components(self) -> int:
        """int: number of mixture components K."""
        return self.means.shape[0]

    def _positions(self) -> torch.Tensor:
        return self.means[int(torch.argmax(self.weights))].clone()

    # ------------------------------------------------------------------ densities
    def _component_log_prob(self, x: torch.Tensor, alpha=1.0, sigma2=0.0) -> torch.Tensor:
        """log N(x; α μ_k, α² s_k² + σ²) for every component: (B, D) -> (B, K)."""
        alpha = torch.as_tensor(alpha, dtype=x.dtype).reshape(-1, 1, 1)
        sigma2 = torch.as_tensor(sigma2, dtype=x.dtype).reshape(-1, 1, 1)
        mu = alpha * self.means.to(x)
        var = alpha**2 * self.stds.to(x) ** 2 + sigma2
        diff = x.unsqueeze(1) - mu
        return -0.5 * ((diff**2) / var + torch.log(2 * math.pi * var)).sum(-1)

    def log_prob(self, x) -> torch.Tensor:
        """Exact log p(x) of a batch.

        Parameters
        ----------
        x : array_like, shape (B, D) or (D,)
            Configurations (standardised, reduced units).

        Returns
        -------
        torch.Tensor, shape (B,), float64
            Normalised log-density (= −u(x), as log Z = 0).
        """
        x = self.check_batch(x).to(torch.float64)
        return torch.logsumexp(self._component_log_prob(x) + self.weights.log(), dim=1)

    def _reduced_energy(self, x: torch.Tensor) -> torch.Tensor:
        return -torch.logsumexp(self._component_log_prob(x) + self.weights.log(), dim=1)

    def log_prob_t(self, x, t, schedule=None) -> torch.Tensor:
        """Exact log-density of the diffusion marginal p_t at time t.

        Parameters
        ----------
        x : tensor, shape (B, D)
        t : float or tensor of shape (B,)
            Diffusion time(s).
        schedule : schedule with ``alpha(t)`` and ``sigma2(t)``; default :class:`VPSchedule`.

        Returns
        -------
        tensor, shape (B,), float64
        """
        from ..diffusion import VPSchedule

        schedule = schedule or VPSchedule()
        x = self.check_batch(x).to(torch.float64)
        t = torch.as_tensor(t, dtype=torch.float64)
        comp = self._component_log_prob(x, schedule.alpha(t), schedule.sigma2(t))
        return torch.logsumexp(comp + self.weights.log(), dim=1)

    def score_t(self, x, t, schedule=None) -> torch.Tensor:
        """Exact score ∇ₓ log p_t(x) of the diffusion marginal at time t.

        Parameters
        ----------
        x : array_like, shape (B, D) or (D,)
            Configurations.
        t : float or torch.Tensor of shape (B,)
            Diffusion time(s).
        schedule : Schedule, optional
            Forward diffusion (default :class:`~boltzgen.diffusion.VPSchedule`).

        Returns
        -------
        torch.Tensor, shape (B, D), float64
            ∇ₓ log p_t(x), in units of 1/x.
        """
        x = self.check_batch(x).detach().to(torch.float64).requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self.log_prob_t(x, t, schedule).sum(), x)
        return grad

    def responsibilities(self, x, t=None, schedule=None) -> torch.Tensor:
        """Posterior component probabilities p(k | x) (of x_t at time t if given).

        Parameters
        ----------
        x : array_like, shape (B, D) or (D,)
            Configurations.
        t : float or torch.Tensor of shape (B,), optional
            Diffusion time(s); ``None`` uses the data distribution (t = 0, no noise).
        schedule : Schedule, optional
            Forward diffusion (default :class:`~boltzgen.diffusion.VPSchedule`), used when ``t``
            is given.

        Returns
        -------
        torch.Tensor, shape (B, K), float64
            Rows sum to 1.
        """
        from ..diffusion import VPSchedule

        x = self.check_batch(x).to(torch.float64)
        if t is None:
            comp = self._component_log_prob(x)
        else:
            schedule = schedule or VPSchedule()
            t = torch.as_tensor(t, dtype=torch.float64)
            comp = self._component_log_prob(x, schedule.alpha(t), schedule.sigma2(t))
        return torch.softmax(comp + self.weights.log(), dim=1)

    # ------------------------------------------------------------------ sampling
    @property
    def has_exact_sampler(self) -> bool:
        """True: :meth:`sample` draws exact samples."""
        return True

    def sample(self, n: int, generator: Optional[torch.Generator] = None, return_components: bool = False):
        """Exact samples of the mixture.

        Parameters
        ----------
        n : int
            Number of samples.
        generator : torch.Generator, optional
            Source of randomness.
        return_components : bool
            Also return the component of each sample.

        Returns
        -------
        x : torch.Tensor, shape (n, D), float64
            Samples.
        k : torch.LongTensor, shape (n,)
            Component labels (only with ``return_components=True``).
        """
        k = torch.multinomial(self.weights, int(n), replacement=True, generator=generator)
        eps = torch.randn(int(n), self.event_shape[0], generator=generator, dtype=torch.float64)
        x = self.means[k] + self.stds[k] * eps
        return (x, k) if return_components else x

    def metadata(self) -> dict:
        """JSON-serialisable description; see :meth:`TargetSystem.metadata`.

        Returns
        -------
        dict
            The base keys plus ``n_components``, ``weights`` (list of K floats) and ``units``.
        """
        meta = super().metadata()
        meta.update(n_components=self.n_components, weights=self.weights.tolist(), units="reduced (kT = 1)")
        return meta


def two_modes(dim: int = 2, separation: float = 8.0) -> GaussianMixture:
    """``gmm-two-modes``: weights 2/3 and 1/3, unit-width components ``separation`` widths apart.

    Parameters
    ----------
    dim : int
        Dimension D.
    separation : float
        Distance between the two centres along (1, …, 1)/√D, in component widths (before
        standardisation).

    Returns
    -------
    GaussianMixture
        Standardised, reduced units (kT = 1).
    """
    direction = np.ones(dim) / np.sqrt(dim)
    means = np.stack([-0.5 * separation * direction, 0.5 * separation * direction])
    return GaussianMixture(means, np.ones(2), [2.0, 1.0], name="gmm-two-modes")


def forty_modes(dim: int = 2, seed: int = 0, loc_scale: float = 40.0) -> GaussianMixture:
    """``gmm-40``: 40 equal-weight components, centres uniform in [-loc_scale, loc_scale]^dim
    (numpy Generator with ``seed``), diagonal variance softplus(1).

    Parameters
    ----------
    dim : int
        Dimension D.
    seed : int
        Seed of ``numpy.random.default_rng`` for the centres.
    loc_scale : float
        Half-width of the box of centres (before standardisation).

    Returns
    -------
    GaussianMixture
        Standardised, reduced units (kT = 1).
    """
    rng = np.random.default_rng(seed)
    means = rng.uniform(-loc_scale, loc_scale, size=(40, dim))
    std = math.sqrt(F.softplus(torch.tensor(1.0, dtype=torch.float64)).item())
    return GaussianMixture(means, np.full(40, std), np.ones(40), name="gmm-40")
