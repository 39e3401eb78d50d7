"""Training seconds per step and SMC seconds per particle against the number of atoms.

For each system (default: aldp-vacuum 22 atoms, ala3 42, ala4 52, ala6 72, lj13, lj55) the
benchmark simulates a little training data (plain MD or MALA, one replica, a few dozen frames),
trains with the system's own defaults (the shipped ``systems/<name>.train.yaml``, or
:func:`boltzgen.config.derived_defaults` for the peptides that ship none: the batch scaled by
(22/N)²) and samples with the default SMC settings, all through :mod:`boltzgen.workflow`. Each cost
is the difference of two runs of different sizes, so start-up (loading, model building, the final
validation and checkpoint) cancels:

    seconds per step     = (t(S2 steps) − t(S1 steps)) / (S2 − S1)
    seconds per particle = (t(N2 particles) − t(N1 particles)) / (N2 − N1)

Output: one row per system (atoms, batch, parameters, seconds per step and per step and
configuration, SMC seconds per particle, and the hours the shipped number of training steps would
take at that rate) in JSON and a markdown table; where those hours pass a working day is where the
CPU limit lies. OpenMM energies run in-process (``n_workers=0``), torch on ``--threads`` threads.

    python benchmarks/cost_scaling.py                                   # -> bench-results/cost_scaling.json
    python benchmarks/cost_scaling.py --systems aldp-vacuum lj13 --quick --out /tmp/cost_scaling.json
    python benchmarks/cost_scaling.py --frames 64 --steps 5 25 --particles 16 48 --threads 2
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import time
import warnings
from typing import Optional

from boltzgen.io import write_json

SYSTEMS = ["aldp-vacuum", "ala3", "ala4", "ala6", "lj13", "lj55"]
QUICK = {"frames": 16, "steps": [2, 4], "particles": [4, 8]}


def target_options(name: str) -> dict:
    """Options of :func:`boltzgen.systems.resolve`: OpenMM energies in this process."""
    from boltzgen.systems.catalog import spec

    return {"n_workers": 0} if spec(name).openmm else {}


def training_data(name: str, frames: int, work: str) -> tuple[str, Optional[float]]:
    """(sample file, seconds; None when kept from an earlier run) of a short unbiased run at the
    target temperature."""
    from boltzgen import workflow
    from boltzgen.systems.catalog import spec

    path = os.path.join(work, f"{name}-{frames}.h5")
    if os.path.exists(path):
        return path, None
    options = dict(equilibration=200, stride=20)
    if spec(name).openmm:
        options["replicas"] = 1  # plain MD, not the system's replica-exchange ladder
    start = time.perf_counter()
    workflow.simulate_training_data(
        name, frames, path, seed=0, progress=False, target_options=target_options(name), **options
    )
    return path, time.perf_counter() - start


def timed_train(data: str, run_dir: str, steps: int, threads: int) -> float:
    """Wall seconds of a fresh training run of ``steps`` steps with the system's defaults."""
    from boltzgen import workflow

    shutil.rmtree(run_dir, ignore_errors=True)  # a run directory resumes from its checkpoint
    # Validation and checkpoints only at the end, so both runs pay them once.
    overrides = {"train": {"val_every": 10**9, "checkpoint_every": 10**9}}
    start = time.perf_counter()
    workflow.train(data, run_dir, steps=steps, seed=0, threads=threads, progress=False, overrides=overrides)
    return time.perf_counter() - start


def timed_sample(name: str, run_dir: str, out: str, n: int) -> tuple[float, Optional[int]]:
    """(wall seconds, annealing levels) of SMC with ``n`` particles and the default sampler settings.

    The annealing is adaptive: a barely trained model needs more levels (up to the cap), so the
    levels are recorded with the time.
    """
    from boltzgen import workflow

    if os.path.exists(out):
        os.remove(out)
    start = time.perf_counter()
    with warnings.catch_warnings():  # low ESS and capped annealing are expected of a few steps' training
        warnings.simplefilter("ignore", RuntimeWarning)
        result = workflow.sample(run_dir, out, n, seed=0, progress=False, target_options=target_options(name))
    return time.perf_counter() - start, result.metrics.get("n_anneal_levels")


def run_facts(name: str, run_dir: str) -> dict:
    """Batch size used, the system's default number of steps and the model's parameter count."""
    import yaml

    from boltzgen import load_model
    from boltzgen.config import load_train_config
    from boltzgen.systems.catalog import spec

    with open(os.path.join(run_dir, "config.yaml")) as handle:
        config = yaml.safe_load(handle)
    model = load_model(run_dir)
    atoms = spec(name).n_atoms or int(model.event_shape[0])
    defaults = load_train_config(name, event_shape=(atoms, 3), molecular=spec(name).openmm)
    return {
        "n_atoms": atoms,
        "batch_size": int(config["train"]["batch_size"]),
        "net": config.get("net", {}).get("kind"),
        "default_steps": int(defaults.train.steps),
        "params": int(sum(p.numel() for p in model.parameters())),
    }


def measure(name: str, args) -> dict:
    """One row: the costs of one system."""
    import torch

    work = os.path.join(args.work, name)
    os.makedirs(work, exist_ok=True)
    data, simulate_s = training_data(name, args.frames, work)
    (s1, s2), (n1, n2) = args.steps, args.particles
    run_dir = os.path.join(work, "run")
    t1 = timed_train(data, run_dir, s1, args.threads)
    t2 = timed_train(data, run_dir, s2, args.threads)  # its model is the one sampled from
    row = {"name": name, **run_facts(name, run_dir)}
    (p1, levels1), (p2, levels2) = (timed_sample(name, run_dir, os.path.join(work, "samples.h5"), n) for n in (n1, n2))
    per_step = (t2 - t1) / (s2 - s1)
    per_particle = (p2 - p1) / (n2 - n1)
    return {
        **row,
        "train_s_per_step": per_step,
        "train_s_per_step_per_config": per_step / row["batch_size"],
        "train_fixed_s": t1 - s1 * per_step,
        "train_hours_default_steps": per_step * row["default_steps"] / 3600.0,
        "smc_s_per_particle": per_particle,
        "smc_fixed_s": p1 - n1 * per_particle,
        "smc_anneal_levels": [levels1, levels2],
        "simulate_s": simulate_s,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "timings_s": {"train": [t1, t2], "smc": [p1, p2]},
    }


def markdown(out: dict) -> str:
    def f(x, spec=".3f"):
        return "–" if x is None else format(x, spec)

    lines = [
        f"{out['cpu_count']} cores, {out['threads']} torch threads; {out['frames']} frames of training data; "
        f"steps {out['steps'][0]} → {out['steps'][1]}, particles {out['particles'][0]} → {out['particles'][1]}.",
        "",
        "| system | atoms | batch | params | s/step | ms/step/config | SMC s/particle | anneal levels "
        "| train h (default steps) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out["rows"]:
        if "error" in r:
            lines.append(f"| {r['name']} | failed: {r['error']} |" + " |" * 7)
            continue
        lines.append(
            f"| {r['name']} | {r['n_atoms']} | {r['batch_size']} | {r['params']} | {f(r['train_s_per_step'])} | "
            f"{f(1e3 * r['train_s_per_step_per_config'], '.2f')} | {f(r['smc_s_per_particle'])} | "
            f"{' / '.join(str(v) for v in r['smc_anneal_levels'])} | "
            f"{f(r['train_hours_default_steps'], '.2f')} ({r['default_steps']}) |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", nargs="+", default=SYSTEMS)
    parser.add_argument("--frames", type=int, default=64, help="frames of training data per system")
    parser.add_argument("--steps", type=int, nargs=2, default=[5, 25], metavar=("S1", "S2"))
    parser.add_argument("--particles", type=int, nargs=2, default=[16, 48], metavar=("N1", "N2"))
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch (and OpenMP) threads")
    parser.add_argument("--quick", action="store_true", help="smoke run: 16 frames, steps 2 4, particles 4 8")
    parser.add_argument("--work", default="bench-results/cost_scaling", help="working directory (data kept)")
    parser.add_argument("--out", default="bench-results/cost_scaling.json")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    if args.steps[1] <= args.steps[0] or args.particles[1] <= args.particles[0]:
        parser.error("--steps and --particles need S1 < S2 and N1 < N2")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch loads
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    import boltzgen

    torch.set_num_threads(args.threads)
    out = {
        "benchmark": "cost_scaling",
        "date": datetime.date.today().isoformat(),
        "boltzgen_version": boltzgen.__version__,
        "quick": args.quick,
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "frames": args.frames,
        "steps": args.steps,
        "particles": args.particles,
        "timing": "differences of two runs of different sizes (start-up cancels); one run each",
        "rows": [],
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    for name in args.systems:
        try:
            out["rows"].append(measure(name, args))
        except Exception as error:  # noqa: BLE001 - a failing system is reported, the others still run
            out["rows"].append({"name": name, "error": f"{type(error).__name__}: {error}"})
        write_json(args.out, out)  # what is done so far
    print(markdown(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
