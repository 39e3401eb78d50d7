"""How to pool independent SMC runs for a free-energy difference: by their Ẑ, or with equal weights.

``boltzgen sample --runs R`` pools R independent runs by their normaliser estimates Ẑ_r
(:func:`boltzgen.weights.pool_runs`): unbiased for Z · E[f], so a state's pooled weight converges
as R grows at fixed particles per run. Averaging the runs' self-normalised weights instead (equal
run weights) ignores the scatter of Ẑ_r between runs, but keeps each run's O(1/N) ratio bias for
any R. Which has the smaller error at the R = 4 the quickstart uses is a question of numbers; this
answers it on a target with a known answer: a two-mode Gaussian mixture in d dimensions whose rare
mode holds ``--rare`` of the mass (alanine dipeptide's φ > 0 holds about 0.025 at 300 K), sampled
by SMC with a deliberately wrong model (an exact-marginal model of another mixture: means scaled by
0.9 and shifted, widths ``--width``, equal weights), with the quickstart's structure: diffusion to
t = 0.05, balanced per-state resampling, adaptive annealing. Each case repeats R runs ``--groups``
times and reports the bias, spread and RMS error of ΔF(rare − common) of both pooling rules.

    python benchmarks/run_pooling.py                    # the cases below -> bench-results/run_pooling.json
    python benchmarks/run_pooling.py --groups 5 --quick # a smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time

import numpy as np
import torch

#: (dimension d, particles per run N, mean shift of the wrong model, its widths, annealing moves per level)
CASES = [
    (8, 64, 0.3, 1.4, 2),
    (8, 64, 0.6, 2.0, 1),
    (16, 64, 0.6, 2.0, 1),
    (16, 256, 0.6, 2.0, 1),
    (32, 128, 0.5, 1.6, 1),
]


def one_case(d: int, n: int, shift: float, width: float, moves: int, rare: float, runs: int, groups: int) -> dict:
    """Bias, spread and RMS error of both pooling rules over ``groups`` repetitions of ``runs`` SMC runs."""
    from boltzgen.sampling import ExactMarginalModel, SMCSettings, smc_sample
    from boltzgen.systems.gmm import GaussianMixture, two_modes
    from boltzgen.weights import delta_f_point, pool_runs

    base = two_modes(d)
    means = np.asarray(base.means)
    target = GaussianMixture(means, base.stds, [1 - rare, rare], standardise=False)
    model = ExactMarginalModel(GaussianMixture(means * 0.9 + shift, width * np.ones(2), [0.5, 0.5], standardise=False))
    axis = (means[1] - means[0]) / np.linalg.norm(means[1] - means[0])

    def states(x):
        return (np.asarray(x).reshape(len(x), -1) @ axis > 0).astype(np.int64)

    settings = SMCSettings.from_dict(
        {
            "diffusion": {"n_steps": 20, "t_min": 0.05},
            "anneal": {"n_levels": 4, "max_levels": 32, "mcmc_steps": moves},
            "final": {"mcmc_steps": 0},
            "chirality": False,
            "resampling": {"balance_states": True},
        }
    )
    truth = -math.log(rare / (1 - rare))
    by_z, equal, sd_log_z = [], [], []
    for g in range(groups):
        log_w, log_z, labels = [], [], []
        for r in range(runs):
            res = smc_sample(
                model, target, n, torch.Generator().manual_seed(1000 * g + r), settings=settings, states=states
            )
            log_w.append(res.log_weights.numpy())
            log_z.append(res.log_z)
            labels.append(states(res.x.numpy()))
        lab = np.concatenate(labels)
        by_z.append(delta_f_point(pool_runs(log_w, log_z), lab == 0, lab == 1))
        equal.append(delta_f_point(pool_runs(log_w, [0.0] * runs), lab == 0, lab == 1))
        sd_log_z.append(float(np.std(log_z)))
    return {
        "d": d,
        "particles_per_run": n,
        "shift": shift,
        "width": width,
        "anneal_moves": moves,
        "truth_kT": truth,
        "z_weighted": summary(by_z, truth),
        "equal": summary(equal, truth),
        "median_sd_log_z_runs": float(np.median(sd_log_z)),
    }


def summary(values: list, truth: float) -> dict:
    v = np.asarray(values, dtype=float)
    ok = np.isfinite(v)
    err = v[ok] - truth
    return {
        "bias_kT": float(err.mean()),
        "spread_kT": float(v[ok].std(ddof=1)),
        "rmse_kT": float(np.sqrt((err**2).mean())),
        "undefined": int((~ok).sum()),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rare", type=float, default=0.03, help="mass of the rare mode")
    parser.add_argument("--runs", type=int, default=4, help="runs pooled (the quickstart's R)")
    parser.add_argument("--groups", type=int, default=200, help="repetitions of the R runs per case")
    parser.add_argument("--quick", action="store_true", help="the first case only (a smoke run)")
    parser.add_argument("--out", default="bench-results/run_pooling.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    rows = [one_case(*case, args.rare, args.runs, args.groups) for case in (CASES[:1] if args.quick else CASES)]
    out = {
        "benchmark": "run_pooling",
        "date": datetime.date.today().isoformat(),
        "rare": args.rare,
        "runs": args.runs,
        "groups": args.groups,
        "quick": args.quick,
        "seconds": time.perf_counter() - start,
        "rows": rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(out, handle, indent=2)
    for r in rows:
        z, e = r["z_weighted"], r["equal"]
        print(
            f"d {r['d']}, N {r['particles_per_run']}: RMS error Ẑ-weighted {z['rmse_kT']:.2f} "
            f"(bias {z['bias_kT']:+.2f}), equal {e['rmse_kT']:.2f} (bias {e['bias_kT']:+.2f}) kT"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
