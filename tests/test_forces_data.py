"""Forces in the training data: stored by `boltzgen simulate`, computed for files without them, and
used by `boltzgen train` for target score matching with diagnostics in its metrics."""

import json

import numpy as np
import pytest
import torch

from boltzgen import systems
from boltzgen.cli import main
from boltzgen.io import load_samples, save_samples


def test_simulate_stores_forces_that_match_finite_differences(tmp_path):
    out = tmp_path / "aldp.h5"
    args = ["simulate", "aldp-vacuum", "-n", "3", "-o", str(out), "--replicas", "1", "--equilibration", "50"]
    assert main([*args, "--stride", "20", "--workers", "0", "--no-progress", "--seed", "1"]) == 0
    samples = load_samples(str(out))
    assert samples.reduced_force is not None and samples.reduced_force.shape == (3, 22, 3)
    target = systems.load("aldp-vacuum", n_workers=0)
    try:
        x = torch.from_numpy(samples.x)
        rng = np.random.default_rng(0)
        h = 1e-5  # nm
        for b in range(3):
            v = torch.from_numpy(rng.normal(size=(22, 3)))
            v /= v.norm()
            plus, minus = target.reduced_energy(torch.stack([x[b] + h * v, x[b] - h * v]))
            fd = float(plus - minus) / (2 * h)  # du/dh along v = -f.v
            analytic = -float((torch.from_numpy(samples.reduced_force[b]) * v).sum())
            assert fd == pytest.approx(analytic, rel=1e-4, abs=1e-2)
        # and the same as a direct OpenMM call (kT/nm)
        import openmm
        import openmm.unit as unit

        context = openmm.Context(
            target.system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference")
        )
        context.setPositions(samples.x[0])
        forces = (
            context.getState(getForces=True)
            .getForces(asNumpy=True)
            .value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
        )
        kT = float(target.kT)  # kJ/mol
        np.testing.assert_allclose(samples.reduced_force[0], forces / kT, rtol=1e-6, atol=1e-6)
    finally:
        target.close()


def test_train_computes_missing_forces_and_reports_diagnostics(tmp_path):
    target = systems.load("gmm-two-modes")
    x = target.sample(300, torch.Generator().manual_seed(0))
    u = target.reduced_energy(x).detach().numpy()
    data = tmp_path / "gmm.h5"
    save_samples(str(data), x.numpy(), reduced_energy=u, metadata={"system": "gmm-two-modes"})  # no forces
    config = tmp_path / "c.yaml"
    config.write_text(
        "net: {kind: mlp, hidden: 16, n_layers: 2}\nloss: {kind: dsm, k: 1, target_score: true, lambda_pin: 0.1}\n"
        "train: {steps: 6, batch_size: 16, val_every: 3, checkpoint_every: 3, log_every: 3}\n"
    )
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "-o", str(run), "--config", str(config), "--no-progress"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    kappa = metrics["kappa"]
    # the mixture's mean stiffness (model units) is that of its components, of order 1/std^2
    assert 1.0 < kappa < 1e4
    val = metrics["validation"]
    for key in ("val_pin", "val_energy_gap_std_kT", "val_score_residual_t0.01"):
        assert key in val and np.isfinite(val[key])
    header = (run / "train_log.csv").read_text().splitlines()[0].split(",")
    assert "val_energy_gap_std_kT" in header and "pin" in header


def test_target_score_without_forces_or_system_is_a_clear_error(tmp_path, capsys):
    data = tmp_path / "plain.h5"
    save_samples(str(data), np.random.default_rng(0).normal(size=(50, 2)))
    config = tmp_path / "c.yaml"
    config.write_text(
        "net: {kind: mlp, hidden: 8, n_layers: 1}\nloss: {kind: dsm, k: 1, target_score: true}\ntrain: {steps: 2, batch_size: 8}\n"
    )
    assert (
        main(["train", "--data", str(data), "-o", str(tmp_path / "r"), "--config", str(config), "--no-progress"]) == 2
    )
    assert "loss.target_score needs the forces" in capsys.readouterr().err
