"""LJ13 end to end: DSM vs DSM + DiffCLF, SMC, against a long MCMC reference.

Stages (each a ``boltzgen`` command, timed; see ``benchmarks/molecular_chain.py``): a long
reference and independent training data from ``boltzgen simulate lj13`` (MALA chains), training of
the EGNN energy (permutation-invariant over the 13 identical particles) with each objective under
the same budget, SMC along the learned diffusion path annealed to the LJ energy, and the
comparison: ESS fraction, energy W2 (kT) against the reference, wall time per stage.

    python benchmarks/lj13.py                      # default sizes -> bench-results/lj13.json (+ .md)
    python benchmarks/lj13.py --quick              # smoke run of the whole chain
"""

import argparse

from molecular_chain import add_arguments, recipe_sizes, run_chain

from boltzgen.workflow import load_recipe

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser, recipe_sizes(load_recipe("benchmarks", "lj13")))
    run_chain("lj13", parser.parse_args())
