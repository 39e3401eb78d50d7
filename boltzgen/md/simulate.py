"""``simulate``: Boltzmann samples of any target — exact, OpenMM dynamics, or MCMC.

Three methods, chosen from the target unless ``method`` says otherwise:

``"exact"``
    Analytic targets (``target.has_exact_sampler``, the Gaussian mixtures): independent exact
    samples from ``target.sample``.
``"md"``
    OpenMM targets (:class:`~boltzgen.systems.OpenMMTarget`): ``LangevinMiddleIntegrator``
    dynamics, or temperature replica exchange when ``replicas > 1`` (see
    :mod:`boltzgen.md.dynamics`). Only the target-temperature replica's frames are returned.
``"mcmc"``
    Any other differentiable target (LJ clusters): C parallel MALA (or HMC) chains started at
    ``target.positions`` plus small noise, step size adapted during burn-in then frozen, one
    state per chain saved every ``stride`` steps. Mean-free for translation-invariant targets,
    so the chains sample exp(−u) on the zero-centre-of-mass subspace exactly.

Runs are resumable with ``checkpoint=PATH`` (see :mod:`boltzgen.md.checkpoint`).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch

from ..io import json_default
from ..version import __version__

METHODS = ("exact", "md", "mcmc")

#: Defaults of the method-specific options (``None`` in the signature means "this default").
DEFAULTS = {
    "md": {
        "timestep": 1.0,
        "friction": 1.0,
        "minimize": True,
        "equilibration": 10_000,
        "stride": 500,
        "platform": "auto",
        "threads": None,
        "replicas": 1,
        "t_max": None,
        "exchange_interval": 100,
        "keep_replicas": False,
    },
    "mcmc": {
        "kernel": "mala",
        "chains": 128,
        "equilibration": 2_000,
        "stride": 50,
        "step_size": 1e-4,
        "target_acceptance": None,
        "adapt": "global",
        "init_noise": 0.01,
        "n_leapfrog": 10,
    },
    "exact": {},
}


@dataclass
class SimulationResult:
    """Samples from :func:`simulate`.

    Attributes
    ----------
    positions : ndarray, shape (n, *event_shape), float64
        Configurations (nm for molecules; reduced units for LJ clusters and mixtures).
    reduced_energy : ndarray, shape (n,), float64
        u = U / kT of each configuration at the *target's* temperature.
    metadata : dict
        JSON-serialisable: method, every parameter, seed, wall time, acceptance statistics,
        target description.
    topology : mdtraj.Topology or None
        Topology of molecular targets.
    potential_energy : ndarray (n,) or None
        U in kJ/mol (OpenMM dynamics only).
    replica_potential_energy : ndarray (n, R) or None
        Replica exchange: U (kJ/mol) of the configuration held at each ladder temperature at the
        saved steps (column 0 is the target temperature).
    replica_positions : ndarray (R, n, *event_shape) or None
        Configurations at every ladder temperature (only with ``keep_replicas=True``).
    """

    positions: np.ndarray
    reduced_energy: np.ndarray
    metadata: dict
    topology: Any = None
    potential_energy: Optional[np.ndarray] = None
    replica_potential_energy: Optional[np.ndarray] = None
    replica_positions: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(self.positions.shape[0])

    def save(self, path: str) -> None:
        """Write a sample file (:func:`boltzgen.io.save_samples`): mdtraj HDF5 for molecules.

        Parameters
        ----------
        path : str
            Output file (written atomically). Besides positions (nm) and reduced energies it
            stores ``potential_energy`` (kJ/mol) and, for replica exchange,
            ``replica_potential_energy`` (kJ/mol) when present.
        """
        from ..io import save_samples

        extra = {}
        if self.potential_energy is not None:
            extra["potential_energy"] = self.potential_energy
        if self.replica_potential_energy is not None and self.replica_potential_energy.shape[1] > 1:
            extra["replica_potential_energy"] = self.replica_potential_energy
        save_samples(
            path,
            self.positions,
            topology=self.topology,
            reduced_energy=self.reduced_energy,
            metadata=self.metadata,
            extra=extra,
        )


# ---------------------------------------------------------------------------- validation
def _choose_method(target, method: str) -> str:
    import openmm

    is_openmm = isinstance(getattr(target, "system", None), openmm.System)
    if method == "auto":
        if target.has_exact_sampler:
            return "exact"
        return "md" if is_openmm else "mcmc"
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose 'auto' or one of {', '.join(METHODS)}")
    if method == "exact" and not target.has_exact_sampler:
        raise ValueError(f"{target.name} has no exact sampler; use method 'md' (OpenMM targets) or 'mcmc'")
    if method == "md" and not is_openmm:
        raise ValueError(f"method 'md' needs an OpenMM target; {target.name} is a {type(target).__name__}")
    return method


def _positive(name, value, integer=False, allow_zero=False):
    try:
        ok = math.isfinite(float(value)) and (float(value) >= 0 if allow_zero else float(value) > 0)
        if integer and ok:
            ok = float(value) == int(value) and not isinstance(value, bool)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        kind = "integer" if integer else "number"
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} {kind}, got {value!r}")
    return int(value) if integer else float(value)


#: Forces that OpenMM's Reference platform evaluates through its expression interpreter, several
#: times slower than the compiled kernels of the CPU platform (benchmarks/RESULTS.md, issue notes).
INTERPRETED_FORCES = ("CustomGBForce", "CustomNonbondedForce", "CustomManyParticleForce", "CustomHbondForce")


def md_platform(system) -> str:
    """The OpenMM platform that runs MD of ``system`` fastest on a CPU (``platform="auto"``).

    Reference for the plain force fields of small molecules (the least overhead per step); CPU when
    a force is one the Reference platform interprets (:data:`INTERPRETED_FORCES`, e.g. the
    ``CustomGBForce`` of amber14's implicit/obc1.xml), also inside a ``CustomCVForce``.

    Parameters
    ----------
    system : openmm.System

    Returns
    -------
    str
        ``"CPU"`` or ``"Reference"``.
    """

    def kinds(forces):
        for force in forces:
            yield type(force).__name__
            if hasattr(force, "getNumCollectiveVariables"):
                yield from kinds(force.getCollectiveVariable(k) for k in range(force.getNumCollectiveVariables()))

    return "CPU" if set(kinds(system.getForces())) & set(INTERPRETED_FORCES) else "Reference"


def _resolve(target, method: str, options: dict, seed, temperature) -> dict:
    """Merge options with the method defaults, reject foreign options, validate values."""
    given = {k: v for k, v in options.items() if v is not None}
    foreign = sorted(k for k in given if k not in DEFAULTS[method])
    if foreign:
        owners = {k: [m for m in METHODS if k in DEFAULTS[m]] for k in foreign}
        detail = ", ".join(f"{k} ({'/'.join(owners[k]) or 'no method'})" for k in foreign)
        raise ValueError(f"option(s) {detail} do not apply to method {method!r} used for {target.name}")
    params = {**DEFAULTS[method], **given}
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    params["seed"] = int(seed)
    temp = target.temperature if temperature is None else _positive("temperature", temperature)
    if method == "exact" and abs(temp - target.temperature) > 1e-9 * target.temperature:
        raise ValueError(f"exact sampling is only available at the target temperature {target.temperature:g} K")
    params["temperature"] = float(temp)
    if method in ("md", "mcmc"):
        params["stride"] = _positive("stride", params["stride"], integer=True)
        params["equilibration"] = _positive("equilibration", params["equilibration"], integer=True, allow_zero=True)
    if method == "md":
        if params["platform"] == "auto":
            params["platform"] = md_platform(target.system) if hasattr(target, "system") else "Reference"
            if params["platform"] == "CPU" and params["threads"] is None:
                params["threads"] = 1  # one replica's few atoms: a second thread costs more than it gives
        params["timestep"] = _positive("timestep (fs)", params["timestep"])
        params["friction"] = _positive("friction (1/ps)", params["friction"])
        params["replicas"] = _positive("replicas", params["replicas"], integer=True)
        params["exchange_interval"] = _positive("exchange_interval", params["exchange_interval"], integer=True)
        params["minimize"] = bool(params["minimize"])
        params["keep_replicas"] = bool(params["keep_replicas"])
        if params["threads"] is not None:
            params["threads"] = _positive("threads", params["threads"], integer=True)
        if params["replicas"] == 1:
            if params["t_max"] is not None:
                raise ValueError("t_max applies to replica exchange only (replicas > 1)")
        else:
            t_max = 2.0 * temp if params["t_max"] is None else _positive("t_max", params["t_max"])
            if not t_max > temp:
                raise ValueError(f"t_max ({t_max:g} K) must be above the temperature ({temp:g} K) for replica exchange")
            params["t_max"] = float(t_max)
    if method == "mcmc":
        if params["kernel"] not in ("mala", "hmc"):
            raise ValueError(f"kernel must be 'mala' or 'hmc', got {params['kernel']!r}")
        params["chains"] = _positive("chains", params["chains"], integer=True)
        params["step_size"] = _positive("step_size", params["step_size"])
        params["init_noise"] = _positive("init_noise", params["init_noise"], allow_zero=True)
        params["n_leapfrog"] = _positive("n_leapfrog", params["n_leapfrog"], integer=True)
        if params["target_acceptance"] is not None:
            a = float(params["target_acceptance"])
            if not 0.0 < a < 1.0:
                raise ValueError(f"target_acceptance must lie in (0, 1), got {a}")
            params["target_acceptance"] = a
        if params["adapt"] not in ("global", "per_chain", None):
            raise ValueError(f"adapt must be 'global', 'per_chain' or None, got {params['adapt']!r}")
    params["method"] = method
    params["target"] = _fingerprint(target)
    return params


def _fingerprint(target) -> dict:
    """Identity of the target for checkpoint checks: name, shape, temperature, start positions,
    and the serialized OpenMM System (hashes)."""
    fp = {"name": target.name, "event_shape": list(target.event_shape), "temperature_K": target.temperature}
    if target.has_exact_sampler:
        return fp
    pos = np.ascontiguousarray(target.positions.detach().cpu().numpy().astype(np.float64))
    fp["positions_sha256"] = hashlib.sha256(pos.tobytes()).hexdigest()
    if hasattr(target, "system"):
        import openmm

        fp["system_sha256"] = hashlib.sha256(openmm.XmlSerializer.serialize(target.system).encode()).hexdigest()
    else:
        fp["metadata"] = json.loads(json.dumps(target.metadata(), default=str, sort_keys=True))
    return fp


# ---------------------------------------------------------------------------- entry point
def simulate(
    target,
    n_samples: int,
    *,
    method: str = "auto",
    seed: int = 0,
    temperature: Optional[float] = None,
    stride: Optional[int] = None,
    equilibration: Optional[int] = None,
    timestep: Optional[float] = None,
    friction: Optional[float] = None,
    minimize: Optional[bool] = None,
    platform: Optional[str] = None,
    threads: Optional[int] = None,
    replicas: Optional[int] = None,
    t_max: Optional[float] = None,
    exchange_interval: Optional[int] = None,
    keep_replicas: Optional[bool] = None,
    kernel: Optional[str] = None,
    chains: Optional[int] = None,
    step_size: Optional[float] = None,
    target_acceptance: Optional[float] = None,
    adapt: Optional[str] = None,
    init_noise: Optional[float] = None,
    n_leapfrog: Optional[int] = None,
    checkpoint: Optional[str] = None,
    checkpoint_every: int = 100,
    callback: Optional[Callable[[int], None]] = None,
    progress: bool = True,
    workers: Optional[int] = None,
) -> SimulationResult:
    """Draw ``n_samples`` Boltzmann samples of ``target`` (exact, OpenMM dynamics or MCMC).

    Method-specific options left at ``None`` take the defaults in :data:`DEFAULTS`; giving an
    option of another method is an error.

    Parameters
    ----------
    target : TargetSystem
        The target (``boltzgen.systems.load(...)``, ``from_openmm(...)``, ...).
    n_samples : int
        Number of saved configurations (frames), at least 1.
    method : {"auto", "exact", "md", "mcmc"}
        "auto": exact if the target has an exact sampler, "md" for OpenMM targets, else "mcmc".
    seed : int
        Seeds everything (integrator and velocity seeds, exchange decisions, MCMC noise).
    temperature : float, optional
        Sampling temperature in K (default the target's). Reduced energies in the result are
        always at the target's own temperature.
    stride : int
        Steps between saved frames: MD time steps (default 500) or MCMC steps of each chain
        (default 50).
    equilibration : int
        Steps before the first saved frame: MD steps after minimisation (default 10 000, with
        exchanges), or MCMC burn-in steps with step-size adaptation (default 2 000).

    Other Parameters
    ----------------
    timestep : float
        MD: integration step in fs (default 1.0; hydrogens are unconstrained).
    friction : float
        MD: Langevin friction in 1/ps (default 1.0).
    minimize : bool
        MD: minimise the start structure first (default True).
    platform : str
        MD: OpenMM platform, "Reference", "CPU", or "auto" (default: :func:`md_platform`, with
        one thread when it picks CPU).
    threads : int, optional
        MD: ``Threads`` of the CPU platform.
    replicas : int
        MD: number of temperatures; > 1 runs replica exchange (default 1).
    t_max : float
        MD: highest ladder temperature in K (default 2 × temperature; replicas > 1 only).
    exchange_interval : int
        MD: steps between exchange attempts, alternating even and odd pairs (default 100).
    keep_replicas : bool
        MD: also return every replica's frames (``replica_positions``; default False).
    kernel : {"mala", "hmc"}
        MCMC kernel (default "mala").
    chains : int
        MCMC: parallel chains (default 128). Frames are save-major: each save adds one state per
        chain, the last save is truncated to reach ``n_samples``.
    step_size : float
        MCMC: initial step size (MALA h in length², HMC ε in length; default 1e-4), adapted
        during burn-in, then frozen.
    target_acceptance : float
        MCMC: acceptance the adaptation aims at (default 0.574 MALA, 0.65 HMC).
    adapt : {"global", "per_chain", None}
        MCMC: one adapted step size for all chains (default), one per chain, or none.
    init_noise : float
        MCMC: standard deviation of the Gaussian noise added to ``target.positions`` to start the
        chains (length units; default 0.01; projected to zero mean for mean-free targets).
    n_leapfrog : int
        MCMC with HMC: leapfrog steps per proposal (default 10).
    checkpoint : str, optional
        Checkpoint file (npz). Written atomically every ``checkpoint_every`` frames and at the
        end; if it exists, the run continues from it. Resuming needs the same parameters
        (``n_samples`` may grow) and gives the same samples as an uninterrupted run with the
        same seed on the same machine. Never deleted here. Not used by exact sampling.
    checkpoint_every : int
        Frames between checkpoint writes (default 100).
    callback : callable(int), optional
        Called with the number of frames saved so far after each save (after any checkpoint).
    progress : bool
        Show a tqdm progress bar on stderr.
    workers : int, optional
        MD: threads that step the replicas at once (default: one per core, at most one per
        replica). The frames do not depend on it, so it is not a checkpointed parameter.

    Returns
    -------
    SimulationResult

    Raises
    ------
    ValueError
        Bad values (n_samples < 1, non-positive timestep, t_max <= temperature with replicas > 1,
        options of another method, a checkpoint written with different parameters, ...).
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
    n_samples = int(n_samples)
    checkpoint_every = _positive("checkpoint_every", checkpoint_every, integer=True)
    if workers is not None:
        workers = _positive("workers", workers, integer=True)
    method = _choose_method(target, method)
    options = dict(
        stride=stride,
        equilibration=equilibration,
        timestep=timestep,
        friction=friction,
        minimize=minimize,
        platform=platform,
        threads=threads,
        replicas=replicas,
        t_max=t_max,
        exchange_interval=exchange_interval,
        keep_replicas=keep_replicas,
        kernel=kernel,
        chains=chains,
        step_size=step_size,
        target_acceptance=target_acceptance,
        adapt=adapt,
        init_noise=init_noise,
        n_leapfrog=n_leapfrog,
    )
    params = _resolve(target, method, options, seed, temperature)
    checkpoint = None if checkpoint is None else str(checkpoint)

    from tqdm import tqdm

    # MCMC shows the chains' own step bar (burn-in included) instead of a frame bar.
    bar = tqdm(
        total=n_samples,
        desc=f"simulate {target.name} ({method})",
        unit="frame",
        file=sys.stderr,
        disable=not progress or method == "mcmc",
        dynamic_ncols=True,
    )
    start = time.perf_counter()
    try:
        if method == "exact":
            result = _run_exact(target, n_samples, params)
            bar.update(n_samples)
        elif method == "md":
            result = _run_md(target, n_samples, params, checkpoint, checkpoint_every, callback, bar, workers)
        else:
            result = _run_mcmc(target, n_samples, params, checkpoint, checkpoint_every, callback, bar, progress)
    finally:
        bar.close()
    meta = {
        **target.metadata(),
        "method": method,
        "parameters": {k: v for k, v in params.items() if k != "target"},
        "seed": params["seed"],
        "n_samples": n_samples,
        "sampling_temperature_K": params["temperature"],
        "wall_time_s": time.perf_counter() - start,
        "checkpoint": checkpoint,
        "boltzgen_version": __version__,
    }
    meta.update(result.metadata)
    result.metadata = json.loads(json.dumps(meta, default=json_default))
    return result


# ---------------------------------------------------------------------------- methods
def _run_exact(target, n_samples, params) -> SimulationResult:
    generator = torch.Generator().manual_seed(params["seed"])
    x = target.sample(n_samples, generator).detach().to(torch.float64)
    u = target.reduced_energy(x).detach()
    return SimulationResult(x.cpu().numpy(), u.cpu().numpy(), {}, topology=target.topology)


def _run_md(target, n_samples, params, checkpoint, checkpoint_every, callback, bar, workers=None) -> SimulationResult:
    from .dynamics import run_dynamics

    out = run_dynamics(
        target,
        n_samples,
        params,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        callback=callback,
        bar=bar,
        workers=workers,
    )
    potential = out.replica_potential_energy[:, 0].copy()
    info = dict(out.info)
    info["md_wall_time_s"] = info.pop("wall_time_s")
    return SimulationResult(
        out.positions,
        potential / target.kT,
        info,
        topology=target.topology,
        potential_energy=potential,
        replica_potential_energy=out.replica_potential_energy,
        replica_positions=out.replica_positions,
    )


def _scaled_energy(target, factor: float):
    """Energy callable u_T(x) = factor · u(x) (factor = T_target / T) returning (u, grad)."""
    if factor == 1.0:
        return target

    def energy(x):
        u, force = target.reduced_energy_and_force(x)
        return factor * u, -factor * force

    return energy


def _run_mcmc(
    target, n_samples, params, checkpoint, checkpoint_every, callback, bar, progress: bool
) -> SimulationResult:
    from ..sampling.mcmc import ChainState, run_mcmc
    from .checkpoint import read_checkpoint, write_checkpoint

    chains, stride, burn_in = params["chains"], params["stride"], params["equilibration"]
    mean_free = bool(target.mean_free)
    factor = target.temperature / params["temperature"]
    energy = _scaled_energy(target, factor)
    generator = torch.Generator().manual_seed(params["seed"])
    n_saves = -(-n_samples // chains)
    wall_before, t0 = 0.0, time.perf_counter()

    loaded = read_checkpoint(checkpoint, params) if checkpoint else None
    if loaded is None:
        x0 = target.positions.detach().to(torch.float64).expand((chains,) + tuple(target.event_shape)).clone()
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        if mean_free:
            noise = noise - noise.mean(dim=-2, keepdim=True)
        x0 = x0 + params["init_noise"] * noise
        state, resumed = None, 0
    else:
        saved, arrays = loaded
        generator.set_state(torch.from_numpy(arrays["generator_state"].copy()))
        state = ChainState(
            x=torch.from_numpy(arrays["x"].copy()),
            energy=torch.from_numpy(arrays["energy"].copy()),
            grad=torch.from_numpy(arrays["grad"].copy()),
            step_size=torch.from_numpy(arrays["step_size"].copy()),
            step=int(saved["step"]),
            n_accepted=torch.from_numpy(arrays["n_accepted"].copy()),
            samples=list(torch.from_numpy(arrays["samples"].copy())),
            sample_energy=list(torch.from_numpy(arrays["sample_energy"].copy())),
        )
        wall_before, x0, resumed = float(saved["wall_time_s"]), None, len(state.samples) * chains

    last_saved = [resumed]

    def save_state(st: ChainState):
        ev = tuple(target.event_shape)
        arrays = {
            "x": st.x.numpy(),
            "energy": st.energy.numpy(),
            "grad": st.grad.numpy(),
            "step_size": st.step_size.numpy(),
            "n_accepted": st.n_accepted.numpy(),
            "generator_state": generator.get_state().numpy(),
            "samples": torch.stack(st.samples).numpy() if st.samples else np.zeros((0, chains) + ev),
            "sample_energy": torch.stack(st.sample_energy).numpy() if st.sample_energy else np.zeros((0, chains)),
        }
        write_checkpoint(
            checkpoint, params, {"step": st.step, "wall_time_s": wall_before + time.perf_counter() - t0}, arrays
        )
        last_saved[0] = len(st.samples) * chains

    def on_save(st: ChainState):
        frames = len(st.samples) * chains
        bar.update(min(frames, n_samples) - bar.n)
        if checkpoint and (frames - last_saved[0] >= checkpoint_every or len(st.samples) == n_saves):
            save_state(st)
        if callback is not None:
            callback(min(frames, n_samples))

    if state is not None:
        bar.update(min(resumed, n_samples))
    run = run_mcmc(
        x0,
        energy,
        n_saves * stride,
        generator,
        kernel=params["kernel"],
        step_size=params["step_size"],
        burn_in=burn_in,
        thin=stride,
        adapt=params["adapt"],
        target_acceptance=params["target_acceptance"],
        mean_free=mean_free,
        n_leapfrog=params["n_leapfrog"],
        state=state,
        callback=on_save,
        progress=progress,
    )
    if checkpoint and last_saved[0] != len(run.state.samples) * chains:
        save_state(run.state)
    ev = tuple(target.event_shape)
    positions = run.samples.reshape((-1,) + ev)[:n_samples].numpy()
    reduced = (run.energy.reshape(-1)[:n_samples] / factor).numpy()
    acc = run.acceptance
    info = {
        "n_chains": chains,
        "mean_free": mean_free,
        "acceptance_mean": float(acc.mean()),
        "acceptance_min": float(acc.min()),
        "acceptance_max": float(acc.max()),
        "step_size_final": float(run.step_size.mean()) if params["adapt"] != "per_chain" else run.step_size.tolist(),
        "total_steps_per_chain": int(run.state.step),
        "frames_from_checkpoint": int(resumed),
        "mcmc_wall_time_s": wall_before + time.perf_counter() - t0,
    }
    return SimulationResult(positions, reduced, info, topology=target.topology)


# ---------------------------------------------------------------------------- replica-ladder data
def ladder_frames(result: SimulationResult, keep: int, kT: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames of the ``keep`` coldest replicas of a replica-exchange result, coldest first.

    Parameters
    ----------
    result : SimulationResult
        From :func:`simulate` with ``replicas >= keep`` and ``keep_replicas=True``.
    keep : int
        Replicas to keep, counted from the target temperature up.
    kT : float
        kT of the target temperature, kJ/mol.

    Returns
    -------
    positions : ndarray, shape (keep · n, *event_shape), nm
    reduced_energy : ndarray, shape (keep · n,)
        U / kT at the *target* temperature for every frame.
    temperature_K : ndarray, shape (keep · n,)
        Ladder temperature (K) each frame was sampled at.
    """
    temps = result.metadata["temperatures_K"][:keep]
    n = result.positions.shape[0]
    positions = np.concatenate([result.replica_positions[k] for k in range(keep)])
    reduced_energy = np.concatenate([result.replica_potential_energy[:, k] / kT for k in range(keep)])
    return positions, reduced_energy, np.repeat(np.asarray(temps, dtype=np.float64), n)


#: How :func:`quench_frames` relaxes a frame after the minimisation: Langevin friction (1/ps)
#: strong enough that velocities and the fast modes equilibrate within the quench.
QUENCH_FRICTION = 10.0


def quench_frames(
    target, positions: np.ndarray, *, time_ps: float, platform: str, seed: int = 0, processes: int = 1
) -> tuple[np.ndarray, dict]:
    """Relax frames to the target temperature (:func:`boltzgen.md.dynamics.quench`), in place.

    Parameters
    ----------
    target : OpenMMTarget
        The target (its ``system``, ``temperature`` in K and ``kT`` in kJ/mol).
    positions : ndarray, shape (B, N, 3)
        Frames in nm; overwritten with the quenched frames.
    time_ps : float
        Langevin dynamics after the minimisation, ps (> 0).
    platform : str
        OpenMM platform name.
    seed : int
        Seed of the Langevin integrators.
    processes : int
        Worker processes (the frames do not depend on their number).

    Returns
    -------
    reduced_energy : ndarray, shape (B,)
        U / kT of the quenched frames at the target temperature.
    info : dict
        ``time_ps``, ``friction_per_ps``, ``minimize``, ``temperature_K``, ``n_frames``,
        ``processes``, ``wall_time_s`` (recorded in the sample file's metadata).
    """
    from .dynamics import quench

    start = time.perf_counter()
    positions[:], potential = quench(
        target.system,
        positions,
        target.temperature,
        time_ps=float(time_ps),
        friction=QUENCH_FRICTION,
        minimize=True,
        platform=platform,
        seed=seed,
        processes=processes,
    )
    info = {
        "time_ps": float(time_ps),
        "friction_per_ps": QUENCH_FRICTION,
        "minimize": True,
        "temperature_K": target.temperature,
        "n_frames": int(len(potential)),
        "processes": int(processes),
        "wall_time_s": time.perf_counter() - start,
    }
    return potential / target.kT, info
