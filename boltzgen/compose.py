"""Composed energy models: products (p_A^a · p_B^b) and mixtures (Σ w_i p_i) of diffusion models.

A model parameterised by its energy can be composed: the composition is again a
:class:`~boltzgen.sampling.protocol.DiffusionModel`, and SMC along the diffusion (:func:`
boltzgen.sampling.smc.smc_sample`, with or without a final target) turns it into weighted samples
and log Z.

- **Product** (:func:`product`): E(y, t) = Σ_i a_i E_i(y, t). At t_min this is the composed density
  Π p_i^{a_i} up to a constant; at larger t it is *not* the diffused composition (the diffusion of
  a product is not the product of diffusions), so it serves as the SMC's intermediate path, and the
  SMC weights make the final samples and log Z exact for exp(−E(y, t_min)).
- **Mixture** (:func:`mixture`): log p_t = logsumexp_i(log w_i − E_i(y, t) + F_i(t)), with F_i(t) =
  −log Z_i(t) each model's log-normaliser (the learned one of DiffCLF, ``log_normaliser(t)``; 0 for
  normalised, exact models). With exact normalisers this *is* the diffused mixture at every t.

All components must share the schedule, the configuration shape and the coordinates (models
trained on data of the same length scale; for trained runs compose their ``inner`` models, or
give ``length_scale`` to the sampler). Conventions: docs/theory.md, "Composed models".
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["ComposedModel", "product", "mixture"]


class ComposedModel:
    """A product or mixture of diffusion models, itself a DiffusionModel (see module docstring).

    Parameters
    ----------
    models : sequence of DiffusionModel
        Components, with one schedule, ``event_shape``, ``mean_free`` and coordinates.
    coefficients : sequence of float
        Exponents a_i (``kind="product"``) or weights w_i (``kind="mixture"``, normalised here).
    kind : {"product", "mixture"}
    """

    def __init__(self, models: Sequence, coefficients: Sequence[float], kind: str):
        models = list(models)
        if len(models) < 1 or len(models) != len(coefficients):
            raise ValueError(f"give one coefficient per model: {len(models)} models, {len(coefficients)} coefficients")
        if kind not in ("product", "mixture"):
            raise ValueError(f"kind must be 'product' or 'mixture', got {kind!r}")
        first = models[0]
        for m in models[1:]:
            if tuple(m.event_shape) != tuple(first.event_shape) or bool(m.mean_free) != bool(first.mean_free):
                raise ValueError(
                    f"the models are for different configurations: shape {tuple(first.event_shape)} and "
                    f"{tuple(m.event_shape)}, mean-free {first.mean_free} and {m.mean_free}"
                )
            if type(m.schedule) is not type(first.schedule):
                raise ValueError("the models use different noise schedules")
        coefficients = [float(c) for c in coefficients]
        if kind == "mixture":
            if min(coefficients) <= 0:
                raise ValueError(f"mixture weights must be positive, got {coefficients}")
            total = sum(coefficients)
            coefficients = [c / total for c in coefficients]
        self.models, self.coefficients, self.kind = models, coefficients, kind
        self.schedule, self.event_shape = first.schedule, tuple(first.event_shape)
        self.mean_free = bool(first.mean_free)
        self.t_min = max(float(m.t_min) for m in models)
        self.sigma_data = float(sum(c * getattr(m, "sigma_data", 1.0) for c, m in zip(self._share(), models)))
        self.dtype = getattr(first, "dtype", torch.float32)
        self.topology = getattr(first, "topology", None)

    def _share(self) -> list:
        total = sum(abs(c) for c in self.coefficients)
        return [abs(c) / total for c in self.coefficients]

    def parameters(self):
        """Parameters of every component (the device and dtype of a run).

        Yields
        ------
        torch.nn.Parameter
        """
        for m in self.models:
            if hasattr(m, "parameters"):
                yield from m.parameters()

    def energy(self, y: torch.Tensor, t) -> torch.Tensor:
        """E(y, t) of the composition.

        Parameters
        ----------
        y : torch.Tensor, shape (B, *event_shape)
        t : float or torch.Tensor of shape (B,)

        Returns
        -------
        torch.Tensor, shape (B,)
            Σ a_i E_i (product) or −logsumexp_i(log w_i − E_i + F_i) (mixture); differentiable in y.
        """
        energies = [m.energy(y, t) for m in self.models]
        if self.kind == "product":
            return sum(c * e for c, e in zip(self.coefficients, energies))
        terms = []
        for c, m, e in zip(self.coefficients, self.models, energies):
            f = m.log_normaliser(t) if hasattr(m, "log_normaliser") else 0.0
            terms.append(torch.as_tensor(c, dtype=e.dtype).log() - e + torch.as_tensor(f, dtype=e.dtype).to(e.device))
        return -torch.logsumexp(torch.stack(torch.broadcast_tensors(*terms)), dim=0)


def product(models: Sequence, exponents: Sequence[float]) -> ComposedModel:
    """p ∝ Π_i p_i^{a_i}: E = Σ a_i E_i (module docstring).

    Parameters
    ----------
    models : sequence of DiffusionModel
    exponents : sequence of float
        a_i (a_i = 1 for a plain product of experts; negative values subtract energies).

    Returns
    -------
    ComposedModel
    """
    return ComposedModel(models, exponents, "product")


def mixture(models: Sequence, weights: Sequence[float]) -> ComposedModel:
    """p = Σ_i w_i p_i, using each model's log-normaliser (module docstring).

    Parameters
    ----------
    models : sequence of DiffusionModel
    weights : sequence of float
        Positive mixture weights (normalised here).

    Returns
    -------
    ComposedModel
    """
    return ComposedModel(models, weights, "mixture")
