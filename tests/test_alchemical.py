"""The λ path between two OpenMM targets and the MD + MBAR route of free_energy.

References: a direct OpenMM call on each end (energies and forces of the interpolated System are
the linear combination), and exact free energies of harmonic wells (ΔF = (3/2) log(k_B / k_A) for
a particle in an isotropic well of stiffness k).
"""

import copy
import math

import mdtraj
import numpy as np
import openmm
import pytest
import torch

from boltzgen.systems import from_openmm, load
from boltzgen.systems.alchemical import LAMBDA_PARAMETER, interpolated_system, path_target
from boltzgen.weights import mbar_path
from boltzgen.workflow import free_energy, path_lambda_states


def _well(k: float, temperature: float = 300.0, parameter: str = "k"):
    """One argon atom in the well U = k |r|^2 / 2 (kJ/mol/nm^2): Z ∝ (2π kT / k)^(3/2)."""
    system = openmm.System()
    system.addParticle(39.948)
    force = openmm.CustomExternalForce(f"0.5*{parameter}*(x^2+y^2+z^2)")
    force.addGlobalParameter(parameter, k)
    force.addParticle(0, [])
    system.addForce(force)
    top = mdtraj.Topology()
    top.add_atom("AR", mdtraj.element.argon, top.add_residue("AR", top.add_chain()))
    return from_openmm(system, top, temperature, positions=np.zeros((1, 3)), name=f"well-{k:g}", n_workers=0)


def _openmm_energy_force(system, x):
    context = openmm.Context(
        copy.deepcopy(system), openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference")
    )
    state_energy, state_force = [], []
    for frame in x:
        context.setPositions(frame)
        state = context.getState(getEnergy=True, getForces=True)
        state_energy.append(state.getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole))
        state_force.append(
            state.getForces(asNumpy=True).value_in_unit(openmm.unit.kilojoule_per_mole / openmm.unit.nanometer)
        )
    return np.array(state_energy), np.array(state_force)


@pytest.fixture(scope="module")
def solvation_ends():
    a, b = load("aldp-vacuum", n_workers=0), load("aldp-implicit", n_workers=0)
    yield a, b
    a.close()
    b.close()


@pytest.mark.parametrize("lam", [0.0, 0.37, 1.0])
def test_interpolated_system_is_the_linear_combination_of_direct_openmm_calls(solvation_ends, lam):
    a, b = solvation_ends
    rng = np.random.default_rng(3)
    x = a.positions.numpy()[None] + 0.01 * rng.standard_normal((3, 22, 3))
    e_a, f_a = _openmm_energy_force(a.system, x)
    e_b, f_b = _openmm_energy_force(b.system, x)
    e, f = _openmm_energy_force(interpolated_system(a.system, b.system, lam), x)
    np.testing.assert_allclose(e, (1 - lam) * e_a + lam * e_b, rtol=0, atol=1e-8)
    np.testing.assert_allclose(f, (1 - lam) * f_a + lam * f_b, rtol=0, atol=1e-7)
    target = path_target(a, b, lam)
    try:
        u = target.reduced_energy(torch.as_tensor(x)).numpy()
        u_ab = [t.reduced_energy(torch.as_tensor(x)).numpy() for t in (a, b)]
        np.testing.assert_allclose(u, (1 - lam) * u_ab[0] + lam * u_ab[1], rtol=0, atol=1e-9)
    finally:
        target.close()


def test_lambda_is_a_context_parameter_and_shared_forces_stay_plain(solvation_ends):
    a, b = solvation_ends
    mixed = interpolated_system(a.system, b.system)
    kinds = [type(f).__name__ for f in mixed.getForces()]
    assert kinds.count("CustomCVForce") == 2 and "HarmonicBondForce" in kinds and "GBSAOBCForce" not in kinds
    context = openmm.Context(mixed, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(a.positions.numpy())
    energies = []
    for lam in (0.0, 1.0):
        context.setParameter(LAMBDA_PARAMETER, lam)
        energies.append(
            context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole)
        )
    ends = [_openmm_energy_force(t.system, a.positions.numpy()[None])[0][0] for t in (a, b)]
    np.testing.assert_allclose(energies, ends, atol=1e-8)


def test_systems_that_differ_beyond_the_energy_are_refused(solvation_ends):
    a, b = solvation_ends
    heavy = copy.deepcopy(b.system)
    heavy.setParticleMass(0, 2 * heavy.getParticleMass(0))
    with pytest.raises(ValueError, match="particle 0 has mass"):
        interpolated_system(a.system, heavy)
    constrained = copy.deepcopy(b.system)
    constrained.addConstraint(0, 1, 0.109)
    with pytest.raises(ValueError, match="different constraints"):
        interpolated_system(a.system, constrained)
    with pytest.raises(ValueError, match=r"lambda must lie in \[0, 1\]"):
        interpolated_system(a.system, b.system, 1.5)
    hot = load("aldp-implicit", temperature=400.0, n_workers=0)
    with pytest.raises(ValueError, match="one temperature"):
        path_target(a, hot, 0.5)
    with pytest.raises(ValueError, match="need two OpenMM targets"):
        path_lambda_states(load("lj13"), load("lj13"), 5)
    assert path_lambda_states(a, hot).tolist() == [0.0, 1.0]
    assert path_lambda_states(a, b).tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_mbar_path_recovers_the_exact_free_energy_of_harmonic_wells():
    k, rng = 9.0, np.random.default_rng(1)
    lambdas = np.linspace(0, 1, 6)
    # u_A = x^2/2, u_B = k x^2/2; state λ is a Gaussian of variance 1 / (1 + λ (k - 1))
    du = [0.5 * (k - 1) * rng.normal(0, 1 / math.sqrt(1 + lam * (k - 1)), 4000) ** 2 for lam in lambdas]
    out = mbar_path(du, lambdas)
    assert abs(out["delta_f_kT"] - 0.5 * math.log(k)) < 4 * out["delta_f_err_kT"]
    assert 0 < out["delta_f_err_kT"] < 0.05 and len(out["f_kT"]) == 6 and out["f_kT"][0] == 0.0
    assert 0.03 < out["overlap_min"] <= 1
    # correlated series: thinning by the statistical inefficiency keeps the error honest
    slow = [np.repeat(d[:400], 10) for d in du]
    thinned = mbar_path(slow, lambdas)
    assert min(thinned["statistical_inefficiency"]) > 3 and max(thinned["n_independent"]) < 1500
    with pytest.raises(ValueError, match="increase from 0 to 1"):
        mbar_path(du[:2], [0.0, 0.5])
    with pytest.raises(ValueError, match="not finite"):
        mbar_path([du[0], np.array([np.nan])], [0.0, 1.0])


def test_md_route_with_lambda_states_matches_the_exact_answer(tmp_path):
    with pytest.raises(ValueError, match="global parameter 'k' is 200.0 in A but 1600.0 in B"):
        interpolated_system(_well(200.0).system, _well(1600.0).system)
    a, b = _well(200.0, parameter="k_a"), _well(1600.0, parameter="k_b")
    exact = 1.5 * math.log(1600.0 / 200.0)
    out = free_energy(a, b, output_dir=str(tmp_path / "fe"), md_frames=400, lambda_states=4, progress=False)
    assert out["route"] == "md" and out["method"] == "mbar" and len(out["samples"]) == 4
    assert (tmp_path / "fe" / "md_lambda_0.3333.h5").exists() and (tmp_path / "fe" / "metrics.json").exists()
    assert abs(out["delta_f_kT"] - exact) < 4 * out["delta_f_err_kT"] + 0.02, (out["delta_f_kT"], exact)
    ends = out["bar_ends"]
    assert abs(ends["delta_f_kT"] - exact) < 4 * ends["delta_f_err_kT"] + 0.05
