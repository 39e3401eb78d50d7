"""Lennard-Jones clusters (LJ13, LJ55) in the convention of the published benchmarks.

    u(x) = Σ_{i≠j} [ (r_m/r_ij)^12 − 2 (r_m/r_ij)^6 ] + ½ Σ_i ‖x_i − x̄‖²,   ε = 1, r_m = 1, kT = 1,

the double sum running over both orderings of every pair (twice the per-pair sum). The energy is
translation invariant, so the distribution lives in the zero-centre-of-mass subspace of dimension
3(N − 1). The OpenMM form maps one length unit to 1 nm and one energy unit to 1 kJ/mol at
:data:`boltzgen.units.REDUCED_UNIT_TEMPERATURE` (kT = 1 kJ/mol).
"""

from __future__ import annotations

import itertools

import numpy as np
import openmm
import torch

from ..units import REDUCED_UNIT_TEMPERATURE
from .base import TargetSystem

#: Smallest squared distance used in the pair term; keeps overlapping particles finite (and huge).
_MIN_R2 = 1e-20


def lj_reduced_energy(x: torch.Tensor, oscillator_scale: float = 1.0) -> torch.Tensor:
    """Reduced LJ-cluster energy of a batch.

    Parameters
    ----------
    x : tensor, shape (B, N, 3)
        Particle coordinates in reduced length units (r_m = 1).
    oscillator_scale : float
        Prefactor of the harmonic restraint ½ Σ‖x_i − x̄‖² (1 in the published convention).

    Returns
    -------
    tensor, shape (B,)
        Σ_{i≠j} [r^-12 − 2 r^-6] + oscillator_scale · ½ Σ_i ‖x_i − x̄‖².
    """
    n = x.shape[-2]
    diff = x.unsqueeze(-2) - x.unsqueeze(-3)
    r2 = diff.pow(2).sum(-1)
    iu = torch.triu_indices(n, n, offset=1, device=x.device)
    inv_r6 = r2[..., iu[0], iu[1]].clamp_min(_MIN_R2).reciprocal().pow(3)
    pair = 2.0 * (inv_r6.pow(2) - 2.0 * inv_r6).sum(-1)
    centred = x - x.mean(dim=-2, keepdim=True)
    return pair + 0.5 * oscillator_scale * centred.pow(2).sum(dim=(-2, -1))


def lj_openmm_system(n_particles: int, oscillator_scale: float = 1.0, mass: float = 1.0) -> openmm.System:
    """An OpenMM System whose energy in kJ/mol equals :func:`lj_reduced_energy` (lengths in nm).

    The pair term is a ``CustomNonbondedForce`` without cutoff; the restraint to the centre of
    geometry is a ``CustomCentroidBondForce`` between each particle and the centroid of all
    particles (equal weights).

    Parameters
    ----------
    n_particles : int
        Number of particles N.
    oscillator_scale : float
        Prefactor of the harmonic restraint (kJ/mol/nm²; 1 in the published convention).
    mass : float
        Mass of each particle, in dalton (only matters for dynamics).

    Returns
    -------
    openmm.System
        Energies in kJ/mol, which equal kT units at
        :data:`boltzgen.units.REDUCED_UNIT_TEMPERATURE`.
    """
    system = openmm.System()
    for _ in range(n_particles):
        system.addParticle(mass)
    pair = openmm.CustomNonbondedForce("2*(r^-12 - 2*r^-6)")
    pair.setNonbondedMethod(openmm.CustomNonbondedForce.NoCutoff)
    for _ in range(n_particles):
        pair.addParticle([])
    system.addForce(pair)
    restraint = openmm.CustomCentroidBondForce(2, f"{0.5 * oscillator_scale!r}*distance(g1, g2)^2")
    for i in range(n_particles):
        restraint.addGroup([i], [1.0])
    centre = restraint.addGroup(list(range(n_particles)), [1.0] * n_particles)
    for i in range(n_particles):
        restraint.addBond([i, centre], [])
    system.addForce(restraint)
    return system


def fcc_cluster(n_particles: int) -> np.ndarray:
    """The ``n_particles`` sites of an FCC lattice (nearest-neighbour distance 1) closest to a
    site, centred: a compact, low-energy start configuration.

    Parameters
    ----------
    n_particles : int
        Number of particles N.

    Returns
    -------
    numpy.ndarray, shape (N, 3), float64
        Coordinates in reduced length units (r_m = 1, i.e. nm in the OpenMM form), mean zero.
    """
    k = int(np.ceil(n_particles ** (1 / 3))) + 2
    base = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    cells = np.array(list(itertools.product(range(-k, k + 1), repeat=3)), dtype=float)
    sites = (cells[:, None, :] + base[None]).reshape(-1, 3) * np.sqrt(2.0)
    order = np.lexsort((sites[:, 2], sites[:, 1], sites[:, 0], np.round(np.linalg.norm(sites, axis=1), 9)))
    chosen = sites[order[:n_particles]]
    return chosen - chosen.mean(axis=0)


def cluster_topology(n_particles: int):
    """An mdtraj topology of ``n_particles`` identical particles (atom name "LJ", labelled argon),
    so that cluster samples are mdtraj trajectories and networks see identical atom types.

    Parameters
    ----------
    n_particles : int
        Number of particles N (one single-atom residue "LJ" each, one chain).

    Returns
    -------
    mdtraj.Topology
    """
    import mdtraj

    topology = mdtraj.Topology()
    chain = topology.add_chain()
    for i in range(n_particles):
        topology.add_atom("LJ", mdtraj.element.argon, topology.add_residue("LJ", chain, resSeq=i + 1))
    return topology


class LennardJonesCluster(TargetSystem):
    """LJ cluster target (``lj13``, ``lj55``); see the module docstring for the energy.

    Parameters
    ----------
    n_particles : int
        Number of particles N.
    oscillator_scale : float
        Strength of the harmonic restraint to the centre of geometry.
    name : str, optional
        System name (default ``f"lj{n_particles}"``).
    """

    def __init__(self, n_particles: int, oscillator_scale: float = 1.0, name: str | None = None):
        super().__init__(
            name or f"lj{n_particles}", (n_particles, 3), REDUCED_UNIT_TEMPERATURE, cluster_topology(n_particles)
        )
        self.oscillator_scale = float(oscillator_scale)

    def _positions(self) -> torch.Tensor:
        return torch.from_numpy(fcc_cluster(self.event_shape[0]))

    def _reduced_energy(self, x: torch.Tensor) -> torch.Tensor:
        return lj_reduced_energy(x, self.oscillator_scale)

    def openmm_system(self) -> openmm.System:
        """The equivalent OpenMM System (kJ/mol at kT = 1 kJ/mol, nm).

        Returns
        -------
        openmm.System
            See :func:`lj_openmm_system`.
        """
        return lj_openmm_system(self.event_shape[0], self.oscillator_scale)

    def metadata(self) -> dict:
        """JSON-serialisable description; see :meth:`TargetSystem.metadata`.

        Returns
        -------
        dict
            The base keys plus ``energy`` (formula), ``oscillator_scale`` and ``units``.
        """
        meta = super().metadata()
        meta.update(
            energy="sum_{i!=j} [r^-12 - 2 r^-6] + 0.5*sum_i |x_i - mean|^2",
            oscillator_scale=self.oscillator_scale,
            units="reduced (eps = 1, r_m = 1, kT = 1)",
        )
        return meta
