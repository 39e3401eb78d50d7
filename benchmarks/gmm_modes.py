"""Mode blindness benchmark: DSM vs DSM + DiffCLF on Gaussian mixtures with exact answers.

For each case (system, dimension) both objectives are trained from the system's shipped defaults
(``systems/<name>.train.yaml``) under the same budget: the same steps, batch, levels and k, so
the same number of DSM evaluations (``loss.kind = "dsm"`` with the same ``k`` is the fair
baseline; DiffCLF adds energy-only evaluations, whose cost shows in the wall time). During
training the EMA model is evaluated at several checkpoints (relative error of the mode weights of
exp(−E_θ(·, t_min)), :func:`boltzgen.evaluate.mode_weights`), giving the error against training
wall time; at the end also the 128-level chain classification loss (chance ln 128 ≈ 4.85) and the
per-level ESS of exact marginal samples.

    python benchmarks/gmm_modes.py                       # default cases, full budget
    python benchmarks/gmm_modes.py --quick               # short smoke run
    python benchmarks/gmm_modes.py --cases two-modes-d2 --seeds 0,1
    python benchmarks/gmm_modes.py --merge a.json b.json --out c.json   # e.g. one process per seed

Writes JSON (``--out``, default ``bench-results/gmm_modes.json``) and a markdown table beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

from boltzgen.io import write_json, write_text

CASES = {
    "two-modes-d2": ("gmm-two-modes", 2),
    "two-modes-d32": ("gmm-two-modes", 32),
    "gmm40-d2": ("gmm-40", 2),
    "gmm40-d32": ("gmm-40", 32),
    "gmm40-d128": ("gmm-40", 128),
}
DEFAULT_CASES = "two-modes-d2,two-modes-d32,gmm40-d2"
METHODS = ("dsm", "dsm+diffclf")
#: Objectives --methods accepts: the loss kinds, plus "dsm+diffclf-one" (loss.clf_samples = "one").
OBJECTIVES = {
    "dsm": {"kind": "dsm"},
    "dsm+diffclf": {"kind": "dsm+diffclf"},
    "diffclf": {"kind": "diffclf"},
    "dsm+diffclf-one": {"kind": "dsm+diffclf", "clf_samples": "one"},
}
ESS_TIMES = (1e-3, 1e-2, 0.1, 0.3, 1.0)


def run_one(case: str, method: str, seed: int, args) -> dict:
    import torch

    from boltzgen import systems
    from boltzgen.evaluate import chain_classification_loss, marginal_ess, mode_weights
    from boltzgen.train import Trainer, resolve_config

    system, dim = CASES[case]
    target = systems.load(system, dim=dim)
    x = target.sample(args.n_data, torch.Generator().manual_seed(10_000 + seed)).numpy()
    overrides = {
        "loss": dict(OBJECTIVES[method]),
        "seed": seed,
        "train": {"val_fraction": 0.0, "checkpoint_every": 10**9, "val_every": 10**9, "log_every": 10**9},
    }
    if args.steps:
        overrides["train"]["steps"] = args.steps
    if method == "dsm":
        overrides["pretrain_dsm_steps"] = 0
    config = resolve_config(system, overrides=overrides)
    steps = int(config["train"]["steps"])
    if args.quick:
        steps = max(20, steps // 20)
        config["train"]["steps"] = steps
        config["pretrain_dsm_steps"] = min(int(config["pretrain_dsm_steps"]) // 20, steps)
        config["optim"]["warmup_steps"] = min(int(config["optim"]["warmup_steps"]), steps // 5)
    n_mc = 1024 if args.quick else args.n_per_mode
    trainer = Trainer(config, x, run_dir=os.devnull, progress=False)
    checkpoints = sorted({max(1, round(steps * (i + 1) / args.checkpoints)) for i in range(args.checkpoints)})
    curve, wall, mw = [], 0.0, None
    batch, k = int(config["train"]["batch_size"]), int(config["loss"]["k"])
    pre = int(config["pretrain_dsm_steps"]) if method != "dsm" else steps
    n_dsm = steps * batch * k  # the same for both objectives
    per_x0 = k - 1 if config["loss"].get("clf_samples") == "one" else k * (k - 1)
    n_energy = n_dsm + (steps - pre) * batch * per_x0  # + the off-diagonal DiffCLF energies
    while trainer.step < steps:
        t0 = time.perf_counter()
        trainer.train_step()
        wall += time.perf_counter() - t0
        if trainer.step in checkpoints:
            mw = mode_weights(
                trainer.ema,
                target,
                length_scale=trainer.length_scale,
                n_per_mode=n_mc,
                generator=torch.Generator().manual_seed(1),
            )
            curve.append(
                {
                    "step": trainer.step,
                    "wall_s": round(wall, 2),
                    "rel_error": mw["max_relative_error"],
                    "weights": mw["weights"] if target.n_components <= 4 else None,
                    "min_ess_fraction": min(mw["ess_fraction"]),
                }
            )
            print(
                f"  {case} {method} seed {seed}: step {trainer.step} wall {wall:.0f}s "
                f"rel. error {mw['max_relative_error']:.3f}",
                flush=True,
            )
    model, ls = trainer.ema, trainer.length_scale
    final_mw = mw  # the last checkpoint is the final step
    chain = chain_classification_loss(model, target, length_scale=ls, n_chains=64 if args.quick else 256)
    ess = marginal_ess(model, target, ESS_TIMES, length_scale=ls, n=n_mc)
    return {
        "case": case,
        "system": system,
        "dim": dim,
        "method": method,
        "seed": seed,
        "steps": steps,
        "batch_size": int(config["train"]["batch_size"]),
        "loss": config["loss"],
        "net": config["net"],
        "optim": config["optim"],
        "pretrain_dsm_steps": int(config["pretrain_dsm_steps"]),
        "n_dsm_evaluations": n_dsm,
        "n_energy_evaluations": n_energy,
        "wall_s": round(wall, 2),
        "curve": curve,
        "final": {"mode_weights": final_mw, "chain": chain, "marginal_ess": ess},
    }


def _mean_spread(values):
    m = sum(values) / len(values)
    return m, (max(values) - min(values)) / 2 if len(values) > 1 else 0.0


def markdown(results: list[dict]) -> str:
    lines = [
        "# gmm_modes benchmark",
        "",
        "Relative error of the mode weights of exp(−E_θ(·, t_min)) (max over modes), EMA model; "
        "equal budgets (same steps, batch, levels, k → same number of DSM evaluations); wall = "
        "training time only. `±` is half the range over seeds.",
        "",
        "| case | method | seeds | steps × batch | DSM evals | wall s | rel. error | chain CE (chance 4.85) | "
        "ESS t=1e-3 | ESS t=0.1 | ESS t=1 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    groups: dict = {}
    for r in results:
        groups.setdefault((r["case"], r["method"]), []).append(r)
    for (case, method), rs in groups.items():
        err = _mean_spread([r["final"]["mode_weights"]["max_relative_error"] for r in rs])
        wall = _mean_spread([r["wall_s"] for r in rs])
        ce = _mean_spread([r["final"]["chain"]["loss"] for r in rs])
        ess = {
            t: _mean_spread([e["ess_fraction"] for r in rs for e in r["final"]["marginal_ess"] if e["t"] == t])
            for t in (1e-3, 0.1, 1.0)
        }
        lines.append(
            f"| {case} | {method} | {len(rs)} | {rs[0]['steps']} × {rs[0]['batch_size']} | "
            f"{rs[0]['n_dsm_evaluations']} | {wall[0]:.0f} | {err[0]:.3f} ± {err[1]:.3f} | "
            f"{ce[0]:.3f} ± {ce[1]:.3f} | " + " | ".join(f"{ess[t][0]:.2f}" for t in (1e-3, 0.1, 1.0)) + " |"
        )
    lines += [
        "",
        "## Error against training wall time",
        "",
        "| case | method | seed | (step, wall s, rel. error) … |",
        "| --- | --- | --- | --- |",
    ]
    for r in results:
        pts = ", ".join(f"({c['step']}, {c['wall_s']:.0f}, {c['rel_error']:.3f})" for c in r["curve"])
        lines.append(f"| {r['case']} | {r['method']} | {r['seed']} | {pts} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cases",
        default=DEFAULT_CASES,
        help=f"comma-separated cases among {', '.join(CASES)} (default {DEFAULT_CASES}; 'all')",
    )
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated objectives (default both)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    parser.add_argument("--steps", type=int, default=None, help="override the shipped train.steps")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1/20 of the steps, small evaluations")
    parser.add_argument("--checkpoints", type=int, default=6, help="evaluations during training (default 6)")
    parser.add_argument("--n-data", type=int, default=20000, help="exact training samples (default 20000)")
    parser.add_argument("--n-per-mode", type=int, default=8192, help="importance samples per mode (default 8192)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", default="bench-results/gmm_modes.json", help="JSON output (markdown beside it)")
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="combine the results of earlier runs (e.g. one process per seed) into --out; no training",
    )
    args = parser.parse_args(argv)
    md_path = os.path.splitext(args.out)[0] + ".md"
    if args.merge:
        blobs = []
        for path in args.merge:
            with open(path) as handle:
                blobs.append(json.load(handle))
        blob = {**blobs[0], "merged_from": args.merge, "results": [r for b in blobs for r in b["results"]]}
        write_json(args.out, blob)
        write_text(md_path, markdown(blob["results"]))
        print(markdown(blob["results"]))
        return 0

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
    import torch

    import boltzgen

    torch.set_num_threads(args.threads)
    cases = list(CASES) if args.cases == "all" else [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if any(m not in OBJECTIVES for m in methods):
        parser.error(f"unknown method(s) {[m for m in methods if m not in OBJECTIVES]}; choose from {list(OBJECTIVES)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    results = []
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    for case in cases:
        for seed in seeds:
            for method in methods:
                results.append(run_one(case, method, seed, args))
                blob = {
                    "benchmark": "gmm_modes",
                    "boltzgen_version": boltzgen.__version__,
                    "quick": args.quick,
                    "threads": args.threads,
                    "machine": platform.machine(),
                    "torch": torch.__version__,
                    "results": results,
                }
                write_json(args.out, blob)
                write_text(md_path, markdown(results))
    print(markdown(results))
    print(f"wrote {args.out} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
