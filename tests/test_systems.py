"""Target systems against independent references: a direct OpenMM call, the LJ formula, exact
Gaussian algebra, finite differences."""

import math
import os

import mdtraj
import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import norm

import boltzgen.systems as systems
from boltzgen.diffusion import VPSchedule
from boltzgen.systems.catalog import data_path, spec
from boltzgen.testing import assert_gradient_matches_finite_differences, assert_no_batch_leak

R = 0.00831446261815324  # kJ/(mol K), CODATA 2018, the value OpenMM uses


def direct_openmm_energies(system, xs, temperature):
    """Reduced energies and forces from one Reference Context, written out as a user would."""
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    kT = R * temperature
    us, fs = [], []
    for x in xs:
        context.setPositions(x * unit.nanometer)
        state = context.getState(getEnergy=True, getForces=True)
        us.append(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / kT)
        fs.append(state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer) / kT)
    return np.array(us), np.array(fs)


def lj_formula(x):
    """u = sum_{i != j} (r^-12 - 2 r^-6) + 0.5 sum_i |x_i - mean|^2, written with explicit loops."""
    out = []
    for conf in x:
        n = len(conf)
        e = 0.0
        for i in range(n):
            for j in range(n):
                if i != j:
                    r = np.linalg.norm(conf[i] - conf[j])
                    e += r**-12 - 2 * r**-6
        e += 0.5 * ((conf - conf.mean(0)) ** 2).sum()
        out.append(e)
    return np.array(out)


# ---------------------------------------------------------------------------- Lennard-Jones
@pytest.mark.parametrize("name,n", [("lj13", 13), ("lj55", 55)])
def test_lj_matches_formula_and_openmm(name, n):
    target = systems.load(name)
    assert target.n_atoms == n and target.kT == pytest.approx(1.0) and target.mean_free
    rng = np.random.default_rng(1)
    start = target.positions.numpy()
    perturbed = start[None] + 0.05 * rng.standard_normal((4, n, 3))  # near a low-energy structure
    uniform = rng.uniform(-1.5, 1.5, size=(2, n, 3)) * (n / 13) ** (1 / 3)  # random, some close contacts
    xs = np.concatenate([perturbed, uniform])
    u = target.reduced_energy(torch.from_numpy(xs)).numpy()
    np.testing.assert_allclose(u, lj_formula(xs), rtol=1e-10)
    u_omm, f_omm = direct_openmm_energies(target.openmm_system(), xs, target.temperature)
    np.testing.assert_allclose(u_omm, u, rtol=1e-6)
    _, force = target.reduced_energy_and_force(torch.from_numpy(xs))
    np.testing.assert_allclose(force.numpy(), f_omm, rtol=1e-6, atol=1e-6 * np.abs(f_omm).max())


def test_lj_on_sampled_configurations_matches_openmm():
    from boltzgen.md import simulate

    target = systems.load("lj13")
    result = simulate(target, 64, seed=3, chains=8, equilibration=200, progress=False)
    u_omm, _ = direct_openmm_energies(target.openmm_system(), result.positions, target.temperature)
    np.testing.assert_allclose(u_omm, target.reduced_energy(torch.from_numpy(result.positions)).numpy(), rtol=1e-6)
    np.testing.assert_allclose(result.reduced_energy, u_omm, rtol=1e-6)


def test_lj_gradient_and_invariances():
    target = systems.load("lj13")
    g = torch.Generator().manual_seed(0)
    x = target.positions[None] + 0.05 * torch.randn(3, 13, 3, generator=g, dtype=torch.float64)
    assert_gradient_matches_finite_differences(target.reduced_energy, x, rtol=1e-6, atol=1e-6)
    assert_no_batch_leak(target.reduced_energy, x)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    moved = x @ q.T + torch.randn(1, 1, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(target.reduced_energy(moved), target.reduced_energy(x))
    perm = torch.randperm(13, generator=g)
    torch.testing.assert_close(target.reduced_energy(x[:, perm]), target.reduced_energy(x))


def test_overlapping_particles_are_finite_or_inf_never_nan():
    target = systems.load("lj13")
    x = target.positions.clone()
    x[1] = x[0]
    u, f = target.reduced_energy_and_force(x)
    assert not torch.isnan(u).any() and u.item() > 1e100
    assert torch.isfinite(f).all() or (f == 0).all()


# ---------------------------------------------------------------------------- alanine dipeptide
@pytest.fixture(scope="module")
def aldp_structure():
    return app.PDBFile(data_path("aldp.pdb"))


@pytest.mark.parametrize(
    "name,files", [("aldp-vacuum", ["amber99sbildn.xml"]), ("aldp-implicit", ["amber99sbildn.xml", "amber99_obc.xml"])]
)
def test_aldp_matches_direct_openmm(name, files, aldp_structure):
    target = systems.load(name, n_workers=0)
    try:
        assert target.n_atoms == 22 and target.temperature == 300.0
        assert target.kT == pytest.approx(R * 300.0, rel=1e-12)
        names = [(a.residue.name, a.name) for a in target.topology.atoms]
        assert names[:6] == [("ACE", "H1"), ("ACE", "CH3"), ("ACE", "H2"), ("ACE", "H3"), ("ACE", "C"), ("ACE", "O")]
        assert names[16:19] == [("NME", "N"), ("NME", "H"), ("NME", "C")]
        phi = mdtraj.compute_phi(mdtraj.load(data_path("aldp.pdb")))[0]
        np.testing.assert_array_equal(phi, [[4, 6, 8, 14]])
        # The reference system, built here independently of boltzgen.
        system = app.ForceField(*files).createSystem(
            aldp_structure.topology, nonbondedMethod=app.NoCutoff, constraints=None
        )
        assert target.system.getNumConstraints() == 0
        force_types = {type(f).__name__ for f in target.system.getForces()}
        assert ("GBSAOBCForce" in force_types) == (name == "aldp-implicit")
        rng = np.random.default_rng(0)
        xs = target.positions.numpy()[None] + 0.005 * rng.standard_normal((5, 22, 3))
        u_ref, f_ref = direct_openmm_energies(system, xs, 300.0)
        u, f = target.reduced_energy_and_force(torch.from_numpy(xs))
        np.testing.assert_allclose(u.numpy(), u_ref, rtol=1e-9)
        np.testing.assert_allclose(f.numpy(), f_ref, rtol=1e-9, atol=1e-9)
        x = torch.from_numpy(xs[:2])
        assert_gradient_matches_finite_differences(target.reduced_energy, x, eps=1e-6, rtol=1e-4, atol=1e-3)
        assert_no_batch_leak(target.reduced_energy, x)
    finally:
        target.close()


def test_aldp_bad_input_gives_inf_or_clear_errors():
    target = systems.load("aldp-vacuum", n_workers=0)
    try:
        x = target.positions.repeat(3, 1, 1)
        x[1, 3, 0] = float("nan")
        x[2, 5] = x[2, 4]  # two atoms on top of each other
        u = target.reduced_energy(x)
        assert math.isfinite(u[0].item()) and u[1].item() == math.inf
        assert u[2].item() == math.inf or u[2].item() > 1e6
        with pytest.raises(ValueError, match="wrong atom count.*21 atoms.*22"):
            target.reduced_energy(torch.zeros(2, 21, 3))
        x = x[:1].clone().requires_grad_(True)
        target.reduced_energy(x.float()).sum().backward()
        assert x.grad is not None and x.grad.dtype == torch.float64
    finally:
        target.close()


# ---------------------------------------------------------------------------- user systems
def test_from_openmm_objects_files_and_errors(tmp_path, aldp_structure):
    system = app.ForceField("amber99sbildn.xml").createSystem(
        aldp_structure.topology, nonbondedMethod=app.NoCutoff, constraints=None
    )
    xml = tmp_path / "system.xml"
    xml.write_text(openmm.XmlSerializer.serialize(system))
    ref = systems.load("aldp-vacuum", n_workers=0)
    x = ref.positions[None] + 0.01
    targets = [
        systems.from_openmm(system, aldp_structure.topology, 300.0, positions=ref.positions.numpy(), n_workers=0),
        systems.from_openmm(str(xml), data_path("aldp.pdb"), 300.0, n_workers=0),
        systems.from_pdb(data_path("aldp.pdb"), ["amber99sbildn.xml"], 300.0, n_workers=0),
    ]
    for t in targets:
        torch.testing.assert_close(t.reduced_energy(x), ref.reduced_energy(x), rtol=1e-12, atol=0)
        t.close()
    hot = systems.from_openmm(str(xml), data_path("aldp.pdb"), 600.0, n_workers=0)
    torch.testing.assert_close(hot.reduced_energy(x), ref.reduced_energy(x) / 2, rtol=1e-12, atol=0)
    ref.close()

    with pytest.raises(ValueError, match="atom-count mismatch.*22 particles.*3 atoms"):
        top = app.Topology()
        res = top.addResidue("X", top.addChain())
        for _ in range(3):
            top.addAtom("C", app.element.carbon, res)
        systems.from_openmm(system, top, 300.0, positions=np.zeros((3, 3)))
    with pytest.raises(FileNotFoundError, match="no_such.xml"):
        systems.from_openmm(str(tmp_path / "no_such.xml"), data_path("aldp.pdb"))
    with pytest.raises(FileNotFoundError, match="missing.pdb"):
        systems.from_openmm(str(xml), str(tmp_path / "missing.pdb"))
    with pytest.raises(ValueError, match="unknown or unreadable force field"):
        systems.from_pdb(data_path("aldp.pdb"), ["no-such-forcefield.xml"])
    bad = tmp_path / "bad.xml"
    bad.write_text("<System garbage")
    with pytest.raises(ValueError, match="not a serialized OpenMM System"):
        systems.from_openmm(str(bad), data_path("aldp.pdb"))
    with pytest.raises(KeyError, match="unknown system 'aldp'.*aldp-vacuum"):
        systems.load("aldp")


# ---------------------------------------------------------------------------- Gaussian mixtures
@pytest.mark.parametrize("name,dim", [("gmm-two-modes", 2), ("gmm-two-modes", 32), ("gmm-40", 2), ("gmm-40", 5)])
def test_gmm_standardised_and_exact_marginals(name, dim):
    target = systems.load(name, dim=dim)
    assert target.dim == dim and target.has_exact_sampler
    w, mu, s = target.weights, target.means, target.stds
    mean = (w[:, None] * mu).sum(0)
    var = (w[:, None] * (s**2 + (mu - mean) ** 2)).sum(0).mean()
    torch.testing.assert_close(mean, torch.zeros(dim, dtype=torch.float64), atol=1e-12, rtol=0)
    assert var.item() == pytest.approx(1.0, rel=1e-12)
    schedule = VPSchedule()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, dim, generator=g, dtype=torch.float64)
    for t in [0.0, 0.05, 0.5, 1.0]:
        a, s2 = schedule.alpha(t).item(), schedule.sigma2(t).item()
        ref = logsumexp(
            [
                np.log(wk) + norm(a * mk, np.sqrt(a**2 * sk**2 + s2)).logpdf(x.numpy()).sum(1)
                for wk, mk, sk in zip(w.numpy(), mu.numpy(), s.numpy())
            ],
            axis=0,
        )
        np.testing.assert_allclose(target.log_prob_t(x, t).numpy(), ref, rtol=1e-9)
    torch.testing.assert_close(target.reduced_energy(x), -target.log_prob_t(x, 0.0))
    tb = torch.full((6,), 0.3, dtype=torch.float64)
    assert_gradient_matches_finite_differences(lambda y: target.log_prob_t(y, tb), x, rtol=1e-6)
    torch.testing.assert_close(target.score_t(x, tb), target.score_t(x, 0.3))
    torch.testing.assert_close(target.score_t(x, 0.0), target.reduced_energy_and_force(x)[1])


def test_gmm_two_modes_weights_and_sampling():
    target = systems.load("gmm-two-modes", dim=2)
    np.testing.assert_allclose(target.weights.numpy(), [2 / 3, 1 / 3])
    x, k = target.sample(60000, torch.Generator().manual_seed(1), return_components=True)
    frac = (k == 0).double().mean().item()
    assert abs(frac - 2 / 3) < 4 * math.sqrt(2 / 9 / 60000)
    # Exact samples have the exact mean and (standardised) unit average variance.
    assert x.mean(0).abs().max() < 0.03 and abs(x.var(0).mean().item() - 1) < 0.03
    # Modes are separated: almost all samples are assigned confidently.
    resp = target.responsibilities(x)
    assert (resp.max(1).values > 0.999).double().mean() > 0.99
    # Diffused exact samples follow p_t: mean log p_t matches an independent Monte Carlo estimate.
    schedule = VPSchedule()
    t = 0.4
    xt = schedule.alpha(t) * x + schedule.sigma(t) * torch.randn(
        x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )
    # KL(p_t || p_t) = 0 <=> the marginal's own score integrates correctly: E[score] = 0, E[x.score] = -d.
    score = target.score_t(xt, t)
    assert score.mean(0).abs().max() < 0.03
    assert (xt * score).sum(1).mean().item() == pytest.approx(-2.0, abs=0.05)


def test_builtin_positions_have_finite_energy():
    for name in systems.names():
        target = systems.load(name, n_workers=0) if spec(name).openmm else systems.load(name)
        u = target.reduced_energy(target.positions)
        assert torch.isfinite(u).all(), name
        target.close()


def test_one_spec_per_builtin_system():
    """The registry: every built-in system has one SystemSpec, and describe/load/simulate defaults
    read it."""
    from boltzgen.md import DEFAULTS
    from boltzgen.systems.catalog import SPECS, data_path, simulate_defaults, spec

    assert list(SPECS) == systems.names()
    rows = {row["name"]: row for row in systems.describe()}
    for name, s in SPECS.items():
        assert s.name == name and rows[name]["forcefield"] == s.forcefield
        assert rows[name]["temperature_K"] == s.temperature and rows[name]["n_atoms"] == s.n_atoms
        assert s.train_config is None or os.path.exists(data_path(s.train_config))  # None: derived defaults
        assert simulate_defaults(name) == s.simulate
        assert set(s.simulate) <= set().union(*map(set, DEFAULTS.values()))
    assert spec("aldp-vacuum").simulation_defaults("md")["replicas"] == 6
    assert simulate_defaults("my-own-molecule") == {}
    with pytest.raises(KeyError, match="unknown system 'nope'; built-in systems: aldp-vacuum, aldp-implicit"):
        systems.load("nope")


def test_target_states_default_and_settable():
    """TargetSystem.states: the default states of the topology (alanine dipeptide: the sign of phi),
    None without a topology, and a user's StateSet when set."""
    from boltzgen.states import default_states, function_states

    target = systems.load("aldp-vacuum", n_workers=0)
    try:
        x = target.positions.numpy()[None]
        expected = default_states(target.topology)
        assert target.states is not None and tuple(target.states.names) == tuple(expected.names)
        np.testing.assert_array_equal(target.states.assign(x), expected.assign(x))
    finally:
        target.close()
    gmm = systems.load("gmm-two-modes")
    assert gmm.states is None
    sides = function_states(lambda x: (np.asarray(x)[:, 0] > 0).astype(np.int64), ("left", "right"), name="side")
    gmm.states = sides
    assert gmm.states is sides
    gmm.states = None
    assert gmm.states is None
    with pytest.raises(TypeError, match="states must be a StateSet"):
        gmm.states = "phi"


def test_target_file_names_a_target_like_the_flags(tmp_path):
    """A YAML target file (system_xml + topology, paths relative to the file) builds the same
    target as the built-in one; unknown keys and half-given targets are named."""
    from boltzgen.systems import read_target_file, resolve

    aldp = systems.load("aldp-vacuum", n_workers=0)
    try:
        sub = tmp_path / "inputs"
        sub.mkdir()
        (sub / "system.xml").write_text(openmm.XmlSerializer.serialize(aldp.system))
        mdtraj.Trajectory(aldp.positions.numpy()[None], aldp.topology).save_pdb(str(sub / "start.pdb"))
        spec_file = tmp_path / "target.yaml"
        spec_file.write_text("system_xml: inputs/system.xml\ntopology: inputs/start.pdb\ntemperature: 300\n")
        spec = read_target_file(str(spec_file))
        assert spec["system_xml"] == str(sub / "system.xml")
        target = resolve(**spec, n_workers=0)
        try:
            x = aldp.positions[None].double()
            torch.testing.assert_close(target.reduced_energy(x), aldp.reduced_energy(x), rtol=1e-6, atol=1e-5)
        finally:
            target.close()
    finally:
        aldp.close()
    (tmp_path / "half.yaml").write_text("system_xml: inputs/system.xml\n")
    with pytest.raises(ValueError, match="system_xml and topology go together"):
        read_target_file(str(tmp_path / "half.yaml"))
    (tmp_path / "typo.yaml").write_text("sequense: AAA\n")
    with pytest.raises(ValueError, match="sequense: unknown key"):
        read_target_file(str(tmp_path / "typo.yaml"))
    (tmp_path / "list.yaml").write_text("- AAA\n")
    with pytest.raises(ValueError, match="a target file is a mapping"):
        read_target_file(str(tmp_path / "list.yaml"))
    (tmp_path / "broken.yaml").write_text("sequence: [AAA\n")
    with pytest.raises(ValueError, match="broken.yaml is not valid YAML"):
        read_target_file(str(tmp_path / "broken.yaml"))
