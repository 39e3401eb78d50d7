"""Where a trained model's own reverse diffusion ends: the target energy of its samples at t_min.

For each run directory and each sampler setting (corrector moves per level, time grid), draws
reverse-diffusion samples (:func:`boltzgen.diagnostics.sample_quality`) and reports the median
excess of their target energy over held-out frames of the target, in total and per force-field
term class, with the wall time of each setting relative to the first.

    python benchmarks/sample_quality.py RUN_DIR [RUN_DIR ...] --data DATA.h5 [-n 128] [--steps 100]
        [--settings 0:quadratic,3:quadratic,3:log] [--t-min 6e-4] [--out bench-results/sample_quality.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (see boltzgen.cli)

import torch  # noqa: E402

from boltzgen.diagnostics import sample_quality  # noqa: E402
from boltzgen.io import write_json  # noqa: E402
from boltzgen.model import load_model  # noqa: E402
from boltzgen.systems import resolve  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from marginal_error import target_frames  # noqa: E402


def parse_settings(text: str) -> list[tuple[int, str]]:
    """``"0:quadratic,3:log"`` -> [(0, "quadratic"), (3, "log")]."""
    out = []
    for item in text.split(","):
        steps, _, spacing = item.partition(":")
        out.append((int(steps), spacing or "quadratic"))
    return out


def run_settings(run_dir: str, model, target, reference, args) -> dict:
    """One run directory's row per sampler setting, with wall times relative to the first."""
    rows = []
    for moves, spacing in parse_settings(args.settings):
        start = time.perf_counter()
        row = sample_quality(
            model,
            target,
            reference,
            n=args.n,
            n_steps=args.steps,
            mcmc_steps=moves,
            spacing=spacing,
            t_min=args.t_min,
            seed=args.seed,
        )
        row.update(mcmc_steps=moves, spacing=spacing, wall_s=time.perf_counter() - start)
        rows.append(row)
        print(
            run_dir,
            moves,
            spacing,
            round(row["sample_energy_excess_kT"], 1),
            row.get("sample_term_excess_kT"),
            flush=True,
        )
    for row in rows:
        row["wall_ratio"] = row["wall_s"] / rows[0]["wall_s"]
    t_min = float(model.t_min if args.t_min is None else args.t_min)
    return {"run_dir": run_dir, "t_min": t_min, "settings": rows}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run directories of boltzgen train")
    p.add_argument("--data", required=True, help="sample file with frames of the target (held-out reference)")
    p.add_argument("--system", default=None, help="target (default: the first run's)")
    p.add_argument("-n", type=int, default=128, help="samples per setting and reference frames")
    p.add_argument("--steps", type=int, default=100, help="diffusion levels")
    p.add_argument("--t-min", type=float, default=None, help="last time (default: each model's t_min)")
    p.add_argument("--settings", default="0:quadratic,3:quadratic,3:log", help="MOVES:SPACING,... to compare")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench-results/sample_quality.json")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("BOLTZGEN_THREADS", "2")))
    models = [load_model(run_dir) for run_dir in args.runs]
    recipe = args.system or models[0].metadata.get("target") or models[0].metadata.get("system")
    target = resolve(**recipe) if isinstance(recipe, dict) else resolve(recipe)
    try:
        reference = target_frames(args.data, target, args.n, args.seed, relax_ps=0.0)
        runs = [run_settings(run_dir, model, target, reference, args) for run_dir, model in zip(args.runs, models)]
    finally:
        if hasattr(target, "close"):
            target.close()
    blob = {
        "benchmark": "sample_quality",
        "data": os.path.abspath(args.data),
        "n": args.n,
        "steps": args.steps,
        "runs": runs,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_json(args.out, blob)
    return blob


if __name__ == "__main__":
    main()
