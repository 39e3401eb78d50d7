"""The workflow API: simulate → train → sample → reweight → analyze as Python functions.

The ``boltzgen`` command line is a thin layer over these functions (each ``cmd_*`` parses its
arguments, calls one of them and prints), so a Python user runs exactly what the CLI runs, with
the same defaults and the same numbers for the same seed::

    from boltzgen import workflow

    workflow.simulate_training_data("gmm-two-modes", 2000, "data.h5")
    workflow.train("data.h5", "run")
    run = workflow.sample("run", "samples.h5", 1024, runs=4)
    print(run.metrics["log_z"], run.metrics.get("state_free_energies_kT"))

:func:`quickstart` runs the whole chain from a recipe of ``systems/recipes.yaml``. Targets are
given as a :class:`~boltzgen.systems.TargetSystem` or a built-in name; a function that loads a
target by name closes it again, one passed in is left to the caller. Theory and conventions:
``docs/design.md``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import shlex
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from .guards import check_memory, check_writable, output_lock
from .states import resampling_strata  # noqa: F401  (also boltzgen.workflow.resampling_strata, as before)

__all__ = [
    "SampleRun",
    "SAMPLE_OPTIONS",
    "simulate_training_data",
    "train",
    "sample",
    "reweight",
    "analyze",
    "quickstart",
    "load_recipes",
    "load_recipe",
    "sample_settings",
    "merge",
    "command_line",
]

#: Below this effective sample size the quickstart's summary warns that its estimates rest on a
#: handful of samples (self-normalised estimates and their bootstrap errors then mean little).
MIN_TRUSTED_ESS = 10
#: The quickstart summary warns about SMC runs that end with fewer particles than this in the
#: rarest state: the free energy of that state then rests on their luck.
MIN_STATE_PARTICLES = 10

#: The sampler settings that ``boltzgen sample`` exposes: (flag, path in SMCSettings, type, help).
#: The CLI builds its options from this table with SMCSettings()'s defaults, and the quickstart
#: prints its commands with it, so the CLI, the API and the recipes are one sampler.
SAMPLE_OPTIONS = (
    ("--diffusion-steps", ("diffusion", "n_steps"), int, "diffusion levels from t = 1 to t_min"),
    (
        "--diffusion-particle-factor",
        ("diffusion", "particle_factor"),
        int,
        "the diffusion draws this many times each run's particles, resampled down to them as the annealing starts "
        "(more independent lineages for a fraction of the annealing's cost)",
    ),
    (
        "--spacing",
        ("diffusion", "spacing"),
        str,
        "time grid of the diffusion levels: 'quadratic' in t, 'log' (equal ratios of t: finer at small t, where "
        "stiff coordinates change fastest) or 'uniform'",
    ),
    (
        "--t-min",
        ("diffusion", "t_min"),
        float,
        "last diffusion time, where the annealing to the target starts (default: the model's t_min; at least that)",
    ),
    (
        "--mcmc-steps",
        ("diffusion", "mcmc_steps"),
        int,
        "MALA moves per diffusion level (each costs a model evaluation, like a diffusion step)",
    ),
    (
        "--diffusion-weights",
        ("diffusion", "weights"),
        str,
        "how a diffusion level moves and weights: 'kernel' (reverse-diffusion proposals) or 'annealed' "
        "(rescaling, energy change, then --mcmc-steps moves: annealed importance sampling; needs moves)",
    ),
    (
        "--tempering",
        ("diffusion", "tempering"),
        float,
        "exponent b in (0, 1] of the learned energies at t_min: b < 1 flattens the model's free-energy "
        "differences by b, so rare states get more particles; the weights correct for it (1: none)",
    ),
    (
        "--anneal",
        ("anneal", "n_levels"),
        int,
        "annealing levels from the model to the target: a linear beta grid of this many, or the fewest with "
        "--anneal-cess",
    ),
    (
        "--anneal-cess",
        ("anneal", "cess"),
        float,
        "adaptive beta grid: more levels where one would lose more than this conditional ESS (0: the linear grid)",
    ),
    (
        "--handover",
        ("anneal", "handover"),
        str,
        "from the model's last level to the target: 'geometric' (the annealing levels) or 'laplace' (one exact "
        "importance step to clean configurations drawn near each particle's posterior mode; for a low --t-min)",
    ),
    (
        "--tilt",
        ("tilt", "kT"),
        float,
        "bias in kT towards the rare states (each residue's phi > 0) along the diffusion, removed exactly on the way "
        "to the target: those states end with more particles of distinct ancestry (0: none)",
    ),
    ("--tilt-t-on", ("tilt", "t_on"), float, "diffusion time below which the --tilt bias starts to grow"),
    ("--max-anneal", ("anneal", "max_levels"), int, "the most annealing levels with --anneal-cess"),
    ("--anneal-mcmc-steps", ("anneal", "mcmc_steps"), int, "MALA moves per annealing level (model and target forces)"),
    (
        "--anneal-inner-steps",
        ("anneal", "inner_steps"),
        int,
        "K > 0: each annealing move is a multiple-time-step HMC proposal, K steps on the target's forces inside one "
        "on the model's (one model evaluation per move, K times further) (0: MALA)",
    ),
    (
        "--final-mcmc-steps",
        ("final", "mcmc_steps"),
        int,
        "moves on the target alone after the last reweighting (target forces only; the weights stay valid)",
    ),
    (
        "--final-kernel",
        ("final", "kernel"),
        str,
        "kernel of the --final-mcmc-steps moves: 'same' (the annealing's), 'mala', or 'hmc' (--final-leapfrog "
        "target forces per move; relaxes the energy in fewer forces than MALA)",
    ),
    ("--final-leapfrog", ("final", "n_leapfrog"), int, "leapfrog steps per --final-kernel hmc move"),
    (
        "--final-md-moves",
        ("final", "md_moves"),
        int,
        "then this many Metropolis-adjusted MD proposals per particle with the atoms' masses (OpenMM targets; "
        "--final-md-leapfrog steps of --final-md-timestep fs each; exact, the weights stay valid) (0: none)",
    ),
    ("--final-md-timestep", ("final", "md_timestep"), float, "time step of the --final-md-moves in fs"),
    ("--final-md-leapfrog", ("final", "md_leapfrog"), int, "velocity-Verlet steps per --final-md-moves proposal"),
)


# ---------------------------------------------------------------------------- helpers
def merge(base: dict, update: Optional[dict]) -> dict:
    """A deep copy of ``base`` with the nested dict ``update`` merged over it.

    Parameters
    ----------
    base, update : dict
        Nested dicts; a dict value in ``update`` is merged into the one in ``base``, any other
        value replaces it.

    Returns
    -------
    dict
    """
    out = copy.deepcopy(base)
    for key, value in (update or {}).items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_recipes() -> dict:
    """The recipes file ``systems/recipes.yaml`` (quickstart sizes, benchmark arms).

    Returns
    -------
    dict
        ``{"quickstart": {name: recipe}, "benchmarks": {name: recipe}}``.
    """
    import yaml

    from .systems.catalog import data_path

    with open(data_path("recipes.yaml")) as handle:
        return yaml.safe_load(handle)


def load_recipe(kind: str, name: str) -> dict:
    """One recipe of ``systems/recipes.yaml``.

    Parameters
    ----------
    kind : {"quickstart", "benchmarks"}
    name : str
        E.g. ``"default"``, ``"long"``, ``"fast"`` (quickstart) or ``"aldp"`` (benchmarks).

    Returns
    -------
    dict
        A copy of the recipe.

    Raises
    ------
    KeyError
        For an unknown recipe (the message lists the known ones).
    """
    recipes = load_recipes()[kind]
    if name not in recipes:
        raise KeyError(f"unknown {kind} recipe {name!r}; known: {', '.join(recipes)}")
    return copy.deepcopy(recipes[name])


def sample_settings(settings=None, *, progress: bool = False):
    """An :class:`~boltzgen.sampling.smc.SMCSettings` from None, a nested dict or SMCSettings.

    Parameters
    ----------
    settings : None, dict or SMCSettings
        None: the defaults (those of ``boltzgen sample``); a dict: merged over the defaults.
    progress : bool
        Progress bar of the SMC.

    Returns
    -------
    SMCSettings
    """
    from .sampling.smc import SMCSettings

    if settings is None:
        settings = SMCSettings()
    elif isinstance(settings, dict):
        settings = SMCSettings.from_dict(merge(SMCSettings().to_dict(), settings))
    return dataclasses.replace(settings, progress=bool(progress))


def _resolve_target(target, options: Optional[dict] = None):
    """(TargetSystem, owned): a name or a resolve() recipe is loaded (and owned: closed by the
    caller of this helper)."""
    if isinstance(target, (str, dict)):
        from .systems.catalog import options_for, resolve, spec

        recipe = {"system": target} if isinstance(target, str) else dict(target)
        options = options_for(recipe, options)
        if "system" in recipe and not spec(recipe["system"]).openmm:
            temperature = recipe.pop("temperature", None)
            if temperature is not None:  # analytic targets: the same reduced energy at another temperature
                from .systems import TemperedTarget

                return TemperedTarget(resolve(**recipe, **options), temperature), True
        return resolve(**recipe, **options), True
    return target, False


def _check_output(path, what: str, need_bytes: Optional[int] = None, directory: bool = False) -> None:
    """Fail before any computing when an output cannot be written: a location under a regular
    file, a file where a directory belongs (or the other way round), a read-only location or too
    little free space (:func:`boltzgen.guards.check_writable`).

    Raises
    ------
    OutputError
    """
    import errno

    from .guards import OutputError

    full = os.path.abspath(os.fspath(path))
    if os.path.exists(full) and os.path.isdir(full) != directory:
        kind = "a file" if os.path.isdir(full) is False else "a directory"
        raise OutputError(errno.EEXIST, f"cannot write the {what} {full}: it is {kind}; choose another output")
    probe = os.path.dirname(full)
    while probe and not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if os.path.exists(probe) and not os.path.isdir(probe):
        raise OutputError(
            errno.ENOTDIR, f"cannot write the {what} {full}: {probe} is a file, not a directory; choose another output"
        )
    check_writable(full, need_bytes=need_bytes, what=what)


def _write_metrics(metrics: dict, path: Optional[str]) -> None:
    if path:
        from .io import write_json

        write_json(path, metrics)


# ---------------------------------------------------------------------------- simulate
def simulate_training_data(
    target,
    n: int,
    output: str,
    *,
    seed: int = 0,
    keep_replicas: int = 1,
    quench: Optional[float] = None,
    quench_processes: Optional[int] = None,
    progress: bool = True,
    metrics_path: Optional[str] = None,
    target_options: Optional[dict] = None,
    **options,
) -> dict:
    """Boltzmann samples of a target written to a sample file, resumable through ``OUTPUT.checkpoint``.

    Parameters
    ----------
    target : TargetSystem or str
        The target, or a built-in system name.
    n : int
        Frames (per kept replica), at least 1.
    output : str
        Sample file (.h5) to write.
    seed : int
        Seed of the simulation (and of the quench).
    keep_replicas : int
        Replica exchange: keep the frames of this many of the coldest replicas (training data for
        a model that must cover rare states). Only the target-temperature frames count as
        Boltzmann samples (the others get weight zero and a per-frame ``temperature_K`` array).
    quench : float, optional
        With ``keep_replicas >= 2``: relax every frame of the hotter replicas to the target
        temperature (minimisation, then this many ps of Langevin dynamics).
    quench_processes : int, optional
        Processes that quench the frames at once (default: one per core; the frames do not
        depend on it).
    progress : bool
        Progress bar.
    metrics_path : str, optional
        Also write the metrics there (JSON).
    target_options : dict, optional
        Options of :func:`~boltzgen.systems.resolve` when ``target`` is a name (``platform``,
        ``n_workers``).
    **options
        Options of :func:`boltzgen.md.simulate` (``stride``, ``equilibration``, ``timestep`` in fs,
        ``friction`` in 1/ps, ``replicas``, ``t_max`` in K, ``exchange_interval``); None values
        and missing ones take the system's defaults (:class:`~boltzgen.systems.catalog.SystemSpec`).

    Returns
    -------
    dict
        Metrics: ``system``, ``n_samples``, ``output``, ``wall_time_s``, ``mean_reduced_energy``,
        the simulation's metadata, and for ladder data ``kept_temperatures_K`` and ``quench``.

    Raises
    ------
    ValueError
        For invalid sizes or options.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if keep_replicas < 1:
        raise ValueError(f"keep_replicas must be at least 1, got {keep_replicas}")
    _check_output(output, "sample file")
    with output_lock(output, "sample file"):
        target, owned = _resolve_target(target, target_options)
        try:
            processes = (os.cpu_count() or 1) if quench_processes is None else quench_processes
            quench_options = {"time_ps": quench, "processes": processes}
            return _simulate(
                target, int(n), output, seed, int(keep_replicas), quench_options, progress, metrics_path, options
            )
        finally:
            if owned:
                target.close()


def _simulate(target, n, output, seed, keep, quench_options, progress, metrics_path, options) -> dict:
    from .io import save_samples
    from .md import ladder_frames, quench_frames, simulate
    from .systems import energies_and_forces
    from .systems.catalog import simulate_defaults

    options = {**simulate_defaults(target.name, target), **{k: v for k, v in options.items() if v is not None}}
    if options.get("replicas", 1) == 1:
        options.pop("t_max", None)
    if keep > 1:
        if target.topology is None or options.get("replicas", 1) < keep:
            raise ValueError(
                f"keeping {keep} replicas needs replica exchange (molecular MD) with at least {keep} "
                f"replicas; this run has {options.get('replicas', 1)}"
            )
        options["keep_replicas"] = True
    quench = quench_options["time_ps"]
    if quench is not None and (keep < 2 or not quench > 0):
        raise ValueError(
            f"quench needs a positive time in ps and at least 2 kept replicas (it relaxes the hotter "
            f"replicas' frames); got quench {quench} with {keep} kept"
        )
    checkpoint = output + ".checkpoint"
    start = time.perf_counter()
    result = simulate(target, n, seed=seed, checkpoint=checkpoint, progress=progress, **options)
    meta = {**target.metadata(), **result.metadata, "seed": seed, "command": "simulate"}
    positions, reduced_energy, arrays, log_weights = result.positions, result.reduced_energy, {}, None
    if keep > 1:
        positions, reduced_energy, arrays["temperature_K"] = ladder_frames(result, keep, target.kT)
        meta["kept_temperatures_K"] = [float(t) for t in result.metadata["temperatures_K"][:keep]]
        # As Boltzmann samples of the target, only the frames at its temperature count.
        log_weights = np.where(np.arange(len(positions)) < n, 0.0, -np.inf)
        if quench:
            reduced_energy[n:], meta["quench"] = quench_frames(
                target, positions[n:], platform=result.metadata["parameters"]["platform"], seed=seed, **quench_options
            )
    # The forces of every frame for target score matching (boltzgen.losses), at the target's
    # temperature like the energies; one bridge call per chunk, cheap beside the MD.
    # (Of the coordinates as stored: mdtraj keeps float32.)
    stored = positions.astype(np.float32).astype(np.float64) if target.topology is not None else positions
    _, reduced_force = energies_and_forces(target, stored)
    save_samples(
        output,
        positions,
        topology=target.topology,
        reduced_energy=reduced_energy,
        reduced_force=reduced_force,
        log_weights=log_weights,
        metadata=meta,
        extra=arrays,
    )
    if os.path.exists(checkpoint):
        os.remove(checkpoint)
    metrics = {
        "command": "simulate",
        "system": target.name,
        **result.metadata,
        "n_samples": int(positions.shape[0]),
        "output": os.path.abspath(output),
        "wall_time_s": time.perf_counter() - start,
        "mean_reduced_energy": float(result.reduced_energy.mean()),
    }
    if keep > 1:
        metrics.update(n_samples_per_replica=n, kept_temperatures_K=meta["kept_temperatures_K"])
        if "quench" in meta:
            metrics["quench"] = meta["quench"]
    _write_metrics(metrics, metrics_path)
    return metrics


# ---------------------------------------------------------------------------- train
def train(
    data: str,
    run_dir: str,
    *,
    system: Optional[str] = None,
    config_file: Optional[str] = None,
    loss: Optional[str] = None,
    net: Optional[str] = None,
    steps: Optional[int] = None,
    batch_size: Optional[int] = None,
    pretrain_dsm_steps: Optional[int] = None,
    state_fraction=None,
    threads: Optional[int] = None,
    processes: int = 1,
    seed: Optional[int] = None,
    start_from: Optional[str] = None,
    overrides: Optional[dict] = None,
    progress: bool = True,
    target: Optional[dict] = None,
) -> dict:
    """Train an energy model on a sample file into a run directory (resumes from its checkpoint).

    Configuration: the built-in defaults, the system's ``systems/<name>.train.yaml``,
    ``config_file``, ``overrides``, then the keyword arguments given here (None: not given).

    Parameters
    ----------
    data : str
        Sample file of unweighted samples (:func:`simulate_training_data`).
    run_dir : str
        Run directory (model.pt, checkpoints, train_log.csv, metrics.json, config.yaml).
    system : str, optional
        Built-in system the data belong to (default: from the data file).
    config_file : str, optional
        YAML configuration (may say ``extends: other.yaml``).
    loss : {"dsm", "diffclf", "dsm+diffclf"}, optional
    net : {"mlp", "egnn", "e3nn"}, optional
    steps, batch_size, pretrain_dsm_steps : int, optional
        Optimisation steps, configurations per step, steps of DSM alone first.
    state_fraction : float or "none", optional
        Share of every batch drawn from the least-populated state of the system's states;
        ``"none"`` draws frames uniformly.
    threads : int, optional
        Torch CPU threads per process.
    processes : int
        Data-parallel CPU processes (:func:`boltzgen.parallel.train_in_processes`).
    seed : int, optional
        Seed (default: the config's).
    start_from : str, optional
        Another run's DSM pre-training checkpoint to continue from.
    overrides : dict, optional
        Nested configuration keys, merged before the keyword arguments.
    progress : bool
        Progress bar.
    target : dict, optional
        The data's target as :func:`boltzgen.systems.resolve` arguments (for example
        ``{"sequence": "AAA", "solvent": "obc2"}``), for data whose file does not say (default:
        the file's metadata); recorded in the model so ``sample`` finds it.

    Returns
    -------
    dict
        The training metrics with ``command`` and ``run_dir``.
    """
    from .parallel import train_in_processes

    check_system_matches_data(system, data)
    _check_output(run_dir, "run directory", directory=True)
    given = _train_overrides(loss, net, steps, batch_size, pretrain_dsm_steps, state_fraction)
    with output_lock(run_dir, "run directory"):
        metrics = train_in_processes(
            processes,
            data,
            run_dir,
            system=system,
            config_file=config_file,
            overrides=merge(overrides or {}, given),
            seed=seed,
            threads=threads,
            progress=progress,
            start_from=start_from,
            target=target,
        )
    return {"command": "train", "run_dir": os.path.abspath(run_dir), **metrics}


def check_system_matches_data(system: Optional[str], data: str) -> None:
    """Fail before training when ``system`` is not a built-in name or not the data file's system.

    Parameters
    ----------
    system : str or None
        A built-in system name (None: taken from the data file later).
    data : str
        Sample file of the training data.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the built-in ones) or a name that differs from
        the ``system`` recorded in the data file's metadata.
    FileNotFoundError
        When the data file does not exist.
    """
    from .io import load_samples
    from .systems.catalog import names

    if system is None:
        return
    if system not in names():
        raise ValueError(f"unknown system {system!r}; built-in systems: {', '.join(names())}")
    recorded = load_samples(data).metadata.get("system")
    if recorded and recorded != system and recorded in names():
        raise ValueError(f"the data file {data} holds samples of {recorded!r}, not of --system {system!r}")


def _train_overrides(loss, net, steps, batch_size, pretrain_dsm_steps, state_fraction) -> dict:
    """The nested configuration keys that :func:`train`'s keyword arguments set."""
    given = {}
    if loss:
        given["loss"] = {"kind": loss}
    if net:
        given["net"] = {"kind": net}
    for key, value in (("steps", steps), ("batch_size", batch_size)):
        if value is not None:
            given.setdefault("train", {})[key] = value
    if pretrain_dsm_steps is not None:
        given["pretrain_dsm_steps"] = pretrain_dsm_steps
    if state_fraction is not None:
        off = isinstance(state_fraction, str) and state_fraction.strip().lower() == "none"
        given["data"] = {"state_fraction": None if off else float(state_fraction)}
    return given


# ---------------------------------------------------------------------------- sample
@dataclass
class SampleRun:
    """The pooled result of :func:`sample`.

    Attributes
    ----------
    x : ndarray, shape (n, *event_shape), float64
        Samples in the target's units (nm for molecules).
    log_w : ndarray, shape (n,) or None
        Log importance weights (pooled over runs by their log Z); None for ``method="sde"``.
    u : ndarray, shape (n,)
        Reduced energies u = U / kT of the samples.
    run_index : ndarray, shape (n,) of int, or None
        The SMC run each sample came from (``runs > 1``).
    labels : ndarray, shape (n,) of int, or None
        State labels of the target's :class:`~boltzgen.states.StateSet` (when it has one).
    results : list of SMCResult
        One per run (empty for ``method="sde"``).
    lineages : ndarray, shape (n,) of int, or None
        The SMC lineage of each sample (its run and its ancestor at t = 1 in that run), for
        :func:`boltzgen.weights.lineage_ess`; None for ``method="sde"``.
    metrics : dict
        Everything ``boltzgen sample`` writes to its metrics.json: ESS, log Z, the SMC trace, and
        per state ``state_free_energies_kT`` (F_k − F_0 in kT), ``state_counts``; for two-state
        systems ``delta_f_kT`` ± ``delta_f_err_kT`` and, with runs, ``delta_f_runs_kT``. An
        analysis that does not apply leaves a note (``*_note``) instead.
    """

    x: np.ndarray
    log_w: Optional[np.ndarray]
    u: np.ndarray
    run_index: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    results: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    lineages: Optional[np.ndarray] = None


def sample(
    run_dir: str,
    output: str,
    n: int,
    *,
    target=None,
    settings=None,
    method: str = "smc",
    runs: int = 1,
    per_state_resampling: bool = False,
    seed: int = 0,
    progress: bool = True,
    metrics_path: Optional[str] = None,
    target_options: Optional[dict] = None,
    processes: int = 1,
) -> SampleRun:
    """SMC (or a plain reverse SDE) from a trained model, reweighted to the target, written to a file.

    The sample file is written before any analysis; an analysis that does not apply to the
    target (no states, too few particles in a state) leaves a note in the metrics, never an error.

    Parameters
    ----------
    run_dir : str
        Run directory of :func:`train`.
    output : str
        Weighted sample file (.h5) to write.
    n : int
        Particles in all (shared by the runs).
    target : TargetSystem or str, optional
        Default: the system the model was trained on.
    settings : SMCSettings or dict, optional
        Sampler settings (:func:`sample_settings`; default: those of ``boltzgen sample``).
    method : {"smc", "sde"}
        ``"sde"`` draws unweighted samples of the model itself.
    runs : int
        Independent SMC runs sharing the ``n`` particles, pooled by their log Z: the free
        energies then get the error of a bootstrap over runs.
    per_state_resampling : bool
        Resample within the states of ``target.states`` (labels of the denoised estimate during
        the diffusion when ``settings.resampling.denoised_labels``).
    seed : int
        Seed of the sample: each SMC run draws from its own seed derived from it
        (:func:`boltzgen.sampling.runs.run_seeds`), as does the bootstrap.
    progress : bool
        Progress bar (one process only).
    metrics_path : str, optional
        Also write the metrics there (JSON).
    target_options : dict, optional
        Options of :func:`~boltzgen.systems.resolve` for a target given by name.
    processes : int
        CPU processes drawing the SMC runs at once, cores / P torch threads each
        (:func:`boltzgen.sampling.runs.smc_runs_in_processes`; the target must be one that
        :func:`~boltzgen.systems.catalog.target_recipe` can rebuild). The particles are the same
        for any P. The processes do not import the calling script again: a script needs no
        ``if __name__ == "__main__":`` guard.

    Returns
    -------
    SampleRun

    Raises
    ------
    ValueError
        For invalid sizes or settings, a missing model or a target of another shape.
    """
    import torch

    from .model import load_model

    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not 1 <= runs <= n:
        raise ValueError(f"runs must lie between 1 and n ({n}), got {runs}")
    if runs > 1 and method != "smc":
        raise ValueError("runs > 1 applies to method 'smc' (reverse-SDE samples are independent already)")
    if method not in ("smc", "sde"):
        raise ValueError(f"method must be 'smc' or 'sde', got {method!r}")
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes must be a whole number of at least 1, got {processes!r}")
    _check_output(output, "sample file", need_bytes=sample_file_bytes(n, run_dir))
    check_memory(
        SMC_BYTES_PER_COORDINATE * n * _coordinates_per_sample(run_dir),
        f"{n} particles",
        "a smaller -n, or several runs of the sampler one after another pooled with boltzgen reweight",
    )
    with output_lock(output, "sample file"):
        model = load_model(run_dir)
        settings = _checked_settings(sample_settings(settings, progress=progress), model, per_state_resampling)
        if target is None:
            target = model.metadata.get("target") or model.metadata.get("system")
            if not target:
                raise ValueError(f"{run_dir} does not say which system it was trained on; name the target")
        target, owned = _resolve_target(target, target_options)
        generator = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        try:
            if tuple(target.event_shape) != tuple(model.event_shape):
                raise ValueError(
                    f"the model is for configurations of shape {tuple(model.event_shape)}, "
                    f"the target {target.name} has {tuple(target.event_shape)}"
                )
            if model.topology is not None and target.topology is not None:
                from .free_energy import check_same_particles

                check_same_particles(model, target)  # same count, other atoms: a clear error
            # the StateSet to resample within: a clear error before any work
            strata = resampling_strata(target, settings.resampling.strata) if per_state_resampling else None
            if method == "smc":
                from .free_energy import transfer_tempering

                settings = transfer_tempering(settings, model, target)
                result = _run_smc(model, target, n, runs, settings, strata, seed, processes, run_dir, target_options)
            else:
                x = torch.as_tensor(_reverse_sde(model, n, generator, settings))
                result = SampleRun(x, None, target.reduced_energy(x).detach().numpy(), metrics={"n_reflected": 0})
        finally:
            if owned:
                target.close()
        return _finish_sample(
            result, target, model, run_dir, output, n, method, runs, settings, seed, start, metrics_path
        )


def sample_file_bytes(n: int, run_dir: str) -> int:
    """About how many bytes a sample file of ``n`` configurations of a run's model takes.

    Parameters
    ----------
    n : int
        Number of samples.
    run_dir : str
        Run directory (its ``config.yaml`` is not read: the size comes from the model file's
        event shape when it can be read, else a molecule of 100 atoms is assumed).

    Returns
    -------
    int
        n · (coordinates in float32 and float64 + three float64 arrays) plus a margin.
    """
    per_sample = _coordinates_per_sample(run_dir) * 12 + 3 * 8
    return int(n) * per_sample + (1 << 20)


def _coordinates_per_sample(run_dir: str) -> int:
    try:
        from .model import load_checkpoint

        shape = load_checkpoint(os.path.join(run_dir, "model.pt")).get("event_shape") or (100, 3)
    except (OSError, ValueError):
        shape = (100, 3)
    return int(np.prod(shape))


#: Bytes the SMC holds per particle coordinate at its peak (positions, gradients of the model and
#: the target, proposals and weights in float64; model evaluations are chunked).
SMC_BYTES_PER_COORDINATE = 96


def _checked_settings(settings, model, per_state_resampling: bool):
    """SMCSettings with t_min filled in from the model; ValueError for a t_min below the model's."""
    d = settings.diffusion
    if d.t_min is not None and not model.t_min <= d.t_min < 1.0:
        raise ValueError(
            f"t_min must lie in [{model.t_min:g}, 1) (the model is trained down to t = "
            f"{model.t_min:g}), got {d.t_min:g}"
        )
    if settings.resampling.balance_states and not per_state_resampling:
        raise ValueError("balance_states needs per-state resampling")
    if settings.anneal.keep_states and not per_state_resampling:
        raise ValueError("anneal.keep_states needs per-state resampling")
    if settings.resampling.strata != "states" and not per_state_resampling:
        raise ValueError(f"resampling.strata {settings.resampling.strata!r} needs per-state resampling")
    diffusion = dataclasses.replace(d, t_min=model.t_min if d.t_min is None else float(d.t_min))
    return dataclasses.replace(settings, diffusion=diffusion)


def _reverse_sde(model, n, generator, settings):
    from .sampling.sde import reverse_sde

    d = settings.diffusion
    return reverse_sde(model, n, generator, n_steps=d.n_steps, t_min=d.t_min, mcmc_steps=d.mcmc_steps)


def _run_smc(
    model, target, n: int, runs: int, settings, strata, seed: int, processes: int, run_dir: str, target_options
) -> SampleRun:
    """R independent SMC runs of n / R particles each, each from its own seed, pooled by their log
    Z estimates; with a StateSet ``strata`` (:func:`~boltzgen.states.resampling_strata`) resampled
    within its states; over ``processes`` processes when P > 1, each loading the model of
    ``run_dir`` (:func:`boltzgen.sampling.runs.smc_runs_in_processes`)."""
    import torch

    from .sampling.runs import pool_results, pooled_lineages, run_seeds, run_sizes, smc_runs_in_processes
    from .sampling.smc import smc_sample
    from .weights import ess_fraction as ess_fraction_of
    from .weights import lineage_ess

    sizes, seeds = run_sizes(n, runs), run_seeds(seed, runs)
    if processes > 1 and runs > 1:
        results = smc_runs_in_processes(
            run_dir,
            target,
            sizes,
            seeds,
            settings,
            strata=None if strata is None else settings.resampling.strata,
            processes=processes,
            target_options=target_options,
        )
    else:
        results = [
            smc_sample(model, target, size, torch.Generator().manual_seed(s), settings=settings, states=strata)
            for size, s in zip(sizes, seeds)
        ]
    log_w, log_z = pool_results(results)
    x = torch.cat([r.x for r in results])
    u = torch.cat([r.reduced_energy for r in results]).numpy()
    run_index = None if runs == 1 else np.repeat(np.arange(runs), [r.n_particles for r in results])
    lineages = pooled_lineages(results)
    summaries = [r.summary() for r in results]
    acceptance = [a for sm in summaries for a in sm["acceptance"] if a is not None]
    # The headline ESS is that of the final weights: SMC never resamples after the last
    # reweighting, so for one run it is also the ESS of its last level.
    ess_fraction = float(results[0].ess[-1]) if runs == 1 else ess_fraction_of(log_w)
    metrics = {
        "ess": ess_fraction * n,
        "ess_fraction": ess_fraction,
        "ess_fraction_final_weights": ess_fraction_of(log_w),
        "resampled_levels": sum(len(r.resampled) for r in results),
        "log_z": log_z,
        "acceptance": float(sum(acceptance) / len(acceptance)) if acceptance else None,
        "n_reflected": int(sum(r.n_reflected for r in results)),
        "warnings": [f"run {i + 1}: {w}" if len(results) > 1 else w for i, r in enumerate(results) for w in r.warnings],
        "n_anneal_levels": max(sm["n_anneal_levels"] for sm in summaries),
        "n_ancestors": sum(r.n_ancestors for r in results),
        "n_ancestors_anneal": sum(r.n_ancestors_anneal for r in results),
        "lineage_ess": lineage_ess(log_w, lineages) if np.isfinite(log_w).any() else None,
        "final_acceptance": summaries[0]["final_acceptance"],
        "tempering": settings.diffusion.tempering,
        "per_state_resampling": strata is not None,
        "denoised_state_labels": strata is not None and bool(settings.resampling.denoised_labels),
        "balance_states": bool(settings.resampling.balance_states),
        "runs": runs,
        "settings": settings.to_dict(),
        "smc": summaries[0],
    }
    if runs > 1:
        metrics.update(
            log_z_runs=[r.log_z for r in results],
            ess_fraction_runs=[float(r.ess[-1]) for r in results],
            smc_runs=summaries[1:],
        )
    return SampleRun(x, log_w, u, run_index=run_index, results=results, metrics=metrics, lineages=lineages)


def _finish_sample(
    result: SampleRun, target, model, run_dir, output, n, method, runs, settings, seed, start, metrics_path
) -> SampleRun:
    """Write the sample file, then the analyses that apply (state free energies), then the metrics."""
    from .io import save_samples

    result.x = result.x.detach().cpu().double().numpy() if hasattr(result.x, "detach") else np.asarray(result.x)
    meta = {
        **target.metadata(),
        "command": "sample",
        "method": method,
        "seed": seed,
        "run_dir": os.path.abspath(run_dir),
        "runs": runs if method == "smc" else 1,
    }
    save_samples(
        output,
        result.x,
        topology=target.topology,
        log_weights=result.log_w,
        reduced_energy=result.u,
        metadata=meta,
        extra=_sample_extra(result),
    )
    metrics = {
        "command": "sample",
        "system": target.name,
        "method": method,
        "n_samples": n,
        "t_min": settings.diffusion.t_min,
        "output": os.path.abspath(output),
        "wall_time_s": time.perf_counter() - start,
        **result.metrics,
    }
    if result.log_w is not None:
        metrics.update(_state_analysis(result, target, seed, runs))
    result.metrics = metrics
    _write_metrics(metrics, metrics_path)
    return result


def _state_analysis(result: SampleRun, target, seed: int, runs: int) -> dict:
    """Free energies of the target's states from the weighted samples (a note where none apply)."""
    from .analysis import bootstrap_clusters

    state_set = target.states
    if state_set is None:
        return {"states_note": f"{target.name} has no states (target.states is None): no free energies"}
    try:
        result.labels = labels = np.asarray(state_set.assign(result.x), dtype=np.int64)
    except Exception as exc:  # an analysis never costs the samples: they are on disk already
        return {"states_note": f"could not assign states: {exc}"}
    names = list(state_set.names)
    out: dict[str, Any] = {
        "states": {"name": state_set.name, "names": names},
        "state_counts": np.bincount(labels, minlength=len(names)).tolist(),
    }
    groups, method = bootstrap_clusters(result.log_w, result.run_index, result.lineages)
    out.update(_state_free_energies(result.log_w, labels, len(names), seed, groups))
    if result.lineages is not None:
        out.update(_state_lineages(result, labels, names))
    if len(names) == 2:
        out.update(_two_state_delta_f(result, labels, names, seed, runs, groups, method))
    if result.run_index is not None:
        out["state_counts_runs"] = [
            np.bincount(labels[result.run_index == r], minlength=len(names)).tolist() for r in range(runs)
        ]
    return out


#: Below this many effective lineages a state's SMC free energy is flagged as scattering between runs.
MIN_STATE_LINEAGES = 5


def _state_lineages(result: SampleRun, labels, names) -> dict:
    """Effective lineages (:func:`boltzgen.weights.lineage_ess`) of each state's weight, with a
    warning for each state whose free energy rests on fewer than :data:`MIN_STATE_LINEAGES`."""
    from .weights import lineage_ess

    per_state = {}
    for k, name in enumerate(names):
        pick = labels == k
        if pick.any() and np.isfinite(result.log_w[pick]).any():
            per_state[name] = lineage_ess(result.log_w[pick], result.lineages[pick])
    for name, value in per_state.items():
        if value < MIN_STATE_LINEAGES:
            result.metrics["warnings"].append(
                f"the weight of state {name} rests on {value:.1f} effective SMC lineages (particles at t = 1): "
                "its free energy can be off by several kT beyond the quoted error (more particles or --runs)"
            )
    return {"lineage_ess_states": per_state}


def _sample_extra(result: SampleRun) -> Optional[dict]:
    """The per-particle arrays a sample file keeps beside the weights: ``smc_run`` (the run of
    each particle, with runs) and ``smc_lineage`` (its lineage over all runs), or None."""
    extra = {"smc_run": result.run_index, "smc_lineage": result.lineages}
    return {k: v for k, v in extra.items() if v is not None} or None


def _one_cluster(groups, log_w) -> bool:
    """Whether all the weight sits in one bootstrap cluster (then no error can be estimated)."""
    return groups is not None and np.unique(np.asarray(groups)[np.isfinite(log_w)]).size < 2


def _state_free_energies(log_w, labels, n_states: int, seed: int, groups) -> dict:
    from .weights import state_free_energies, state_free_energies_point

    try:
        if _one_cluster(groups, log_w):  # one lineage carries everything: values without errors
            values = state_free_energies_point(log_w, labels, n_states)
            return {
                "state_free_energies_kT": [_finite(v) for v in values],
                "state_free_energies_err_kT": [0.0 if i == 0 else None for i in range(n_states)],
            }
        estimates = state_free_energies(log_w, labels, n_states, groups=groups, seed=seed)
    except ValueError as exc:
        return {"state_free_energies_kT": None, "state_free_energies_note": str(exc)}
    return {
        "state_free_energies_kT": [_finite(e.value) for e in estimates],
        "state_free_energies_err_kT": [_finite(e.error) for e in estimates],
    }


def _two_state_delta_f(result: SampleRun, labels, names, seed: int, runs: int, groups, method: str) -> dict:
    """F(names[1]) − F(names[0]) in kT with its bootstrap error over ``groups`` (named ``method``;
    :func:`boltzgen.analysis.bootstrap_clusters`), and per run (as for alanine dipeptide)."""
    from .weights import delta_f, delta_f_point

    in_a, in_b = labels == 0, labels == 1
    log_w, run_index = result.log_w, result.run_index
    out: dict[str, Any] = {}
    try:
        if _one_cluster(groups, log_w):
            estimate = (delta_f_point(log_w, in_a, in_b), math.inf)
        else:
            estimate = delta_f(log_w, in_a, in_b, seed=seed, groups=groups)
        out.update(
            delta_f_kT=estimate[0],
            delta_f_err_kT=estimate[1],
            delta_f_error_method=method,
            delta_f_definition=f"F({names[1]}) - F({names[0]}) in kT",
        )
    except ValueError as exc:
        out.update(delta_f_kT=None, delta_f_note=str(exc))
    if run_index is None and result.lineages is not None and out.get("delta_f_kT") is not None:
        # one run: the lineage bootstrap is the best single-run error, itself uncertain with few lineages
        result.metrics["warnings"].append(
            f"the Delta F error is a bootstrap over the lineages of one SMC run ({result.metrics['n_ancestors']} "
            "ancestors at t = 1): with few lineages the error is itself uncertain (use --runs 2 or more)"
        )
    if run_index is not None:
        in_run = [run_index == r for r in range(runs)]
        out["delta_f_runs_kT"] = [_finite(delta_f_point(log_w[m], in_a[m], in_b[m])) for m in in_run]
        if out.get("delta_f_kT") is not None:
            out.update(_jackknife_delta_f(log_w, in_a, in_b, run_index))
    return out


def _jackknife_delta_f(log_w, in_a, in_b, run_index) -> dict:
    """ΔF with the leading bias of few pooled runs removed (:func:`boltzgen.weights.jackknife`
    over the runs) and its jackknife error; None where a state rests on one run."""
    from .weights import delta_f_point, jackknife

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # undefined: reported as None below
        estimate = jackknife(delta_f_point, log_w, in_a, in_b, groups=run_index)
    defined = math.isfinite(estimate.error)
    return {
        "delta_f_jackknife_kT": _finite(estimate.value) if defined else None,
        "delta_f_jackknife_err_kT": _finite(estimate.error) if defined else None,
    }


def _finite(value):
    return float(value) if value is not None and np.isfinite(value) else None


# ---------------------------------------------------------------------------- free energies between targets
def free_energy(
    target_from,
    target_to,
    *,
    run_dir: Optional[str] = None,
    samples_from: Optional[str] = None,
    samples_to: Optional[str] = None,
    output_dir: Optional[str] = None,
    n: int = 1024,
    runs: int = 4,
    md_frames: int = 2000,
    lambda_states: Optional[int] = None,
    md_options: Optional[dict] = None,
    path_levels: int = 16,
    settings=None,
    per_state_resampling: bool = False,
    seed: int = 0,
    progress: bool = True,
    target_options: Optional[dict] = None,
) -> dict:
    """ΔF = F_to − F_from = −log(Z_to / Z_from) in kT between two targets on the same particles.

    One route, by what is given (:mod:`boltzgen.free_energy`):

    - ``run_dir``: a trained model proposes for the first target by SMC (``runs`` runs of
      ``n`` / runs particles each) and each run is carried on to the second along the λ path in
      ``path_levels`` steps; ΔF from the runs' ratios Ẑ_to / Ẑ_from, in which the model's
      normaliser cancels exactly (``path_levels=0``: an SMC run to each target and the difference
      of their log Z instead); BAR on the two weighted sample sets beside it
      (:func:`boltzgen.free_energy.delta_f_from_model`). The weighted samples are written to
      ``output_dir`` when given.
    - ``samples_from`` and ``samples_to``: sample files of both ends (MD, or weighted samples);
      BAR on them.
    - neither: the plain MD route, with OpenMM alone. ``simulate_training_data`` (the targets'
      default replica exchange, ``md_frames`` frames each, into ``output_dir``) at the two ends
      and at intermediate states of the linear path u_λ = (1 − λ) u_A + λ u_B
      (:func:`boltzgen.systems.alchemical.path_target`), then MBAR over all states
      (:func:`boltzgen.weights.mbar_path`, each series thinned by its statistical inefficiency);
      BAR on the two ends alone is reported beside it as ``bar_ends``.

    Parameters
    ----------
    target_from, target_to : TargetSystem, str or dict
        The ends: targets, built-in names, or :func:`boltzgen.systems.resolve` arguments.
    run_dir : str, optional
        Run directory of :func:`train` (the model route).
    samples_from, samples_to : str, optional
        Sample files of the two ends (the samples route).
    output_dir : str, optional
        Where samples and ``metrics.json`` go (needed by the MD route).
    n, runs : int
        Particles per target and independent SMC runs (model route).
    md_frames : int
        Frames per state (MD route).
    lambda_states : int, optional
        States on the λ path of the MD route, ends included, evenly spaced in λ (2: the ends
        alone). Default: 5 for two OpenMM targets at one temperature, else 2.
    path_levels : int
        λ steps of the model route from the first target to the second (0: two SMC runs).
    md_options : dict, optional
        Options of :func:`boltzgen.md.simulate` for every state of the MD route (``replicas``,
        ``t_max``, ``stride``, ``equilibration``, …) over the targets' defaults.
    settings : SMCSettings or dict, optional
        Sampler settings (model route).
    per_state_resampling : bool
        Model route: resample the SMC runs within each target's states (as :func:`sample`;
        ``settings.resampling`` and ``settings.anneal.keep_states`` act then), so that the
        weights of its conformational states, on which ΔF between targets depends, are kept.
    seed : int
    progress : bool
    target_options : dict, optional
        Options of :func:`boltzgen.systems.resolve` for targets given by name (``platform``,
        ``n_workers``).

    Returns
    -------
    dict
        ``delta_f_kT``, ``delta_f_err_kT``, ``route``, ``from``, ``to``, ``wall_time_s`` and the
        route's own numbers (:func:`boltzgen.free_energy.delta_f_from_model` or
        :func:`~boltzgen.free_energy.delta_f_from_samples`).

    Raises
    ------
    ValueError
        Targets of other particles, a half-given samples route, or the MD route without an
        output directory.
    """
    from .free_energy import check_same_particles

    if (samples_from is None) != (samples_to is None):
        raise ValueError("give sample files of both ends (--samples-from and --samples-to), or neither")
    if run_dir is not None and samples_from is not None:
        raise ValueError("choose one route: a model (--model) or sample files (--samples-from/--samples-to)")
    route = "model" if run_dir is not None else "samples" if samples_from is not None else "md"
    if route == "md" and output_dir is None:
        raise ValueError("the MD route writes the simulations of both ends: give an output directory (-o DIR)")
    if output_dir is not None:
        _check_output(output_dir, "output directory", directory=True)
    start = time.perf_counter()
    lock = output_lock(output_dir, "output directory") if output_dir is not None else contextlib.nullcontext()
    with lock:
        a, own_a = _resolve_target(target_from, target_options)
        try:
            b, own_b = _resolve_target(target_to, target_options)
            try:
                check_same_particles(a, b)
                if route == "model":
                    out = _free_energy_by_model(
                        run_dir, a, b, n, runs, settings, seed, progress, output_dir, path_levels, per_state_resampling
                    )
                elif route == "samples":
                    out = _free_energy_from_files(a, b, samples_from, samples_to, seed)
                else:
                    out = _free_energy_by_md(a, b, lambda_states, md_frames, output_dir, seed, progress, md_options)
            finally:
                if own_b:
                    b.close()
        finally:
            if own_a:
                a.close()
        out.update({"command": "free-energy", "route": route, "from": a.name, "to": b.name})
        out.update(delta_f_definition=f"F({b.name}) - F({a.name}) in kT", wall_time_s=time.perf_counter() - start)
        if output_dir is not None:
            _write_metrics(out, os.path.join(output_dir, "metrics.json"))
    return out


def _free_energy_by_model(
    run_dir, a, b, n, runs, settings, seed, progress, output_dir, path_levels=16, per_state_resampling=False
) -> dict:
    import torch

    from .free_energy import check_same_particles, delta_f_from_model, transfer_tempering
    from .io import save_samples
    from .model import load_model

    model = load_model(run_dir)
    check_same_particles(model, a)
    settings = _checked_settings(sample_settings(settings, progress=progress), model, per_state_resampling)
    strata = {}
    if per_state_resampling:  # the StateSets of both ends: a clear error before any work
        strata = {key: resampling_strata(t, settings.resampling.strata) for key, t in (("states", a), ("states_b", b))}
    out = delta_f_from_model(
        model,
        a,
        b,
        n,
        runs,
        settings=transfer_tempering(settings, model, a),
        settings_b=transfer_tempering(settings, model, b),
        path_levels=path_levels,
        generator=torch.Generator().manual_seed(seed),
        seed=seed,
        **strata,
    )
    out["per_state_resampling"] = bool(per_state_resampling)
    samples = out.pop("samples")
    if output_dir is not None:
        for end, target in (("a", a), ("b", b)):
            path = os.path.join(output_dir, f"samples_{'from' if end == 'a' else 'to'}.h5")
            save_samples(
                path,
                samples[f"x_{end}"],
                topology=target.topology,
                log_weights=samples[f"log_w_{end}"],
                reduced_energy=samples[f"u_{end}"],
                metadata={**target.metadata(), "command": "free-energy"},
            )
    return out


def path_lambda_states(a, b, lambda_states: Optional[int] = None) -> np.ndarray:
    """λ of the MD route's states between targets ``a`` and ``b`` (see :func:`free_energy`).

    Parameters
    ----------
    a, b : TargetSystem
        The ends.
    lambda_states : int, optional
        Number of states, ends included (default: 5 for two OpenMM targets at one temperature,
        else 2).

    Returns
    -------
    numpy.ndarray, shape (K,)
        Evenly spaced λ from 0 to 1.

    Raises
    ------
    ValueError
        Fewer than 2 states, or intermediate states between targets the λ path cannot join.
    """
    from .systems import OpenMMTarget

    joinable = all(isinstance(t, OpenMMTarget) for t in (a, b)) and a.temperature == b.temperature
    if lambda_states is None:
        lambda_states = 5 if joinable else 2
    if lambda_states < 2:
        raise ValueError(f"the λ path needs at least its 2 ends, got {lambda_states} states")
    if lambda_states > 2 and not joinable:
        raise ValueError(
            f"intermediate λ states need two OpenMM targets at one temperature ({a.name}, {a.temperature} K; "
            f"{b.name}, {b.temperature} K): use 2 states (BAR between the ends)"
        )
    return np.linspace(0.0, 1.0, int(lambda_states))


def _free_energy_by_md(a, b, lambda_states, frames, output_dir, seed, progress, md_options=None) -> dict:
    """MD at every state of the λ path (OpenMM alone), MBAR over them, BAR on the ends beside it."""
    from .free_energy import delta_f_from_samples, reduced_energies
    from .io import load_samples
    from .systems.alchemical import path_target
    from .systems.catalog import simulate_defaults
    from .weights import mbar_path

    lambdas = path_lambda_states(a, b, lambda_states)
    paths, samples, energies = [], [], []
    for k, lam in enumerate(lambdas):
        end = {0: "from", len(lambdas) - 1: "to"}.get(k)
        path = os.path.join(output_dir, f"md_{end}.h5" if end else f"md_lambda_{lam:.4f}.h5")
        options = dict(md_options or {})
        if end is None:
            # The intermediate states take the MD settings of the first end (the same molecule).
            target = path_target(a, b, float(lam))
            try:
                options = {**simulate_defaults(a.name, a), **options}
                simulate_training_data(target, frames, path, seed=seed + k, progress=progress, **options)
            finally:
                target.close()
        else:
            simulate_training_data(a if end == "from" else b, frames, path, seed=seed + k, progress=progress, **options)
        samples.append(load_samples(path, topology=a.topology if a.is_molecular else None))
        energies.append((reduced_energies(a, samples[-1].x), reduced_energies(b, samples[-1].x)))
        paths.append(path)
    out = mbar_path([u_b - u_a for u_a, u_b in energies], lambdas)
    out.update(method="mbar", lambdas=[float(v) for v in lambdas], samples=[os.path.abspath(p) for p in paths])
    first, last = samples[0], samples[-1]  # BAR on the ends alone, reusing their energies
    out["bar_ends"] = delta_f_from_samples(
        a, b, first.x, last.x, first.log_weights, last.log_weights, u_a=energies[0][0], u_b=energies[-1][1], seed=seed
    )
    out.update(samples_from=os.path.abspath(paths[0]), samples_to=os.path.abspath(paths[-1]))
    return out


def _free_energy_from_files(a, b, path_a: str, path_b: str, seed: int) -> dict:
    from .free_energy import delta_f_from_samples
    from .io import load_samples

    # log_weights None: equal weights (MD); ladder data weight the target-temperature frames only
    ends = [load_samples(p, topology=t.topology if t.is_molecular else None) for p, t in ((path_a, a), (path_b, b))]
    out = delta_f_from_samples(a, b, ends[0].x, ends[1].x, ends[0].log_weights, ends[1].log_weights, seed=seed)
    out.update(samples_from=os.path.abspath(path_a), samples_to=os.path.abspath(path_b))
    return out


# ---------------------------------------------------------------------------- reweight, analyze
def reweight(
    samples: str,
    target,
    output: str,
    *,
    log_q=None,
    seed: int = 0,
    n_bootstrap: int = 200,
    block_size=None,
    progress: bool = True,
    metrics_path: Optional[str] = None,
    target_options: Optional[dict] = None,
    log_q_from_energy=None,
    proposal_temperature: Optional[float] = None,
) -> dict:
    """Importance weights of a sample file against a target (:func:`boltzgen.reweight.reweight_samples`).

    Parameters
    ----------
    samples : str
        Sample file to reweight.
    target : TargetSystem or str
        The target (or a built-in name).
    output : str
        Weighted sample file to write.
    log_q : str or ndarray, optional
        Proposal log-density per sample: an array name in ``samples``, a .npy file, or values
        (default: the file's ``log_q`` array).
    seed, n_bootstrap, block_size
        Bootstrap of the errors (``block_size``: frames per block, ``"auto"`` or None).
    progress : bool
        Progress bar.
    metrics_path : str, optional
        Also write the metrics there (JSON).
    target_options : dict, optional
        Options of :func:`~boltzgen.systems.resolve` for a target given by name.
    log_q_from_energy : str or ndarray, optional
        Instead of ``log_q``: the proposal's potential energies U_A (kJ/mol, one per frame; a text
        or .npy file, or values) of frames drawn from exp(−U_A / kT_A); log q = −U_A / kT_A.
    proposal_temperature : float, optional
        T_A in K for ``log_q_from_energy`` (default: the target's temperature).

    Returns
    -------
    dict
        Metrics (ESS, log Z, free energies of the target's states) with ``command`` and ``wall_time_s``.
    """
    from .reweight import reweight_samples

    if not os.path.exists(samples):
        raise FileNotFoundError(f"sample file not found: {samples}")
    _check_output(output, "sample file")
    with output_lock(output, "sample file"):
        target, owned = _resolve_target(target, target_options)
        start = time.perf_counter()
        try:
            metrics = reweight_samples(
                samples,
                target,
                log_q=log_q,
                out_path=output,
                seed=seed,
                n_bootstrap=n_bootstrap,
                block_size=block_size,
                progress=progress,
                log_q_from_energy=log_q_from_energy,
                proposal_temperature=proposal_temperature,
            )
        finally:
            if owned:
                target.close()
        metrics = {"command": "reweight", **metrics, "wall_time_s": time.perf_counter() - start}
        _write_metrics(metrics, metrics_path)
        return metrics


def analyze(
    samples: str,
    out_dir: str,
    reference: Optional[str] = None,
    *,
    run_dir: Optional[str] = None,
    seed: int = 0,
    topology=None,
) -> dict:
    """Plots, metrics.json and index.html of a sample file in ``out_dir`` (:func:`boltzgen.report.analyze`).

    Parameters
    ----------
    samples : str
        Sample file (weighted or not).
    out_dir : str
        Report directory.
    reference : str, optional
        Reference sample file of the same system (W2 distances, reference free energies).
    run_dir : str, optional
        Run directory for the training-loss curves (default: the one recorded in the file).
    seed : int
        Seed of the bootstrap errors.
    topology : path or mdtraj.Topology, optional
        Topology for a trajectory format without one (DCD, XTC, …), e.g. a target's.

    Returns
    -------
    dict
        The report's metrics.
    """
    from .report import analyze as report_analyze

    for label, path in (("sample file", samples), ("reference file", reference)):
        if path is not None and not os.path.exists(path):
            raise FileNotFoundError(f"{label} not found: {path}")
    if run_dir is not None and not os.path.isdir(run_dir):
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    _check_output(out_dir, "report directory", directory=True)
    with output_lock(out_dir, "report directory"):
        return report_analyze(samples, out_dir, reference, run_dir=run_dir, seed=seed, topology=topology)


# ---------------------------------------------------------------------------- quickstart
def _leaves(tree: dict, prefix: str = ""):
    """(dotted path, value) of every non-dict leaf of a nested dict."""
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _leaves(value, path + ".")
        else:
            yield path, value


def _yaml_scalar(value) -> str:
    """A leaf value as ``--set`` reads it back (YAML flow form, no trailing newline)."""
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def command_line(command: str, positional=(), options: Optional[dict] = None, settings: Optional[dict] = None) -> str:
    """The ``boltzgen`` command line that runs what a workflow call runs (printed by the quickstart).

    Parameters
    ----------
    command : str
        Sub-command.
    positional : sequence
        Positional arguments.
    options : dict, optional
        Keyword arguments of the workflow function; ``key_name`` becomes ``--key-name`` (``n``:
        ``-n``, ``output``: ``-o``), True a bare flag; None and False are left out; ``overrides``
        (nested configuration keys) become ``--set SECTION.KEY=VALUE``.
    settings : dict, optional
        Nested SMCSettings dict, written with the flags of :data:`SAMPLE_OPTIONS`.

    Returns
    -------
    str
    """
    words = ["boltzgen", command, *map(str, positional)]
    for key, value in (options or {}).items():
        if value is None or value is False:
            continue
        if key == "overrides":
            words += [w for path, leaf in _leaves(value) for w in ("--set", f"{path}={_yaml_scalar(leaf)}")]
            continue
        flag = {"n": "-n", "output": "-o"}.get(key, "--" + key.replace("_", "-"))
        words += [flag] if value is True else [flag, str(value)]
    flags = {path: flag for flag, path, _, _ in SAMPLE_OPTIONS}
    for section, values in (settings or {}).items():
        for key, value in values.items():
            flag = flags.get((section, key), "--" + key.replace("_", "-"))
            words += [flag] if value is True else [flag, str(value)]
    return " ".join(shlex.quote(w) for w in words)


def quickstart(
    out_dir: str,
    recipe="default",
    *,
    seed: int = 0,
    progress: bool = True,
    log: Optional[Callable[[str], None]] = None,
    reference: Optional[str] = None,
    analyze_samples: bool = True,
) -> dict:
    """Run simulate → train → sample → analyze from a recipe of ``systems/recipes.yaml`` into ``out_dir``.

    Stages whose output exists are resumed or skipped (training resumes from its last
    checkpoint, a finished ``samples.h5`` is not redrawn). The worker processes of every stage
    start without importing the calling script again: a script needs no
    ``if __name__ == "__main__":`` guard.

    Parameters
    ----------
    out_dir : str
        Output directory: ``data.h5``, ``run/``, ``samples.h5``, ``report/``, ``stages/*.json``
        (metrics of every stage) and ``metrics.json`` (the summary).
    recipe : str or dict
        A quickstart recipe name (``"default"``, ``"long"``, ``"fast"``) or a recipe dict of the
        same form (``system``, ``simulate``, ``train``, ``sample``; ``data`` to reuse a file).
    seed : int
        Seed of every stage.
    progress : bool
        Progress bars.
    log : callable, optional
        Receives the equivalent command lines and notes (default: print to stderr).
    reference : str, optional
        Reference sample file of the report (default: the training data).
    analyze_samples : bool
        Write ``out_dir/report``.

    Returns
    -------
    dict
        The summary: ``system``, ``n_samples``, ``ess``, ``ess_fraction``, ``log_z``, state free
        energies (``states``, ``state_free_energies_kT``, for two states ``delta_f_kT`` ±
        ``delta_f_err_kT`` and ``delta_f_runs_kT``), the report's ``energy_w2`` (with its floor) and reference
        values, ``stage_seconds``, ``total_seconds`` and ``files``; also in ``out_dir/metrics.json``.
    """
    from .io import write_json

    plan = load_recipe("quickstart", recipe) if isinstance(recipe, str) else copy.deepcopy(recipe)
    if log is None:

        def log(line: str) -> None:
            print(line, file=sys.stderr, flush=True)

    os.makedirs(os.path.join(out_dir, "stages"), exist_ok=True)
    stage = lambda name: os.path.join(out_dir, "stages", f"{name}.json")  # noqa: E731
    system, seconds = plan["system"], {}
    data, run_dir = plan.get("data"), os.path.join(out_dir, "run")
    samples = os.path.join(out_dir, "samples.h5")
    _check_recipe_of_outputs(out_dir, {**plan, "seed": seed}, stage("recipe"))
    if data is None:
        data = os.path.join(out_dir, "data.h5")
        seconds["simulate"] = _stage_simulate(system, data, plan.get("simulate", {}), seed, progress, stage, log)
    train_options = {"system": system, **plan.get("train", {})}
    log("$ " + command_line("train", (), {"data": data, "output": run_dir, **train_options, "seed": seed}))
    start = time.perf_counter()
    trained = train(data, run_dir, seed=seed, progress=progress, **train_options)
    seconds["train"] = time.perf_counter() - start
    if trained.get("reused"):
        log(f"[train] {run_dir} had finished its steps: reused")
    write_json(stage("train"), trained)
    sampled, seconds["sample"] = _stage_sample(run_dir, samples, plan.get("sample", {}), seed, progress, stage, log)
    summary = _summary(system, trained, sampled, samples)
    write_json(os.path.join(out_dir, "metrics.json"), summary)  # `analyze` finds the SMC trace here
    if analyze_samples:
        reference = reference or data
        report_dir = os.path.join(out_dir, "report")
        log(
            "$ "
            + command_line(
                "analyze", (samples,), {"output": report_dir, "reference": reference, "run_dir": run_dir, "seed": seed}
            )
        )
        start = time.perf_counter()
        analysed = analyze(samples, report_dir, reference, run_dir=run_dir, seed=seed)
        seconds["analyze"] = time.perf_counter() - start
        from .report import STRUCTURE_FLAWS

        kept = {
            "energy_w2",
            "energy_w2_floor",
            "energy_w2_floor_n",
            "energy_w2_floor_lineages",
            "torsion_w2",
            "per_residue",
            *STRUCTURE_FLAWS,
        }
        summary.update({k: v for k, v in analysed.items() if k in kept or k.startswith("reference_")})
        summary["reference"] = os.path.abspath(reference)
    summary["stage_seconds"] = seconds
    summary["total_seconds"] = float(sum(seconds.values()))
    summary["files"] = {
        "data": os.path.abspath(data),
        "run_dir": os.path.abspath(run_dir),
        "samples": os.path.abspath(samples),
    }
    if analyze_samples:
        summary["files"]["report"] = os.path.abspath(os.path.join(out_dir, "report", "index.html"))
    write_json(os.path.join(out_dir, "metrics.json"), summary)
    return summary


#: The parts of a quickstart recipe that each output of its directory depends on. The trained run
#: leaves its training part to :func:`train`'s own resume check, which continues a run to more
#: steps and refuses a checkpoint of another configuration.
_RECIPE_PARTS = {
    "data.h5": ("seed", "system", "data", "simulate"),
    "run": ("seed", "system", "data", "simulate"),
    "samples.h5": ("seed", "system", "data", "simulate", "train", "sample"),
}


def _check_recipe_of_outputs(out_dir: str, plan: dict, recorded_path: str) -> None:
    """Refuse to resume into outputs that another recipe or seed made; record this one for the next run.

    A quickstart reuses the outputs it finds (data, trained run, samples). When ``out_dir`` records
    the recipe and seed that made them (``stages/recipe.json``) and an existing output depends on a part of
    the recipe that now differs, the stage would silently keep the other recipe's result: raise
    instead, naming the output and the part. A directory written before the record existed is
    resumed as it is and left unrecorded.
    """
    import json

    from .io import json_safe, write_json

    plan = json_safe(plan)
    present = [name for name in _RECIPE_PARTS if os.path.exists(os.path.join(out_dir, name))]
    if not os.path.exists(recorded_path):
        if not present:
            write_json(recorded_path, plan)
        return
    with open(recorded_path) as handle:
        recorded = json.load(handle)
    for name in present:
        changed = [part for part in _RECIPE_PARTS[name] if recorded.get(part) != plan.get(part)]
        if changed:
            raise ValueError(
                f"{os.path.join(out_dir, name)} was made by another recipe (its {', '.join(changed)} "
                f"differ{'s' if len(changed) == 1 else ''} from this one's, see {recorded_path}): choose another "
                f"output directory, or remove {name} to make it again with this recipe"
            )
    write_json(recorded_path, plan)


def _stage_simulate(system, data, options, seed, progress, stage, log) -> float:
    if os.path.exists(data):
        log(f"[simulate] {data} exists: reused")
        return 0.0
    options = dict(options)
    n = options.pop("n")
    log("$ " + command_line("simulate", (system,), {"n": n, "output": data, "seed": seed, **options}))
    start = time.perf_counter()
    simulate_training_data(system, n, data, seed=seed, progress=progress, metrics_path=stage("simulate"), **options)
    return time.perf_counter() - start


def _stage_sample(run_dir, samples, options, seed, progress, stage, log) -> tuple[dict, float]:
    import json

    if os.path.exists(samples) and os.path.exists(stage("sample")):
        log(f"[sample] {samples} exists: reused")
        with open(stage("sample")) as handle:
            return json.load(handle), 0.0
    options = dict(options)
    n, settings = options.pop("n"), options.pop("settings", None)
    log("$ " + command_line("sample", (run_dir,), {"n": n, "output": samples, **options, "seed": seed}, settings))
    start = time.perf_counter()
    run = sample(
        run_dir, samples, n, settings=settings, seed=seed, progress=progress, metrics_path=stage("sample"), **options
    )
    return run.metrics, time.perf_counter() - start


def _summary(system: str, trained: dict, sampled: dict, samples: str) -> dict:
    keys = (
        "n_samples",
        "ess",
        "ess_fraction",
        "log_z",
        "n_reflected",
        "n_ancestors",
        "n_ancestors_anneal",
        "lineage_ess",
        "lineage_ess_states",
        "states",
        "state_counts",
        "state_free_energies_kT",
        "state_free_energies_err_kT",
        "delta_f_kT",
        "delta_f_err_kT",
        "delta_f_error_method",
        "delta_f_definition",
        "delta_f_runs_kT",
        "state_counts_runs",
        "delta_f_note",
        "states_note",
    )
    summary = {"system": system, "loss": trained.get("loss"), "runs": sampled.get("runs", 1)}
    summary.update({k: sampled.get(k) for k in keys if k in sampled})
    # Like the metrics.json beside the output of `boltzgen sample`: analyze finds the ESS trace here.
    summary.update(output=os.path.abspath(samples), smc=sampled.get("smc"))
    return summary
