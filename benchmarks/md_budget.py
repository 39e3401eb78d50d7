"""ΔF error against wall clock: replica exchange and the boltzgen recipes on one axis (alanine dipeptide).

``benchmarks/versus_md.py`` compares the two at one budget, the default quickstart's wall clock.
This benchmark asks how the comparison moves with the budget:

- replica exchange: ΔF(φ > 0 − φ < 0) of each independent run's first n frames, against the pool
  of all the *other* runs, for a ladder of n; the RMS error of one run and of two runs pooled (the
  two cores, as versus_md runs them; disjoint pairs of runs of equal length) and a fit
  ``rms(n) = c / √n`` of the single runs (frames of a long run average as independent blocks).
  Frames become wall clock by the calibrated rate of two runs side by side
  (:func:`versus_md.frames_per_second`, or a versus_md JSON's pair rate);
- each boltzgen recipe: its pipeline's wall time (given: the stages it ran) and its ΔF over seeds
  (bias, spread, RMS against the same pooled reference) and the error implied by the scatter of
  its independent SMC runs (sd of the per-run ΔF over √runs, pooled over seeds), which rests on
  more numbers than three seeds do. Beside it: replica exchange's fitted error at that wall clock.

    python benchmarks/md_budget.py --remd RUN.h5 [RUN.h5 ...] --versus-md bench-results/versus_md.json \\
        --point default 676 qs0/metrics.json qs1/metrics.json qs2/metrics.json \\
        --point long 1500 long0/metrics.json long1/metrics.json long2/metrics.json

Every ``--remd`` file must be an independent replica-exchange run of aldp-vacuum at the system's
defaults (its own seed); runs of one seed reused at several lengths would not be independent.
Output: JSON (``--out``) and a markdown table beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np
from results import BENCHMARKS, md_budget_rows, table
from versus_md import delta_f_of_runs, frames_per_second, phi_labels, write_result

LENGTHS = (1000, 2000, 5000, 10000, 15000, 20000, 30000, 50000)


def run_delta_f(labels: np.ndarray) -> float:
    """ΔF in kT of one run's frame labels (inf when a state is missing)."""
    n1, n0 = int((labels == 1).sum()), int((labels == 0).sum())
    return -math.log(n1 / n0) if n1 and n0 else math.inf


def remd_curve(runs: list[np.ndarray], lengths=LENGTHS) -> list[dict]:
    """RMS error of one run and of two runs pooled, at each length that at least four runs reach.
    Each run's first n frames are compared with the pool of the other runs (all their frames)."""
    refs: dict = {}  # the pool without the given runs, whatever the length: computed once

    def pool_without(*left_out: int) -> float:
        if left_out not in refs:
            refs[left_out] = delta_f_of_runs([lab for j, lab in enumerate(runs) if j not in left_out])[0]
        return refs[left_out]

    rows = []
    for n in lengths:
        idx = [k for k, lab in enumerate(runs) if len(lab) >= n]
        if len(idx) < 4:
            continue
        single = np.array([run_delta_f(runs[k][:n]) - pool_without(k) for k in idx])
        pairs = np.array(  # disjoint pairs
            [delta_f_of_runs([runs[a], runs[b]], n)[0] - pool_without(a, b) for a, b in zip(idx[0::2], idx[1::2])]
        )
        rows.append(
            {
                "frames_per_run": n,
                "runs": len(idx),
                "single_rms_kT": float(np.sqrt(np.mean(single**2))),
                "single_bias_kT": float(single.mean()),
                "pairs": len(pairs),
                "pair_rms_kT": float(np.sqrt(np.mean(pairs**2))),
            }
        )
    return rows


def fit_constant(curve: list[dict], from_frames: int = 5000) -> float:
    """c of rms(n) = c / √n for one run over the lengths from ``from_frames`` on (shorter runs carry
    the start's bias: the first φ > 0 visit takes a few thousand frames), least squares in the
    variance: c² = mean(rms² · n)."""
    kept = [r for r in curve if r["frames_per_run"] >= from_frames] or curve
    return float(math.sqrt(np.mean([r["single_rms_kT"] ** 2 * r["frames_per_run"] for r in kept])))


def boltzgen_point(label: str, seconds: float, files: list[str], reference: float) -> dict:
    """A recipe's ΔF over seeds and the error implied by its SMC runs' scatter."""
    values, run_vars, runs = [], [], []
    for path in files:
        with open(path) as handle:
            blob = json.load(handle)
        values.append(float(blob["delta_f_kT"]))
        per_run = [x for x in blob.get("delta_f_runs_kT", []) if x is not None and math.isfinite(x)]
        if len(per_run) > 1:
            run_vars.append(float(np.var(per_run, ddof=1)))
            runs.append(len(per_run))
    err = np.array(values) - reference
    implied = math.sqrt(np.mean(run_vars) / np.mean(runs)) if run_vars else None
    return {
        "label": label,
        "seconds": seconds,
        "files": files,
        "delta_f_kT": values,
        "bias_kT": float(err.mean()),
        "spread_kT": float(np.std(values, ddof=1)) if len(values) > 1 else None,
        "rmse_kT": float(np.sqrt(np.mean(err**2))),
        "runs_implied_sd_kT": implied,
        "runs_per_seed": runs,
    }


def markdown(out: dict) -> str:
    """The results page's table of this benchmark, under a line on the reference and the fit."""
    bench = next(b for b in BENCHMARKS if b.name == "md_budget")
    ref = out["reference"]
    head = (
        f"Reference ΔF = {ref['delta_f_kT']:.2f} ± {ref['delta_f_err_kT']:.2f} kT ({ref['runs']} replica-exchange "
        f"runs, {ref['frames']} frames); two runs side by side write {out['pair_frames_per_second']:.1f} frames "
        f"per second each; one run's error fits {out['fit_c']:.1f} / √frames kT."
    )
    return head + "\n\n" + table(bench.columns, md_budget_rows(out)) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--remd", nargs="+", required=True, help="independent replica-exchange runs (sample files)")
    parser.add_argument("--versus-md", help="a versus_md JSON whose pair rate converts frames to seconds")
    parser.add_argument("--work", default="bench-results/md_budget", help="calibration runs, without --versus-md")
    parser.add_argument(
        "--point",
        nargs="+",
        action="append",
        default=[],
        metavar="ARG",
        help="LABEL SECONDS METRICS.json...: a boltzgen recipe, its pipeline wall time and one metrics file per seed",
    )
    parser.add_argument("--fit-from", type=int, default=5000, help="shortest run length (frames) in the √n fit")
    parser.add_argument("--out", default="bench-results/md_budget.json")
    args = parser.parse_args(argv)
    for point in args.point:
        if len(point) < 3:
            parser.error(f"--point needs LABEL SECONDS METRICS.json..., got {point}")
    if args.versus_md:
        with open(args.versus_md) as handle:
            vmd = json.load(handle)
        rate, fixed = vmd["remd_pair_frames_per_second"], vmd.get("remd_fixed_seconds", 0.0)
    else:
        os.makedirs(args.work, exist_ok=True)
        rate, fixed = frames_per_second(args.work)
    runs = [phi_labels(path) for path in args.remd]
    ref, ref_err = delta_f_of_runs(runs)
    curve = remd_curve(runs)
    if not curve:
        parser.error("need at least four replica-exchange runs of 1000 frames or more")
    c = fit_constant(curve, args.fit_from)
    for r in curve:
        r["wall_s"] = fixed + r["frames_per_run"] / rate
        r["fit_pair_kT"] = c / math.sqrt(2 * r["frames_per_run"])
    points = []
    for label, seconds, *files in args.point:
        p = boltzgen_point(label, float(seconds), files, ref)
        p["remd_frames_per_run"] = int(rate * max(p["seconds"] - fixed, 1.0))
        p["remd_fit_pair_kT"] = c / math.sqrt(2 * p["remd_frames_per_run"])
        points.append(p)
    out = {
        "benchmark": "md_budget",
        "system": "aldp-vacuum",
        "remd_files": args.remd,
        "pair_frames_per_second": rate,
        "fixed_seconds": fixed,
        "reference": {
            "delta_f_kT": ref,
            "delta_f_err_kT": ref_err,
            "runs": len(runs),
            "frames": int(sum(len(lab) for lab in runs)),
        },
        "fit_c": c,
        "fit_from_frames": args.fit_from,
        "remd": curve,
        "boltzgen": points,
    }
    write_result(args.out, out, markdown(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
