"""``boltzgen reweight --log-q-from-energy``: the proposal given as potential energies U_A (MD under
force field A reweighted to B), log q = −U_A / (k_B T_A) up to a constant."""

import re

import numpy as np
import pytest
import torch

import boltzgen.systems as systems
from boltzgen.cli import main
from boltzgen.io import load_samples, save_samples
from boltzgen.reweight import log_q_from_energy, reweight_samples
from boltzgen.units import kT_of

N = 64


@pytest.fixture(scope="module")
def gmm_case(tmp_path_factory):
    """Samples of a Gaussian N(0, 1.5^2 I) in 2-D (known log q) for gmm-two-modes: a file without
    log q and one with it."""
    d = tmp_path_factory.mktemp("energy")
    rng = np.random.default_rng(3)
    sigma = 1.5
    x = rng.normal(0.0, sigma, (N, 2))
    log_q = -0.5 * (x**2).sum(1) / sigma**2 - np.log(2 * np.pi * sigma**2)
    bare, with_q = str(d / "bare.h5"), str(d / "with_q.h5")
    save_samples(bare, x)
    save_samples(with_q, x, log_q=log_q)
    return d, x, log_q, bare, with_q


def _reweight(path, out, *extra):
    return main(["reweight", path, "--system", "gmm-two-modes", "-o", str(out), "--no-progress", *extra])


def test_energies_give_the_log_weights_of_log_q(gmm_case, tmp_path):
    d, x, log_q, bare, with_q = gmm_case
    target = systems.load("gmm-two-modes")
    assert _reweight(with_q, tmp_path / "direct.h5") == 0
    direct = load_samples(str(tmp_path / "direct.h5")).log_weights
    u_b = target.reduced_energy(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(direct, -u_b - log_q, atol=1e-12)

    # U_A at 350 K as a text file (plus an arbitrary constant), and at the target's temperature as .npy
    t_a = 350.0
    np.savetxt(d / "u_350.txt", -log_q * kT_of(t_a) + 123.4)
    np.save(d / "u_default.npy", -log_q * target.kT - 5.0)
    for name, extra in (
        ("txt", ["--log-q-from-energy", str(d / "u_350.txt"), "--proposal-temperature", "350"]),
        ("npy", ["--log-q-from-energy", str(d / "u_default.npy")]),
    ):
        out = tmp_path / f"{name}.h5"
        assert _reweight(bare, out, *extra) == 0
        lw = load_samples(str(out)).log_weights
        shift = lw - direct
        np.testing.assert_allclose(shift, shift[0], atol=1e-9)

    # the Python function: same weights, the source and temperature recorded
    metrics = reweight_samples(
        bare, target, out_path=str(tmp_path / "py.h5"), log_q_from_energy=str(d / "u_350.txt"), proposal_temperature=350
    )
    assert metrics["log_q_source"] == f"energy:{d / 'u_350.txt'} at 350 K"
    shift = load_samples(str(tmp_path / "py.h5")).log_weights - direct
    np.testing.assert_allclose(shift, shift[0], atol=1e-9)
    lq, source = log_q_from_energy(-log_q * kT_of(t_a), N, t_a)
    np.testing.assert_allclose(lq, log_q, rtol=1e-12)
    assert source == "energy:array at 350 K"


def test_energy_errors_exit_2_naming_the_problem(gmm_case, tmp_path, capsys):
    d, x, log_q, bare, with_q = gmm_case
    never = tmp_path / "never.h5"
    np.savetxt(d / "short.txt", -log_q[:-1])
    np.savetxt(d / "nan.txt", np.where(np.arange(N) == 7, np.nan, -log_q))
    np.save(d / "good.npy", -log_q)
    good = str(d / "good.npy")
    weighted = str(d / "weighted.h5")
    save_samples(weighted, x, log_weights=np.where(np.arange(N) < 10, -np.inf, 0.0))
    positive = "proposal temperature \\(--proposal-temperature\\) must be positive \\(kelvin\\)"
    cases = [
        ([bare, "--log-q-from-energy", str(d / "short.txt")], f"has {N - 1} energies but the samples have {N} frames"),
        ([bare, "--log-q-from-energy", str(d / "nan.txt")], "non-finite energies at 1 frames \\(indices 7\\)"),
        ([bare, "--log-q-from-energy", good, "--proposal-temperature", "0"], f"{positive}, got 0$"),
        ([bare, "--log-q-from-energy", good, "--proposal-temperature", "-5"], f"{positive}, got -5$"),
        ([with_q, "--proposal-temperature", "300"], "--proposal-temperature\\) needs proposal energies"),
        ([with_q, "--log-q-from-energy", good], "already carries a 'log_q' array .* ambiguous"),
        ([bare, "--log-q-from-energy", good, "--log-q", good], "not both"),
        ([weighted, "--log-q-from-energy", good], "carries unequal log_weights"),
        ([bare, "--log-q-from-energy", str(d / "missing.txt")], "proposal energy file not found"),
    ]
    for argv, message in cases:
        assert _reweight(argv[0], never, *argv[1:]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("boltzgen reweight: error: ") and err.count("\n") == 1, err
        assert re.search(message, err.rstrip("\n")), (message, err)
    assert not never.exists()
