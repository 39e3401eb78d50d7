"""A trained model's error at low noise, against the target's exact noisy marginal.

At low noise the marginal of the target, p_t(y) ∝ ∫ exp(−u(x)) N(y; a x, v) dx, is computable from
the force field alone (:mod:`boltzgen.diffusion.laplace`). For the exact model E(y, t) + log p_t(y)
is one constant over y at each t; its spread over noisy copies of the target's own samples is the
learned energy's error there (kT), which SMC's weights pay for wherever it hands over from the
model to the force field. This takes frames of the target (a replica ladder's frames at the
target temperature only), noises them at each time, and reports that spread overall and within
each state (an equal share of frames from each state, so a rare one shows; a state the target
temperature barely visits is filled with the ladder's hotter frames of it, relaxed to the target
temperature by a few ps of Langevin dynamics), beside the estimate's own accuracy (the spread of
its importance log-weights), and the error of the model's own state free energies at each t
(``marginal_dF_error_kT_t<t>_<state>`` under ``marginal_std_kT_per_state``).

    python benchmarks/marginal_error.py RUN_DIR [RUN_DIR ...] --data DATA.h5 [-n 128] [--times 0.002,0.01,0.02,0.05]
        [--relax-ps 10] [--out bench-results/marginal_error.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (see boltzgen.cli)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from boltzgen.diagnostics import marginal_spread  # noqa: E402
from boltzgen.diffusion.laplace import marginal_pairs, target_energy_in_model_units  # noqa: E402
from boltzgen.io import load_samples, write_json  # noqa: E402
from boltzgen.md.dynamics import quench  # noqa: E402
from boltzgen.model import load_model  # noqa: E402
from boltzgen.systems import resolve  # noqa: E402


def target_frames(path: str, target, n: int, seed: int, relax_ps: float = 10.0) -> np.ndarray:
    """Up to n frames of a sample file at the target temperature (all frames without a ladder), nm,
    with an equal share from each of the target's states. A state with too few frames at the
    target temperature is filled from the ladder's hotter frames of that state, relaxed to the
    target temperature by ``relax_ps`` ps of Langevin dynamics (:func:`boltzgen.md.dynamics.quench`,
    no minimisation; frames that leave the state are dropped; 0: no filling)."""
    samples = load_samples(path)
    x = np.asarray(samples.x, dtype=np.float64)
    hot = np.zeros((0,) + x.shape[1:])
    if "temperature_K" in samples.extra:
        at_target = np.isclose(np.asarray(samples.extra["temperature_K"], dtype=np.float64), target.temperature)
        x, hot = x[at_target], x[~at_target]
    if len(x) == 0:
        raise ValueError(f"{path} has no frames at {target.temperature} K")
    rng = np.random.default_rng(seed)
    states = target.states
    labels = np.zeros(len(x), dtype=np.int64) if states is None else np.asarray(states.assign(x))
    n_states = 1 if states is None else len(states.names)
    share = n // n_states
    hot_labels = None  # assigned once, when a state first needs filling
    pick = []
    for k in range(n_states):
        own = x[rng.permutation(np.flatnonzero(labels == k))[:share]]
        if states is not None and len(own) < share and relax_ps > 0 and len(hot):
            if hot_labels is None:
                hot_labels = np.asarray(states.assign(hot))
            extra = hot[hot_labels == k]
            extra = extra[rng.permutation(len(extra))[: 2 * (share - len(own))]]
            if len(extra):
                relaxed, _ = quench(
                    target.system, extra, target.temperature, time_ps=relax_ps, minimize=False, seed=seed
                )
                relaxed = relaxed[np.asarray(states.assign(relaxed)) == k]
                own = np.concatenate([own, relaxed[: share - len(own)]])
        pick.append(own)
    return np.concatenate(pick)


def marginal_error(run_dir: str, data: str, n: int, times: list, seed: int, relax_ps: float = 10.0) -> dict:
    """The spread of E(y, t) + log p_t(y) of one run's model at each time (kT), overall and per state."""
    start = time.perf_counter()
    model = load_model(run_dir)
    recipe = model.metadata.get("target") or model.metadata.get("system")
    target = resolve(**recipe) if isinstance(recipe, dict) else resolve(recipe)
    try:
        x0 = target_frames(data, target, n, seed, relax_ps)
        y0 = torch.as_tensor(x0) / model.length_scale  # marginal_pairs centres it when mean_free
        y, log_p, t, spread, _ = marginal_pairs(
            target_energy_in_model_units(target, model.length_scale),
            y0,
            model.inner.schedule,
            times,
            mean_free=model.inner.mean_free,
            generator=torch.Generator().manual_seed(seed),
        )
        labels, names = None, None
        if target.states is not None:
            labels, names = np.asarray(target.states.assign(x0)), list(target.states.names)
    finally:
        if hasattr(target, "close"):
            target.close()
    inner = model.inner.double()
    per_state = marginal_spread(inner, y, log_p, t, labels, names)
    overall = {f"{ti:g}": per_state.pop(f"marginal_std_kT_t{ti:g}") for ti in t.tolist()}
    return {
        "run_dir": os.path.abspath(run_dir),
        "n_frames": int(y.shape[1]),
        "marginal_std_kT": overall,
        "marginal_std_kT_per_state": per_state,
        "estimate_spread": {f"{ti:g}": float(s) for ti, s in zip(t.tolist(), spread.tolist())},
        "state_counts": None if labels is None else {name: int((labels == k).sum()) for k, name in enumerate(names)},
        "seconds": time.perf_counter() - start,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--data", required=True, help="sample file with frames of the target (boltzgen simulate)")
    parser.add_argument("-n", type=int, default=128, help="frames (default 128)")
    parser.add_argument("--times", default="0.002,0.01,0.02,0.05", help="comma-separated diffusion times")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--relax-ps",
        type=float,
        default=10.0,
        help="fill a state short of frames at the target temperature with hotter frames of it relaxed for this many ps (0: off)",
    )
    parser.add_argument("--out", default="bench-results/marginal_error.json")
    args = parser.parse_args(argv)
    times = [float(v) for v in args.times.split(",") if v]
    runs = [marginal_error(run_dir, args.data, args.n, times, args.seed, args.relax_ps) for run_dir in args.run_dirs]
    for run in runs:
        shown = " ".join(
            f"t={t}: {v:.2f} (±{run['estimate_spread'][t]:.2f})" for t, v in run["marginal_std_kT"].items()
        )
        print(f"{run['run_dir']}: std(E + log p_t), kT: {shown}", file=sys.stderr)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    meta = {"data": os.path.abspath(args.data), "times": times, "seed": args.seed, "relax_ps": args.relax_ps}
    write_json(args.out, {**meta, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
