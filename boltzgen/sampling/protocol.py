"""The learned-model interface of the samplers: :class:`DiffusionModel`.

A diffusion model gives unnormalised energies E(y, t) of the noised marginals p_t(y) ∝ exp(−E(y, t))
of the data along a diffusion ``schedule`` (y_t = α_t y_0 + σ_t ε), in model coordinates y (for a
:class:`~boltzgen.model.TrainedModel`, y = x / length_scale with x in the target's units). The
samplers of :mod:`boltzgen.sampling` (:func:`~boltzgen.sampling.smc.smc_sample`,
:func:`~boltzgen.sampling.sde.reverse_sde`, :func:`~boltzgen.sampling.sde.probability_flow`) take
any object with these members; :class:`~boltzgen.energy.EnergyModel` and
:class:`~boltzgen.sampling.exact.ExactMarginalModel` are two. Conventions: docs/design.md.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

__all__ = ["DiffusionModel"]


@runtime_checkable
class DiffusionModel(Protocol):
    """What a sampler needs from a learned (or exact) diffusion energy.

    Attributes
    ----------
    schedule : boltzgen.diffusion.Schedule
        The noise schedule: ``alpha(t)``, ``sigma2(t)``, ``transition(t', t)``, ``drift_coef(t)``,
        ``g2(t)``, ``denoise(y, score, t)``.
    event_shape : tuple of int
        Shape of one configuration: (N, 3) for a molecule of N atoms, (D,) otherwise.
    t_min : float
        Smallest diffusion time the model was trained at (the samplers' default end point).
    mean_free : bool
        True when configurations live on the zero-centre-of-mass subspace (molecules): noise,
        scores and densities then count d = 3(N − 1) dimensions.

    Notes
    -----
    Optional members, read through the helpers of :mod:`boltzgen.sampling.sde` with their
    defaults: ``sigma_data`` (per-coordinate scale of the data, default 1; sets the prior at
    t = 1), ``parameters()`` (the device and dtype of the run), ``topology`` (for the chirality
    fold when there is no target). A model without ``energy_and_score`` also works with the
    samplers: they then take the score by autograd of :meth:`energy`.
    """

    schedule: object
    event_shape: tuple
    t_min: float
    mean_free: bool

    def energy(self, y: torch.Tensor, t) -> torch.Tensor:
        """Energies E(y, t).

        Parameters
        ----------
        y : torch.Tensor, shape (B, *event_shape)
            Configurations in model coordinates.
        t : float or torch.Tensor of shape (B,)
            Diffusion time(s) in [t_min, 1].

        Returns
        -------
        torch.Tensor, shape (B,)
            Reduced (dimensionless) energies, differentiable in ``y``.
        """
        ...

    def energy_and_score(self, y: torch.Tensor, t, create_graph: bool = False):
        """Energies and scores −∇_y E(y, t).

        Parameters
        ----------
        y : torch.Tensor, shape (B, *event_shape)
        t : float or torch.Tensor of shape (B,)
        create_graph : bool
            Keep both on the autograd graph (for higher derivatives); otherwise detached.

        Returns
        -------
        energy : torch.Tensor, shape (B,)
        score : torch.Tensor, shape (B, *event_shape)
            −∇_y E, units 1/y (mean-free for mean-free models).
        """
        ...
