"""Seconds per configuration of a model pass (energy and score) in chunks of C configurations.

The samplers evaluate the learned energy on all particles at once. On the CPU a large batch of
the EGNN costs more per configuration than several small ones: its (B, N, N, H) pair tensors fall
out of the cache, and the size that still fits is set by the atom pairs of a chunk, C·N², not by C
alone. For systems of several sizes (built-in systems, each with the network of its training
defaults and random weights), this times ``model_energy_and_score`` on B configurations for each
chunk size: the samplers' CPU default (``boltzgen.sampling.sde.cpu_eval_chunk``: at most 128
configurations and, on a fully connected graph, at most ``CPU_EVAL_PAIRS`` pairs), multiples of
it, and the fixed chunk of 128 configurations used before the pair budget. Chunks are timed in
interleaved rounds, so background load hits them alike, in P processes at once (as ``boltzgen
sample --processes P`` runs them: the cores share the last cache); the table gives the median per
configuration and its ratio to the default.

    python benchmarks/eval_chunks.py [--systems aldp-vacuum lj13 ala3 lj55] [--batch 512]
        [--factors 4 2 0.5 0.25] [--rounds 5] [--processes 2] [--out bench-results/eval_chunks.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (see boltzgen.cli)

import torch  # noqa: E402

from boltzgen.allocator import tune_malloc  # noqa: E402
from boltzgen.bench import random_model  # noqa: E402
from boltzgen.io import write_json  # noqa: E402
from boltzgen.sampling.sde import (  # noqa: E402
    CPU_EVAL_PAIRS,
    cpu_eval_chunk,
    model_energy_and_score,
    model_graph_kind,
)

#: The CPU chunk of the samplers before the pair budget (configurations, whatever the size).
FIXED_CHUNK = 128


def chunk_sizes(event_shape, graph: str, factors) -> list[int]:
    """The default chunk first, then the default times each factor and the fixed chunk, deduplicated."""
    default = cpu_eval_chunk(event_shape, graph)
    sizes = [default] + [max(1, round(default * f)) for f in factors] + [FIXED_CHUNK]
    return list(dict.fromkeys(sizes))


def time_chunks(system: str, batch: int, chunks: list[int], rounds: int, seed: int) -> dict[int, list[float]]:
    """Seconds per configuration of each chunk size, one value per round (one process, one thread,
    the C allocator tuned as the samplers tune it)."""
    torch.set_num_threads(1)
    tune_malloc()
    target, model = random_model(system, None, seed)
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(batch, *target.event_shape, generator=g, dtype=torch.float64)
    if target.topology is not None:  # near the molecule's structure, in model units of 0.2 nm
        y = (target.positions.double()[None] + 0.01 * y) / 0.2
    times = {c: [] for c in chunks}
    reference = None
    for r in range(rounds + 1):  # round 0 warms up
        for c in chunks:
            start = time.perf_counter()
            e, _ = model_energy_and_score(model, y, 0.05, c)
            elapsed = time.perf_counter() - start
            if reference is None:
                reference = e
            else:  # chunking changes nothing but the cost
                torch.testing.assert_close(e, reference, rtol=1e-4, atol=1e-4)
            if r > 0:
                times[c].append(elapsed / batch)
    return times


def _worker(args):
    return time_chunks(*args)


def measure(system: str, batch: int, factors, rounds: int, processes: int, seed: int = 0) -> dict:
    """One system: the median seconds per configuration of each chunk over rounds and processes."""
    _, model = random_model(system, None, seed)
    event_shape, graph = tuple(model.event_shape), model_graph_kind(model)
    chunks = chunk_sizes(event_shape, graph, factors)
    jobs = [(system, batch, chunks, rounds, seed + k) for k in range(processes)]
    if processes > 1:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            results = pool.map(_worker, jobs)
    else:
        results = [_worker(jobs[0])]
    median = {c: statistics.median(v for r in results for v in r[c]) for c in chunks}
    default = chunks[0]
    return {
        "system": system,
        "n_atoms": event_shape[0],
        "graph": graph,
        "default_chunk": default,
        "seconds_per_config": {str(c): median[c] for c in chunks},
        "ratio_to_default": {str(c): median[c] / median[default] for c in chunks},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", nargs="+", default=["aldp-vacuum", "lj13", "ala3", "lj55"])
    parser.add_argument("--batch", type=int, default=512, help="configurations per timed pass")
    parser.add_argument(
        "--factors",
        type=float,
        nargs="+",
        default=[4, 2, 0.5, 0.25],
        help="chunks to time, as multiples of the default",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--processes", type=int, default=2, help="timings run in this many processes at once")
    parser.add_argument("--out", default="bench-results/eval_chunks.json")
    args = parser.parse_args(argv)
    result = {
        "benchmark": "eval_chunks",
        "batch": args.batch,
        "rounds": args.rounds,
        "processes": args.processes,
        "threads_per_process": 1,
        "cpu_eval_pairs": CPU_EVAL_PAIRS,
        "fixed_chunk": FIXED_CHUNK,
        "systems": [measure(s, args.batch, args.factors, args.rounds, args.processes) for s in args.systems],
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_json(args.out, result)
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
