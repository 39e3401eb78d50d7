"""Consistency of a trained model across noise levels: the ESS of SMC path weights with no resampling.

SMC along the diffusion path weights each particle by how much the learned energies of
neighbouring noise levels agree with the reverse-diffusion proposals built from the learned score.
For exact marginals the weights stay equal (ESS fraction 1 down to t_min); a model whose energies
at neighbouring levels disagree loses ESS wherever they do, and SMC's resampling there narrows the
population to a few ancestors before the states of the molecule have formed (the diagnosis of
``systems/aldp-vacuum.train.yaml``). This runs the diffusion stage only (no target, never
resampling) and reports the ESS fraction at a few times, for one or more run directories, beside
the run's own held-out diagnostics of its low-noise energy (``metrics.json`` of ``boltzgen train``:
the spread of E_θ(x, t_min) − u(x) overall and in its worst state, and the error of the model's own
state free energies), so that the two ends of the path can be read side by side. For molecules it
also counts the share of the model's own particles at t_min whose bonds are all intact
(:func:`boltzgen.systems.peptides.check_peptide`): a particle with a misplaced atom carries a
bond many times its length, an energy of thousands of kT, and no weight. Finally it runs the
diffusion again resampling at every level, on a few grids (``--loss-grids``), and sums
−log(conditional ESS) over stretches of t: a loss that stays as the grid is refined is the model's
inconsistency between noise levels, one that falls as about 1 / levels is the discretisation's.

    python benchmarks/path_ess.py RUN_DIR [RUN_DIR ...] [-n 256] [--steps 100] [--loss-grids 100:quadratic,400:log]
        [--out bench-results/path_ess.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (see boltzgen.cli)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from boltzgen.io import write_json  # noqa: E402
from boltzgen.sampling.settings import SMCSettings  # noqa: E402
from boltzgen.sampling.smc import smc_sample  # noqa: E402
from boltzgen.train import load_model  # noqa: E402

REPORT_TIMES = (0.64, 0.36, 0.25, 0.16, 0.09, 0.04)

#: Edges of the stretches of t over which the per-level weight losses are summed (t_min closes the last).
STRETCHES = (1.0, 0.36, 0.09, 0.04, 0.01)


def low_noise_diagnostics(run_dir: str) -> dict:
    """The training run's held-out diagnostics at t_min (kT), from its metrics.json (empty if none)."""
    path = os.path.join(run_dir, "metrics.json")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        val = json.load(handle).get("validation", {})
    # boltzgen.diagnostics.model_diagnostics already reduces the states: the worst state's spread
    # and the largest state dF error
    return {
        "energy_gap_std_kT": val.get("val_energy_gap_std_kT"),
        "energy_gap_std_worst_state_kT": val.get("val_energy_gap_std_within_kT"),
        "dF_error_kT": val.get("val_dF_error_kT"),
    }


def path_ess(run_dir: str, model, n: int, steps: int, seed: int) -> dict:
    """ESS fraction of the unresampled path weights at the grid times nearest REPORT_TIMES and t_min."""
    start = time.perf_counter()
    settings = SMCSettings.from_dict({"diffusion": {"n_steps": steps}, "resampling": {"ess_threshold": 0.0}})
    result = smc_sample(model, None, n, torch.Generator().manual_seed(seed), settings=settings)
    t, ess = result.t.numpy(), result.ess.numpy()
    intact = None
    if model.topology is not None and model.topology.n_bonds:  # the model's own molecules at t_min
        from boltzgen.systems.peptides import check_peptide

        intact = float(np.mean(check_peptide(model.topology, result.x.numpy())["broken_bonds"] == 0))
    nearest = [int(np.argmin(np.abs(t - x))) for x in REPORT_TIMES]
    at = {f"{t[i]:.3f}": float(ess[i]) for i in nearest}
    at[f"{t[-1]:.3g}"] = float(ess[-1])
    return {
        "run_dir": os.path.abspath(run_dir),
        "ess_fraction_at_t": at,
        "ess_fraction_t_min": float(ess[-1]),
        "intact_fraction_t_min": intact,
        "seconds": time.perf_counter() - start,
        **low_noise_diagnostics(run_dir),
    }


def weight_loss(model, n: int, steps: int, spacing: str, seed: int) -> dict:
    """Sum of −log(conditional ESS) over the levels of each stretch of t, resampling at every level.

    With resampling at every level, each level's ESS measures its own increment alone: for exact
    marginals it stays 1 (loss 0). Summed over a stretch it estimates how far the learned
    energies of that stretch disagree with the proposals (the diffusion weights' KL there): a
    loss that does not fall as the grid is refined belongs to the model, one that falls as about
    1 / levels to the discretisation. Stretches are listed from t = 1 down.
    """
    start = time.perf_counter()
    settings = SMCSettings.from_dict(
        {"diffusion": {"n_steps": steps, "spacing": spacing}, "resampling": {"ess_threshold": 1.0}}
    )
    result = smc_sample(model, None, n, torch.Generator().manual_seed(seed), settings=settings)
    t, ess = result.t.numpy(), result.ess.numpy()
    edges = list(STRETCHES) + [0.0]
    loss = [
        {"from": hi, "to": max(lo, float(t[-1])), "loss": float(-np.log(ess[(t <= hi) & (t > lo)]).sum())}
        for hi, lo in zip(edges[:-1], edges[1:])
    ]
    return {
        "levels": steps,
        "spacing": spacing,
        "loss_per_stretch": loss,
        "total": sum(w["loss"] for w in loss),
        "seconds": time.perf_counter() - start,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("-n", type=int, default=256, help="particles (default 256)")
    parser.add_argument("--steps", type=int, default=100, help="diffusion steps (default 100, as boltzgen sample)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--loss-grids",
        default="100:quadratic,400:quadratic,400:log",
        help="levels:spacing of the runs that resample at every level (the weight loss per stretch of t); '' for none",
    )
    parser.add_argument("--out", default="bench-results/path_ess.json")
    args = parser.parse_args(argv)
    grids = [(int(g.split(":")[0]), g.split(":")[1]) for g in args.loss_grids.split(",") if g]
    runs = []
    for run_dir in args.run_dirs:
        model = load_model(run_dir)
        run = path_ess(run_dir, model, args.n, args.steps, args.seed)
        run["weight_loss"] = [weight_loss(model, args.n, k, spacing, args.seed) for k, spacing in grids]
        runs.append(run)
    for run in runs:
        ess = " ".join(f"t={k}: {v:.3f}" for k, v in run["ess_fraction_at_t"].items())
        print(run["run_dir"], ess, f"intact at t_min: {run['intact_fraction_t_min']}", file=sys.stderr)
        for w in run["weight_loss"]:
            stretches = " ".join(f"{x['from']:g}-{x['to']:g}: {x['loss']:.2f}" for x in w["loss_per_stretch"])
            print(f"  {w['levels']} {w['spacing']} levels, -log cESS summed per stretch: {stretches}", file=sys.stderr)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_json(args.out, {"n_particles": args.n, "steps": args.steps, "seed": args.seed, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
