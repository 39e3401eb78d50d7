"""LJ55 end to end (issue 22): simulate → train → SMC against a long MCMC reference.

The chain of ``benchmarks/molecular_chain.py`` with the recipe ``benchmarks.lj55`` of
``systems/recipes.yaml``: MALA chains for the reference and the training data, the EGNN energy
(radius graph) trained with DSM pre-training then DSM + DiffCLF, SMC along the learned diffusion
annealed to the LJ energy, and the comparison: ESS fraction and energy W2 (kT) against the
reference, wall time per stage. ``--losses dsm,dsm+diffclf`` runs both objectives.

Published anchor (:data:`ANCHORS`, from ``benchmarks/anchors.json``): the energy W2 of samplers
trained from the energy alone (no data), on GPU; a data-trained model with reweighting is expected
to be far closer.

    python benchmarks/lj55.py                 # -> bench-results/lj55.json (+ .md)
    python benchmarks/lj55.py --quick
"""

import argparse

from molecular_chain import add_arguments, published_anchors, recipe_sizes, run_chain

from boltzgen.workflow import load_recipe

ANCHORS = published_anchors("lj55")

if __name__ == "__main__":
    recipe = load_recipe("benchmarks", "lj55")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = recipe_sizes(recipe)
    defaults["losses"] = "dsm+diffclf"
    add_arguments(parser, defaults)
    run_chain("lj55", parser.parse_args(), anchors=ANCHORS)
