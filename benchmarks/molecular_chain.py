"""The molecular benchmark chain shared by ``benchmarks/aldp.py`` and ``benchmarks/lj13.py``.

One run: simulate a long reference (replica exchange for alanine dipeptide, MALA chains for LJ
clusters) and, with another seed, the training data; then for each objective (dsm, dsm+diffclf)
under the same budget (same steps, batch and k, hence the same number of DSM evaluations; with
``--pretrain-dsm-steps P`` the dsm+diffclf run spends its first P steps on DSM alone, the recipe of
``boltzgen quickstart``) train,
run SMC along the learned diffusion path annealed to the target, and compare the weighted samples
with the reference:

* ESS fraction (of the last SMC reweighting, before resampling);
* energy W2: 1-D Wasserstein-2 between the reduced-energy distributions (kT) of the weighted
  samples and of the reference;
* torsion W2 on the (φ, ψ) torus (rad) and ΔF = F(φ > 0) − F(φ < 0) (kT) with bootstrap errors,
  for alanine dipeptide, against the reference's;
* wall time per stage.

Every stage is a function of :mod:`boltzgen.workflow` (the ones the ``boltzgen`` commands call;
the equivalent command lines are printed as the chain runs). The sizes and options of each
system's arms are the recipe ``benchmarks.<system>`` of ``systems/recipes.yaml`` (an arm names
training options, ``overrides`` of the training configuration among them, and may carry a
``sample`` dict of its own SMC settings merged over the recipe's); the command-line options of the
benchmark scripts override its sizes. Outputs are reused when present, so an
interrupted benchmark resumes. Results: JSON plus a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (as boltzgen.cli does)

from boltzgen import (
    __version__,  # noqa: E402
    workflow,  # noqa: E402
)
from boltzgen.io import write_json, write_text  # noqa: E402
from boltzgen.sampling.sde import TIME_SPACINGS  # noqa: E402
from boltzgen.sampling.settings import DiffusionSettings  # noqa: E402

LOSSES = ("dsm", "dsm+diffclf")
ANCHORS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "anchors.json")


def published_anchors(name: str) -> dict:
    """The published numbers for ``name`` (a key of ``benchmarks/anchors.json``), as written there."""
    with open(ANCHORS_FILE, encoding="utf-8") as fh:
        return json.load(fh)[name]


def recipe_sizes(recipe: dict) -> dict:
    """The sizes of a benchmark recipe as the flat defaults of :func:`add_arguments`."""
    settings = recipe["sample"].get("settings", {})
    return dict(
        work=recipe.get("work"),
        out=recipe.get("out"),
        n_reference=recipe["reference"]["n"],
        n_data=recipe["simulate"]["n"],
        steps=recipe["train"]["steps"],
        batch_size=recipe["train"]["batch_size"],
        pretrain_dsm_steps=recipe.get("arms", {}).get("dsm+diffclf", {}).get("pretrain_dsm_steps", 0),
        n_samples=recipe["sample"]["n"],
        smc_steps=settings.get("diffusion", {}).get("n_steps", 100),
        mcmc_steps=settings.get("diffusion", {}).get("mcmc_steps", 0),
        spacing=settings.get("diffusion", {}).get("spacing", DiffusionSettings.spacing),
        anneal=settings.get("anneal", {}).get("n_levels", 16),
        runs=recipe["sample"].get("runs", 1),
    )


def add_arguments(parser: argparse.ArgumentParser, defaults: dict) -> None:
    """Options of a chain benchmark, with the system's defaults (:func:`recipe_sizes`)."""
    parser.add_argument("--work", default=defaults["work"], help="working directory (reused: resumes)")
    parser.add_argument("--out", default=defaults["out"], help="JSON result (a .md table is written beside it)")
    parser.add_argument("--n-reference", type=int, default=defaults["n_reference"], help="reference frames")
    parser.add_argument("--n-data", type=int, default=defaults["n_data"], help="training frames (per kept replica)")
    parser.add_argument("--steps", type=int, default=defaults["steps"], help="training steps per objective")
    parser.add_argument("--batch-size", type=int, default=defaults["batch_size"], help="training batch")
    parser.add_argument(
        "--pretrain-dsm-steps",
        type=int,
        default=defaults.get("pretrain_dsm_steps", 0),
        help="of the dsm+diffclf run's steps, how many are DSM alone (pre-training, then fine-tuning)",
    )
    parser.add_argument("--n-samples", type=int, default=defaults["n_samples"], help="SMC particles")
    parser.add_argument("--smc-steps", type=int, default=defaults["smc_steps"], help="SMC diffusion levels")
    parser.add_argument("--mcmc-steps", type=int, default=defaults["mcmc_steps"], help="MALA moves per level")
    parser.add_argument(
        "--spacing",
        default=defaults.get("spacing", DiffusionSettings.spacing),
        choices=TIME_SPACINGS,
        help="time grid of the SMC diffusion levels (boltzgen.sampling.sde.time_grid)",
    )
    parser.add_argument("--anneal", type=int, default=defaults["anneal"], help="annealing levels to the target")
    parser.add_argument(
        "--runs",
        type=int,
        default=defaults.get("runs", 1),
        help="independent SMC runs sharing the particles (boltzgen sample --runs)",
    )
    parser.add_argument("--losses", default=defaults.get("losses", ",".join(LOSSES)), help="objectives to compare")
    parser.add_argument("--threads", type=int, help="torch threads of training (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of the whole chain")


def chain_plan(name: str, args, overrides: dict) -> dict:
    """The benchmark recipe with the quick sizes (``--quick``), ``overrides`` and the sizes of ``args``."""
    recipe = workflow.load_recipe("benchmarks", name)
    quick = recipe.pop("quick", {})
    if args.quick:  # the quick sizes replace the options' values, as the recipe says
        recipe = workflow.merge(recipe, quick)
        for key, value in recipe_sizes(recipe).items():
            if key not in ("work", "out"):
                setattr(args, key, value)
    recipe = workflow.merge(recipe, overrides)
    recipe["reference"]["n"], recipe["simulate"]["n"] = args.n_reference, args.n_data
    recipe["train"].update(steps=args.steps, batch_size=args.batch_size)
    if args.threads:
        recipe["train"]["threads"] = args.threads
    arm = recipe.setdefault("arms", {}).setdefault("dsm+diffclf", {"loss": "dsm+diffclf"})
    arm.pop("pretrain_dsm_steps", None)
    if args.pretrain_dsm_steps:
        arm["pretrain_dsm_steps"] = args.pretrain_dsm_steps
    recipe["sample"].update(n=args.n_samples, runs=args.runs)
    settings = recipe["sample"].get("settings", {})
    diffusion = {"n_steps": args.smc_steps, "mcmc_steps": args.mcmc_steps}
    if args.spacing != settings.get("diffusion", {}).get("spacing", DiffusionSettings.spacing):
        diffusion["spacing"] = args.spacing
    recipe["sample"]["settings"] = workflow.merge(
        settings, {"diffusion": diffusion, "anneal": {"n_levels": args.anneal}}
    )
    return recipe


def run_chain(system: str, args, *, recipe: str | None = None, overrides: dict | None = None, anchors=None) -> dict:
    """Run the chain for ``system`` with the parsed ``args``; writes and returns the result.

    ``recipe`` names the benchmark recipe (default: the system's name); ``overrides`` is a nested
    recipe dict merged over it before the sizes of ``args`` (e.g. ``{"simulate": {"stride": 500}}``).
    """
    plan = chain_plan(recipe or system, args, overrides or {})
    os.makedirs(args.work, exist_ok=True)
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    shared: dict[str, float] = {}
    files = {}
    for stage, seed in (("reference", args.seed + 1000), ("data", args.seed)):
        options = {k: v for k, v in plan["reference" if stage == "reference" else "simulate"].items() if v is not None}
        path = files[stage] = os.path.join(args.work, f"{stage}.h5")
        if os.path.exists(path):
            log(f"[{stage}] {path} exists: reused")
            shared[f"simulate_{stage}"] = None
            continue
        n = options.pop("n")
        log("$ " + workflow.command_line("simulate", (system,), {"n": n, "output": path, "seed": seed, **options}))
        start = time.perf_counter()
        workflow.simulate_training_data(
            system,
            n,
            path,
            seed=seed,
            progress=False,
            metrics_path=os.path.join(args.work, f"{stage}.metrics.json"),
            **options,
        )
        shared[f"simulate_{stage}"] = time.perf_counter() - start

    results = {}
    for loss in [s for s in args.losses.split(",") if s]:
        log(f"=== {system}: {loss}")
        options = dict(plan["arms"].get(loss, {"loss": loss}))
        sample = workflow.merge(plan["sample"], options.pop("sample", {}))  # an arm's own SMC settings
        arm = {"system": system, "data": files["data"], "train": {**plan["train"], **options}, "sample": sample}
        summary = workflow.quickstart(
            os.path.join(args.work, loss), arm, seed=args.seed, progress=False, log=log, reference=files["reference"]
        )
        seconds, steps = _training_seconds(os.path.join(args.work, loss, "run", "train_log.csv"))
        summary["train_seconds"] = seconds  # summed over the training log: right for resumed runs too
        summary["train_seconds_per_step"] = seconds / max(1, steps)
        # SMC wall time as measured by the sample stage (also when the samples are reused)
        summary["sample_seconds"] = _read_json(os.path.join(args.work, loss, "stages", "sample.json")).get(
            "wall_time_s"
        )
        results[loss] = summary
    reference_metrics = _read_json(os.path.join(args.work, "reference.metrics.json"))
    out = {
        "benchmark": f"{system} chain",
        "system": system,
        "recipe": recipe or system,
        "boltzgen_version": __version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "quick": bool(args.quick),
        "load_average_1_5_15_min": list(os.getloadavg()),  # wall times are inflated on a busy machine
        "sizes": {
            **{
                k: getattr(args, k)
                for k in (
                    "n_reference",
                    "n_data",
                    "steps",
                    "pretrain_dsm_steps",
                    "batch_size",
                    "n_samples",
                    "smc_steps",
                    "mcmc_steps",
                    "spacing",
                    "anneal",
                    "runs",
                    "seed",
                    "threads",
                )
            },
            # what the (possibly reused) files hold, not what was asked for
            **{f"n_{stage}": _n_frames(path) for stage, path in files.items()},
        },
        "budget": "equal for both objectives: same steps, batch and k (same number of DSM evaluations); "
        "dsm+diffclf adds energy-only evaluations, visible in train_seconds_per_step",
        "reference": {
            "file": os.path.abspath(files["reference"]),
            "n": args.n_reference,
            "simulate_seconds": shared["simulate_reference"],
            "simulation": {k: v for k, v in reference_metrics.items() if k not in ("output", "command")},
        },
        "simulate_data_seconds": shared["simulate_data"],
        "results": results,
        "published_anchors": anchors or {},
    }
    write_json(args.out, out)
    write_text(os.path.splitext(args.out)[0] + ".md", markdown(out))
    print(markdown(out))
    return out


def _training_seconds(log_path: str) -> tuple[float, int]:
    """(optimisation seconds, steps) of a run from its train_log.csv (mean seconds per step of
    each logged window times the window's steps)."""
    import csv

    total, previous = 0.0, 0
    with open(log_path) as handle:
        for row in csv.DictReader(handle):
            step = int(row["step"])
            if row.get("seconds"):
                total += float(row["seconds"]) * (step - previous)
            previous = step
    return total, previous


def _n_frames(path: str) -> int:
    """Number of configurations in a sample file."""
    from boltzgen.io import load_samples

    return int(load_samples(path).x.shape[0])


def _read_json(path: str) -> dict:
    """The JSON object in ``path``, or {} if there is none (e.g. a reused file from an older run)."""
    if not os.path.exists(path):
        return {}
    with open(path) as handle:
        return json.load(handle)


def markdown(out: dict) -> str:
    """Markdown table of a chain result."""

    def f(value, spec=".3f"):
        return "–" if value is None else format(value, spec)

    lines = [
        f"# {out['benchmark']} ({out['date']}, {out['machine']}, boltzgen {out['boltzgen_version']})",
        "",
        f"sizes: {out['sizes']}",
        "",
        "| objective | ESS fraction | ancestors (t = 1 / annealing) | energy W2 (kT) | its floor at the ESS / lineages (kT) | torsion W2 (rad) "
        "| ΔF φ>0 vs φ<0 (kT) | reference ΔF (kT) | s/step | train s | SMC s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for loss, r in out["results"].items():
        df = "–" if r.get("delta_f_kT") is None else f"{r['delta_f_kT']:.2f} ± {f(r.get('delta_f_err_kT'), '.2f')}"
        ref = (
            "–"
            if r.get("reference_delta_f_kT") is None
            else f"{r['reference_delta_f_kT']:.2f} ± {f(r.get('reference_delta_f_err_kT'), '.2f')}"
        )
        lines.append(
            f"| {loss} | {f(r.get('ess_fraction'))} | {f(r.get('n_ancestors'), 'd')} / "
            f"{f(r.get('n_ancestors_anneal'), 'd')} | {f(r.get('energy_w2'))} | {f(r.get('energy_w2_floor'))} / {f(r.get('energy_w2_floor_lineages'))} "
            f"| {f(r.get('torsion_w2'))} "
            f"| {df} | {ref} | {f(r.get('train_seconds_per_step'), '.2f')} | {f(r.get('train_seconds'), '.0f')} "
            f"| {f(r.get('sample_seconds'), '.0f')} |"
        )
    for loss, r in out["results"].items():
        for residue, entry in (r.get("per_residue") or {}).items():
            lines.append(
                f"- {loss} {residue}: torsion W2 {f(entry.get('torsion_w2'))} rad, ΔF(φ>0 − φ<0) "
                f"{f(entry.get('delta_f_kT'), '.2f')} ± {f(entry.get('delta_f_err_kT'), '.2f')} kT (reference "
                f"{f(entry.get('reference_delta_f_kT'), '.2f')} ± {f(entry.get('reference_delta_f_err_kT'), '.2f')})"
            )
    if out.get("published_anchors"):
        lines += ["", f"published anchors: {out['published_anchors']}"]
    return "\n".join(lines) + "\n"
