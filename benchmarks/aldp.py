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
arm). The published anchors are in :data:`ANCHORS`.

    python benchmarks/aldp.py                      # the recipe's sizes -> bench-results/aldp.json (+ .md)
    python benchmarks/aldp.py --quick              # smoke run of the whole chain
    python benchmarks/aldp.py --system aldp-implicit --steps 3000
"""

import argparse

from molecular_chain import add_arguments, recipe_sizes, run_chain

from boltzgen.workflow import load_recipe

ANCHORS = {
    "source": "published best flow, GPU, aldp-implicit",
    "ess_fraction": 0.275,
    "energy_w2": 0.914,
    "torsion_w2": 0.189,
}

if __name__ == "__main__":
    recipe = load_recipe("benchmarks", "aldp")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
        default=recipe["simulate"]["stride"],
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
    run_chain(args.system, args, recipe="aldp", overrides=overrides, anchors=ANCHORS)
