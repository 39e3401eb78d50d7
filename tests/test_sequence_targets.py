"""Peptides of any sequence (issue 22): built, checked, made into targets, named on the command line."""

import json

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import pytest
import torch

from boltzgen.cli import main
from boltzgen.config import derived_defaults
from boltzgen.io import load_samples
from boltzgen.states import chiral_centres, peptide_bonds
from boltzgen.systems import from_sequence, resolve, target_recipe
from boltzgen.systems.catalog import replica_ladder
from boltzgen.systems.peptides import build_capped_peptide, check_peptide, parse_sequence

KT_PER_KJ_300 = 1.0 / (0.00831446261815324 * 300.0)  # R T in kJ/mol (CODATA 2018)


@pytest.mark.parametrize("sequence", ["RND", "CQE", "HIL", "KMF", "PST", "WYV", "GAG"])
def test_every_standard_residue_builds_l_and_trans(sequence):
    top, x = build_capped_peptide(sequence)
    names = [r.name for r in top.residues()]
    assert names[0] == "ACE" and names[-1] == "NME"
    assert names[1:-1] == parse_sequence(sequence)
    problems = check_peptide(top, x[None])
    assert problems["d_centres"].tolist() == [0]
    assert problems["cis_bonds"].tolist() == [0]
    assert problems["clashes"].tolist() == [0]
    assert len(chiral_centres(top)) == sum(r != "GLY" for r in parse_sequence(sequence))
    assert len(peptide_bonds(top)) == len(sequence) + 1  # caps included


def test_d_forms_and_cis_bonds_are_detected():
    top, x = build_capped_peptide("AAA")
    mirror = -x  # a reflection turns every Calpha into D and keeps |omega|
    bonds = peptide_bonds(top)
    # cis: rotate everything after the second peptide bond's C-N axis by 180 degrees
    _, c, n, _ = bonds[1]
    axis = (x[n] - x[c]) / np.linalg.norm(x[n] - x[c])
    import mdtraj

    mdtop = mdtraj.Topology.from_openmm(top)
    first_res = mdtop.atom(int(n)).residue.index
    moving = np.array([a.index for a in mdtop.atoms if a.residue.index >= first_res])
    rel = x[moving] - x[c]
    rotated = 2 * np.outer(rel @ axis, axis) - rel  # 180 degrees about the axis through C
    cis = x.copy()
    cis[moving] = x[c] + rotated
    stretched = x.copy()
    stretched[moving] += 0.3 * axis  # pulls the peptide bond C-N apart: one broken bond
    counts = check_peptide(top, np.stack([x, mirror, cis, stretched]), clash_distance=0.0)
    assert counts["d_centres"].tolist() == [0, 3, 0, 0]
    assert counts["cis_bonds"].tolist() == [0, 0, 1, 0]
    assert counts["broken_bonds"].tolist() == [0, 0, 0, 1]


def test_structure_fractions_are_weighted_shares_in_the_unit_interval():
    import mdtraj

    from boltzgen.io import Samples
    from boltzgen.report import structure_fractions

    top, x = build_capped_peptide("AAA")
    frames = np.stack([-x] * 7 + [x] * 3)  # seven mirrored (all-D) frames, three L frames
    samples = Samples(x=frames, topology=mdtraj.Topology.from_openmm(top))
    log_w = np.random.default_rng(3).normal(size=10) * 30.0
    w = np.exp(log_w - log_w.max())
    got = structure_fractions(samples, log_w)
    assert got["d_centre_fraction"] == pytest.approx(w[:7].sum() / w.sum(), rel=1e-12)
    assert got["cis_bond_fraction"] == 0.0 and got["broken_bond_fraction"] == 0.0
    # all frames flagged: exactly 1 whatever the weights (summation rounding must not leave [0, 1])
    for seed in range(20):
        log_w = np.random.default_rng(seed).normal(size=10)
        share = structure_fractions(Samples(x=frames[:7], topology=samples.topology), log_w[:7])
        assert share["d_centre_fraction"] == 1.0


def test_target_energy_matches_openmm_and_forces_match_differences():
    target = from_sequence("AWA", ["amber14-all.xml"], "obc2", 300.0, n_workers=0, platform="Reference")
    try:
        ff = app.ForceField("amber14-all.xml", "implicit/obc2.xml")
        top, x0 = build_capped_peptide("AWA", ["amber14-all.xml"])
        system = ff.createSystem(top, nonbondedMethod=app.NoCutoff, constraints=None)
        context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
        rng = np.random.default_rng(0)
        xs = x0[None] + 0.003 * rng.standard_normal((2, *x0.shape))
        u, f = target.reduced_energy_and_force(torch.as_tensor(xs))
        for i in range(2):
            context.setPositions(xs[i] * unit.nanometer)
            e = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
            assert float(u[i]) == pytest.approx(e * KT_PER_KJ_300, rel=1e-6, abs=1e-6)
        d = rng.standard_normal(x0.shape)
        d /= np.linalg.norm(d)
        h = 1e-5
        up, um = (float(target.reduced_energy(torch.as_tensor(xs[0] + s * h * d)[None])[0]) for s in (1, -1))
        assert -(up - um) / (2 * h) == pytest.approx(float((f[0].numpy() * d).sum()), rel=1e-4, abs=1e-3)
    finally:
        target.close()


def test_recipe_rebuilds_the_same_target():
    target = from_sequence("GA", ["amber99sbildn.xml"], "gbn2", 350.0, n_workers=0)
    recipe = target_recipe(json.loads(json.dumps(target.metadata())))
    assert recipe == {
        "sequence": "GLY-ALA",
        "forcefield": ["amber99sbildn.xml"],
        "solvent": "gbn2",
        "temperature": 350.0,
    }
    again = resolve(**recipe, n_workers=0)
    try:
        x = target.positions[None].double()
        assert float(again.reduced_energy(x)[0]) == pytest.approx(float(target.reduced_energy(x)[0]), rel=1e-12)
        assert again.temperature == 350.0
    finally:
        target.close()
        again.close()
    assert target_recipe({"system": "aldp-vacuum", "temperature_K": 300.0}) == {
        "system": "aldp-vacuum",
        "temperature": 300.0,
    }
    assert target_recipe({"system": "my-own", "pdb": "/nonexistent.pdb", "forcefield": ["x.xml"]}) is None


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"sequence": "AZA"}, "unknown residue 'Z' at position 2"),
        ({"sequence": ""}, "empty"),
        ({"sequence": "AA", "solvent": "water"}, "unknown solvent 'water'"),
        ({"pdb": "x.pdb", "forcefield": ["a.xml"], "solvent": "obc2"}, "--solvent goes with --sequence"),
        ({"system": "aldp-vacuum", "sequence": "AA"}, "exactly one way"),
    ],
)
def test_bad_sequence_targets_are_named(kwargs, words):
    with pytest.raises(ValueError, match=words):
        resolve(**kwargs)


def test_builtin_alanine_peptides_follow_their_conventions():
    from boltzgen.systems.catalog import spec

    for name, atoms, temperature, solvent_file in (
        ("ala3", 42, 310.0, "implicit/obc1.xml"),
        ("ala4", 52, 300.0, "amber99_obc.xml"),
        ("ala6", 72, 310.0, "implicit/obc1.xml"),
    ):
        s = spec(name)
        assert s.n_atoms == atoms and s.temperature == temperature and solvent_file in s.forcefield
    target = resolve("ala3", n_workers=0)
    try:
        assert target.event_shape == (42, 3) and target.temperature == 310.0
        assert target.metadata()["solvent"] == "obc1"
    finally:
        target.close()


def test_replica_ladder_grows_with_size():
    assert replica_ladder(22, 300.0)["replicas"] == 6  # alanine dipeptide's shipped ladder
    sizes = [replica_ladder(n, 300.0)["replicas"] for n in (22, 42, 72, 200)]
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0]


def test_derived_training_defaults_scale_the_batch():
    small = derived_defaults((22, 3), molecular=True)
    large = derived_defaults((72, 3), molecular=True)
    assert small["net"]["kind"] == "egnn" and small["train"]["batch_size"] == 128
    assert 16 <= large["train"]["batch_size"] < small["train"]["batch_size"]
    assert derived_defaults((10,), molecular=False)["net"]["kind"] == "mlp"
    # a molecule's network knows its bond graph and its centres' relative hands; a cluster's not
    assert small["net"]["bond_edges"] is True and small["net"]["relative_chirality"] is True
    assert "relative_chirality" not in derived_defaults((13, 3), molecular=False)["net"]


def test_sequence_target_through_every_command(tmp_path, capsys):
    target = ["--sequence", "AAAA", "--forcefield", "amber14-all.xml", "--solvent", "obc2"]
    data, run = str(tmp_path / "d.h5"), str(tmp_path / "run")
    common = ["--workers", "0", "--no-progress"]
    assert (
        main(
            ["simulate", *target, "-n", "16", "-o", data, "--replicas", "2", "--equilibration", "50"]
            + ["--stride", "10", *common]
        )
        == 0
    )
    samples = load_samples(data)
    assert samples.x.shape == (16, 52, 3) and samples.reduced_force is not None
    assert samples.metadata["sequence"] == "ALA-ALA-ALA-ALA" and samples.metadata["solvent"] == "obc2"
    assert (
        main(
            ["train", *target, "--data", data, "-o", run, "--steps", "2", "--batch-size", "4", "--no-progress"]
            + ["--set", "train.sample_check=2"]  # the after-training sample check at its smallest
        )
        == 0
    )
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "kind: egnn" in config  # the derived molecular defaults, not the bare built-in ones
    settings = ["--diffusion-steps", "3", "--anneal", "1", "--max-anneal", "2", "--anneal-mcmc-steps", "1"]
    # without target flags the model's recorded target is rebuilt
    assert main(["sample", run, "-n", "8", "-o", str(tmp_path / "s.h5"), *settings, *common]) == 0
    assert main(["reweight", str(tmp_path / "s.h5"), *target, "-o", str(tmp_path / "rw.h5"), "--workers", "0"]) == 0
    assert main(["analyze", str(tmp_path / "rw.h5"), *target, "-o", str(tmp_path / "report"), "--workers", "0"]) == 0
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert 0.0 <= metrics["d_centre_fraction"] <= 1.0 and 0.0 <= metrics["cis_bond_fraction"] <= 1.0
    capsys.readouterr()
    assert main(["simulate", "--sequence", "ABA", "-n", "4", "-o", str(tmp_path / "x.h5")]) == 2
    assert "unknown residue 'B'" in capsys.readouterr().err


def test_one_sequence_always_builds_the_same_structure():
    """Modeller's hydrogens are placed with Python's random module: the build seeds it (and leaves
    the caller's random state alone), so an MD checkpoint of a sequence target can be resumed."""
    import random

    from boltzgen.systems.peptides import build_capped_peptide

    random.seed(123)
    expected_next = random.random()
    random.seed(123)
    first = build_capped_peptide("AA")[1]
    assert random.random() == expected_next
    second = build_capped_peptide("AA")[1]
    np.testing.assert_array_equal(first, second)
