"""The workflow API in Python at a tiny size: the same numbers as the command line for the same seed."""

import json

import numpy as np
import pytest
import yaml

from boltzgen import workflow
from boltzgen.cli import main
from boltzgen.io import load_samples

CONFIG = {
    "net": {"kind": "mlp", "hidden": 16, "n_layers": 2},
    "train": {"steps": 10, "batch_size": 32, "val_every": 10},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """gmm-two-modes data and a model, by the workflow functions."""
    root = tmp_path_factory.mktemp("workflow")
    config = root / "small.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    metrics = workflow.simulate_training_data("gmm-two-modes", 200, str(root / "data.h5"), seed=1, progress=False)
    assert metrics["n_samples"] == 200 and metrics["method"] == "exact"
    trained = workflow.train(str(root / "data.h5"), str(root / "run"), config_file=str(config), seed=1, progress=False)
    assert trained["steps"] == 10 and (root / "run" / "model.pt").exists()
    return root, config


def test_simulate_and_train_match_the_cli(trained, tmp_path):
    root, config = trained
    assert (
        main(
            ["simulate", "gmm-two-modes", "-n", "200", "-o", str(tmp_path / "data.h5"), "--seed", "1", "--no-progress"]
        )
        == 0
    )
    np.testing.assert_array_equal(load_samples(str(tmp_path / "data.h5")).x, load_samples(str(root / "data.h5")).x)
    assert (
        main(
            [
                "train",
                "--data",
                str(root / "data.h5"),
                "-o",
                str(tmp_path / "run"),
                "--config",
                str(config),
                "--seed",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    from boltzgen.model import load_model

    ours, theirs = load_model(str(root / "run")), load_model(str(tmp_path / "run"))
    ours, theirs = ours.state_dict(), theirs.state_dict()
    assert ours and list(ours) == list(theirs)
    for key, value in ours.items():  # the same trained weights
        np.testing.assert_array_equal(value.numpy(), theirs[key].numpy())


def test_sample_matches_the_cli_and_pools_runs(trained, tmp_path):
    root, _ = trained
    settings = {"diffusion": {"n_steps": 8}, "anneal": {"n_levels": 2}, "final": {"mcmc_steps": 2}}
    run = workflow.sample(
        str(root / "run"), str(tmp_path / "api.h5"), 30, settings=settings, runs=3, seed=4, progress=False
    )
    assert run.x.shape == (30, 2) and run.log_w.shape == (30,) and len(run.results) == 3
    assert np.bincount(run.run_index).tolist() == [10, 10, 10]
    # the file holds what the function returned, written before any analysis
    saved = load_samples(str(tmp_path / "api.h5"))
    np.testing.assert_array_equal(saved.log_weights, run.log_w)
    assert run.metrics["runs"] == 3 and len(run.metrics["log_z_runs"]) == 3
    assert "states_note" in run.metrics  # a mixture has no states: a note instead of free energies

    assert (
        main(
            [
                "sample",
                str(root / "run"),
                "-n",
                "30",
                "-o",
                str(tmp_path / "cli.h5"),
                "--diffusion-steps",
                "8",
                "--anneal",
                "2",
                "--final-mcmc-steps",
                "2",
                "--runs",
                "3",
                "--seed",
                "4",
                "--no-progress",
            ]
        )
        == 0
    )
    cli = load_samples(str(tmp_path / "cli.h5"))
    np.testing.assert_array_equal(cli.x, run.x)
    np.testing.assert_array_equal(cli.log_weights, run.log_w)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["log_z"] == pytest.approx(run.metrics["log_z"], abs=0)
    assert metrics["settings"] == run.metrics["settings"]


def test_sample_in_processes_gives_the_same_particles(trained, tmp_path):
    """Runs drawn by two processes (each from its own seed): the same particles, weights and log Z
    as one process drawing them one after the other."""
    root, _ = trained
    settings = {"diffusion": {"n_steps": 6}, "anneal": {"n_levels": 2}, "final": {"mcmc_steps": 2}}
    runs = [
        workflow.sample(
            str(root / "run"),
            str(tmp_path / f"p{p}.h5"),
            31,
            settings=settings,
            runs=3,
            seed=2,
            progress=False,
            processes=p,
        )
        for p in (1, 2)
    ]
    np.testing.assert_array_equal(runs[0].x, runs[1].x)
    np.testing.assert_array_equal(runs[0].log_w, runs[1].log_w)
    assert runs[0].metrics["log_z_runs"] == runs[1].metrics["log_z_runs"]
    assert np.bincount(runs[1].run_index).tolist() == [11, 10, 10]
    # a different seed per run: the runs are not copies of one another
    assert len({round(v, 12) for v in runs[0].metrics["log_z_runs"]}) == 3
    with pytest.raises(ValueError, match="processes must be a whole number"):
        workflow.sample(str(root / "run"), str(tmp_path / "bad.h5"), 10, runs=2, processes=0, progress=False)


def test_a_wider_diffusion_from_the_cli_and_the_api_keeps_the_runs_lineages_apart(trained, tmp_path):
    """``--diffusion-particle-factor 3`` is ``settings.diffusion.particle_factor``: each run
    returns its own share of -n, descends from up to three times as many particles at t = 1, and
    the pooled lineage labels of two runs never coincide."""
    root, _ = trained
    settings = {"diffusion": {"n_steps": 6, "particle_factor": 3}, "anneal": {"n_levels": 2}}
    run = workflow.sample(
        str(root / "run"), str(tmp_path / "api.h5"), 20, settings=settings, runs=2, seed=5, progress=False
    )
    assert run.x.shape == (20, 2) and np.bincount(run.run_index).tolist() == [10, 10]
    assert max(int(r.ancestors.max()) for r in run.results) < 30
    first, second = (set(run.lineages[run.run_index == k].tolist()) for k in (0, 1))
    assert not first & second
    # the sample file keeps both labels, so an analysis of it later bootstraps the same clusters
    saved = load_samples(str(tmp_path / "api.h5")).extra
    np.testing.assert_array_equal(saved["smc_run"], run.run_index)
    np.testing.assert_array_equal(saved["smc_lineage"], run.lineages)
    args = ["sample", str(root / "run"), "-n", "20", "-o", str(tmp_path / "cli.h5"), "--diffusion-steps", "6"]
    args += ["--anneal", "2", "--diffusion-particle-factor", "3", "--runs", "2", "--seed", "5", "--no-progress"]
    assert main(args) == 0
    np.testing.assert_array_equal(load_samples(str(tmp_path / "cli.h5")).log_weights, run.log_w)


def test_sample_free_energies_of_user_states(trained, tmp_path):
    """A user's StateSet on a target without states: per-state resampling, F_k - F_0 per state and,
    for two states, Delta F with a bootstrap error over the runs."""
    from boltzgen.states import function_states
    from boltzgen.systems import load

    root, _ = trained
    target = load("gmm-two-modes")
    target.states = function_states(lambda x: (np.asarray(x)[:, 0] > 0).astype(np.int64), ("x<0", "x>0"), name="side")
    run = workflow.sample(
        str(root / "run"),
        str(tmp_path / "states.h5"),
        40,
        target=target,
        runs=2,
        per_state_resampling=True,
        seed=0,
        progress=False,
        settings={"diffusion": {"n_steps": 6}, "anneal": {"n_levels": 2}},
    )
    m = run.metrics
    assert m["states"] == {"name": "side", "names": ["x<0", "x>0"]}
    assert sum(m["state_counts"]) == 40 and len(m["state_counts_runs"]) == 2
    assert m["per_state_resampling"] is True
    assert m["delta_f_definition"] == "F(x>0) - F(x<0) in kT"
    if m["delta_f_kT"] is not None:
        assert m["state_free_energies_kT"][1] == pytest.approx(m["delta_f_kT"])
        # the jackknife over two runs leaves out one run at a time, so it is built from the per-run values
        per_run = m["delta_f_runs_kT"]
        # the error is the bootstrap over the lineages of both runs (not over the two runs)
        n_lineages = np.unique(run.lineages[np.isfinite(run.log_w)]).size
        assert (
            m["delta_f_error_method"]
            == f"bootstrap of the {n_lineages} lineages (ancestors at t = 1) of 2 independent SMC runs"
        )
        if None not in per_run:
            assert m["delta_f_jackknife_kT"] == pytest.approx(2 * m["delta_f_kT"] - sum(per_run) / 2, abs=1e-9)
            assert m["delta_f_jackknife_err_kT"] == pytest.approx(abs(per_run[0] - per_run[1]) / 2, abs=1e-9)
        else:
            assert m["delta_f_jackknife_kT"] is None and m["delta_f_jackknife_err_kT"] is None
    assert not any("bootstrap over the lineages of one SMC run" in w for w in m["warnings"])
    one = workflow.sample(
        str(root / "run"),
        str(tmp_path / "one.h5"),
        40,
        target=target,
        per_state_resampling=True,
        seed=0,
        progress=False,
        settings={"diffusion": {"n_steps": 6}, "anneal": {"n_levels": 2}},
    ).metrics
    # states set on a target object do not travel to worker processes: a clear error, not other states
    with pytest.raises(ValueError, match="processes=1"):
        workflow.sample(
            str(root / "run"),
            str(tmp_path / "two.h5"),
            40,
            target=target,
            runs=2,
            per_state_resampling=True,
            progress=False,
            processes=2,
            settings={"diffusion": {"n_steps": 6}, "anneal": {"n_levels": 2}},
        )
    # one run: the clusters of the bootstrap are its lineages (ancestors at t = 1), not its particles
    assert one["delta_f_error_method"].startswith("bootstrap of the ") and "lineages" in one["delta_f_error_method"]
    assert one["delta_f_kT"] is not None and any(
        "bootstrap over the lineages of one SMC run" in w for w in one["warnings"]
    )


def test_simulate_rejects_bad_sizes(tmp_path):
    with pytest.raises(ValueError, match="n must be at least 1"):
        workflow.simulate_training_data("gmm-40", 0, str(tmp_path / "x.h5"))
    with pytest.raises(KeyError, match="unknown system 'nope'; built-in systems: aldp-vacuum"):
        workflow.simulate_training_data("nope", 5, str(tmp_path / "x.h5"))


def test_training_and_sampling_in_processes_need_no_main_guard(tmp_path):
    """A user script without ``if __name__ == "__main__":`` trains in two processes and draws its
    SMC runs in two processes; its body runs once, not again in any worker."""
    from helpers import run_unguarded_script

    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "train": {**CONFIG["train"], "steps": 2, "threads": 1}}))
    out = run_unguarded_script(
        tmp_path / "user_script.py",
        "from boltzgen import workflow\n"
        f"root = {str(tmp_path)!r}\n"
        "workflow.simulate_training_data('gmm-two-modes', 64, root + '/data.h5', seed=1, progress=False)\n"
        f"m = workflow.train(root + '/data.h5', root + '/run', config_file={str(config)!r}, processes=2,"
        " progress=False)\n"
        "print('trained', m['processes'], m['steps'])\n"
        "settings = {'diffusion': {'n_steps': 2}, 'anneal': {'n_levels': 1}}\n"
        "run = workflow.sample(root + '/run', root + '/s.h5', 8, settings=settings, runs=2, processes=2,"
        " progress=False)\n"
        "print('sampled', run.x.shape[0])\n",
    )
    assert "trained 2 2" in out and "sampled 8" in out
