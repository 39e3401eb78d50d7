"""Capped peptides from a sequence: geometry, chirality, energies against a direct OpenMM call."""

import mdtraj
import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import pytest
import torch

from boltzgen.systems.openmm_target import from_pdb
from boltzgen.systems.peptides import build_capped_peptide, parse_sequence, write_pdb


@pytest.fixture(scope="module")
def aaa_pdb(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("aaa") / "aaa.pdb")
    write_pdb(path, *build_capped_peptide("AAA", ("amber14-all.xml",)))
    return path


def test_sequences_parse_and_bad_ones_are_named():
    assert parse_sequence("AGA") == ["ALA", "GLY", "ALA"]
    assert parse_sequence("ala-gly") == ["ALA", "GLY"]
    assert parse_sequence(["Ala", "GLY"]) == ["ALA", "GLY"]
    with pytest.raises(ValueError, match="empty"):
        parse_sequence("  ")
    with pytest.raises(ValueError, match="'X' at position 2"):
        parse_sequence("AXA")


def test_tri_alanine_geometry(aaa_pdb):
    traj = mdtraj.load(aaa_pdb)
    assert traj.n_atoms == 42
    assert [r.name for r in traj.topology.residues] == ["ACE", "ALA", "ALA", "ALA", "NME"]
    _, omega = mdtraj.compute_omega(traj)
    assert np.all(np.abs(np.degrees(omega)) > 150.0), "peptide bonds must be trans"
    _, phi = mdtraj.compute_phi(traj)
    assert phi.shape == (1, 3) and np.all(phi < 0)
    top = traj.topology
    for res in top.residues:  # L-form: (N - CA) x (C - CA) points away from CB
        if res.name != "ALA":
            continue
        get = {a.name: traj.xyz[0, a.index] for a in res.atoms}
        ca = get["CA"]
        assert np.dot(np.cross(get["N"] - ca, get["C"] - ca), get["CB"] - ca) > 0
    pairs = mdtraj.compute_neighbors(traj, 0.09, np.arange(42))  # no clashes: heavy contacts beyond bonds
    bonded = {frozenset((b[0].index, b[1].index)) for b in top.bonds}
    close = [(i, j) for i, js in enumerate(pairs) for j in js if frozenset((i, int(j))) not in bonded]
    assert not close


def test_energy_and_forces_match_openmm(aaa_pdb):
    # Reference on both sides: "auto" may pick the CPU platform on a loaded machine (single-precision forces)
    target = from_pdb(aaa_pdb, ["amber14-all.xml"], 300.0, platform="Reference")
    try:
        pdb = app.PDBFile(aaa_pdb)
        ff = app.ForceField("amber14-all.xml")
        system = ff.createSystem(pdb.topology, nonbondedMethod=app.NoCutoff, constraints=None)
        context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
        x = target.positions.double().numpy()
        rng = np.random.default_rng(0)
        xs = x[None] + 0.002 * rng.standard_normal((3, *x.shape))
        kt = 0.00831446261815324 * 300.0  # R T in kJ/mol (CODATA 2018)
        u, f = target.reduced_energy_and_force(torch.as_tensor(xs))
        for i in range(3):
            context.setPositions(xs[i] * unit.nanometer)
            state = context.getState(getEnergy=True, getForces=True)
            e = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / kt
            force = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer) / kt
            assert float(u[i]) == pytest.approx(e, rel=1e-6, abs=1e-6)
            np.testing.assert_allclose(f[i].numpy(), force, rtol=1e-5, atol=1e-4)
        # forces are -grad u: central finite differences along a random direction
        d = rng.standard_normal(x.shape)
        d /= np.linalg.norm(d)
        h = 1e-5
        up = target.reduced_energy(torch.as_tensor(xs[0] + h * d)[None])
        um = target.reduced_energy(torch.as_tensor(xs[0] - h * d)[None])
        fd = -(float(up[0]) - float(um[0])) / (2 * h)
        assert fd == pytest.approx(float((f[0].numpy() * d).sum()), rel=1e-4, abs=1e-3)
    finally:
        target.close()
