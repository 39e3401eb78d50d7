"""Alanine dipeptide end to end: DSM vs DSM + DiffCLF, SMC, against a long replica-exchange reference.

Stages (see ``benchmarks/molecular_chain.py``): a long replica-exchange reference and independent
training data that keep the coldest replicas' frames, so that the rare φ > 0 states are in them;
training of the EGNN energy with each objective under the same budget and the same draws (the rare
state oversampled in every batch; DSM; DSM pre-training, then DSM + DiffCLF); SMC along the learned
diffusion path annealed to the OpenMM energy (resampled within the φ states, in independent runs
pooled by their log Z); and the comparison: ESS fraction, energy W2 (kT), torsion W2 on the (φ, ψ)
torus (rad), ΔF(φ > 0 vs φ < 0) with errors (bootstrap over the runs; the reference's: block
bootstrap) against the reference's, wall time per stage. Sizes and options: the recipe
``benchmarks.aldp`` of ``systems/recipes.yaml`` (``boltzgen quickstart --long`` is its DSM + DiffCLF
arm). The published anchors are in :data:`ANCHORS` (from
``benchmarks/anchors.json``).

    python benchmarks/aldp.py                      # the recipe's sizes -> bench-results/aldp.json (+ .md)
    python benchmarks/aldp.py --quick              # smoke run of the whole chain
    python benchmarks/aldp.py --system aldp-implicit --steps 3000
    python benchmarks/aldp.py --recipe aldp-quickstart --system aldp-implicit --losses dsm+diffclf
"""

import argparse

from molecular_chain import add_arguments, published_anchors, recipe_sizes, run_chain

from boltzgen.workflow import load_recipe

ANCHORS = published_anchors("aldp-implicit")

RECIPES = ("aldp", "aldp-quickstart")

if __name__ == "__main__":
    pre = argparse.ArgumentParser(add_help=False)  # the recipe first: it gives the other options' defaults
    pre.add_argument(
        "--recipe",
        default="aldp",
        choices=RECIPES,
        help="benchmark recipe of systems/recipes.yaml: aldp (its two arms) or aldp-quickstart "
        "(the quickstart's data, training and SMC against the long reference)",
    )
    recipe_name = pre.parse_known_args()[0].recipe
    recipe = load_recipe("benchmarks", recipe_name)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], parents=[pre])
    parser.add_argument("--system", default=recipe["system"], choices=["aldp-vacuum", "aldp-implicit"])
    add_arguments(parser, recipe_sizes(recipe))
    parser.add_argument(
        "--keep-replicas",
        type=int,
        default=recipe["simulate"]["keep_replicas"],
        help="training data: frames of this many of the coldest replicas (n-data each)",
    )
    parser.add_argument(
        "--data-stride",
        type=int,
        default=recipe["simulate"].get("stride"),
        help="training data: MD steps (1 fs each) between frames; a longer run reaches the rare state more often",
    )
    parser.add_argument(
        "--state-fraction",
        "--phi-positive-fraction",
        dest="state_fraction",
        default=recipe["train"]["state_fraction"],
        help="share of every training batch drawn from the rarest state, both objectives "
        "(boltzgen train --state-fraction; 'none' for uniform draws)",
    )
    args = parser.parse_args()
    overrides = {"train": {"state_fraction": args.state_fraction}}
    if not args.quick:
        overrides["simulate"] = {"keep_replicas": args.keep_replicas, "stride": args.data_stride or None}
    if args.work == recipe["work"] and args.system != recipe["system"]:
        args.work = f"{recipe['work']}-{args.system.removeprefix('aldp-')}"
    if args.out == recipe["out"] and args.system != recipe["system"]:
        args.out = recipe["out"].replace(".json", f"-{args.system.removeprefix('aldp-')}.json")
    run_chain(args.system, args, recipe=recipe_name, overrides=overrides, anchors=ANCHORS)
