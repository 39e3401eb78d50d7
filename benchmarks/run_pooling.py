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
times and reports the bias, spread and RMS error of ΔF(rare − common) of both pooling rules, and
how often the reported error covers the exact answer: the cluster bootstrap over the R runs against
the one over all their lineages (:func:`boltzgen.analysis.bootstrap_clusters`).

    python benchmarks/run_pooling.py                    # the cases below -> bench-results/run_pooling.json
    python benchmarks/run_pooling.py --runs 2 --out bench-results/run_pooling_r2.json
    python benchmarks/run_pooling.py --particle-factor 8 --cases 0,2 # the diffusion's k B particles, cases 0 and 2
    python benchmarks/run_pooling.py --groups 5 --quick # a smoke run
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
import time
import warnings

import numpy as np
import torch
from scipy.stats import norm

from boltzgen.io import write_json

#: (dimension d, particles per run N, mean shift of the wrong model, its widths, annealing moves per level)
CASES = [
    (8, 64, 0.3, 1.4, 2),
    (8, 64, 0.6, 2.0, 1),
    (16, 64, 0.6, 2.0, 1),
    (16, 256, 0.6, 2.0, 1),
    (32, 128, 0.5, 1.6, 1),
]


def one_case(
    d: int, n: int, shift: float, width: float, moves: int, rare: float, runs: int, groups: int, factor: int = 1
) -> dict:
    """Bias, spread and RMS error of both pooling rules over ``groups`` repetitions of ``runs`` SMC runs."""
    from boltzgen.analysis import bootstrap_clusters
    from boltzgen.sampling import ExactMarginalModel, SMCSettings, smc_sample
    from boltzgen.sampling.runs import pooled_lineages
    from boltzgen.systems.gmm import GaussianMixture, two_modes
    from boltzgen.weights import delta_f_point, jackknife, pool_runs

    base = two_modes(d)
    means = np.asarray(base.means)
    target = GaussianMixture(means, base.stds, [1 - rare, rare], standardise=False)
    model = ExactMarginalModel(GaussianMixture(means * 0.9 + shift, width * np.ones(2), [0.5, 0.5], standardise=False))
    axis = (means[1] - means[0]) / np.linalg.norm(means[1] - means[0])

    def states(x):
        return (np.asarray(x).reshape(len(x), -1) @ axis > 0).astype(np.int64)

    settings = SMCSettings.from_dict(
        {
            "diffusion": {"n_steps": 20, "t_min": 0.05, "particle_factor": factor},
            "anneal": {"n_levels": 4, "max_levels": 32, "mcmc_steps": moves},
            "final": {"mcmc_steps": 0},
            "chirality": False,
            "resampling": {"balance_states": True},
        }
    )
    z_rare = exact_rare_mass(target, axis)
    truth = -math.log(z_rare / (1.0 - z_rare))
    by_z, equal, jack, sd_log_z, z_states = [], [], [], [], []
    errors = {"runs": [], "lineages": []}
    for g in range(groups):
        results = [
            smc_sample(model, target, n, torch.Generator().manual_seed(1000 * g + r), settings=settings, states=states)
            for r in range(runs)
        ]
        log_w = [res.log_weights.numpy() for res in results]
        log_z = [res.log_z for res in results]
        labels = [states(res.x.numpy()) for res in results]
        lab = np.concatenate(labels)
        pooled = pool_runs(log_w, log_z)
        by_z.append(delta_f_point(pooled, lab == 0, lab == 1))
        run_of = np.repeat(np.arange(runs), [len(w) for w in log_w])
        for name, clusters in (("runs", (run_of, None)), ("lineages", (run_of, pooled_lineages(results)))):
            groups_of = bootstrap_clusters(pooled, *clusters)[0]
            errors[name].append(bootstrap_error(pooled, lab, groups_of, seed=g))
        for r in range(runs):  # each run's Ẑ of each state: its pooled weights summed there
            z_states.append([float(np.exp(pooled[(run_of == r) & (lab == k)]).sum()) for k in (0, 1)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an undefined correction counts as undefined below
            estimate = jackknife(delta_f_point, pooled, lab == 0, lab == 1, groups=run_of)
        jack.append(estimate.value if math.isfinite(estimate.error) else math.nan)
        equal.append(delta_f_point(pool_runs(log_w, [0.0] * runs), lab == 0, lab == 1))
        sd_log_z.append(float(np.std(log_z)))
    return {
        "d": d,
        "particles_per_run": n,
        "particle_factor": factor,
        "shift": shift,
        "width": width,
        "anneal_moves": moves,
        "truth_kT": truth,
        "z_weighted": summary(by_z, truth),
        "equal": summary(equal, truth),
        "values": {"z_weighted": by_z, "equal": equal, "jackknife": jack},
        "jackknife": summary(jack, truth),
        # how often |ΔF − exact| < error (0.683 for a calibrated standard error) and < 2 errors (0.954)
        "error_coverage": {name: coverage(by_z, e, truth) for name, e in errors.items()},
        "errors": errors,
        "median_sd_log_z_runs": float(np.median(sd_log_z)),
        # E[Ẑ_state] / Z_state over all runs (1 for an unbiased sampler), with its standard error
        "z_state_ratio": {
            name: ratio_to_exact(np.asarray(z_states)[:, k], exact)
            for k, (name, exact) in enumerate((("common", 1.0 - z_rare), ("rare", z_rare)))
        },
    }


def bootstrap_error(pooled: np.ndarray, labels: np.ndarray, groups, seed: int) -> float:
    """The cluster bootstrap's error of the pooled ΔF over ``groups`` (NaN when a state is empty)."""
    from boltzgen.weights import delta_f

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            return float(delta_f(pooled, labels == 0, labels == 1, groups=groups, seed=seed).error)
        except ValueError:
            return math.nan


def coverage(values: list, errors: list, truth: float) -> dict:
    """Share of the estimates within one and two reported errors of the exact value, the RMS of
    (value − exact) / error (1 for a calibrated error) and the median error; finite errors only."""
    v, e = np.asarray(values, dtype=float), np.asarray(errors, dtype=float)
    ok = np.isfinite(v) & np.isfinite(e) & (e > 0)
    z = (v[ok] - truth) / e[ok]
    return {
        "within_1": float(np.mean(np.abs(z) < 1)),
        "within_2": float(np.mean(np.abs(z) < 2)),
        "rms_z": float(np.sqrt(np.mean(z**2))),
        "median_error_kT": float(np.median(e[ok])),
        "n": int(ok.sum()),
    }


def exact_rare_mass(target, axis: np.ndarray) -> float:
    """The mass of the state x · axis > 0 of a normalised isotropic mixture: each component puts
    Φ(axis · μ_k / σ_k) of its mass there. The components overlap the plane (the common one sits
    2.7 of its widths from it), so this is not the rare component's weight."""
    means = target.means.numpy() @ axis
    stds = target.stds.numpy().reshape(len(means), -1)[:, 0]
    weights = target.weights.numpy()
    return float(np.sum(weights * norm.cdf(means / stds)))


def ratio_to_exact(values: np.ndarray, exact: float) -> dict:
    """Mean of independent estimates over the exact value, with its standard error."""
    return {"mean": float(values.mean() / exact), "se": float(values.std(ddof=1) / math.sqrt(len(values)) / exact)}


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
    parser.add_argument(
        "--particle-factor",
        type=int,
        default=1,
        help="diffusion.particle_factor: diffusion particles per run's particle",
    )
    parser.add_argument("--cases", default=None, help="comma-separated indices into CASES (default: all)")
    parser.add_argument("--quick", action="store_true", help="the first case only (a smoke run)")
    parser.add_argument("--out", default="bench-results/run_pooling.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    if args.cases:
        cases = [CASES[int(i)] for i in args.cases.split(",")]
    else:
        cases = CASES[:1] if args.quick else CASES
    factor = args.particle_factor
    rows = [one_case(*case, args.rare, args.runs, args.groups, factor) for case in cases]
    out = {
        "benchmark": "run_pooling",
        "date": datetime.date.today().isoformat(),
        "rare": args.rare,
        "runs": args.runs,
        "groups": args.groups,
        "quick": args.quick,
        "particle_factor": factor,
        "seconds": time.perf_counter() - start,
        "rows": rows,
    }
    write_json(args.out, out)
    for r in rows:
        z, e, j = r["z_weighted"], r["equal"], r["jackknife"]
        print(
            f"d {r['d']}, N {r['particles_per_run']}: RMS error Ẑ-weighted {z['rmse_kT']:.2f} "
            f"(bias {z['bias_kT']:+.2f}), equal {e['rmse_kT']:.2f} (bias {e['bias_kT']:+.2f}), "
            f"jackknife {j['rmse_kT']:.2f} (bias {j['bias_kT']:+.2f}; {j['undefined']} undefined) kT; "
            + "; ".join(
                f"error over {k}: {c['within_1']:.2f} within 1, {c['within_2']:.2f} within 2"
                for k, c in r["error_coverage"].items()
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
