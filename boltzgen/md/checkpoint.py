"""Resumable simulation state: one ``.npz`` file (no pickle), written atomically.

A checkpoint holds the run parameters (JSON), a JSON dict of scalar state (step counter, RNG
states, wall time, ...) and named numpy arrays (configurations, energies, OpenMM context
checkpoints as uint8 arrays, torch generator state, ...). It is always written to a temporary
file and renamed (:func:`boltzgen.io.atomic_path`), so a crash leaves either the previous or the
new checkpoint, never a broken one.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from ..io import atomic_path, json_default

FORMAT = "boltzgen-simulate-checkpoint-v1"

#: Parameters that may differ between a run and its continuation.
RESUMABLE_CHANGES = ("n_samples",)


def _canonical(obj):
    """JSON round trip, so that tuples, numpy scalars etc. compare equal to what was stored."""
    return json.loads(json.dumps(obj, sort_keys=True, default=json_default))


def write_checkpoint(path: str, parameters: dict, state: dict, arrays: dict) -> None:
    """Write a checkpoint atomically.

    Parameters
    ----------
    path : str
        Checkpoint file (npz format whatever the extension).
    parameters : dict
        JSON-serialisable run parameters (checked on resume).
    state : dict
        JSON-serialisable scalar state.
    arrays : dict of str -> ndarray
        Numeric arrays (no object arrays).
    """
    payload = {
        "format": np.array(FORMAT),
        "parameters": np.array(json.dumps(_canonical(parameters), sort_keys=True)),
        "state": np.array(json.dumps(state, sort_keys=True, default=json_default)),
    }
    for name, value in arrays.items():
        if name in payload:
            raise ValueError(f"checkpoint array name {name!r} is reserved")
        arr = np.asarray(value)
        if arr.dtype == object:
            raise TypeError(f"checkpoint array {name!r} has dtype object")
        payload[name] = arr
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **payload)


def parameter_mismatch(stored: dict, current: dict) -> list[str]:
    """Human-readable differences between stored and current parameters (``n_samples`` excepted).

    Parameters
    ----------
    stored : dict
        Parameters read from a checkpoint (already JSON-canonical).
    current : dict
        Parameters of the current run (compared after a JSON round trip).

    Returns
    -------
    list of str
        One ``"key: old in the checkpoint, new now"`` line per differing key; empty when the run
        can resume.
    """
    current = _canonical(current)
    problems = []
    for key in sorted(set(stored) | set(current)):
        if key in RESUMABLE_CHANGES:
            continue
        old, new = stored.get(key, "<absent>"), current.get(key, "<absent>")
        if old != new:
            problems.append(f"{key}: {old!r} in the checkpoint, {new!r} now")
    return problems


def read_checkpoint(path: str, parameters: dict) -> Optional[tuple[dict, dict]]:
    """Load a checkpoint written with the same ``parameters``.

    Parameters
    ----------
    path : str or path-like
        Checkpoint file.
    parameters : dict
        Parameters of the current run; must match the stored ones (``n_samples`` may differ).

    Returns
    -------
    (state, arrays) or None
        ``None`` when ``path`` does not exist (a fresh run).

    Raises
    ------
    ValueError
        If the file is not a checkpoint of this kind, or its parameters differ (the message names
        every mismatching parameter).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            contents = {name: data[name] for name in data.files}
    except Exception as exc:
        raise ValueError(f"{path} is not a readable boltzgen simulation checkpoint: {exc}") from None
    if "format" not in contents or str(contents["format"]) != FORMAT:
        raise ValueError(f"{path} is not a boltzgen simulation checkpoint ({FORMAT})")
    stored = json.loads(str(contents.pop("parameters")))
    problems = parameter_mismatch(stored, parameters)
    if problems:
        raise ValueError(
            f"checkpoint {path} was written by a run with different parameters; "
            + "; ".join(problems)
            + ". Use the same parameters to resume, or another checkpoint path to start afresh."
        )
    contents.pop("format")
    state = json.loads(str(contents.pop("state")))
    have = frames_in(contents)
    wanted = parameters.get("n_samples")
    chains = (
        int(np.asarray(contents["samples"]).shape[1])
        if "samples" in contents and np.ndim(contents["samples"]) >= 2
        else 1
    )
    limit = None if wanted is None else -(-int(wanted) // max(chains, 1)) * max(chains, 1)  # MCMC saves whole rounds
    if limit is not None and have > limit:
        raise ValueError(
            f"checkpoint {path} already holds {have} frames, more than the {int(wanted)} asked for; rerun with "
            f"-n {have} or more to keep them (nothing was deleted), or remove the checkpoint to start afresh"
        )
    return state, contents


def frames_in(arrays: dict) -> int:
    """How many frames a checkpoint's arrays hold (MD: ``positions``; MCMC: ``samples`` of all chains).

    Parameters
    ----------
    arrays : dict of str -> ndarray
        The arrays of :func:`read_checkpoint`.

    Returns
    -------
    int
    """
    if "positions" in arrays:
        return int(np.asarray(arrays["positions"]).shape[0])
    if "samples" in arrays:
        samples = np.asarray(arrays["samples"])
        return int(samples.shape[0] * samples.shape[1]) if samples.ndim >= 2 else 0
    return 0
