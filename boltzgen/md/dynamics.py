"""OpenMM Langevin dynamics and temperature replica exchange (in-process, one Context per replica).

Replica k runs ``LangevinMiddleIntegrator`` dynamics at T_k of a geometric ladder
T_k = T_0 (T_max / T_0)^(k / (R − 1)). Every ``exchange_interval`` steps neighbouring pairs
(k, k + 1) with k even, then k odd on the next attempt, and so on, try to swap configurations
with probability min(1, exp((β_k − β_{k+1})(U_k − U_{k+1}))), β = 1/kT. A swap exchanges positions
and velocities between the two Contexts, velocities rescaled by sqrt(T_new / T_old), so Context 0
always holds the target-temperature chain. With one replica this is plain Langevin dynamics.
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import openmm
from openmm import unit

from ..units import kT_of
from .checkpoint import read_checkpoint, write_checkpoint


class SimulationUnstableError(RuntimeError):
    """The dynamics produced a non-finite energy (time step too large, a clash, a bad structure)."""


def temperature_ladder(temperature: float, t_max: float, replicas: int) -> np.ndarray:
    """Geometric temperature ladder T_k = T_0 (T_max / T_0)^(k / (R − 1)).

    Parameters
    ----------
    temperature : float
        Target (lowest) temperature T_0, in K.
    t_max : float
        Highest temperature, in K (ignored for one replica).
    replicas : int
        Number of replicas R.

    Returns
    -------
    numpy.ndarray, shape (replicas,), float64
        Temperatures in K, from ``temperature`` to ``t_max``.
    """
    if replicas == 1:
        return np.array([float(temperature)])
    return float(temperature) * (float(t_max) / float(temperature)) ** (np.arange(replicas) / (replicas - 1))


def _openmm_seed_values(sequence: np.random.SeedSequence, n: int) -> list[int]:
    """``n`` OpenMM random seeds from a SeedSequence (non-zero int32: 0 means 'random' in OpenMM)."""
    return [int(v % (2**31 - 2)) + 1 for v in sequence.generate_state(n, dtype=np.uint32)]


def _openmm_seeds(seed: int, replicas: int) -> tuple[list[int], list[int], np.random.Generator]:
    """Integrator seeds, velocity seeds and the numpy Generator of the exchange decisions, all
    derived from ``seed``."""
    to_seed = _openmm_seed_values(np.random.SeedSequence(seed), 2 * replicas)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    return to_seed[:replicas], to_seed[replicas:], rng


class ReplicaSet:
    """One OpenMM Context per temperature, stepped one after another or in parallel threads.

    Parameters
    ----------
    system : openmm.System
    temperatures : array (R,)
        K.
    timestep : float
        fs.
    friction : float
        1/ps.
    platform : str
        OpenMM platform name ("Reference", "CPU", ...).
    threads : int, optional
        ``Threads`` property of the CPU platform.
    integrator_seeds : list of int
        Random seed of each replica's integrator.
    workers : int
        Threads that step the replicas at once (OpenMM releases the GIL while it integrates).
        On the CPU (and GPU) platforms each replica's trajectory depends only on its own
        integrator and seed, so any number gives the same frames. The Reference platform draws
        its random numbers from one generator shared by all contexts of the process, so there
        parallel stepping would race on it and change the frames: its replicas are always
        stepped one after another.
    """

    def __init__(
        self,
        system: openmm.System,
        temperatures,
        timestep: float,
        friction: float,
        platform: str,
        threads: Optional[int],
        integrator_seeds,
        workers: int = 1,
    ):
        try:
            plat = openmm.Platform.getPlatformByName(platform)
        except Exception:
            names = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
            raise ValueError(f"unknown OpenMM platform {platform!r}; available: {', '.join(names)}") from None
        properties = {}
        if threads is not None:
            if platform != "CPU":
                raise ValueError(f"threads applies to the CPU platform only, not {platform!r}")
            properties["Threads"] = str(int(threads))
        self.temperatures = np.asarray(temperatures, dtype=np.float64)
        self.betas = 1.0 / np.array([kT_of(t) for t in self.temperatures])
        self.integrators, self.contexts = [], []
        for temp, seed in zip(self.temperatures, integrator_seeds):
            integrator = openmm.LangevinMiddleIntegrator(
                temp * unit.kelvin, friction / unit.picosecond, timestep * unit.femtosecond
            )
            integrator.setRandomNumberSeed(int(seed))
            self.integrators.append(integrator)
            self.contexts.append(openmm.Context(system, integrator, plat, properties))
        workers = 1 if platform == "Reference" else min(int(workers), len(self.contexts))
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="replica") if workers > 1 else None

    def close(self) -> None:
        """Stop the stepping threads (the contexts stay usable, stepped one after another)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __len__(self) -> int:
        return len(self.contexts)

    def start(self, positions: np.ndarray, minimize: bool, velocity_seeds) -> None:
        """Set start positions, minimise once (on replica 0) and draw Maxwell velocities.

        Parameters
        ----------
        positions : numpy.ndarray, shape (N, 3)
            Start configuration, in nm (the same for every replica).
        minimize : bool
            Run OpenMM's local energy minimiser on replica 0 first; all replicas start from
            its result.
        velocity_seeds : sequence of int
            Seed of each replica's Maxwell–Boltzmann velocities (at its own temperature).
        """
        self.contexts[0].setPositions(positions * unit.nanometer)
        if minimize:
            openmm.LocalEnergyMinimizer.minimize(self.contexts[0])
            positions = (
                self.contexts[0].getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
            )
        for context, temp, seed in zip(self.contexts, self.temperatures, velocity_seeds):
            context.setPositions(positions * unit.nanometer)
            context.setVelocitiesToTemperature(temp * unit.kelvin, int(seed))

    def step(self, n: int) -> None:
        """Advance every replica by ``n`` integrator steps (in the worker threads, if any).

        Parameters
        ----------
        n : int
            Number of steps (of ``timestep`` fs each).
        """
        if self._pool is None:
            for integrator in self.integrators:
                integrator.step(int(n))
        else:
            list(self._pool.map(lambda integrator: integrator.step(int(n)), self.integrators))

    def potential_energies(self) -> np.ndarray:
        """Potential energy of every replica.

        Returns
        -------
        numpy.ndarray, shape (R,), float64
            U in kJ/mol; +inf where not finite.
        """
        u = np.array(
            [
                c.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
                for c in self.contexts
            ],
            dtype=np.float64,
        )
        return np.where(np.isfinite(u), u, np.inf)

    def positions(self, k: int) -> np.ndarray:
        """Positions of one replica.

        Parameters
        ----------
        k : int
            Replica index (0 is the target temperature).

        Returns
        -------
        numpy.ndarray, shape (N, 3), float64
            Positions in nm.
        """
        state = self.contexts[k].getState(getPositions=True)
        return np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer), dtype=np.float64)

    def swap(self, i: int, j: int) -> None:
        """Exchange configurations of replicas i and j, rescaling velocities by sqrt(T_new/T_old).

        Parameters
        ----------
        i, j : int
            Replica indices.
        """
        si = self.contexts[i].getState(getPositions=True, getVelocities=True)
        sj = self.contexts[j].getState(getPositions=True, getVelocities=True)
        scale = math.sqrt(self.temperatures[i] / self.temperatures[j])
        self.contexts[i].setPositions(sj.getPositions(asNumpy=True))
        self.contexts[i].setVelocities(sj.getVelocities(asNumpy=True) * scale)
        self.contexts[j].setPositions(si.getPositions(asNumpy=True))
        self.contexts[j].setVelocities(si.getVelocities(asNumpy=True) / scale)

    def checkpoints(self) -> list[np.ndarray]:
        """``Context.createCheckpoint()`` of every replica as uint8 arrays.

        Returns
        -------
        list of numpy.ndarray
            One uint8 array per replica (positions, velocities, integrator RNG state).
        """
        return [np.frombuffer(c.createCheckpoint(), dtype=np.uint8).copy() for c in self.contexts]

    def load(self, checkpoints) -> None:
        """Restore every replica from :meth:`checkpoints` output.

        Parameters
        ----------
        checkpoints : sequence of array_like of uint8
            One OpenMM Context checkpoint per replica, in replica order.
        """
        for context, data in zip(self.contexts, checkpoints):
            context.loadCheckpoint(np.asarray(data, dtype=np.uint8).tobytes())


@dataclass
class MDOutput:
    """Frames of the target-temperature replica and run statistics (see :func:`run_dynamics`).

    Attributes
    ----------
    positions : numpy.ndarray, shape (n, N, 3), float64
        Saved frames of replica 0 (the target temperature), nm.
    replica_potential_energy : numpy.ndarray, shape (n, R), float64
        Potential energy (kJ/mol) of every replica at each saved frame (column 0: the target
        temperature).
    replica_positions : numpy.ndarray, shape (R, n, N, 3), or None
        Frames of every replica, nm (only with ``keep_replicas``).
    info : dict
        ``temperatures_K``, ``exchange_acceptance`` and ``exchange_attempts`` per neighbouring
        pair, ``round_trips``, ``mean_potential_energy_kJ_per_mol`` per replica, ``total_steps``,
        ``simulated_time_ps`` (ps), ``wall_time_s`` (s), ``frames_from_checkpoint``.
    """

    positions: np.ndarray
    replica_potential_energy: np.ndarray
    replica_positions: Optional[np.ndarray]
    info: dict


def _metropolis_exchange(
    replicas: ReplicaSet,
    u: np.ndarray,
    parity: int,
    rng: np.random.Generator,
    walkers: np.ndarray,
    record: bool,
    attempts: np.ndarray,
    accepted: np.ndarray,
) -> None:
    """Attempt swaps of the pairs (k, k + 1), k ≡ parity (mod 2); updates u, walkers and counts."""
    for k in range(parity, len(replicas) - 1, 2):
        log_acc = (replicas.betas[k] - replicas.betas[k + 1]) * (u[k] - u[k + 1])
        if math.isnan(log_acc):
            log_acc = -math.inf
        accept = rng.random() < math.exp(min(0.0, log_acc))
        if record:
            attempts[k] += 1
            accepted[k] += accept
        if accept:
            replicas.swap(k, k + 1)
            u[k], u[k + 1] = u[k + 1], u[k]
            walkers[k], walkers[k + 1] = walkers[k + 1], walkers[k]


def run_dynamics(
    target,
    n_samples: int,
    params: dict,
    *,
    checkpoint: Optional[str],
    checkpoint_every: int,
    callback: Optional[Callable[[int], None]],
    bar,
    workers: Optional[int] = None,
) -> MDOutput:
    """Langevin dynamics / replica exchange of an OpenMM target; see :func:`boltzgen.md.simulate`.

    ``params`` holds the resolved, validated parameters (the dict stored in the checkpoint).
    Frames are saved every ``stride`` steps after ``equilibration`` steps; the step counter
    includes equilibration, exchanges happen whenever it is a multiple of ``exchange_interval``
    (exchange statistics count only after equilibration).

    Parameters
    ----------
    target : OpenMMTarget
        Its ``system`` is simulated from ``target.positions`` (nm).
    n_samples : int
        Number of frames to return.
    params : dict
        Resolved parameters: ``temperature`` and ``t_max`` (K), ``replicas``, ``timestep`` (fs),
        ``friction`` (1/ps), ``platform``, ``threads``, ``seed``, ``minimize``,
        ``equilibration``, ``stride`` and ``exchange_interval`` (steps), ``keep_replicas``.
    checkpoint : str or None
        Checkpoint file to resume from and write to (``None``: no checkpointing).
    checkpoint_every : int
        Write the checkpoint after this many new frames (and at the end).
    callback : callable(int), optional
        Called with the number of frames after each saved frame.
    bar : tqdm-like
        Progress bar (``update``, ``set_description``).
    workers : int, optional
        Threads stepping the replicas at once (default: one per core, at most one per replica).
        The frames do not depend on it.

    Returns
    -------
    MDOutput

    Raises
    ------
    RuntimeError
        When a replica's energy becomes non-finite (unstable integration).
    """
    temps = temperature_ladder(params["temperature"], params["t_max"], params["replicas"])
    n_rep = len(temps)
    int_seeds, vel_seeds, rng = _openmm_seeds(params["seed"], n_rep)
    workers = (os.cpu_count() or 1) if workers is None else workers  # ReplicaSet caps it at n_rep
    replicas = ReplicaSet(
        target.system,
        temps,
        params["timestep"],
        params["friction"],
        params["platform"],
        params["threads"],
        int_seeds,
        workers=workers,
    )
    try:
        return _run_replicas(
            target, n_samples, params, replicas, temps, rng, vel_seeds, checkpoint, checkpoint_every, callback, bar
        )
    finally:
        replicas.close()


def _run_replicas(
    target, n_samples, params, replicas, temps, rng, vel_seeds, checkpoint, checkpoint_every, callback, bar
):
    n_rep = len(temps)
    eq, stride, interval = params["equilibration"], params["stride"], params["exchange_interval"]
    keep = params["keep_replicas"]

    loaded = read_checkpoint(checkpoint, params) if checkpoint else None
    if loaded is None:
        replicas.start(target.positions.detach().cpu().numpy().astype(np.float64), params["minimize"], vel_seeds)
        step, wall_before, round_trips = 0, 0.0, 0
        frames, energies, replica_frames = [], [], [[] for _ in range(n_rep)]
        walkers, last_end = np.arange(n_rep), np.full(n_rep, -1)
        attempts, accepted = np.zeros(max(n_rep - 1, 0), np.int64), np.zeros(max(n_rep - 1, 0), np.int64)
    else:
        state, arrays = loaded
        replicas.load([arrays[f"context_{k}"] for k in range(n_rep)])
        rng.bit_generator.state = state["rng_state"]
        step, wall_before, round_trips = state["step"], state["wall_time_s"], state["round_trips"]
        frames, energies = list(arrays["positions"]), list(arrays["replica_potential_energy"])
        replica_frames = [list(arrays[f"replica_positions_{k}"]) if keep else [] for k in range(n_rep)]
        walkers, last_end = arrays["walkers"].copy(), arrays["walker_last_end"].copy()
        attempts, accepted = arrays["exchange_attempts"].copy(), arrays["exchange_accepted"].copy()
    resumed_frames = len(frames)
    t0 = time.perf_counter()

    def save_state():
        arrays = {f"context_{k}": data for k, data in enumerate(replicas.checkpoints())}
        arrays.update(
            positions=np.asarray(frames, dtype=np.float64).reshape((-1,) + tuple(target.event_shape)),
            replica_potential_energy=np.asarray(energies, dtype=np.float64).reshape(-1, n_rep),
            walkers=walkers,
            walker_last_end=last_end,
            exchange_attempts=attempts,
            exchange_accepted=accepted,
        )
        if keep:
            for k in range(n_rep):
                arrays[f"replica_positions_{k}"] = np.asarray(replica_frames[k], dtype=np.float64).reshape(
                    (-1,) + tuple(target.event_shape)
                )
        state = {
            "step": step,
            "wall_time_s": wall_before + time.perf_counter() - t0,
            "rng_state": rng.bit_generator.state,
            "round_trips": round_trips,
        }
        write_checkpoint(checkpoint, params, state, arrays)

    bar.update(min(len(frames), n_samples))
    last_saved = len(frames)
    while len(frames) < n_samples:
        next_frame = eq + (len(frames) + 1) * stride
        next_exchange = (step // interval + 1) * interval if n_rep > 1 else next_frame
        target_step = min(next_frame, next_exchange)
        if step < eq:
            bar.set_description(f"equilibrating {step}/{eq} steps")
        replicas.step(target_step - step)
        step = target_step
        frame_now = step == next_frame
        if frame_now or (n_rep > 1 and step % interval == 0):
            u = replicas.potential_energies()
            if not np.isfinite(u).all():
                bad = [f"{t:.1f} K" for t, ok in zip(temps, np.isfinite(u)) if not ok]
                raise SimulationUnstableError(
                    f"the simulation became unstable (non-finite energy at {', '.join(bad)}) at step "
                    f"{step}; use a smaller timestep (now {params['timestep']} fs) or a lower t_max"
                )
        if frame_now:
            bar.set_description("sampling")
            frames.append(replicas.positions(0))
            energies.append(u.copy())
            if keep:
                for k in range(n_rep):
                    replica_frames[k].append(replicas.positions(k))
        if n_rep > 1 and step % interval == 0:
            _metropolis_exchange(replicas, u, (step // interval) % 2, rng, walkers, step > eq, attempts, accepted)
            for end, k in ((0, 0), (1, n_rep - 1)):
                walker = walkers[k]
                if end == 0 and last_end[walker] == 1:
                    round_trips += 1
                last_end[walker] = end
        if frame_now:
            bar.update(1)
            if checkpoint and (len(frames) - last_saved >= checkpoint_every or len(frames) == n_samples):
                save_state()
                last_saved = len(frames)
            if callback is not None:
                callback(len(frames))
    if checkpoint and last_saved != len(frames):
        save_state()
    wall = wall_before + time.perf_counter() - t0

    energies_arr = np.asarray(energies, dtype=np.float64).reshape(-1, n_rep)[:n_samples]
    positions = np.asarray(frames, dtype=np.float64).reshape((-1,) + tuple(target.event_shape))[:n_samples]
    replica_positions = None
    if keep:
        replica_positions = np.stack(
            [
                np.asarray(f, dtype=np.float64).reshape((-1,) + tuple(target.event_shape))[:n_samples]
                for f in replica_frames
            ]
        )
    acc = np.where(attempts > 0, accepted / np.maximum(attempts, 1), np.nan)
    info = {
        "temperatures_K": temps.tolist(),
        "exchange_acceptance": [None if math.isnan(a) else float(a) for a in acc],
        "exchange_attempts": attempts.tolist(),
        "round_trips": int(round_trips),
        "mean_potential_energy_kJ_per_mol": energies_arr.mean(axis=0).tolist() if len(energies_arr) else None,
        "total_steps": int(step),
        "simulated_time_ps": float(step * params["timestep"] / 1000.0),
        "wall_time_s": float(wall),
        "frames_from_checkpoint": int(resumed_frames),
    }
    return MDOutput(positions, energies_arr, replica_positions, info)


#: Frames per quench chunk. Each chunk has its own Context and random streams (its seeds derive
#: from the seed and the chunk's index), so the quenched frames do not depend on how many
#: processes share the chunks.
QUENCH_CHUNK = 500


def quench(
    system: openmm.System,
    positions: np.ndarray,
    temperature: float,
    *,
    time_ps: float,
    friction: float = 10.0,
    timestep: float = 1.0,
    minimize: bool = True,
    platform: str = "Reference",
    seed: int = 0,
    processes: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Relax configurations to a temperature: minimise locally, then run short Langevin dynamics.

    Frames of hot replicas visit rare states (for alanine dipeptide, φ > 0) far more often than
    the target-temperature chain, but their bonds and angles are hot. Quenching each frame keeps
    its basin (the minimiser goes downhill, and ``time_ps`` is far shorter than a basin's
    lifetime) and gives it the local geometry of ``temperature``: the training data then cover
    the rare states at the target's local temperature. The result is not a Boltzmann sample of
    any temperature (the basins keep the hot replicas' populations); it is data for a proposal
    that importance weights correct.

    The frames are quenched in chunks of :data:`QUENCH_CHUNK`, each with its own Context and
    seeds, in ``processes`` worker processes (started with ``spawn``, without re-running the
    caller's script; the result does not depend on their number).

    Parameters
    ----------
    system : openmm.System
        The force field (no constraints are added).
    positions : numpy.ndarray, shape (B, N, 3)
        Configurations, nm.
    temperature : float
        Temperature to relax to, K.
    time_ps : float
        Langevin dynamics after the minimisation, ps (> 0).
    friction : float
        Langevin friction, 1/ps (default 10: velocities and the fast modes equilibrate within
        about 0.2 ps).
    timestep : float
        Time step, fs.
    minimize : bool
        Run OpenMM's local energy minimiser first (tolerance 1 kJ/mol/nm, at most 200
        iterations).
    platform : str
        OpenMM platform name.
    seed : int
        Seed of the integrators and of each frame's Maxwell–Boltzmann velocities.
    processes : int
        Worker processes (1: in this process; at most one per chunk are started).

    Returns
    -------
    positions : numpy.ndarray, shape (B, N, 3), float64
        Quenched configurations, nm.
    potential_energy : numpy.ndarray, shape (B,), float64
        Their potential energies, kJ/mol.

    Raises
    ------
    ValueError
        If ``time_ps``, ``friction`` or ``processes`` is not positive, or the shapes do not match
        the system.
    RuntimeError
        If a quenched frame's energy is not finite.
    """
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim != 3 or positions.shape[1:] != (system.getNumParticles(), 3):
        raise ValueError(f"positions must have shape (B, {system.getNumParticles()}, 3), got {positions.shape}")
    if not time_ps > 0 or not friction > 0:
        raise ValueError(f"quench time and friction must be positive, got {time_ps} ps and {friction}/ps")
    if isinstance(processes, bool) or int(processes) != processes or processes < 1:
        raise ValueError(f"quench processes must be a positive integer, got {processes!r}")
    job = dict(
        temperature=float(temperature),
        n_steps=max(1, int(round(time_ps * 1000.0 / timestep))),
        friction=float(friction),
        timestep=float(timestep),
        minimize=bool(minimize),
        platform=platform,
        seed=int(seed),
    )
    starts = range(0, len(positions), QUENCH_CHUNK)
    chunks = [(c, positions[a : a + QUENCH_CHUNK]) for c, a in enumerate(starts)]
    workers = min(int(processes), len(chunks))
    if workers <= 1:
        done = [quench_chunk(system, x, index=c, **job) for c, x in chunks]
    else:
        from ..guards import map_in_processes

        xml = openmm.XmlSerializer.serialize(system)
        done = map_in_processes(_quench_chunk_in_process, [(xml, x, c, job) for c, x in chunks], workers)
    out = np.concatenate([d[0] for d in done]) if done else np.empty_like(positions)
    energy = np.concatenate([d[1] for d in done]) if done else np.empty(0)
    bad = np.flatnonzero(~np.isfinite(energy))
    if len(bad):
        raise RuntimeError(f"frame {bad[0]} has a non-finite energy after quenching; use a smaller timestep")
    return out, energy


def quench_chunk(
    system: openmm.System,
    positions: np.ndarray,
    *,
    index: int,
    temperature: float,
    n_steps: int,
    friction: float,
    timestep: float,
    minimize: bool,
    platform: str,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Quench one chunk of :func:`quench` in this process (its own Context and seeds).

    Parameters
    ----------
    system : openmm.System
    positions : numpy.ndarray, shape (b, N, 3)
        The chunk's configurations, nm.
    index : int
        The chunk's index: its seeds derive from ``seed`` and it.
    temperature : float
        K.
    n_steps : int
        Langevin steps after the minimisation.
    friction, timestep, minimize, platform, seed
        As for :func:`quench` (1/ps, fs).

    Returns
    -------
    positions : numpy.ndarray, shape (b, N, 3), float64
        nm.
    potential_energy : numpy.ndarray, shape (b,), float64
        kJ/mol; non-finite where the dynamics failed.
    """
    integrator = openmm.LangevinMiddleIntegrator(
        temperature * unit.kelvin, friction / unit.picosecond, timestep * unit.femtosecond
    )
    # a stream of its own: the replica-exchange run of the same seed uses spawn keys () and (1,)
    to_seed = _openmm_seed_values(np.random.SeedSequence(seed, spawn_key=(2, int(index))), len(positions) + 1)
    integrator.setRandomNumberSeed(to_seed[0])
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName(platform))
    out = np.empty_like(positions)
    energy = np.empty(len(positions))
    for i, x in enumerate(positions):
        context.setPositions(x * unit.nanometer)
        if minimize:
            openmm.LocalEnergyMinimizer.minimize(context, 1.0, 200)
        context.setVelocitiesToTemperature(temperature * unit.kelvin, to_seed[i + 1])
        integrator.step(n_steps)
        state = context.getState(getPositions=True, getEnergy=True)
        out[i] = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        energy[i] = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        if not np.isfinite(energy[i]):
            energy[i + 1 :] = np.nan
            break
    return out, energy


def _quench_chunk_in_process(xml: str, positions: np.ndarray, index: int, job: dict):
    """:func:`quench_chunk` in a worker process, the system sent as its XML."""
    from ..guards import die_with_parent

    die_with_parent()
    return quench_chunk(openmm.XmlSerializer.deserialize(xml), positions, index=index, **job)
