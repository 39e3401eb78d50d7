"""Metropolis-adjusted MD moves (boltzgen.sampling.openmm_hmc) against exact answers."""

import numpy as np
import openmm
import pytest
import torch

from boltzgen.sampling.openmm_hmc import hmc_integrator, hmc_moves

KT_PER_K = 0.00831446261815324  # kJ/mol/K


def harmonic_pair(k=1000.0, masses=(1.0, 16.0)):
    """Two atoms joined by a spring of rest length 0: U = k r²/2 of the 3-D separation r, so
    <U> = 3/2 kT exactly whatever the masses."""
    system = openmm.System()
    for m in masses:
        system.addParticle(m)
    bond = openmm.HarmonicBondForce()
    bond.addBond(0, 1, 0.0, k)
    system.addForce(bond)
    return system


def mean_energy_kT(x, k, temperature):
    r2 = ((x[:, 1] - x[:, 0]) ** 2).sum(-1)
    u = 0.5 * k * r2 / (KT_PER_K * temperature)
    return u.mean(), u.std() / np.sqrt(len(u))


def test_hmc_moves_sample_the_boltzmann_density_with_unequal_masses():
    k, temperature = 1000.0, 300.0
    x = np.zeros((600, 2, 3))
    x[:, 1, 0] = 0.001  # all start near the minimum: far from equilibrium
    y, acceptance, kept = hmc_moves(x, harmonic_pair(k), temperature, 40, timestep=2.0, n_leapfrog=10, seed=3)
    mean, err = mean_energy_kT(y, k, temperature)
    assert abs(mean - 1.5) < 4 * err and err < 0.06
    assert 0.9 < acceptance <= 1.0 and kept == 1.0
    np.testing.assert_allclose(y.mean(axis=1), x.mean(axis=1), atol=1e-12)  # centre kept
    # a time step near the leapfrog's limit for a stiff spring (ω dt = 1.92 of 2): most proposals
    # fail the Metropolis test, and the moves are still exact
    y, acceptance, _ = hmc_moves(x, harmonic_pair(1e5), temperature, 200, timestep=5.9, n_leapfrog=3, seed=4)
    mean, err = mean_energy_kT(y, 1e5, temperature)
    assert acceptance < 0.2 and abs(mean - 1.5) < 4 * err


def test_hmc_moves_restricted_to_a_set_stay_in_it_and_stay_exact():
    k, temperature = 1000.0, 300.0
    x = np.zeros((600, 2, 3))
    x[:, 1, 0] = 0.001

    def allowed(old, new):  # the half-space of separations with positive x: U is symmetric
        return (new[:, 1, 0] - new[:, 0, 0]) > 0

    y, _, kept = hmc_moves(x, harmonic_pair(k), temperature, 40, timestep=2.0, allowed=allowed, seed=5)
    assert ((y[:, 1, 0] - y[:, 0, 0]) > 0).all() and 0.2 < kept < 0.9
    mean, err = mean_energy_kT(y, k, temperature)
    assert abs(mean - 1.5) < 4 * err


def test_hmc_moves_refuse_bad_input():
    system = harmonic_pair()
    with pytest.raises(ValueError, match="shape"):
        hmc_moves(np.zeros((4, 3, 3)), system, 300.0, 1)
    constrained = harmonic_pair()
    constrained.addConstraint(0, 1, 0.1)
    with pytest.raises(ValueError, match="without constraints"):
        hmc_moves(np.zeros((4, 2, 3)), constrained, 300.0, 1)
    with pytest.raises(ValueError, match="seed"):
        hmc_integrator(300.0, seed=0)
    with pytest.raises(ValueError, match="temperature"):
        hmc_integrator(-1.0)


def test_final_md_moves_need_an_openmm_target():
    from boltzgen.sampling.exact import ExactMarginalModel
    from boltzgen.sampling.settings import SMCSettings
    from boltzgen.sampling.smc import smc_sample
    from boltzgen.systems import GaussianMixture

    gmm = GaussianMixture(np.array([[-2.0, 0.0], [2.0, 0.0]]), np.ones(2), [1.0, 1.0])
    settings = SMCSettings.from_dict({"diffusion": {"n_steps": 4}, "anneal": {"n_levels": 2}, "final": {"md_moves": 2}})
    with pytest.raises(ValueError, match="final.md_moves needs an OpenMM target"):
        smc_sample(ExactMarginalModel(gmm, t_min=1e-2), gmm, 8, torch.Generator().manual_seed(0), settings=settings)
    with pytest.raises(ValueError, match="final.md_timestep"):
        SMCSettings.from_dict({"final": {"md_timestep": 0.0}})
