"""Benchmark the OpenMM energy bridge on a built-in system and write the result as JSON.

python benchmarks/bridge.py --system aldp-vacuum --batch 4096 --out bench-results/bridge.json
"""

import argparse
import json
import os
import sys

from boltzgen.io import write_text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", default="aldp-vacuum", help="built-in OpenMM system (default aldp-vacuum)")
    parser.add_argument("--batch", type=int, default=4096, help="configurations per batch (default 4096)")
    parser.add_argument("--out", help="JSON output file (default: print only)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: cores)")
    parser.add_argument("--platform", default="auto", help="OpenMM platform (default auto: the fastest)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise added to the positions")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved measurement rounds, best reported")
    args = parser.parse_args(argv)

    # Imported here, not at the top: spawned workers re-import this script as their __main__.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
    from boltzgen.bench import bench_bridge
    from boltzgen.systems import load

    target = load(args.system)
    try:
        result = bench_bridge(
            target.system,
            target.temperature,
            target.positions,
            batch=args.batch,
            n_workers=args.workers,
            platform=args.platform,
            seed=args.seed,
            rounds=args.rounds,
        )
    finally:
        target.close()
    result = {"system": args.system, **result}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
