"""Seconds per training step of dsm+diffclf (and of the full physics-informed recipe) over dsm,
EGNN on alanine dipeptide (vacuum).

Both objectives use the same number of DSM evaluations (B·k noisy samples with a score), so the
ratio is the price of the classification term: the off-diagonal energies (no score) of the
k × k logit matrix. Two forms of the classification term are timed: ``all`` (every noisy sample
classified: B k (k − 1) extra energies, the paper's binary form for k = 2) and ``one`` (one
classified sample per x_0 with weight k, unbiased: B (k − 1) extra energies; the default of the
molecular systems). Steps of the three objectives are interleaved in one run, so background load
hits them alike; the median per objective is reported.

    python benchmarks/train_cost.py [--batch 256] [--steps 12] [--k 2] [--out bench-results/train_cost.json]

``--processes P`` instead times data-parallel training (``boltzgen train --processes P``, one
thread each) against one process with P threads, at the same global batch, on a short
alanine-dipeptide run through :mod:`boltzgen.workflow` (rounds alternate, so background load hits both alike):

    python benchmarks/train_cost.py --processes 2 --batch 64 --steps 60 --out bench-results/train_processes.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (as boltzgen.cli does)

import torch  # noqa: E402

from boltzgen.allocator import tune_malloc  # noqa: E402
from boltzgen.bench import random_aldp_model  # noqa: E402
from boltzgen.io import write_json  # noqa: E402
from boltzgen.losses import compute_loss, mean_stiffness  # noqa: E402


def measure(batch: int, steps: int, k: int, threads: int, seed: int = 0, net: str = "egnn") -> dict:
    torch.set_num_threads(threads)
    tune_malloc()  # as training runs (boltzgen.allocator)
    target, model = random_aldp_model(net, seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(seed)
    x0 = target.positions.float()[None] + 0.01 * torch.randn(batch, *target.event_shape, generator=g)
    # Forces and energies of these frames for the physics-informed arm (target score matching plus
    # the energy pin): data in a real run, so their cost is not part of a step.
    u, force = target.reduced_energy_and_force(x0.double())
    force = (0.2 * (force - force.mean(1, keepdim=True))).float()
    x0 = (x0 - x0.mean(1, keepdim=True)) / 0.2
    physics = dict(force=force, kappa=mean_stiffness(force, True), energy=u.float(), lambda_pin=0.1)
    objectives = {
        "dsm": dict(loss="dsm"),
        "dsm+diffclf": dict(loss="dsm+diffclf", clf_samples="all"),
        "dsm+diffclf-one": dict(loss="dsm+diffclf", clf_samples="one"),
        "tsm+pin+diffclf-one": dict(loss="dsm+diffclf", clf_samples="one", **physics),
    }
    times = {name: [] for name in objectives}
    n_energy = {}
    for step in range(steps + 1):
        for name, options in objectives.items():
            start = time.perf_counter()
            parts = compute_loss(model, x0, g, k=k, **options)
            optimiser.zero_grad()
            parts["total"].backward()
            optimiser.step()
            if step > 0:  # the first round is a warm-up
                times[name].append(time.perf_counter() - start)
            n_energy[name] = {"n_dsm": int(parts["n_dsm"]), "n_energy": int(parts["n_energy"])}
    median = {name: statistics.median(v) for name, v in times.items()}
    return {
        "system": "aldp-vacuum",
        "net": net,
        "batch": batch,
        "k": k,
        "steps": steps,
        "threads": threads,
        "seconds_per_step_dsm": median["dsm"],
        "seconds_per_step_dsm_diffclf": median["dsm+diffclf"],
        "seconds_per_step_dsm_diffclf_one": median["dsm+diffclf-one"],
        "ratio": median["dsm+diffclf"] / median["dsm"],
        "ratio_one_sample": median["dsm+diffclf-one"] / median["dsm"],
        "seconds_per_step_full_recipe": median["tsm+pin+diffclf-one"],
        "ratio_full_recipe": median["tsm+pin+diffclf-one"] / median["dsm"],
        "evaluations": n_energy,
        "timing": "median over interleaved steps after one warm-up round",
    }


def measure_processes(processes: int, batch: int, steps: int, rounds: int = 2, seed: int = 0) -> dict:
    """Seconds per training step of P one-thread processes and of one process with P threads."""
    import csv
    import shutil
    import tempfile

    from boltzgen import workflow

    def seconds_per_step(run_dir: str) -> float:  # mean over the logged windows after the first
        with open(os.path.join(run_dir, "train_log.csv")) as handle:
            rows = [float(r["seconds"]) for r in csv.DictReader(handle) if r.get("seconds")]
        return statistics.mean(rows[1:] or rows)

    times: dict[str, list] = {"one_process": [], "processes": []}
    with tempfile.TemporaryDirectory() as work:
        data = os.path.join(work, "data.h5")
        workflow.simulate_training_data(
            "aldp-vacuum", 200, data, seed=seed, progress=False, replicas=1, equilibration=200, stride=20
        )
        for _ in range(rounds):
            for name, options in (
                ("one_process", dict(threads=processes)),
                ("processes", dict(threads=1, processes=processes)),
            ):
                run = os.path.join(work, name)
                shutil.rmtree(run, ignore_errors=True)
                workflow.train(data, run, steps=steps, batch_size=batch, seed=seed, progress=False, **options)
                times[name].append(seconds_per_step(run))
    one, many = statistics.median(times["one_process"]), statistics.median(times["processes"])
    return {
        "system": "aldp-vacuum",
        "net": "egnn (shipped defaults)",
        "batch": batch,
        "steps": steps,
        "processes": processes,
        "cpu_count": os.cpu_count(),
        "seconds_per_step_one_process": one,
        "seconds_per_step_processes": many,
        "speedup": one / many,
        "rounds": times,
        "timing": f"median over {rounds} alternating rounds of the mean seconds per step after the first "
        "logged window; one process runs P threads, each of the P processes one",
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--net", default="egnn", choices=["egnn", "e3nn"])
    parser.add_argument("--processes", type=int, help="time data-parallel training over this many processes instead")
    parser.add_argument("--out", default="bench-results/train_cost.json")
    args = parser.parse_args(argv)
    if args.processes:
        result = measure_processes(args.processes, args.batch, args.steps)
    else:
        result = measure(args.batch, args.steps, args.k, args.threads, net=args.net)
    write_json(args.out, result)
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
