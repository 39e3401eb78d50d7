"""The whole chain as a user runs it: simulate → train → sample (SMC + OpenMM reweighting) → analyse.

Each stage is the ``boltzgen`` command of that name, run in this process with the same arguments a
user would type (they are printed as the pipeline goes, so the quickstart doubles as a tutorial),
and timed. ``boltzgen quickstart`` and the molecular benchmarks (``benchmarks/aldp.py``,
``benchmarks/lj13.py``) are built on :func:`run_pipeline`.

Files left in the output directory::

    data.h5             training data (boltzgen simulate), unless given
    run/                run directory of boltzgen train (model.pt, checkpoints, train_log.csv, ...)
    samples.h5          weighted samples (boltzgen sample), mdtraj-loadable for molecules
    report/             plots, metrics.json and index.html (boltzgen analyze)
    stages/*.json       metrics of every stage
    metrics.json        the summary: ESS, Delta F, energy W2, ..., wall time per stage

Training with ``--processes`` (the ``long`` sizes) spawns processes that import the calling script
again: call :func:`run_pipeline` from a script under ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from typing import Callable, Optional, Sequence

from .io import write_json

__all__ = ["QUICKSTART_SIZES", "run_command", "run_pipeline"]

#: Sizes of ``boltzgen quickstart`` (aldp-vacuum). "default" fits in about 15 minutes on 2 CPU
#: cores and gives Delta F with the error of a bootstrap over 8 SMC runs; "long" (about 40 minutes)
#: is the benchmark's recipe, with a smaller quoted error (how far to trust either: README, How it
#: works, "Where the diffusion stops"); "fast" is a smoke run of about a minute that
#: exercises every stage.
QUICKSTART_SIZES = {
    # 1 ns of replica exchange keeping all six replicas, the hotter ones' frames relaxed to 300 K
    # (--quench: 131 phi > 0 frames of 12 000 with seed 0); phi > 0 at a quarter of every batch; DSM
    # pre-training, then DSM + DiffCLF fine-tuning (the score is learnt first, then DiffCLF sets the
    # energies across noise levels: systems/aldp-vacuum.train.yaml), 1800 steps of 32 over two
    # data-parallel processes; 4 pooled SMC runs of 256 particles, 100 diffusion levels down to
    # t = 0.05, resampled within the phi states, which get half of each run's particles each at the
    # start of the annealing. Below t = 0.05 the briefly trained energy is rough, and the diffusion
    # weights of the two phi states scatter from run to run (sd of their log ratio 0.2 at t = 0.05,
    # 1.85 at 0.01); the annealing, up to 128 levels, covers the rest. Measured: README, Quickstart.
    "default": dict(n_data=2000, train_steps=1800, batch_size=32, n_samples=1024, smc_steps=100, mcmc_steps=0,
                    anneal=16, simulate_options=("--keep-replicas", 6, "--quench", 0.5),
                    train_options=("--pretrain-dsm-steps", 1260, "--phi-positive-fraction", 0.25, "--processes", 2),
                    sample_options=("--per-state-resampling", "--balance-states", "--runs", 4, "--t-min", 0.05,
                                    "--max-anneal", 128)),
    # The recipe of benchmarks/aldp.py's DSM + DiffCLF arm (about 40 minutes): 5 ns of replica exchange
    # keeping the three coldest replicas (about 200 phi > 0 frames), phi > 0 at a quarter of every
    # training batch, 3000 steps over two data-parallel processes, and 4 pooled SMC runs of 256
    # particles and 400 diffusion levels resampled within the phi states: a Delta F with an error
    # from the bootstrap over runs. Measured: 5.1 +- 1.1 kT (runs 3.3, 5.9, 6.6, 8.2; 1306 s of
    # training, 481 s of SMC); the benchmark's arm 2.7 +- 1.2; the reference 4.28 +- 0.31.
    "long": dict(n_data=2000, train_steps=3000, batch_size=64, n_samples=1024, smc_steps=400, mcmc_steps=0,
                 anneal=16, simulate_options=("--keep-replicas", 3, "--stride", 2500),
                 train_options=("--pretrain-dsm-steps", 2000, "--phi-positive-fraction", 0.25, "--processes", 2),
                 sample_options=("--per-state-resampling", "--runs", 4)),
    "fast": dict(n_data=100, train_steps=20, batch_size=16, n_samples=32, smc_steps=10, mcmc_steps=0, anneal=4,
                 train_options=("--pretrain-dsm-steps", 10),
                 simulate_options=("--replicas", "1", "--equilibration", "200", "--stride", "20"),
                 sample_options=("--per-state-resampling", "--runs", 2)),
}


def run_command(argv: Sequence[str], *, log: Optional[Callable[[str], None]] = None) -> float:
    """Run ``boltzgen ARGV...`` in this process; returns its wall time in seconds.

    Parameters
    ----------
    argv : sequence of str
        Arguments after ``boltzgen`` (e.g. ``["simulate", "aldp-vacuum", "-n", "100", "-o", "x.h5"]``).
    log : callable, optional
        Receives the command line before it runs.

    Returns
    -------
    float
        Wall time of the command, in seconds.

    Raises
    ------
    RuntimeError
        If the command fails (non-zero exit status); the message names the command.
    KeyboardInterrupt
        If the command was interrupted (exit status 130).
    """
    from .cli import main

    argv = [str(a) for a in argv]
    if log is not None:
        log("$ boltzgen " + " ".join(shlex.quote(a) for a in argv))
    start = time.perf_counter()
    status = main(argv)
    if status == 130:
        raise KeyboardInterrupt
    if status:
        raise RuntimeError(f"`boltzgen {' '.join(argv[:2])} ...` failed with exit status {status}")
    return time.perf_counter() - start


def _read_json(path: str) -> dict:
    import json

    with open(path) as handle:
        return json.load(handle)


def run_pipeline(out_dir: str, *, system: str = "aldp-vacuum", data: Optional[str] = None, n_data: int = 2000,
                 simulate_options: Sequence[str] = (), train_steps: Optional[int] = None,
                 batch_size: Optional[int] = None, loss: Optional[str] = None, config: Optional[str] = None,
                 train_options: Sequence[str] = (), n_samples: int = 512, smc_steps: int = 100, mcmc_steps: int = 0,
                 anneal: int = 16, sample_options: Sequence[str] = (), reference: Optional[str] = None,
                 seed: int = 0, progress: bool = True, analyze: bool = True,
                 log: Optional[Callable[[str], None]] = None) -> dict:
    """Run simulate → train → sample → analyze into ``out_dir``; returns the summary metrics.

    Stages whose output already exists are resumed or skipped (training resumes from its last
    checkpoint, a finished ``samples.h5`` is not redrawn), so an interrupted run picks up where it
    stopped.

    Parameters
    ----------
    out_dir : str
        Output directory (created). See the module docstring for its layout.
    system : str
        Built-in system name.
    data : str, optional
        Existing training data (sample file); default: simulate ``n_data`` frames into
        ``out_dir/data.h5`` with the system's simulation defaults plus ``simulate_options``.
    n_data : int
        Frames to simulate when ``data`` is not given.
    simulate_options, train_options, sample_options : sequence of str
        Extra arguments of the ``simulate``, ``train`` and ``sample`` commands.
    train_steps, batch_size, loss, config
        ``--steps``, ``--batch-size``, ``--loss``, ``--config`` of ``boltzgen train`` (None: the
        system's defaults).
    n_samples, smc_steps, mcmc_steps, anneal : int
        ``-n``, ``--steps``, ``--mcmc-steps``, ``--anneal`` (the fewest levels of the adaptive
        β grid) of ``boltzgen sample``; its other options keep their defaults unless
        ``sample_options`` sets them.
    reference : str, optional
        Reference sample file for the W2 distances and Delta F of the report (default: the
        training data).
    seed : int
        Seed of every stage.
    progress : bool
        Progress bars.
    analyze : bool
        Write ``out_dir/report`` with ``boltzgen analyze``.
    log : callable, optional
        Receives progress lines (default: print to stderr).

    Returns
    -------
    dict
        ``system``, ``n_samples``, ``ess``, ``ess_fraction``, ``log_z``, ``n_reflected``,
        ``n_ancestors`` and ``n_ancestors_anneal`` (diversity left after resampling),
        ``delta_f_kT`` and ``delta_f_err_kT`` (alanine dipeptide), ``energy_w2``, ``torsion_w2``
        (with a reference), ``stage_seconds`` (wall time per stage), ``files``; also written to
        ``out_dir/metrics.json``.
    """
    if log is None:
        def log(line: str) -> None:
            print(line, file=sys.stderr, flush=True)

    os.makedirs(os.path.join(out_dir, "stages"), exist_ok=True)
    quiet = [] if progress else ["--no-progress"]
    seconds: dict[str, float] = {}
    stage = lambda name: os.path.join(out_dir, "stages", f"{name}.json")  # noqa: E731

    if data is None:
        data = os.path.join(out_dir, "data.h5")
        if os.path.exists(data):
            log(f"[simulate] {data} exists: reused")
            seconds["simulate"] = 0.0
        else:
            seconds["simulate"] = run_command(["simulate", system, "-n", n_data, "-o", data, "--seed", seed,
                                               "--metrics", stage("simulate"), *simulate_options, *quiet], log=log)
    run_dir = os.path.join(out_dir, "run")
    train_argv = ["train", "--system", system, "--data", data, "-o", run_dir, "--seed", seed]
    for flag, value in (("--steps", train_steps), ("--batch-size", batch_size), ("--loss", loss),
                        ("--config", config)):
        if value is not None:
            train_argv += [flag, value]
    seconds["train"] = run_command([*train_argv, *train_options, *quiet], log=log)
    trained = _read_json(os.path.join(run_dir, "metrics.json"))
    write_json(stage("train"), trained)

    samples = os.path.join(out_dir, "samples.h5")
    if os.path.exists(samples) and os.path.exists(stage("sample")):
        log(f"[sample] {samples} exists: reused")
        seconds["sample"] = 0.0
    else:
        seconds["sample"] = run_command(["sample", run_dir, "-n", n_samples, "-o", samples, "--steps", smc_steps,
                                         "--mcmc-steps", mcmc_steps, "--anneal", anneal, "--seed", seed,
                                         "--metrics", stage("sample"), *sample_options, *quiet], log=log)
    sampled = _read_json(stage("sample"))

    summary = {
        "system": system, "loss": trained.get("loss", loss),
        "n_samples": n_samples, "ess": sampled.get("ess"), "ess_fraction": sampled.get("ess_fraction"),
        "log_z": sampled.get("log_z"), "n_reflected": sampled.get("n_reflected"),
        "n_ancestors": sampled.get("n_ancestors"), "n_ancestors_anneal": sampled.get("n_ancestors_anneal"),
        "delta_f_kT": sampled.get("delta_f_kT"), "delta_f_err_kT": sampled.get("delta_f_err_kT"),
        "delta_f_error_method": sampled.get("delta_f_error_method"), "runs": sampled.get("runs", 1),
        "delta_f_runs_kT": sampled.get("delta_f_runs_kT"), "phi_positive_runs": sampled.get("phi_positive_runs"),
    }
    if sampled.get("delta_f_note"):
        summary["delta_f_note"] = sampled["delta_f_note"]
    # The summary carries the SMC trace and names the sample file, like the metrics.json that
    # `boltzgen sample` writes beside its output: `boltzgen analyze` finds the ESS trace there.
    summary.update(output=os.path.abspath(samples), smc=sampled.get("smc"))
    write_json(os.path.join(out_dir, "metrics.json"), summary)
    if analyze:
        reference = reference or data
        report_dir = os.path.join(out_dir, "report")
        seconds["analyze"] = run_command(["analyze", samples, "-o", report_dir, "--reference", reference,
                                          "--run-dir", run_dir, "--seed", seed], log=log)
        analysed = _read_json(os.path.join(report_dir, "metrics.json"))
        for key in ("energy_w2", "torsion_w2", "reference_delta_f_kT", "reference_delta_f_err_kT",
                    "reference_phi_positive_n"):
            if key in analysed:
                summary[key] = analysed[key]
        summary["reference"] = os.path.abspath(reference)
    summary["stage_seconds"] = seconds
    summary["total_seconds"] = float(sum(seconds.values()))
    summary["files"] = {"data": os.path.abspath(data), "run_dir": os.path.abspath(run_dir),
                        "samples": os.path.abspath(samples),
                        **({"report": os.path.abspath(os.path.join(out_dir, "report", "index.html"))} if analyze else {})}
    write_json(os.path.join(out_dir, "metrics.json"), summary)
    return summary
