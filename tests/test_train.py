"""Trainer: exact resume, atomic files, run-directory contract, clear errors."""

import csv
import json
import math
import os

import numpy as np
import pytest
import torch
import yaml

import boltzgen
import boltzgen.systems as systems
from boltzgen.cli import main
from boltzgen.io import save_samples
from boltzgen.model import load_model
from boltzgen.parallel import train_in_processes
from boltzgen.testing import assert_gradient_matches_finite_differences
from boltzgen.train import Trainer, resolve_config

SMALL = {
    "net": {"kind": "mlp", "hidden": 32, "n_layers": 2},
    "train": {
        "steps": 6,
        "batch_size": 32,
        "checkpoint_every": 3,
        "log_every": 2,
        "val_every": 3,
        "val_fraction": 0.2,
        "val_batch_size": 32,
    },
    "optim": {"warmup_steps": 2},
}


@pytest.fixture(scope="module")
def gmm_data():
    target = systems.load("gmm-two-modes", dim=2)
    return 3.0 * target.sample(400, torch.Generator().manual_seed(0)).numpy()  # not unit scale on purpose


def test_interrupted_training_resumes_exactly(tmp_path, gmm_data):
    config = resolve_config(overrides=SMALL)
    full = Trainer(config, gmm_data, str(tmp_path / "full"), progress=False)
    full.fit()
    part = Trainer(config, gmm_data, str(tmp_path / "part"), progress=False)
    part._write_static_files()
    for _ in range(3):
        part.train_step()
    part.save()  # as after a crash right after the step-3 checkpoint
    resumed = Trainer(config, gmm_data, str(tmp_path / "part"), progress=False)
    metrics = resumed.fit()
    assert metrics["resumed"] and resumed.step == 6
    for a, b in zip(full.model.inner.state_dict().values(), resumed.model.inner.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(full.ema.state_dict().values(), resumed.ema.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_finished_run_entered_again_returns_its_stored_metrics(tmp_path, gmm_data, monkeypatch):
    """A resumed workflow that reaches a training that had finished does not validate, check
    samples or rewrite metrics.json (its numbers and wall time stay the run's own); one with more
    steps asked for trains on."""
    run = tmp_path / "run"
    config = resolve_config(overrides=SMALL)
    first = Trainer(config, gmm_data, str(run), progress=False).fit()
    written = (run / "metrics.json").read_bytes()
    again = Trainer(config, gmm_data, str(run), progress=False)

    def no_validation(*args, **kwargs):
        raise AssertionError("a finished run was validated again")

    monkeypatch.setattr(again, "validate", no_validation)
    metrics = again.fit()
    assert metrics["resumed"] and metrics["reused"] and again.step == SMALL["train"]["steps"]
    assert metrics["validation"] == json.loads(written)["validation"]
    assert metrics["wall_time_s"] == pytest.approx(first["wall_time_s"])
    assert (run / "metrics.json").read_bytes() == written
    longer = {**SMALL, "train": {**SMALL["train"], "steps": SMALL["train"]["steps"] + 1}}
    more = Trainer(resolve_config(overrides=longer), gmm_data, str(run), progress=False).fit()
    assert more["steps"] == SMALL["train"]["steps"] + 1 and not more.get("reused")


def test_run_directory_contract_and_load_model(tmp_path, gmm_data):
    run = tmp_path / "run"
    config = resolve_config(overrides=SMALL)
    trainer = Trainer(config, gmm_data, str(run), progress=False)
    trainer.fit()
    for name in ("config.yaml", "checkpoint.pt", "model.pt", "train_log.csv", "metrics.json"):
        assert (run / name).is_file(), name
    assert not [p for p in os.listdir(run) if p.startswith(".")], "temporary files left behind"
    with open(run / "train_log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [2, 3, 4, 6]
    assert rows[-1]["val_total"] != "" and float(rows[-1]["total"]) > 0
    assert yaml.safe_load((run / "config.yaml").read_text())["net"]["kind"] == "mlp"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["n_val"] == 80
    assert metrics["length_scale"] == pytest.approx(3.0, rel=0.1)

    model = boltzgen.load_model(str(run))
    assert model.t_min == pytest.approx(1e-3) and not model.training
    x = torch.from_numpy(gmm_data[:4]).float()
    # energy takes data units; the diffusion runs in units of the length scale
    torch.testing.assert_close(model.energy(x, 0.1), trainer.ema.energy(x / trainer.length_scale, 0.1))
    model.double()
    assert_gradient_matches_finite_differences(
        lambda y: model.energy(y, 0.2), torch.from_numpy(gmm_data[:3]), rtol=1e-6, atol=1e-8
    )
    torch.testing.assert_close(
        model.score(torch.from_numpy(gmm_data[:3]), 0.2),
        -torch.func.grad(lambda y: model.energy(y, 0.2).sum())(torch.from_numpy(gmm_data[:3])),
    )


def test_bad_inputs_give_clear_errors(tmp_path, gmm_data):
    with pytest.raises(ValueError, match="loss.kind: must be one of"):
        resolve_config(overrides={"loss": {"kind": "mse"}})
    with pytest.raises(ValueError, match="train.steps: must be >= 1"):
        resolve_config(overrides={"train": {"steps": 0}})
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("net: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        resolve_config(config_file=str(bad_yaml))
    data = gmm_data.copy()
    data[5, 0] = np.nan
    with pytest.raises(ValueError, match="1 configurations with NaN"):
        Trainer(resolve_config(overrides=SMALL), data, str(tmp_path / "nan"), progress=False)
    run = tmp_path / "corrupt"
    Trainer(resolve_config(overrides=SMALL), gmm_data, str(run), progress=False).fit()
    (run / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable boltzgen checkpoint"):
        load_model(str(run))
    with pytest.raises(FileNotFoundError, match="model.pt missing"):
        load_model(str(tmp_path))
    other = resolve_config(overrides={**SMALL, "loss": {"kind": "dsm"}})
    with pytest.raises(ValueError, match="different 'loss' configuration"):
        Trainer(other, gmm_data, str(run), progress=False).fit()


def test_dsm_run_resumes_when_only_diffclf_options_change(tmp_path, gmm_data):
    """lambda_clf and clf_samples cannot change a DSM-only run: a new default of them does not
    block its resume; a change of an option DSM uses does."""
    dsm = {**SMALL, "loss": {"kind": "dsm", "lambda_clf": 1.0}}
    run = str(tmp_path / "dsm")
    Trainer(resolve_config(overrides=dsm), gmm_data, run, progress=False).fit()
    changed = {
        **SMALL,
        "loss": {"kind": "dsm", "lambda_clf": 0.02, "clf_samples": "one"},
        "train": {**SMALL["train"], "steps": SMALL["train"]["steps"] + 2},
    }
    trainer = Trainer(resolve_config(overrides=changed), gmm_data, run, progress=False)
    trainer.fit()
    assert trainer.step == SMALL["train"]["steps"] + 2
    with pytest.raises(ValueError, match="different 'loss' configuration"):
        Trainer(
            resolve_config(overrides={**SMALL, "loss": {"kind": "dsm", "k": 3}}), gmm_data, run, progress=False
        ).fit()


def test_fine_tuning_started_from_a_pretraining_checkpoint_is_the_run_from_scratch(tmp_path, gmm_data):
    """--start-from: a DSM + DiffCLF run with 3 DSM pre-training steps, started from the step-3
    checkpoint of a DSM run (or of another fine-tuning's pre-training), ends bit for bit where the
    same run trained from step 0 ends; a checkpoint past the DSM-only steps, or of other data or
    another schedule, is refused."""
    tuned = {**SMALL, "loss": {"kind": "dsm+diffclf", "lambda_clf": 0.5}, "pretrain_dsm_steps": 3}
    scratch = Trainer(resolve_config(overrides=tuned), gmm_data, str(tmp_path / "scratch"), progress=False)
    scratch.fit()
    dsm = Trainer(
        resolve_config(overrides={**SMALL, "loss": {"kind": "dsm"}}), gmm_data, str(tmp_path / "dsm"), progress=False
    )
    dsm.fit()  # checkpoints at steps 3 and 6; keep the one at 3
    pre = Trainer(
        resolve_config(overrides={**SMALL, "loss": {"kind": "dsm"}}), gmm_data, str(tmp_path / "pre"), progress=False
    )
    pre._write_static_files()
    for _ in range(3):
        pre.train_step()
    pre.save()
    # the log of the run the checkpoint came from (the DSM run's: the same first steps)
    (tmp_path / "pre" / "train_log.csv").write_text((tmp_path / "dsm" / "train_log.csv").read_text())
    branched = Trainer(
        resolve_config(overrides=tuned),
        gmm_data,
        str(tmp_path / "branched"),
        progress=False,
        start_from=str(tmp_path / "pre" / "checkpoint.pt"),
    )
    metrics = branched.fit()
    assert not metrics["resumed"] and metrics["started_from"]["step"] == 3
    for a, b in zip(scratch.model.inner.state_dict().values(), branched.model.inner.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(scratch.ema.state_dict().values(), branched.ema.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with open(tmp_path / "branched" / "train_log.csv") as handle:
        assert [int(r["step"]) for r in csv.DictReader(handle)] == [2, 3, 4, 6]
    # refused: past the pre-training of this run, other data, another schedule
    with pytest.raises(ValueError, match="past the DSM-only steps of this run"):
        Trainer(
            resolve_config(overrides=tuned),
            gmm_data,
            str(tmp_path / "late"),
            progress=False,
            start_from=str(tmp_path / "dsm" / "checkpoint.pt"),
        ).fit()
    with pytest.raises(ValueError, match="other data"):
        Trainer(
            resolve_config(overrides=tuned),
            2.0 * gmm_data,
            str(tmp_path / "data"),
            progress=False,
            start_from=str(tmp_path / "pre" / "checkpoint.pt"),
        ).fit()
    longer = {**tuned, "train": {**SMALL["train"], "steps": 8}}
    with pytest.raises(ValueError, match="train.steps"):
        Trainer(
            resolve_config(overrides=longer),
            gmm_data,
            str(tmp_path / "long"),
            progress=False,
            start_from=str(tmp_path / "pre" / "checkpoint.pt"),
        ).fit()
    assert (
        main(["train", "--data", str(tmp_path / "missing.h5"), "-o", str(tmp_path / "x"), "--start-from", "nowhere.pt"])
        == 2
    )


def test_cli_train_on_simulated_file(tmp_path, capsys):
    data = tmp_path / "data.h5"
    assert main(["simulate", "gmm-two-modes", "-n", "300", "-o", str(data), "--no-progress", "--seed", "1"]) == 0
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(SMALL))
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "-o",
                str(run),
                "--config",
                str(config),
                "--loss",
                "dsm",
                "--steps",
                "4",
                "--no-progress",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["steps"] == 4 and out["system"] == "gmm-two-modes"
    assert yaml.safe_load((run / "config.yaml").read_text())["loss"]["kind"] == "dsm"
    assert main(["train", "--data", str(tmp_path / "missing.h5"), "-o", str(run)]) == 2
    assert "sample file not found" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "-o",
                str(tmp_path / "phi"),
                "--config",
                str(config),
                "--phi-positive-fraction",
                "0.3",
                "--no-progress",
            ]
        )
        == 2
    )
    assert (
        "data.state_fraction (boltzgen train --state-fraction) needs the system's metastable states"
        in capsys.readouterr().err
    )
    assert main(["train", "--data", str(data), "-o", str(tmp_path / "phi"), "--phi-positive-fraction", "half"]) == 2
    assert "--state-fraction must be a number in (0, 1) or 'none'" in capsys.readouterr().err
    # --set: one key over the config file, read as YAML; unknown keys and bad items are named
    cmd = ["train", "--data", str(data), "--config", str(config), "--no-progress"]
    assert main([*cmd, "-o", str(tmp_path / "set"), "--set", "optim.lr=2e-4", "--set", "train.steps=2"]) == 0
    written = yaml.safe_load((tmp_path / "set" / "config.yaml").read_text())
    assert written["optim"]["lr"] == 2e-4 and written["train"]["steps"] == 2
    capsys.readouterr()
    assert main([*cmd, "-o", str(tmp_path / "bad"), "--set", "optim.bogus_key=1"]) == 2
    assert "bogus_key" in capsys.readouterr().err
    assert main([*cmd, "-o", str(tmp_path / "bad"), "--set", "lr=1"]) == 2
    assert "want SECTION.KEY=VALUE" in capsys.readouterr().err


def test_molecular_run_stores_topology(tmp_path):
    target = systems.load("lj13")
    x = target.positions[None].numpy() + 0.02 * np.random.default_rng(0).standard_normal((64, 13, 3))
    config = resolve_config(overrides={**SMALL, "net": {"kind": "egnn", "hidden": 16, "n_layers": 1}})
    path = tmp_path / "lj.h5"
    import mdtraj

    top = mdtraj.Topology()
    residue = top.add_residue("LJ", top.add_chain())
    for _ in range(13):
        top.add_atom("Ar", mdtraj.element.argon, residue)
    save_samples(str(path), x, topology=top, metadata={"system": "lj13"})
    Trainer(config, x, str(tmp_path / "run"), topology=top, progress=False).fit()
    model = load_model(str(tmp_path / "run"))
    assert model.topology.n_atoms == 13
    e = model.energy(torch.from_numpy(x[:2]).float(), 0.5)
    assert e.shape == (2,) and torch.isfinite(e).all()


def test_model_options_and_log_snr_levels_reach_the_model(tmp_path, gmm_data):
    overrides = {
        **SMALL,
        "model": {"output_scale": "edm"},
        "loss": {"kind": "dsm+diffclf", "k": 2, "levels": "log-snr-grid", "grid": 16},
    }
    trainer = Trainer(resolve_config(overrides=overrides), gmm_data, str(tmp_path / "run"), progress=False)
    assert trainer.model.inner.output_scale == "edm"
    parts = trainer.train_step()
    assert math.isfinite(parts["total"]) and "clf" in parts
    with pytest.raises(ValueError):
        resolve_config(overrides={"loss": {"levels": "log-uniform"}})


def test_ema_decay_warms_up_then_reaches_the_configured_value():
    from boltzgen.train import ema_decay

    assert ema_decay(0.999, 0) == pytest.approx(0.1)
    assert ema_decay(0.999, 90) == pytest.approx(0.91)
    assert ema_decay(0.999, 10**6) == 0.999
    assert ema_decay(0.0, 5) == 0.0
    values = [ema_decay(0.999, s) for s in range(0, 20000, 500)]
    assert values == sorted(values)
    # after n steps the initial weights keep prod(decays) of the average: small with the warm-up,
    # 37 % after 1000 steps of a fixed 0.999
    kept = 1.0
    for step in range(1000):
        kept *= ema_decay(0.999, step)
    assert kept < 0.02


def test_lambda_clf_schedule_weights_the_classification_loss_step_by_step(tmp_path, gmm_data):
    """loss.lambda_clf as [[0, 1.0], [2, 0.25], [4, 0.0]]: each step's total loss is its DSM part
    plus the lambda in force at that step times its DiffCLF part; bad schedules are refused."""
    from boltzgen.train import lambda_clf_at

    schedule = [[0, 1.0], [2, 0.25], [4, 0.0]]
    overrides = {**SMALL, "loss": {"kind": "dsm+diffclf", "lambda_clf": schedule}}
    trainer = Trainer(resolve_config(overrides=overrides), gmm_data, str(tmp_path / "run"), progress=False)
    expected = [1.0, 1.0, 0.25, 0.25, 0.0, 0.0]
    for step, lam in enumerate(expected):
        assert lambda_clf_at(schedule, step) == lam
        parts = trainer.train_step()
        assert parts["clf"] > 0.0
        assert parts["total"] == pytest.approx(parts["dsm"] + lam * parts["clf"], rel=1e-6, abs=1e-7)
    assert lambda_clf_at(0.3, 10**6) == 0.3
    for bad in ([[1, 1.0]], [[0, 1.0], [0, 0.5]], [[0, 1.0], [5, -0.1]], [[0, 1.0, 2]], [], "1.0", -0.5):
        with pytest.raises(ValueError, match="lambda_clf"):
            resolve_config(overrides={"loss": {"lambda_clf": bad}})


def test_state_fraction_draws_that_share_of_each_batch_from_the_rare_state(tmp_path):
    """Oversampling the rare state (data.state_fraction; here by its old name
    train.phi_positive_fraction) of alanine dipeptide, phi > 0: the drawn share matches the setting
    (binomial tolerance), frames within each state are drawn uniformly, and bad settings are named."""
    import mdtraj

    from boltzgen.states import default_states
    from boltzgen.systems.catalog import data_path
    from boltzgen.train import state_draw_probabilities

    aldp = mdtraj.load(data_path("aldp.pdb"))
    rng = np.random.default_rng(0)
    x = aldp.xyz[0].astype(np.float64)[None] + 0.005 * rng.standard_normal((200, aldp.n_atoms, 3))
    x[-10:] *= -1.0  # mirrored: phi > 0
    assert (default_states(aldp.topology).assign(x) == 1).sum() == 10
    overrides = {**SMALL, "net": {"kind": "egnn", "hidden": 16, "n_layers": 1}}
    config = resolve_config(overrides={**overrides, "train": {**SMALL["train"], "phi_positive_fraction": 0.3}})
    trainer = Trainer(config, x, str(tmp_path / "run"), topology=aldp.topology, progress=False)
    n_positive = trainer.metadata["n_train_state"]
    assert trainer.metadata["oversampled_state"] == "phi>0"
    assert 0 < n_positive <= 10
    generator = torch.Generator().manual_seed(1)
    y = torch.cat([trainer._batch(trainer.train_data, 500, generator) for _ in range(40)]).numpy()
    positive = default_states(aldp.topology).assign(y) == 1
    assert abs(positive.mean() - 0.3) < 4 * math.sqrt(0.3 * 0.7 / y.shape[0])
    p = trainer.draw_probabilities.numpy()
    train_positive = default_states(aldp.topology).assign(trainer.train_data.numpy()) == 1
    np.testing.assert_allclose(p[train_positive], 0.3 / n_positive)
    np.testing.assert_allclose(p[~train_positive], 0.7 / (len(p) - n_positive))
    # Uniform draws (the default) see phi > 0 at its share of the data.
    plain = Trainer(
        resolve_config(overrides=overrides), x, str(tmp_path / "plain"), topology=aldp.topology, progress=False
    )
    assert plain.draw_probabilities is None
    y = torch.cat([plain._batch(plain.train_data, 500, generator) for _ in range(40)]).numpy()
    share = (default_states(aldp.topology).assign(y) == 1).mean()
    assert abs(share - n_positive / len(p)) < 4 * math.sqrt(0.05 / y.shape[0])
    # The fraction is part of the run: a resume with another one is refused.
    trainer.fit()
    other = resolve_config(overrides={**overrides, "data": {"state_fraction": 0.5}})
    with pytest.raises(ValueError, match="data.state_fraction = 0.3, this run has 0.5"):
        Trainer(other, x, str(tmp_path / "run"), topology=aldp.topology, progress=False).fit()
    # No frame in the state: a warning and uniform draws; clear errors for no peptide and a
    # fraction outside (0, 1).
    with pytest.warns(
        UserWarning, match=r"all training frames lie in one state of .*phi>0: 0\), so frames are drawn uniformly"
    ):
        assert (
            Trainer(config, x[:190], str(tmp_path / "none"), topology=aldp.topology, progress=False).draw_probabilities
            is None
        )
    with pytest.raises(ValueError, match="needs the system's metastable states; these data have no topology"):
        Trainer(config, x, str(tmp_path / "notop"), progress=False)
    with pytest.raises(ValueError, match=r"data.state_fraction: must be < 1, got 1"):
        Trainer(
            resolve_config(overrides={**overrides, "data": {"state_fraction": 1.0}}),
            x,
            str(tmp_path / "bad"),
            topology=aldp.topology,
            progress=False,
        )
    with pytest.raises(ValueError, match="must lie in"):
        state_draw_probabilities(np.array([True, False]), 0.0)
    with pytest.raises(ValueError, match="0 of 2 training frames lie in the state"):
        state_draw_probabilities(np.array([False, False]), 0.5)


def test_state_weights_give_each_state_its_share_in_the_objective(tmp_path):
    """data.state_weights: with phi > 0 oversampled to 30 % of the draws, the frames' weights give
    each state the target frames' share (or the given shares) in the expected weighted average, so
    the objective's state weights are the target's; bad settings are named."""
    import mdtraj

    from boltzgen.config import ConfigError
    from boltzgen.states import default_states
    from boltzgen.systems.catalog import data_path

    aldp = mdtraj.load(data_path("aldp.pdb"))
    rng = np.random.default_rng(0)
    x = aldp.xyz[0].astype(np.float64)[None] + 0.005 * rng.standard_normal((200, aldp.n_atoms, 3))
    x[-20:] *= -1.0  # mirrored: phi > 0
    target = np.ones(200, dtype=bool)
    target[-15:] = False  # 15 of the 20 phi > 0 frames are hotter replicas' frames
    overrides = {**SMALL, "net": {"kind": "egnn", "hidden": 16, "n_layers": 1}}

    def trainer(name, weights):
        config = resolve_config(overrides={**overrides, "data": {"state_fraction": 0.3, "state_weights": weights}})
        return Trainer(config, x, str(tmp_path / name), topology=aldp.topology, progress=False, target_frames=target)

    for weights, expected in ((True, None), ({"phi<0": 3.0, "phi>0": 1.0}, [0.75, 0.25])):
        t = trainer(str(weights)[:4], weights)
        labels = default_states(aldp.topology).assign(t.train_data.numpy())
        share = np.array([t.metadata["state_shares"][n] for n in ("phi<0", "phi>0")])
        if expected is None:  # the target frames' shares
            in_target = t.train_target.numpy()
            expected = np.bincount(labels[in_target], minlength=2) / in_target.sum()
        np.testing.assert_allclose(share, expected)
        q, w = t.draw_probabilities.numpy(), t.sample_weight.double().numpy()
        np.testing.assert_allclose([np.sum(q * w * (labels == s)) for s in (0, 1)], expected, rtol=1e-6)
        val_labels = default_states(aldp.topology).assign(t.val_data.numpy())
        v = t.val_weight.double().numpy()
        np.testing.assert_allclose([np.sum(v * (val_labels == s)) / v.sum() for s in (0, 1)], expected, rtol=1e-6)
        t.train_step()  # the weighted objective runs
    with pytest.raises(ValueError, match=r"names the states \['phi>0'\]; the data's states are \['phi<0', 'phi>0'\]"):
        trainer("missing", {"phi>0": 1.0})
    target[-20:] = False  # no phi > 0 frame at the target temperature: its share is unknown
    with pytest.raises(ValueError, match="phi>0 holds training frames but none at the target temperature"):
        trainer("orphan", True)
    for bad in ("yes", {"phi>0": 0.0}, {}):
        with pytest.raises(ConfigError, match="data.state_weights"):
            resolve_config(overrides={"data": {"state_weights": bad}})


def test_two_process_training(tmp_path, gmm_data):
    """Data-parallel training (2 gloo processes): each draws half the batch from its own seed and
    the step applies the average of their gradients - bit for bit the update of one process that
    averages the two half-batch gradients itself -, both processes hold identical parameters, and
    a run interrupted after a checkpoint resumes bit for bit (every process's batch generator is
    in the checkpoint)."""
    import torch.multiprocessing as mp
    from helpers import two_process_training

    from boltzgen.losses import compute_loss

    config = resolve_config(overrides=SMALL)
    mp.spawn(
        two_process_training,
        args=(2, f"file://{tmp_path / 'store'}", str(tmp_path), config, gmm_data),
        nprocs=2,
        join=True,
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["local_batch"] == SMALL["train"]["batch_size"] // 2
    for key in ("one", "full", "resumed"):
        for a, b in zip(ranks[0][key].values(), ranks[1][key].values()):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(ranks[0]["full"].values(), ranks[0]["resumed"].values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    state = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)
    assert state["world"] == 2 and not torch.equal(*state["rank_generators"])

    # the first step, done in one process: the two half-batch gradients averaged by hand
    sim = Trainer(config, gmm_data, str(tmp_path / "sim"), progress=False)
    sim._calibrate_at_clf_start(sim._loss_options(0))  # F(t) set before the first DiffCLF step
    params = list(sim.model.inner.parameters())
    grads = []
    for rank in range(2):
        generator = torch.Generator().manual_seed(int(config["seed"]) * 1000003 + rank)
        x0 = sim._batch(sim.train_data, SMALL["train"]["batch_size"] // 2, generator)
        sim.optimiser.zero_grad(set_to_none=True)
        compute_loss(sim.model.inner, x0, generator, **sim._loss_options(0))["total"].backward()
        grads.append([p.grad.clone() for p in params])
    for p, g0, g1 in zip(params, *grads):
        p.grad = (g0 + g1) / 2
    for group in sim.optimiser.param_groups:
        group["lr"] = group["base_lr"] / SMALL["optim"]["warmup_steps"]  # step 0 of the warm-up
    clip = config["optim"].get("grad_clip")
    torch.nn.utils.clip_grad_norm_(params, float(clip) if clip else float("inf"))
    sim.optimiser.step()
    for a, b in zip(sim.model.inner.state_dict().values(), ranks[0]["one"].values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # one process refuses a batch that does not split; the CLI says so
    with pytest.raises(ValueError, match="divisible by the number of training processes"):
        train_in_processes(3, "unused.h5", str(tmp_path / "x"), system="gmm-two-modes", overrides=SMALL)


def test_finished_two_process_run_is_reused_as_written(tmp_path, gmm_data):
    """train_in_processes on a run directory that already reached its steps: the processes leave
    metrics.json as it was, and the result says the run was reused. (The data hold no target
    energies: the end-of-training sample check is skipped, where it used to fail the run.)"""
    data = tmp_path / "data.h5"
    save_samples(str(data), gmm_data, metadata={"system": "gmm-two-modes"})
    run = str(tmp_path / "run")
    options = dict(system="gmm-two-modes", overrides=SMALL, progress=False, threads=1)
    first = train_in_processes(2, str(data), run, **options)
    assert not first.get("reused") and first["steps"] == SMALL["train"]["steps"] and not first.get("sample_check")
    written = open(os.path.join(run, "metrics.json"), "rb").read()
    again = train_in_processes(2, str(data), run, **options)
    assert again["reused"] and again["resumed"] and again["validation"] == first["validation"]
    assert open(os.path.join(run, "metrics.json"), "rb").read() == written


def test_an_error_of_rank_0_at_the_end_is_the_one_reported(tmp_path, gmm_data):
    """Rank 0 fails after the last step (its metrics.json cannot be written: a directory stands
    there), while rank 1 waits for it to end the run: the error raised is rank 0's own, not rank
    1's broken connection, and no worker is left waiting."""
    data = tmp_path / "data.h5"
    save_samples(str(data), gmm_data, metadata={"system": "gmm-two-modes"})
    run = tmp_path / "run"
    (run / "metrics.json").mkdir(parents=True)
    with pytest.raises(RuntimeError, match="a training process failed: IsADirectoryError"):
        train_in_processes(2, str(data), str(run), system="gmm-two-modes", overrides=SMALL, progress=False, threads=1)
    assert (run / "model.pt").exists()  # the steps were done and saved before the end failed


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"optim": {"learning_rate": 1e-3}}, "optim.learning_rate: unknown key (known: optimizer, lr,"),
        ({"optim": {"lr": -1}}, "optim.lr: must be > 0, got -1"),
        ({"optim": {"lr": "1e-3"}}, "optim.lr: must be a number"),
        ({"optim": {"ema": 1.0}}, "optim.ema: must be < 1, got 1"),
        ({"optim": {"ema": -0.1}}, "optim.ema: must be >= 0, got -0.1"),
        ({"train": {"steps": True}}, "train.steps: must be an integer"),
        ({"train": {"steps": 100.5}}, "train.steps: must be an integer"),
        ({"train": {"batch_size": -4}}, "train.batch_size: must be >= 1, got -4"),
        ({"optim": {"warmup_steps": -1}}, "optim.warmup_steps: must be >= 0, got -1"),
        ({"optim": {"cosine": "yes"}}, "optim.cosine: must be true or false"),
        ({"pretrain_dsm_steps": 5000}, "pretrain_dsm_steps: must be <= train.steps (2000), got 5000"),
        ({"loss": {"kind": "diffclf", "k": 1}}, "loss.k: must be >= 2 for diffclf, got 1"),
        ({"net": {"kind": "mlp", "width": 3}}, "net.width: unknown key for a mlp network"),
        ({"net": {"kind": "cnn"}}, "net.kind: must be one of"),
        ({"model": {"schedule": {"kind": "vp", "sigma_max": 3.0}}}, "model.schedule:"),
        ({"data": {"state_fraction": 0.0}}, "data.state_fraction: must be > 0, got 0"),
        ({"train": {"phi_positive_fraction": 0.3}, "data": {"state_fraction": 0.3}}, "give only one of them"),
        (
            {"trian": {"steps": 3}},
            "trian: unknown key (known: net, model, loss, pretrain_dsm_steps, optim, train, data",
        ),
    ],
)
def test_config_errors_name_the_key(overrides, message):
    from boltzgen.config import ConfigError, load_train_config

    with pytest.raises(ConfigError) as info:
        load_train_config(overrides=overrides)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_config_files_extend_other_files_and_keep_the_trainers_dict(tmp_path):
    from boltzgen.config import ConfigError, TrainConfig, load_train_config

    (tmp_path / "base.yaml").write_text("net: {kind: mlp, hidden: 16}\noptim: {lr: 3.0e-3}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "run.yaml").write_text("extends: ../base.yaml\noptim: {warmup_steps: 5}\n")
    config = load_train_config(config_file=str(tmp_path / "sub" / "run.yaml"), overrides={"seed": 3})
    # the time features are always explicit (a stored config without them is an older model's)
    assert config.net.kind == "mlp" and config.net.options == {"hidden": 16, "time_features": "linear"}
    assert config.optim.lr == 3e-3 and config.optim.warmup_steps == 5 and config.seed == 3
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["net"] == {"kind": "mlp", "hidden": 16, "time_features": "linear"}
    # a shipped file by name; the old key name is read as the new one
    (tmp_path / "aldp.yaml").write_text("extends: aldp-vacuum.train.yaml\ntrain: {phi_positive_fraction: 0.2}\n")
    aldp = load_train_config(config_file=str(tmp_path / "aldp.yaml"))
    assert aldp.to_dict() == {
        **load_train_config("aldp-vacuum").to_dict(),
        "data": {"state_fraction": 0.2, "state_weights": False},
    }
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_train_config(config_file=str(tmp_path / "loop.yaml"))
    with pytest.raises(FileNotFoundError, match="extends: file not found"):
        (tmp_path / "missing.yaml").write_text("extends: nowhere.yaml\n")
        load_train_config(config_file=str(tmp_path / "missing.yaml"))
    (tmp_path / "bad.yaml").write_text("optim: {learning_rate: 0.1}\n")
    with pytest.raises(ConfigError, match="optim.learning_rate: unknown key"):
        load_train_config(config_file=str(tmp_path / "bad.yaml"))


def test_loading_a_model_does_not_import_the_trainer():
    import subprocess
    import sys

    code = (
        "import boltzgen, boltzgen.model, sys; assert 'boltzgen.train' not in sys.modules; "
        "assert 'boltzgen.config' not in sys.modules; import boltzgen.nn.time"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    subprocess.run(
        [sys.executable, "-c", "import boltzgen, sys; assert 'torch' not in sys.modules, 'heavy import'"], check=True
    )


def test_printed_train_command_carries_config_overrides_as_set_flags():
    """What the quickstart prints must run: overrides become --set items that parse back."""
    import shlex

    from boltzgen.cli import parse_settings
    from boltzgen.workflow import command_line

    overrides = {"model": {"prior": "forcefield", "t_min": 1e-5}, "loss": {"lambda_pin": 1.0, "target_score": True}}
    words = shlex.split(command_line("train", (), {"data": "d.h5", "overrides": overrides}))
    items = [words[i + 1] for i, word in enumerate(words) if word == "--set"]
    assert parse_settings(items) == overrides


def test_marginal_matching_trains_and_needs_the_target(tmp_path):
    """loss.lambda_marginal: the term is logged and lowers the model's low-noise spread; no target, clear error."""
    target = systems.load("gmm-two-modes", dim=2)
    data = target.sample(300, torch.Generator().manual_seed(0)).numpy()
    overrides = {
        **SMALL,
        "loss": {"lambda_marginal": 1.0, "marginal_levels": 3, "marginal_frames": 64, "marginal_score": True},
        "pretrain_dsm_steps": 2,
    }
    config = resolve_config(overrides=overrides)
    with pytest.raises(ValueError, match="loss.lambda_marginal needs the target"):
        Trainer(config, data, str(tmp_path / "none"), progress=False)
    trainer = Trainer(config, data, str(tmp_path / "run"), progress=False, target=target)
    y, log_p, t, score = trainer.marginal
    assert y.shape[:2] == (3, 64) and log_p.shape == (3, 64) and float(t[-1]) == pytest.approx(0.02)
    assert score.shape == y.shape  # loss.marginal_score: the exact score of the same copies
    metrics = trainer.fit()
    assert all(math.isfinite(metrics["validation"][f"val_marginal_std_kT_t{t:g}"]) for t in (0.002, 0.01, 0.02))
    with open(tmp_path / "run" / "train_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert all(float(r["marginal"]) >= 0 for r in rows if r["marginal"])
    assert any(r["marginal"] for r in rows)
    bad = {**SMALL, "loss": {"lambda_marginal": 1.0, "marginal_t_max": 1e-4}, "model": {"t_min": 1e-3}}
    with pytest.raises(ValueError, match="marginal_t_max"):
        Trainer(resolve_config(overrides=bad), data, str(tmp_path / "bad"), progress=False, target=target)


def test_marginal_matching_adds_the_models_own_samples_with_their_exact_marginals(tmp_path):
    """loss.marginal_model_samples: when the term starts, the EMA model's reverse-diffusion samples
    join the copies, and their log-marginals are the target's exact ones (the GMM's diffused
    density, with the same constant as the data's copies)."""
    target = systems.load("gmm-two-modes", dim=2)
    data = target.sample(300, torch.Generator().manual_seed(0)).numpy()
    loss = {"lambda_marginal": 1.0, "marginal_levels": 3, "marginal_frames": 64, "marginal_model_samples": 16}
    config = resolve_config(overrides={**SMALL, "loss": loss, "pretrain_dsm_steps": 2})
    trainer = Trainer(config, data, str(tmp_path / "run"), progress=False, target=target)
    assert trainer.marginal[0].shape[1] == 64
    trainer.fit()
    y, log_p, t, _ = trainer.marginal
    assert (
        y.shape[1] == 64 + trainer.metadata["marginal_model_copies"] and trainer.metadata["marginal_model_copies"] >= 14
    )
    schedule = trainer.model.inner.schedule
    for i in range(t.numel()):
        exact = target.log_prob_t(y[i].double(), t[i].expand(y.shape[1]).double(), schedule)
        offset = (log_p[i] - exact).double()
        assert float(offset.std()) < 0.05, (float(t[i]), float(offset.std()))


def test_path_consistency_term_trains_after_the_dsm_phase(tmp_path):
    """loss.lambda_path: logged (a variance, so ≥ 0) from the first step after the DSM-only phase,
    absent before it; a path_t_max that leaves no pair of levels is a clear error."""
    target = systems.load("gmm-two-modes", dim=2)
    data = target.sample(300, torch.Generator().manual_seed(0)).numpy()
    overrides = {**SMALL, "loss": {"lambda_path": 0.1, "path_levels": 20}, "pretrain_dsm_steps": 2}
    trainer = Trainer(resolve_config(overrides=overrides), data, str(tmp_path / "run"), progress=False)
    assert float(trainer.path_times.max()) <= 0.1 and trainer.path_times.numel() >= 2
    trainer.fit()
    with open(tmp_path / "run" / "train_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    logged = [r for r in rows if r["path"]]
    assert logged and all(float(r["path"]) >= 0 for r in logged)
    assert all(int(r["step"]) > 2 for r in logged)
    bad = {**overrides, "loss": {"lambda_path": 0.1, "path_levels": 20, "path_t_max": 1e-4}}
    with pytest.raises(ValueError, match="path_t_max"):
        Trainer(resolve_config(overrides=bad), data, str(tmp_path / "bad"), progress=False)


def test_validation_runs_in_chunks_of_the_training_batch(tmp_path, gmm_data):
    """A validation batch larger than the training batch is evaluated in chunks of about the
    training batch (its graph would otherwise hold several training steps' worth of memory), and
    the averaged losses match one pass over the whole batch up to the noise draws."""
    overrides = {**SMALL, "train": {**SMALL["train"], "batch_size": 8, "val_batch_size": 64}}
    trainer = Trainer(resolve_config(overrides=overrides), gmm_data, str(tmp_path / "run"), progress=False)
    sizes = []
    hook = trainer.ema.net.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    try:
        val = trainer.validate()
    finally:
        hook.remove()
    k = int(trainer.config["loss"]["k"])
    assert sizes and max(sizes) <= k * 8
    assert set(val) >= {"val_total", "val_dsm"} and all(math.isfinite(v) for v in val.values())
    whole = Trainer(
        resolve_config(overrides={**SMALL, "train": {**SMALL["train"], "batch_size": 64, "val_batch_size": 64}}),
        gmm_data,
        str(tmp_path / "whole"),
        progress=False,
    ).validate()
    assert val["val_dsm"] == pytest.approx(whole["val_dsm"], rel=0.25)
