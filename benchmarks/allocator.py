"""The quickstart's SMC with glibc's own malloc thresholds against boltzgen's (boltzgen.allocator).

Runs the SMC stage of the default quickstart (its settings, runs and processes, ``-n`` particles
in all) on a trained run directory, alternately with ``BOLTZGEN_MALLOC=default`` (the allocator
left alone) and with the thresholds that :func:`boltzgen.allocator.tune_malloc` sets, each in a
fresh process, ``--repeats`` times. Reports per setting the median wall time, user and system CPU
time and minor page faults of the whole process tree (``getrusage`` of the children), the wall
time as a ratio to the tuned runs, and whether both settings drew identical samples (the
allocator must change nothing but the cost).

    python benchmarks/allocator.py RUN_DIR [-n 2048] [--repeats 1] [--seed 0]
        [--out bench-results/allocator.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from boltzgen.allocator import untuned_environ
from boltzgen.io import write_json

#: One SMC stage of the quickstart's default recipe, in a fresh process.
SAMPLE = """
import json, sys
from boltzgen.workflow import load_recipe, sample
run_dir, out, n, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
plan = load_recipe("quickstart", "default")["sample"]
sample(run_dir, out, n, settings=plan["settings"], runs=plan["runs"], processes=plan["processes"],
       per_state_resampling=plan["per_state_resampling"], seed=seed, progress=False)
"""

SETTINGS = {"tuned": {}, "glibc default": {"BOLTZGEN_MALLOC": "default"}}


def run_once(run_dir: str, out: str, n: int, seed: int, env: dict) -> dict:
    """Wall time, CPU times and page faults of one SMC stage in a child process tree."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", SAMPLE, run_dir, out, str(n), str(seed)], env={**untuned_environ(), **env}, check=True
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "wall_s": wall,
        "user_s": after.ru_utime - before.ru_utime,
        "system_s": after.ru_stime - before.ru_stime,
        "minor_page_faults": after.ru_minflt - before.ru_minflt,
    }


def same_samples(a: str, b: str) -> bool:
    import h5py

    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        return all(np.array_equal(fa[k][...], fb[k][...]) for k in ("coordinates", "log_weights"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a trained run directory (e.g. a quickstart's run/)")
    parser.add_argument("-n", type=int, default=2048, help="particles in all (default: the quickstart's)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per setting, alternating")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench-results/allocator.json")
    args = parser.parse_args(argv)
    runs = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        files = {name: os.path.join(tmp, f"{k}.h5") for k, name in enumerate(SETTINGS)}
        for _ in range(args.repeats):
            for name, env in SETTINGS.items():
                runs[name].append(run_once(args.run_dir, files[name], args.n, args.seed, env))
                print(name, runs[name][-1], file=sys.stderr)
        identical = same_samples(*files.values())
    median = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    blob = {
        "benchmark": "allocator",
        "run_dir": os.path.abspath(args.run_dir),
        "particles": args.n,
        "repeats": args.repeats,
        "seed": args.seed,
        "cpu_count": os.cpu_count(),
        "settings": median,
        "wall_ratio_to_tuned": {name: m["wall_s"] / median["tuned"]["wall_s"] for name, m in median.items()},
        "identical_samples": identical,
        "runs": runs,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_json(args.out, blob)
    json.dump({k: blob[k] for k in ("settings", "wall_ratio_to_tuned", "identical_samples")}, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
