"""What a learned energy is for, against plain MD: solvation free energy and temperature transfer.

Alanine dipeptide, a model trained on vacuum data at 300 K (``boltzgen quickstart``'s default
recipe, or ``--model RUN_DIR`` of such a run):

1. ΔF(vacuum → OBC implicit solvent) = F_implicit − F_vacuum in kT
   (a) from the model: SMC runs to vacuum, each carried on to OBC along the λ path
       (``boltzgen free-energy --model --per-state-resampling``), the quickstart's sampler
       settings (per-state resampling, balanced states, moves kept in their states), 4096 particles
       in 4 runs (``--solvation-particles``: the weights of conformations that differ in their
       solvation, C7eq against C5, rest on few lineages in smaller runs), BAR on the two weighted
       sample sets beside it;
   (b) the OpenMM-only reference: replica exchange (the systems' default ladder) at both ends and
       at intermediate states u_λ = (1 − λ) u_vacuum + λ u_implicit, MBAR over all of them
       (``boltzgen free-energy`` without a model, ``--lambda-states``), with BAR on the ends alone
       beside it;
2. ΔF(φ > 0 − φ < 0) at ``--hot`` K (default 400):
   (a) from the same model, SMC annealed to the force field at that temperature (per-state
       resampling, balanced states, runs pooled: as ``boltzgen sample --temperature``);
   (b) replica exchange at that temperature (two independent runs; their spread over √2 is the error).

Every arm's wall time is recorded; the model's training time (from its run's metrics) is reported
beside it, since a user who already has the model pays only the sampling.

    python benchmarks/free_energies.py --model quickstart/run          # -> bench-results/free_energies.json
    python benchmarks/free_energies.py --model RUN --frames 200 --particles 64 --solvation-particles 64 --runs 2  # smoke
    python benchmarks/free_energies.py --model RUN --parts transfer     # only the temperature transfer
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

from boltzgen.io import write_json


def sample_settings() -> dict:
    """The quickstart's SMC settings (systems/recipes.yaml, recipe ``default``)."""
    from boltzgen.workflow import load_recipe

    return load_recipe("quickstart", "default")["sample"]["settings"]


def solvation(model: str, frames: int, particles: int, runs: int, work: str, seed: int, lambda_states: int) -> dict:
    from boltzgen.workflow import free_energy

    out = {}
    done = os.path.join(work, "solvation-md", "metrics.json")
    if os.path.exists(done):  # finished earlier: reused (its wall time is in it)
        with open(done) as handle:
            out["md"] = json.load(handle)
        out["md"]["seconds"] = out["md"]["wall_time_s"]
    else:
        start = time.perf_counter()
        out["md"] = free_energy(
            "aldp-vacuum",
            "aldp-implicit",
            output_dir=os.path.join(work, "solvation-md"),
            md_frames=frames,
            lambda_states=lambda_states,
            seed=seed,
            progress=False,
        )
        out["md"]["seconds"] = time.perf_counter() - start
    done = os.path.join(work, "solvation-model", "metrics.json")
    if os.path.exists(done):  # finished earlier (e.g. by the same `boltzgen free-energy` command): reused
        with open(done) as handle:
            out["model"] = json.load(handle)
        out["model"]["seconds"] = out["model"]["wall_time_s"]
        return out
    start = time.perf_counter()
    out["model"] = free_energy(
        "aldp-vacuum",
        "aldp-implicit",
        run_dir=model,
        output_dir=os.path.join(work, "solvation-model"),
        n=particles,
        runs=runs,
        settings=sample_settings(),
        per_state_resampling=True,  # as the quickstart samples: the states' weights set ΔF
        seed=seed,
        progress=False,
    )
    out["model"]["seconds"] = time.perf_counter() - start
    return out


def phi_delta_f(path: str) -> float:
    """ΔF(φ > 0 − φ < 0) in kT of an unweighted (target-temperature) sample file."""
    from boltzgen.io import load_samples
    from boltzgen.states import default_states

    samples = load_samples(path)
    labels = np.asarray(default_states(samples.topology).assign(samples.x))
    return -math.log(max((labels == 1).mean(), 1e-12) / max((labels == 0).mean(), 1e-12))


def transfer(model: str, hot: float, frames: int, particles: int, runs: int, work: str, seed: int) -> dict:
    from boltzgen.workflow import sample, simulate_training_data

    target = {"system": "aldp-vacuum", "temperature": hot}
    settings = {**sample_settings(), "resampling": {"balance_states": True}}
    # the proposal tempered to the hot target (what boltzgen sample does for a model that records
    # its 300 K; models from before that record are tempered here)
    settings["diffusion"] = {**settings["diffusion"], "tempering": 300.0 / hot}
    start = time.perf_counter()
    run = sample(
        model,
        os.path.join(work, f"samples_{hot:g}K.h5"),
        particles,
        target=target,
        runs=runs,
        per_state_resampling=True,
        settings=settings,
        seed=seed,
        progress=False,
        target_options={"n_workers": 0},
    )
    out = {"model": {k: run.metrics.get(k) for k in ("delta_f_kT", "delta_f_err_kT", "ess_fraction", "warnings")}}
    out["model"]["seconds"] = time.perf_counter() - start
    start, values = time.perf_counter(), []
    for k in range(2):
        path = os.path.join(work, f"remd_{hot:g}K_{k}.h5")
        simulate_training_data(
            target, frames, path, seed=seed + 100 + k, progress=False, target_options={"n_workers": 0}
        )
        values.append(phi_delta_f(path))
    out["remd"] = {
        "delta_f_kT": float(np.mean(values)),
        "delta_f_err_kT": float(np.std(values, ddof=1) / math.sqrt(2)),
        "runs_kT": values,
        "frames_per_run": frames,
        "seconds": time.perf_counter() - start,
    }
    return out


def markdown(out: dict) -> str:
    s, t = out.get("solvation"), out.get("transfer")

    def pm(d):
        value, err = d.get("delta_f_kT"), d.get("delta_f_err_kT")
        return "–" if value is None else f"{value:.2f} ± {err if err is not None else float('inf'):.2f}"

    lines = ["| quantity | model route (kT) | s | plain MD route (kT) | s |", "|---|---|---|---|---|"]
    if s:
        lines.append(
            f"| ΔF(vacuum → OBC) | {pm(s['model'])} (BAR on its samples {pm(s['model']['bar'])}) | "
            f"{s['model']['seconds']:.0f} | {pm(s['md'])} (MBAR over {len(s['md']['lambdas'])} λ states; BAR on "
            f"the ends {pm(s['md']['bar_ends'])}) | {s['md']['seconds']:.0f} |"
        )
    if t:
        lines.append(
            f"| ΔF(φ>0 − φ<0) at {out['hot_K']:g} K | {pm(t['model'])} | {t['model']['seconds']:.0f} | "
            f"{pm(t['remd'])} | {t['remd']['seconds']:.0f} |"
        )
    lines += ["", f"Model: {out['model']} (trained in {out['train_seconds']} s)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="run directory of a model trained on aldp-vacuum at 300 K")
    parser.add_argument("--hot", type=float, default=400.0, help="temperature of the transfer (K)")
    parser.add_argument("--frames", type=int, default=5000, help="MD frames per λ state / per REMD run")
    parser.add_argument("--lambda-states", type=int, default=5, help="states of the solvation reference's λ path")
    parser.add_argument("--particles", type=int, default=1024, help="SMC particles of the temperature transfer")
    parser.add_argument(
        "--solvation-particles",
        type=int,
        default=4096,
        help="SMC particles of the solvation arm, shared by --runs (its bias falls with the particles per run)",
    )
    parser.add_argument("--runs", type=int, default=4, help="SMC runs per target")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="bench-results/free_energies")
    parser.add_argument("--out", default="bench-results/free_energies.json")
    parser.add_argument(
        "--parts", nargs="+", choices=["solvation", "transfer"], default=["solvation", "transfer"], help="what to run"
    )
    args = parser.parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    metrics_path = os.path.join(args.model, "metrics.json")
    train_seconds = None
    if os.path.exists(metrics_path):
        with open(metrics_path) as handle:
            train_seconds = json.load(handle).get("wall_time_s")
    out = {
        "benchmark": "free_energies",
        "date": datetime.date.today().isoformat(),
        "model": os.path.abspath(args.model),
        "train_seconds": train_seconds,
        "hot_K": args.hot,
        "cpu_count": os.cpu_count(),
    }
    if "solvation" in args.parts:
        out["solvation"] = solvation(
            args.model, args.frames, args.solvation_particles, args.runs, args.work, args.seed, args.lambda_states
        )
    if "transfer" in args.parts:
        out["transfer"] = transfer(args.model, args.hot, args.frames, args.particles, args.runs, args.work, args.seed)
    write_json(args.out, out)
    print(markdown(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
