"""Replica exchange with its replicas stepped one after another against in parallel threads.

For each system, the same short replica-exchange run (the system's ladder and platform) with
``workers=1`` and with one thread per core, interleaved over rounds (the best of each kept); the
frames of both must be identical (checked). Writes the speed-up as JSON.

    python benchmarks/replica_threads.py --out bench-results/replica_threads.json
"""

import argparse
import os
import sys
import time


def one_system(name: str, frames: int, stride: int, rounds: int) -> dict:
    import numpy as np

    from boltzgen.md import simulate
    from boltzgen.md.simulate import md_platform
    from boltzgen.systems import load
    from boltzgen.systems.catalog import simulate_defaults

    target = load(name, n_workers=0)
    options = {k: v for k, v in simulate_defaults(name, target).items() if k in ("replicas", "t_max", "timestep")}
    options.update(stride=stride, equilibration=stride)
    cores = os.cpu_count() or 1
    best, frames_of = {1: float("inf"), cores: float("inf")}, {}
    for _ in range(rounds):
        for workers in best:
            start = time.perf_counter()
            result = simulate(target, frames, method="md", seed=0, progress=False, workers=workers, **options)
            best[workers] = min(best[workers], time.perf_counter() - start)
            frames_of[workers] = result.positions
    return {
        "system": name,
        "atoms": int(target.event_shape[0]),
        "platform": md_platform(target.system),
        "replicas": int(options.get("replicas", 1)),
        "frames": frames,
        "stride": stride,
        "cores": cores,
        "seconds_sequential": best[1],
        "seconds_threads": best[cores],
        "speedup": best[1] / best[cores],
        "identical_frames": bool(np.array_equal(frames_of[1], frames_of[cores])),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", default="aldp-vacuum,aldp-implicit,ala3", help="comma-separated built-in systems")
    parser.add_argument("--frames", type=int, default=10, help="frames per run")
    parser.add_argument("--stride", type=int, default=500, help="MD steps between frames (and of equilibration)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds, the best of each kept")
    parser.add_argument("--out", default="bench-results/replica_threads.json", help="JSON output")
    args = parser.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
    rows = [one_system(s, args.frames, args.stride, args.rounds) for s in args.systems.split(",") if s]
    from boltzgen.io import dumps_json, write_json

    out = {"benchmark": "replica_threads", "load_average_1_5_15_min": list(os.getloadavg()), "results": rows}
    print(dumps_json(out))
    write_json(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
