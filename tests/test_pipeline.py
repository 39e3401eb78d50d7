"""`boltzgen quickstart --fast`: the whole chain (simulate, train, SMC, analyze) as a smoke run."""

import json
import os

import mdtraj
import numpy as np
import yaml

from boltzgen.cli import main
from boltzgen.io import load_samples
from boltzgen.weights import phi_states


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
    # two SMC runs resampled within the phi states: each run's phi > 0 count matches the file, and
    # the summary warns about the runs that kept fewer than 10 phi > 0 particles, and only those
    in_b = phi_states(samples.x, traj.topology)[1]
    counts = [int(in_b[samples.extra["smc_run"] == r].sum()) for r in range(2)]
    assert metrics["runs"] == 2 and metrics["phi_positive_runs"] == counts
    few = [str(r + 1) for r, c in enumerate(counts) if c < 10]
    if few:
        assert f"run{'s' if len(few) > 1 else ''} {', '.join(few)} ended with fewer than 10 phi > 0" in printed
    else:
        assert "phi > 0 particles: such runs" not in printed
    # a Delta F from pooled runs comes with a note that its error is only the runs' spread
    assert ("the error is the spread of the runs" in printed) == (metrics["delta_f_kT"] is not None)
    assert f"from {metrics['reference_phi_positive_n']} phi > 0 frames" in printed
    assert set(metrics["stage_seconds"]) == {"simulate", "train", "sample", "analyze"}
    assert metrics["energy_w2"] is not None and metrics["energy_w2"] >= 0
    for name in ("index.html", "ramachandran.png", "torsion_profiles.png", "energy_histogram.png",
                 "ess_trace.png", "training_loss.png"):
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
    assert main(["quickstart", "-o", out, "--fast", "--no-progress", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["stage_seconds"]["simulate"] == 0.0 and again["stage_seconds"]["sample"] == 0.0

    # SMC resampling within the phi states of the peptide (boltzgen sample --per-state-resampling)
    assert main(["sample", os.path.join(out, "run"), "-n", "16", "-o", str(tmp_path / "states.h5"), "--steps", "5",
                 "--anneal", "2", "--final-mcmc-steps", "2", "--per-state-resampling", "--no-progress", "--json"]) == 0
    by_state = json.loads(capsys.readouterr().out)
    assert by_state["per_state_resampling"] is True and 0 < by_state["ess_fraction"] <= 1
    assert by_state["denoised_state_labels"] is True  # the phi of E[x_0 | x_t] during the diffusion


def test_quickstart_long_is_the_benchmark_recipe(capsys):
    """--long runs the DSM + DiffCLF arm of benchmarks/aldp.py: its options parse as the commands
    take them, and it matches the benchmark's data, training and SMC settings."""
    from boltzgen.cli import build_parser
    from boltzgen.pipeline import QUICKSTART_SIZES

    long = QUICKSTART_SIZES["long"]
    parser = build_parser()
    simulate = parser.parse_args(["simulate", "aldp-vacuum", "-n", str(long["n_data"]), "-o", "x.h5",
                                  *map(str, long["simulate_options"])])
    assert simulate.keep_replicas == 3 and simulate.stride == 2500
    train = parser.parse_args(["train", "--data", "x.h5", "-o", "run", *map(str, long["train_options"])])
    assert train.pretrain_dsm_steps == 2000 and train.phi_positive_fraction == "0.25" and train.processes == 2
    sample = parser.parse_args(["sample", "run", "-n", "8", "-o", "s.h5", *map(str, long["sample_options"])])
    assert sample.per_state_resampling and sample.runs == 4
    assert (long["train_steps"], long["batch_size"], long["n_samples"], long["smc_steps"]) == (3000, 64, 1024, 400)
    assert main(["quickstart", "--fast", "--long"]) == 2
    assert "--fast and --long exclude each other" in capsys.readouterr().err


def test_quickstart_default_options_parse():
    """The 15-minute recipe: quenched replica frames, phi > 0 oversampled, 4 pooled SMC runs that
    stop the diffusion at t = 0.05 and give both phi states half of the particles (its options
    parse as the commands take them)."""
    from boltzgen.cli import build_parser
    from boltzgen.pipeline import QUICKSTART_SIZES

    default = QUICKSTART_SIZES["default"]
    parser = build_parser()
    simulate = parser.parse_args(["simulate", "aldp-vacuum", "-n", str(default["n_data"]), "-o", "x.h5",
                                  *map(str, default["simulate_options"])])
    assert simulate.keep_replicas == 6 and simulate.quench == 0.5
    train = parser.parse_args(["train", "--data", "x.h5", "-o", "run", *map(str, default["train_options"])])
    assert train.phi_positive_fraction == "0.25" and train.processes == 2
    assert 0 < train.pretrain_dsm_steps < default["train_steps"]
    sample = parser.parse_args(["sample", "run", "-n", "8", "-o", "s.h5", *map(str, default["sample_options"])])
    assert sample.per_state_resampling and sample.balance_states and sample.runs == 4 and sample.t_min == 0.05
    assert sample.max_anneal == 128 and default["smc_steps"] == 100
