"""A state tilt of the SMC path: more particles in rare states, exact weights (docs/design.md).

SMC along the learned diffusion reaches the end with particles in each metastable state roughly in
proportion to the model's own state weights. A state a few kT up (φ > 0 of an L-peptide) then ends
with few particles that descend from a handful of ancestors, and its free energy scatters between
runs by kT however the weights are computed. The tilt lowers the intermediate energies in the rare
states by a bias that grows as the noise falls,

    E'(y, t) = E(y, t) − b(t) s(ℓ y),     b(t) = kT · r(t),

with s(x) a smooth indicator of the rare states (for peptides :func:`torsion_coordinate`:
Σ over the residues of σ(κ sin φ_r), about 1 per residue with φ > 0) and r(t) rising linearly in
log t from 0 at ``t_on`` to 1 at ``t_full`` and staying at 1 down to t_min. The reverse kernels
then drift towards the rare states (so they fill with particles of distinct ancestry), the SMC
weights are those of the tilted densities, and the annealing (or Laplace hand-over) to exp(−u)
removes the tilt exactly: the final weights, log Z and state free energies are those of the
untilted target, with no correction to apply.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch

from ..nn.features import dihedral

__all__ = ["StateTilt", "torsion_coordinate", "sin_dihedral"]


def sin_dihedral(x: torch.Tensor, quads) -> torch.Tensor:
    """sin φ of dihedral angles, differentiable (mdtraj's sign convention).

    Parameters
    ----------
    x : torch.Tensor, shape (B, N, 3)
        Configurations (any length unit: the angle is scale invariant).
    quads : array-like of int, shape (K, 4)
        Atom indices of each dihedral.

    Returns
    -------
    torch.Tensor, shape (B, K)
        sin φ in [−1, 1]; 0 where the four atoms are collinear.
    """
    q = torch.as_tensor(np.asarray(quads, dtype=np.int64).reshape(-1, 4), device=x.device)
    return torch.sin(dihedral(*(x[:, q[:, i]] for i in range(4))))


def torsion_coordinate(quads, sharpness: float = 5.0, centres=None) -> Callable:
    """s(x) = Σ_k σ(κ h(x) sin φ_k(x)): a smooth count of the dihedrals with φ in (0, π).

    Parameters
    ----------
    quads : array-like of int, shape (K, 4)
        Atom indices of the dihedrals (e.g. every residue's backbone φ).
    sharpness : float
        κ; σ(κ sin φ) is within 1 % of the step at |sin φ| > 0.9 for κ = 5.
    centres : array-like of int, shape (C, 4), optional
        Chiral centres (N, CA, C, CB). With them, h(x) = +1 in the L-region and −1 in its mirror
        image (:func:`~boltzgen.sampling.chirality.in_l_region`), so s counts the dihedrals of
        the configuration as the chirality fold will see it: a mirror image flips every φ, and
        an E(3)-invariant model's particles are of either hand until the fold. Without, h = 1.

    Returns
    -------
    callable
        x (B, N, 3) tensor -> (B,) tensor in [0, K], differentiable in x.
    """
    from .chirality import in_l_region

    quads = np.asarray(quads, dtype=np.int64).reshape(-1, 4)
    if quads.shape[0] == 0:
        raise ValueError("torsion_coordinate needs at least one dihedral")
    centres = None if centres is None or len(centres) == 0 else np.asarray(centres, dtype=np.int64).reshape(-1, 4)

    def coordinate(x: torch.Tensor) -> torch.Tensor:
        sin = sin_dihedral(x, quads)
        if centres is not None:
            hand = torch.where(in_l_region(x.detach(), centres), 1.0, -1.0).to(sin.dtype)
            sin = sin * hand[:, None]
        return torch.sigmoid(float(sharpness) * sin).sum(-1)

    return coordinate


class StateTilt:
    """The bias −b(t) s(ℓ y) added to the model energy along the SMC path (module docstring).

    Parameters
    ----------
    coordinate : callable
        x (B, *event_shape) tensor in the target's units -> (B,) tensor, differentiable in x: the
        smooth indicator of the rare states (larger in them).
    kT : float
        Full strength of the bias (reduced units): the rare states' weight rises by about e^kT
        per unit of ``coordinate``.
    t_on, t_full : float
        The bias is 0 above ``t_on`` and full below ``t_full`` (linear in log t between).
    length_scale : float
        ℓ: the coordinate sees x = ℓ y.
    """

    def __init__(self, coordinate: Callable, kT: float, t_on: float, t_full: float, length_scale: float = 1.0):
        if not (0.0 < t_full < t_on):
            raise ValueError(f"tilt: need 0 < t_full < t_on, got t_full = {t_full}, t_on = {t_on}")
        self.coordinate, self.kT = coordinate, float(kT)
        self.t_on, self.t_full, self.length_scale = float(t_on), float(t_full), float(length_scale)

    def strength(self, t: float) -> float:
        """b(t): 0 for t ≥ t_on, kT for t ≤ t_full, linear in log t between.

        Parameters
        ----------
        t : float
            Diffusion time.

        Returns
        -------
        float
            The bias strength in kT.
        """
        t = float(t)
        if t >= self.t_on:
            return 0.0
        if t <= self.t_full:
            return self.kT
        return self.kT * math.log(self.t_on / t) / math.log(self.t_on / self.t_full)

    def energy_and_grad(self, y: torch.Tensor, t: float) -> Optional[tuple]:
        """The bias −b(t) s(ℓ y) and its gradient in y, or None where b(t) = 0.

        Parameters
        ----------
        y : torch.Tensor, shape (B, *event_shape)
            Configurations in model units.
        t : float
            Diffusion time.

        Returns
        -------
        (energy (B,), grad (B, *event_shape)) or None
        """
        b = self.strength(t)
        if b == 0.0:
            return None
        with torch.enable_grad():
            z = y.detach().requires_grad_(True)
            e = -b * self.coordinate(self.length_scale * z)
            (g,) = torch.autograd.grad(e.sum(), z)
        return e.detach(), g
