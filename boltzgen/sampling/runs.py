"""Independent SMC runs: their sizes and seeds, pooling them, and drawing them in CPU processes.

R independent runs of :func:`~boltzgen.sampling.smc.smc_sample` share the particles of one
sample and are pooled by their log Ẑ (:func:`boltzgen.weights.pool_runs`). Run r draws from
its own generator, seeded by :func:`run_seeds`, so its particles do not depend on which runs
came before it or where it ran: :func:`smc_runs_in_processes` gives the same particles over P
processes as over one, bit for bit.

Why processes: the sampler's cost is the network's energy and gradient on a batch of a few
hundred molecules, whose small tensor operations use a second torch thread poorly; independent
runs on separate cores do not share anything. Each process loads the model from its run
directory and rebuilds the target from its recipe (:func:`boltzgen.systems.catalog.target_recipe`),
since models and OpenMM contexts do not cross process boundaries, and evaluates the force field
in its own process (one core each).
"""

from __future__ import annotations

import os
import warnings
from typing import Callable, Optional

import numpy as np
import torch

from .resampling import log_mean_exp
from .settings import SMCSettings

__all__ = ["run_sizes", "run_seeds", "pool_results", "pooled_lineages", "smc_runs", "smc_runs_in_processes"]


def run_sizes(n_particles: int, runs: int) -> list[int]:
    """Particles of each of ``runs`` runs sharing ``n_particles``: the first ``n_particles % runs``
    get one more.

    Parameters
    ----------
    n_particles : int
        Particles in all.
    runs : int
        Number of runs R, 1 ≤ R ≤ n_particles.

    Returns
    -------
    list of int, length R
    """
    if not 1 <= int(runs) <= int(n_particles):
        raise ValueError(f"runs must lie between 1 and the number of particles ({n_particles}), got {runs}")
    return [n_particles // runs + (1 if r < n_particles % runs else 0) for r in range(runs)]


def run_seeds(seed: int, runs: int) -> list[int]:
    """One seed per run from one seed (numpy ``SeedSequence``: independent streams).

    Parameters
    ----------
    seed : int
        The sample's seed (non-negative).
    runs : int
        Number of runs R.

    Returns
    -------
    list of int, length R
        Seeds for ``torch.Generator().manual_seed``; the first ``k`` do not depend on R.
    """
    children = np.random.SeedSequence(int(seed)).spawn(int(runs))
    return [int(child.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)) for child in children]


def pool_results(results: list) -> tuple[np.ndarray, float]:
    """Pooled log-weights and log Ẑ of independent runs.

    Parameters
    ----------
    results : list of SMCResult
        One per run.

    Returns
    -------
    log_w : ndarray, shape (Σ B_r,), float64
        :func:`boltzgen.weights.pool_runs` of the runs (one run's own log-weights for R = 1).
    log_z : float
        log of the mean of the runs' Ẑ_r.
    """
    from ..weights import pool_runs

    log_z_runs = np.array([r.log_z for r in results], dtype=np.float64)
    if len(results) == 1:
        return results[0].log_weights.numpy(), float(log_z_runs[0])
    log_w = pool_runs([r.log_weights.numpy() for r in results], log_z_runs)
    return log_w, float(log_mean_exp(torch.as_tensor(log_z_runs)))


def pooled_lineages(results: list) -> np.ndarray:
    """Lineage label of each particle of independent runs, distinct across runs.

    Parameters
    ----------
    results : list of SMCResult
        One per run, in the order their particles are pooled (:func:`pool_results`).

    Returns
    -------
    ndarray, shape (Σ B_r,), int64
        Run r's ancestor indices at t = 1 offset by r times the largest index of any run plus one,
        so labels keep their order within and across runs (the clusters of
        :func:`boltzgen.analysis.bootstrap_clusters`).
    """
    span = max(int(r.ancestors.max()) + 1 for r in results)
    return np.concatenate([r.ancestors.numpy().astype(np.int64) + i * span for i, r in enumerate(results)])


def smc_runs(
    model,
    target,
    n_particles: int,
    runs: int,
    generator: Optional[torch.Generator] = None,
    *,
    settings: Optional[SMCSettings] = None,
    states: Optional[Callable] = None,
) -> tuple:
    """Independent :func:`~boltzgen.sampling.smc.smc_sample` runs sharing ``n_particles``, pooled by their log Z.

    Parameters
    ----------
    model, target, generator, settings, states
        As for :func:`~boltzgen.sampling.smc.smc_sample` (one generator draws all runs, one after
        the other).
    n_particles : int
        Particles in all; the first ``n_particles % runs`` runs get one more.
    runs : int
        Number of runs R ≥ 1.

    Returns
    -------
    results : list of SMCResult
        One per run.
    log_w : ndarray, shape (n_particles,), float64
        Pooled log-weights (:func:`boltzgen.weights.pool_runs`); one run's own log-weights for R = 1.
    log_z : float
        log of the mean of the runs' Ẑ_r.
    """
    from .smc import smc_sample

    results = [
        smc_sample(model, target, size, generator, settings=settings, states=states)
        for size in run_sizes(n_particles, runs)
    ]
    log_w, log_z = pool_results(results)
    return results, log_w, log_z


def _run_in_process(job: dict):
    """One SMC run in a worker process: model, target and states rebuilt here (module docstring)."""
    from ..guards import die_with_parent
    from ..model import load_model
    from ..states import resampling_strata
    from ..systems.catalog import resolve
    from .smc import smc_sample

    die_with_parent()
    torch.set_num_threads(job["threads"])
    warnings.simplefilter("ignore")  # each run's warnings travel back in its result
    model = load_model(job["run_dir"])
    target = resolve(**job["recipe"], **job["options"])
    try:
        if target.metadata() != job["metadata"]:
            raise ValueError(
                f"the target rebuilt from {job['recipe']} in a worker process differs from the one given "
                "(its metadata); sample it with processes=1"
            )
        states = None
        if job["strata"] is not None:
            try:
                states = resampling_strata(target, job["strata"])
            except ValueError:
                states = None
            if states is None or (states.name, list(states.names)) != job["state_names"]:
                raise ValueError(
                    f"the states to resample within ({job['state_names'][0]}: {', '.join(job['state_names'][1])}) "
                    f"are not those of the target rebuilt from {job['recipe']} in a worker process (states set "
                    "on a target object do not travel to other processes); sample it with processes=1"
                )
        generator = torch.Generator().manual_seed(job["seed"])
        return smc_sample(model, target, job["size"], generator, settings=job["settings"], states=states)
    finally:
        target.close()


def smc_runs_in_processes(
    run_dir: str,
    target,
    sizes: list,
    seeds: list,
    settings,
    *,
    strata: Optional[str] = None,
    processes: int = 2,
    threads: Optional[int] = None,
    target_options: Optional[dict] = None,
) -> list:
    """Independent :func:`~boltzgen.sampling.smc.smc_sample` runs drawn by ``processes`` processes.

    Parameters
    ----------
    run_dir : str
        Run directory of the trained model (each process loads it).
    target : TargetSystem
        The target; each process rebuilds it from :func:`~boltzgen.systems.catalog.target_recipe`
        of its metadata (a built-in name, a sequence or a PDB file), and fails when the rebuilt
        one differs.
    sizes, seeds : lists of int, length R
        Particles and generator seed of each run (:func:`run_sizes`, :func:`run_seeds`).
    settings : SMCSettings
        The runs' settings (their progress bar is off).
    strata : {"states", "basins"}, optional
        Resample within these states of the target (:func:`boltzgen.states.resampling_strata`);
        each process rebuilds them with the target, and fails when their name or names differ
        from the parent's (states set on a target object do not travel).
    processes : int
        Processes P ≥ 1 (at most R are started).
    threads : int, optional
        Torch threads per process (default: cores / P, at least 1).
    target_options : dict, optional
        Options of :func:`~boltzgen.systems.catalog.resolve` (``platform``; ``n_workers``
        defaults to 0, the force field in the process itself).

    Returns
    -------
    list of SMCResult
        In the order of ``sizes``; each run's warnings are issued again here.

    Raises
    ------
    ValueError
        For a target that cannot be rebuilt from its metadata, or sizes and seeds of different
        lengths.
    """
    import dataclasses

    from ..guards import map_in_processes
    from ..systems.catalog import options_for, target_recipe

    if len(sizes) != len(seeds):
        raise ValueError(f"need one seed per run: {len(sizes)} sizes, {len(seeds)} seeds")
    if int(processes) < 1:
        raise ValueError(f"processes must be at least 1, got {processes}")
    metadata = target.metadata()
    recipe = target_recipe(metadata)
    if recipe is None:
        raise ValueError(
            f"the target {target.name} cannot be rebuilt in another process from its metadata (a built-in "
            "name, a sequence or an existing PDB file is needed); sample it with processes=1"
        )
    # the force field in each process itself unless the caller says otherwise (None: not said)
    given = {k: v for k, v in (target_options or {}).items() if v is not None}
    options = options_for(recipe, {"n_workers": 0, **given})
    workers = min(int(processes), len(sizes))
    threads = max(1, (os.cpu_count() or 1) // workers) if threads is None else int(threads)
    settings = dataclasses.replace(settings, progress=False)
    state_names = None
    if strata is not None:
        from ..states import resampling_strata

        parent_states = resampling_strata(target, strata)
        state_names = (parent_states.name, list(parent_states.names))
    jobs = [
        dict(
            run_dir=os.path.abspath(run_dir),
            recipe=recipe,
            options=options,
            metadata=metadata,
            strata=strata,
            state_names=state_names,
            size=int(size),
            seed=int(seed),
            settings=settings,
            threads=threads,
        )
        for size, seed in zip(sizes, seeds)
    ]
    results = map_in_processes(_run_in_process, [(job,) for job in jobs], workers)
    for r, result in enumerate(results):
        for note in result.warnings:
            warnings.warn(f"run {r + 1}: {note}" if len(results) > 1 else note, RuntimeWarning, stacklevel=2)
    return results
