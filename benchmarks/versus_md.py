"""boltzgen against replica exchange given the same wall clock on the same cores (alanine dipeptide).

The comparison an MD lab makes: ΔF(φ > 0 − φ < 0) of alanine dipeptide in vacuum at 300 K from

(a) replica exchange alone: two independent runs side by side (one per core; 6 replicas up to
    1000 K, the system's defaults), as long as the pipeline took, pooled; and
(b) the whole boltzgen pipeline (``boltzgen quickstart``: its own MD for the training data,
    training, SMC, reweighting), whose wall time sets the budget of (a),

for several seeds each. The reference is the pool of every replica-exchange run of the benchmark
(tens of ns over independent runs; its error is the spread of the runs over √runs); an arm's own
runs are left out of the reference it is compared with, so no run is compared with itself. Output:
per seed both arms' ΔF with their reported errors and wall times, and per arm the bias (mean minus
reference), the spread over seeds and the RMS error, in JSON and a markdown table.

    python benchmarks/versus_md.py                          # seeds 0 1 2 -> bench-results/versus_md.json
    python benchmarks/versus_md.py --seeds 0 --recipe fast  # a smoke run
    python benchmarks/versus_md.py --seeds 0 1 2            # again: finished seeds are kept (OUT.partial)

Replica-exchange runs already in the work directory with at least the frames a seed needs are
reused (they are deterministic in their seeds) and not timed: the pair rate of such seeds is the
calibration's, measured in the same invocation.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import sys
import time
from typing import Optional

import numpy as np

from boltzgen.io import write_json, write_text


def _remd(args) -> dict:
    """One replica-exchange run of ``n`` target-temperature frames (one core)."""
    seed, n, path = args
    os.environ["OMP_NUM_THREADS"] = "1"
    from boltzgen import workflow

    start = time.perf_counter()
    workflow.simulate_training_data(
        "aldp-vacuum", n, path, seed=seed, progress=False, target_options={"n_workers": 0}, workers=1
    )
    return {"seed": seed, "frames": n, "path": path, "seconds": time.perf_counter() - start}


def frames_per_second(work: str) -> tuple[float, float]:
    """(frames per second, fixed seconds) of one replica-exchange run while a second runs beside it
    on the other core, as the benchmark runs them, from two short pairs of runs. Short runs write
    frames faster than long ones, so the long pairs outlast the pipeline; :func:`equal_time_frames`
    then keeps the frames that the pipeline's wall clock buys."""
    sizes, times = (100, 600), []  # the difference must take many seconds to be timed reliably
    for n in sizes:
        jobs = [(999 - k, n, os.path.join(work, f"calibrate{n}-{k}.h5")) for k in range(2)]
        with mp.get_context("spawn").Pool(2) as pool:
            times.append(max(r["seconds"] for r in pool.map(_remd, jobs)))
    rate = (sizes[1] - sizes[0]) / max(times[1] - times[0], 1.0)
    return rate, max(times[0] - sizes[0] / rate, 0.0)


def phi_labels(path: str) -> np.ndarray:
    """State labels (0: φ < 0, 1: φ > 0) of a sample file's frames."""
    from boltzgen.io import load_samples
    from boltzgen.states import default_states

    samples = load_samples(path)
    return np.asarray(default_states(samples.topology).assign(samples.x))


def delta_f_of_runs(run_labels: list[np.ndarray], frames: Optional[int] = None) -> tuple[float, float]:
    """ΔF(φ > 0 − φ < 0) in kT of pooled unweighted MD runs, given each run's frame labels
    (:func:`phi_labels`; their first ``frames`` frames, if given), and its error: the spread of the
    runs' own ΔF over √runs (frames of one run are correlated; φ > 0 comes in bursts)."""
    labels = [lab[:frames] for lab in run_labels]
    pooled = np.concatenate(labels)
    value = -math.log(max((pooled == 1).mean(), 1e-12) / max((pooled == 0).mean(), 1e-12))
    per_run = [-math.log(max((lab == 1).mean(), 1e-12) / max((lab == 0).mean(), 1e-12)) for lab in labels]
    err = float(np.std(per_run, ddof=1) / math.sqrt(len(per_run))) if len(per_run) > 1 else float("inf")
    return value, err


def frames_on_disk(path: str) -> Optional[int]:
    """Frames of a finished replica-exchange file (None when there is none or it is unreadable)."""
    if not os.path.exists(path):
        return None
    try:
        return len(phi_labels(path))
    except (OSError, KeyError, ValueError):
        return None


def equal_time_frames(frames: int, pipeline_s: float, pair_rate: float, fixed_s: float) -> int:
    """Frames of each replica-exchange run that the pipeline's wall time buys: the runs write their
    frames at a steady rate after ``fixed_s`` of set-up, so when a pair took longer than the
    pipeline (the calibration off, or another job on the machine), its first frames are what the
    same wall clock gives at ``pair_rate`` (frames per second of a run beside another)."""
    return max(10, min(frames, int(pair_rate * max(pipeline_s - fixed_s, 1.0))))


def pipeline(seed: int, recipe: str, out_dir: str) -> dict:
    from boltzgen import workflow

    start = time.perf_counter()
    summary = workflow.quickstart(out_dir, recipe, seed=seed, progress=False, log=lambda _: None)
    return {
        "seed": seed,
        "delta_f_kT": summary.get("delta_f_kT"),
        "delta_f_err_kT": summary.get("delta_f_err_kT"),
        "ess_fraction": summary.get("ess_fraction"),
        "energy_w2": summary.get("energy_w2"),
        "seconds": time.perf_counter() - start,
    }


def arm_summary(values: list, reference: list) -> dict:
    """Bias, spread and RMS error of one arm's ΔF over seeds (each against its own reference; a seed
    whose value or reference is None is left out)."""
    v = np.array([np.nan if x is None else x for x in values], dtype=float)
    r = np.array([np.nan if x is None else x for x in reference], dtype=float)
    ok = np.isfinite(v) & np.isfinite(r)
    if not ok.any():
        return {"bias_kT": None, "spread_kT": None, "rmse_kT": None, "n": 0}
    err = v[ok] - r[ok]
    return {
        "bias_kT": float(err.mean()),
        "spread_kT": float(v[ok].std(ddof=1)) if ok.sum() > 1 else None,
        "rmse_kT": float(np.sqrt((err**2).mean())),
        "n": int(ok.sum()),
    }


def markdown(out: dict) -> str:
    def f(x, spec=".2f"):
        return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)

    lines = [
        f"Reference ΔF(φ > 0 − φ < 0) = {f(out['reference']['delta_f_kT'])} ± "
        f"{f(out['reference']['delta_f_err_kT'])} kT ({out['reference']['runs']} replica-exchange runs, "
        f"{out['reference']['frames']} frames at 300 K).",
        "",
        "| seed | wall s | boltzgen ΔF (kT) | REMD ΔF (kT), same wall clock, 2 runs | REMD frames per run (of those run) | reference for REMD |",
        "|---|---|---|---|---|---|",
    ]
    for row in out["seeds"]:
        p, m = row["pipeline"], row["remd"]
        lines.append(
            f"| {row['seed']} | {f(p['seconds'], '.0f')} | {f(p['delta_f_kT'])} ± {f(p['delta_f_err_kT'])} | "
            f"{f(m['delta_f_kT'])} ± {f(m['delta_f_err_kT'])} | {m.get('frames_equal_time', m['frames_per_run'])} ({m['frames_per_run']}) | {f(m['reference_kT'])} |"
        )
    lines += ["", "| arm | bias (kT) | spread over seeds (kT) | RMS error (kT) |", "|---|---|---|---|"]
    for arm in ("pipeline", "remd"):
        s = out["summary"][arm]
        lines.append(f"| {arm} | {f(s['bias_kT'])} | {f(s['spread_kT'])} | {f(s['rmse_kT'])} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipe", default="default", help="quickstart recipe of systems/recipes.yaml")
    parser.add_argument("--work", default="bench-results/versus_md", help="working directory (resumable)")
    parser.add_argument("--out", default="bench-results/versus_md.json")
    parser.add_argument(
        "--summarize-partial",
        action="store_true",
        help="only tabulate the seeds already finished (OUT.partial), e.g. after a run was stopped",
    )
    args = parser.parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    if args.summarize_partial:
        with open(args.out + ".partial") as handle:
            done = json.load(handle)
        return finish(args, done["remd_frames_per_second"], done["seeds"], done.get("remd_fixed_seconds", 0.0))
    rows, done_seeds = [], set()
    if os.path.exists(args.out + ".partial"):  # resume: keep the finished seeds and their calibration
        with open(args.out + ".partial") as handle:
            done = json.load(handle)
        rows = done["seeds"]
        done_seeds = {row["seed"] for row in rows}
        rate, fixed = done["remd_frames_per_second"], done.get("remd_fixed_seconds", 0.0)
    else:
        rate, fixed = frames_per_second(args.work)
    for seed in args.seeds:
        if seed in done_seeds:
            continue
        pipe = pipeline(seed, args.recipe, os.path.join(args.work, f"pipeline-{seed}"))
        n = max(10, int(rate * max(pipe["seconds"] - fixed, 1.0)))
        jobs = [(1000 + 2 * seed + k, n, os.path.join(args.work, f"remd-{seed}-{k}.h5")) for k in range(2)]
        kept = [frames_on_disk(job[2]) for job in jobs]
        if all(f is not None and f >= n for f in kept):  # deterministic in their seeds: reused, not timed
            remd = {"frames_per_run": min(kept), "seconds": None, "reused": True}
        else:
            start = time.perf_counter()
            with mp.get_context("spawn").Pool(2) as pool:
                pool.map(_remd, jobs)
            remd = {"frames_per_run": n, "seconds": time.perf_counter() - start}
        rows.append({"seed": seed, "pipeline": pipe, "remd": remd})
        # what is done so far, should a later seed fail
        write_json(args.out + ".partial", {"remd_frames_per_second": rate, "remd_fixed_seconds": fixed, "seeds": rows})
    return finish(args, rate, rows, fixed)


def finish(args, rate: float, rows: list, fixed: float = 0.0) -> int:
    """Reference, summary, JSON and markdown from the finished seeds."""
    # each run's frame labels, read once
    all_runs = {
        row["seed"]: [phi_labels(os.path.join(args.work, f"remd-{row['seed']}-{k}.h5")) for k in range(2)]
        for row in rows
    }
    every = [lab for runs in all_runs.values() for lab in runs]
    ref, ref_err = delta_f_of_runs(every)
    # the least disturbed pair's rate: the machine may have run other work beside some pairs; reused
    # runs were timed on another occasion, so only the calibration speaks for them
    timed = [row["remd"] for row in rows if row["remd"].get("seconds")]
    pair_rate = max((m["frames_per_run"] / max(m["seconds"] - fixed, 1.0) for m in timed), default=rate)
    for row in rows:
        m = row["remd"]
        m["frames_equal_time"] = equal_time_frames(m["frames_per_run"], row["pipeline"]["seconds"], pair_rate, fixed)
        m["delta_f_kT"], m["delta_f_err_kT"] = delta_f_of_runs(all_runs[row["seed"]], m["frames_equal_time"])
        m["delta_f_all_frames_kT"] = delta_f_of_runs(all_runs[row["seed"]])[0]
        # leave the arm's own runs out of its reference
        others = [lab for s, runs in all_runs.items() if s != row["seed"] for lab in runs]
        m["reference_kT"] = delta_f_of_runs(others)[0] if len(others) >= 2 else None
    out = {
        "system": "aldp-vacuum",
        "recipe": args.recipe,
        "cpu_count": os.cpu_count(),
        "remd_frames_per_second": rate,
        "remd_fixed_seconds": fixed,
        "remd_pair_frames_per_second": pair_rate,
        "reference": {
            "delta_f_kT": ref,
            "delta_f_err_kT": ref_err,
            "runs": len(every),
            "frames": int(sum(len(lab) for lab in every)),
        },
        "seeds": rows,
    }
    out["summary"] = {
        "pipeline": arm_summary([r["pipeline"]["delta_f_kT"] for r in rows], [ref] * len(rows)),
        # a seed's replica exchange is never compared with itself: with one seed it has no reference
        "remd": arm_summary([r["remd"]["delta_f_kT"] for r in rows], [r["remd"]["reference_kT"] for r in rows]),
    }
    write_result(args.out, out, markdown(out))
    return 0


def write_result(path: str, blob: dict, text: str) -> None:
    """Write a benchmark's JSON to ``path`` and its markdown table beside it (``.md``), each
    atomically (making the folder), and print the table."""
    write_json(path, blob)
    write_text(os.path.splitext(path)[0] + ".md", text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
