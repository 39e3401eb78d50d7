"""Batched OpenMM energies and forces over a pool of worker processes.

OpenMM evaluates one configuration per ``Context.getState`` call. :class:`EnergyBridge` spreads a
batch over worker processes, each owning its own ``Context``:

* positions in and energies/forces out go through one ``multiprocessing.shared_memory`` block;
  the pipes carry only small control messages (one per chunk of contiguous configurations);
* each worker writes a per-configuration progress counter into the shared block, so the parent
  knows which configuration a worker was on when it died (SIGKILL, segfault) or stalled (no
  progress for ``timeout`` seconds). The worker is replaced and the batch continues; a stalled
  configuration, or one that killed two workers, gets energy ``+inf`` and zero force;
* a configuration whose coordinates are not finite, whose evaluation raised an OpenMM exception or
  whose energy or force is not finite also gets ``+inf`` and zero force - never energy 0;
* the parent sleeps in ``multiprocessing.connection.wait`` while the workers run, so it does not
  take a core from them;
* small batches are evaluated in the parent process on a lazily created ``Context``.

Workers are started with the ``spawn`` method (the parent usually has torch imported, where
``fork`` is unsafe). A worker runs *this file* through :func:`runpy.run_path`, so it imports only
the standard library, numpy and openmm - never the ``boltzgen`` package (which imports torch).
This module must therefore not import anything from ``boltzgen`` at its top level (the parent
imports :func:`boltzgen.guards.main_module_hidden` where it starts a worker).

Units: positions in nm; the bridge returns reduced energies u = U / kT (dimensionless) and
reduced forces -du/dx in kT/nm, kT = R T in kJ/mol.
"""

from __future__ import annotations

import itertools
import logging
import math
import multiprocessing
import os
import runpy
import signal
import threading
import time
import weakref
from collections import deque
from multiprocessing import connection as mp_connection
from multiprocessing import shared_memory
from typing import Optional

import numpy as np
import openmm
import openmm.unit as unit

__all__ = ["EnergyBridge", "available_platforms", "bare_getstate_seconds", "create_context"]

_log = logging.getLogger(__name__)

#: ``__name__`` under which a worker process executes this file (see :func:`_worker_main`).
_WORKER_RUN_NAME = "__boltzgen_bridge_worker__"
#: Chunks shrink to no less than batch / (n_workers * this), and no less than min_batch_per_worker.
_MAX_CHUNKS_PER_WORKER = 8
#: Seconds a worker may take to start (spawn, import openmm, create its Context).
_MIN_START_TIMEOUT = 60.0

_ENERGY = openmm.State.Energy
_FORCES = openmm.State.Forces


# ------------------------------------------------------------------------------ OpenMM access
def _state_accessors():
    """Functions ``(set_positions, get_state, energy_of, forces_into)`` with little call overhead.

    ``set_positions(context, x)`` sets positions from a float64 array (N, 3) in nm;
    ``get_state(context, types, enforce_periodic_box, groups)`` returns a State;
    ``energy_of(state)`` is its potential energy in kJ/mol as a float; and
    ``forces_into(state, kind, out)`` writes its forces in kJ/(mol nm) into the C-contiguous
    float64 array ``out`` of shape (N, 3). These are OpenMM's SWIG entry points under the public
    ``Context.setPositions``, ``Context.getState``, ``State.getPotentialEnergy`` and
    ``State.getForces(asNumpy=True)``, which skip argument parsing and unit wrapping (together
    more than the energy evaluation itself for small molecules). If an OpenMM build lacks them,
    the public API is used.
    """
    try:
        from openmm import _openmm

        return (
            _openmm.Context_setPositions,
            _openmm.Context_getState,
            _openmm.State_getPotentialEnergy,
            _openmm.State__getVectorAsNumpy,
        )
    except (ImportError, AttributeError):  # pragma: no cover - depends on the OpenMM build

        def set_positions(context, x):
            context.setPositions(x)

        def get_state(context, types, enforce_periodic_box, groups):
            return context.getState(getEnergy=True, getForces=bool(types & _FORCES), groups=groups)

        def energy_of(state):
            return state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)

        def forces_into(state, kind, out):
            out[...] = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)

        return set_positions, get_state, energy_of, forces_into


_set_positions, _get_state, _energy_of, _forces_into = _state_accessors()


def available_platforms() -> list[str]:
    """Names of the OpenMM platforms available in this installation.

    Returns
    -------
    list of str
        E.g. ``["Reference", "CPU"]`` (plus ``"CUDA"``, ``"OpenCL"`` where available).
    """
    return [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]


def _platform_properties(platform_name: str) -> dict:
    # One thread per Context on CPU: the pool's parallelism is its worker processes, and a
    # fixed thread count keeps every path (parent, workers) bitwise identical.
    return {"Threads": "1"} if platform_name == "CPU" else {}


def create_context(system: openmm.System, platform_name: str) -> openmm.Context:
    """A Context for energy evaluation, set up exactly as the bridge sets up its own.

    Parameters
    ----------
    system : openmm.System
        The system.
    platform_name : str
        An available OpenMM platform name; the CPU platform gets the property ``Threads=1``.

    Returns
    -------
    openmm.Context
        A Context with a (never stepped) Verlet integrator.
    """
    platform = openmm.Platform.getPlatformByName(platform_name)
    return openmm.Context(system, openmm.VerletIntegrator(0.001), platform, _platform_properties(platform_name))


def _evaluate_rows(
    context: openmm.Context,
    x: np.ndarray,
    energy: np.ndarray,
    force: Optional[np.ndarray],
    progress: Optional[np.ndarray] = None,
    slot: int = 0,
    offset: int = 0,
) -> None:
    """Evaluate the configurations ``x`` one by one on ``context`` (raw OpenMM units).

    Parameters
    ----------
    context : openmm.Context
        Context of the system.
    x : ndarray, shape (n, N, 3), float64, C-contiguous
        Positions in nm.
    energy : ndarray, shape (n,), float64
        Output: potential energies in kJ/mol; NaN marks a failed configuration (non-finite
        coordinates, energy or force, or an OpenMM exception), see :func:`_sanitize`.
    force : ndarray, shape (n, N, 3), float64, C-contiguous, or None
        Output: forces in kJ/(mol nm) (zero for a failed configuration), or None for energies only.
    progress : ndarray of int64, optional
        Shared progress counters: ``progress[slot] = offset + i`` is written before configuration
        ``i`` is evaluated, and ``offset + n`` once all rows are written and sanitized.
    slot, offset : int
        Index into ``progress`` and the batch index of ``x[0]``.
    """
    types = _ENERGY | (_FORCES if force is not None else 0)
    finite = np.isfinite(x).all(axis=(1, 2))
    energy[~finite] = np.nan
    # The loop body is the hot path (the Python around each getState counts for small molecules):
    # rows come from iterators, scalars go through memoryviews, OpenMM through its SWIG entry points.
    energies = memoryview(energy)
    marks = memoryview(progress) if progress is not None else None
    force_rows = force if force is not None else itertools.repeat(None)
    for i, (xi, fi, ok) in enumerate(zip(x, force_rows, finite.tolist())):
        if not ok:
            continue
        if marks is not None:
            marks[slot] = offset + i
        try:
            _set_positions(context, xi)
            state = _get_state(context, types, False, -1)
            energies[i] = _energy_of(state)
            if fi is not None:
                _forces_into(state, _FORCES, fi)
        except Exception:  # an OpenMM error for this configuration only: mark it failed
            energies[i] = math.nan
    _sanitize(energy, force)
    if progress is not None:
        progress[slot] = offset + len(x)


def bare_getstate_seconds(context: openmm.Context, positions: np.ndarray, calls: int) -> float:
    """Seconds per bare ``getState`` call (energy and forces) with ``positions`` set once.

    The rate that bounds any evaluation loop on one core: it leaves out setting positions and
    reading the results. One warm-up call precedes the ``calls`` timed ones.

    Parameters
    ----------
    context : openmm.Context
        A Context of the system (e.g. from :func:`create_context`).
    positions : ndarray, shape (N, 3)
        Configuration in nm.
    calls : int
        Timed calls.

    Returns
    -------
    float
        Mean wall time of one call, in seconds.
    """
    _set_positions(context, np.ascontiguousarray(positions, dtype=np.float64))
    types = _ENERGY | _FORCES
    _get_state(context, types, False, -1)
    start = time.perf_counter()
    for _ in range(calls):
        _get_state(context, types, False, -1)
    return (time.perf_counter() - start) / calls


def _sanitize(energy: np.ndarray, force: Optional[np.ndarray]) -> None:
    """Mark rows with a non-finite energy or force as failed: energy NaN, force zero (idempotent).

    Parameters
    ----------
    energy : ndarray, shape (n,)
        Energies, modified in place.
    force : ndarray, shape (n, N, 3), or None
        Forces, modified in place.
    """
    if force is None:
        return
    bad = ~np.isfinite(energy)
    bad |= ~np.isfinite(force).all(axis=(1, 2))
    energy[bad] = np.nan
    force[bad] = 0.0


def _reduce(energy: np.ndarray, force: Optional[np.ndarray], beta: float):
    """Reduced copies ``(u, f)`` of sanitized raw energies and forces (see :func:`_sanitize`).

    Parameters
    ----------
    energy : ndarray, shape (B,)
        Energies in kJ/mol, NaN for failed configurations.
    force : ndarray, shape (B, N, 3), or None
        Forces in kJ/(mol nm), zero for failed configurations.
    beta : float
        1 / kT in mol/kJ.

    Returns
    -------
    u : ndarray, shape (B,), float64
        U / kT; +inf for failed configurations.
    f : ndarray, shape (B, N, 3), float64, or None
        F / kT in kT/nm; zero for failed configurations.
    """
    u = energy * beta
    bad = ~np.isfinite(u)
    u[bad] = np.inf
    f = None
    if force is not None:
        f = force * beta
        f[bad] = 0.0
    return u, f


# ------------------------------------------------------------------------------ platform choice
def _probe_positions(system: openmm.System, n_rows: int, seed: int = 0) -> np.ndarray:
    """Synthetic configurations for timing, shape (n_rows, N, 3) in nm.

    Particles sit on a jittered cubic lattice: 0.3 nm apart, or spread over the periodic box at
    the system's density when it is periodic, so that the neighbour counts are realistic.
    """
    n = system.getNumParticles()
    side = max(1, math.ceil(n ** (1.0 / 3.0)))
    spacing = np.full(3, 0.3)
    if system.usesPeriodicBoundaryConditions():
        box = system.getDefaultPeriodicBoxVectors()
        spacing = np.array([box[k][k].value_in_unit(unit.nanometer) for k in range(3)]) / side
    grid = np.stack(np.meshgrid(*(np.arange(side),) * 3, indexing="ij"), axis=-1).reshape(-1, 3)[:n]
    rng = np.random.default_rng(seed)
    return grid * spacing + 0.01 * rng.standard_normal((n_rows, n, 3))


def _seconds_per_configuration(context: openmm.Context, x: np.ndarray, budget: float = 0.2) -> float:
    """Best time per configuration of :func:`_evaluate_rows` over up to 5 passes through ``x``."""
    energy, force = np.empty(len(x)), np.empty_like(x)
    _evaluate_rows(context, x[:1], energy[:1], force[:1])  # warm-up (kernel compilation, caches)
    best, start = math.inf, time.perf_counter()
    for _ in range(5):
        tick = time.perf_counter()
        _evaluate_rows(context, x, energy, force)
        best = min(best, (time.perf_counter() - tick) / len(x))
        if time.perf_counter() - start > budget:
            break
    return best


def _select_platform(system: openmm.System, requested: str):
    """``(platform_name, context or None)`` for ``requested`` ("auto" or a platform name).

    "auto" times every available platform (CPU with one thread, as the workers use it) and picks
    the fastest per configuration; its Context is returned for reuse. A name is matched
    case-insensitively; an unknown name raises ValueError listing the available platforms.
    """
    available = available_platforms()
    if str(requested).lower() != "auto":
        match = {name.lower(): name for name in available}.get(str(requested).lower())
        if match is None:
            raise ValueError(
                f"unknown OpenMM platform {requested!r}; available platforms: "
                f"{', '.join(available)} (or 'auto' to pick the fastest)"
            )
        return match, None
    probe = _probe_positions(system, n_rows=4)
    timings, contexts = {}, {}
    for name in available:
        try:
            contexts[name] = create_context(system, name)
            timings[name] = _seconds_per_configuration(contexts[name], probe)
        except Exception as exc:  # a platform that cannot run this system is not a candidate
            _log.info("platform %s skipped: %s", name, exc)
    if not timings:
        raise RuntimeError(f"no OpenMM platform can evaluate this system (tried {', '.join(available)})")
    best = min(timings, key=timings.get)
    _log.info(
        "platform timings (us per configuration): %s -> %s", {k: round(v * 1e6, 1) for k, v in timings.items()}, best
    )
    return best, contexts[best]


# ------------------------------------------------------------------------------ shared memory
class _Buffers:
    """NumPy views on one shared-memory block laid out as consecutive float64/int64 arrays.

    ``progress`` (n_slots,) int64 - per-worker index of the configuration in progress;
    ``energy`` (capacity,) kJ/mol; ``x`` (capacity, N, 3) nm; ``force`` (capacity, N, 3) kJ/(mol nm).
    """

    def __init__(self, buf, capacity: int, n_atoms: int, n_slots: int):
        sizes = [n_slots, capacity, capacity * n_atoms * 3, capacity * n_atoms * 3]
        offsets = np.cumsum([0] + sizes) * 8
        self.progress = np.ndarray((n_slots,), np.int64, buf, offsets[0])
        self.energy = np.ndarray((capacity,), np.float64, buf, offsets[1])
        self.x = np.ndarray((capacity, n_atoms, 3), np.float64, buf, offsets[2])
        self.force = np.ndarray((capacity, n_atoms, 3), np.float64, buf, offsets[3])

    @staticmethod
    def nbytes(capacity: int, n_atoms: int, n_slots: int) -> int:
        return 8 * (n_slots + capacity * (1 + 6 * n_atoms))


# ------------------------------------------------------------------------------ worker process
def _worker_main(conn, system_xml: str, platform_name: str, slot: int) -> None:
    """Body of a worker process: build a Context, then evaluate chunks until told to stop.

    Messages received: ``("eval", shm_name, capacity, n_atoms, n_slots, start, stop, forces)`` -
    evaluate configurations ``start:stop`` of the shared block, then reply ``("done", stop)``;
    ``("bare", positions, calls)`` - time ``calls`` bare ``getState`` calls (energy and forces) on
    ``positions`` set once and reply ``("bare", seconds_per_call)`` (the throughput benchmark);
    ``("stop",)`` or a closed pipe (parent gone) - exit. Sent once at start: ``("ready", pid)`` or
    ``("error", message)``.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])  # blocked by the parent at spawn
    try:
        context = create_context(openmm.XmlSerializer.deserialize(system_xml), platform_name)
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", os.getpid()))
    shm, views = None, None
    try:
        while True:
            try:
                message = conn.recv()
            except EOFError:
                break
            if message[0] == "bare":
                conn.send(("bare", bare_getstate_seconds(context, message[1], message[2])))
                continue
            if message[0] != "eval":
                break
            _, name, capacity, n_atoms, n_slots, start, stop, forces = message
            if shm is None or shm.name != name:
                views = None
                if shm is not None:
                    shm.close()
                shm = shared_memory.SharedMemory(name=name)
                views = _Buffers(shm.buf, capacity, n_atoms, n_slots)
            _evaluate_rows(
                context,
                views.x[start:stop],
                views.energy[start:stop],
                views.force[start:stop] if forces else None,
                views.progress,
                slot,
                start,
            )
            conn.send(("done", stop))
    except (BrokenPipeError, ConnectionResetError):
        pass  # parent gone
    finally:
        views = None
        if shm is not None:
            shm.close()


# ------------------------------------------------------------------------------ the pool
class _Worker:
    __slots__ = ("process", "conn")

    def __init__(self, process, conn):
        self.process, self.conn = process, conn


class _Pool:
    """Worker processes plus the shared-memory block; knows nothing of the bridge (for finalizers).

    Parameters
    ----------
    system_xml : str
        The System serialized by ``openmm.XmlSerializer``.
    n_atoms : int
        Particles in the system.
    platform_name : str
        Platform of the workers' Contexts.
    n_workers : int
        Number of worker processes (>= 1).
    timeout : float or None
        Seconds without progress after which a busy worker is killed; None waits indefinitely
        (a dead worker is still detected at once).
    min_chunk : int
        Smallest number of configurations handed to a worker at a time.
    """

    def __init__(
        self,
        system_xml: str,
        n_atoms: int,
        platform_name: str,
        n_workers: int,
        timeout: Optional[float],
        min_chunk: int,
    ):
        self.system_xml, self.n_atoms, self.platform_name = system_xml, n_atoms, platform_name
        self.n_workers, self.timeout, self.min_chunk = n_workers, timeout, min_chunk
        self.start_timeout = max(_MIN_START_TIMEOUT, timeout or 0.0)
        self.restarts = 0  # workers replaced after dying or stalling
        self._mp = multiprocessing.get_context("spawn")
        self._workers: list[Optional[_Worker]] = [None] * n_workers
        self._shm: Optional[shared_memory.SharedMemory] = None
        self._buffers: Optional[_Buffers] = None
        self._capacity = 0
        self._forces = True  # whether the batch in progress computes forces

    # -- lifecycle -------------------------------------------------------------------------
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w is not None and w.process.is_alive()]

    def _spawn(self, slot: int) -> None:
        parent_conn, child_conn = self._mp.Pipe(duplex=True)
        process = self._mp.Process(
            target=runpy.run_path,
            args=(os.path.abspath(__file__),),
            kwargs={
                "run_name": _WORKER_RUN_NAME,
                "init_globals": {"_WORKER_ARGS": (child_conn, self.system_xml, self.platform_name, slot)},
            },
            name=f"boltzgen-energy-{slot}",
            daemon=True,
        )
        # Block SIGINT while spawning: the child inherits the mask, so a Ctrl-C cannot interrupt it
        # before it ignores SIGINT; a Ctrl-C meant for us is delivered when the mask is restored.
        masked = hasattr(signal, "pthread_sigmask")
        if masked:
            old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])
        try:
            from boltzgen.guards import main_module_hidden  # in the parent only: workers never get here

            with main_module_hidden():
                process.start()
        finally:
            if masked:
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            child_conn.close()
        self._workers[slot] = _Worker(process, parent_conn)

    def _await_ready(self, slots: list[int]) -> None:
        pending = {self._workers[s].conn: s for s in slots}
        sentinels = {self._workers[s].process.sentinel: s for s in slots}
        deadline = time.monotonic() + self.start_timeout
        while pending:
            ready = mp_connection.wait(list(pending) + list(sentinels), max(0.0, deadline - time.monotonic()))
            if not ready:
                raise RuntimeError(f"energy worker(s) did not start within {self.start_timeout:.0f} s")
            for obj in ready:
                if obj in pending:
                    slot = pending.pop(obj)
                    sentinels.pop(self._workers[slot].process.sentinel)
                    try:
                        status, detail = obj.recv()
                    except (EOFError, OSError):
                        status, detail = "error", "exited during start-up"
                    if status != "ready":
                        raise RuntimeError(f"energy worker failed to start on platform {self.platform_name}: {detail}")
                elif obj in sentinels:
                    slot = sentinels.pop(obj)
                    if self._workers[slot].conn in pending and not self._workers[slot].conn.poll():
                        self._workers[slot].process.join(1.0)
                        raise RuntimeError(
                            f"energy worker exited during start-up (exit code {self._workers[slot].process.exitcode})"
                        )

    def _ensure_started(self) -> None:
        missing = [s for s, w in enumerate(self._workers) if w is None or not w.process.is_alive()]
        for slot in missing:
            if self._workers[slot] is not None:  # died while idle
                self.restarts += 1
            self._discard(slot)
            self._spawn(slot)
        if missing:
            self._await_ready(missing)

    def _discard(self, slot: int) -> None:
        """Kill the worker in ``slot`` (if any) and release its pipe."""
        worker, self._workers[slot] = self._workers[slot], None
        if worker is None:
            return
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(5.0)
        worker.conn.close()

    def shutdown(self, graceful: bool = True) -> None:
        """Stop all workers (politely if ``graceful``, else SIGKILL); the pool can start again."""
        if graceful:
            for worker in self._workers:
                if worker is not None:
                    try:
                        worker.conn.send(("stop",))
                    except OSError:
                        pass
            deadline = time.monotonic() + 2.0
            for worker in self._workers:
                if worker is not None:
                    worker.process.join(max(0.0, deadline - time.monotonic()))
        for slot in range(self.n_workers):
            self._discard(slot)

    def close(self) -> None:
        """Stop the workers and free the shared memory (idempotent)."""
        self.shutdown(graceful=True)
        self._buffers = None
        if self._shm is not None:
            shm, self._shm = self._shm, None
            shm.close()
            shm.unlink()
        self._capacity = 0

    def _ensure_capacity(self, batch: int) -> None:
        if batch <= self._capacity:
            return
        self._buffers = None
        if self._shm is not None:
            self._shm.close()
            self._shm.unlink()
            self._shm = None
        self._shm = shared_memory.SharedMemory(create=True, size=_Buffers.nbytes(batch, self.n_atoms, self.n_workers))
        self._buffers = _Buffers(self._shm.buf, batch, self.n_atoms, self.n_workers)
        self._capacity = batch

    # -- evaluation ------------------------------------------------------------------------
    def bare_getstate_seconds(self, positions: np.ndarray, calls: int) -> list[float]:
        """Per worker, seconds per bare ``getState`` call, all workers timed at the same time.

        Parameters
        ----------
        positions : ndarray, shape (N, 3)
            Positions in nm, set once in every worker.
        calls : int
            Timed calls per worker.

        Returns
        -------
        list of float
            One value per worker, in slot order.
        """
        self._ensure_started()
        positions = np.ascontiguousarray(positions, dtype=np.float64)
        try:
            for worker in self._workers:
                worker.conn.send(("bare", positions, int(calls)))
            replies = []
            deadline = time.monotonic() + self.start_timeout
            for worker in self._workers:
                if not worker.conn.poll(max(0.0, deadline - time.monotonic())):
                    raise RuntimeError("an energy worker did not answer the getState timing request")
                status, seconds = worker.conn.recv()
                replies.append(float(seconds))
            return replies
        except BaseException:  # leave no worker with an unread reply
            self.shutdown(graceful=False)
            raise

    def run(self, x: np.ndarray, forces: bool):
        """Evaluate a batch on the workers.

        Parameters
        ----------
        x : array, shape (B, N, 3)
            Positions in nm (any float dtype; copied into shared memory as float64).
        forces : bool
            Whether to compute forces.

        Returns
        -------
        energy : ndarray, shape (B,)
            Raw energies in kJ/mol (NaN = failed), a view into shared memory.
        force : ndarray, shape (B, N, 3), or None
            Raw forces in kJ/(mol nm), a view into shared memory.
        """
        try:
            return self._run(x, forces)
        except BaseException:  # Ctrl-C or an internal error: leave no worker in an unknown state
            self.shutdown(graceful=False)
            raise

    def _run(self, x: np.ndarray, forces: bool):
        batch = len(x)
        self._ensure_started()
        self._ensure_capacity(batch)
        buffers = self._buffers
        np.copyto(buffers.x[:batch], x)
        buffers.energy[:batch] = np.nan  # a configuration no worker reports on counts as failed
        self._forces = forces
        smallest = max(self.min_chunk, batch // (self.n_workers * _MAX_CHUNKS_PER_WORKER))
        pending = deque([(0, batch)])  # ranges not handed out yet
        assigned = [deque() for _ in range(self.n_workers)]  # per worker: chunks sent, oldest first
        watch = [[0, math.inf] for _ in range(self.n_workers)]  # per worker: [last progress, deadline]
        suspects: set[int] = set()  # configurations in flight when a worker died
        limit = math.inf if self.timeout is None else self.timeout

        while pending or any(assigned):
            # Idle workers get a chunk first; then each gets one more, queued in its pipe, so that a
            # worker does not wait for the parent between chunks.
            for depth in (1, 2):
                for slot, chunks in enumerate(assigned):
                    if len(chunks) < depth and pending:
                        self._send_chunk(slot, chunks, _take_chunk(pending, smallest, self.n_workers), watch, limit)

            busy = [slot for slot, chunks in enumerate(assigned) if chunks]
            waitables = [
                obj for slot in busy for obj in (self._workers[slot].conn, self._workers[slot].process.sentinel)
            ]
            next_deadline = min(watch[slot][1] for slot in busy)
            wait_for = None if next_deadline == math.inf else max(0.0, next_deadline - time.monotonic())
            ready = set(mp_connection.wait(waitables, wait_for))
            now = time.monotonic()

            for slot in busy:
                worker, chunks = self._workers[slot], assigned[slot]
                dead = worker.process.sentinel in ready
                if dead or worker.conn in ready:
                    dead = self._collect_done(slot, chunks, watch, now + limit) or dead
                if dead:
                    self._replace(slot, chunks, pending, suspects, stalled=False)
                    continue
                if not chunks:
                    continue
                position = int(buffers.progress[slot])
                if position != watch[slot][0]:
                    watch[slot] = [position, now + limit]
                elif now >= watch[slot][1]:
                    _log.warning(
                        "energy worker %d made no progress for %.3g s on configuration %d; "
                        "replacing it and marking the configuration failed",
                        slot,
                        limit,
                        position,
                    )
                    self._replace(slot, chunks, pending, suspects, stalled=True)
        return buffers.energy[:batch], (buffers.force[:batch] if forces else None)

    def _send_chunk(self, slot: int, chunks: deque, chunk: tuple[int, int], watch: list, limit: float) -> None:
        """Hand configurations ``chunk[0]:chunk[1]`` to the worker of ``slot``."""
        if not chunks:  # the worker is idle: it starts on this chunk now
            self._buffers.progress[slot] = chunk[0]
            watch[slot] = [chunk[0], time.monotonic() + limit]
        chunks.append(chunk)
        try:
            self._workers[slot].conn.send(
                ("eval", self._shm.name, self._capacity, self.n_atoms, self.n_workers, chunk[0], chunk[1], self._forces)
            )
        except OSError:
            pass  # the worker is dead; its sentinel reports it

    def _collect_done(self, slot: int, chunks: deque, watch: list, deadline: float) -> bool:
        """Receive the worker's pending ``done`` replies; True if its pipe is closed (worker dead)."""
        conn = self._workers[slot].conn
        try:
            while conn.poll():
                conn.recv()  # ("done", stop) of the oldest chunk
                chunks.popleft()
                watch[slot] = [int(self._buffers.progress[slot]), deadline]
        except (EOFError, OSError):
            return True
        return False

    def _replace(self, slot: int, chunks: deque, pending: deque, suspects: set, stalled: bool) -> None:
        """Replace the dead or stalled worker of ``slot`` and requeue what it left undone.

        The configuration it was on gets NaN (-> +inf) if the worker stalled or if it already
        killed a worker before; a configuration in flight at a first death is retried.
        """
        exitcode = self._workers[slot].process.exitcode
        self._discard(slot)
        self.restarts += 1
        if chunks:
            start, stop = chunks.popleft()
            position = int(self._buffers.progress[slot])
            if not start <= position <= stop:  # it had not started this chunk
                position = start
            force = self._buffers.force[start:position] if self._forces else None
            _sanitize(self._buffers.energy[start:position], force)
            if position < stop:
                if stalled or position in suspects:
                    self._buffers.energy[position] = np.nan
                    self._buffers.force[position] = 0.0
                    position += 1
                else:
                    _log.warning(
                        "energy worker %d died (exit code %s) on configuration %d; retrying it once",
                        slot,
                        exitcode,
                        position,
                    )
                    suspects.add(position)
            pending.extendleft(reversed([(a, b) for a, b in [(position, stop), *chunks] if a < b]))
            chunks.clear()
        self._spawn(slot)
        self._await_ready([slot])


def _take_chunk(pending: deque, smallest: int, n_workers: int) -> tuple[int, int]:
    """Cut the next chunk ``(start, stop)`` off the front of ``pending`` (guided self-scheduling).

    Chunks shrink with the work left (a share of 1 / (2 n_workers) of it, at least ``smallest``)
    so that workers finish together even when one runs slower.
    """
    pending_rows = sum(stop - start for start, stop in pending)
    start, stop = pending.popleft()
    size = max(smallest, math.ceil(pending_rows / (2 * n_workers)))
    if start + size < stop:
        pending.appendleft((start + size, stop))
        stop = start + size
    return start, stop


def _close_pool(pool: Optional[_Pool]) -> None:
    if pool is not None:
        pool.close()


# ------------------------------------------------------------------------------ public class
def _as_system(system) -> tuple[openmm.System, str]:
    """``(System, its XML)`` from an ``openmm.System`` or its XML string."""
    if isinstance(system, openmm.System):
        return system, openmm.XmlSerializer.serialize(system)
    if isinstance(system, str):
        obj = openmm.XmlSerializer.deserialize(system)
        if not isinstance(obj, openmm.System):
            raise TypeError(f"the XML holds a serialized {type(obj).__name__}, not an openmm.System")
        return obj, system
    raise TypeError(f"system must be an openmm.System or its XML string, got {type(system).__name__}")


class EnergyBridge:
    """Reduced energies and forces of an OpenMM System for batches of configurations.

    Parameters
    ----------
    system : openmm.System or str
        The system, or its serialization by ``openmm.XmlSerializer``.
    temperature : float
        Temperature in K (an ``openmm.unit`` temperature quantity is also accepted).
    platform : str
        ``"auto"`` (default) times every available platform on this system (CPU with one thread
        per Context) and picks the fastest per configuration; otherwise an OpenMM platform name
        (``"Reference"``, ``"CPU"``, ``"CUDA"``, ``"OpenCL"``, ...; unknown names raise ValueError).
    n_workers : int, optional
        Worker processes; None uses ``os.cpu_count()``, 0 evaluates everything in-process.
    timeout : float or None
        Seconds a worker may go without finishing a configuration before it is killed and
        replaced (the configuration gets +inf). None disables the stall check.
    min_batch_per_worker : int
        Smallest number of configurations handed to one worker; batches smaller than twice this
        are evaluated in-process.

    Attributes
    ----------
    kT : float
        R T in kJ/mol.
    platform_name : str
        The OpenMM platform in use.
    n_atoms : int
        Particles in the system.

    Notes
    -----
    The pool starts on the first batch large enough to use it (about a second) and stays alive
    until :meth:`close` (also called by ``with`` and at interpreter exit). A configuration with
    non-finite coordinates, an OpenMM error, a non-finite energy or force, or that stalled or
    killed its worker twice gets u = +inf and zero force; the rest of the batch is unaffected.
    Evaluation calls are serialized by a lock.
    """

    def __init__(
        self,
        system,
        temperature,
        *,
        platform: str = "auto",
        n_workers: Optional[int] = None,
        timeout: Optional[float] = 60.0,
        min_batch_per_worker: int = 16,
    ):
        self._system, self._system_xml = _as_system(system)
        self.n_atoms = self._system.getNumParticles()
        if unit.is_quantity(temperature):
            temperature = temperature.value_in_unit(unit.kelvin)
        self.temperature = float(temperature)
        if not self.temperature > 0.0:
            raise ValueError(f"temperature must be positive (K), got {temperature}")
        self.kT = (unit.MOLAR_GAS_CONSTANT_R * self.temperature * unit.kelvin).value_in_unit(unit.kilojoule_per_mole)
        self._beta = 1.0 / self.kT
        n_workers = (os.cpu_count() or 1) if n_workers is None else int(n_workers)
        if n_workers < 0:
            raise ValueError(f"n_workers must be >= 0, got {n_workers}")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be positive seconds or None, got {timeout}")
        if int(min_batch_per_worker) < 1:
            raise ValueError(f"min_batch_per_worker must be >= 1, got {min_batch_per_worker}")
        self.n_workers = n_workers
        self.timeout = timeout
        self.min_batch_per_worker = int(min_batch_per_worker)
        self.platform_name, self._context = _select_platform(self._system, platform)
        self._pool = (
            _Pool(self._system_xml, self.n_atoms, self.platform_name, n_workers, timeout, self.min_batch_per_worker)
            if n_workers > 0
            else None
        )
        self._finalizer = weakref.finalize(self, _close_pool, self._pool)
        self._lock = threading.Lock()
        self._closed = False

    # -- public API ------------------------------------------------------------------------
    def evaluate(self, x, forces: bool = True) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Reduced energies and forces of a batch of configurations.

        Parameters
        ----------
        x : array-like, shape (B, N, 3) or (N, 3)
            Positions in nm (NumPy array, nested lists or a CPU torch tensor); (N, 3) is a batch of one.
        forces : bool
            Whether to compute forces.

        Returns
        -------
        u : ndarray, shape (B,), float64
            Reduced energies U / kT, in batch order; +inf for failed configurations.
        f : ndarray, shape (B, N, 3), float64, or None
            Reduced forces -du/dx in kT/nm (zero for failed configurations); None if ``forces`` is False.
        """
        x = self._as_batch(x)
        with self._lock:
            if self._closed:
                raise RuntimeError("EnergyBridge is closed")
            if self._pool is None or len(x) < 2 * self.min_batch_per_worker:
                x = np.ascontiguousarray(x, dtype=np.float64)
                energy = np.empty(len(x))
                force = np.empty_like(x) if forces else None
                _evaluate_rows(self._parent_context(), x, energy, force)
            else:
                energy, force = self._pool.run(x, forces)
            return _reduce(energy, force, self._beta)

    def bare_getstate_seconds(self, positions, calls: int) -> list[float]:
        """Per worker, seconds per bare ``getState`` call, all workers timed concurrently.

        The per-core rate that bounds :meth:`evaluate` when every core is busy (for throughput
        benchmarks): each worker sets ``positions`` once and times ``calls`` calls of
        ``getState`` with energy and forces, all at the same time.

        Parameters
        ----------
        positions : array-like, shape (N, 3)
            Positions in nm.
        calls : int
            Timed calls per worker (>= 1).

        Returns
        -------
        list of float
            Seconds per call, one value per worker (one value, measured in-process, without a pool).
        """
        positions = np.asarray(self._as_batch(positions)[0], dtype=np.float64)
        if int(calls) < 1:
            raise ValueError(f"calls must be >= 1, got {calls}")
        with self._lock:
            if self._closed:
                raise RuntimeError("EnergyBridge is closed")
            if self._pool is None:
                return [bare_getstate_seconds(self._parent_context(), positions, int(calls))]
            return self._pool.bare_getstate_seconds(positions, int(calls))

    def close(self) -> None:
        """Stop the worker processes and free shared memory; further :meth:`evaluate` calls raise."""
        with self._lock:
            self._closed = True
            self._finalizer()
            self._context = None

    def __enter__(self) -> "EnergyBridge":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def system(self) -> openmm.System:
        """The OpenMM System evaluated (do not modify it; the workers hold copies)."""
        return self._system

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (empty before the pool starts or after :meth:`close`)."""
        return [] if self._pool is None else self._pool.pids()

    @property
    def worker_restarts(self) -> int:
        """How many workers were replaced after dying or stalling."""
        return 0 if self._pool is None else self._pool.restarts

    def __repr__(self) -> str:
        return (
            f"EnergyBridge(n_atoms={self.n_atoms}, T={self.temperature} K, platform={self.platform_name!r}, "
            f"n_workers={self.n_workers}{', closed' if self._closed else ''})"
        )

    # -- helpers ---------------------------------------------------------------------------
    def _as_batch(self, x) -> np.ndarray:
        if hasattr(x, "detach"):  # torch tensor, without importing torch
            x = x.detach().cpu().numpy()
        x = np.asarray(x)
        shape = x.shape
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or x.shape[2] != 3:
            raise ValueError(
                f"positions must have shape (B, {self.n_atoms}, 3) or ({self.n_atoms}, 3) in nm, got shape {shape}"
            )
        if x.shape[1] != self.n_atoms:
            raise ValueError(
                f"wrong atom count: expected {self.n_atoms} atoms (the system's), got {x.shape[1]} "
                f"(positions of shape {shape})"
            )
        return x

    def _parent_context(self) -> openmm.Context:
        if self._context is None:
            self._context = create_context(self._system, self.platform_name)
        return self._context


if __name__ == _WORKER_RUN_NAME:  # executed by runpy.run_path in a worker process
    _worker_main(*globals()["_WORKER_ARGS"])
