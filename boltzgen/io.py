"""Sample files (HDF5) and atomic file writes.

A sample file for a molecular system is an mdtraj HDF5 trajectory (``mdtraj.load`` opens it) with
extra float64 arrays ``log_weights``, ``log_q`` and ``reduced_energy`` where known (and
``reduced_force``, −∇u in kT/nm with the positions' shape, for training data), and the
metadata (system, temperature, force field, seed, boltzgen version) as JSON in the root attribute
``boltzgen_metadata``. For toy targets the same arrays stand beside a float64 ``positions`` array
of shape (B, D). Files are written to a temporary name and renamed, so a crash never leaves a
half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import h5py
import numpy as np

from .version import __version__

_ARRAYS = ("log_weights", "log_q", "reduced_energy")
_META_ATTR = "boltzgen_metadata"


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path`` atomically.

    Parameters
    ----------
    path : str or path-like
        Final file name (its directory is created).

    Yields
    ------
    str
        Temporary file name in the same directory (same extension); removed if the block raises.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp" + suffix, dir=directory)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` that strict JSON can hold: non-finite floats become None (null).

    ``json.dump`` would write ``Infinity`` and ``NaN``, which no strict JSON reader accepts. An
    error that is infinite (for example a bootstrap over fewer than two blocks) is therefore
    written as null; the field beside it that explains why stays as it is.

    Parameters
    ----------
    obj : object
        Nested dicts, lists, tuples, numbers, numpy values, strings.

    Returns
    -------
    object
        The same structure with numpy values as Python values and non-finite floats as None.
    """
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def dumps_json(obj: Any, indent: Optional[int] = 2) -> str:
    """Strict JSON text of ``obj`` (:func:`json_safe`; anything else unknown as its str).

    Parameters
    ----------
    obj : object
    indent : int or None

    Returns
    -------
    str
    """
    return json.dumps(json_safe(obj), indent=indent, sort_keys=True, default=json_default, allow_nan=False)


def write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as indented strict JSON (:func:`dumps_json`), atomically.

    Parameters
    ----------
    path : str
        Output file.
    obj : object
        JSON-serialisable data (numpy values are converted; inf and NaN become null).
    """
    write_text(path, dumps_json(obj) + "\n")


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (its directory is created), as :func:`write_json` does.

    Parameters
    ----------
    path : str
        Output file.
    text : str
        The whole content.
    """
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)


def json_default(obj):
    """``json.dump`` hook: numpy scalars and arrays as numbers and lists, anything else as its str.

    Parameters
    ----------
    obj : object
        A value ``json`` cannot serialise.

    Returns
    -------
    int, float, bool, list or str
    """
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


@dataclass
class Samples:
    """Weighted samples read from a sample file.

    Attributes
    ----------
    x : ndarray, shape (B, N, 3) in nm, or (B, D); float64
    log_weights, log_q, reduced_energy : ndarray (B,) float64, or None
    reduced_force : ndarray, shape of ``x``, float64, or None
        −∇u of each sample (kT/nm for molecules) at the target's temperature.
    topology : mdtraj.Topology or None
    metadata : dict
    extra : dict of str -> ndarray
        Any further arrays stored in the file.
    """

    x: np.ndarray
    log_weights: Optional[np.ndarray] = None
    log_q: Optional[np.ndarray] = None
    reduced_energy: Optional[np.ndarray] = None
    reduced_force: Optional[np.ndarray] = None
    topology: Any = None
    metadata: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def trajectory(self):
        """The configurations as an ``mdtraj.Trajectory`` (molecular systems only).

        Returns
        -------
        mdtraj.Trajectory
            B frames, coordinates as float32 nm (weights are not attached).

        Raises
        ------
        ValueError
            Without a topology.
        """
        import mdtraj

        if self.topology is None:
            raise ValueError("these samples have no topology (not a molecular system)")
        return mdtraj.Trajectory(self.x.astype(np.float32), self.topology)


def _check_array(name: str, value, n: int) -> Optional[np.ndarray]:
    if value is None:
        return None
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} entries but there are {n} samples")
    return arr


def save_samples(
    path: str,
    x,
    *,
    topology=None,
    log_weights=None,
    log_q=None,
    reduced_energy=None,
    reduced_force=None,
    metadata: Optional[dict] = None,
    extra: Optional[dict] = None,
) -> None:
    """Write samples to an HDF5 sample file, atomically.

    Parameters
    ----------
    path : str
        Output file (``.h5``).
    x : array, shape (B, N, 3) in nm with ``topology``, or (B, D)
        Configurations.
    topology : mdtraj.Topology, optional
        Makes the file an mdtraj HDF5 trajectory.
    log_weights, log_q, reduced_energy : array (B,), optional
        Importance log-weights, proposal log-density and reduced target energy of each sample.
    reduced_force : array, shape of ``x``, optional
        Reduced forces −∇u (kT/nm for molecules).
    metadata : dict, optional
        JSON-serialisable description; the boltzgen version is added.
    extra : dict of str -> array, optional
        Further arrays (e.g. an ESS trace), stored under their names.
    """
    x = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float64)
    n = x.shape[0]
    arrays = {name: _check_array(name, value, n) for name, value in zip(_ARRAYS, (log_weights, log_q, reduced_energy))}
    if reduced_force is not None:
        reduced_force = np.asarray(reduced_force, dtype=np.float64)
        if reduced_force.shape != x.shape:
            raise ValueError(f"reduced_force has shape {reduced_force.shape}, the positions {x.shape}")
    meta = dict(metadata or {})
    meta.setdefault("boltzgen_version", __version__)
    meta_json = json.dumps(meta, default=json_default, sort_keys=True)
    if topology is not None and (x.ndim != 3 or x.shape[1] != topology.n_atoms or x.shape[2] != 3):
        raise ValueError(f"positions of shape {x.shape} do not match a topology of {topology.n_atoms} atoms")
    with atomic_path(path) as tmp:
        if topology is not None:
            import mdtraj

            os.remove(tmp)
            mdtraj.Trajectory(x.astype(np.float32), topology).save_hdf5(tmp)
            mode = "a"
        else:
            mode = "w"
        with h5py.File(tmp, mode) as handle:
            if topology is None:
                handle.create_dataset("positions", data=x)
            for name, arr in arrays.items():
                if arr is not None:
                    handle.create_dataset(name, data=arr)
            if reduced_force is not None:
                handle.create_dataset("reduced_force", data=reduced_force)
            for name, value in (extra or {}).items():
                if name in handle:
                    raise ValueError(f"extra array name {name!r} is reserved")
                handle.create_dataset(name, data=np.asarray(value))
            handle.attrs[_META_ATTR] = meta_json


def is_md_trajectory(metadata: Optional[dict]) -> bool:
    """Whether a sample file's frames are an MD trajectory in time order (``boltzgen simulate``
    with MD or replica exchange, or a reweighting of one): correlated frames, whose statistical
    errors need a block bootstrap (:func:`boltzgen.weights.block_size_for`).

    Parameters
    ----------
    metadata : dict or None
        ``Samples.metadata``.

    Returns
    -------
    bool
    """
    meta = metadata or {}
    source = meta.get("source_metadata") if isinstance(meta.get("source_metadata"), dict) else {}
    return meta.get("method") == "md" or (meta.get("command") == "reweight" and source.get("method") == "md")


def topology_from_json(raw):
    """Build an ``mdtraj.Topology`` from the JSON text an mdtraj HDF5 file stores in ``/topology``.

    This is the reading half of mdtraj's HDF5 format, done with ``json`` alone: nothing in the
    file is unpickled or executed (PyTables, which ``mdtraj.load_hdf5`` uses, unpickles string
    attributes that look like pickles, so a crafted file could run code).

    Parameters
    ----------
    raw : str or bytes
        The JSON document: chains -> residues -> atoms (name, element), and a list of bonds as
        pairs of atom indices.

    Returns
    -------
    mdtraj.Topology

    Raises
    ------
    ValueError
        When the text is not a topology document.
    """
    import mdtraj
    from mdtraj.core import element as elem

    try:
        doc = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        topology = mdtraj.Topology()
        for chain_doc in sorted(doc["chains"], key=lambda c: c["index"]):
            chain = topology.add_chain(chain_id=chain_doc.get("chain_id"))
            for res_doc in sorted(chain_doc["residues"], key=lambda r: r["index"]):
                residue = topology.add_residue(
                    str(res_doc["name"]),
                    chain,
                    resSeq=res_doc.get("resSeq"),
                    segment_id=str(res_doc.get("segmentID", "")),
                )
                for atom_doc in sorted(res_doc["atoms"], key=lambda a: a["index"]):
                    try:
                        element = elem.get_by_symbol(str(atom_doc["element"]))
                    except KeyError:
                        element = elem.virtual
                    topology.add_atom(str(atom_doc["name"]), element, residue)
        atoms = list(topology.atoms)
        for i, j in doc.get("bonds", []):
            topology.add_bond(atoms[int(i)], atoms[int(j)])
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise ValueError(f"not an mdtraj topology document ({type(exc).__name__}: {exc})") from None
    return topology


_LENGTH_UNITS_NM = {"nanometers": 1.0, "nanometer": 1.0, "nm": 1.0, "angstroms": 0.1, "angstrom": 0.1}


def _attr_text(value) -> str:
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(-1)[0]
    return value.decode() if isinstance(value, bytes) else str(value)


def _float_dataset(handle, name: str, path: str, shape_rank: int) -> np.ndarray:
    node = handle[name]
    if not isinstance(node, h5py.Dataset) or node.dtype.kind not in "fiu" or node.ndim != shape_rank:
        raise ValueError(
            f"{path}: '{name}' must be a numeric array of rank {shape_rank}, "
            f"got {getattr(node, 'dtype', type(node).__name__)} of rank {getattr(node, 'ndim', '?')}"
        )
    try:
        return np.asarray(node, dtype=np.float64)
    except OSError as exc:
        raise ValueError(f"{path}: array '{name}' cannot be read (corrupt file?): {exc}") from None


def _read_trajectory(handle, path: str):
    """(x (B, N, 3) float64 nm, topology) of an mdtraj HDF5 file opened with h5py."""
    node = handle["topology"]
    raw = node[()] if isinstance(node, h5py.Dataset) else None
    if isinstance(raw, np.ndarray):
        raw = raw.reshape(-1)[0] if raw.size else None
    if not isinstance(raw, (str, bytes)):
        raise ValueError(f"{path}: '/topology' is not mdtraj's JSON topology text")
    try:
        topology = topology_from_json(raw)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    x = _float_dataset(handle, "coordinates", path, 3)
    units = _attr_text(handle["coordinates"].attrs.get("units", "nanometers")).lower()
    if units not in _LENGTH_UNITS_NM:
        raise ValueError(f"{path}: coordinates in unknown units {units!r}")
    x = x * _LENGTH_UNITS_NM[units]
    if x.shape[1:] != (topology.n_atoms, 3):
        raise ValueError(f"{path}: coordinates of shape {x.shape} do not match a topology of {topology.n_atoms} atoms")
    return x, topology


HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")


def load_trajectory(path: str, topology=None) -> Samples:
    """Read a trajectory in any other format mdtraj reads (DCD, XTC, TRR, NetCDF, PDB, ...) as
    unweighted samples.

    Parameters
    ----------
    path : str or path-like
        Trajectory file.
    topology : str, path-like or mdtraj.Topology, optional
        Topology (a PDB or any topology file mdtraj reads); needed by formats without one
        (DCD, XTC, TRR, NetCDF).

    Returns
    -------
    Samples
        Positions in nm as float64, the topology, metadata ``{"source_file", "source_format"}``;
        no weights.

    Raises
    ------
    ValueError
        When mdtraj cannot read the file (the message names it and asks for a topology where
        one is missing).
    """
    import mdtraj

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"trajectory file not found: {path}")
    if isinstance(topology, (str, os.PathLike)) and str(topology).lower().endswith(HDF5_SUFFIXES):
        topology = load_samples(topology).topology  # safely, without PyTables
    try:
        traj = mdtraj.load(path, top=topology) if topology is not None else mdtraj.load(path)
    except (ValueError, TypeError, OSError, IndexError, KeyError) as exc:
        hint = "" if topology is not None else " (formats without a topology, such as DCD or XTC, need --topology)"
        raise ValueError(f"{path} is not a trajectory mdtraj can read{hint}: {exc}") from None
    return Samples(
        x=traj.xyz.astype(np.float64),
        topology=traj.topology,
        metadata={"source_file": os.path.abspath(path), "source_format": os.path.splitext(path)[1].lstrip(".").lower()},
    )


def load_samples(path: str, topology=None) -> Samples:
    """Read a sample file written by :func:`save_samples` (or any mdtraj HDF5 trajectory), or a
    trajectory of another format mdtraj reads (:func:`load_trajectory`).

    HDF5 files are read with h5py, dataset by dataset: no attribute is unpickled and nothing in the
    file can run code (see :func:`topology_from_json`). Only the metadata attribute is read, as JSON.

    Parameters
    ----------
    path : str or path-like
        HDF5 sample file, or a trajectory file of another format.
    topology : str, path-like or mdtraj.Topology, optional
        Topology for trajectory formats that have none (ignored for HDF5 sample files).

    Returns
    -------
    Samples
        Positions as float64 (nm for molecules), the weight arrays (None where absent),
        topology, metadata and further arrays.

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    ValueError
        When it is not an HDF5 sample file, or an array or the metadata is malformed.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"sample file not found: {path}")
    if not h5py.is_hdf5(path) and not path.lower().endswith(HDF5_SUFFIXES):
        return load_trajectory(path, topology)
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path} is not a readable HDF5 sample file: {exc}") from None
    with handle:
        try:
            meta = json.loads(_attr_text(handle.attrs.get(_META_ATTR, "{}")))
        except (ValueError, OSError) as exc:
            raise ValueError(f"{path}: the metadata attribute {_META_ATTR!r} is not JSON ({exc})") from None
        if not isinstance(meta, dict):
            raise ValueError(
                f"{path}: the metadata attribute {_META_ATTR!r} must be a JSON object, got {type(meta).__name__}"
            )
        molecular = "topology" in handle and "coordinates" in handle
        if not molecular and "positions" not in handle:
            raise ValueError(f"{path} holds neither an mdtraj trajectory nor a 'positions' array")
        if molecular:
            x, topology = _read_trajectory(handle, path)
        else:
            positions = handle["positions"]
            rank = positions.ndim if isinstance(positions, h5py.Dataset) else -1
            x, topology = _float_dataset(handle, "positions", path, rank if rank in (2, 3) else 2), None
        arrays = {name: _float_dataset(handle, name, path, 1) if name in handle else None for name in _ARRAYS}
        for name, arr in arrays.items():
            if arr is not None and arr.shape[0] != x.shape[0]:
                raise ValueError(f"{path}: '{name}' has {arr.shape[0]} entries but there are {x.shape[0]} samples")
        force = _float_dataset(handle, "reduced_force", path, x.ndim) if "reduced_force" in handle else None
        if force is not None and force.shape != x.shape:
            raise ValueError(f"{path}: 'reduced_force' has shape {force.shape}, the positions {x.shape}")
        mdtraj_nodes = {
            "coordinates",
            "topology",
            "time",
            "cell_lengths",
            "cell_angles",
            "velocities",
            "kineticEnergy",
            "potentialEnergy",
            "temperature",
            "lambda",
        }
        skip = set(_ARRAYS) | mdtraj_nodes | {"positions", "reduced_force"}
        extra = {}
        for name in handle:
            node = handle[name]
            if name not in skip and isinstance(node, h5py.Dataset):
                extra[name] = np.asarray(node)  # h5py decodes data only: it never unpickles
    return Samples(x=x, topology=topology, metadata=meta, extra=extra, reduced_force=force, **arrays)
