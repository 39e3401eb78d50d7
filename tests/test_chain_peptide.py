"""The whole chain on a user's own molecule: capped tri-alanine given as a PDB and a force field.

simulate -> train -> sample -> reweight -> analyze through the command line at a tiny size. What
is checked is what a user meets: every stage exits 0, the samples are written before any
analysis, the states are the three residues' backbone states (eight joint φ-sign states), ΔF is
reported per state, and an analysis that does not apply is skipped with a note, never fatal.
"""

import json
import math

import mdtraj
import numpy as np
import pytest

from boltzgen.cli import main
from boltzgen.io import load_samples
from boltzgen.systems.peptides import build_capped_peptide, write_pdb


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("aaa-chain")
    pdb = str(root / "aaa.pdb")
    write_pdb(pdb, *build_capped_peptide("AAA", ("amber14-all.xml",)))
    target = ["--pdb", pdb, "--forcefield", "amber14-all.xml"]
    data, run, samples = str(root / "data.h5"), str(root / "run"), str(root / "samples.h5")
    codes = {}
    codes["simulate"] = main(
        [
            "simulate",
            *target,
            "-n",
            "40",
            "-o",
            data,
            "--replicas",
            "1",
            "--equilibration",
            "100",
            "--stride",
            "10",
            "--workers",
            "0",
            "--no-progress",
            "--seed",
            "1",
        ]
    )
    codes["train"] = main(
        [
            "train",
            *target,
            "--data",
            data,
            "-o",
            run,
            "--steps",
            "3",
            "--batch-size",
            "8",
            "--net",
            "egnn",
            "--set",
            "train.sample_check=2",  # the after-training sample check at its smallest
            "--set",
            "model.n_levels=8",  # DiffCLF's normaliser grid (calibrated at the DiffCLF start) small
            "--set",
            "net.hidden=16",  # a small network: every stage's code path at a fraction of the cost
            "--set",
            "net.n_layers=1",
            "--no-progress",
            "--seed",
            "1",
        ]
    )
    codes["sample"] = main(
        [
            "sample",
            run,
            *target,
            "-n",
            "24",
            "-o",
            samples,
            "--diffusion-steps",
            "4",
            "--anneal",
            "2",
            "--max-anneal",
            "4",
            "--anneal-mcmc-steps",
            "1",
            "--final-mcmc-steps",
            "1",
            "--per-state-resampling",
            "--runs",
            "2",
            "--no-progress",
            "--seed",
            "1",
        ]
    )
    codes["reweight"] = main(["reweight", samples, *target, "-o", str(root / "rw.h5")])
    codes["analyze"] = main(["analyze", samples, "-o", str(root / "report"), "--reference", data])
    return root, codes


def test_every_stage_exits_zero(chain):
    _, codes = chain
    assert codes == {"simulate": 0, "train": 0, "sample": 0, "reweight": 0, "analyze": 0}


def test_samples_are_weighted_trajectories_of_the_peptide(chain):
    root, _ = chain
    samples = load_samples(str(root / "samples.h5"))
    assert samples.x.shape == (24, 42, 3)
    assert np.isfinite(samples.log_weights).any()
    traj = mdtraj.load(str(root / "samples.h5"))
    assert traj.n_atoms == 42 and traj.n_frames == 24


def test_states_and_free_energies_are_per_residue(chain):
    root, _ = chain
    metrics = json.loads((root / "metrics.json").read_text())  # sample's metrics, beside its output
    states = metrics["states"]
    assert len(states["names"]) == 8  # joint phi signs of the three alanines
    for key in ("state_free_energies_kT", "state_counts"):
        assert key in metrics


def test_report_has_per_residue_panels_and_notes(chain):
    root, _ = chain
    report = json.loads((root / "report" / "metrics.json").read_text())
    assert (root / "report" / "index.html").exists()
    residues = [k for k in report.get("per_residue", {})]
    assert len(residues) == 3
    for value in report.get("per_residue", {}).values():
        assert "delta_f_kT" in value
        assert value["delta_f_kT"] is None or math.isfinite(value["delta_f_kT"]) or value.get("note")
