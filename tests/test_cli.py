"""The boltzgen command line on small runs: the file and metrics contracts of docs/design.md."""

import json
import subprocess
import sys

import mdtraj
import numpy as np
import pytest
import torch

import boltzgen
import boltzgen.systems as systems
from boltzgen.cli import main
from boltzgen.io import load_samples


def test_systems_lists_every_builtin(capsys):
    assert main(["systems", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["systems"]
    assert [r["name"] for r in rows] == systems.names()
    aldp = rows[0]
    assert aldp["n_atoms"] == 22 and aldp["temperature_K"] == 300.0 and "amber99sbildn" in aldp["forcefield"]
    assert main(["systems"]) == 0
    assert "lj55" in capsys.readouterr().out


def test_entry_point_help_and_version(capsys):
    """``python -m boltzgen.cli`` runs in a process of its own; the sub-commands' help in this one."""
    out = subprocess.run([sys.executable, "-m", "boltzgen.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("systems", "simulate", "train", "sample", "reweight", "bench"):
        assert command in out.stdout
    for command in (["simulate", "--help"], ["train", "--help"], ["reweight", "--help"], ["bench", "bridge", "--help"]):
        with pytest.raises(SystemExit) as stop:
            main(command)
        assert stop.value.code == 0
        assert "--seed" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and boltzgen.__version__ in capsys.readouterr().out
    with pytest.raises(SystemExit):  # the sampler options, built for the command being run
        main(["sample", "--help"])
    assert "--diffusion-steps" in capsys.readouterr().out


def test_help_of_commands_without_sampler_options_imports_no_torch():
    """``boltzgen --help`` and ``boltzgen simulate --help`` answer without importing torch (seconds)."""
    script = (
        "import sys\n"
        "from boltzgen.cli import main\n"
        "for argv in (['--help'], ['simulate', '--help'], ['train', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert "usage: boltzgen simulate" in out and "usage: boltzgen train" in out
    assert out.strip().endswith("torch imported: False")


def test_simulate_aldp_replica_exchange_file_contract(tmp_path, capsys):
    out = tmp_path / "aldp.h5"
    args = [
        "simulate",
        "aldp-vacuum",
        "-n",
        "6",
        "-o",
        str(out),
        "--replicas",
        "2",
        "--t-max",
        "400",
        "--equilibration",
        "50",
        "--stride",
        "20",
        "--exchange-interval",
        "10",
        "--workers",
        "0",
        "--no-progress",
        "--seed",
        "3",
    ]
    assert main(args) == 0
    traj = mdtraj.load(str(out))
    assert traj.n_frames == 6 and traj.n_atoms == 22
    samples = load_samples(str(out))
    meta = samples.metadata
    assert meta["system"] == "aldp-vacuum" and meta["seed"] == 3 and meta["temperature_K"] == 300.0
    assert meta["forcefield"] == ["amber99sbildn.xml"] and "boltzgen_version" in meta
    target = systems.load("aldp-vacuum", n_workers=0)
    # Stored energies are those of the stored (float32) coordinates to float32 rounding.
    u = target.reduced_energy(torch.from_numpy(samples.x)).numpy()
    np.testing.assert_allclose(samples.reduced_energy, u, atol=0.05)
    target.close()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n_samples"] == 6 and metrics["command"] == "simulate"
    assert not (tmp_path / "aldp.h5.checkpoint").exists()


def test_simulate_keep_replicas_ladder_data(tmp_path, capsys):
    """--keep-replicas K: N frames from each of the K coldest replicas, u at the *target*
    temperature for all of them (checked against OpenMM), weight zero for the hotter frames as
    samples of the target, a per-frame temperature; train accepts the file, analyze uses only the
    target-temperature frames as its reference."""
    out = tmp_path / "ladder.h5"
    args = [
        "simulate",
        "aldp-vacuum",
        "-n",
        "5",
        "-o",
        str(out),
        "--replicas",
        "3",
        "--t-max",
        "600",
        "--keep-replicas",
        "2",
        "--equilibration",
        "50",
        "--stride",
        "20",
        "--exchange-interval",
        "10",
        "--workers",
        "0",
        "--no-progress",
        "--seed",
        "4",
    ]
    assert main(args) == 0
    samples = load_samples(str(out))
    assert samples.x.shape == (10, 22, 3) and mdtraj.load(str(out)).n_frames == 10
    ladder = samples.metadata["temperatures_K"]
    assert samples.metadata["kept_temperatures_K"] == ladder[:2] and ladder[0] == 300.0
    np.testing.assert_array_equal(samples.extra["temperature_K"], np.repeat(ladder[:2], 5))
    np.testing.assert_array_equal(samples.log_weights, np.r_[np.zeros(5), np.full(5, -np.inf)])
    target = systems.load("aldp-vacuum", n_workers=0)
    u = target.reduced_energy(torch.from_numpy(samples.x)).numpy()  # at 300 K, for every frame
    target.close()
    np.testing.assert_allclose(samples.reduced_energy, u, atol=0.05)
    # the same seed without keeping: the target-temperature frames are the same trajectory
    plain = tmp_path / "plain.h5"
    args_plain = list(args)
    i = args_plain.index("--keep-replicas")
    del args_plain[i : i + 2]
    args_plain[args_plain.index(str(out))] = str(plain)
    assert main(args_plain) == 0
    np.testing.assert_allclose(load_samples(str(plain)).x, samples.x[:5], atol=1e-6)
    assert json.loads((tmp_path / "metrics.json").read_text())["n_samples"] == 5

    from boltzgen.report import analyze
    from boltzgen.train import train_from_file

    trained = train_from_file(
        str(out),
        str(tmp_path / "run"),
        overrides={"train": {"steps": 2, "batch_size": 4}, "net": {"hidden": 8, "n_layers": 1}},
    )
    # training took all ten frames (train + validation) and left a model of the peptide
    assert trained["steps"] == 2 and trained["n_train"] + trained["n_val"] == 10
    from boltzgen.model import load_model

    assert tuple(load_model(str(tmp_path / "run")).event_shape) == (22, 3)
    report = analyze(str(plain), str(tmp_path / "report"), reference=str(out))
    assert report["reference_n"] == 10 and report["reference_ess"] == pytest.approx(5.0)

    assert (
        main(
            [
                "simulate",
                "aldp-vacuum",
                "-n",
                "5",
                "-o",
                str(tmp_path / "bad.h5"),
                "--replicas",
                "1",
                "--keep-replicas",
                "2",
                "--workers",
                "0",
            ]
        )
        == 2
    )
    assert "keeping 2 replicas needs replica exchange" in capsys.readouterr().err

    # --quench: the same MD; the target-temperature frames are untouched, the hotter frames are
    # relaxed to 300 K (their u, from OpenMM, drops below the hot frames'), and u stays exact.
    quenched = tmp_path / "quenched.h5"
    args_quench = [a if a != str(out) else str(quenched) for a in args] + ["--quench", "0.2", "--quench-processes", "1"]
    assert main(args_quench) == 0
    cold = load_samples(str(quenched))
    np.testing.assert_allclose(cold.x[:5], samples.x[:5], atol=1e-6)
    np.testing.assert_array_equal(cold.log_weights, samples.log_weights)
    assert cold.metadata["quench"]["time_ps"] == 0.2 and cold.metadata["quench"]["n_frames"] == 5
    assert cold.metadata["quench"]["processes"] == 1
    assert cold.reduced_energy[5:].mean() < samples.reduced_energy[5:].mean()
    target = systems.load("aldp-vacuum", n_workers=0)
    np.testing.assert_allclose(cold.reduced_energy, target.reduced_energy(torch.from_numpy(cold.x)).numpy(), atol=0.05)
    target.close()
    assert main(args_plain + ["--quench", "0.5"]) == 2
    assert "quench needs a positive time in ps and at least 2 kept replicas" in capsys.readouterr().err


def test_simulate_analytic_and_lj(tmp_path, capsys):
    assert (
        main(["simulate", "gmm-40", "--dim", "3", "-n", "50", "-o", str(tmp_path / "g.h5"), "--json", "--no-progress"])
        == 0
    )
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["method"] == "exact" and metrics["n_samples"] == 50
    assert load_samples(str(tmp_path / "g.h5")).x.shape == (50, 3)
    assert (
        main(
            [
                "simulate",
                "lj13",
                "-n",
                "20",
                "-o",
                str(tmp_path / "lj.h5"),
                "--equilibration",
                "20",
                "--stride",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    lj = load_samples(str(tmp_path / "lj.h5"))
    assert lj.x.shape == (20, 13, 3) and lj.topology.n_atoms == 13
    assert mdtraj.load(str(tmp_path / "lj.h5")).n_frames == 20


def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["simulate", "no-such-system", "-n", "5", "-o", str(tmp_path / "x.h5")]) == 2
    err = capsys.readouterr().err
    assert "unknown system 'no-such-system'" in err and "Traceback" not in err
    assert "built-in systems: " + ", ".join(systems.names()) in err
    assert main(["simulate", "gmm-40", "-n", "0", "-o", str(tmp_path / "x.h5")]) == 2
    assert "-n must be at least 1" in capsys.readouterr().err
    assert (
        main(
            [
                "simulate",
                "--pdb",
                str(tmp_path / "missing.pdb"),
                "--forcefield",
                "amber99sbildn.xml",
                "-n",
                "5",
                "-o",
                str(tmp_path / "x.h5"),
            ]
        )
        == 2
    )
    assert "PDB file not found" in capsys.readouterr().err
    assert main(["simulate", "lj13", "--timestep", "2", "-n", "5", "-o", str(tmp_path / "x.h5")]) == 2
    assert "timestep" in capsys.readouterr().err


def test_bench_bridge_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert (
        main(
            ["bench", "bridge", "--system", "aldp-vacuum", "--batch", "96", "--workers", "2", "--json", "-o", str(out)]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    for key in (
        "speedup_vs_plain_loop",
        "fraction_of_limit",
        "plain_loop_per_s",
        "bare_getstate_per_s",
        "bridge_per_s",
        "limit_per_s",
    ):
        assert result[key] > 0
    assert result["max_rel_energy_diff_vs_plain"] < 1e-9
    assert json.loads(out.read_text())["batch"] == 96


def test_sample_from_a_trained_run(tmp_path, capsys):
    import yaml

    data = tmp_path / "data.h5"
    assert main(["simulate", "gmm-two-modes", "-n", "400", "-o", str(data), "--no-progress"]) == 0
    config = tmp_path / "small.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "net": {"kind": "mlp", "hidden": 32, "n_layers": 2},
                "train": {"steps": 20, "batch_size": 64, "val_every": 20},
            }
        )
    )
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "-o", str(run), "--config", str(config), "--no-progress"]) == 0
    out = tmp_path / "smc.h5"
    assert (
        main(
            [
                "sample",
                str(run),
                "-n",
                "128",
                "-o",
                str(out),
                "--diffusion-steps",
                "20",
                "--no-progress",
                "--json",
                "--seed",
                "2",
            ]
        )
        == 0
    )
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["system"] == "gmm-two-modes" and 0 < metrics["ess_fraction"] <= 1
    assert abs(metrics["log_z"]) < 1.0  # the exact normaliser of the standardised mixture is 1
    samples = load_samples(str(out))
    assert samples.x.shape == (128, 2) and samples.log_weights is not None
    assert metrics["tempering"] == 1.0 and metrics["t_min"] == 1e-3  # the model's
    # the sampler's settings are SMCSettings()'s, the API's defaults (only t_min filled in from the model)
    from boltzgen.sampling.smc import SMCSettings

    expected = SMCSettings().to_dict()
    expected["diffusion"].update(n_steps=20, t_min=1e-3)
    assert metrics["settings"] == expected
    assert "states_note" in metrics and "delta_f_kT" not in metrics  # a mixture has no states: a note, no error
    # --steps is the old name of --diffusion-steps: the same run
    assert (
        main(
            [
                "sample",
                str(run),
                "-n",
                "128",
                "-o",
                str(tmp_path / "alias.h5"),
                "--steps",
                "20",
                "--no-progress",
                "--seed",
                "2",
            ]
        )
        == 0
    )
    np.testing.assert_array_equal(load_samples(str(tmp_path / "alias.h5")).log_weights, samples.log_weights)
    assert (
        main(
            [
                "sample",
                str(run),
                "-n",
                "16",
                "-o",
                str(tmp_path / "late.h5"),
                "--steps",
                "10",
                "--no-progress",
                "--json",
                "--t-min",
                "0.02",
            ]
        )
        == 0
    )
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["t_min"] == 0.02 and metrics["smc"]["t"][10] == pytest.approx(0.02)  # the diffusion ends there
    assert main(["sample", str(run), "-n", "4", "-o", str(tmp_path / "t.h5"), "--t-min", "1e-4"]) == 2
    assert "t_min must lie in [0.001, 1)" in capsys.readouterr().err
    assert main(["sample", str(run), "-n", "4", "-o", str(tmp_path / "t.h5"), "--balance-states"]) == 2
    assert "balance_states needs per-state resampling" in capsys.readouterr().err
    assert (
        main(
            [
                "sample",
                str(run),
                "-n",
                "64",
                "-o",
                str(tmp_path / "tempered.h5"),
                "--steps",
                "10",
                "--no-progress",
                "--json",
                "--tempering",
                "0.5",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["tempering"] == 0.5
    assert main(["sample", str(run), "-n", "4", "-o", str(tmp_path / "t.h5"), "--tempering", "1.5"]) == 2
    assert "--tempering must lie in (0, 1]" in capsys.readouterr().err
    assert main(["sample", str(run), "-n", "4", "-o", str(tmp_path / "t.h5"), "--per-state-resampling"]) == 2
    assert "per-state resampling needs the target's states; gmm-two-modes has none" in capsys.readouterr().err
    assert main(["sample", str(run), "-n", "4", "-o", str(tmp_path / "t.h5"), "--strata", "basins"]) == 2
    assert "resampling.strata 'basins' needs per-state resampling" in capsys.readouterr().err
    argv = ["sample", str(run), "-n", "4", "-o", str(tmp_path / "t.h5"), "--per-state-resampling", "--strata", "basins"]
    assert main(argv) == 2
    assert "'basins' needs a peptide with backbone phi and psi; gmm-two-modes has none" in capsys.readouterr().err
    assert (
        main(
            [
                "sample",
                str(run),
                "-n",
                "16",
                "-o",
                str(tmp_path / "sde.h5"),
                "--method",
                "sde",
                "--steps",
                "10",
                "--no-progress",
            ]
        )
        == 0
    )
    # Independent runs pooled by their log Z: the file says which run each particle came from.
    pooled = tmp_path / "runs.h5"
    assert (
        main(
            [
                "sample",
                str(run),
                "-n",
                "97",
                "-o",
                str(pooled),
                "--steps",
                "10",
                "--no-progress",
                "--json",
                "--runs",
                "3",
            ]
        )
        == 0
    )
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["runs"] == 3 and len(metrics["log_z_runs"]) == 3 and len(metrics["smc_runs"]) == 2
    samples = load_samples(str(pooled))
    assert np.bincount(samples.extra["smc_run"]).tolist() == [33, 32, 32]
    lw, runs = samples.log_weights, samples.extra["smc_run"]
    for r, log_z in enumerate(metrics["log_z_runs"]):  # each run's weights sum to its Z estimate
        np.testing.assert_allclose(np.logaddexp.reduce(lw[runs == r]), log_z, atol=1e-9)
    np.testing.assert_allclose(metrics["log_z"], np.logaddexp.reduce(metrics["log_z_runs"]) - np.log(3), atol=1e-9)
    assert abs(metrics["log_z"]) < 1.0
    assert main(["sample", str(run), "-n", "4", "-o", str(tmp_path / "t.h5"), "--runs", "0"]) == 2
    assert "runs must lie between 1 and n (4)" in capsys.readouterr().err
    assert main(["sample", str(run), "-n", "4", "-o", str(tmp_path / "t.h5"), "--runs", "2", "--method", "sde"]) == 2
    assert "runs > 1 applies to method 'smc'" in capsys.readouterr().err
    assert main(["sample", str(tmp_path), "-n", "4", "-o", str(out)]) == 2
    assert "model.pt missing" in capsys.readouterr().err
