"""boltzgen.analysis (torsions, histograms, free energies, W2 distances) and `boltzgen analyze`."""

import csv
import itertools
import json
import math
import os

import mdtraj
import numpy as np
import pytest

from boltzgen import analysis as A
from boltzgen.cli import main
from boltzgen.io import load_samples, save_samples
from boltzgen.train import LOG_FIELDS

PDB = os.path.join(os.path.dirname(__file__), os.pardir, "systems", "aldp.pdb")


@pytest.fixture(scope="module")
def aldp():
    return mdtraj.load(PDB)


def _frames(aldp, n, rng, noise=0.01, n_mirrored=0):
    """n noisy copies of the aldp structure (nm); the last n_mirrored mirrored (phi > 0)."""
    x = aldp.xyz[0].astype(np.float64)[None] + noise * rng.standard_normal((n, aldp.n_atoms, 3))
    if n_mirrored:
        x[n - n_mirrored :] *= -1.0
    return x


# ---------------------------------------------------------------------------- torsions
def test_torsions_match_mdtraj_dihedrals_in_the_published_atom_order(aldp):
    x = _frames(aldp, 7, np.random.default_rng(0), noise=0.02, n_mirrored=3)
    phi, psi = A.torsions(x, aldp.topology)
    ref = mdtraj.compute_dihedrals(
        mdtraj.Trajectory(x.astype(np.float32), aldp.topology), np.array([[4, 6, 8, 14], [6, 8, 14, 16]])
    )
    assert phi.shape == psi.shape == (7,)
    np.testing.assert_allclose(phi, ref[:, 0], atol=1e-5)
    np.testing.assert_allclose(psi, ref[:, 1], atol=1e-5)
    assert (phi[:4] < 0).all() and (phi[4:] > 0).all()
    phi_t, _ = A.torsions(mdtraj.Trajectory(x.astype(np.float32), aldp.topology))
    np.testing.assert_allclose(phi_t, phi)


# ---------------------------------------------------------------------------- histograms and free energies
def test_weighted_histogram_matches_numpy_and_survives_huge_log_weights():
    rng = np.random.default_rng(1)
    v = rng.normal(size=500)
    lw = rng.normal(size=500)
    hist, edges = A.weighted_histogram(v, lw + 800.0, bins=20, range=(-4, 4))  # exp(800) overflows
    ref, ref_edges = np.histogram(v, bins=20, range=(-4, 4), weights=np.exp(lw), density=True)
    np.testing.assert_allclose(hist, ref, rtol=1e-12)
    np.testing.assert_allclose(edges, ref_edges)
    mass, _ = A.weighted_histogram(v, lw - 800.0, bins=20, range=(-10, 10), density=False)
    assert mass.sum() == pytest.approx(1.0, abs=1e-12)
    counts, _ = A.weighted_histogram(v, None, bins=20, range=(-10, 10), density=False)
    np.testing.assert_allclose(counts * 500, np.histogram(v, bins=20, range=(-10, 10))[0])
    # non-finite values only with zero weight
    v2 = np.r_[v, np.inf]
    with pytest.raises(ValueError, match="not finite"):
        A.weighted_histogram(v2)
    h2, _ = A.weighted_histogram(v2, np.r_[lw, -np.inf], bins=20, range=(-4, 4))
    np.testing.assert_allclose(h2, ref, rtol=1e-12)


def test_free_energy_profile_of_von_mises_samples_is_minus_kappa_cos_phi():
    kappa = 2.0
    phi = np.random.default_rng(2).vonmises(0.0, kappa, size=40_000)
    prof = A.free_energy_profile(phi, bins=40, n_bootstrap=100, seed=0)
    assert prof.centers.shape == prof.f_kT.shape == prof.f_err_kT.shape == prof.counts.shape == (40,)
    assert prof.f_kT.min() == 0.0 and prof.counts.sum() == 40_000
    np.testing.assert_allclose(prof.ess, prof.counts)  # unweighted: ESS per bin = count
    exact = -kappa * np.cos(prof.centers)
    diff = prof.f_kT - exact
    diff -= np.average(diff, weights=prof.counts)
    assert np.all(np.abs(diff) < 4 * prof.f_err_kT + 0.02)
    # bootstrap error of -ln p of a bin with count c is about sqrt((1 - p) / c)
    expected = np.sqrt((1 - prof.counts / 40_000) / prof.counts)
    ratio = prof.f_err_kT / expected
    assert 0.7 < np.median(ratio) < 1.3


def test_free_energy_profile_with_log_weights_spanning_hundreds_of_units():
    # A fine grid of angles, weighted by exp(kappa cos phi) with kappa = 100: log-weights span 200
    # units and are shifted by 1000 (exp overflows). Exact reference: -ln of the integral of
    # exp(kappa cos) over each bin, by quadrature.
    kappa, bins = 100.0, 30
    phi = -math.pi + (np.arange(300_000) + 0.5) * (2 * math.pi / 300_000)
    lw = kappa * np.cos(phi) + 1000.0
    prof = A.free_energy_profile(phi, lw, bins=bins, n_bootstrap=0)
    assert np.isnan(prof.f_err_kT).all()
    fine = np.linspace(-math.pi, math.pi, bins * 2000 + 1)
    mid = 0.5 * (fine[1:] + fine[:-1])
    log_bin = np.array([np.log(np.sum(np.exp(kappa * (np.cos(m) - 1)))) + kappa for m in mid.reshape(bins, -1)])
    exact = -(log_bin - log_bin.max())
    assert exact.max() > 150  # the profile spans well over a hundred kT
    np.testing.assert_allclose(prof.f_kT, exact, atol=1e-3)


def test_free_energy_profile_empty_bins_are_inf_with_nan_error():
    phi = np.random.default_rng(3).uniform(-1.0, 1.0, size=2000)
    prof = A.free_energy_profile(phi, bins=20, n_bootstrap=20)
    empty = prof.counts == 0
    assert empty.any() and np.isinf(prof.f_kT[empty]).all() and np.isnan(prof.f_err_kT[empty]).all()
    assert np.isfinite(prof.f_err_kT[prof.counts > 50]).all()


def test_free_energy_surface_against_histogram2d():
    rng = np.random.default_rng(4)
    phi, psi = rng.vonmises(-1.5, 3.0, 5000), rng.vonmises(2.5, 1.0, 5000)
    f, xe, ye = A.free_energy_surface(phi, psi, bins=24)
    h, _, _ = np.histogram2d(phi, psi, bins=24, range=((-math.pi, math.pi), (-math.pi, math.pi)))
    assert f.shape == (24, 24) and xe.shape == ye.shape == (25,)
    assert np.nanmin(f) == 0.0
    assert np.array_equal(np.isinf(f), h == 0)
    ok = h > 0
    np.testing.assert_allclose(f[ok], -np.log(h[ok] / h.max()), atol=1e-12)
    lw = rng.normal(size=5000)
    f_w, _, _ = A.free_energy_surface(phi, psi, lw + 500.0, bins=24)
    f_w2, _, _ = A.free_energy_surface(phi, psi, lw, bins=24)
    np.testing.assert_allclose(f_w, f_w2, atol=1e-9)


# ---------------------------------------------------------------------------- energy W2
def test_energy_w2_of_two_gaussians_matches_the_closed_form():
    rng = np.random.default_rng(5)
    a = rng.normal(0.0, 1.0, size=200_000)
    b = rng.normal(1.0, 2.0, size=150_000)
    assert A.energy_w2(a, b) == pytest.approx(math.sqrt(1.0 + 1.0), abs=0.02)


def test_energy_w2_equal_sizes_is_sorted_matching_and_zero_for_identical_sets():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=101), rng.exponential(size=101)
    assert A.energy_w2(a, b) == pytest.approx(math.sqrt(np.mean((np.sort(a) - np.sort(b)) ** 2)), rel=1e-12)
    assert A.energy_w2(a, a) == 0.0
    assert A.energy_w2(a, a + 3.0) == pytest.approx(3.0, rel=1e-12)


def test_energy_w2_weighted_equals_duplicated_samples():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=20), rng.normal(0.5, 2.0, size=30)
    ma, mb = rng.integers(1, 5, size=20), rng.integers(1, 5, size=30)
    weighted = A.energy_w2(a, b, np.log(ma) + 700.0, np.log(mb) - 300.0)
    duplicated = A.energy_w2(np.repeat(a, ma), np.repeat(b, mb))
    assert weighted == pytest.approx(duplicated, rel=1e-10)


def test_energy_w2_drops_zero_weight_infinities_and_refuses_weighted_ones():
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=50), rng.normal(size=60)
    lw = rng.normal(size=50)
    base = A.energy_w2(a, b, lw)
    with_inf = A.energy_w2(np.r_[a, np.inf, np.nan], b, np.r_[lw, -np.inf, -np.inf])
    assert with_inf == pytest.approx(base, rel=1e-12)
    with pytest.raises(ValueError, match="u is not finite"):
        A.energy_w2(np.r_[a, np.inf], b)
    with pytest.raises(ValueError, match="u_ref is not finite"):
        A.energy_w2(a, np.r_[b, np.nan], None, np.zeros(61))
    with pytest.raises(ValueError, match="entries"):
        A.energy_w2(a, b, lw[:10])


# ---------------------------------------------------------------------------- torsion W2
def _torus_cost(p, q):
    d = np.abs(p - q) % (2 * math.pi)
    d = np.minimum(d, 2 * math.pi - d)
    return float(np.sum(d**2))


def test_torsion_w2_is_the_exact_assignment_on_the_torus():
    rng = np.random.default_rng(9)
    a, b = rng.uniform(-math.pi, math.pi, (6, 2)), rng.uniform(-math.pi, math.pi, (6, 2))
    best = min(
        np.mean([_torus_cost(a[i], b[j]) for i, j in enumerate(perm)]) for perm in itertools.permutations(range(6))
    )
    assert A.torsion_w2(a, b, n=6) == pytest.approx(math.sqrt(best), rel=1e-12)
    assert A.torsion_w2((a[:, 0], a[:, 1]), b, n=6) == pytest.approx(math.sqrt(best), rel=1e-12)


def test_torsion_w2_periodicity_and_identical_sets():
    rng = np.random.default_rng(10)
    a, b = rng.vonmises(0.0, 2.0, (300, 2)), rng.vonmises(1.0, 2.0, (300, 2))
    w = A.torsion_w2(a, b, n=300)
    assert w > 0.3
    assert A.torsion_w2(a + 2 * math.pi, b - 2 * math.pi, n=300) == pytest.approx(w, rel=1e-9)
    assert A.torsion_w2(a, a, n=300) == 0.0
    lw = rng.normal(size=300) * 50
    assert A.torsion_w2(a, a, lw, lw, n=200) == 0.0
    eps = 0.01
    near_minus = np.tile([-math.pi + eps, 0.5], (50, 1))
    near_plus = np.tile([math.pi - eps, 0.5], (50, 1))
    assert A.torsion_w2(near_minus, near_plus, n=50) == pytest.approx(2 * eps, rel=1e-9)


def test_torsion_w2_resamples_by_weight():
    a = np.array([[0.0, 0.0], [2.0, 2.0], [-1.0, 1.0]])
    b = np.array([[0.5, -0.5]])
    got = A.torsion_w2(a, b, np.array([-np.inf, 0.0, -np.inf]), n=40)
    assert got == pytest.approx(math.sqrt(_torus_cost(a[1], b[0])), rel=1e-12)
    with pytest.raises(ValueError, match="all 3 weights are zero"):
        A.torsion_w2(a, b, np.full(3, -np.inf), n=10)


# ---------------------------------------------------------------------------- report and CLI
def _write_run(tmp_path, aldp):
    rng = np.random.default_rng(11)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with open(run_dir / "train_log.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, LOG_FIELDS)
        writer.writeheader()
        for step in range(1, 41):
            row = {
                "step": step,
                "phase": "train",
                "lr": 1e-3,
                "total": 2.0 / step + 0.1,
                "dsm": 1.5 / step + 0.05,
                "clf": 0.5 / step + 0.05,
                "grad_norm": 1.0,
                "seconds": 0.01 * step,
            }
            if step % 10 == 0:
                row.update(val_total=2.2 / step + 0.1, val_dsm=1.6 / step + 0.05, val_clf=0.6 / step + 0.05)
            writer.writerow(row)
    samples = str(tmp_path / "samples.h5")
    x = _frames(aldp, 50, rng, n_mirrored=15)
    lw = 2.0 * rng.standard_normal(50) + 300.0
    lw[3] = -np.inf
    u = rng.normal(-20.0, 3.0, 50)
    u[3] = np.inf
    save_samples(
        samples,
        x,
        topology=aldp.topology,
        log_weights=lw,
        reduced_energy=u,
        metadata={"system": "aldp-vacuum", "temperature": 300.0, "run_dir": str(run_dir)},
    )
    smc = {
        "ess": [1.0, 0.9, 0.5, 1.0, 0.4, 0.3],
        "t": [1.0, 0.5, 0.01, 0.01, 0.01, 0.01],
        "beta": [0, 0, 0, 0.5, 0.8, 1.0],
        "resampled": [2],
        "min_ess_fraction": 0.3,
        "log_z": -3.0,
        "n_resampling": 1,
    }
    with open(tmp_path / "metrics.json", "w") as handle:
        json.dump({"command": "sample", "output": os.path.abspath(samples), "smc": smc}, handle)
    reference = str(tmp_path / "reference.h5")
    save_samples(
        reference,
        _frames(aldp, 60, rng, n_mirrored=10),
        topology=aldp.topology,
        reduced_energy=rng.normal(-21.0, 3.0, 60),
        metadata={"system": "aldp-vacuum", "temperature": 300.0},
    )
    return samples, reference


def test_cli_analyze_writes_figures_metrics_and_html(tmp_path, aldp, capsys):
    samples, reference = _write_run(tmp_path, aldp)
    out = tmp_path / "report"
    assert main(["analyze", samples, "-o", str(out), "--reference", reference, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert printed == metrics
    for name in (
        "ramachandran.png",
        "torsion_profiles.png",
        "energy_histogram.png",
        "ess_trace.png",
        "training_loss.png",
        "index.html",
    ):
        assert (out / name).stat().st_size > 0, name
    assert set(metrics["figures"]) == {
        "ramachandran",
        "torsion_profiles",
        "energy_histogram",
        "ess_trace",
        "training_loss",
    }
    assert metrics["n"] == 50 and metrics["weighted"] and metrics["n_zero_weight"] == 1
    for key in (
        "ess",
        "ess_fraction",
        "energy_w2",
        "torsion_w2",
        "delta_f_kT",
        "delta_f_err_kT",
        "reference_delta_f_kT",
        "mean_reduced_energy",
    ):
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
    assert 1.0 <= metrics["ess"] <= 49.0
    assert metrics["reference_delta_f_kT"] == pytest.approx(-math.log(10 / 50), abs=1e-9)
    assert metrics["reference_phi_positive_n"] == 10  # the mirrored frames
    assert metrics["phi_positive_n"] == 15  # the mirrored ones (particle 3, without weight, is not)
    page = (out / "index.html").read_text()
    assert '<img src="ramachandran.png"' in page and "energy_w2" in page
    assert not list(out.glob(".*tmp*"))  # atomic writes leave no temporaries


def test_analyze_unweighted_without_reference_smc_or_energies(tmp_path, aldp):
    from boltzgen.report import analyze

    path = str(tmp_path / "md.h5")
    save_samples(path, _frames(aldp, 30, np.random.default_rng(12), n_mirrored=5), topology=aldp.topology)
    metrics = analyze(path, str(tmp_path / "out"))
    assert metrics["weighted"] is False and metrics["ess"] == pytest.approx(30.0)
    assert set(metrics["figures"]) == {"ramachandran", "torsion_profiles"}
    assert metrics["delta_f_kT"] == pytest.approx(-math.log(5 / 25), abs=1e-9)
    assert any("ESS trace skipped" in n for n in metrics["notes"])
    assert any("no reduced energies" in n for n in metrics["notes"])


def test_analyze_uses_a_block_bootstrap_for_md_trajectories(tmp_path, aldp):
    """An MD trajectory (``method: md``, as ``boltzgen simulate`` writes) holds time-ordered frames:
    its ΔF error comes from a block bootstrap (blocks from the correlation of the φ states), larger
    than the plain bootstrap's when the states come in long runs; the same frames from SMC are
    treated as independent."""
    from boltzgen.report import analyze

    rng = np.random.default_rng(21)
    x = _frames(aldp, 512, rng)
    runs = np.repeat(rng.random(64) < 0.3, 8)  # the state changes only every 8 frames
    x[runs] *= -1.0  # mirrored frames have phi > 0
    errors = {}
    for method in ("md", "smc"):
        path = str(tmp_path / f"{method}.h5")
        save_samples(path, x, topology=aldp.topology, metadata={"system": "aldp-vacuum", "method": method})
        metrics = analyze(path, str(tmp_path / method))
        assert metrics["delta_f_kT"] == pytest.approx(-math.log(runs.mean() / (1 - runs.mean())), abs=1e-9)
        errors[method] = (metrics["bootstrap_block_size"], metrics["delta_f_err_kT"])
    assert errors["smc"][0] == 1 and errors["md"][0] >= 8
    assert errors["md"][1] > 2.0 * errors["smc"][1], errors  # sqrt(8) for runs of 8


def test_analyze_toy_target_skips_torsions(tmp_path):
    from boltzgen.report import analyze

    rng = np.random.default_rng(13)
    path, ref = str(tmp_path / "toy.h5"), str(tmp_path / "toy_ref.h5")
    save_samples(path, rng.normal(size=(80, 2)), log_weights=rng.normal(size=80), reduced_energy=rng.normal(size=80))
    save_samples(ref, rng.normal(size=(90, 2)), reduced_energy=rng.normal(size=90))
    metrics = analyze(path, str(tmp_path / "out"), ref, smc_metrics={"ess": [1.0, 0.5, 0.7]})
    assert set(metrics["figures"]) == {"energy_histogram", "ess_trace"}
    assert math.isfinite(metrics["energy_w2"]) and "torsion_w2" not in metrics and "delta_f_kT" not in metrics
    assert any("not a molecular system" in n for n in metrics["notes"])
    # the floor: as many independent draws of the reference as the samples' ESS (no lineages here)
    assert metrics["energy_w2_floor_n"] == pytest.approx(metrics["ess"])
    lw = load_samples(path).log_weights
    assert metrics["energy_w2_floor"] == pytest.approx(
        A.energy_w2_floor(np.asarray(load_samples(ref).reduced_energy), log_w=lw, seed=0)
    )


def test_analyze_notes_reference_at_another_temperature(tmp_path):
    from boltzgen.report import analyze

    rng = np.random.default_rng(15)
    path, ref = str(tmp_path / "a.h5"), str(tmp_path / "b.h5")
    save_samples(path, rng.normal(size=(40, 2)), reduced_energy=rng.normal(size=40), metadata={"temperature_K": 300.0})
    save_samples(ref, rng.normal(size=(40, 2)), reduced_energy=rng.normal(size=40), metadata={"temperature_K": 350.0})
    notes = analyze(path, str(tmp_path / "out"), ref)["notes"]
    assert any("temperatures differ" in n for n in notes)
    save_samples(ref, rng.normal(size=(40, 2)), reduced_energy=rng.normal(size=40), metadata={"temperature_K": 300.0})
    assert not any("temperatures differ" in n for n in analyze(path, str(tmp_path / "out2"), ref)["notes"])


def test_cli_analyze_errors(tmp_path, aldp, capsys):
    samples = str(tmp_path / "s.h5")
    save_samples(samples, _frames(aldp, 5, np.random.default_rng(14)), topology=aldp.topology)
    assert main(["analyze", str(tmp_path / "missing.h5"), "-o", str(tmp_path / "o")]) == 2
    assert "sample file not found" in capsys.readouterr().err
    assert main(["analyze", samples, "-o", str(tmp_path / "o"), "--reference", str(tmp_path / "nope.h5")]) == 2
    assert "reference file not found" in capsys.readouterr().err
    small = str(tmp_path / "small.h5")
    sub = aldp.topology.subset(range(10))
    save_samples(small, np.zeros((4, 10, 3)), topology=sub)
    assert main(["analyze", samples, "-o", str(tmp_path / "o"), "--reference", small]) == 2
    err = capsys.readouterr().err
    assert "22 atoms" in err and "has 10" in err


def test_analyze_bootstraps_over_independent_smc_runs(tmp_path, aldp):
    """A file of pooled SMC runs (``boltzgen sample --runs``, array ``smc_run``) whose φ > 0 weight
    differs from run to run: ΔF's error is the bootstrap over runs, well above the particles' one."""
    from boltzgen.report import analyze

    rng = np.random.default_rng(5)
    x = _frames(aldp, 512, rng)
    positive = rng.random(512) < 0.3
    x[positive] *= -1.0
    run = np.repeat(np.arange(8), 64)
    log_w = np.where(positive, np.array([1.5, -1.5, 0.5, -0.5, 2.0, -2.0, 1.0, -1.0])[run], 0.0)
    errors = {}
    for name, extra in (("pooled", {"smc_run": run}), ("plain", None)):
        path = str(tmp_path / f"{name}.h5")
        save_samples(
            path,
            x,
            topology=aldp.topology,
            log_weights=log_w,
            extra=extra,
            metadata={"system": "aldp-vacuum", "method": "smc"},
        )
        metrics = analyze(path, str(tmp_path / name))
        errors[name] = metrics["delta_f_err_kT"]
        assert metrics.get("bootstrap_runs") == (8 if extra else None)
    assert errors["pooled"] > 3.0 * errors["plain"], errors


def test_analyze_bootstraps_over_the_lineages_a_sample_file_keeps(tmp_path, aldp):
    """A file with ``smc_lineage`` beside ``smc_run``: the clusters of ΔF's bootstrap are the
    lineages, counted in the metrics, and the error differs from the one over the runs alone."""
    from boltzgen.report import analyze

    rng = np.random.default_rng(6)
    x = _frames(aldp, 256, rng)
    lineage = np.repeat(np.arange(32), 8)  # 16 lineages in each of 2 runs, 8 particles each
    positive = (rng.random(32) < 0.4)[lineage]
    x[positive] *= -1.0
    log_w = rng.normal(0.0, 0.7, 32)[lineage]
    extra = {"smc_run": lineage // 16, "smc_lineage": lineage}
    metrics = {}
    for name, kept in (("lineages", extra), ("runs", {"smc_run": extra["smc_run"]})):
        path = str(tmp_path / f"{name}.h5")
        save_samples(path, x, topology=aldp.topology, log_weights=log_w, extra=kept, metadata={"system": "aldp-vacuum"})
        metrics[name] = analyze(path, str(tmp_path / name))
    assert metrics["lineages"]["bootstrap_lineages"] == 32 and metrics["lineages"]["bootstrap_runs"] == 2
    assert "bootstrap_lineages" not in metrics["runs"] and metrics["runs"]["bootstrap_runs"] == 2
    assert metrics["lineages"]["delta_f_kT"] == metrics["runs"]["delta_f_kT"]
    assert metrics["lineages"]["delta_f_err_kT"] != metrics["runs"]["delta_f_err_kT"]


def test_bootstrap_clusters_prefers_lineages_then_runs():
    lw = np.array([0.0, 0.0, -np.inf, 0.0, 0.0, 0.0])
    runs, lineages = np.array([0, 0, 0, 1, 1, 1]), np.array([0, 0, 1, 7, 8, 8])
    groups, method = A.bootstrap_clusters(lw, runs, lineages)
    np.testing.assert_array_equal(groups, lineages)
    # the lineage without weight (label 1) is not counted
    assert method == "bootstrap of the 3 lineages (ancestors at t = 1) of 2 independent SMC runs"
    assert A.bootstrap_clusters(lw, None, lineages)[1].endswith("lineages (ancestors at t = 1) of one SMC run")
    groups, method = A.bootstrap_clusters(lw, runs)
    np.testing.assert_array_equal(groups, runs)
    assert method == "bootstrap of the 2 independent runs"
    assert A.bootstrap_clusters(lw, np.zeros(6, dtype=int)) == (None, "bootstrap of samples")
    assert A.bootstrap_clusters(lw) == (None, "bootstrap of samples")


def test_lineage_bootstrap_of_two_runs_matches_the_spread_of_delta_f():
    """Two runs of 40 independent lineages each (8 particles per lineage, a log-normal weight and a
    state per lineage, 20 % in state B): over 400 repetitions the bootstrap over the lineages gives
    the spread of the pooled ΔF, while the bootstrap over the two runs scatters from far too small
    to large (its error rests on one difference)."""
    from boltzgen.weights import delta_f, delta_f_point

    rng = np.random.default_rng(11)
    lineage = np.repeat(np.arange(80), 8)
    runs = lineage // 40
    values, by_lineage, by_run = [], [], []
    for rep in range(400):
        b = (rng.random(80) < 0.2)[lineage]
        if not b.any() or b.all():
            continue
        lw = rng.normal(0.0, 0.8, 80)[lineage]
        values.append(delta_f_point(lw, ~b, b))
        if rep < 40:
            by_lineage.append(delta_f(lw, ~b, b, groups=lineage, seed=rep).error)
            by_run.append(delta_f(lw, ~b, b, groups=runs, seed=rep).error)
    true_sd = float(np.std(values))
    assert abs(np.sqrt(np.mean(np.square(by_lineage))) / true_sd - 1.0) < 0.2
    assert np.std(by_run) > 2.0 * np.std(by_lineage)  # two clusters: an error that is itself noise
    assert np.median(by_run) < 0.85 * true_sd


# ---------------------------------------------------------------------------- states
def test_state_free_energy_metrics_of_equal_weights():
    labels = np.repeat([0, 1], [30, 10])
    m = A.state_free_energy_metrics(np.zeros(40), labels, ("phi<0", "phi>0"), seed=0)
    assert m["state_counts"] == [30, 10] and m["bootstrap_block_size"] == 1
    assert m["state_free_energies_kT"][0] == 0.0
    assert m["state_free_energies_kT"][1] == pytest.approx(math.log(3), abs=1e-12)
    assert m["delta_f_kT"] == m["state_free_energies_kT"][1] and m["delta_f_err_kT"] > 0
    assert m["delta_f_definition"] == "F(phi>0) - F(phi<0) in kT"
    # a second state without samples: no Delta F, a note; three states: no two-state keys
    empty = A.state_free_energy_metrics(np.zeros(40), np.zeros(40, int), ("a", "b"), seed=0)
    assert empty["delta_f_kT"] is None and "no sample of b has weight" in empty["delta_f_note"]
    assert empty["state_free_energies_kT"] == [0.0, None]
    three = A.state_free_energy_metrics(np.zeros(40), np.repeat([0, 1, 2], [20, 10, 10]), ("a", "b", "c"))
    assert "delta_f_kT" not in three and three["state_free_energies_kT"][2] == pytest.approx(math.log(2))
    no_ref = A.state_free_energy_metrics(np.zeros(40), np.ones(40, int), ("a", "b"))
    assert no_ref["state_free_energies_kT"] is None and "state 0 has no weight" in no_ref["state_free_energies_note"]


def _tri_alanine():
    """Uncapped Ala-Ala-Ala as an mdtraj topology (backbone and CB): two residues have a phi."""
    top = mdtraj.Topology()
    chain = top.add_chain()
    for i in range(3):
        residue = top.add_residue("ALA", chain, resSeq=i + 1)
        for name in ("N", "CA", "CB", "C", "O"):
            top.add_atom(name, mdtraj.element.get_by_symbol(name[0]), residue)
    return top


def test_analyze_peptide_with_several_residues(tmp_path):
    """Per residue a Ramachandran row and phi-sign Delta F, the joint-state free energies, and the
    reference torsions; unweighted samples give exact -ln count ratios."""
    from boltzgen.report import analyze
    from boltzgen.states import backbone_states, basin_states_of, default_states

    top = _tri_alanine()
    x = np.random.default_rng(3).normal(0.0, 0.3, (300, top.n_atoms, 3))
    path, ref = str(tmp_path / "aaa.h5"), str(tmp_path / "ref.h5")
    save_samples(path, x, topology=top)
    save_samples(ref, x[::-1].copy(), topology=top)
    metrics = analyze(path, str(tmp_path / "out"), reference=ref)
    assert set(metrics["figures"]) == {"ramachandran", "torsion_profiles"}
    assert metrics["states"]["names"] == list(default_states(top).names) and len(metrics["states"]["names"]) == 4
    counts = np.bincount(default_states(top).assign(x), minlength=4)
    assert metrics["state_counts"] == counts.tolist()
    np.testing.assert_allclose(metrics["state_free_energies_kT"], -np.log(counts / counts[0]), atol=1e-9)
    assert "delta_f_kT" not in metrics and "phi_positive_n" not in metrics  # four states, two residues
    assert list(metrics["per_residue"]) == ["ALA2", "ALA3"]
    for states in backbone_states(top):
        n_pos = int(states.assign(x).sum())
        entry = metrics["per_residue"][states.name[4:-1]]
        assert entry["phi_positive_n"] == n_pos and entry["reference_phi_positive_n"] == n_pos
        assert entry["delta_f_kT"] == pytest.approx(-math.log(n_pos / (300 - n_pos)), abs=1e-9)
        assert entry["reference_delta_f_kT"] == pytest.approx(entry["delta_f_kT"], abs=1e-9)
    assert metrics["torsion_w2"] == pytest.approx(0.0, abs=1e-12)  # the same frames in another order
    # per residue with both torsions (ALA3, the last, has no psi here)
    assert metrics["per_residue"]["ALA2"]["torsion_w2"] == pytest.approx(0.0, abs=1e-12)
    assert "torsion_w2" not in metrics["per_residue"]["ALA3"]
    other = str(tmp_path / "other.h5")
    save_samples(other, np.random.default_rng(4).normal(0.0, 0.3, (300, top.n_atoms, 3)), topology=top)
    shifted = analyze(path, str(tmp_path / "out2"), reference=other)
    assert shifted["per_residue"]["ALA2"]["torsion_w2"] == pytest.approx(shifted["torsion_w2"], rel=1e-9)
    assert shifted["torsion_w2"] > 0.05
    # Ramachandran basins of each residue with phi and psi (ALA2 here): -ln count ratios to beta/PII
    basins = basin_states_of(top, "ALA2").assign(x)
    entry = metrics["per_residue"]["ALA2"]
    counts = np.bincount(basins, minlength=3)
    assert entry["basins"] == ["beta_PII", "alpha_R", "phi>0"] and entry["basin_counts"] == counts.tolist()
    np.testing.assert_allclose(entry["basin_free_energies_kT"], -np.log(counts / counts[0]), atol=1e-9)
    np.testing.assert_allclose(entry["reference_basin_free_energies_kT"], entry["basin_free_energies_kT"], atol=1e-9)
    assert (
        all(e > 0 for e in entry["basin_free_energies_err_kT"][1:]) and "basins" not in metrics["per_residue"]["ALA3"]
    )
    page = (tmp_path / "out" / "index.html").read_text()
    assert "<h2>States</h2>" in page and "<td>ALA3</td>" in page
    assert "Ramachandran basins" in page and "<td>alpha_R</td>" in page


def test_analyze_molecule_without_backbone_notes_it(tmp_path):
    from boltzgen.report import analyze

    top = mdtraj.Topology()
    residue = top.add_residue("LJ", top.add_chain())
    for _ in range(4):
        top.add_atom("Ar", mdtraj.element.argon, residue)
    path = str(tmp_path / "lj.h5")
    save_samples(path, np.random.default_rng(0).normal(size=(20, 4, 3)), topology=top)
    metrics = analyze(path, str(tmp_path / "out"))
    assert "states" not in metrics and "ramachandran" not in metrics["figures"]
    assert any("no backbone phi and psi torsion" in n for n in metrics["notes"])


def test_energy_w2_floor_is_the_exact_mean_for_a_two_point_reference():
    # Reference: values 0 and 1 with equal weight. n draws with k zeros have W2^2 = |k/n - 1/2|
    # (the quantile functions differ by 1 on a mass |k/n - 1/2|), so E[W2] is a binomial sum.
    from scipy.stats import binom

    ref = np.array([0.0, 1.0])
    for n in (4, 25, 100):
        k = np.arange(n + 1)
        exact = float(np.sum(binom.pmf(k, n, 0.5) * np.sqrt(np.abs(k / n - 0.5))))
        floor = A.energy_w2_floor(ref, n, n_draws=4000, seed=1)
        assert floor == pytest.approx(exact, rel=0.03)
    # weights of the reference are used: all weight on 1 leaves nothing to miss
    assert A.energy_w2_floor(ref, 10, log_w_ref=np.array([-np.inf, 0.0])) == 0.0


def test_energy_w2_floor_of_a_weighted_sample():
    ref = np.array([0.0, 1.0])
    # equal weights are n unweighted draws (the same draws for the same seed)
    assert A.energy_w2_floor(ref, log_w=np.zeros(25), seed=4) == pytest.approx(A.energy_w2_floor(ref, 25, seed=4))
    # all weight on one of 40 particles: one draw, W2 = sqrt(1/2) whichever value it takes
    one = np.full(40, -np.inf)
    one[7] = 0.0
    assert A.energy_w2_floor(ref, log_w=one, n_draws=20) == pytest.approx(math.sqrt(0.5))
    # uneven weights resolve less than as many equal ones, more than their Kish ESS of draws
    lw = np.log(np.random.default_rng(3).exponential(size=400))
    ess = float(np.exp(2 * np.logaddexp.reduce(lw) - np.logaddexp.reduce(2 * lw)))
    gauss = np.random.default_rng(5).normal(size=20000)
    weighted = A.energy_w2_floor(gauss, log_w=lw, n_draws=200, seed=6)
    assert (
        A.energy_w2_floor(gauss, 400, n_draws=200, seed=6)
        < weighted
        < A.energy_w2_floor(gauss, ess, n_draws=200, seed=6)
    )
    with pytest.raises(ValueError, match="either n"):
        A.energy_w2_floor(ref)
    with pytest.raises(ValueError, match="either n"):
        A.energy_w2_floor(ref, 10, log_w=np.zeros(10))


def test_energy_w2_floor_falls_like_one_over_root_n_and_rejects_bad_input():
    ref = np.random.default_rng(0).normal(size=20000)
    f100, f1600 = (A.energy_w2_floor(ref, n, n_draws=200, seed=2) for n in (100, 1600))
    assert 2.5 < f100 / f1600 < 6.0  # 4x for a pure 1/sqrt(n) law; slower tails add a little
    with pytest.raises(ValueError, match="finite"):
        A.energy_w2_floor(ref, float("nan"))
    with pytest.raises(ValueError, match="n_draws"):
        A.energy_w2_floor(ref, 10, n_draws=0)
