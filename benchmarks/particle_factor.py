"""What a wider diffusion buys: ``diffusion.particle_factor`` k on a target with a known answer.

The diffusion stage draws k times the run's particles, and the annealing's first resampling
keeps the run's number (docs/theory.md, "What the estimates rest on"). This measures, for each k,
the error of the two weights the quickstart reports on alanine dipeptide, on a mixture where
both are known: a three-mode Gaussian mixture in 2-D, modes A and B in one state (x_0 < 0, split by
a barrier that the annealing's moves rarely cross, as α_R and β/PII are) and a rare mode C in the
other (5 % of the mass, as φ > 0), sampled by a deliberately wrong exact-marginal model (other mode
weights, shifted, too wide, a ripple) with the quickstart's SMC settings from systems/recipes.yaml.
Over ``--runs`` independent runs of ``--particles`` it reports the mean and standard error of C's
weight and of B's share within its state, the distinct ancestors at t = 1, and the seconds per
run, so that the cost of an error (SE² × seconds) compares the factors on equal terms.

    python benchmarks/particle_factor.py            # -> bench-results/particle_factor.json
    python benchmarks/particle_factor.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
import time

import numpy as np
import torch

from boltzgen.io import write_json

#: Mode centres, widths and weights of the target, and the wrong model's weights.
MEANS = [[-2.0, -1.5], [-2.0, 1.5], [2.0, 0.0]]
WIDTH = 0.3
WEIGHTS = [0.75, 0.2, 0.05]
MODEL_WEIGHTS = [0.45, 0.05, 0.5]


def problem():
    """(target, model, states): the mixture, its wrong model, the side of x_0 = 0."""
    from boltzgen.sampling import ExactMarginalModel
    from boltzgen.systems.gmm import GaussianMixture

    means = torch.tensor(MEANS, dtype=torch.float64)
    stds = torch.full((3, 2), WIDTH, dtype=torch.float64)
    target = GaussianMixture(means, stds, WEIGHTS, standardise=False)
    wrong = GaussianMixture(means + 0.05, 1.15 * stds, MODEL_WEIGHTS, standardise=False)
    model = ExactMarginalModel(wrong, perturbation=lambda y, t: 0.3 * torch.sin(3 * y[:, 0]))
    return target, model, lambda x: (x[:, 0] > 0).long()


def quickstart_settings(factor: int):
    """The quickstart's SMC settings (systems/recipes.yaml) with ``particle_factor`` k."""
    from boltzgen.workflow import load_recipe, merge, sample_settings

    sample = load_recipe("quickstart", "default")["sample"]
    settings = merge(sample.get("settings", {}), {"diffusion": {"particle_factor": factor}, "chirality": False})
    return sample_settings(settings)


def one_factor(factor: int, runs: int, particles: int) -> dict:
    """Mean and standard error over ``runs`` runs of C's weight and of B's share of its state."""
    from boltzgen.sampling import smc_sample

    target, model, states = problem()
    settings = quickstart_settings(factor)
    rare, within, ancestors = [], [], []
    start = time.perf_counter()
    for r in range(runs):
        res = smc_sample(
            model, target, particles, torch.Generator().manual_seed(500 + r), settings=settings, states=states
        )
        w, x = res.weights, res.x
        in_c = (x[:, 0] > 0).double()
        in_b = ((x[:, 0] < 0) & (x[:, 1] > 0)).double()
        rare.append(float((w * in_c).sum()))
        within.append(float((w * in_b).sum() / (w * (1 - in_c)).sum()))
        ancestors.append(res.n_ancestors)
    seconds = (time.perf_counter() - start) / runs
    return {
        "particle_factor": factor,
        "rare_weight": stats(rare, WEIGHTS[2]),
        "within_state_share": stats(within, WEIGHTS[1] / (WEIGHTS[0] + WEIGHTS[1])),
        "mean_ancestors": float(np.mean(ancestors)),
        "seconds_per_run": seconds,
    }


def stats(values: list, exact: float) -> dict:
    v = np.asarray(values, dtype=float)
    se = float(v.std(ddof=1) / math.sqrt(len(v)))
    return {"exact": exact, "mean": float(v.mean()), "se": se, "bias_in_se": float((v.mean() - exact) / se)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--factors", default="1,2,4", help="comma-separated particle factors k")
    parser.add_argument("--runs", type=int, default=32, help="independent runs per factor")
    parser.add_argument("--particles", type=int, default=256, help="particles per run (the quickstart's)")
    parser.add_argument("--quick", action="store_true", help="4 runs of 64 (a smoke run)")
    parser.add_argument("--out", default="bench-results/particle_factor.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.particles = 4, 64
    torch.set_num_threads(1)
    rows = [one_factor(int(k), args.runs, args.particles) for k in args.factors.split(",")]
    base = rows[0]
    for r in rows:  # the cost of a given error: variance times seconds, relative to the first factor
        for key in ("rare_weight", "within_state_share"):
            r[key]["cost_ratio"] = (r[key]["se"] ** 2 * r["seconds_per_run"]) / (
                base[key]["se"] ** 2 * base["seconds_per_run"]
            )
    out = {
        "benchmark": "particle_factor",
        "date": datetime.date.today().isoformat(),
        "runs": args.runs,
        "particles": args.particles,
        "quick": args.quick,
        "rows": rows,
    }
    write_json(args.out, out)
    for r in rows:
        c, b = r["rare_weight"], r["within_state_share"]
        print(
            f"k {r['particle_factor']}: rare {c['mean']:.4f} ± {c['se']:.4f} (exact {c['exact']:.3f}), "
            f"within {b['mean']:.3f} ± {b['se']:.3f} (exact {b['exact']:.3f}), ancestors {r['mean_ancestors']:.1f}, "
            f"{r['seconds_per_run']:.1f} s per run, cost of an error {c['cost_ratio']:.2f} / {b['cost_ratio']:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
