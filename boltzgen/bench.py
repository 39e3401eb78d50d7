"""Throughput benchmark of the batched OpenMM energy bridge against the plain single-Context loop."""

from __future__ import annotations

import math
import os
import time
from typing import Optional

import numpy as np
import openmm
import openmm.unit as unit

from .systems.bridge import EnergyBridge, create_context

__all__ = ["bench_bridge"]


def _plain_loop(context: openmm.Context, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The loop users write: energies (B,) kJ/mol and forces (B, N, 3) kJ/(mol nm) of ``x`` (B, N, 3) nm."""
    energy = np.empty(len(x))
    force = np.empty_like(x)
    for i in range(len(x)):
        context.setPositions(x[i])
        state = context.getState(getEnergy=True, getForces=True)
        energy[i] = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        force[i] = state.getForces(asNumpy=True)._value
    return energy, force


def _bare_getstate_seconds(context: openmm.Context, positions: np.ndarray, calls: int) -> float:
    """Seconds per bare ``getState(getEnergy=True, getForces=True)`` call, positions set once."""
    context.setPositions(positions)
    context.getState(getEnergy=True, getForces=True)  # warm-up
    start = time.perf_counter()
    for _ in range(calls):
        context.getState(getEnergy=True, getForces=True)
    return (time.perf_counter() - start) / calls


def bench_bridge(system, temperature, positions, *, batch: int = 4096, n_workers: Optional[int] = None,
                 platform: str = "auto", seed: int = 0, noise: float = 0.01, rounds: int = 3) -> dict:
    """Measure :class:`~boltzgen.systems.bridge.EnergyBridge` throughput against its limits.

    The batch is ``positions`` plus Gaussian noise. In one run this measures the plain
    single-Context loop (setPositions, getState, unit-stripped energy and forces per
    configuration), the bare ``getState`` rate on one Context (positions set once, as many calls
    as the batch has configurations), and ``EnergyBridge.evaluate`` on the whole batch. After one
    warm-up of each (the bridge's starts its pool), the three are measured in ``rounds``
    interleaved rounds and the best round of each is reported (for the bridge the mean too).
    All Contexts use the platform the bridge chose, set up as the bridge sets up its own (CPU:
    one thread).

    Parameters
    ----------
    system : openmm.System or str
        The system (or its XML serialization).
    temperature : float
        Temperature in K.
    positions : array-like, shape (N, 3)
        Reference configuration in nm (NumPy array or torch tensor).
    batch : int
        Configurations per evaluation.
    n_workers : int, optional
        Worker processes of the bridge (default ``os.cpu_count()``).
    platform : str
        Platform for the bridge ("auto" or an OpenMM platform name); the loops use the same.
    seed : int
        Seed of the NumPy generator drawing the noise.
    noise : float
        Standard deviation of the Gaussian noise in nm.
    rounds : int
        Interleaved measurement rounds (best round reported).

    Returns
    -------
    dict
        ``plain_loop_per_s``, ``bare_getstate_per_s``, ``bridge_per_s`` (best rounds) and
        ``bridge_mean_per_s`` (mean over rounds) in configurations per second;
        ``limit_per_s`` = ``n_cores`` x ``bare_getstate_per_s``; ``speedup_vs_plain_loop``, ``fraction_of_limit``;
        ``max_abs_energy_diff_vs_plain`` (reduced units, kT) and ``max_rel_energy_diff_vs_plain``,
        ``max_abs_force_diff_vs_plain`` (kT/nm); ``n_cores``, ``n_workers``, ``platform``,
        ``batch``, ``n_atoms``, ``timing`` (how the rates were measured).
    """
    if hasattr(positions, "detach"):
        positions = positions.detach().cpu().numpy()
    positions = np.asarray(positions, dtype=np.float64)
    rng = np.random.default_rng(seed)
    x = positions[None] + noise * rng.standard_normal((batch,) + positions.shape)

    with EnergyBridge(system, temperature, platform=platform, n_workers=n_workers) as bridge:
        context = create_context(bridge.system, bridge.platform_name)
        _plain_loop(context, x[: min(batch, 64)])  # warm-up
        u, f = bridge.evaluate(x)  # warm-up; starts the pool
        start = time.perf_counter()
        bridge.evaluate(x)
        # Repeat the batch within a round so that a bridge round lasts about 0.2 s, like the
        # single-Context rounds: one 50 ms window is at the mercy of a single scheduler hiccup.
        bridge_calls = max(1, min(16, math.ceil(0.2 / (time.perf_counter() - start))))
        plain_times, bare_times, bridge_times = [], [], []
        for _ in range(rounds):  # interleaved, so that a burst of other load hits all three alike
            start = time.perf_counter()
            plain_energy, plain_force = _plain_loop(context, x)
            plain_times.append(time.perf_counter() - start)
            bare_times.append(_bare_getstate_seconds(context, positions, calls=batch))
            start = time.perf_counter()
            for _ in range(bridge_calls):  # a window as long as the single-Context measurements
                u, f = bridge.evaluate(x)
            bridge_times.append((time.perf_counter() - start) / bridge_calls)
        n_workers_used = bridge.n_workers
        platform_name = bridge.platform_name
        beta = 1.0 / bridge.kT

    n_cores = os.cpu_count() or 1
    plain_per_s = batch / min(plain_times)
    bare_per_s = 1.0 / min(bare_times)
    bridge_per_s = batch / min(bridge_times)
    limit_per_s = n_cores * bare_per_s
    plain_u = plain_energy * beta
    return {
        "platform": platform_name,
        "n_atoms": int(positions.shape[0]),
        "batch": int(batch),
        "n_cores": n_cores,
        "n_workers": n_workers_used,
        "plain_loop_per_s": plain_per_s,
        "bare_getstate_per_s": bare_per_s,
        "bridge_per_s": bridge_per_s,
        "bridge_mean_per_s": batch / float(np.mean(bridge_times)),
        "timing": f"best of {rounds} interleaved rounds of each measurement, after one warm-up call of each "
                  f"(pool start excluded); a bridge round is {bridge_calls} calls on the batch; "
                  "bridge_mean_per_s is the mean over the rounds",
        "limit_per_s": limit_per_s,
        "speedup_vs_plain_loop": bridge_per_s / plain_per_s,
        "fraction_of_limit": bridge_per_s / limit_per_s,
        "max_abs_energy_diff_vs_plain": float(np.max(np.abs(u - plain_u))),
        "max_rel_energy_diff_vs_plain": float(np.max(np.abs(u - plain_u) / np.maximum(np.abs(plain_u), 1e-300))),
        "max_abs_force_diff_vs_plain": float(np.max(np.abs(f - plain_force * beta))),
    }
