"""The reweighting workflow on a real alanine-dipeptide sample file and an exact toy target."""

import json
import math

import mdtraj
import numpy as np
import pytest
import torch

import boltzgen.systems as systems
from boltzgen import weights as W
from boltzgen.io import load_samples, save_samples
from boltzgen.reweight import reweight_samples


@pytest.fixture(scope="module")
def aldp():
    target = systems.load("aldp-vacuum", n_workers=0)
    yield target
    target.close()


@pytest.fixture(scope="module")
def aldp_file(aldp, tmp_path_factory):
    """32 frames: start positions + 0.002 nm noise; frames 24-31 mirrored (phi > 0)."""
    rng = np.random.default_rng(0)
    x = aldp.positions.numpy()[None] + 0.002 * rng.standard_normal((32, 22, 3))
    x[24:] *= -1.0
    log_q = rng.normal(-50.0, 3.0, 32)
    path = tmp_path_factory.mktemp("aldp") / "samples.h5"
    save_samples(str(path), x, topology=aldp.topology, log_q=log_q, metadata={"system": "aldp-vacuum", "seed": 0})
    return path, log_q


def test_reweight_aldp_file(aldp, aldp_file, tmp_path):
    path, log_q = aldp_file
    out = tmp_path / "weighted.h5"
    metrics = reweight_samples(str(path), aldp, out_path=str(out), seed=0)
    stored = load_samples(str(path))
    u = aldp.reduced_energy(torch.from_numpy(stored.x)).numpy()
    result = load_samples(str(out))
    # Energies are exactly the target's, in float64, for the stored coordinates.
    assert result.reduced_energy.dtype == np.float64
    np.testing.assert_array_equal(result.reduced_energy, u)
    np.testing.assert_array_equal(result.log_q, log_q)
    np.testing.assert_array_equal(result.log_weights, -u - log_q)
    np.testing.assert_array_equal(result.x, stored.x)
    assert mdtraj.load(str(out)).n_frames == 32
    meta = result.metadata
    assert meta["system"] == "aldp-vacuum" and meta["source_file"] == str(path.resolve())
    assert meta["forcefield"] == ["amber99sbildn.xml"] and meta["source_metadata"]["seed"] == 0
    lw = -u - log_q
    assert metrics["n"] == 32 and metrics["n_infinite_energy"] == 0
    assert metrics["ess"] == pytest.approx(W.ess(lw)) and metrics["ess_fraction"] == pytest.approx(W.ess(lw) / 32)
    assert metrics["log_z"] == pytest.approx(W.log_z(lw).value)
    # Alanine dipeptide: Delta F(phi > 0 vs phi < 0) from the 8 mirrored frames.
    assert metrics["states"] == {"name": "phi", "names": ["phi<0", "phi>0"]}
    assert metrics["state_counts"] == [24, 8] and metrics["bootstrap_block_size"] == 1
    df = W.delta_f(lw, np.arange(32) < 24, np.arange(32) >= 24, seed=0)
    assert metrics["delta_f_kT"] == df.value and metrics["delta_f_err_kT"] == df.error
    assert metrics["state_free_energies_kT"] == [0.0, df.value]
    assert metrics["state_free_energies_err_kT"] == [0.0, df.error]
    assert metrics["delta_f_definition"] == "F(phi>0) - F(phi<0) in kT"
    json.dumps(metrics)
    # log q given as an array, as the name of an array in the file, or as a .npy path: same weights.
    np.save(tmp_path / "lq.npy", log_q)
    for spec in (log_q, "log_q", str(tmp_path / "lq.npy")):
        again = reweight_samples(str(path), aldp, log_q=spec, seed=0)
        assert again["ess"] == metrics["ess"] and again["log_z"] == metrics["log_z"]


def test_reweight_errors_are_clear(aldp, aldp_file, tmp_path):
    path, log_q = aldp_file
    x = load_samples(str(path)).x
    top = aldp.topology
    never = str(tmp_path / "never.h5")  # every call below fails, so none may write its output

    short = tmp_path / "short.h5"
    save_samples(str(short), x[:, :21], topology=top.subset(range(21)), log_q=log_q)
    with pytest.raises(
        ValueError, match="wrong atom count: the samples have 21 atoms but the target aldp-vacuum has 22"
    ):
        reweight_samples(str(short), aldp, out_path=never)

    swapped = top.copy()
    h1, h2 = swapped.atom(0), swapped.atom(2)
    h1.name, h2.name = h2.name, h1.name
    names = tmp_path / "names.h5"
    save_samples(str(names), x, topology=swapped, log_q=log_q)
    with pytest.raises(
        ValueError,
        match="2 atoms differ\\): atom 0 is named H2 in the samples but H1 in the target; atom 2 is named H1",
    ):
        reweight_samples(str(names), aldp, out_path=never)

    elements = top.copy()
    c, o = elements.atom(4), elements.atom(5)
    c.name, o.name, c.element, o.element = o.name, c.name, o.element, c.element
    order = tmp_path / "order.h5"
    save_samples(str(order), x, topology=elements, log_q=log_q)
    with pytest.raises(
        ValueError,
        match="atom 4 is O in the samples but C in the target; atom 5 is C in the samples but O in the target",
    ):
        reweight_samples(str(order), aldp, out_path=never)

    bad = x.copy()
    bad[3, 0, 0] = np.nan
    bad[7, 5, 2] = np.inf
    nan_file = tmp_path / "nan.h5"
    save_samples(str(nan_file), bad, topology=top, log_q=log_q)
    with pytest.raises(ValueError, match="2 of 32 configurations .* non-finite coordinates \\(indices 3, 7\\)"):
        reweight_samples(str(nan_file), aldp, out_path=never)

    no_q = tmp_path / "noq.h5"
    save_samples(str(no_q), x, topology=top)
    with pytest.raises(ValueError, match="no proposal log-density: .*noq.h5 has no 'log_q' array"):
        reweight_samples(str(no_q), aldp, out_path=never)
    with pytest.raises(ValueError, match="'missing' is neither an array in .* nor an existing .npy file"):
        reweight_samples(str(no_q), aldp, log_q="missing", out_path=never)
    with pytest.raises(ValueError, match="log q has shape \\(31,\\) but there are 32 samples"):
        reweight_samples(str(no_q), aldp, log_q=log_q[:31], out_path=never)
    with pytest.raises(ValueError, match="log q is not finite at 1 samples \\(indices 4\\)"):
        reweight_samples(str(no_q), aldp, log_q=np.where(np.arange(32) == 4, np.nan, log_q), out_path=never)
    assert not (tmp_path / "never.h5").exists()
    # the same output path is written by a call that succeeds
    reweight_samples(str(path), aldp, out_path=never)
    assert load_samples(never).log_weights.shape == (32,)


def test_reweight_exact_proposal_gives_uniform_weights(tmp_path):
    # Samples from the normalised gmm-two-modes target itself, log q = log p = -u: every log w is 0.
    target = systems.load("gmm-two-modes", dim=3)
    x = target.sample(500, generator=torch.Generator().manual_seed(0))
    log_q = -target.reduced_energy(x).numpy()
    path = tmp_path / "gmm.h5"
    save_samples(str(path), x, log_q=log_q)
    out = tmp_path / "w.h5"
    metrics = reweight_samples(str(path), target, out_path=str(out))
    assert metrics["ess_fraction"] == pytest.approx(1.0, abs=1e-12)
    assert metrics["log_z"] == pytest.approx(0.0, abs=1e-12) and metrics["log_z_err"] == pytest.approx(0.0, abs=1e-6)
    assert "delta_f_kT" not in metrics and "states_note" in metrics  # no states: skipped with a note
    assert np.abs(load_samples(str(out)).log_weights).max() < 1e-12
    with pytest.raises(
        ValueError, match="configurations of shape \\(3,\\) but the target gmm-two-modes expects \\(2,\\)"
    ):
        reweight_samples(str(path), systems.load("gmm-two-modes", dim=2))


def test_reweight_uses_a_block_bootstrap_for_md_trajectories(aldp, tmp_path):
    """The frames of an MD file (``method: md``) are correlated: with states in runs of 8 frames
    the default error is the block bootstrap's (block ≥ 8), about sqrt(8) times the plain one,
    which ``block_size=1`` still gives; a file of independent samples gets the plain bootstrap."""
    rng = np.random.default_rng(2)
    x = aldp.positions.numpy()[None] + 0.002 * rng.standard_normal((256, 22, 3))
    runs = np.repeat(rng.random(32) < 0.3, 8)
    x[runs] *= -1.0
    log_q = -aldp.reduced_energy(torch.from_numpy(x)).numpy()  # equal weights: the states' counts decide
    path = str(tmp_path / "md.h5")
    save_samples(path, x, topology=aldp.topology, log_q=log_q, metadata={"system": "aldp-vacuum", "method": "md"})
    md = reweight_samples(path, aldp, seed=0)
    plain = reweight_samples(path, aldp, seed=0, block_size=1)
    assert md["bootstrap_block_size"] >= 8 and plain["bootstrap_block_size"] == 1
    assert md["delta_f_kT"] == plain["delta_f_kT"]
    assert md["delta_f_err_kT"] > 2.0 * plain["delta_f_err_kT"]
    fixed = reweight_samples(path, aldp, seed=0, block_size=8)
    assert fixed["bootstrap_block_size"] == 8
    # a reweighted MD file is still an MD trajectory; SMC particles are not
    out = str(tmp_path / "w.h5")
    reweight_samples(path, aldp, seed=0, out_path=out)
    assert reweight_samples(out, aldp, log_q=log_q, seed=0)["bootstrap_block_size"] >= 8
    save_samples(path, x, topology=aldp.topology, log_q=log_q, metadata={"system": "aldp-vacuum", "method": "smc"})
    assert reweight_samples(path, aldp, seed=0)["bootstrap_block_size"] == 1


def test_cli_reweight(aldp_file, tmp_path, capsys):
    from boltzgen import cli

    path, _ = aldp_file
    out = tmp_path / "cli" / "w.h5"
    assert (
        cli.main(
            [
                "reweight",
                str(path),
                "--system",
                "aldp-vacuum",
                "--workers",
                "0",
                "--log-q",
                "log_q",
                "-o",
                str(out),
                "--json",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed["command"] == "reweight" and printed["n"] == 32 and math.isfinite(printed["delta_f_kT"])
    assert json.loads((out.parent / "metrics.json").read_text())["ess"] == printed["ess"]
    assert load_samples(str(out)).log_weights.shape == (32,)
    assert (
        cli.main(
            ["reweight", str(path), "--system", "aldp-vacuum", "--workers", "0", "--log-q", "nope", "-o", str(out)]
        )
        == 2
    )
    assert "neither an array" in capsys.readouterr().err
    assert (
        cli.main(
            [
                "reweight",
                str(path),
                "--system",
                "aldp-vacuum",
                "--workers",
                "0",
                "--log-q",
                "log_q",
                "-o",
                str(out),
                "--json",
                "--block-size",
                "4",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["bootstrap_block_size"] == 4
    with pytest.raises(SystemExit):
        cli.main(
            ["reweight", str(path), "--system", "aldp-vacuum", "--log-q", "log_q", "-o", str(out), "--block-size", "0"]
        )
    assert "block size must be a positive integer or 'auto'" in capsys.readouterr().err


def test_weighted_samples_reweight_to_another_target_without_log_q(tmp_path):
    """Samples weighted for a target A (SMC output: log_weights and reduced_energy, no log_q) are
    reweighted to B as log w_B = log w_A + u_A − u_B (up to one constant); zero weights stay zero."""
    from boltzgen.reweight import reweight_samples, weighted_log_q
    from boltzgen.systems import load

    target = load("gmm-two-modes", dim=2)
    rng = np.random.default_rng(5)
    x = rng.normal(0.0, 1.5, (200, 2))
    u_a = 0.5 * (x**2).sum(1) / 2.0  # any energy of the samples' own target
    lw_a = rng.normal(0.0, 0.7, 200)
    lw_a[:3] = -np.inf
    path = str(tmp_path / "weighted.h5")
    save_samples(path, x, log_weights=lw_a, reduced_energy=u_a)
    out = str(tmp_path / "b.h5")
    metrics = reweight_samples(path, target, out_path=out)
    assert metrics["log_q_source"] == "file:-reduced_energy-log_weights"
    lw_b = load_samples(out).log_weights
    u_b = target.reduced_energy(torch.from_numpy(x)).numpy()
    expected = lw_a + u_a - u_b
    assert np.all(np.isneginf(lw_b[:3]))
    shift = lw_b[3:] - expected[3:]
    np.testing.assert_allclose(shift, shift[0], atol=1e-9)
    np.testing.assert_array_equal(np.isinf(weighted_log_q([0.0, -np.inf], [1.0, 2.0])), [False, True])


def test_md_of_one_target_reweights_to_another_from_its_energies(tmp_path):
    """Frames of boltzgen simulate (samples of exp(-u_A)) need no log q: log w_B = u_A - u_B + const."""
    from boltzgen.cli import main

    data = str(tmp_path / "a.h5")
    assert main(["simulate", "gmm-two-modes", "-n", "50", "-o", data, "--no-progress"]) == 0
    out = str(tmp_path / "b.h5")
    assert main(["reweight", data, "--system", "gmm-40", "-o", out]) == 0
    a, b = load_samples(data), load_samples(out)
    u_b = systems.load("gmm-40").reduced_energy(torch.from_numpy(a.x)).numpy()
    shift = b.log_weights - (a.reduced_energy - u_b)
    np.testing.assert_allclose(shift, shift[0], atol=1e-8)
