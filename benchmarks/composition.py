"""Composed energy models against exact answers: what DiffCLF adds when learned energies are combined.

Two 2-D Gaussian mixtures with the same two centres (x = ±4, unit widths) and different mode
weights, A = (2/3, 1/3) and B = (1/4, 3/4). For each objective (DSM alone; DSM + DiffCLF, the
shipped ``gmm-two-modes`` recipe) one energy model is trained on exact samples of A and one of B,
with the same budget. Their compositions are sampled by SMC along the diffusion
(:mod:`boltzgen.compose`, :func:`boltzgen.sampling.smc.smc_sample`, no final target: the composed
model is what is sampled):

- product p_A · p_B: the weight of the x < 0 mode and log ∫ p_A p_B (each model's density
  normalised by its learned F(t_min)) against the exact product of the two diffused mixtures at
  t_min (a mixture of the pairs of components, closed form);
- mixture ½ p_A + ½ p_B (each model's learned log-normaliser F(t) weights its share): the weight of
  the x < 0 mode against the exact ½ (w_A + w_B).

The exact models (:class:`~boltzgen.sampling.exact.ExactMarginalModel`) run through the same SMC as a
control. Score matching sees the shapes of the modes but not their weights (mode blindness), so
its product and mixture weights are whatever its energies happen to put there; DiffCLF fixes the
energy differences between modes and the normaliser.

    python benchmarks/composition.py                 # -> bench-results/composition.json
    python benchmarks/composition.py --quick         # smoke run
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
import time

import numpy as np

from boltzgen.io import write_json

WEIGHTS = {"A": (2 / 3, 1 / 3), "B": (1 / 4, 3 / 4)}
MEANS = [[-4.0, 0.0], [4.0, 0.0]]
OBJECTIVES = ("dsm", "dsm+diffclf")


def mixture(name: str):
    from boltzgen.systems import GaussianMixture

    return GaussianMixture(MEANS, [1.0, 1.0], list(WEIGHTS[name]), name=name, standardise=False)


def diffused(gmm, scale: float, t: float, schedule):
    """(weights, means, variances) of the mixture of y = x / scale, diffused to time t."""
    import torch

    alpha, s2 = float(schedule.alpha(torch.tensor(t))), float(schedule.sigma2(torch.tensor(t)))
    means = gmm.means.numpy() / scale
    return gmm.weights.numpy(), alpha * means, alpha**2 * (gmm.stds[:, 0].numpy() / scale) ** 2 + s2


def left_mass(weights, means, variances) -> float:
    """Mass at y_0 < 0 of an isotropic Gaussian mixture."""
    from scipy.stats import norm

    return float(sum(w * norm.cdf(-m[0] / math.sqrt(v)) for w, m, v in zip(weights, means, variances)))


def exact_product(a, b):
    """log Z and (weights, means, variances) of N-mixture a times N-mixture b (isotropic, 2-D)."""
    log_pi, centres, cvars = [], [], []
    for wa, ma, va in zip(*a):
        for wb, mb, vb in zip(*b):
            s = va + vb
            log_pi.append(math.log(wa * wb) - ((ma - mb) ** 2).sum() / (2 * s) - math.log(2 * math.pi * s))
            centres.append((ma * vb + mb * va) / s)
            cvars.append(va * vb / s)
    log_z = float(np.logaddexp.reduce(log_pi))
    return log_z, (np.exp(np.array(log_pi) - log_z), centres, cvars)


def train(name: str, objective: str, args) -> tuple:
    """An EMA energy model trained on exact samples of mixture ``name``; (model, length scale, s)."""
    import torch

    from boltzgen.train import Trainer, resolve_config

    x = mixture(name).sample(args.n_data, torch.Generator().manual_seed(100 + args.seed)).numpy()
    overrides = {
        "loss": {"kind": objective},
        "seed": args.seed,
        "train": {"val_fraction": 0.0, "checkpoint_every": 10**9, "val_every": 10**9, "log_every": 10**9},
    }
    if objective == "dsm":
        overrides["pretrain_dsm_steps"] = 0
    config = resolve_config("gmm-two-modes", overrides=overrides)
    if args.steps:
        config["train"]["steps"] = args.steps
        config["pretrain_dsm_steps"] = min(int(config["pretrain_dsm_steps"]), args.steps)
        config["optim"]["warmup_steps"] = min(int(config["optim"]["warmup_steps"]), args.steps // 5)
    trainer = Trainer(config, x, run_dir=os.devnull, progress=False)
    start = time.perf_counter()
    while trainer.step < int(config["train"]["steps"]):
        trainer.train_step()
    model = trainer.ema.double() if hasattr(trainer.ema, "double") else trainer.ema
    return model, trainer.length_scale, time.perf_counter() - start


def smc(model, args, seed: int) -> dict:
    """Pooled SMC runs on a composed model: log Z (and its error) and the mass at y_0 < 0."""
    import torch

    from boltzgen.sampling.settings import SMCSettings
    from boltzgen.sampling.smc import smc_sample

    settings = SMCSettings.from_dict({"diffusion": {"n_steps": args.smc_steps, "t_min": args.t_min, "mcmc_steps": 5}})
    g = torch.Generator().manual_seed(seed)
    runs = [smc_sample(model, None, args.particles, g, settings=settings) for _ in range(args.runs)]
    log_z_runs = np.array([float(r.log_z) for r in runs])
    log_z = float(np.logaddexp.reduce(log_z_runs) - math.log(len(runs)))
    z = np.exp(log_z_runs - log_z)
    lefts = []
    for r in runs:
        w = r.weights.detach().double().numpy()
        lefts.append(float(w[r.x[:, 0].detach().numpy() < 0].sum() / w.sum()))
    left = float(np.sum(z * np.array(lefts)) / z.sum())
    return {
        "log_z": log_z,
        "log_z_err": float(np.std(log_z_runs, ddof=1) / math.sqrt(len(runs))),
        "left": left,
        "left_err": float(np.std(lefts, ddof=1) / math.sqrt(len(runs))),
    }


def compose_and_score(models: dict, scales: dict, args) -> dict:
    """Product and mixture of the A and B models, against the exact answers in y = x / ℓ_A."""
    from boltzgen.compose import mixture as mix
    from boltzgen.compose import product

    schedule = models["A"].schedule
    # Each model works in its own y = x / ℓ; the composition is read in A's coordinates, so B's
    # density there is B's mixture of x / ℓ_B (the exact answers below use exactly that).
    a = diffused(mixture("A"), scales["A"], args.t_min, schedule)
    b = diffused(mixture("B"), scales["B"], args.t_min, schedule)
    log_z, prod = exact_product(a, b)
    out = {"product": smc(product([models["A"], models["B"]], [1.0, 1.0]), args, args.seed)}
    # SMC gives log ∫ exp(−E_A − E_B); the models' densities are exp(−E + F(t_min)), so the
    # product of the two normalised densities has log Z + F_A + F_B (0 for the exact models).
    offset = sum(float(m.log_normaliser(args.t_min)) if hasattr(m, "log_normaliser") else 0.0 for m in models.values())
    out["product"]["log_z"] += offset
    out["product"].update(exact_log_z=log_z, exact_left=left_mass(*prod))
    out["mixture"] = smc(mix([models["A"], models["B"]], [0.5, 0.5]), args, args.seed + 1)
    out["mixture"].update(exact_log_z=0.0, exact_left=0.5 * left_mass(*a) + 0.5 * left_mass(*b))
    for kind in ("product", "mixture"):
        d = out[kind]
        d["left_rel_error"] = abs(d["left"] - d["exact_left"]) / d["exact_left"]
        d["log_z_error"] = d["log_z"] - d["exact_log_z"]
    return out


def markdown(out: dict) -> str:
    lines = [
        "| models | training s | product: weight x<0 (exact) | product: log Z − exact | "
        "mixture: weight x<0 (exact) | mixture: log Z − exact |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in out["results"].items():
        p, m = r["product"], r["mixture"]
        lines.append(
            f"| {name} | {r.get('train_seconds', 0):.0f} | {p['left']:.3f} ± {p['left_err']:.3f} ({p['exact_left']:.3f}) | "
            f"{p['log_z_error']:+.3f} ± {p['log_z_err']:.3f} | {m['left']:.3f} ± {m['left_err']:.3f} "
            f"({m['exact_left']:.3f}) | {m['log_z_error']:+.3f} ± {m['log_z_err']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the shipped recipe's)")
    parser.add_argument("--n-data", type=int, default=20000, help="exact training samples per mixture")
    parser.add_argument("--particles", type=int, default=1000, help="SMC particles per run")
    parser.add_argument("--runs", type=int, default=4, help="SMC runs per composition")
    parser.add_argument("--smc-steps", type=int, default=100, help="diffusion steps of the SMC")
    parser.add_argument("--t-min", type=float, default=1e-3, help="smallest diffusion time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 steps, 200 particles, 2 runs")
    parser.add_argument("--out", default="bench-results/composition.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.particles, args.runs, args.smc_steps = 200, 200, 2, 40
    import torch

    from boltzgen.sampling.exact import ExactMarginalModel

    torch.set_num_threads(args.threads)
    out = {
        "benchmark": "composition",
        "date": datetime.date.today().isoformat(),
        "quick": bool(args.quick),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "weights": {k: list(v) for k, v in WEIGHTS.items()},
        "results": {},
    }
    exact = {k: ExactMarginalModel(mixture(k), t_min=args.t_min) for k in WEIGHTS}
    out["results"]["exact models"] = compose_and_score(exact, {k: 1.0 for k in WEIGHTS}, args)
    for objective in OBJECTIVES:
        models, scales, seconds = {}, {}, 0.0
        for k in WEIGHTS:
            models[k], scales[k], s = train(k, objective, args)
            seconds += s
        result = compose_and_score(models, scales, args)
        result.update(train_seconds=seconds, length_scales=scales)
        out["results"][objective] = result
        print(f"{objective}: product weight {result['product']['left']:.3f}, mixture {result['mixture']['left']:.3f}")
    write_json(args.out, out)
    print(markdown(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
