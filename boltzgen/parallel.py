"""Data-parallel training on CPU cores (``boltzgen train --processes P``).

P processes each draw ``batch_size / P`` configurations per step from their own seed; their
gradients are averaged (so every step is a step on a batch of ``batch_size``, as in one
process), and only rank 0 writes files. The training loop itself is
:class:`boltzgen.train.Trainer`, which also runs under any ``torch.distributed`` process group
initialised by the caller.
"""

from __future__ import annotations

import atexit
import datetime
import json
import os
import sys
import tempfile
import warnings

import torch

from .config import system_config_path
from .guards import die_with_parent, main_module_hidden
from .io import load_samples
from .train import local_batch_size, resolve_config, run_overrides, train_from_file

__all__ = ["train_in_processes", "train_rank"]

# How long a rank waits for the others at a collective call. The last one is the end of the run,
# where the other ranks wait while rank 0 validates and checks samples (minutes on a large
# system), longer than torch's default for gloo would allow.
GROUP_TIMEOUT = datetime.timedelta(hours=12)


def train_in_processes(processes: int, data_path: str, run_dir: str, **options) -> dict:
    """:func:`boltzgen.train.train_from_file` in ``processes`` data-parallel CPU processes.

    The processes form a ``torch.distributed`` gloo group. Each draws ``batch_size / processes``
    configurations per step from its own seed; the gradients are averaged, so each step is a step
    on a batch of ``batch_size`` as in one process, at about the cost of the smaller batch.
    Without ``threads`` (``train.threads``) each process runs ``cpu_count // processes`` torch
    threads. Checkpoints hold every process's batch generator, so a run resumes bit for bit with
    the same number of processes (with another number it resumes with new random batches, and
    warns). Killing this process ends the workers too.

    The processes are started with ``spawn`` without importing the calling script again
    (:func:`boltzgen.guards.main_module_hidden`), so a script needs no
    ``if __name__ == "__main__":`` guard.

    Parameters
    ----------
    processes : int
        Number of processes (1 runs :func:`~boltzgen.train.train_from_file` in this process).
    data_path, run_dir : str
        As for :func:`~boltzgen.train.train_from_file`.
    **options
        ``system``, ``config_file``, ``overrides``, ``seed``, ``threads``, ``progress``,
        ``start_from`` of :func:`~boltzgen.train.train_from_file`.

    Returns
    -------
    dict
        The metrics of :meth:`~boltzgen.train.Trainer.fit` (read back from
        ``run_dir/metrics.json``), with ``processes``.

    Raises
    ------
    ValueError
        If ``processes`` < 1, or the batch does not split evenly over the processes; errors of
        the training processes are raised as RuntimeError with the process's message.
    """
    processes = int(processes)
    if processes < 1:
        raise ValueError(f"the number of training processes must be at least 1, got {processes}")
    if processes == 1:
        return {**train_from_file(data_path, run_dir, **options), "processes": 1}
    system, event_shape, molecular = options.get("system"), None, False
    if system is None or system_config_path(system) is None:  # the data decide the defaults
        samples = load_samples(data_path)
        system = system or samples.metadata.get("system")
        event_shape, molecular = samples.x.shape[1:], samples.topology is not None
    overrides = run_overrides(options.get("overrides"), seed=options.get("seed"), threads=options.get("threads"))
    config = resolve_config(system, options.get("config_file"), overrides, event_shape=event_shape, molecular=molecular)
    local_batch_size(int(config["train"]["batch_size"]), processes)  # refused here, not in a child process
    import torch.multiprocessing as mp

    metrics_path = os.path.join(run_dir, "metrics.json")
    before = os.stat(metrics_path).st_mtime_ns if os.path.exists(metrics_path) else None
    with tempfile.TemporaryDirectory() as rendezvous:
        init = "file://" + os.path.join(rendezvous, "store")
        try:
            with main_module_hidden():  # a script needs no main guard: the workers do not import it
                context = mp.spawn(
                    train_rank, args=(processes, init, data_path, run_dir, options), nprocs=processes, join=False
                )
            while not context.join():
                pass
        except mp.ProcessRaisedException as exc:
            lines = [line for line in str(exc).strip().splitlines() if line.strip()]
            raise RuntimeError(f"a training process failed: {lines[-1] if lines else exc}") from None
        except mp.ProcessExitedException as exc:
            raise RuntimeError(f"a training process died: {exc}") from None
    with open(metrics_path) as handle:
        metrics = {**json.load(handle), "processes": processes}
    if before is not None and os.stat(metrics_path).st_mtime_ns == before:  # a finished run, not rewritten
        metrics.update(resumed=True, reused=True)
    return metrics


def train_rank(rank: int, world: int, init_method: str, data_path: str, run_dir: str, options: dict) -> None:
    """Body of one training process of :func:`train_in_processes`.

    Ends itself when the parent process dies (:func:`boltzgen.guards.die_with_parent`), joins
    the gloo group, and runs :func:`~boltzgen.train.train_from_file` (progress bar and warnings
    on rank 0 only). The ranks leave the group together, once rank 0 has written the run's
    files, and a rank that finished ends its process here (it does not return; an error is
    raised as usual).

    Parameters
    ----------
    rank, world : int
        This process's rank and the number of processes.
    init_method : str
        ``torch.distributed`` rendezvous (a ``file://`` store).
    data_path, run_dir : str
        As for :func:`~boltzgen.train.train_from_file`.
    options : dict
        Its keyword arguments.
    """
    die_with_parent()
    torch.distributed.init_process_group(
        "gloo", init_method=init_method, rank=rank, world_size=world, timeout=GROUP_TIMEOUT
    )
    try:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))  # train.threads, if set, overrides it
        options = dict(options)
        options["progress"] = bool(options.get("progress", True)) and rank == 0
        if rank != 0:
            warnings.simplefilter("ignore")  # rank 0 reports the warnings once
        train_from_file(data_path, run_dir, **options)
        _leave_together(rank)
    finally:
        torch.distributed.destroy_process_group()
    _exit_without_native_teardown()


def _leave_together(rank: int) -> None:
    """Wait until every rank has ended its run, so that no rank tears the group down while rank 0
    still validates and writes. If rank 0 failed after the last step, the others leave quietly:
    the parent reports rank 0's own error, not the broken connection."""
    try:
        torch.distributed.barrier()
    except RuntimeError:
        if rank == 0:
            raise


def _exit_without_native_teardown() -> None:
    """End a finished worker: run the interpreter's exit handlers (multiprocessing's among them,
    which give the worker's semaphores back), then leave without the native teardown, where a
    finished worker has aborted ("terminate called without an active exception", rank 1, with
    no Python frame left: in the C++ static destructors of the extensions)."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
