"""Exact diffusion energies of an analytic target: a "model" with known answers for the samplers."""

from __future__ import annotations

import torch

__all__ = ["ExactMarginalModel"]


class ExactMarginalModel:
    """Exact diffusion energies E(y, t) = −log p_t(y) of an analytic target (a Gaussian mixture).

    Follows :class:`~boltzgen.sampling.protocol.DiffusionModel`.

    A "model" for the samplers with F(t) = 0 (the energies are normalised): plug it into
    :func:`~boltzgen.sampling.smc.smc_sample` or :func:`~boltzgen.sampling.sde.reverse_sde` to check them against exact
    answers, or give it a different mixture (or a ``perturbation``) to get a deliberately wrong
    model.

    Parameters
    ----------
    target : GaussianMixture (anything with ``log_prob_t(y, t, schedule)`` and ``event_shape``)
    schedule : Schedule, optional
        Diffusion (default :class:`~boltzgen.diffusion.VPSchedule`).
    t_min : float
        Smallest diffusion time.
    perturbation : callable (y, t) -> (B,), optional
        Added to the energy: E(y, t) = −log p_t(y) + h(y, t) (differentiable in y).
    """

    mean_free = False

    def __init__(self, target, schedule=None, t_min: float = 1e-3, perturbation=None):
        from ..diffusion import VPSchedule

        self.target = target
        self.schedule = schedule if schedule is not None else VPSchedule()
        self.t_min = float(t_min)
        self.event_shape = tuple(target.event_shape)
        self.perturbation = perturbation
        self.dtype = torch.float64
        w = getattr(target, "weights", None)
        if w is not None and hasattr(target, "means"):
            mean = (w[:, None] * target.means).sum(0)
            var = (w[:, None] * (target.stds**2 + (target.means - mean) ** 2)).sum(0).mean()
            self.sigma_data = float(var.sqrt())
        else:
            self.sigma_data = 1.0

    def energy(self, y: torch.Tensor, t) -> torch.Tensor:
        """Exact diffusion energy −log p_t(y) (+ perturbation).

        Parameters
        ----------
        y : torch.Tensor, shape (B, D)
            Configurations (the target's standardised units).
        t : float or torch.Tensor of shape (B,)
            Diffusion time(s).

        Returns
        -------
        torch.Tensor, shape (B,), float64
            Normalised reduced energies, differentiable in ``y``.
        """
        y = y.to(torch.float64)
        e = -self.target.log_prob_t(y, t, self.schedule)
        if self.perturbation is not None:
            e = e + self.perturbation(y, t)
        return e

    def energy_and_score(self, y: torch.Tensor, t, create_graph: bool = False):
        """Energy and score −∇E by autograd.

        Parameters
        ----------
        y : torch.Tensor, shape (B, D)
            Configurations.
        t : float or torch.Tensor of shape (B,)
            Diffusion time(s).
        create_graph : bool
            Keep both attached to the graph (for higher derivatives); otherwise detached.

        Returns
        -------
        energy : torch.Tensor, shape (B,), float64
            −log p_t(y) (+ perturbation).
        score : torch.Tensor, shape (B, D), float64
            −∇_y E, units 1/y.
        """
        y = y.detach().to(torch.float64).requires_grad_(True)
        with torch.enable_grad():
            e = self.energy(y, t)
            (g,) = torch.autograd.grad(e.sum(), y, create_graph=create_graph)
        if not create_graph:
            return e.detach(), -g.detach()
        return e, -g

    def score(self, y: torch.Tensor, t, create_graph: bool = False) -> torch.Tensor:
        """Score −∇_y E(y, t); see :meth:`energy_and_score`.

        Returns
        -------
        torch.Tensor, shape (B, D), float64
        """
        return self.energy_and_score(y, t, create_graph)[1]

    def log_normaliser(self, t) -> torch.Tensor:
        """F(t) = 0 (normalised energies).

        Parameters
        ----------
        t : float or torch.Tensor, any shape
            Diffusion time(s).

        Returns
        -------
        torch.Tensor, shape of ``t``, float64
            Zeros.
        """
        return torch.zeros_like(torch.as_tensor(t, dtype=torch.float64))

    def __repr__(self) -> str:
        return f"ExactMarginalModel({getattr(self.target, 'name', self.target)!r}, {self.schedule!r})"
