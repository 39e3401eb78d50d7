"""Seconds per configuration of a model pass (energy and score) in chunks of C configurations.

The samplers evaluate the learned energy on all particles at once. On the CPU a large batch of
the EGNN costs more per configuration than several small ones: its (B, N, N, H) pair tensors fall
out of the cache. This times ``model_energy_and_score`` on B configurations of alanine dipeptide
(vacuum) for each chunk size (0: all at once) in interleaved rounds, so background load hits them
alike, and reports the median per configuration and its ratio to one pass; the samplers' CPU
default is ``boltzgen.sampling.sde.CPU_EVAL_CHUNK``.

    python benchmarks/eval_chunks.py [--batch 1024] [--chunks 0 512 256 128 64] [--rounds 5]
        [--out bench-results/eval_chunks.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (see boltzgen.cli)

import torch  # noqa: E402

from boltzgen.bench import random_aldp_model  # noqa: E402
from boltzgen.sampling.sde import CPU_EVAL_CHUNK, model_energy_and_score  # noqa: E402


def measure(batch: int, chunks: list[int], rounds: int, seed: int = 0, net: str = "egnn") -> dict:
    target, model = random_aldp_model(net, seed)
    g = torch.Generator().manual_seed(seed)
    y = (
        target.positions.double()[None]
        + 0.01 * torch.randn(batch, *target.event_shape, generator=g, dtype=torch.float64)
    ) / 0.2
    times = {c: [] for c in chunks}
    reference = None
    for r in range(rounds + 1):  # round 0 warms up
        for c in chunks:
            start = time.perf_counter()
            e, s = model_energy_and_score(model, y, 0.05, c)
            elapsed = time.perf_counter() - start
            if reference is None:
                reference = (e, s)
            else:  # chunking changes nothing but the cost
                torch.testing.assert_close(e, reference[0], rtol=1e-4, atol=1e-4)
            if r > 0:
                times[c].append(elapsed / batch)
    median = {c: statistics.median(v) for c, v in times.items()}
    base = median[chunks[0]]
    return {
        "batch": batch,
        "net": net,
        "threads": torch.get_num_threads(),
        "rounds": rounds,
        "cpu_eval_chunk_default": CPU_EVAL_CHUNK,
        "seconds_per_config": {str(c): median[c] for c in chunks},
        f"ratio_to_chunk_{chunks[0]}": {str(c): median[c] / base for c in chunks},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--chunks", type=int, nargs="+", default=[0, 512, 256, 128, 64])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="bench-results/eval_chunks.json")
    args = parser.parse_args(argv)
    result = measure(args.batch, args.chunks, args.rounds)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(result, fh, indent=2)
    os.replace(tmp, args.out)
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
