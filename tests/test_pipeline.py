"""`boltzgen quickstart --fast`: the whole chain (simulate, train, SMC, analyze) as a smoke run, and
the recipes of systems/recipes.yaml that the quickstart and the benchmarks share."""

import json
import os

import mdtraj
import numpy as np
import pytest
import yaml

from boltzgen import workflow
from boltzgen.cli import main
from boltzgen.io import load_samples
from boltzgen.sampling.smc import SMCSettings
from boltzgen.states import default_states


def test_quickstart_fast_leaves_samples_metrics_and_report(tmp_path, capsys):
    out = str(tmp_path / "qs")
    assert main(["quickstart", "-o", out, "--fast", "--no-progress"]) == 0
    printed = capsys.readouterr().err
    for command in ("boltzgen simulate aldp-vacuum", "boltzgen train", "boltzgen sample", "boltzgen analyze"):
        assert command in printed, f"{command!r} not printed"
    assert "summary" in printed and "ESS" in printed

    traj = mdtraj.load(os.path.join(out, "samples.h5"))
    samples = load_samples(os.path.join(out, "samples.h5"))
    assert traj.n_atoms == 22 and traj.n_frames == samples.x.shape[0] == 32
    assert samples.log_weights is not None and np.isfinite(samples.log_weights).any()
    assert samples.metadata["command"] == "sample" and samples.metadata["system"] == "aldp-vacuum"

    with open(os.path.join(out, "metrics.json")) as handle:
        metrics = json.load(handle)
    assert metrics["command"] == "quickstart" and metrics["fast"] is True
    assert 0 < metrics["ess"] <= 32 and 0 < metrics["ess_fraction"] <= 1
    # the summary warns when the weights rest on a handful of samples, and only then
    assert ("fewer than 10 effective samples" in printed) == (metrics["ess"] < 10)
    # two SMC runs resampled within the phi states: each run's state counts match the file, and
    # the summary warns about the runs that kept fewer than 10 phi > 0 particles, and only those
    assert metrics["states"]["names"] == ["phi<0", "phi>0"]
    labels = default_states(traj.topology).assign(samples.x)
    counts = [np.bincount(labels[samples.extra["smc_run"] == r], minlength=2).tolist() for r in range(2)]
    assert metrics["runs"] == 2 and metrics["state_counts_runs"] == counts
    few = [str(r + 1) for r, c in enumerate(counts) if c[1] < 10]
    if few:
        assert f"run{'s' if len(few) > 1 else ''} {', '.join(few)} ended with fewer than 10 phi>0 particles" in printed
    else:
        assert "phi>0 particles: such runs" not in printed
    # a Delta F from pooled runs comes with a note that its error is only the runs' spread
    assert ("the error is the spread of the runs" in printed) == (metrics["delta_f_kT"] is not None)
    assert set(metrics["stage_seconds"]) == {"simulate", "train", "sample", "analyze"}
    assert metrics["energy_w2"] is not None and metrics["energy_w2"] >= 0
    # beside it, what exact independent draws of the data with these weights would score
    assert metrics["energy_w2_floor"] > 0 and metrics["energy_w2_floor_n"] == pytest.approx(metrics["ess"])
    assert f"exact independent draws with these weights: {metrics['energy_w2_floor']:.3f}" in printed
    for name in (
        "index.html",
        "ramachandran.png",
        "torsion_profiles.png",
        "energy_histogram.png",
        "ess_trace.png",
        "training_loss.png",
    ):
        assert os.path.exists(os.path.join(out, "report", name)), name
    html = open(os.path.join(out, "report", "index.html")).read()
    assert "ess_trace.png" in html
    # DSM pre-training, then DSM + DiffCLF fine-tuning
    with open(os.path.join(out, "run", "config.yaml")) as handle:
        config = yaml.safe_load(handle)
    assert config["pretrain_dsm_steps"] == 10 and config["loss"]["kind"] == "dsm+diffclf"
    with open(os.path.join(out, "run", "train_log.csv")) as handle:
        assert handle.read().splitlines()[-1].split(",")[1] == "dsm+diffclf"

    # a second run resumes: data and samples are reused, training finds its finished checkpoint
    # and returns its metrics as they were (no second validation or sample check)
    trained = open(os.path.join(out, "run", "metrics.json"), "rb").read()
    assert main(["quickstart", "-o", out, "--fast", "--no-progress", "--json"]) == 0
    captured = capsys.readouterr()
    again = json.loads(captured.out)
    assert again["stage_seconds"]["simulate"] == 0.0 and again["stage_seconds"]["sample"] == 0.0
    assert "had finished its steps: reused" in captured.err
    assert open(os.path.join(out, "run", "metrics.json"), "rb").read() == trained

    # outputs of another recipe are not resumed silently: another SMC part stops at samples.h5
    # (nothing is overwritten), and once it is removed the same data and model draw it again
    plan = workflow.load_recipe("quickstart", "fast")
    plan["sample"]["n"] = 16
    kept = open(os.path.join(out, "samples.h5"), "rb").read()
    with pytest.raises(ValueError, match=r"samples.h5 was made by another recipe \(its sample differs"):
        workflow.quickstart(out, plan, progress=False, log=lambda line: None)
    assert open(os.path.join(out, "samples.h5"), "rb").read() == kept
    os.rename(os.path.join(out, "samples.h5"), str(tmp_path / "fast-samples.h5"))
    redrawn = workflow.quickstart(out, plan, progress=False, log=lambda line: None, analyze_samples=False)
    assert redrawn["n_samples"] == 16 and redrawn["stage_seconds"]["simulate"] == 0.0
    assert open(os.path.join(out, "run", "metrics.json"), "rb").read() == trained
    other = workflow.load_recipe("quickstart", "fast")
    other["simulate"]["n"] = 50
    with pytest.raises(ValueError, match=r"data.h5 was made by another recipe \(its simulate differs"):
        workflow.quickstart(out, other, progress=False, log=lambda line: None)
    with pytest.raises(ValueError, match=r"data.h5 was made by another recipe \(its seed differs"):
        workflow.quickstart(out, "fast", seed=1, progress=False, log=lambda line: None)

    # SMC resampling within the phi states of the peptide (boltzgen sample --per-state-resampling)
    assert (
        main(
            [
                "sample",
                os.path.join(out, "run"),
                "-n",
                "16",
                "-o",
                str(tmp_path / "states.h5"),
                "--diffusion-steps",
                "5",
                "--anneal",
                "2",
                "--final-mcmc-steps",
                "2",
                "--per-state-resampling",
                "--no-progress",
                "--json",
            ]
        )
        == 0
    )
    by_state = json.loads(capsys.readouterr().out)
    assert by_state["per_state_resampling"] is True and 0 < by_state["ess_fraction"] <= 1
    assert by_state["denoised_state_labels"] is True  # the phi of E[x_0 | x_t] during the diffusion
    # what the weights rest on: effective lineages, at most the distinct ancestors, per state too
    assert 1.0 <= by_state["lineage_ess"] <= by_state["n_ancestors"]
    names = by_state["states"]["names"]
    weighted = [n for n, c in zip(names, by_state["state_counts"]) if c > 0]
    assert set(by_state["lineage_ess_states"]) <= set(names) and by_state["lineage_ess_states"]
    for name, value in by_state["lineage_ess_states"].items():
        assert name in weighted and 1.0 - 1e-9 <= value <= by_state["n_ancestors"]
        if value < 5:
            assert any(f"state {name} rests on" in w for w in by_state["warnings"])

    # resampling within the Ramachandran basins (beta/PII, alpha_R, phi>0) balanced and kept apart;
    # the free energies are still reported for the phi states
    argv = ["sample", os.path.join(out, "run"), "-n", "24", "-o", str(tmp_path / "basins.h5"), "--diffusion-steps"]
    argv += ["5", "--anneal", "2", "--final-mcmc-steps", "2", "--per-state-resampling", "--balance-states"]
    argv += ["--final-md-moves", "5", "--final-md-leapfrog", "4"]  # Metropolis-adjusted MD at the end
    assert main(argv + ["--keep-states", "--strata", "basins", "--no-progress", "--json"]) == 0
    by_basin = json.loads(capsys.readouterr().out)
    assert 0.0 < by_basin["smc"]["final_md_acceptance"] <= 1.0 and 0.0 <= by_basin["smc"]["final_md_kept"] <= 1.0
    assert by_basin["settings"]["resampling"]["strata"] == "basins" and by_basin["states"]["names"] == names
    assert sum(by_basin["state_counts"]) == 24


def benchmark_plan(name: str, argv=()) -> dict:
    """The plan benchmarks/molecular_chain.py builds from the recipe ``benchmarks.<name>`` with its
    default options (or the command-line options ``argv``)."""
    import argparse
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
    try:
        import molecular_chain
    finally:
        sys.path.pop(0)
    parser = argparse.ArgumentParser()
    molecular_chain.add_arguments(parser, molecular_chain.recipe_sizes(workflow.load_recipe("benchmarks", name)))
    return molecular_chain.chain_plan(name, parser.parse_args(list(argv)), {})


def test_quickstart_long_is_the_default_with_more_particles_per_run():
    """--long draws from the default's data and model (the same simulate and train parts, so a
    directory of the default can be sampled again) with twice the SMC particles per run, not more runs:
    more lineages per run shrink the per-run bias that pooling runs cannot (docs/theory.md); its
    SMC settings spend no fewer model evaluations per particle than the default's."""
    default, long = workflow.load_recipe("quickstart", "default"), workflow.load_recipe("quickstart", "long")
    for part in ("system", "simulate", "train"):
        assert long[part] == default[part], part
    assert long["sample"]["runs"] == default["sample"]["runs"]
    assert long["sample"]["n"] == 2 * default["sample"]["n"]
    rest = lambda sample: {k: v for k, v in sample.items() if k not in ("n", "settings")}  # noqa: E731
    assert rest(long["sample"]) == rest(default["sample"])
    d, lg = (SMCSettings.from_dict(r["sample"]["settings"]) for r in (default, long))
    assert lg.diffusion.n_steps >= d.diffusion.n_steps
    # model evaluations per final particle in the diffusion: levels times the diffusion's particle factor
    assert lg.diffusion.n_steps * lg.diffusion.particle_factor >= d.diffusion.n_steps * d.diffusion.particle_factor
    assert lg.anneal.mcmc_steps >= d.anneal.mcmc_steps
    assert (lg.resampling, lg.anneal.keep_states, lg.diffusion.t_min) == (
        d.resampling,
        d.anneal.keep_states,
        d.diffusion.t_min,
    )


def test_benchmark_spacing_option_sets_the_time_grid():
    """--spacing puts the SMC diffusion levels on the named grid; without it the recipe's own
    settings are left as they are (no grid is named where the recipe names none)."""
    plan = benchmark_plan("lj13", ["--spacing", "log", "--smc-steps", "400"])
    assert plan["sample"]["settings"]["diffusion"]["spacing"] == "log"
    assert plan["sample"]["settings"]["diffusion"]["n_steps"] == 400
    assert "spacing" not in benchmark_plan("lj13")["sample"]["settings"]["diffusion"]
    assert benchmark_plan("lj55")["arms"]["forcefield-prior"]["sample"]["settings"]["diffusion"]["spacing"] == "log"


def test_aldp_quickstart_benchmark_is_the_quickstart_recipe():
    """benchmarks/aldp.py --recipe aldp-quickstart measures the quickstart's default recipe: its
    plan has the quickstart's data, training and SMC settings (the recipe repeats them, this keeps
    the two in step)."""
    default = workflow.load_recipe("quickstart", "default")
    plan = benchmark_plan("aldp-quickstart")
    assert plan["simulate"] == default["simulate"]
    arm = {**plan["train"], **plan["arms"]["dsm+diffclf"]}
    assert arm.pop("loss") == "dsm+diffclf"
    assert arm == default["train"]
    assert plan["sample"] == {k: v for k, v in workflow.merge(default["sample"], {}).items() if k != "processes"}


def test_recipes_are_valid_workflow_arguments():
    """Every stage of every recipe names arguments the workflow functions take, and its SMC
    settings parse (an unknown key is an error naming it)."""
    import inspect

    from boltzgen.config import TrainConfig
    from boltzgen.md import DEFAULTS
    from boltzgen.sampling.smc import SMCSettings

    simulate_options = set().union(*map(set, DEFAULTS.values())) | set(
        inspect.signature(workflow.simulate_training_data).parameters
    )
    recipes = workflow.load_recipes()
    plans = list(recipes["quickstart"].values())
    for bench in recipes["benchmarks"].values():
        quick = bench.pop("quick")
        plans += [bench, workflow.merge(bench, quick)]
    for plan in plans:
        for stage in ("simulate", "reference"):
            assert set(plan.get(stage, {})) <= simulate_options, plan
        arms = plan.get("arms", {}).values()
        train_options = set(plan["train"]) | {k for arm in arms for k in arm if k != "sample"}
        assert train_options <= set(inspect.signature(workflow.train).parameters), plan
        for arm in arms:  # an arm's configuration overrides and own SMC settings are valid
            TrainConfig.from_dict(workflow.merge(TrainConfig().to_dict(), arm.get("overrides", {})))
        for sample in [plan["sample"]] + [workflow.merge(plan["sample"], arm.get("sample", {})) for arm in arms]:
            sample = dict(sample)
            SMCSettings.from_dict(workflow.merge(SMCSettings().to_dict(), sample.pop("settings", {})))
            assert set(sample) <= set(inspect.signature(workflow.sample).parameters), plan


def test_quickstart_default_recipe():
    """The default recipe: quenched replica frames, the rare state oversampled, pooled SMC runs that
    stop the diffusion early, balance the states at the start of the annealing and keep them."""
    default = workflow.load_recipe("quickstart", "default")
    assert default["simulate"]["keep_replicas"] == 6 and default["simulate"]["quench"] == 0.5
    assert 0 < default["train"]["pretrain_dsm_steps"] < default["train"]["steps"]
    sample = default["sample"]
    assert sample["per_state_resampling"] and sample["runs"] > 1
    assert sample["settings"]["resampling"]["balance_states"] is True
    assert sample["settings"]["anneal"]["keep_states"] is True
    with pytest.raises(KeyError, match="unknown quickstart recipe 'nope'; known: default, long, fast"):
        workflow.load_recipe("quickstart", "nope")
