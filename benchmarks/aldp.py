"""Alanine dipeptide end to end: DSM vs DSM + DiffCLF, SMC, against a long replica-exchange reference.

Stages (each a ``boltzgen`` command, timed; see ``benchmarks/molecular_chain.py``): a long
replica-exchange reference and independent training data (6 replicas, 300-1000 K, 300 K frames
kept; the training data keep 5 ns of the three coldest replicas, 300-486 K, so that the rare
φ > 0 states are in them), training of the EGNN energy with each objective under the same budget
and the same draws (φ > 0 frames at a quarter of every batch; DSM; 2000 steps of DSM
pre-training, then DSM + DiffCLF), SMC along the learned diffusion path annealed to the OpenMM
energy (resampled within the φ states, in 4 independent runs pooled by their log Z), and the
comparison: ESS fraction, energy W2 (kT), torsion W2 on the (φ, ψ) torus (rad), ΔF(φ > 0 vs
φ < 0) with errors (bootstrap over the runs; the reference's: block bootstrap) against the
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
                               smc_steps=400, mcmc_steps=0, anneal=16, runs=4))
    parser.add_argument("--keep-replicas", type=int, default=3,
                        help="training data: frames of this many of the coldest replicas (n-data each)")
    parser.add_argument("--data-stride", type=int, default=2500,
                        help="training data: MD steps (1 fs each) between frames (default 2500: 5 ns of replica "
                             "exchange for 2000 frames, about 200 phi > 0 frames in the 3 kept replicas; simulate's "
                             "500 gives 1 ns and about 20)")
    parser.add_argument("--phi-positive-fraction", default="0.25",
                        help="share of every training batch drawn from the phi > 0 frames, both objectives "
                             "(boltzgen train --phi-positive-fraction; 'none' for uniform draws)")
    args = parser.parse_args()
    if args.quick:
        reference_options = data_options = ("--replicas", "2", "--equilibration", "500", "--stride", "50")
    else:
        reference_options, data_options = (), ("--keep-replicas", args.keep_replicas)
        if args.data_stride:
            data_options += ("--stride", args.data_stride)
    # phi > 0 is oversampled in training, so SMC resamples within the phi states
    run_chain(args.system, args, reference_options=reference_options, data_options=data_options,
              train_options=("--phi-positive-fraction", args.phi_positive_fraction),
              sample_options=("--per-state-resampling",), anchors=ANCHORS)
