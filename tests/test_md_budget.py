"""benchmarks/md_budget.py and versus_md.py's summary: the error of replica exchange against run
length and of the boltzgen recipes, checked on runs whose answer is known (independent frames of a
two-state system) and on hand-made values."""

import json
import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
try:
    import md_budget
    import versus_md
finally:
    sys.path.pop(0)


def iid_runs(p: float, runs: int, frames: int, seed: int = 0) -> list[np.ndarray]:
    """State labels of runs whose frames are independent, the rare state with probability p."""
    rng = np.random.default_rng(seed)
    return [(rng.random(frames) < p).astype(int) for _ in range(runs)]


def test_remd_error_follows_the_delta_method_on_independent_frames():
    """For independent frames ΔF = −ln(n₁/n₀) has variance 1/(n p (1 − p)) to first order: the √n fit
    recovers c = 1/√(p (1 − p)), two pooled runs have 1/√2 of one run's error, and no bias remains."""
    p = 0.05
    runs = iid_runs(p, runs=40, frames=20000)
    curve = md_budget.remd_curve(runs, lengths=(2000, 5000, 20000))
    c = md_budget.fit_constant(curve, from_frames=2000)
    assert c == pytest.approx(1 / math.sqrt(p * (1 - p)), rel=0.15)
    for row in curve:
        expected = 1 / math.sqrt(row["frames_per_run"] * p * (1 - p))
        assert row["runs"] == 40 and row["pairs"] == 20
        assert row["single_rms_kT"] == pytest.approx(expected, rel=0.3)
        assert row["pair_rms_kT"] == pytest.approx(expected / math.sqrt(2), rel=0.4)
        assert abs(row["single_bias_kT"]) < 2 * expected / math.sqrt(40) + 0.01


def test_remd_curve_skips_lengths_that_too_few_runs_reach():
    runs = iid_runs(0.2, runs=3, frames=2000) + iid_runs(0.2, runs=2, frames=600, seed=1)
    assert [r["frames_per_run"] for r in md_budget.remd_curve(runs, lengths=(500, 1000, 5000))] == [500]


def test_boltzgen_point_bias_spread_and_the_runs_implied_error(tmp_path):
    """Two seeds' metrics: the bias and RMS against the reference, the spread over seeds, and the sd
    implied by the per-run scatter, sqrt(mean per-run variance / runs)."""
    files = []
    for k, (value, per_run) in enumerate([(3.5, [3.0, 4.0, 3.0, 4.0]), (4.1, [4.0, 4.2, 3.8, 4.4])]):
        path = tmp_path / f"m{k}.json"
        path.write_text(json.dumps({"delta_f_kT": value, "delta_f_runs_kT": per_run}))
        files.append(str(path))
    point = md_budget.boltzgen_point("x", 100.0, files, reference=3.7)
    assert point["bias_kT"] == pytest.approx(0.1)
    assert point["rmse_kT"] == pytest.approx(math.sqrt((0.2**2 + 0.4**2) / 2))
    assert point["spread_kT"] == pytest.approx(np.std([3.5, 4.1], ddof=1))
    variances = [np.var([3.0, 4.0, 3.0, 4.0], ddof=1), np.var([4.0, 4.2, 3.8, 4.4], ddof=1)]
    assert point["runs_implied_sd_kT"] == pytest.approx(math.sqrt(np.mean(variances) / 4))


def test_versus_md_leaves_a_seed_without_an_independent_reference_out():
    """versus_md compares each seed's replica exchange with the other seeds' runs only: a seed with
    none (a single-seed invocation) is left out of the summary, not compared with itself."""
    alone = versus_md.arm_summary([3.55], [None])
    assert alone["n"] == 0 and alone["rmse_kT"] is None
    two = versus_md.arm_summary([3.5, 3.9, None], [3.7, 3.6, 3.7])
    assert two["n"] == 2
    assert two["bias_kT"] == pytest.approx(0.05) and two["rmse_kT"] == pytest.approx(math.sqrt((0.04 + 0.09) / 2))
