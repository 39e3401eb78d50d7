"""Reweighting a sample file against a target: the workflow behind ``boltzgen reweight``.

Given samples x_i with known proposal log-density log q(x_i), the target's reduced energies
u(x_i) give importance log-weights log w_i = −u(x_i) − log q(x_i) (:mod:`boltzgen.weights`).
:func:`reweight_samples` checks that the samples belong to the target (atom count, element and
atom-name order, finite coordinates), evaluates the energies in float64, writes a new weighted
sample file and returns the metrics: ESS, log Z and, when the target has states
(:attr:`TargetSystem.states`, :mod:`boltzgen.states`), the free energies F_k − F_0 of its states
(for two states, as for alanine dipeptide, ΔF = F(φ > 0) − F(φ < 0)).
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch

from . import weights as W
from .analysis import state_free_energy_metrics
from .io import is_md_trajectory, load_samples, save_samples
from .units import kT_of

__all__ = ["reweight_samples", "check_compatible", "resolve_log_q", "log_q_from_energy"]

#: Configurations per energy call (keeps memory flat and drives the progress bar).
CHUNK = 4096


def _element(atom) -> str:
    return atom.element.symbol if atom.element is not None else "?"


def check_compatible(x: np.ndarray, topology, target, what: str = "the samples") -> None:
    """Raise a ValueError saying exactly how ``x`` / ``topology`` fail to match ``target``.

    Parameters
    ----------
    x : ndarray, shape (B, N, 3) or (B, D)
        Configurations.
    topology : mdtraj.Topology or None
        Topology stored with the configurations.
    target : TargetSystem
        The target; its ``event_shape`` and ``topology`` are compared.
    what : str
        How to name the configurations in error messages (default ``"the samples"``).

    Raises
    ------
    ValueError
        On a shape, atom-count or element mismatch.
    """
    name = target.name
    event = tuple(target.event_shape)
    if target.is_molecular:
        if x.ndim != 3 or x.shape[2] != 3:
            raise ValueError(
                f"{what} have shape {x.shape}, but the target {name} needs molecular configurations (B, {event[0]}, 3)"
            )
        if x.shape[1] != event[0]:
            raise ValueError(f"wrong atom count: {what} have {x.shape[1]} atoms but the target {name} has {event[0]}")
    elif tuple(x.shape[1:]) != event:
        raise ValueError(
            f"{what} have configurations of shape {tuple(x.shape[1:])} but the target {name} expects {event}"
        )
    ref = target.topology
    if topology is None or ref is None:
        return
    problems = []
    for mine, theirs in zip(topology.atoms, ref.atoms):
        e_mine, e_theirs = _element(mine), _element(theirs)
        if e_mine != e_theirs:
            problems.append(f"atom {mine.index} is {e_mine} in {what} but {e_theirs} in the target")
        elif mine.name != theirs.name:
            problems.append(f"atom {mine.index} is named {mine.name} in {what} but {theirs.name} in the target")
    if problems:
        shown = "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "")
        raise ValueError(
            f"atom order of {what} does not match the target {name} ({len(problems)} atoms differ): {shown}"
        )


def weighted_log_q(log_weights, reduced_energy) -> np.ndarray:
    """The proposal log-density (up to a constant) that weighted samples of a target stand for.

    Samples x_i with weights w_i for a target exp(−u_old) (SMC output, or an earlier reweighting)
    are, for any other target exp(−u_new) on the same coordinates, importance samples with
    log w_new = log w_i + u_old(x_i) − u_new(x_i): the same as a proposal with
    log q(x_i) = −u_old(x_i) − log w_i. The unknown constant cancels in every self-normalised
    estimate and shifts log Z only.

    Parameters
    ----------
    log_weights : array (B,)
        Log-weights of the samples for their own target (−inf: weight zero).
    reduced_energy : array (B,)
        u_old(x_i), reduced energies of that target (+inf: not evaluable).

    Returns
    -------
    numpy.ndarray, shape (B,), float64
        log q; +inf where the weight is zero (such samples keep weight zero).
    """
    lw = W.as_float64(log_weights).reshape(-1)
    u = W.as_float64(reduced_energy).reshape(-1)
    if lw.shape != u.shape:
        raise ValueError(f"log_weights {lw.shape} and reduced_energy {u.shape} differ in length")
    with np.errstate(invalid="ignore"):
        out = -u - lw
    out[~(np.isfinite(lw) & np.isfinite(u))] = np.inf
    if np.isnan(lw).any() or np.isnan(u).any():
        raise ValueError("log_weights or reduced_energy holds NaN")
    return out


def resolve_log_q(log_q, samples, samples_path: str) -> tuple[np.ndarray, str]:
    """The proposal log-density of each sample, and a description of where it came from.

    Parameters
    ----------
    log_q : array_like of shape (B,), str, path-like or None
        An array of log q; the name of an array in the sample file (``"log_q"`` or any extra
        array); a path to a ``.npy`` file; or None for the file's own ``log_q``.
    samples : Samples
        The loaded sample file.
    samples_path : str
        Its path (for messages).

    Returns
    -------
    log_q : numpy.ndarray, shape (B,), float64
        Proposal log-densities (in the units of the samples' coordinates, nm for molecules).
    source : str
        ``"file:<name>"``, ``"array"`` or the absolute path of the ``.npy`` file.

    Raises
    ------
    ValueError
        When there is no such array, the shape is not (B,), or a value is not finite.
    """
    n = len(samples)
    if log_q is None:
        if samples.log_q is None and samples.log_weights is not None and samples.reduced_energy is not None:
            return weighted_log_q(samples.log_weights, samples.reduced_energy), "file:-reduced_energy-log_weights"
        if (
            samples.log_q is None
            and samples.reduced_energy is not None
            and samples.metadata.get("command") == "simulate"
        ):
            # boltzgen simulate's frames are samples of exp(-u) of their own target: log q = -u + const
            return weighted_log_q(np.zeros(n), samples.reduced_energy), "file:-reduced_energy"
        if samples.log_q is None:
            raise ValueError(
                f"no proposal log-density: {samples_path} has no 'log_q' array (nor log_weights with reduced_energy); "
                "pass log_q (--log-q: an array, the name of an array in the file, or a .npy file)"
            )
        arr, source = samples.log_q, "file:log_q"
    elif isinstance(log_q, (str, os.PathLike)):
        key = os.fspath(log_q)
        in_file = {
            "log_q": samples.log_q,
            "log_weights": samples.log_weights,
            "reduced_energy": samples.reduced_energy,
            **samples.extra,
        }
        if key in in_file and in_file[key] is not None:
            arr, source = in_file[key], f"file:{key}"
        elif os.path.isfile(key):
            try:
                arr = np.load(key, allow_pickle=False)
            except Exception as exc:
                raise ValueError(f"cannot read log q from {key}: {exc}") from None
            if hasattr(arr, "files"):  # an .npz archive
                raise ValueError(f"{key} is an .npz archive; give a .npy file with one array of log q")
            source = os.path.abspath(key)
        else:
            names = sorted(k for k, v in in_file.items() if v is not None)
            raise ValueError(
                f"log q {key!r} is neither an array in {samples_path} (it has: "
                f"{', '.join(names) or 'no extra arrays'}) nor an existing .npy file"
            )
    else:
        arr, source = log_q, "array"
    arr = np.asarray(arr.detach().cpu().numpy() if hasattr(arr, "detach") else arr, dtype=np.float64)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"log q has shape {arr.shape} but there are {n} samples (expected ({n},))")
    if not np.isfinite(arr).all():
        idx = np.flatnonzero(~np.isfinite(arr))
        raise ValueError(f"log q is not finite at {idx.size} samples (indices {W.format_indices(idx)})")
    return arr, source


def log_q_from_energy(energy, n: int, temperature: float) -> tuple[np.ndarray, str]:
    """Proposal log-density of Boltzmann samples of a force field A from their energies U_A.

    Frames drawn from exp(−U_A / kT_A) (MD under force field A at temperature T_A) have
    log q(x) = −U_A(x) / (k_B T_A) up to a constant, which cancels in every self-normalised
    estimate and shifts log Z only.

    Parameters
    ----------
    energy : array_like of shape (B,), str or path-like
        Potential energies U_A in kJ/mol, one per frame: values, a ``.npy`` file, or a text file
        that :func:`numpy.loadtxt` reads (one number per frame).
    n : int
        Number of frames of the samples the energies belong to.
    temperature : float
        T_A in K (positive, finite).

    Returns
    -------
    log_q : numpy.ndarray, shape (B,), float64
        −U_A / kT_A with kT_A from :func:`boltzgen.units.kT_of`.
    source : str
        ``"energy:<absolute path> at <T> K"`` or ``"energy:array at <T> K"``.

    Raises
    ------
    ValueError
        For an unreadable file, a count that differs from ``n``, a non-finite energy or a
        non-positive temperature.
    """
    temperature = float(temperature)
    if not (np.isfinite(temperature) and temperature > 0.0):
        raise ValueError(
            f"proposal temperature (--proposal-temperature) must be positive (kelvin), got {temperature:g}"
        )
    kT = kT_of(temperature)
    if isinstance(energy, (str, os.PathLike)):
        path = os.fspath(energy)
        if not os.path.isfile(path):
            raise ValueError(f"proposal energy file not found: {path}")
        try:
            arr = np.load(path, allow_pickle=False) if path.endswith(".npy") else np.loadtxt(path, dtype=np.float64)
        except Exception as exc:
            raise ValueError(f"cannot read proposal energies from {path}: {exc}") from None
        name, where = f"energy file {path}", os.path.abspath(path)
    else:
        arr, name, where = energy, "proposal energies", "array"
    arr = np.asarray(arr.detach().cpu().numpy() if hasattr(arr, "detach") else arr, dtype=np.float64)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    arr = arr.reshape(-1) if arr.ndim == 0 else arr
    if arr.ndim != 1:
        raise ValueError(f"{name} has shape {arr.shape}; give one energy per frame (one number a line)")
    if arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} energies but the samples have {n} frames")
    if not np.isfinite(arr).all():
        idx = np.flatnonzero(~np.isfinite(arr))
        raise ValueError(f"{name} has non-finite energies at {idx.size} frames (indices {W.format_indices(idx)})")
    return -arr / kT, f"energy:{where} at {temperature:g} K"


def _proposal_log_q(log_q, energy, temperature, samples, samples_path: str, target) -> tuple[np.ndarray, str]:
    """log q from ``log_q`` (:func:`resolve_log_q`) or from proposal energies (:func:`log_q_from_energy`)."""
    if energy is None:
        if temperature is not None:
            raise ValueError(
                "a proposal temperature (--proposal-temperature) needs proposal energies (--log-q-from-energy)"
            )
        return resolve_log_q(log_q, samples, samples_path)
    if log_q is not None:
        raise ValueError("give log q (--log-q) or proposal energies (--log-q-from-energy), not both")
    if samples.log_q is not None:
        raise ValueError(
            f"{samples_path} already carries a 'log_q' array and proposal energies (--log-q-from-energy) "
            "were given: which one is the proposal is ambiguous; refusing"
        )
    lw = samples.log_weights
    if lw is not None and np.asarray(lw).size and not np.all(np.asarray(lw) == np.asarray(lw).reshape(-1)[0]):
        raise ValueError(
            f"{samples_path} carries unequal log_weights: its frames are not plain samples of the proposal "
            "whose energies (--log-q-from-energy) were given; refusing"
        )
    return log_q_from_energy(energy, len(samples), target.temperature if temperature is None else temperature)


def _energies(target, x: np.ndarray, progress: bool) -> np.ndarray:
    chunks = range(0, x.shape[0], CHUNK)
    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc="energies", unit="chunk", dynamic_ncols=True)
    out = []
    with torch.no_grad():
        for start in chunks:
            u = target.reduced_energy(torch.from_numpy(x[start : start + CHUNK]))
            out.append(u.detach().cpu().numpy().astype(np.float64))
    return np.concatenate(out)


def _state_metrics(target, x, lw, metadata, seed, n_bootstrap, block_size) -> dict:
    """Free energies of the target's states (:func:`boltzgen.analysis.state_free_energy_metrics`),
    or a note why there are none; never an error."""
    states = target.states
    if states is None:
        return {"states_note": f"{target.name} has no states: no free energies"}
    try:
        labels = states.assign(x)
    except Exception as exc:  # an analysis that does not apply is a note, the weights are still written
        return {"states_note": f"could not assign the states of {target.name}: {exc}"}
    if block_size is None:
        block_size = "auto" if is_md_trajectory(metadata) else 1
    out = {"states": {"name": states.name, "names": list(states.names)}}
    out.update(
        state_free_energy_metrics(lw, labels, states.names, seed=seed, n_bootstrap=n_bootstrap, block_size=block_size)
    )
    return out


def reweight_samples(
    samples_path: str,
    target,
    log_q=None,
    out_path: Optional[str] = None,
    *,
    seed: int = 0,
    n_bootstrap: int = 200,
    block_size=None,
    progress: bool = False,
    log_q_from_energy=None,
    proposal_temperature: Optional[float] = None,
) -> dict:
    """Importance-weight the samples of a file against a target and write a weighted sample file.

    Parameters
    ----------
    samples_path : str
        Sample file (:func:`boltzgen.io.save_samples` format, or any mdtraj HDF5 trajectory).
    target : TargetSystem
        Target from :func:`boltzgen.systems.resolve` / ``load``; its reduced energy is used in float64.
    log_q : array (B,), str or None
        Proposal log-density of each sample: an array; the name of an array in the file; a path
        to a ``.npy`` file; or None to use the file's ``log_q``.
    out_path : str, optional
        Where to write the weighted sample file (atomically). None writes nothing.
    seed : int
        Seed of the bootstrap errors.
    n_bootstrap : int
        Bootstrap replicates of the free-energy errors.
    block_size : int, "auto" or None
        Block length of the bootstrap (:func:`boltzgen.weights.state_free_energies`): 1 for independent
        samples, ``"auto"`` for a trajectory. None (default): ``"auto"`` for MD trajectories
        (:func:`boltzgen.io.is_md_trajectory`), else 1.
    progress : bool
        Progress bar over the energy evaluation.
    log_q_from_energy : array (B,), str or None
        Instead of ``log_q``: the proposal's potential energies U_A in kJ/mol, one per frame
        (values, a ``.npy`` file or a text file), for frames drawn from exp(−U_A / kT_A), as MD
        under another force field; then log q = −U_A / kT_A (:func:`log_q_from_energy`). Refused
        together with ``log_q``, with a file that carries ``log_q`` or with unequal log_weights.
    proposal_temperature : float, optional
        T_A in K for ``log_q_from_energy`` (default: the target's temperature); only with it.

    Returns
    -------
    dict
        ``n``, ``n_infinite_energy``, ``ess``, ``ess_fraction``, ``log_z``, ``log_z_err``; when the
        target has states, ``states`` (name and names), ``state_counts``,
        ``state_free_energies_kT`` / ``_err_kT`` (F_k − F_0 in kT), ``bootstrap_block_size`` and for
        two states ``delta_f_kT`` and ``delta_f_err_kT`` (F(names[1]) − F(names[0]); alanine
        dipeptide: F(φ > 0) − F(φ < 0); None with ``delta_f_note`` when a state has no weight);
        without states a ``states_note``; plus the system, source and output paths.

    Raises
    ------
    ValueError
        Samples that do not match the target (shape, atom count, atom order), non-finite
        coordinates, a missing or malformed log q or proposal energy, an ambiguous proposal, or all
        weights zero.
    """
    samples_path = os.fspath(samples_path)
    samples = load_samples(samples_path, topology=target.topology if target.is_molecular else None)
    x = np.asarray(samples.x, dtype=np.float64)
    n = x.shape[0]
    if n == 0:
        raise ValueError(f"{samples_path} holds no samples")
    check_compatible(x, samples.topology, target)
    bad = ~np.isfinite(x.reshape(n, -1)).all(axis=1)
    if bad.any():
        idx = np.flatnonzero(bad)
        raise ValueError(
            f"{idx.size} of {n} configurations in {samples_path} have non-finite coordinates "
            f"(indices {W.format_indices(idx)})"
        )
    lq, lq_source = _proposal_log_q(log_q, log_q_from_energy, proposal_temperature, samples, samples_path, target)

    u = _energies(target, x, progress)
    zero = np.isposinf(lq)  # weighted input with weight zero (weighted_log_q) keeps weight zero
    lw = W.log_weights(u, np.where(zero, 0.0, lq))
    lw[zero] = -np.inf
    n_inf = int(np.isinf(u).sum())
    if n_inf == n:
        raise ValueError(
            f"all {n} samples have zero weight: the target {target.name} gives +inf reduced energy "
            "for every configuration (it cannot evaluate them)"
        )
    lz = W.log_z(lw)
    metrics = {
        "system": target.name,
        "source": os.path.abspath(samples_path),
        "n": n,
        "n_infinite_energy": n_inf,
        "ess": W.ess(lw),
        "ess_fraction": W.ess_fraction(lw),
        "log_z": lz.value,
        "log_z_err": lz.error,
        "max_normalized_weight": float(W.normalized_weights(lw).max()),
        "log_q_source": lq_source,
        "seed": seed,
    }
    topology = target.topology if target.is_molecular else None
    metrics.update(_state_metrics(target, x, lw, samples.metadata, seed, n_bootstrap, block_size))
    if out_path is not None:
        meta = {
            **target.metadata(),
            "command": "reweight",
            "seed": seed,
            "source_file": os.path.abspath(samples_path),
            "source_metadata": samples.metadata,
            "log_q_source": lq_source,
            "ess": metrics["ess"],
            "log_z": metrics["log_z"],
        }
        extra = {k: v for k, v in samples.extra.items() if k not in ("log_weights", "log_q", "reduced_energy")}
        save_samples(
            out_path, x, topology=topology, log_weights=lw, log_q=lq, reduced_energy=u, metadata=meta, extra=extra
        )
        metrics["output"] = os.path.abspath(out_path)
    return metrics
