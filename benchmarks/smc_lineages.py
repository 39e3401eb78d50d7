"""Where SMC loses its lineages: weight, particles and distinct ancestors of each Ramachandran basin, level by level.

An SMC estimate of a free-energy difference rests on the lineages (particles at t = 1) that carry
the final weights of each state, not on the number of particles: a state whose weight descends from
two ancestors gives a ΔF that scatters between runs by kT, however high the final ESS. This runs
``boltzgen sample``'s SMC (the quickstart's default settings unless ``--set`` changes them) on a
trained model of a peptide, one run per seed, and records after every reweighting, for each basin
of the first residue's (φ, ψ) (β/PII, α_R, φ > 0): its share of the weight, its particles and the
distinct t = 1 ancestors among them (the basin of the denoised estimate E[x_0 | x_t] during the
diffusion, of the particle itself in the annealing). It reports the basins' shares at the end of
the diffusion, at β = 1 and after the final moves beside a reference sample's, the lineage ESS
(:func:`boltzgen.weights.lineage_ess`) overall and per φ state, and ΔF(φ>0 − φ<0) against the
reference.

    python benchmarks/smc_lineages.py RUN_DIR --reference REF.h5 [--system aldp-implicit] [-n 256]
        [--seeds 0 1 2] [--set '{"anneal": {"mcmc_steps": 20}}'] [--label NAME]
        [--reference-delta-f 3.69] [--out bench-results/smc_lineages.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (see boltzgen.cli)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from boltzgen import systems  # noqa: E402
from boltzgen.io import load_samples, write_json  # noqa: E402
from boltzgen.sampling.smc import smc_sample  # noqa: E402
from boltzgen.sampling.stages import SMCRecorder  # noqa: E402
from boltzgen.states import BASIN_NAMES, basin_states  # noqa: E402
from boltzgen.train import load_model  # noqa: E402
from boltzgen.weights import delta_f, delta_f_point, lineage_ess, normalized_weights  # noqa: E402
from boltzgen.workflow import load_recipe, merge, resampling_strata, sample_settings  # noqa: E402

BASINS = BASIN_NAMES  # β/PII, α_R, φ > 0 (boltzgen.states.basin_states_of)


def first_residue_basins(topology):
    """The StateSet of the first residue's basins (0 β/PII, 1 α_R, 2 φ > 0)."""
    joint = basin_states(topology)
    return joint.components[0] if joint.components else joint


def basins(x, topology) -> np.ndarray:
    """Basin index (0 β/PII, 1 α_R, 2 φ > 0) of configurations x (B, N, 3) in nm, from the first residue."""
    return first_residue_basins(topology).assign(np.asarray(x))


class BasinTrace(SMCRecorder):
    """An SMC recorder that also keeps, after every reweighting, each basin's weight, particles and ancestors."""

    def __init__(self, model, topology, length_scale: float):
        super().__init__()
        self.model, self.length_scale = model, length_scale
        self.basins = first_residue_basins(topology)  # built once, applied at every level
        self.rows = []

    def particles(self, state) -> None:
        y = state.y
        if state.beta == 0.0 and state.t < 1.0:  # the diffusion: the basin of E[y_0 | y_t]
            t = torch.tensor(float(state.t), dtype=torch.float64)
            y = self.model.schedule.denoise(y, -state.grad, t)
        label = self.basins.assign((self.length_scale * y).detach().cpu().numpy())
        row = {"t": float(state.t), "beta": float(state.beta), "ess": float(state.ess)}
        row.update(basin_summary(label, state.log_w.cpu().numpy(), state.ancestors["start"].cpu().numpy()))
        self.rows.append(row)


def basin_summary(label: np.ndarray, log_w: np.ndarray, ancestors: np.ndarray) -> dict:
    """Per basin: [share of the weight, particles, distinct t = 1 ancestors] (shares 0 without weight)."""
    w = normalized_weights(log_w) if np.isfinite(log_w).any() else np.zeros(len(log_w))
    return {
        name: [float(w[label == k].sum()), int((label == k).sum()), int(np.unique(ancestors[label == k]).size)]
        for k, name in enumerate(BASINS)
    }


def reference_shares(path: str, topology, temperature: float) -> tuple:
    """Basin shares and ΔF(φ>0 − φ<0) (block bootstrap) of a reference sample at the target's temperature."""
    ref = load_samples(path)
    keep = np.ones(len(ref.x), dtype=bool)
    if "temperature_K" in ref.extra:  # a replica-exchange file with several temperatures
        keep = np.isclose(np.asarray(ref.extra["temperature_K"]), temperature)
    x = np.asarray(ref.x)[keep]
    label = basins(x, topology)
    lw = np.zeros(len(x)) if ref.log_weights is None else np.asarray(ref.log_weights)[keep]
    est = delta_f(lw, label < 2, label == 2, block_size="auto")
    shares = [float(np.mean(label == k)) for k in range(len(BASINS))]
    return shares, float(est.value), float(est.error), len(x)


def stage_rows(rows: list) -> dict:
    """The trace at t = 1, at the end of the diffusion and at β = 1."""
    diffusion = [r for r in rows if r["beta"] == 0.0]
    return {"t=1": rows[0], "diffusion end": diffusion[-1], "beta=1": rows[-1]}


def one_run(model, target, settings, n: int, seed: int) -> dict:
    """One SMC run with the basin trace; its final shares, lineages and ΔF."""
    trace = BasinTrace(model.inner, target.topology, model.length_scale)
    start = time.perf_counter()
    result = smc_sample(
        model,
        target,
        n,
        torch.Generator().manual_seed(seed),
        settings=settings,
        states=resampling_strata(target, settings.resampling.strata),
        recorder=trace,
    )
    seconds = time.perf_counter() - start
    lw = result.log_weights.numpy()
    label = basins(result.x.numpy(), target.topology)
    anc = result.ancestors.numpy()
    final = basin_summary(label, lw, anc)
    phi_pos = label == 2
    delta = delta_f_point(lw, ~phi_pos, phi_pos)
    per_state = {
        name: lineage_ess(lw[pick], anc[pick])
        for name, pick in (("phi<0", ~phi_pos), ("phi>0", phi_pos))
        if pick.any() and np.isfinite(lw[pick]).any()
    }
    return {
        "seed": seed,
        "seconds": seconds,
        "ess_fraction": result.ess_fraction,
        "n_ancestors": result.n_ancestors,
        "n_ancestors_anneal": result.n_ancestors_anneal,
        "lineage_ess": result.lineage_ess,
        "lineage_ess_states": per_state,
        "delta_f_kT": delta if math.isfinite(delta) else None,
        "stages": {**stage_rows(trace.rows), "final": final},
        "trace": trace.rows,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--reference", required=True, help="sample file of the target (e.g. a long replica exchange)")
    parser.add_argument("--system", default=None, help="target (default: the one the model was trained on)")
    parser.add_argument("-n", type=int, default=256, help="particles per run (default 256: a quickstart run)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", default="{}", help="JSON of SMCSettings over the quickstart's default")
    parser.add_argument("--label", default="quickstart SMC", help="name of this setting in the table")
    parser.add_argument(
        "--reference-delta-f", type=float, default=None, help="ΔF(φ>0 − φ<0) of a better reference (kT), if any"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", default="bench-results/smc_lineages.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.run_dir)
    recipe = (
        {"system": args.system} if args.system else model.metadata.get("target") or {"system": model.metadata["system"]}
    )
    target = systems.resolve(**recipe)
    quick = load_recipe("quickstart", "default")["sample"]["settings"]
    settings = sample_settings(merge(merge({}, quick), json.loads(args.set)))
    shares, ref_df, ref_err, ref_n = reference_shares(args.reference, target.topology, target.temperature)
    runs = [one_run(model, target, settings, args.n, seed) for seed in args.seeds]
    dfs = [r["delta_f_kT"] for r in runs if r["delta_f_kT"] is not None]
    anchor = ref_df if args.reference_delta_f is None else args.reference_delta_f
    blob = {
        "benchmark": "smc_lineages",
        "label": args.label,
        "run_dir": os.path.abspath(args.run_dir),
        "system": target.name,
        "particles_per_run": args.n,
        "settings": settings.to_dict(),
        "reference": {
            "path": os.path.abspath(args.reference),
            "frames": ref_n,
            "basin_shares": shares,
            "delta_f_kT": ref_df,
            "delta_f_err_kT": ref_err,
            "anchor_delta_f_kT": anchor,
        },
        "basins": list(BASINS),
        "runs": runs,
        "delta_f_bias_kT": float(np.mean(dfs) - anchor) if dfs else None,
        "delta_f_spread_kT": float(np.std(dfs, ddof=1)) if len(dfs) > 1 else None,
        "runs_without_phi_positive_weight": len(runs) - len(dfs),
    }
    for r in runs:
        st = r["stages"]
        print(
            f"seed {r['seed']}: dF {r['delta_f_kT']} (reference {anchor:.2f}); lineage ESS {r['lineage_ess']:.1f} "
            f"{ {k: round(v, 1) for k, v in r['lineage_ess_states'].items()} }; ancestors per basin "
            + " -> ".join(f"{k}: {[st[k][b][2] for b in BASINS]}" for k in ("diffusion end", "beta=1", "final"))
            + f"; {r['seconds']:.0f} s",
            file=sys.stderr,
        )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_json(args.out, blob)
    return 0


if __name__ == "__main__":
    sys.exit(main())
