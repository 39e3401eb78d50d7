"""Metastable states (boltzgen.states): torsions from the topology, sign and range states, user
functions, per-residue and joint backbone states, and alanine dipeptide's phi states exactly as
before the states module existed."""

import math

import mdtraj
import numpy as np
import pytest
import torch

from boltzgen import states as S
from boltzgen.systems.catalog import data_path

BACKBONE_ATOMS = {"ACE": ["CH3", "C", "O"], "ALA": ["N", "CA", "CB", "C", "O"], "NME": ["N", "C"]}


def _topology(resnames):
    """A synthetic peptide topology: backbone atoms named as mdtraj expects, no bonds needed."""
    top = mdtraj.Topology()
    chain = top.add_chain()
    for i, name in enumerate(resnames):
        residue = top.add_residue(name, chain, resSeq=i + 1)
        for atom in BACKBONE_ATOMS[name]:
            top.add_atom(atom, mdtraj.element.get_by_symbol(atom[0]), residue)
    return top


def _index(top, resseq, name):
    return next(a.index for a in top.atoms if a.residue.resSeq == resseq and a.name == name)


def _hand_torsion(x, quad):
    """IUPAC torsion of atoms quad in (B, N, 3) coordinates: atan2(|b1| b0·(b1×b2), (b0×b1)·(b1×b2))."""
    p0, p1, p2, p3 = (x[:, i] for i in quad)
    b0, b1, b2 = p1 - p0, p2 - p1, p3 - p2
    y = np.linalg.norm(b1, axis=1) * np.sum(b0 * np.cross(b1, b2), 1)
    return np.arctan2(y, np.sum(np.cross(b0, b1) * np.cross(b1, b2), 1))


def test_torsion_of_four_atoms_is_the_angle_between_the_planes():
    theta = np.linspace(-3.0, 3.0, 13)
    x = np.zeros((theta.size, 4, 3))
    x[:, 0] = [0.1, 0.0, 0.0]
    x[:, 2] = [0.0, 0.0, 0.15]
    x[:, 3] = np.stack([0.1 * np.cos(theta), 0.1 * np.sin(theta), np.full_like(theta, 0.15)], 1)
    np.testing.assert_allclose(_hand_torsion(x, [0, 1, 2, 3]), theta, atol=1e-12)
    np.testing.assert_allclose(S.torsion_angles(x, [0, 1, 2, 3]), theta, atol=1e-12)  # no topology: float64
    np.testing.assert_allclose(S.torsion_angles(x.reshape(theta.size, 12), [0, 1, 2, 3]), theta, atol=1e-12)
    states = S.torsion_states(None, [0, 1, 2, 3], "t")
    assert states.names == ("t<0", "t>0") and states.name == "t"
    np.testing.assert_array_equal(states.assign(x), (theta > 0).astype(np.int64))


def test_tri_alanine_has_two_residue_state_sets_and_four_joint_states():
    """Uncapped Ala-Ala-Ala: phi of residues 2 and 3 (residue 1 has no preceding C)."""
    top = _topology(["ALA", "ALA", "ALA"])
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 0.3, (400, top.n_atoms, 3))
    per_residue = S.backbone_states(top)
    assert [s.name for s in per_residue] == ["phi(ALA2)", "phi(ALA3)"]
    assert per_residue[0].names == ("phi(ALA2)<0", "phi(ALA2)>0")
    quads = {
        r: [_index(top, r - 1, "C"), _index(top, r, "N"), _index(top, r, "CA"), _index(top, r, "C")] for r in (2, 3)
    }
    phi2, phi3 = (_hand_torsion(x, quads[r]) for r in (2, 3))
    np.testing.assert_array_equal(per_residue[0].assign(x), (phi2 > 0).astype(int))
    np.testing.assert_array_equal(per_residue[1].assign(x), (phi3 > 0).astype(int))
    joint = S.default_states(top)
    assert len(joint) == 4 and [c.name for c in joint.components] == [s.name for s in per_residue]
    assert joint.names == (
        "phi(ALA2)<0,phi(ALA3)<0",
        "phi(ALA2)<0,phi(ALA3)>0",
        "phi(ALA2)>0,phi(ALA3)<0",
        "phi(ALA2)>0,phi(ALA3)>0",
    )
    labels = joint.assign(x)
    np.testing.assert_array_equal(labels, 2 * (phi2 > 0) + (phi3 > 0))
    assert set(labels.tolist()) == {0, 1, 2, 3}  # random coordinates visit every joint state
    # torsions by name, phi and psi of each residue, equal to the hand-computed ones (float32 in mdtraj)
    tors = S.backbone_torsions(x, top)
    assert list(tors) == ["psi(ALA1)", "phi(ALA2)", "psi(ALA2)", "phi(ALA3)"]
    np.testing.assert_allclose(tors["phi(ALA2)"], phi2, atol=1e-4)
    np.testing.assert_allclose(tors["phi(ALA3)"], phi3, atol=1e-4)
    # one residue by index or label; several phi without one is an error that names them
    assert S.phi_states_of(top, "ALA3").name == "phi(ALA3)" and S.phi_states_of(top, 1).name == "phi(ALA2)"
    with pytest.raises(ValueError, match="2 phi torsions \\(ALA2, ALA3\\): pass residue="):
        S.phi_states_of(top)
    with pytest.raises(ValueError, match="residue ALA1 has no phi torsion"):
        S.phi_states_of(top, 0)


def test_capped_tri_alanine_has_eight_joint_states():
    top = _topology(["ACE", "ALA", "ALA", "ALA", "NME"])
    assert [label for label, _ in S.phi_torsions(top)] == ["ALA2", "ALA3", "ALA4"]
    assert len(S.backbone_states(top)) == 3 and len(S.default_states(top)) == 8


def test_alanine_dipeptide_labels_are_the_old_phi_states_exactly():
    """The label is 1 exactly where mdtraj's phi (float32 frames, as the old weights.phi_states
    computed it) is > 0, also for configurations near phi = 0 and pi."""
    traj = mdtraj.load(data_path("aldp.pdb"))
    top = traj.topology
    rng = np.random.default_rng(1)
    x = traj.xyz[0].astype(np.float64)[None] + 0.05 * rng.standard_normal((2000, top.n_atoms, 3))
    x[1000:] *= -1.0
    old_phi = mdtraj.compute_phi(mdtraj.Trajectory(x.astype(np.float32), top))[1][:, 0]
    states = S.default_states(top)
    assert states.name == "phi" and states.names == ("phi<0", "phi>0")
    labels = states.assign(x)
    assert labels.dtype == np.int64 and 0 < labels.sum() < labels.size
    np.testing.assert_array_equal(labels, (old_phi > 0).astype(np.int64))
    np.testing.assert_array_equal(states.assign(torch.from_numpy(x)), labels)
    np.testing.assert_array_equal(states.assign(mdtraj.Trajectory(x.astype(np.float32), top)), labels)
    np.testing.assert_array_equal(S.phi_states_of(top).assign(x), labels)
    # phi and psi as arrays: (B,) each for the one residue, the published atom order
    phi, psi = S.phi_psi(x, top)
    np.testing.assert_array_equal(phi, old_phi.astype(np.float64))
    frames = mdtraj.Trajectory(x.astype(np.float32), top)
    np.testing.assert_array_equal(phi, mdtraj.compute_dihedrals(frames, [(4, 6, 8, 14)])[:, 0].astype(np.float64))
    assert psi.shape == (2000,)
    with pytest.raises(ValueError, match="do not match a topology of 22 atoms"):
        states.assign(x[:, :21])


def test_no_states_without_a_backbone():
    assert S.default_states(None) is None and S.backbone_states(None) == []
    lj = mdtraj.Topology()
    residue = lj.add_residue("LJ", lj.add_chain())
    for _ in range(3):
        lj.add_atom("Ar", mdtraj.element.argon, residue)
    assert S.default_states(lj) is None
    with pytest.raises(ValueError, match="no phi torsion"):
        S.phi_states_of(lj)
    with pytest.raises(ValueError, match="no phi torsion"):
        S.phi_psi(np.zeros((1, 3, 3)), lj)


def test_torsion_ranges_wrap_around_and_leave_the_rest_to_other():
    x = np.zeros((6, 4, 3))
    theta = np.array([-3.0, -1.0, 0.5, 2.0, 3.0, -2.9])
    x[:, 0] = [0.1, 0.0, 0.0]
    x[:, 2] = [0.0, 0.0, 0.15]
    x[:, 3] = np.stack([0.1 * np.cos(theta), 0.1 * np.sin(theta), np.full(6, 0.15)], 1)
    states = S.torsion_states(None, [0, 1, 2, 3], "t", bounds=[(2.5, -2.5), (-1.5, 0.0)], names=["trans", "minus"])
    assert states.names == ("trans", "minus", "other")
    np.testing.assert_array_equal(states.assign(x), [0, 1, 2, 2, 0, 0])
    full = S.torsion_states(None, [0, 1, 2, 3], "t", bounds=[(0.0, math.pi), (-math.pi, 0.0)])
    assert len(full) == 2 and full.names == ("t[0,180)", "t[-180,0)")
    np.testing.assert_array_equal(full.assign(x), [1, 1, 0, 0, 0, 1])
    with pytest.raises(ValueError, match="2 names for 1 ranges"):
        S.torsion_states(None, [0, 1, 2, 3], "t", bounds=[(0.0, 1.0)], names=["a", "b"])
    with pytest.raises(ValueError, match="needs 4 atoms"):
        S.torsion_states(None, [0, 1, 2], "t")


def test_function_states_check_their_labels():
    sides = S.function_states(lambda x: np.asarray(x)[:, 0] > 0, ("left", "right"), name="side")
    x = np.array([[-1.0, 0.0], [2.0, 1.0]])
    np.testing.assert_array_equal(sides.assign(x), [0, 1])
    from_torch = S.function_states(lambda x: torch.as_tensor(x[:, 0] > 0).long(), ("l", "r"))
    np.testing.assert_array_equal(from_torch.assign(x), [0, 1])
    bad = S.function_states(lambda x: np.array([0, 2]), ("a", "b"), name="bad")
    with pytest.raises(ValueError, match="states bad: labels must lie in \\[0, 2\\), got \\[0, 2\\]"):
        bad.assign(x)
    with pytest.raises(ValueError, match="one integer per configuration"):
        S.function_states(lambda x: np.array([0.5, 1.0]), ("a", "b")).assign(x)
    with pytest.raises(ValueError, match="distinct"):
        S.function_states(lambda x: x, ("a", "a"))


def test_joint_states_encode_the_first_set_slowest():
    a = S.function_states(lambda x: np.asarray(x)[:, 0], ("a0", "a1", "a2"), name="A")
    b = S.function_states(lambda x: np.asarray(x)[:, 1], ("b0", "b1"), name="B")
    joint = S.joint_states([a, b])
    assert joint.name == "A×B" and len(joint) == 6 and joint.names[3] == "a1,b1"
    x = np.array([[0, 0], [0, 1], [1, 0], [2, 1]])
    np.testing.assert_array_equal(joint.assign(x), [0, 1, 2, 5])


def test_basin_states_split_phi_below_zero_by_psi_and_refine_the_phi_signs():
    """Alanine dipeptide: basin 2 exactly where phi > 0; among phi <= 0, alpha_R for psi in
    [-120, 50) degrees (hand-computed torsions), beta/PII otherwise; the basins merge to the phi signs."""
    traj = mdtraj.load(data_path("aldp.pdb"))
    top = traj.topology
    rng = np.random.default_rng(3)
    x = traj.xyz[0].astype(np.float64)[None] + 0.06 * rng.standard_normal((3000, top.n_atoms, 3))
    x[1500:] *= -1.0  # mirror images: phi > 0 too
    basins = S.basin_states(top)
    assert basins.name == "basin" and basins.names == ("beta_PII", "alpha_R", "phi>0")
    labels = basins.assign(x)
    phi = _hand_torsion(x, [4, 6, 8, 14])
    psi = _hand_torsion(x, [6, 8, 14, 16])
    away = (np.abs(psi - np.radians(-120.0)) > 1e-3) & (np.abs(psi - np.radians(50.0)) > 1e-3) & (np.abs(phi) > 1e-3)
    alpha = (psi >= np.radians(-120.0)) & (psi < np.radians(50.0))
    expected = np.where(phi > 0, 2, np.where(alpha, 1, 0))
    np.testing.assert_array_equal(labels[away], expected[away])
    assert set(labels.tolist()) == {0, 1, 2}
    np.testing.assert_array_equal(labels == 2, S.default_states(top).assign(x) == 1)


def test_basin_states_of_a_longer_peptide_are_joint_per_residue():
    top = _topology(["ACE", "ALA", "ALA", "ALA", "NME"])
    joint = S.basin_states(top)
    assert len(joint) == 27 and [c.name for c in joint.components] == ["basin(ALA2)", "basin(ALA3)", "basin(ALA4)"]
    assert joint.names[0] == "beta_PII(ALA2),beta_PII(ALA3),beta_PII(ALA4)"
    assert S.basin_states_of(top, "ALA3").names == ("beta_PII(ALA3)", "alpha_R(ALA3)", "phi>0(ALA3)")
    with pytest.raises(ValueError, match="3 residues have phi and psi \\(ALA2, ALA3, ALA4\\): pass residue="):
        S.basin_states_of(top)
    assert S.basin_states(None) is None
