"""Targets whose energy is an OpenMM System, evaluated through the batched worker pool."""

from __future__ import annotations

import os
from typing import Optional, Sequence

import mdtraj
import numpy as np
import openmm
import openmm.app as app
import torch

from .base import TargetSystem


class _OpenMMReducedEnergy(torch.autograd.Function):
    """u(x) from the bridge; backward uses the OpenMM forces saved in forward (no double backward)."""

    @staticmethod
    def forward(ctx, x, bridge):
        need_force = ctx.needs_input_grad[0]
        u, force = bridge.evaluate(x.detach().cpu().numpy(), forces=need_force)
        if need_force:
            ctx.save_for_backward(torch.from_numpy(force))
        ctx.x_dtype, ctx.x_device = x.dtype, x.device
        return torch.from_numpy(u).to(x.device)

    @staticmethod
    def backward(ctx, grad_u):
        (force,) = ctx.saved_tensors
        grad_x = -grad_u.to(torch.float64).cpu()[:, None, None] * force
        return grad_x.to(ctx.x_dtype).to(ctx.x_device), None


def _to_mdtraj_topology(topology) -> mdtraj.Topology:
    if isinstance(topology, mdtraj.Topology):
        return topology
    if isinstance(topology, app.Topology):
        return mdtraj.Topology.from_openmm(topology)
    raise TypeError(f"expected an mdtraj or OpenMM Topology, got {type(topology).__name__}")


class OpenMMTarget(TargetSystem):
    """A Boltzmann target exp(−U(x)/kT) with U an OpenMM ``System`` (kJ/mol, nm).

    Parameters
    ----------
    system : openmm.System
        The force field applied to one molecule (no periodic box expected, but allowed).
    topology : mdtraj.Topology or openmm.app.Topology
        Atoms in the same order as the System's particles.
    positions : array, shape (N, 3)
        A valid start configuration in nm.
    temperature : float
        Temperature in K.
    name : str
        System name used in metadata.
    platform : str
        OpenMM platform for energies ("auto" picks the fastest; "Reference", "CPU", "CUDA", …).
    n_workers : int, optional
        Worker processes of the energy pool (default: number of cores; 0 evaluates in-process).
    description : dict, optional
        Extra metadata (force-field files, implicit solvent, source files).
    """

    def __init__(
        self,
        system: openmm.System,
        topology,
        positions,
        temperature: float,
        *,
        name: str = "openmm",
        platform: str = "auto",
        n_workers: Optional[int] = None,
        description: Optional[dict] = None,
    ):
        topology = _to_mdtraj_topology(topology)
        n = system.getNumParticles()
        if n != topology.n_atoms:
            raise ValueError(
                f"{name}: the OpenMM System has {n} particles but the topology has {topology.n_atoms} atoms"
            )
        positions = np.asarray(positions, dtype=np.float64)
        if positions.shape != (n, 3):
            raise ValueError(
                f"{name}: start positions have shape {positions.shape}, expected ({n}, 3) (wrong atom count?)"
            )
        if not np.isfinite(positions).all():
            raise ValueError(f"{name}: start positions contain NaN or infinite coordinates")
        super().__init__(name, (n, 3), temperature, topology)
        self.system = system
        self._start = torch.from_numpy(positions.copy())
        if platform != "auto":
            from .bridge import available_platforms

            if platform not in available_platforms():
                raise ValueError(
                    f"OpenMM platform {platform!r} is not available here; available: "
                    f"{', '.join(available_platforms())} (or 'auto')"
                )
        self.platform = platform
        self.n_workers = n_workers
        self.description = dict(description or {})
        self._bridge = None

    @property
    def bridge(self):
        """The :class:`~boltzgen.systems.bridge.EnergyBridge` (started on first use)."""
        if self._bridge is None:
            from .bridge import EnergyBridge

            self._bridge = EnergyBridge(self.system, self.temperature, platform=self.platform, n_workers=self.n_workers)
        return self._bridge

    @property
    def openmm_topology(self) -> app.Topology:
        """openmm.app.Topology: the topology converted to OpenMM (a new object on each access)."""
        return self.topology.to_openmm()

    def _positions(self) -> torch.Tensor:
        return self._start.clone()

    def _reduced_energy(self, x: torch.Tensor) -> torch.Tensor:
        return _OpenMMReducedEnergy.apply(x, self.bridge)

    def reduced_energy_and_force(self, x):
        """Reduced energies and forces straight from OpenMM (one bridge call, no autograd).

        Parameters
        ----------
        x : array_like, shape (B, N, 3) or (N, 3)
            Configurations in nm.

        Returns
        -------
        u : torch.Tensor, shape (B,), float64
            Reduced energies U/kT; ``+inf`` where not evaluable.
        force : torch.Tensor, shape (B, N, 3), float64
            −∇u in kT/nm; zero where ``u`` is not finite.
        """
        x = self.check_batch(x).detach().to(torch.float64)
        u, force = self.bridge.evaluate(x.cpu().numpy(), forces=True)
        return torch.from_numpy(u), torch.from_numpy(force)

    def metadata(self) -> dict:
        """JSON-serialisable description; see :meth:`TargetSystem.metadata`.

        Returns
        -------
        dict
            The base keys, the ``description`` entries (force-field and source files) and
            ``n_atoms``.
        """
        meta = super().metadata()
        meta.update(self.description)
        meta["n_atoms"] = self.event_shape[0]
        return meta

    def close(self) -> None:
        """Shut down the energy bridge's worker processes (if started). Idempotent; the bridge
        restarts on the next energy evaluation."""
        if self._bridge is not None:
            self._bridge.close()
            self._bridge = None


# ---------------------------------------------------------------------------- constructors
def _read_topology_file(path: str):
    """(mdtraj topology, positions in nm or None) of any file mdtraj reads."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"topology file not found: {path}")
    if path.lower().endswith((".h5", ".hdf5", ".hdf")):  # read safely (no PyTables, which unpickles)
        from ..io import load_samples

        samples = load_samples(path)
        if samples.topology is None:
            raise ValueError(f"{path} holds no molecular topology")
        return samples.topology, samples.x[0].copy()
    try:
        traj = mdtraj.load_frame(path, 0) if not path.endswith((".prmtop", ".parm7", ".psf", ".top")) else None
    except Exception:  # topology-only formats, or files without coordinates
        traj = None
    if traj is not None:
        return traj.topology, traj.xyz[0].astype(np.float64)
    return mdtraj.load_topology(path), None


def _read_system(system) -> openmm.System:
    if isinstance(system, openmm.System):
        return system
    path = os.fspath(system)
    if not os.path.exists(path):
        raise FileNotFoundError(f"OpenMM System XML not found: {path}")
    with open(path) as handle:
        text = handle.read()
    try:
        obj = openmm.XmlSerializer.deserialize(text)
    except Exception as exc:
        raise ValueError(f"{path} is not a serialized OpenMM System: {exc}") from None
    if not isinstance(obj, openmm.System):
        raise ValueError(f"{path} holds a serialized {type(obj).__name__}, not an OpenMM System")
    return obj


def from_openmm(
    system,
    topology,
    temperature: float = 300.0,
    *,
    positions=None,
    name: Optional[str] = None,
    platform: str = "auto",
    n_workers: Optional[int] = None,
) -> OpenMMTarget:
    """Target from any OpenMM System and a topology.

    Parameters
    ----------
    system : openmm.System or path
        The System, or a file with the System serialized by ``openmm.XmlSerializer``.
    topology : mdtraj.Topology, openmm.app.Topology or path
        Atom order of the System. A path may be any file mdtraj reads (PDB, mdtraj HDF5, GRO,
        prmtop, PSF, …); its first frame gives the start positions when it has coordinates.
    temperature : float
        Temperature in K.
    positions : array (N, 3) nm, optional
        Start configuration (required when the topology carries no coordinates).
    name : str, optional
        System name used in metadata (default ``"openmm-system"``).
    platform : str
        OpenMM platform for energies (``"auto"`` picks the fastest).
    n_workers : int, optional
        Worker processes of the energy pool (default: number of cores; 0 evaluates in-process).

    Returns
    -------
    OpenMMTarget

    Raises
    ------
    FileNotFoundError, ValueError
        Missing files, a file that is not a serialized System, an atom-count mismatch, or no
        start positions.
    """
    description = {}
    if not isinstance(system, openmm.System):
        description["system_xml"] = os.path.abspath(os.fspath(system))
    system = _read_system(system)
    if isinstance(topology, (str, os.PathLike)):
        description["topology_file"] = os.path.abspath(os.fspath(topology))
        topology, file_positions = _read_topology_file(os.fspath(topology))
        positions = file_positions if positions is None else positions
    topology = _to_mdtraj_topology(topology)
    if system.getNumParticles() != topology.n_atoms:
        raise ValueError(
            f"atom-count mismatch: the OpenMM System has {system.getNumParticles()} particles, "
            f"the topology has {topology.n_atoms} atoms"
        )
    if positions is None:
        raise ValueError("no start positions: pass positions=(N, 3) nm or a topology file with coordinates")
    return OpenMMTarget(
        system,
        topology,
        positions,
        temperature,
        name=name or "openmm-system",
        platform=platform,
        n_workers=n_workers,
        description=description,
    )


def load_forcefield(forcefield: Sequence[str]) -> app.ForceField:
    """An OpenMM ForceField from XML names or paths, with a clear error for a bad one.

    Parameters
    ----------
    forcefield : str or sequence of str

    Returns
    -------
    openmm.app.ForceField

    Raises
    ------
    ValueError
        No file, or an unknown or unreadable one.
    """
    files = [forcefield] if isinstance(forcefield, str) else list(forcefield)
    if not files:
        raise ValueError("no force-field files given")
    try:
        return app.ForceField(*files)
    except (ValueError, OSError) as exc:
        raise ValueError(
            f"unknown or unreadable force field {files}: {exc}. Give OpenMM force-field names such as "
            "'amber99sbildn.xml' or 'amber14-all.xml', or paths to XML files"
        ) from None


def from_pdb(
    pdb,
    forcefield: Sequence[str],
    temperature: float = 300.0,
    *,
    name: Optional[str] = None,
    platform: str = "auto",
    n_workers: Optional[int] = None,
) -> OpenMMTarget:
    """Target from a PDB file and OpenMM force-field XML files (NoCutoff, no constraints).

    Parameters
    ----------
    pdb : path
        Structure with all atoms (hydrogens included) in the order to be used.
    forcefield : list of str
        Force-field XML names or paths, e.g. ``["amber99sbildn.xml", "amber99_obc.xml"]``.
    temperature : float
        Temperature in K.
    name : str, optional
        System name used in metadata (default: the PDB file name without extension).
    platform : str
        OpenMM platform for energies (``"auto"`` picks the fastest).
    n_workers : int, optional
        Worker processes of the energy pool (default: number of cores; 0 evaluates in-process).

    Returns
    -------
    OpenMMTarget
        Start positions from the PDB file (nm).

    Raises
    ------
    FileNotFoundError, ValueError
        Missing PDB file, unknown force field, or a force field that cannot parametrise it.
    """
    pdb = os.fspath(pdb)
    if not os.path.exists(pdb):
        raise FileNotFoundError(f"PDB file not found: {pdb}")
    files = [forcefield] if isinstance(forcefield, str) else list(forcefield)
    ff = load_forcefield(files)
    structure = app.PDBFile(pdb)
    try:
        system = ff.createSystem(structure.topology, nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False)
    except ValueError as exc:
        raise ValueError(f"force field {files} cannot parametrise {pdb}: {exc}") from None
    positions = np.asarray(structure.getPositions(asNumpy=True).value_in_unit(openmm.unit.nanometer), dtype=np.float64)
    description = {
        "pdb": os.path.abspath(pdb),
        "forcefield": files,
        "nonbonded_method": "NoCutoff",
        "constraints": "none",
    }
    return OpenMMTarget(
        system,
        structure.topology,
        positions,
        temperature,
        name=name or os.path.splitext(os.path.basename(pdb))[0],
        platform=platform,
        n_workers=n_workers,
        description=description,
    )
