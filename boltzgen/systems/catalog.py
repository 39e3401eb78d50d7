"""The registry of built-in target systems (one :class:`SystemSpec` each) and the one function
that names a target everywhere (:func:`resolve`)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
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

    target = from_pdb(
        data_path("aldp.pdb"), ALDP_FORCEFIELDS[name], temperature, name=name, platform=platform, n_workers=n_workers
    )
    target.description["pdb"] = "aldp.pdb (built-in)"
    return target


#: The capped alanine peptides of the published benchmarks: (sequence, protein force field,
#: solvent, temperature K). Conventions in docs/design.md (section 2, peptides from a sequence).
ALANINE_PEPTIDES = {
    "ala3": ("AAA", ["amber14-all.xml"], "obc1", 310.0),
    "ala4": ("AAAA", ["amber99sbildn.xml"], "obc-legacy", 300.0),
    "ala6": ("AAAAAA", ["amber14-all.xml"], "obc1", 310.0),
}


def _alanine_peptide(name: str) -> Callable[..., TargetSystem]:
    def make(temperature: Optional[float] = None, platform: str = "auto", n_workers: Optional[int] = None):
        from .peptides import from_sequence

        sequence, forcefield, solvent, default_t = ALANINE_PEPTIDES[name]
        t = default_t if temperature is None else temperature
        return from_sequence(sequence, forcefield, solvent, t, name=name, platform=platform, n_workers=n_workers)

    return make


def _solvent_files(solvent: str) -> tuple:
    from .peptides import solvent_files

    return solvent_files(solvent)


def replica_ladder(n_atoms: int, temperature: float, t_max: float = 1000.0) -> dict:
    """Replica-exchange defaults of a molecule from its size: a geometric ladder to ``t_max``.

    Neighbouring replicas exchange when their energy distributions overlap; the energy's spread
    grows as √C_v with C_v ≈ 3N/2 k_B (harmonic), so the ratio between neighbours shrinks as
    1/√N: ln(T_{k+1}/T_k) = c / √(3N/2), with c = 1.4 calibrated on alanine dipeptide (its 6 replicas
    from 300 to 1000 K exchange often).

    Parameters
    ----------
    n_atoms : int
    temperature : float
        Target (lowest) temperature in K.
    t_max : float
        Highest temperature in K.

    Returns
    -------
    dict
        ``replicas``, ``t_max`` (K), ``stride``, ``equilibration`` (steps) for :func:`boltzgen.md.simulate`.
    """
    span = math.log(max(t_max, temperature) / temperature)
    replicas = 1 + math.ceil(span * math.sqrt(1.5 * n_atoms) / 1.4 - 1e-9)
    return {"replicas": max(2, replicas), "t_max": float(t_max), "stride": 500, "equilibration": 10_000}


def _lj(n: int) -> Callable[..., TargetSystem]:
    def make(oscillator_scale: float = 1.0) -> TargetSystem:
        from .lj import LennardJonesCluster

        return LennardJonesCluster(n, oscillator_scale)

    return make


def _positive_dim(dim) -> int:
    if isinstance(dim, bool) or int(dim) != dim or int(dim) < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    return int(dim)


def _gmm_two_modes(dim: int = 2) -> TargetSystem:
    from .gmm import two_modes

    dim = _positive_dim(dim)

    return two_modes(int(dim))


def _gmm_40(dim: int = 2, seed: int = 0) -> TargetSystem:
    from .gmm import forty_modes

    dim = _positive_dim(dim)

    return forty_modes(int(dim), seed=int(seed))


@dataclass(frozen=True)
class SystemSpec:
    """Everything boltzgen knows about one built-in system, in one place.

    Attributes
    ----------
    name : str
        Catalog name (``boltzgen systems``).
    builder : callable
        ``builder(**options) -> TargetSystem``; the options are those :func:`load` accepts.
    description : str
        One line for ``boltzgen systems``.
    forcefield : str
        What defines the energy (force-field files, or the analytic form).
    temperature : float
        Temperature in K (:data:`~boltzgen.units.REDUCED_UNIT_TEMPERATURE` for reduced units).
    n_atoms : int or None
        Atoms (particles); None for the Gaussian mixtures, whose dimension is an option.
    simulate : dict
        Defaults of :func:`boltzgen.md.simulate` for this system, over the method defaults of
        :data:`boltzgen.md.DEFAULTS` (e.g. ``replicas``, ``t_max`` in K, ``stride``,
        ``equilibration`` in steps). Change them when the data must reach states that plain
        dynamics at the target temperature does not visit.
    train_config : str or None
        File under ``systems/`` with the training defaults of ``boltzgen train``.
    openmm : bool
        True for OpenMM systems (they take ``platform`` and ``n_workers`` options).
    states : callable or None
        ``states(target) -> StateSet or None``: the metastable states of the system; None keeps
        :attr:`TargetSystem.states`'s default (:func:`boltzgen.states.default_states`).
    """

    name: str
    builder: Callable[..., TargetSystem]
    description: str
    forcefield: str
    temperature: float
    n_atoms: Optional[int] = None
    simulate: dict = field(default_factory=dict)
    train_config: Optional[str] = None
    openmm: bool = False
    states: Optional[Callable] = None

    def simulation_defaults(self, method: str) -> dict:
        """The :func:`boltzgen.md.simulate` options of ``method`` for this system.

        Parameters
        ----------
        method : {"exact", "md", "mcmc"}

        Returns
        -------
        dict
            The method defaults of :data:`boltzgen.md.DEFAULTS`, overlaid with :attr:`simulate`.
        """
        from ..md.simulate import DEFAULTS

        return {**DEFAULTS[method], **{k: v for k, v in self.simulate.items() if k in DEFAULTS[method]}}


def _aldp_spec(name: str, description: str, forcefield: str) -> SystemSpec:
    # Replica exchange up to 1000 K: the phi > 0 basin is reached within the default run only on
    # a ladder that hot. Raise t_max or the replicas if a longer ladder is needed for another force field.
    return SystemSpec(
        name,
        lambda **kw: _aldp(name, **kw),
        description,
        forcefield,
        300.0,
        n_atoms=22,
        simulate={"replicas": 6, "t_max": 1000.0, "stride": 500, "equilibration": 10_000},
        train_config=f"{name}.train.yaml",
        openmm=True,
    )


#: The built-in systems, by name (the order of ``boltzgen systems``).
SPECS: dict[str, SystemSpec] = {
    spec.name: spec
    for spec in (
        _aldp_spec(
            "aldp-vacuum", "alanine dipeptide (Ace-Ala-Nme), vacuum", "amber99sbildn.xml, NoCutoff, no constraints"
        ),
        _aldp_spec(
            "aldp-implicit",
            "alanine dipeptide (Ace-Ala-Nme), OBC implicit solvent",
            "amber99sbildn.xml + amber99_obc.xml, NoCutoff, no constraints",
        ),
        *(
            SystemSpec(
                name,
                _alanine_peptide(name),
                f"capped {word}-alanine (Ace-(Ala){len(seq)}-Nme), {solvent} implicit solvent",
                " + ".join([*ff, *_solvent_files(solvent)]) + ", NoCutoff, no constraints",
                temp,
                n_atoms=12 + 10 * len(seq),
                simulate=replica_ladder(12 + 10 * len(seq), temp),
                openmm=True,
            )
            for (name, (seq, ff, solvent, temp)), word in zip(ALANINE_PEPTIDES.items(), ("tri", "tetra", "hexa"))
        ),
        SystemSpec(
            "lj13",
            _lj(13),
            "Lennard-Jones cluster, 13 particles, harmonic restraint to the centre",
            "LJ (eps = 1, r_m = 1) + 0.5 |x - mean|^2",
            REDUCED_UNIT_TEMPERATURE,
            n_atoms=13,
            # MALA chains: the energy decorrelates over ~10^3 steps, so a burn-in of ~20 of those and
            # saves about one apart (docs/design.md, the energy W2 floor of the report).
            simulate={"equilibration": 20_000, "stride": 500},
            train_config="lj13.train.yaml",
        ),
        # LJ55's MALA chains need a longer burn-in than the method default to forget their start, and
        # saves far enough apart: the energy decorrelates over ~10^3 steps (docs/design.md).
        SystemSpec(
            "lj55",
            _lj(55),
            "Lennard-Jones cluster, 55 particles, harmonic restraint to the centre",
            "LJ (eps = 1, r_m = 1) + 0.5 |x - mean|^2",
            REDUCED_UNIT_TEMPERATURE,
            n_atoms=55,
            simulate={"equilibration": 10_000, "stride": 500},
            train_config="lj55.train.yaml",
        ),
        SystemSpec(
            "gmm-two-modes",
            _gmm_two_modes,
            "Gaussian mixture, two modes with weights 2/3 and 1/3 (option dim)",
            "analytic",
            REDUCED_UNIT_TEMPERATURE,
            train_config="gmm-two-modes.train.yaml",
        ),
        SystemSpec(
            "gmm-40",
            _gmm_40,
            "Gaussian mixture, 40 equal-weight modes in [-40, 40]^d, standardised (option dim)",
            "analytic",
            REDUCED_UNIT_TEMPERATURE,
            train_config="gmm-40.train.yaml",
        ),
    )
}


def spec(name: str) -> SystemSpec:
    """The :class:`SystemSpec` of a built-in system.

    Parameters
    ----------
    name : str
        A name of :func:`names`.

    Returns
    -------
    SystemSpec

    Raises
    ------
    KeyError
        For an unknown name; the message lists the built-in systems.
    """
    if name not in SPECS:
        raise KeyError(f"unknown system {name!r}; built-in systems: {', '.join(SPECS)}")
    return SPECS[name]


def simulate_defaults(name: str, target: Optional[TargetSystem] = None) -> dict:
    """The per-system :func:`boltzgen.md.simulate` options of a system.

    Parameters
    ----------
    name : str
        System name.
    target : TargetSystem, optional
        The target itself: a molecule that is not built in (a PDB, a sequence) gets the replica
        ladder of its size (:func:`replica_ladder`).

    Returns
    -------
    dict
        A copy of :attr:`SystemSpec.simulate` (e.g. ``replicas``, ``t_max`` in K, ``stride``,
        ``equilibration`` in steps); for other molecules :func:`replica_ladder`; empty otherwise.
    """
    if name in SPECS:
        return dict(SPECS[name].simulate)
    if target is not None and target.topology is not None and hasattr(target, "system"):
        return replica_ladder(target.event_shape[0], target.temperature)
    return {}


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
    system_spec = spec(name)
    try:
        target = system_spec.builder(**options)
    except TypeError as exc:
        raise TypeError(f"bad options for system {name!r}: {exc}") from None
    if system_spec.states is not None:
        target.states = system_spec.states(target)
    return target


def names() -> list[str]:
    """Names of the built-in systems.

    Returns
    -------
    list of str
    """
    return list(SPECS)


def describe() -> list[dict]:
    """One row per built-in system: name, atoms (or dimension), force field, temperature.

    Returns
    -------
    list of dict
        Keys ``name``, ``n_atoms`` (None for mixtures), ``dim``, ``forcefield``,
        ``temperature_K`` (K), ``units``, ``description``.
    """
    rows = []
    for name, system_spec in SPECS.items():
        reduced = system_spec.temperature == REDUCED_UNIT_TEMPERATURE
        rows.append(
            {
                "name": name,
                "n_atoms": system_spec.n_atoms,
                "dim": "user (default 2)" if system_spec.n_atoms is None else 3 * system_spec.n_atoms,
                "forcefield": system_spec.forcefield,
                "temperature_K": system_spec.temperature,
                "units": "reduced (kT = 1)" if reduced else "kJ/mol, nm",
                "description": system_spec.description,
            }
        )
    return rows


def check_target_flags(
    system=None,
    pdb=None,
    forcefield=None,
    system_xml=None,
    topology=None,
    sequence=None,
    solvent=None,
    *,
    spelling: str = "flags",
) -> None:
    """Check that a target is named in exactly one complete way, without building it.

    Parameters
    ----------
    system, pdb, forcefield, system_xml, topology, sequence, solvent
        As in :func:`resolve`; None where not given.
    spelling : {"flags", "keys"}
        How the messages name the fields: as command-line flags (``--system-xml``) or as the
        keys of a target file (``system_xml``, :func:`read_target_file`).

    Raises
    ------
    ValueError
        No way or two ways of naming the target, or one way half given (``--pdb`` without
        ``--forcefield``, ``--system-xml`` without ``--topology``, ``--solvent`` without
        ``--sequence``); the message names the fields that go together.
    """

    def n(field: str) -> str:
        return field if spelling == "keys" else "--" + field.replace("_", "-")

    given = [
        system is not None,
        pdb is not None or (forcefield is not None and sequence is None),
        system_xml is not None or topology is not None,
        sequence is not None,
    ]
    if solvent is not None and sequence is None:
        raise ValueError(
            f"{n('solvent')} goes with {n('sequence')} (with {n('pdb')}, add the implicit-solvent XML to "
            f"{n('forcefield')})"
        )
    if sum(given) != 1:
        raise ValueError(
            f"name the target in exactly one way: {n('system')} NAME, {n('pdb')} FILE {n('forcefield')} XML "
            f"[XML ...], {n('system_xml')} FILE {n('topology')} FILE, or {n('sequence')} SEQ "
            f"[{n('forcefield')} XML] [{n('solvent')} MODEL]"
        )
    if (pdb is not None or forcefield is not None) and sequence is None and (pdb is None or not forcefield):
        raise ValueError(f"{n('pdb')} and {n('forcefield')} go together")
    if (system_xml is None) != (topology is None):
        raise ValueError(f"{n('system_xml')} and {n('topology')} go together")


TARGET_FILE_KEYS = ("system", "pdb", "forcefield", "system_xml", "topology", "sequence", "solvent", "temperature")
_TARGET_FILE_PATHS = ("pdb", "system_xml", "topology")


def read_target_file(path: str) -> dict:
    """A target named in a YAML file with the keys of the target flags, as :func:`resolve` arguments.

    For example ``{sequence: AAA, forcefield: [amber14-all.xml, implicit/obc2.xml]}`` or
    ``{system_xml: system.xml, topology: start.pdb, temperature: 310}``. File paths (``pdb``,
    ``system_xml``, ``topology``, and ``forcefield`` entries that name an existing file) are taken
    relative to the YAML file's directory; force-field names OpenMM ships (``amber14-all.xml``)
    stay as they are.

    Parameters
    ----------
    path : str
        The YAML file (read with ``yaml.safe_load``).

    Returns
    -------
    dict
        Keyword arguments of :func:`resolve`.

    Raises
    ------
    ValueError
        For a file that is not valid YAML or not a mapping, an unknown key (named, with the known
        ones), or a target named in none or two ways (as the target flags).
    """
    import yaml

    with open(path, encoding="utf-8") as handle:
        try:
            spec = yaml.safe_load(handle)
        except yaml.YAMLError as exc:
            raise ValueError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: a target file is a mapping of {', '.join(TARGET_FILE_KEYS)}")
    unknown = sorted(set(spec) - set(TARGET_FILE_KEYS))
    if unknown:
        raise ValueError(f"{path}: {unknown[0]}: unknown key; known keys: {', '.join(TARGET_FILE_KEYS)}")
    base = os.path.dirname(os.path.abspath(path))
    out = dict(spec)
    for key in _TARGET_FILE_PATHS:
        if out.get(key) is not None:
            out[key] = os.path.join(base, str(out[key]))
    if out.get("forcefield") is not None:
        files = [out["forcefield"]] if isinstance(out["forcefield"], str) else list(out["forcefield"])
        local = (os.path.join(base, str(f)) for f in files)
        out["forcefield"] = [p if os.path.isfile(p) else str(f) for f, p in zip(files, local)]
    try:
        check_target_flags(**{k: out.get(k) for k in TARGET_FILE_KEYS if k != "temperature"}, spelling="keys")
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return out


def options_for(recipe: dict, options: Optional[dict]) -> dict:
    """The :func:`resolve` options that apply to a recipe's target: ``platform`` and ``n_workers``
    are dropped for a built-in system that is not an OpenMM one (an analytic target takes neither).

    Parameters
    ----------
    recipe : dict
        :func:`resolve` arguments naming the target (``system``, ``sequence``, ``pdb``, …).
    options : dict, optional
        Further :func:`resolve` options.

    Returns
    -------
    dict
        A new dict.
    """
    options = dict(options or {})
    if recipe.get("system") is not None and not spec(recipe["system"]).openmm:
        options = {k: v for k, v in options.items() if k not in ("platform", "n_workers")}
    return options


def resolve(
    system: Optional[str] = None,
    *,
    pdb=None,
    forcefield=None,
    system_xml=None,
    topology=None,
    sequence=None,
    solvent: Optional[str] = None,
    temperature: Optional[float] = None,
    dim: Optional[int] = None,
    **options,
) -> TargetSystem:
    """The one way a target is named everywhere (CLI and API).

    Exactly one of: ``system`` (a built-in name), ``pdb`` + ``forcefield`` (structure and OpenMM
    force-field XML files), ``system_xml`` + ``topology`` (a serialized OpenMM System and any
    topology file mdtraj reads), or ``sequence`` (a capped peptide built by the package, with
    ``forcefield``, default amber14-all.xml, and ``solvent``, default vacuum). ``temperature`` (K)
    overrides the default of molecular targets.

    Parameters
    ----------
    system : str, optional
        A built-in system name (see :func:`names`).
    pdb : path, optional
        PDB structure (with ``forcefield``).
    forcefield : list of str, optional
        OpenMM force-field XML names or paths (with ``pdb`` or ``sequence``).
    system_xml : path, optional
        Serialized OpenMM System (with ``topology``).
    topology : path, optional
        Topology file mdtraj reads, with start coordinates or ``positions`` in ``options``
        (with ``system_xml``).
    sequence : str, optional
        Residues between ACE and NME caps, one- or three-letter codes
        (:func:`~boltzgen.systems.peptides.parse_sequence`).
    solvent : str, optional
        With ``sequence``: ``vacuum`` or an implicit model of
        :data:`~boltzgen.systems.peptides.SOLVENTS`.
    temperature : float, optional
        Temperature in K (default: the system's, 300 K for OpenMM files and sequences).
    dim : int, optional
        Dimension of the Gaussian-mixture systems.
    **options
        Passed on to :func:`load`, :func:`~boltzgen.systems.openmm_target.from_pdb`,
        :func:`~boltzgen.systems.openmm_target.from_openmm` or
        :func:`~boltzgen.systems.peptides.from_sequence` (``platform``, ``n_workers``, …).

    Returns
    -------
    TargetSystem

    Raises
    ------
    ValueError
        Unless the target is named in exactly one way.
    """
    check_target_flags(system, pdb, forcefield, system_xml, topology, sequence, solvent)
    t = 300.0 if temperature is None else temperature
    if system is not None:
        if dim is not None:
            options["dim"] = dim
        if temperature is not None:
            options["temperature"] = temperature
        return load(system, **options)
    if sequence is not None:
        from .peptides import from_sequence

        return from_sequence(sequence, forcefield or ["amber14-all.xml"], solvent or "vacuum", t, **options)
    if pdb is not None:
        from .openmm_target import from_pdb

        return from_pdb(pdb, forcefield, t, **options)
    from .openmm_target import from_openmm

    return from_openmm(system_xml, os.fspath(topology), t, **options)


def target_recipe(metadata: dict) -> Optional[dict]:
    """How to rebuild the target a sample file or a model was made for: :func:`resolve` arguments.

    Parameters
    ----------
    metadata : dict
        A sample file's (or run's) metadata, as :meth:`TargetSystem.metadata` wrote it.

    Returns
    -------
    dict or None
        ``{"system": name, "temperature": K}`` for a built-in system, ``{"sequence", "forcefield",
        "solvent", "temperature"}`` for a peptide built from its sequence, ``{"pdb", "forcefield",
        "temperature"}`` for a PDB target whose file still exists; None when the metadata do not
        say enough (a serialized System, a missing PDB).
    """
    if not isinstance(metadata, dict):
        return None
    temperature = metadata.get("temperature_K")
    recipe = None
    name = metadata.get("system")
    if isinstance(name, str) and name in SPECS:
        recipe = {"system": name}
        if SPECS[name].openmm and temperature is not None:
            recipe["temperature"] = float(temperature)
    elif metadata.get("sequence") and metadata.get("forcefield"):
        recipe = {
            "sequence": str(metadata["sequence"]),
            "forcefield": list(metadata["forcefield"]),
            "solvent": str(metadata.get("solvent") or "vacuum"),
        }
    elif isinstance(metadata.get("pdb"), str) and os.path.exists(metadata["pdb"]) and metadata.get("forcefield"):
        recipe = {"pdb": metadata["pdb"], "forcefield": list(metadata["forcefield"])}
    if recipe is not None and "system" not in recipe and temperature is not None:
        recipe["temperature"] = float(temperature)
    return recipe
