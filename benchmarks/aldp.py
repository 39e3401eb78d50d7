"""Alanine dipeptide end to end: DSM vs DSM + DiffCLF, SMC, against a long replica-exchange reference.

Stages (each a ``boltzgen`` command, timed; see ``benchmarks/molecular_chain.py``): a long
replica-exchange reference and independent training data (6 replicas, 300-1000 K, 300 K frames
kept; the training data keep the frames of the three coldest replicas, 300-486 K, so that the rare
φ > 0 states are in them), training of the EGNN energy with each objective under the same budget
(DSM; 2000 steps of DSM pre-training, then DSM + DiffCLF), SMC along the learned
diffusion path annealed to the OpenMM energy, and the comparison: ESS fraction, energy W2 (kT),
torsion W2 on the (φ, ψ) torus (rad), ΔF(φ > 0 vs φ < 0) with bootstrap errors against the
reference's, wall time per stage.

Published anchors (GPU training, aldp-implicit, best flow): ESS 0.275, energy W2 0.914, torsion W2
0.189. The default sizes fit in about an hour of training on 2 CPU cores.

    python benchmarks/aldp.py                      # default sizes -> bench-results/aldp.json (+ .md)
    python benchmarks/aldp.py --quick              # smoke run of the whole chain (about a minute)
    python benchmarks/aldp.py --system aldp-implicit --steps 3000
"""

import argparse

from molecular_chain import add_arguments, run_chain

ANCHORS = {"source": "published best flow, GPU, aldp-implicit", "ess_fraction": 0.275, "energy_w2": 0.914,
           "torsion_w2": 0.189}

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", default="aldp-vacuum", choices=["aldp-vacuum", "aldp-implicit"])
    add_arguments(parser, dict(work="bench-work/aldp", out="bench-results/aldp.json", n_reference=10000,
                               n_data=2000, steps=3000, pretrain_dsm_steps=2000, batch_size=64, n_samples=1024,
                               smc_steps=100, mcmc_steps=0, anneal=16))
    parser.add_argument("--keep-replicas", type=int, default=3,
                        help="training data: frames of this many of the coldest replicas (n-data each)")
    parser.add_argument("--data-stride", type=int,
                        help="training data: MD steps (1 fs each) between frames (default: simulate's, 500 = 1 ns of "
                             "replica exchange for 2000 frames; 2500 gives 5 ns and about 9 times more phi > 0 frames)")
    args = parser.parse_args()
    if args.quick:
        reference_options = data_options = ("--replicas", "2", "--equilibration", "500", "--stride", "50")
    else:
        reference_options, data_options = (), ("--keep-replicas", args.keep_replicas)
        if args.data_stride:
            data_options += ("--stride", args.data_stride)
    run_chain(args.system, args, reference_options=reference_options, data_options=data_options, anchors=ANCHORS)
