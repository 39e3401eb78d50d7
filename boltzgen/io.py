"""Sample files (HDF5) and atomic file writes.

A sample file for a molecular system is an mdtraj HDF5 trajectory (``mdtraj.load`` opens it) with
extra float64 arrays ``log_weights``, ``log_q`` and ``reduced_energy`` where known, and the
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

from . import __version__

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


def write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically.

    Parameters
    ----------
    path : str
        Output file.
    obj : object
        JSON-serialisable data (numpy values are converted by :func:`json_default`).
    """
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        json.dump(obj, handle, indent=2, sort_keys=True, default=json_default)
        handle.write("\n")


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
    topology : mdtraj.Topology or None
    metadata : dict
    extra : dict of str -> ndarray
        Any further arrays stored in the file.
    """

    x: np.ndarray
    log_weights: Optional[np.ndarray] = None
    log_q: Optional[np.ndarray] = None
    reduced_energy: Optional[np.ndarray] = None
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


def save_samples(path: str, x, *, topology=None, log_weights=None, log_q=None, reduced_energy=None,
                 metadata: Optional[dict] = None, extra: Optional[dict] = None) -> None:
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
    metadata : dict, optional
        JSON-serialisable description; the boltzgen version is added.
    extra : dict of str -> array, optional
        Further arrays (e.g. an ESS trace), stored under their names.
    """
    x = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float64)
    n = x.shape[0]
    arrays = {name: _check_array(name, value, n) for name, value in
              zip(_ARRAYS, (log_weights, log_q, reduced_energy))}
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


def load_samples(path: str) -> Samples:
    """Read a sample file written by :func:`save_samples` (or any mdtraj HDF5 trajectory).

    Parameters
    ----------
    path : str or path-like
        HDF5 sample file.

    Returns
    -------
    Samples
        Positions as float64 (nm for molecules), the weight arrays (None where absent),
        topology, metadata and further arrays.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"sample file not found: {path}")
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path} is not a readable HDF5 sample file: {exc}") from None
    with handle:
        meta = json.loads(handle.attrs.get(_META_ATTR, "{}"))
        molecular = "topology" in handle and "coordinates" in handle
        if not molecular and "positions" not in handle:
            raise ValueError(f"{path} holds neither an mdtraj trajectory nor a 'positions' array")
        arrays = {name: np.asarray(handle[name], dtype=np.float64) if name in handle else None for name in _ARRAYS}
        mdtraj_nodes = {"coordinates", "topology", "time", "cell_lengths", "cell_angles", "velocities",
                        "kineticEnergy", "potentialEnergy", "temperature", "lambda"}
        skip = set(_ARRAYS) | mdtraj_nodes | {"positions"}
        extra = {name: np.asarray(handle[name]) for name in handle if name not in skip and isinstance(handle[name], h5py.Dataset)}
        x = None if molecular else np.asarray(handle["positions"], dtype=np.float64)
    topology = None
    if molecular:
        import mdtraj

        traj = mdtraj.load_hdf5(path)
        x, topology = traj.xyz.astype(np.float64), traj.topology
    return Samples(x=x, topology=topology, metadata=meta, extra=extra, **arrays)
