"""Bad input and failures on the command line end in one clear line and a non-zero exit (issue 21)."""

import numpy as np
import pytest

from boltzgen.cli import classify_error, main


def _one_line_error(capsys, command):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(f"boltzgen {command}: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture()
def gmm_data(tmp_path, capsys):
    path = str(tmp_path / "gmm.h5")
    assert main(["simulate", "gmm-two-modes", "-n", "64", "-o", path, "--no-progress", "--seed", "0"]) == 0
    capsys.readouterr()
    return path


def test_unknown_config_key_is_one_line_naming_it(tmp_path, capsys, gmm_data):
    config = tmp_path / "c.yaml"
    config.write_text("optim:\n  learning_rate: 0.001\n")
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--system",
                "gmm-two-modes",
                "--data",
                gmm_data,
                "-o",
                str(run),
                "--config",
                str(config),
                "--no-progress",
            ]
        )
        == 2
    )
    line = _one_line_error(capsys, "train")
    assert "optim.learning_rate" in line and "unknown" in line


@pytest.mark.parametrize("value", ["-1", "0"])
def test_bad_learning_rate_is_refused(tmp_path, capsys, gmm_data, value):
    config = tmp_path / "c.yaml"
    config.write_text(f"optim:\n  lr: {value}\n")
    assert (
        main(
            [
                "train",
                "--system",
                "gmm-two-modes",
                "--data",
                gmm_data,
                "-o",
                str(tmp_path / "run"),
                "--config",
                str(config),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "optim.lr" in _one_line_error(capsys, "train")


def test_unknown_system_lists_the_names(tmp_path, capsys, gmm_data):
    assert main(["train", "--system", "nope", "--data", gmm_data, "-o", str(tmp_path / "run"), "--no-progress"]) == 2
    line = _one_line_error(capsys, "train")
    assert "nope" in line and "gmm-two-modes" in line


def test_output_under_a_regular_file_fails_at_once(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    status = main(["simulate", "gmm-two-modes", "-n", "10", "-o", str(blocker / "x.h5"), "--no-progress"])
    assert status != 0
    line = _one_line_error(capsys, "simulate")
    assert "file.txt" in line


def test_unwritable_output_fails_before_any_computing(tmp_path, capsys):
    import os

    if os.geteuid() == 0:
        target = "/sys/boltzgen-out/g.h5"  # sysfs refuses every user, root included
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = str(ro / "g.h5")
    assert main(["simulate", "gmm-two-modes", "-n", "64", "-o", target, "--no-progress"]) != 0
    line = _one_line_error(capsys, "simulate")
    assert "not writable" in line and "choose another output" in line


def test_missing_sample_file_is_one_line(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "missing.h5"), "-o", str(tmp_path / "report")]) == 2
    assert "missing.h5" in _one_line_error(capsys, "analyze")


def test_corrupt_sample_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + np.random.default_rng(0).bytes(200))
    assert main(["reweight", str(bad), "--system", "gmm-two-modes", "-o", str(tmp_path / "w.h5")]) == 2
    assert "bad.h5" in _one_line_error(capsys, "reweight")
    assert not (tmp_path / "w.h5").exists()


def test_errors_are_classified():
    import openmm

    assert classify_error(ValueError("bad -n"))[0] == 2
    assert classify_error(FileNotFoundError("nope"))[0] == 2
    assert classify_error(PermissionError(13, "Permission denied", "/x"))[0] == 1
    assert classify_error(MemoryError())[0] == 1
    assert classify_error(openmm.OpenMMException("Particle coordinate is NaN"))[0] == 1
    assert classify_error(RuntimeError("internal")) == (None, None)
    assert classify_error(KeyError("x")) == (None, None)


def test_system_that_does_not_match_the_data_is_refused_before_training(tmp_path, capsys, gmm_data):
    run = tmp_path / "run"
    assert main(["train", "--system", "gmm-40", "--data", gmm_data, "-o", str(run), "--no-progress"]) == 2
    line = _one_line_error(capsys, "train")
    assert "gmm-two-modes" in line and "gmm-40" in line
    assert not (run / "model.pt").exists() and not (run / "train_log.csv").exists()


HOLD = """
import sys, time
from boltzgen.guards import output_lock
with output_lock(sys.argv[1], "output"):
    print("locked", flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("command", ["simulate", "train", "sample"])
def test_a_second_writer_is_refused(tmp_path, capsys, gmm_data, command):
    import subprocess
    import sys

    run = str(tmp_path / "run")
    if command == "sample":
        assert (
            main(["train", "--system", "gmm-two-modes", "--data", gmm_data, "-o", run, "--steps", "2", "--no-progress"])
            == 0
        )
        capsys.readouterr()
    out = {"simulate": str(tmp_path / "d.h5"), "train": run, "sample": str(tmp_path / "s.h5")}[command]
    argv = {
        "simulate": ["simulate", "gmm-two-modes", "-n", "10", "-o", out, "--no-progress"],
        "train": ["train", "--system", "gmm-two-modes", "--data", gmm_data, "-o", out, "--steps", "2", "--no-progress"],
        "sample": ["sample", run, "-n", "8", "-o", out, "--diffusion-steps", "2", "--no-progress"],
    }[command]
    holder = subprocess.Popen([sys.executable, "-c", HOLD, out], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(argv) == 1
        assert "being written by another boltzgen run" in _one_line_error(capsys, command)
    finally:
        holder.kill()
        holder.wait()
    assert main(argv) == 0  # once the other writer is gone


@pytest.mark.parametrize(
    "argv, status, words",
    [
        (["simulate", "gmm-two-modes", "--dim", "0", "-n", "10"], 2, "dim must be a positive integer"),
        (["simulate", "aldp-vacuum", "-n", "2", "--platform", "NoSuchPlatform", "--replicas", "1"], 2, "Reference"),
        (
            [
                "simulate",
                "aldp-vacuum",
                "-n",
                "2",
                "--timestep",
                "50",
                "--replicas",
                "1",
                "--equilibration",
                "10",
                "--stride",
                "10",
                "--workers",
                "0",
            ],
            1,
            "became unstable",
        ),
    ],
)
def test_simulate_refuses_bad_settings_in_one_line(tmp_path, capsys, argv, status, words):
    out = tmp_path / "x.h5"
    assert main([*argv, "-o", str(out), "--no-progress"]) == status
    assert words in _one_line_error(capsys, "simulate")
    assert not out.exists()


def test_resume_with_fewer_frames_keeps_the_checkpoint(tmp_path, capsys):
    """A simulate run killed after writing its checkpoint, rerun with a smaller -n: refused, and the
    checkpoint (with every frame) is still there."""
    from boltzgen.md.checkpoint import frames_in, write_checkpoint

    out = tmp_path / "md.h5"
    argv = [
        "simulate",
        "aldp-vacuum",
        "-n",
        "6",
        "-o",
        str(out),
        "--replicas",
        "1",
        "--equilibration",
        "10",
        "--stride",
        "5",
        "--workers",
        "0",
        "--no-progress",
    ]
    assert main(argv) == 0
    capsys.readouterr()
    # rebuild the situation of an interrupted run: a checkpoint of 6 frames beside a missing output
    import numpy as np

    from boltzgen.md.checkpoint import read_checkpoint

    ckpt = str(out) + ".checkpoint"
    params = {"n_samples": 6}
    write_checkpoint(ckpt, params, {"step": 30}, {"positions": np.zeros((6, 22, 3))})
    with pytest.raises(ValueError, match="already holds 6 frames, more than the 4 asked for"):
        read_checkpoint(ckpt, {"n_samples": 4})
    state, arrays = read_checkpoint(ckpt, {"n_samples": 8})
    assert frames_in(arrays) == 6
    assert (tmp_path / "md.h5.checkpoint").exists()


def test_reweight_reads_a_dcd_with_the_targets_topology(tmp_path, capsys):
    """MD from another program (DCD, no topology inside) reweighted against a built-in target."""
    import mdtraj

    from boltzgen.io import load_samples
    from boltzgen.systems import load

    target = load("aldp-vacuum", n_workers=0)
    x = np.repeat(target.positions.numpy()[None], 3, axis=0) + 0.002 * np.arange(3)[:, None, None]
    dcd = str(tmp_path / "md.dcd")
    mdtraj.Trajectory(x.astype(np.float32), target.topology).save_dcd(dcd)
    target.close()
    np.save(tmp_path / "lq.npy", np.zeros(3))
    out = str(tmp_path / "w.h5")
    assert (
        main(
            [
                "reweight",
                dcd,
                "--system",
                "aldp-vacuum",
                "--log-q",
                str(tmp_path / "lq.npy"),
                "-o",
                out,
                "--workers",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    assert load_samples(out).x.shape == (3, 22, 3)


def test_killed_train_processes_leave_no_worker_and_the_rerun_is_undisturbed(tmp_path, gmm_data):
    """Case 2: `boltzgen train --processes 2` killed with SIGKILL takes its workers with it; a rerun
    resumes and its log holds exactly one row per logged step (no stray writer adds rows)."""
    import csv
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    config = tmp_path / "c.yaml"
    config.write_text(
        "net: {kind: mlp, hidden: 32, n_layers: 2}\nloss: {kind: dsm, k: 1}\n"
        "train: {steps: 300, batch_size: 8, log_every: 20, checkpoint_every: 20, val_every: 1000}\n"
    )
    run = tmp_path / "run"
    args = [sys.executable, "-m", "boltzgen.cli", "train", "--data", gmm_data, "-o", str(run)]
    args += ["--config", str(config), "--processes", "2", "--no-progress"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / "checkpoint.pt").exists():
        assert time.time() < deadline and proc.poll() is None, "training did not start"
        time.sleep(0.2)
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert workers, "no worker processes"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(workers, timeout=15)
    for p in alive:
        p.kill()
    assert not alive, f"{len(alive)} workers outlived the killed trainer"
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    time.sleep(1.0)  # a stray writer would append after the rerun ends
    with open(run / "train_log.csv") as handle:
        steps = [int(row["step"]) for row in csv.DictReader(handle)]
    assert steps == list(range(20, 301, 20))


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--solvent", "obc2"], "--solvent goes with --sequence"),
        (["--system-xml", "system.xml"], "--system-xml and --topology go together"),
        (["--pdb", "x.pdb"], "--pdb and --forcefield go together"),
        (["--sequence", "AA", "--pdb", "x.pdb"], "name the target in exactly one way"),
    ],
)
def test_train_refuses_half_given_target_flags_before_reading_anything(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "absent.h5"), "-o", str(out), "--no-progress", *flags]) == 2
    assert message in _one_line_error(capsys, "train")
    assert not out.exists()


def test_free_energy_output_directory_is_locked(tmp_path, capsys):
    from boltzgen.guards import output_lock

    out = tmp_path / "fe"
    with output_lock(str(out), "output directory"):
        argv = ["free-energy", "--from", "gmm-two-modes", "--to", "gmm-two-modes", "--temperature-to", "2"]
        assert main([*argv, "-o", str(out), "--frames", "50", "--no-progress"]) != 0
    assert "is being written by another boltzgen run" in _one_line_error(capsys, "free-energy")
    assert not (out / "md_from.h5").exists()
