"""The built-in target systems and the one function that names a target everywhere."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Callable, Optional

from ..units import REDUCED_UNIT_TEMPERATURE
from .base import TargetSystem


def data_path(filename: str) -> str:
    """Absolute path of a data file shipped under ``systems/`` (installed or in a checkout).

    Parameters
    ----------
    filename : str
        File name, e.g. ``"aldp.pdb"``.

    Returns
    -------
    str
        Absolute path.

    Raises
    ------
    FileNotFoundError
        If the file is in neither place.
    """
    try:
        candidate = resources.files("boltzgen.builtin_systems") / filename
        if candidate.is_file():
            return str(candidate)
    except ModuleNotFoundError:
        pass
    candidate = Path(__file__).resolve().parents[2] / "systems" / filename
    if candidate.is_file():
        return str(candidate)
    raise FileNotFoundError(f"built-in system file {filename!r} is missing from the installation")


ALDP_FORCEFIELDS = {
    "aldp-vacuum": ["amber99sbildn.xml"],
    "aldp-implicit": ["amber99sbildn.xml", "amber99_obc.xml"],
}


def _aldp(name: str, temperature: float = 300.0, platform: str = "auto", n_workers: Optional[int] = None):
    from .openmm_target import from_pdb

    target = from_pdb(data_path("aldp.pdb"), ALDP_FORCEFIELDS[name], temperature, name=name,
                      platform=platform, n_workers=n_workers)
    target.description["pdb"] = "aldp.pdb (built-in)"
    return target


def _lj(n: int) -> Callable[..., TargetSystem]:
    def make(oscillator_scale: float = 1.0) -> TargetSystem:
        from .lj import LennardJonesCluster

        return LennardJonesCluster(n, oscillator_scale)

    return make


def _gmm_two_modes(dim: int = 2) -> TargetSystem:
    from .gmm import two_modes

    return two_modes(int(dim))


def _gmm_40(dim: int = 2, seed: int = 0) -> TargetSystem:
    from .gmm import forty_modes

    return forty_modes(int(dim), seed=int(seed))


#: name -> (factory, one-line description, force field, temperature in K or None for reduced units)
BUILTIN = {
    "aldp-vacuum": (lambda **kw: _aldp("aldp-vacuum", **kw), "alanine dipeptide (Ace-Ala-Nme), vacuum",
                    "amber99sbildn.xml, NoCutoff, no constraints", 300.0),
    "aldp-implicit": (lambda **kw: _aldp("aldp-implicit", **kw), "alanine dipeptide (Ace-Ala-Nme), OBC implicit solvent",
                      "amber99sbildn.xml + amber99_obc.xml, NoCutoff, no constraints", 300.0),
    "lj13": (_lj(13), "Lennard-Jones cluster, 13 particles, harmonic restraint to the centre",
             "LJ (eps = 1, r_m = 1) + 0.5 |x - mean|^2", REDUCED_UNIT_TEMPERATURE),
    "lj55": (_lj(55), "Lennard-Jones cluster, 55 particles, harmonic restraint to the centre",
             "LJ (eps = 1, r_m = 1) + 0.5 |x - mean|^2", REDUCED_UNIT_TEMPERATURE),
    "gmm-two-modes": (_gmm_two_modes, "Gaussian mixture, two modes with weights 2/3 and 1/3 (option dim)",
                      "analytic", REDUCED_UNIT_TEMPERATURE),
    "gmm-40": (_gmm_40, "Gaussian mixture, 40 equal-weight modes in [-40, 40]^d, standardised (option dim)",
               "analytic", REDUCED_UNIT_TEMPERATURE),
}

#: Per-system defaults of ``boltzgen simulate`` (options of :func:`boltzgen.md.simulate`). Alanine
#: dipeptide uses replica exchange up to 1000 K: at 600 K the phi > 0 basin is not visited within
#: 0.5 ns, at 1000 K it is, with neighbour acceptance ~0.35 for 6 replicas. LJ55 needs a long burn-in.
SIMULATE_DEFAULTS = {
    "aldp-vacuum": {"replicas": 6, "t_max": 1000.0, "stride": 500, "equilibration": 10_000},
    "aldp-implicit": {"replicas": 6, "t_max": 1000.0, "stride": 500, "equilibration": 10_000},
    "lj55": {"equilibration": 10_000},
}


def simulate_defaults(name: str) -> dict:
    """Default :func:`boltzgen.md.simulate` options for a system.

    Parameters
    ----------
    name : str
        System name.

    Returns
    -------
    dict
        A copy of the defaults (e.g. ``replicas``, ``t_max`` in K, ``stride``,
        ``equilibration`` in steps); empty for unknown names.
    """
    return dict(SIMULATE_DEFAULTS.get(name, {}))


_N_ATOMS = {"aldp-vacuum": 22, "aldp-implicit": 22, "lj13": 13, "lj55": 55}


def load(name: str, **options) -> TargetSystem:
    """Load a built-in target system by name.

    Parameters
    ----------
    name : str
        One of :func:`names` (``aldp-vacuum``, ``aldp-implicit``, ``lj13``, ``lj55``,
        ``gmm-two-modes``, ``gmm-40``).
    **options
        System options: ``dim`` (and ``seed``) for the Gaussian mixtures; ``temperature``,
        ``platform``, ``n_workers`` for the OpenMM systems; ``oscillator_scale`` for LJ.

    Returns
    -------
    TargetSystem

    Raises
    ------
    KeyError
        For an unknown name.
    TypeError
        For options the system does not take.

    Examples
    --------
    >>> target = load("gmm-40", dim=128)
    """
    if name not in BUILTIN:
        raise KeyError(f"unknown system {name!r}; built-in systems: {', '.join(BUILTIN)}")
    factory = BUILTIN[name][0]
    try:
        return factory(**options)
    except TypeError as exc:
        raise TypeError(f"bad options for system {name!r}: {exc}") from None


def names() -> list[str]:
    """Names of the built-in systems.

    Returns
    -------
    list of str
    """
    return list(BUILTIN)


def describe() -> list[dict]:
    """One row per built-in system: name, atoms (or dimension), force field, temperature.

    Returns
    -------
    list of dict
        Keys ``name``, ``n_atoms`` (None for mixtures), ``dim``, ``forcefield``,
        ``temperature_K`` (K), ``units``, ``description``.
    """
    rows = []
    for name, (_, description, forcefield, temperature) in BUILTIN.items():
        reduced = temperature == REDUCED_UNIT_TEMPERATURE
        rows.append({
            "name": name,
            "n_atoms": _N_ATOMS.get(name),
            "dim": "user (default 2)" if name.startswith("gmm") else 3 * _N_ATOMS[name],
            "forcefield": forcefield,
            "temperature_K": temperature,
            "units": "reduced (kT = 1)" if reduced else "kJ/mol, nm",
            "description": description,
        })
    return rows


def resolve(system: Optional[str] = None, *, pdb=None, forcefield=None, system_xml=None, topology=None,
            temperature: Optional[float] = None, dim: Optional[int] = None, **options) -> TargetSystem:
    """The one way a target is named everywhere (CLI and API).

    Exactly one of: ``system`` (a built-in name), ``pdb`` + ``forcefield`` (structure and OpenMM
    force-field XML files), or ``system_xml`` + ``topology`` (a serialized OpenMM System and any
    topology file mdtraj reads). ``temperature`` (K) overrides the default of molecular targets.

    Parameters
    ----------
    system : str, optional
        A built-in system name (see :func:`names`).
    pdb : path, optional
        PDB structure (with ``forcefield``).
    forcefield : list of str, optional
        OpenMM force-field XML names or paths (with ``pdb``).
    system_xml : path, optional
        Serialized OpenMM System (with ``topology``).
    topology : path, optional
        Topology file mdtraj reads, with start coordinates or ``positions`` in ``options``
        (with ``system_xml``).
    temperature : float, optional
        Temperature in K (default: the system's, 300 K for OpenMM files).
    dim : int, optional
        Dimension of the Gaussian-mixture systems.
    **options
        Passed on to :func:`load`, :func:`~boltzgen.systems.openmm_target.from_pdb` or
        :func:`~boltzgen.systems.openmm_target.from_openmm` (``platform``, ``n_workers``, …).

    Returns
    -------
    TargetSystem

    Raises
    ------
    ValueError
        Unless the target is named in exactly one way.
    """
    given = [system is not None, pdb is not None or forcefield is not None, system_xml is not None or topology is not None]
    if sum(given) != 1:
        raise ValueError("name the target in exactly one way: --system NAME, --pdb FILE --forcefield XML [XML ...], "
                         "or --system-xml FILE --topology FILE")
    if system is not None:
        if dim is not None:
            options["dim"] = dim
        if temperature is not None:
            options["temperature"] = temperature
        return load(system, **options)
    if pdb is not None or forcefield is not None:
        if pdb is None or not forcefield:
            raise ValueError("--pdb and --forcefield go together")
        from .openmm_target import from_pdb

        return from_pdb(pdb, forcefield, 300.0 if temperature is None else temperature, **options)
    if system_xml is None or topology is None:
        raise ValueError("--system-xml and --topology go together")
    from .openmm_target import from_openmm

    return from_openmm(system_xml, os.fspath(topology), 300.0 if temperature is None else temperature, **options)
