"""Target systems: Boltzmann densities exp(-u(x)) with a checked, differentiable reduced energy.

Built-in systems are loaded by name with :func:`load`; any OpenMM System becomes a target with
:func:`from_openmm` (or :func:`from_pdb` for a structure plus force-field XML files, or
:func:`from_sequence` for a capped peptide built from its sequence). :func:`path_target` joins two
OpenMM targets of one molecule by the linear path (1 − λ) u_A + λ u_B.
"""

from .alchemical import interpolated_system, path_target
from .base import TargetSystem, TemperedTarget, energies_and_forces
from .catalog import describe, load, names, read_target_file, resolve, target_recipe
from .gmm import GaussianMixture
from .lj import LennardJonesCluster, lj_reduced_energy
from .openmm_target import OpenMMTarget, from_openmm, from_pdb
from .peptides import from_sequence

__all__ = [
    "TargetSystem",
    "TemperedTarget",
    "energies_and_forces",
    "OpenMMTarget",
    "GaussianMixture",
    "LennardJonesCluster",
    "lj_reduced_energy",
    "load",
    "names",
    "describe",
    "resolve",
    "read_target_file",
    "target_recipe",
    "from_sequence",
    "from_openmm",
    "from_pdb",
    "interpolated_system",
    "path_target",
]
