"""Target systems: Boltzmann densities exp(-u(x)) with a checked, differentiable reduced energy.

Built-in systems are loaded by name with :func:`load`; any OpenMM System becomes a target with
:func:`from_openmm` (or :func:`from_pdb` for a structure plus force-field XML files).
"""

from .base import TargetSystem, energies_and_forces
from .catalog import describe, load, names, resolve
from .gmm import GaussianMixture
from .lj import LennardJonesCluster, lj_reduced_energy
from .openmm_target import OpenMMTarget, from_openmm, from_pdb

__all__ = [
    "TargetSystem",
    "energies_and_forces",
    "OpenMMTarget",
    "GaussianMixture",
    "LennardJonesCluster",
    "lj_reduced_energy",
    "load",
    "names",
    "describe",
    "resolve",
    "from_openmm",
    "from_pdb",
]
