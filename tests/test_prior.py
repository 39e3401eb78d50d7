"""The force-field prior (boltzgen.nn.prior.BondedPrior) against OpenMM and its symmetries."""

import math

import numpy as np
import openmm
import openmm.unit as unit
import pytest
import torch

from boltzgen import systems
from boltzgen.energy import EnergyModel
from boltzgen.nn import build_network
from boltzgen.nn.prior import BondedPrior
from boltzgen.testing import assert_equivariant

BONDED = ("HarmonicBondForce", "HarmonicAngleForce", "PeriodicTorsionForce")


@pytest.fixture(scope="module")
def aldp():
    target = systems.load("aldp-vacuum", n_workers=0)
    yield target
    target.close()


def _bonded_energy(target, x: np.ndarray) -> float:
    """The bonded part of U/kT from a direct OpenMM call (force groups)."""
    system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(target.system))
    for i, force in enumerate(system.getForces()):
        force.setForceGroup(i)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(x)
    groups = {i for i, f in enumerate(system.getForces()) if f.__class__.__name__ in BONDED}
    energy = context.getState(getEnergy=True, groups=groups).getPotentialEnergy()
    return energy.value_in_unit(unit.kilojoule_per_mole) / float(target.kT)


def _configurations(target, n=4, seed=0):
    rng = np.random.default_rng(seed)
    x0 = target.positions.numpy()
    return [x0 + 0.005 * rng.normal(size=x0.shape) for _ in range(n)]


def test_prior_at_zero_noise_is_the_bonded_energy(aldp):
    L = 0.17
    prior = BondedPrior.from_openmm(aldp.system, L, float(aldp.kT)).double()
    one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    for x in _configurations(aldp):
        e = float(prior(torch.as_tensor(x / L)[None], one, zero))
        assert e == pytest.approx(_bonded_energy(aldp, x), rel=1e-9, abs=1e-8)


def test_prior_is_e3_invariant_and_fades_at_full_noise(aldp):
    L = 0.17
    prior = BondedPrior.from_openmm(aldp.system, L, float(aldp.kT)).double()
    x = torch.as_tensor(np.stack(_configurations(aldp, 3)) / L)
    alpha = torch.full((3,), 0.9, dtype=torch.float64)
    sigma = torch.full((3,), 0.05, dtype=torch.float64)
    e = prior(x, alpha, sigma)
    assert_equivariant(
        lambda y: prior(y, alpha, sigma), x, kind="scalar", generator=torch.Generator().manual_seed(1), rtol=1e-9
    )
    # at t = 1 of the VP schedule (alpha ~ 0.0064) the prior has faded away
    full = prior(x, torch.full((3,), 0.0064, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    assert float(full.abs().max()) < 1e-3 * float(e.abs().min())


def test_diffused_bond_stiffness_is_the_exact_marginal_in_one_dimension():
    """A bond of stiffness k whose two atoms are each noised by sigma: the length's marginal is
    N(alpha r0, alpha^2/k + 2 sigma^2) along the bond, which the prior's k_b(t) encodes."""
    k, r0, alpha, sigma = 400.0, 1.0, 0.8, 0.03
    prior = BondedPrior([[0, 1, r0, k]], [], [], fade_width=1e9).double()
    g = torch.Generator().manual_seed(0)
    n = 200000
    r = r0 + torch.randn(n, generator=g, dtype=torch.float64) / math.sqrt(k)
    x0 = torch.zeros(n, 2, 3, dtype=torch.float64)
    x0[:, 1, 0] = r
    xt = alpha * x0 + sigma * torch.randn(n, 2, 3, generator=g, dtype=torch.float64)
    length = (xt[:, 1] - xt[:, 0]).norm(dim=-1)
    var = float(length.var())
    assert var == pytest.approx(alpha**2 / k + 2 * sigma**2, rel=0.02)
    a, s = torch.tensor([alpha], dtype=torch.float64), torch.tensor([sigma], dtype=torch.float64)
    probe = torch.zeros(1, 2, 3, dtype=torch.float64)
    probe[0, 1, 0] = alpha * r0 + 0.01
    assert float(prior(probe, a, s)) == pytest.approx(0.5 * 0.01**2 / var, rel=0.03)


def test_model_with_prior_round_trips_through_its_config(aldp):
    prior = BondedPrior.from_openmm(aldp.system, 0.17, float(aldp.kT))
    net = build_network("egnn", aldp.topology, hidden=8, n_layers=1)
    model = EnergyModel(net, (22, 3), prior=prior.config(), t_min=1e-5)
    rebuilt = EnergyModel.from_config(model.config(), net)
    rebuilt.load_state_dict(model.state_dict())
    y = torch.as_tensor(np.stack(_configurations(aldp, 2)) / 0.17).float()
    torch.testing.assert_close(rebuilt.energy(y, 1e-4), model.energy(y, 1e-4))
    assert model.prior is not None and rebuilt.prior.bond_idx.shape == (21, 2)
