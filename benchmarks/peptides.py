"""Capped oligo-alanines end to end (issue 22): simulate → train → SMC against a long replica exchange.

For each peptide (``ala3``, ``ala4``, ``ala6``: the built-in targets of the published set, see
``boltzgen systems``) the chain of ``benchmarks/molecular_chain.py`` with the recipe
``benchmarks.peptides`` of ``systems/recipes.yaml``: a long replica-exchange reference with the
system's ladder, independent training data keeping the coldest replicas, training of the EGNN
energy, SMC along the learned diffusion annealed to the OpenMM energy (per-state resampling over
the joint φ-sign states of all residues), and the comparison: ESS fraction, energy W2 (kT), torsion
W2 over all (φ, ψ) and per residue (rad), ΔF(φ > 0 − φ < 0) per residue against the reference's,
wall time per stage. One arm (DSM + DiffCLF) by default: ``--losses dsm,dsm+diffclf`` runs both.

The published anchors (:data:`ANCHORS`, from ``benchmarks/anchors.json``) are a discrete-time
flow trained on GPU (energy W2) and the ESS range reported with it; they are beside the numbers,
not the same protocol.

    python benchmarks/peptides.py --system ala3        # -> bench-results/peptides-ala3.json (+ .md)
    python benchmarks/peptides.py --system ala3 --quick
"""

import argparse

from molecular_chain import add_arguments, published_anchors, recipe_sizes, run_chain

from boltzgen.workflow import load_recipe

ANCHORS = {name: published_anchors(name) for name in ("ala3", "ala4", "ala6")}

if __name__ == "__main__":
    recipe = load_recipe("benchmarks", "peptides")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", default=recipe["system"], choices=sorted(ANCHORS))
    defaults = recipe_sizes(recipe)
    defaults["losses"] = "dsm+diffclf"
    add_arguments(parser, defaults)
    args = parser.parse_args()
    if args.work == recipe["work"]:
        args.work = f"{recipe['work']}/{args.system}"
    if args.out == recipe["out"]:
        args.out = f"bench-results/peptides-{args.system}.json"
    run_chain(args.system, args, recipe="peptides", anchors=ANCHORS[args.system])
