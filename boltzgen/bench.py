"""Benchmark helpers: throughput of the batched OpenMM energy bridge against the plain
single-Context loop, and an untrained alanine-dipeptide energy model to time network passes."""

from __future__ import annotations

import math
import os
import time
from typing import Optional

import numpy as np
import openmm
import openmm.unit as unit

from .systems.bridge import EnergyBridge, bare_getstate_seconds, create_context

__all__ = ["bench_bridge", "random_aldp_model", "random_model"]


def random_model(system: str = "aldp-vacuum", net: Optional[str] = "egnn", seed: int = 0):
    """An energy model of a built-in system with random weights, for timing its passes.

    The network's zero-initialised last layer gets N(0, 0.1²) weights too, so the energy and its
    gradient are not trivially zero.

    Parameters
    ----------
    system : str
        A built-in system (:func:`boltzgen.systems.names`): its event shape and topology.
    net : {"egnn", "e3nn", "mlp"} or None
        Network (:func:`boltzgen.nn.build_network`) at its default sizes; None: the network of the
        system's training defaults (its shipped file, else
        :func:`boltzgen.config.derived_defaults`), e.g. lj55's radius graph.
    seed : int
        Seed of ``torch.manual_seed``.

    Returns
    -------
    (target, model) : TargetSystem (closed: for its positions, shapes and topology), EnergyModel
    """
    import torch

    from .config import load_train_config
    from .energy import EnergyModel
    from .nn import build_network
    from .systems import load
    from .systems.catalog import spec

    torch.manual_seed(seed)
    target = load(system, n_workers=0) if spec(system).openmm else load(system)
    if hasattr(target, "close"):
        target.close()
    target_like = target.topology if target.topology is not None else tuple(target.event_shape)
    if net is None:
        options = load_train_config(
            system, event_shape=target.event_shape, molecular=target.topology is not None
        ).to_dict()["net"]
        network = build_network(options.pop("kind"), target_like, **options)
    else:
        network = build_network(net, target_like)
    model = EnergyModel(network, target.event_shape, sigma_data=1.0)
    with torch.no_grad():
        for p in network.final_layer.parameters():
            p.normal_(0, 0.1)
    return target, model


def random_aldp_model(net: str = "egnn", seed: int = 0):
    """:func:`random_model` of alanine dipeptide in vacuum.

    Parameters
    ----------
    net : {"egnn", "e3nn", "mlp"}
        Network (:func:`boltzgen.nn.build_network`).
    seed : int
        Seed of ``torch.manual_seed``.

    Returns
    -------
    (target, model) : TargetSystem (closed), EnergyModel
    """
    return random_model("aldp-vacuum", net, seed)


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


def bench_bridge(
    system,
    temperature,
    positions,
    *,
    batch: int = 4096,
    n_workers: Optional[int] = None,
    platform: str = "auto",
    seed: int = 0,
    noise: float = 0.01,
    rounds: int = 5,
) -> dict:
    """Measure :class:`~boltzgen.systems.bridge.EnergyBridge` throughput against its limits.

    The batch is ``positions`` plus Gaussian noise. In one run this measures the plain
    single-Context loop (setPositions, getState, unit-stripped energy and forces per
    configuration); the bare ``getState`` rate (energy and forces, positions set once, as many
    calls as the batch has configurations), both on one Context in this process while the other
    cores idle and in every worker at the same time; and ``EnergyBridge.evaluate`` on the whole
    batch. After one warm-up of each (the bridge's starts its pool), the measurements run in
    ``rounds`` interleaved rounds and the best round of each is reported (for the bridge the
    mean too). All Contexts use the platform the bridge chose, set up as the bridge sets up its
    own (CPU: one thread).

    The limit is ``n_cores`` x the bare ``getState`` rate per core measured with all workers
    timing at once: on a shared or virtual machine one core alone often runs faster than each
    core does while all are busy (turbo, a host hyper-thread sibling, memory bandwidth), a rate
    that no parallel evaluator can reach on every core at once. The single-Context figure and the
    fraction of the limit built from it are reported as well.

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
        Rates in configurations per second (best rounds): ``plain_loop_per_s``,
        ``bare_getstate_per_s`` (one Context, other cores idle), ``bare_getstate_concurrent_per_s``
        (per core, all workers at once), ``bridge_per_s`` and ``bridge_mean_per_s`` (mean over
        rounds); ``limit_per_s`` = ``n_cores`` x ``bare_getstate_concurrent_per_s`` and
        ``fraction_of_limit``; ``single_context_limit_per_s`` = ``n_cores`` x
        ``bare_getstate_per_s`` and ``fraction_of_single_context_limit``;
        ``speedup_vs_plain_loop``; ``max_abs_energy_diff_vs_plain`` (reduced units, kT),
        ``max_rel_energy_diff_vs_plain``, ``max_abs_force_diff_vs_plain`` (kT/nm); ``n_cores``,
        ``n_workers``, ``platform``, ``batch``, ``n_atoms``, ``rounds`` (per-round rates) and
        ``timing`` (how the rates were measured).
    """
    if hasattr(positions, "detach"):
        positions = positions.detach().cpu().numpy()
    positions = np.asarray(positions, dtype=np.float64)
    if isinstance(batch, bool) or int(batch) != batch or batch < 1:
        raise ValueError(f"batch must be a whole number of configurations >= 1, got {batch}")
    from .guards import check_memory

    # the configurations, two sets of forces, the bridge's shared copies: about eight arrays
    check_memory(
        8 * 8 * int(batch) * positions.size,
        f"{batch} configurations of {positions.shape[0]} atoms",
        "a smaller --batch",
    )
    rng = np.random.default_rng(seed)
    x = positions[None] + noise * rng.standard_normal((batch,) + positions.shape)

    with EnergyBridge(system, temperature, platform=platform, n_workers=n_workers) as bridge:
        context = create_context(bridge.system, bridge.platform_name)
        _plain_loop(context, x[: min(batch, 64)])  # warm-up
        u, f = bridge.evaluate(x)  # warm-up; starts the pool
        bridge.bare_getstate_seconds(positions, calls=16)  # warm-up
        start = time.perf_counter()
        bridge.evaluate(x)
        # Repeat the batch within a round so that a bridge round lasts about 0.2 s, like the
        # single-Context rounds: one 50 ms window is at the mercy of a single scheduler hiccup.
        bridge_calls = max(1, min(16, math.ceil(0.2 / (time.perf_counter() - start))))
        plain_times, bare_times, concurrent_times, bridge_times = [], [], [], []
        for _ in range(rounds):  # interleaved, so that a burst of other load hits all of them alike
            start = time.perf_counter()
            plain_energy, plain_force = _plain_loop(context, x)
            plain_times.append(time.perf_counter() - start)
            bare_times.append(bare_getstate_seconds(context, positions, calls=batch))
            concurrent_times.append(float(np.mean(bridge.bare_getstate_seconds(positions, calls=batch))))
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
    concurrent_per_s = 1.0 / min(concurrent_times)
    bridge_per_s = batch / min(bridge_times)
    limit_per_s = n_cores * concurrent_per_s
    single_limit_per_s = n_cores * bare_per_s
    plain_u = plain_energy * beta
    return {
        "platform": platform_name,
        "n_atoms": int(positions.shape[0]),
        "batch": int(batch),
        "n_cores": n_cores,
        "n_workers": n_workers_used,
        "plain_loop_per_s": plain_per_s,
        "bare_getstate_per_s": bare_per_s,
        "bare_getstate_concurrent_per_s": concurrent_per_s,
        "bridge_per_s": bridge_per_s,
        "bridge_mean_per_s": batch / float(np.mean(bridge_times)),
        "timing": f"best of {rounds} interleaved rounds of each measurement, after one warm-up call of each "
        f"(pool start excluded); a bridge round is {bridge_calls} calls on the batch; the concurrent "
        "bare getState rate is the mean over the workers of their rates, all timed at once; "
        "bridge_mean_per_s is the mean over the rounds",
        "rounds": {
            "plain_loop_per_s": [batch / t for t in plain_times],
            "bare_getstate_per_s": [1.0 / t for t in bare_times],
            "bare_getstate_concurrent_per_s": [1.0 / t for t in concurrent_times],
            "bridge_per_s": [batch / t for t in bridge_times],
        },
        "limit_per_s": limit_per_s,
        "speedup_vs_plain_loop": bridge_per_s / plain_per_s,
        "fraction_of_limit": bridge_per_s / limit_per_s,
        "single_context_limit_per_s": single_limit_per_s,
        "fraction_of_single_context_limit": bridge_per_s / single_limit_per_s,
        "max_abs_energy_diff_vs_plain": float(np.max(np.abs(u - plain_u))),
        "max_rel_energy_diff_vs_plain": float(np.max(np.abs(u - plain_u) / np.maximum(np.abs(plain_u), 1e-300))),
        "max_abs_force_diff_vs_plain": float(np.max(np.abs(f - plain_force * beta))),
    }
