"""Free energies between targets and temperature transfer (issue 23), against exact answers."""

import math

import numpy as np
import pytest
import torch

from boltzgen.free_energy import check_same_particles, delta_f_from_model, delta_f_from_samples
from boltzgen.sampling.exact import ExactMarginalModel
from boltzgen.sampling.settings import SMCSettings
from boltzgen.systems import GaussianMixture, TemperedTarget
from boltzgen.weights import bar


def two_modes(separation=12.0, dim=2):
    """Well separated modes (tempering leaves their overlap below 1e-9): exact tempered answers."""
    direction = np.ones(dim) / np.sqrt(dim)
    means = np.stack([-0.5 * separation * direction, 0.5 * separation * direction])
    return GaussianMixture(means, np.ones(2), [2.0, 1.0], name="two")


def tempered_exact(gmm, beta):
    """log Z of p^beta and the mode weights of p^beta / Z for modes that do not overlap."""
    d = gmm.event_shape[0]
    s2 = gmm.stds[:, 0].numpy() ** 2
    log_terms = beta * np.log(gmm.weights.numpy()) + 0.5 * d * (1 - beta) * np.log(2 * math.pi * s2)
    log_terms -= 0.5 * d * math.log(beta)
    log_z = float(np.logaddexp.reduce(log_terms))
    return log_z, np.exp(log_terms - log_z)


def test_bar_recovers_gaussian_free_energy_with_and_without_weights():
    rng = np.random.default_rng(0)
    x_a, x_b = rng.standard_normal(4000), 2.0 * rng.standard_normal(3000)

    def du(x):  # u_B - u_A for u_A = x^2/2, u_B = x^2/8: F_B - F_A = -log 2
        return x**2 / 8 - x**2 / 2

    plain = bar(du(x_a), du(x_b), seed=1)
    assert abs(plain.value + math.log(2)) < 4 * plain.error and plain.error < 0.03
    x_q = 1.5 * rng.standard_normal(6000)  # A's samples from another proposal, importance weighted
    log_w = -(x_q**2) / 2 + x_q**2 / (2 * 2.25)
    weighted = bar(du(x_q), du(x_b), log_w_a=log_w, seed=1)
    assert abs(weighted.value + math.log(2)) < 4 * weighted.error
    with pytest.raises(ValueError, match="not finite"):
        bar(np.array([np.inf, 0.0]), du(x_b))


def test_temperature_transfer_from_exact_samples():
    gmm = two_modes()
    hot = TemperedTarget(gmm, 2.0 * gmm.temperature)  # beta = 1/2
    log_z, weights = tempered_exact(gmm, 0.5)
    g = torch.Generator().manual_seed(0)
    x_a = gmm.sample(4000, g)
    comp = torch.multinomial(torch.as_tensor(weights), 4000, replacement=True, generator=g)
    x_b = gmm.means[comp] + math.sqrt(2.0) * gmm.stds[comp] * torch.randn(4000, 2, generator=g)
    out = delta_f_from_samples(gmm, hot, x_a, x_b)
    assert abs(out["delta_f_kT"] + log_z) < 4 * out["delta_f_err_kT"] + 1e-6
    assert out["delta_f_err_kT"] < 0.05


def test_smc_from_one_model_gives_free_energy_and_mode_weights_of_a_tempered_target():
    gmm = two_modes()
    hot = TemperedTarget(gmm, 2.0 * gmm.temperature)
    log_z, weights = tempered_exact(gmm, 0.5)
    model = ExactMarginalModel(gmm, t_min=1e-3)
    settings = SMCSettings.from_dict({"diffusion": {"n_steps": 40}, "anneal": {"n_levels": 16}})
    out = delta_f_from_model(
        model, gmm, hot, n=2000, runs=4, settings=settings, generator=torch.Generator().manual_seed(1)
    )
    assert abs(out["delta_f_kT"] + log_z) < 4 * out["delta_f_err_kT"] + 0.02
    assert abs(out["bar"]["delta_f_kT"] + log_z) < 4 * out["bar"]["delta_f_err_kT"] + 0.02
    assert abs(out["log_z_a"]) < 0.05  # the exact model of A: log Z_A = 0
    x, lw = out["samples"]["x_b"], out["samples"]["log_w_b"]
    w = np.exp(lw - lw.max())
    w /= w.sum()
    first = float(w[x @ gmm.means[0].numpy() > 0].sum())
    assert abs(first - weights[0]) < 0.05  # mode weight at the new temperature


def test_different_particles_are_refused():
    with pytest.raises(ValueError, match="same particles"):
        check_same_particles(two_modes(dim=2), two_modes(dim=3))


def test_free_energy_command_md_route_and_errors(tmp_path, capsys):
    import json

    from boltzgen.cli import main
    from boltzgen.systems import load

    gmm = load("gmm-two-modes")
    xs = np.linspace(-6, 6, 801)
    grid = np.stack(np.meshgrid(xs, xs), -1).reshape(-1, 2)
    exact = -math.log(np.exp(0.5 * gmm.log_prob(torch.as_tensor(grid)).numpy()).sum() * (xs[1] - xs[0]) ** 2)
    hot = tmp_path / "hot.yaml"  # the second end as a target file
    hot.write_text(f"system: gmm-two-modes\ntemperature: {2 * gmm.temperature}\n")
    argv = ["free-energy", "--from", "gmm-two-modes", "--to", str(hot)]
    assert main([*argv, "-o", str(tmp_path / "fe"), "--frames", "3000", "--no-progress", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert abs(out["delta_f_kT"] - exact) < 4 * out["delta_f_err_kT"] + 0.01
    assert (
        out["route"] == "md"
        and json.loads((tmp_path / "fe" / "metrics.json").read_text())["delta_f_kT"] == out["delta_f_kT"]
    )
    assert main([*argv, "--samples-from", str(tmp_path / "fe" / "md_from.h5")]) == 2
    assert "sample files of both ends" in capsys.readouterr().err
    assert main(["free-energy", "--from", "nope", "--to", "lj13"]) == 2
    assert "--from: 'nope' is neither a built-in system" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("sequence: AAA\nsolvant: obc2\n")
    assert main(["free-energy", "--from", str(bad), "--to", "lj13"]) == 2
    assert "solvant: unknown key" in capsys.readouterr().err
    assert main(["free-energy", "--from", "lj13", "--to", "lj55", "-o", str(tmp_path / "x")]) == 2
    assert "same particles" in capsys.readouterr().err


def test_same_atom_count_but_other_atoms_is_named():
    from boltzgen.systems import from_sequence

    a, b = from_sequence("AS", n_workers=0), from_sequence("SA", n_workers=0)
    try:
        assert a.event_shape == b.event_shape
        with pytest.raises(ValueError, match="different molecules"):
            check_same_particles(a, b)
    finally:
        a.close()
        b.close()


def test_transfer_tempering_tempers_the_proposal_and_stays_exact():
    from boltzgen.free_energy import transfer_tempering

    gmm = two_modes()
    hot = TemperedTarget(gmm, 2.0 * gmm.temperature)
    log_z, weights = tempered_exact(gmm, 0.5)
    model = ExactMarginalModel(gmm, t_min=1e-3)
    model.metadata = {"target": {"temperature": gmm.temperature}}
    settings = SMCSettings.from_dict({"diffusion": {"n_steps": 40}, "anneal": {"n_levels": 16}})
    tempered = transfer_tempering(settings, model, hot)
    assert tempered.diffusion.tempering == pytest.approx(0.5)
    assert transfer_tempering(settings, model, gmm).diffusion.tempering == 1.0  # not hotter: untouched
    out = delta_f_from_model(
        model,
        gmm,
        hot,
        n=2000,
        runs=4,
        settings=settings,
        settings_b=tempered,
        generator=torch.Generator().manual_seed(3),
    )
    assert abs(out["delta_f_kT"] + log_z) < 4 * out["delta_f_err_kT"] + 0.02
    assert out["ess_b"] > 0.8  # the tempered proposal is (nearly) the hot target itself
    x, lw = out["samples"]["x_b"], out["samples"]["log_w_b"]
    w = np.exp(lw - lw.max())
    assert abs(float(w[x @ gmm.means[0].numpy() > 0].sum() / w.sum()) - weights[0]) < 0.05


def test_model_route_along_the_lambda_path_is_exact_and_needs_no_second_smc():
    """SMC to A, then each run carried to B by the λ path: the exact tempered ΔF and mode weight,
    also from a deliberately wrong model (its weights, not its normaliser, matter)."""
    from boltzgen.free_energy import anneal_between_targets

    gmm = two_modes()
    hot = TemperedTarget(gmm, 2.0 * gmm.temperature)
    log_z, weights = tempered_exact(gmm, 0.5)
    settings = SMCSettings.from_dict({"diffusion": {"n_steps": 40}, "anneal": {"n_levels": 16}})
    wrong = GaussianMixture(gmm.means.numpy(), np.ones(2), [1.0, 1.0], name="wrong weights")
    for proposal in (gmm, wrong):
        model = ExactMarginalModel(proposal, t_min=1e-3)
        out = delta_f_from_model(
            model, gmm, hot, n=2000, runs=4, settings=settings, path_levels=16,
            generator=torch.Generator().manual_seed(2),
        )  # fmt: skip
        assert out["method"] == "smc+path" and len(out["delta_f_runs_kT"]) == 4
        assert abs(out["delta_f_kT"] + log_z) < 4 * out["delta_f_err_kT"] + 0.02, (out["delta_f_kT"], -log_z)
        assert out["delta_f_err_kT"] < 0.05
        x, lw = out["samples"]["x_b"], out["samples"]["log_w_b"]
        w = np.exp(lw - lw.max())
        first = float(w[x @ gmm.means[0].numpy() > 0].sum() / w.sum())
        assert abs(first - weights[0]) < 0.05
    with pytest.raises(ValueError, match="n_levels must be at least 1"):
        anneal_between_targets(gmm.sample(4), np.zeros(4), gmm, hot, n_levels=0)


def test_free_energy_command_model_route_along_the_path(tmp_path, capsys):
    import json

    from boltzgen.cli import main

    data, run = str(tmp_path / "gmm.h5"), str(tmp_path / "run")
    assert main(["simulate", "gmm-two-modes", "-n", "256", "-o", data, "--no-progress"]) == 0
    assert main(["train", "--data", data, "-o", run, "--steps", "20", "--no-progress"]) == 0
    capsys.readouterr()
    argv = ["free-energy", "--from", "gmm-two-modes", "--to", "gmm-two-modes", "--temperature-to", "2"]
    common = ["--model", run, "-n", "128", "--runs", "2", "--diffusion-steps", "10", "--no-progress", "--json"]
    assert main([*argv, *common, "--path-levels", "4", "-o", str(tmp_path / "fe")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["route"] == "model" and out["method"] == "smc+path" and out["path_levels"] == 4
    assert math.isfinite(out["delta_f_kT"]) and len(out["delta_f_runs_kT"]) == 2
    assert (tmp_path / "fe" / "samples_to.h5").exists()
    assert main([*argv, *common, "--path-levels", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "smc"


def test_model_route_with_per_state_resampling_keeps_mode_weights_exact():
    """Per-state resampling (balanced, moves kept in their mode) in both model routes: a model
    with the wrong mode weights still gives the exact ΔF and the mode weight of B."""
    from boltzgen.states import function_states

    gmm = two_modes()
    hot = TemperedTarget(gmm, 2.0 * gmm.temperature)
    log_z, weights = tempered_exact(gmm, 0.5)
    first_mode = gmm.means[0].numpy()
    modes = function_states(lambda x: (np.asarray(x) @ first_mode > 0).astype(np.int64), ["first", "second"])
    settings = SMCSettings.from_dict(
        {
            "diffusion": {"n_steps": 40},
            "anneal": {"n_levels": 16, "keep_states": True},
            "resampling": {"balance_states": True},
        }
    )
    model = ExactMarginalModel(GaussianMixture(gmm.means.numpy(), np.ones(2), [1.0, 4.0], name="wrong"), t_min=1e-3)
    for levels in (0, 8):
        out = delta_f_from_model(
            model, gmm, hot, n=2000, runs=4, settings=settings, path_levels=levels, states=modes,
            generator=torch.Generator().manual_seed(3),
        )  # fmt: skip
        assert abs(out["delta_f_kT"] + log_z) < 4 * out["delta_f_err_kT"] + 0.02, (levels, out["delta_f_kT"], -log_z)
        x, lw = out["samples"]["x_b"], out["samples"]["log_w_b"]
        w = np.exp(lw - lw.max())
        assert abs(float(w[x @ first_mode > 0].sum() / w.sum()) - weights[0]) < 0.05
        x_a = out["samples"]["x_a"]
        assert abs(float(np.mean(x_a @ first_mode > 0)) - 0.5) < 0.05  # balanced (without states: 0.63)


def test_free_energy_command_per_state_resampling_needs_states(tmp_path, capsys):
    from boltzgen.cli import main

    data, run = str(tmp_path / "gmm.h5"), str(tmp_path / "run")
    assert main(["simulate", "gmm-two-modes", "-n", "64", "-o", data, "--no-progress"]) == 0
    assert main(["train", "--data", data, "-o", run, "--steps", "2", "--no-progress"]) == 0
    argv = ["free-energy", "--from", "gmm-two-modes", "--to", "gmm-two-modes", "--temperature-to", "2", "--model", run]
    assert main([*argv, "-n", "16", "--runs", "2", "--keep-states", "--no-progress"]) != 0
    assert "keep_states needs per-state resampling" in capsys.readouterr().err
    assert main([*argv, "-n", "16", "--runs", "2", "--per-state-resampling", "--no-progress"]) != 0
    assert "needs the target's states" in capsys.readouterr().err
