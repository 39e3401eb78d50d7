"""The force-field prior (boltzgen.nn.prior.ForceFieldPrior) against OpenMM and its symmetries."""

import json
import math

import numpy as np
import openmm
import openmm.unit as unit
import pytest
import torch
from helpers import train_small_aldp_run

from boltzgen import systems
from boltzgen.energy import EnergyModel
from boltzgen.nn import build_network
from boltzgen.nn.prior import ForceFieldPrior
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
    prior = ForceFieldPrior.from_openmm(aldp.system, L, float(aldp.kT)).double()
    one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    for x in _configurations(aldp):
        e = float(prior(torch.as_tensor(x / L)[None], one, zero))
        assert e == pytest.approx(_bonded_energy(aldp, x), rel=1e-9, abs=1e-8)


def test_prior_is_e3_invariant_and_fades_at_full_noise(aldp):
    L = 0.17
    prior = ForceFieldPrior.from_openmm(aldp.system, L, float(aldp.kT)).double()
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
    prior = ForceFieldPrior([[0, 1, r0, k]], [], [], fade_width=1e9).double()
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
    prior = ForceFieldPrior.from_openmm(aldp.system, 0.17, float(aldp.kT))
    net = build_network("egnn", aldp.topology, hidden=8, n_layers=1)
    model = EnergyModel(net, (22, 3), prior=prior.config(), t_min=1e-5)
    rebuilt = EnergyModel.from_config(model.config(), net)
    rebuilt.load_state_dict(model.state_dict())
    y = torch.as_tensor(np.stack(_configurations(aldp, 2)) / 0.17).float()
    torch.testing.assert_close(rebuilt.energy(y, 1e-4), model.energy(y, 1e-4))
    assert model.prior is not None and rebuilt.prior.bond_idx.shape == (21, 2)
    # a model.pt written before the learned gates (no gates/hydrogen in its config) still loads
    old = dict(model.config(), prior={k: v for k, v in prior.config().items() if k not in ("gates", "hydrogen")})
    older = EnergyModel.from_config(old, net)
    older.load_state_dict(model.state_dict())
    torch.testing.assert_close(older.energy(y, 1e-4), model.energy(y, 1e-4))


def _total_energy(target, x: np.ndarray) -> float:
    """U/kT from a direct OpenMM call."""
    context = openmm.Context(
        target.system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference")
    )
    context.setPositions(x)
    energy = context.getState(getEnergy=True).getPotentialEnergy()
    return energy.value_in_unit(unit.kilojoule_per_mole) / float(target.kT)


def test_forcefield_prior_at_zero_noise_is_the_whole_vacuum_energy(aldp):
    L = 0.17
    prior = ForceFieldPrior.from_openmm(aldp.system, L, float(aldp.kT), nonbonded=True).double()
    _assert_whole_energy_at_zero_noise(prior, aldp, L, rel=1e-7, abs=1e-6)


def _assert_whole_energy_at_zero_noise(prior, target, L, *, rel, abs, seed=0):
    """The prior at t = 0 is the target's OpenMM energy, and rebuilt from its config the same energy."""
    one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    for x in _configurations(target, 3, seed=seed):
        e = float(prior(torch.as_tensor(x / L)[None], one, zero))
        assert e == pytest.approx(_total_energy(target, x), rel=rel, abs=abs)
    rebuilt = ForceFieldPrior(**prior.config()).double()
    y = torch.as_tensor(np.stack(_configurations(target, 2)) / L)
    a, s = torch.full((2,), 0.99, dtype=torch.float64), torch.full((2,), 0.01, dtype=torch.float64)
    torch.testing.assert_close(rebuilt(y, a, s), prior(y, a, s))


def test_forcefield_prior_stays_finite_on_overlapping_noisy_atoms(aldp):
    """Noisy atoms can overlap: the softened pair distance keeps energy and score finite."""
    prior = ForceFieldPrior.from_openmm(aldp.system, 0.17, float(aldp.kT), nonbonded=True).double()
    x = torch.zeros(1, 22, 3, dtype=torch.float64, requires_grad=True)
    for t_alpha, t_sigma in ((0.99, 0.05), (0.5, 0.8), (0.0064, 1.0)):
        a, s = torch.tensor([t_alpha], dtype=torch.float64), torch.tensor([t_sigma], dtype=torch.float64)
        e = prior(x, a, s)
        (g,) = torch.autograd.grad(e.sum(), x)
        assert torch.isfinite(e).all() and torch.isfinite(g).all()


def test_nonbonded_prior_refuses_a_cutoff():
    system = openmm.System()
    force = openmm.NonbondedForce()
    for _ in range(2):
        system.addParticle(12.0)
        force.addParticle(0.1, 0.3, 0.5)
    force.setNonbondedMethod(openmm.NonbondedForce.CutoffNonPeriodic)
    system.addForce(force)
    with pytest.raises(ValueError, match="without cutoff"):
        ForceFieldPrior.from_openmm(system, 0.17, 2.494, nonbonded=True)


def test_model_with_forcefield_prior_is_the_force_field_at_zero_noise(aldp):
    """The prior replaces the Gaussian term as it fades in: an untrained model (network output
    zero) at t -> 0 is u(x) up to one constant, so the network has nothing left to cancel."""
    L = 0.17
    prior = ForceFieldPrior.from_openmm(aldp.system, L, float(aldp.kT), nonbonded=True)
    net = build_network("egnn", aldp.topology, hidden=8, n_layers=1)
    model = EnergyModel(net, (22, 3), prior=prior.config(), t_min=1e-9).double()
    xs = _configurations(aldp, 4, seed=3)
    y = torch.as_tensor(np.stack(xs) / L)
    gap = model.energy(y, 1e-9).detach().numpy() - np.array([_total_energy(aldp, x) for x in xs])
    assert np.std(gap) < 1e-4
    # at t = 1 the Gaussian term is back and the prior is gone
    full = model.energy(y, 1.0).detach().numpy()
    gaussian = 0.5 * (y - y.mean(1, keepdim=True)).pow(2).sum((1, 2)).numpy() / float(model.c2(torch.tensor(1.0)))
    np.testing.assert_allclose(full, gaussian, rtol=1e-3)


def test_train_with_forcefield_prior_keeps_it_in_the_run(tmp_path):
    """`boltzgen train` with model.prior: forcefield: the prior travels in model.pt, and the
    reloaded model (no OpenMM needed) is the force field up to one constant at its t_min."""
    from boltzgen.io import load_samples
    from boltzgen.model import load_model

    run, data = train_small_aldp_run(
        tmp_path,
        "net: {kind: egnn, hidden: 8, n_layers: 1}\nmodel: {prior: forcefield, prior_gates: learned, t_min: 1.0e-7}\n"
        "loss: {kind: dsm, k: 1, target_score: true, lambda_pin: 1.0}\n"
        "train: {steps: 2, batch_size: 8, val_every: 2, checkpoint_every: 2, sample_check: 0}\n",
    )
    model = load_model(str(run))
    samples = load_samples(str(data))
    assert model.inner.prior is not None and model.inner.prior.pair_idx.shape[0] > 100
    energies = model.energy(samples.x[:6], 1e-7).detach().double().numpy()
    gap = energies - samples.reduced_energy[:6]
    assert np.std(gap) < 0.5  # two steps of training: the network is still near zero at t_min
    widths = json.loads((run / "metrics.json").read_text())["prior_gate_half_widths"]
    assert model.inner.prior.gates == "learned" and set(widths) >= {"bond_h", "bond", "angle", "torsion", "lj"}
    assert widths["bond"] == pytest.approx(float(model.inner.prior.gate_log_width[1].exp()), rel=0.2)


def test_lennard_jones_prior_at_zero_noise_is_the_cluster_energy():
    """The LJ prior in model units y = x / L is the cluster's reduced energy at t -> 0, and it
    agrees with the equivalent OpenMM System too (the independent form of the same energy)."""
    from boltzgen.nn.prior import prior_for_target
    from boltzgen.systems.lj import LennardJonesCluster

    target = LennardJonesCluster(13)
    x = target.positions.double()[None] + 0.05 * torch.randn(3, 13, 3, generator=torch.Generator().manual_seed(0))
    L = 0.7
    prior = prior_for_target(target, L).double()
    one, zero = torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    e = prior(x / L, one, zero)
    system = target.openmm_system()
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    for k in range(3):
        context.setPositions(x[k].numpy() * unit.nanometer)
        u = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        assert float(e[k]) == pytest.approx(u, rel=1e-9, abs=1e-8)
    assert_equivariant(lambda y: prior(y, one, zero), x / L, kind="scalar", generator=torch.Generator().manual_seed(1))
    restraint_only = prior_for_target(target, L, nonbonded=False).double()
    assert restraint_only.pair_idx.shape[0] == 0 and restraint_only.centroid_k == pytest.approx(L**2)


def test_diffused_centroid_restraint_is_the_exact_gaussian_marginal():
    """For x0 ~ exp(-k/2 sum |x_i - mean|^2) (mean-free) and mean-free noise, the diffused density
    is Gaussian with per-coordinate variance alpha^2/k + sigma^2: the prior's k(t)."""
    k, alpha, sigma = 9.0, 0.6, 0.4
    prior = ForceFieldPrior([], [], [], fade_width=1e9, centroid_k=k).double()
    x = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    centred = x - x.mean(1, keepdim=True)
    a, s = torch.full((2,), alpha, dtype=torch.float64), torch.full((2,), sigma, dtype=torch.float64)
    expected = 0.5 * centred.pow(2).sum((1, 2)) / (alpha**2 / k + sigma**2)
    torch.testing.assert_close(prior(x, a, s), expected, rtol=1e-6, atol=0)


def test_prior_for_target_names_an_unsupported_target():
    from boltzgen.nn.prior import prior_for_target

    with pytest.raises(ValueError, match="force-field prior needs"):
        prior_for_target(systems.load("gmm-two-modes"), 1.0)


def test_forcefield_prior_at_zero_noise_is_the_whole_implicit_solvent_energy():
    """aldp-implicit (amber99sbildn + OBC): the prior's OBC term makes it the whole energy."""
    target = systems.load("aldp-implicit", n_workers=0)
    try:
        L = 0.17
        prior = ForceFieldPrior.from_openmm(target.system, L, float(target.kT), nonbonded=True).double()
        assert prior.gb is not None and "gb=OBC" in repr(prior)
        one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
        for x in _configurations(target, 3, seed=5):
            e = float(prior(torch.as_tensor(x / L)[None], one, zero))
            assert e == pytest.approx(_total_energy(target, x), rel=1e-7, abs=1e-6)
        # finite energy and score where noisy atoms overlap, and the config round trip
        y = torch.zeros(1, 22, 3, dtype=torch.float64, requires_grad=True)
        a, s = torch.full((1,), 0.9, dtype=torch.float64), torch.full((1,), 0.3, dtype=torch.float64)
        (grad,) = torch.autograd.grad(prior(y, a, s).sum(), y)
        assert torch.isfinite(grad).all()
        rebuilt = ForceFieldPrior(**prior.config()).double()
        z = torch.as_tensor(np.stack(_configurations(target, 2)) / L)
        a, s = torch.full((2,), 0.99, dtype=torch.float64), torch.full((2,), 0.01, dtype=torch.float64)
        torch.testing.assert_close(rebuilt(z, a, s), prior(z, a, s))
    finally:
        target.close()


@pytest.mark.parametrize("solvent, coefficients", [("obc1", (0.8, 0.0, 2.909125)), ("obc2", (1.0, 0.8, 4.85))])
def test_forcefield_prior_reads_the_amber14_implicit_solvents_custom_gb_force(solvent, coefficients):
    """amber14's implicit/obc1.xml and obc2.xml build a CustomGBForce, not a GBSAOBCForce: the
    prior reads it and is the whole implicit-solvent energy at zero noise (a direct OpenMM call);
    a generalised-Born model it cannot compute (GBn2) is left out, not approximated."""
    from boltzgen.nn.prior import custom_obc_parameters
    from boltzgen.systems.peptides import from_sequence

    target = from_sequence("A", solvent=solvent, temperature=310.0, n_workers=0)
    try:
        assert not any(isinstance(f, openmm.GBSAOBCForce) for f in target.system.getForces())
        L = 0.2
        prior = ForceFieldPrior.from_openmm(target.system, L, float(target.kT), nonbonded=True).double()
        assert prior.gb is not None and tuple(prior.gb["psi_coefficients"]) == coefficients
        # OpenMM's CustomGBForce writes 138.935485 for the Coulomb constant, its other forces 138.935456
        _assert_whole_energy_at_zero_noise(prior, target, L, rel=1e-6, abs=1e-4, seed=2)
    finally:
        target.close()
    gbn2 = from_sequence("A", solvent="gbn2", n_workers=0)
    try:
        (force,) = [f for f in gbn2.system.getForces() if isinstance(f, openmm.CustomGBForce)]
        assert custom_obc_parameters(force) is None
        assert ForceFieldPrior.from_openmm(gbn2.system, 0.2, float(gbn2.kT), nonbonded=True).gb is None
    finally:
        gbn2.close()


def test_learned_gates_start_as_the_fixed_fade_and_each_class_halves_at_its_width(aldp):
    """prior_gates: learned starts as the fixed prior (same energy at every t), each class's gate
    is 1/2 where σ/α is its width, and the per-class terms sum to the fixed prior's energy / f(t)."""
    from boltzgen.nn.prior import TERM_CLASSES

    L = 0.17
    fixed = ForceFieldPrior.from_openmm(aldp.system, L, float(aldp.kT), nonbonded=True).double()
    learned = ForceFieldPrior.from_openmm(aldp.system, L, float(aldp.kT), nonbonded=True, gates="learned").double()
    # the hydrogen bonds of alanine dipeptide: 12 of its 21 (every C-H and N-H)
    assert int(learned.bond_h.sum()) == 12
    x = torch.as_tensor(np.stack(_configurations(aldp, 3)) / L)
    alpha = torch.tensor([1.0, 0.999, 0.98], dtype=torch.float64)
    sigma = torch.sqrt(1.0 - alpha**2)
    torch.testing.assert_close(learned(x, alpha, sigma), fixed(x, alpha, sigma), rtol=1e-12, atol=1e-10)
    terms = fixed.term_energies(x, alpha, sigma)
    torch.testing.assert_close(terms.sum(-1) * fixed.fade(alpha, sigma), fixed(x, alpha, sigma))
    with torch.no_grad():
        learned.gate_log_width.copy_(torch.linspace(-5.0, -2.0, len(TERM_CLASSES), dtype=torch.float64))
    widths = learned.gate_half_widths()
    for c, name in enumerate(TERM_CLASSES):
        a = torch.tensor([0.9], dtype=torch.float64)
        g = learned.gate(a, a * widths[name])
        assert float(g[0, c].detach()) == pytest.approx(0.5, abs=1e-12)
    # each gate falls with the noise, and the energy is the gated sum of the terms
    a = torch.tensor([0.999, 0.99, 0.9], dtype=torch.float64)
    g = learned.gate(a, torch.sqrt(1 - a**2))
    assert bool((g[1:] < g[:-1]).all())
    e = learned(x, a, torch.sqrt(1 - a**2))
    torch.testing.assert_close(e, (g * learned.term_energies(x, a, torch.sqrt(1 - a**2))).sum(-1))
    assert_equivariant(
        lambda y: learned(y, a, torch.sqrt(1 - a**2)), x, kind="scalar", generator=torch.Generator().manual_seed(2)
    )


def test_learned_gates_train_round_trip_and_are_in_the_optimiser(aldp):
    """The gates are parameters of the model's scalar group (the log-normaliser's learning rate);
    they travel in the state dict; a gradient step moves them."""
    prior = ForceFieldPrior.from_openmm(aldp.system, 0.17, float(aldp.kT), nonbonded=True, gates="learned")
    net = build_network("egnn", aldp.topology, hidden=8, n_layers=1)
    model = EnergyModel(net, (22, 3), prior=prior.config(), t_min=1e-5).double()
    groups = model.parameter_groups(1e-3, log_normaliser_lr=0.01)
    scalar_ids = {id(p) for p in groups[-1]["params"]}
    assert id(model.prior.gate_log_width) in scalar_ids and id(model.prior.gate_log_slope) in scalar_ids
    assert groups[-1]["lr"] == 0.01
    y = torch.as_tensor(np.stack(_configurations(aldp, 4)) / 0.17)
    optimiser = torch.optim.Adam(groups)
    before = model.prior.gate_log_width.detach().clone()
    model.energy(y, 2e-3).pow(2).mean().backward()
    optimiser.step()
    assert not torch.equal(model.prior.gate_log_width.detach(), before)
    rebuilt = EnergyModel.from_config(model.config(), net).double()
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.prior.gates == "learned"
    torch.testing.assert_close(rebuilt.energy(y, 2e-3), model.energy(y, 2e-3))
    with pytest.raises(ValueError, match="gates must be one of"):
        ForceFieldPrior([], [], [], gates="adaptive")
