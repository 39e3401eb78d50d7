"""boltzgen.md.simulate: exact answers for harmonic OpenMM systems, replica exchange, LJ13 virial,
exact sampling, resumable checkpoints and input errors."""

import math
import os

import numpy as np
import openmm
import openmm.app as app
import pytest
import torch

from boltzgen.md import simulate, temperature_ladder
from boltzgen.systems import from_openmm, load
from boltzgen.units import kT_of

N_ATOMS = 4
DIM = 3 * N_ATOMS
# Fast harmonic dynamics: omega = sqrt(k/m) = 10/ps, period 0.63 ps; BAOAB (LangevinMiddle)
# samples the configurational distribution of a harmonic oscillator exactly at any stable step.
FAST = dict(timestep=10.0, friction=10.0, stride=20, equilibration=200, progress=False)


@pytest.fixture(scope="module")
def harmonic():
    """N_ATOMS independent isotropic oscillators U = ½ k |x|² (k = 100 kJ/mol/nm², m = 1 amu), 300 K."""
    system = openmm.System()
    force = openmm.CustomExternalForce("0.5*100.0*(x^2+y^2+z^2)")
    topology = app.Topology()
    residue = topology.addResidue("HO", topology.addChain())
    for i in range(N_ATOMS):
        system.addParticle(1.0)
        force.addParticle(i, [])
        topology.addAtom(f"A{i}", app.element.argon, residue)
    system.addForce(force)
    positions = np.linspace(-0.05, 0.05, DIM).reshape(N_ATOMS, 3)
    return from_openmm(system, topology, 300.0, positions=positions, n_workers=0)


def block_mean_and_error(series, n_blocks=20):
    """Mean of a correlated series and its standard error from block averages."""
    series = np.asarray(series, dtype=np.float64)
    m = len(series) // n_blocks
    blocks = series[: m * n_blocks].reshape(n_blocks, m).mean(axis=1)
    return series.mean(), blocks.std(ddof=1) / math.sqrt(n_blocks)


def test_langevin_harmonic_mean_energy(harmonic):
    res = simulate(harmonic, 3000, seed=1, **FAST)
    assert res.positions.shape == (3000, N_ATOMS, 3) and res.positions.dtype == np.float64
    assert res.reduced_energy.shape == (3000,) and res.reduced_energy.dtype == np.float64
    u_direct = 0.5 * 100.0 * (res.positions[:10] ** 2).sum(axis=(1, 2)) / kT_of(300.0)
    np.testing.assert_allclose(res.reduced_energy[:10], u_direct, rtol=1e-5)
    mean, err = block_mean_and_error(res.reduced_energy)
    assert abs(mean - DIM / 2) < 4 * err, (mean, err)
    assert 0.02 < err < 0.3  # the error estimate itself is sensible
    meta = res.metadata
    assert meta["method"] == "md" and meta["seed"] == 1 and meta["parameters"]["stride"] == 20
    assert meta["parameters"]["platform"] == "Reference" and meta["wall_time_s"] > 0


def test_replica_exchange_harmonic(harmonic):
    """Every ladder temperature has <U>_T = (3N/2) kT; exchange acceptance matches the exact
    value for Gamma(3N/2, kT)-distributed energies."""
    res = simulate(harmonic, 2000, seed=2, replicas=4, t_max=600.0, exchange_interval=20, **FAST)
    temps = np.array(res.metadata["temperatures_K"])
    np.testing.assert_allclose(temps, temperature_ladder(300.0, 600.0, 4))
    np.testing.assert_allclose(temps, [300.0, 300 * 2 ** (1 / 3), 300 * 2 ** (2 / 3), 600.0])
    assert res.replica_potential_energy.shape == (2000, 4)
    np.testing.assert_allclose(res.reduced_energy, res.replica_potential_energy[:, 0] / kT_of(300.0))
    for k, temp in enumerate(temps):
        mean, err = block_mean_and_error(res.replica_potential_energy[:, k] / kT_of(temp))
        assert abs(mean - DIM / 2) < 4 * err, (k, mean, err)
    rng = np.random.default_rng(0)
    acc = res.metadata["exchange_acceptance"]
    attempts = res.metadata["exchange_attempts"]
    assert len(acc) == 3 and all(a >= 900 for a in attempts)
    for k in range(3):
        ui = rng.gamma(DIM / 2, kT_of(temps[k]), 200_000)
        uj = rng.gamma(DIM / 2, kT_of(temps[k + 1]), 200_000)
        exact = np.minimum(1.0, np.exp((1 / kT_of(temps[k]) - 1 / kT_of(temps[k + 1])) * (ui - uj))).mean()
        sigma = math.sqrt(exact * (1 - exact) / attempts[k])
        assert abs(acc[k] - exact) < 5 * sigma, (k, acc[k], exact)
    assert res.metadata["round_trips"] > 0


def test_keep_replicas_and_save(harmonic, tmp_path):
    from boltzgen.io import load_samples

    res = simulate(harmonic, 5, seed=3, replicas=2, keep_replicas=True, **FAST)
    assert res.replica_positions.shape == (2, 5, N_ATOMS, 3)
    np.testing.assert_array_equal(res.replica_positions[0], res.positions)
    assert res.metadata["parameters"]["t_max"] == 600.0  # default 2 x temperature
    path = str(tmp_path / "md.h5")
    res.save(path)
    back = load_samples(path)
    np.testing.assert_allclose(back.x, res.positions, atol=1e-6)  # mdtraj stores float32
    np.testing.assert_array_equal(back.reduced_energy, res.reduced_energy)
    assert back.metadata["method"] == "md" and back.topology.n_atoms == N_ATOMS
    assert back.extra["replica_potential_energy"].shape == (5, 2)


def test_md_resume_equals_uninterrupted(harmonic, tmp_path):
    kw = dict(seed=4, replicas=3, t_max=500.0, exchange_interval=30, **FAST)
    full = simulate(harmonic, 40, **kw)
    ck = str(tmp_path / "md.ckpt.npz")
    part = simulate(harmonic, 15, checkpoint=ck, checkpoint_every=6, **kw)
    np.testing.assert_array_equal(part.positions, full.positions[:15])
    resumed = simulate(harmonic, 40, checkpoint=ck, checkpoint_every=6, **kw)
    assert resumed.metadata["frames_from_checkpoint"] == 15
    np.testing.assert_array_equal(resumed.positions, full.positions)
    np.testing.assert_array_equal(resumed.replica_potential_energy, full.replica_potential_energy)
    assert resumed.metadata["exchange_acceptance"] == full.metadata["exchange_acceptance"]
    assert os.path.exists(ck)  # never deleted by simulate

    # a crash between checkpoints: the run continues from the last checkpoint (frame 18)
    ck2 = str(tmp_path / "crash.npz")

    class Crash(Exception):
        pass

    def crash_at_22(n_frames):
        if n_frames == 22:
            raise Crash

    with pytest.raises(Crash):
        simulate(harmonic, 40, checkpoint=ck2, checkpoint_every=6, callback=crash_at_22, **kw)
    resumed = simulate(harmonic, 40, checkpoint=ck2, checkpoint_every=6, **kw)
    assert resumed.metadata["frames_from_checkpoint"] == 18
    np.testing.assert_array_equal(resumed.positions, full.positions)

    with pytest.raises(ValueError, match="stride: 20 in the checkpoint, 10 now"):
        simulate(harmonic, 40, checkpoint=ck, **{**kw, "stride": 10})


def test_replicas_stepped_in_threads_give_the_same_frames(harmonic):
    """On the CPU platform each replica's trajectory depends only on its own integrator and seed,
    so stepping the replicas in threads changes nothing; the Reference platform (one random
    generator per process) is stepped one after another whatever ``workers`` says."""
    for platform, threads in (("CPU", 1), ("Reference", None)):
        kw = dict(seed=5, replicas=3, t_max=500.0, exchange_interval=30, platform=platform, threads=threads, **FAST)
        one = simulate(harmonic, 12, workers=1, **kw)
        three = simulate(harmonic, 12, workers=3, **kw)
        np.testing.assert_array_equal(three.positions, one.positions)
        np.testing.assert_array_equal(three.replica_potential_energy, one.replica_potential_energy)
        assert three.metadata["exchange_acceptance"] == one.metadata["exchange_acceptance"]


def test_lj13_virial():
    """E[(x - x̄)·∇u] = 3(N - 1) on the zero-COM subspace (integration by parts)."""
    target = load("lj13")
    chains, saves = 64, 12
    res = simulate(target, chains * saves, seed=0, chains=chains, equilibration=2000, stride=50, progress=False)
    x = torch.from_numpy(res.positions)
    u, force = target.reduced_energy_and_force(x)
    np.testing.assert_allclose(res.reduced_energy, u.numpy(), rtol=1e-10)
    virial = -((x - x.mean(1, keepdim=True)) * force).sum((1, 2)).numpy()
    per_chain = virial.reshape(saves, chains).mean(0)  # frames are save-major; chains independent
    err = per_chain.std(ddof=1) / math.sqrt(chains)
    assert abs(per_chain.mean() - 36.0) < 4 * err, (per_chain.mean(), err)
    com = res.positions.mean(axis=1)
    assert np.abs(com - com[0]).max() < 0.05  # start noise only; MALA moves keep the COM
    assert 0.45 < res.metadata["acceptance_mean"] < 0.7


def test_mcmc_resume_equals_uninterrupted(tmp_path):
    target = load("lj13")
    kw = dict(seed=5, chains=8, stride=3, equilibration=20, progress=False)
    full = simulate(target, 60, **kw)
    ck = str(tmp_path / "mala.npz")
    part = simulate(target, 20, checkpoint=ck, checkpoint_every=10, **kw)
    np.testing.assert_array_equal(part.positions, full.positions[:20])
    resumed = simulate(target, 60, checkpoint=ck, checkpoint_every=10, **kw)
    assert resumed.metadata["frames_from_checkpoint"] == 24  # 3 saves of 8 chains
    np.testing.assert_array_equal(resumed.positions, full.positions)
    np.testing.assert_array_equal(resumed.reduced_energy, full.reduced_energy)
    with pytest.raises(ValueError, match="chains: 8 in the checkpoint, 4 now"):
        simulate(target, 60, checkpoint=ck, **{**kw, "chains": 4})


def test_exact_sampler_mode_fractions():
    target = load("gmm-two-modes")
    res = simulate(target, 4000, seed=0, progress=False)
    assert res.metadata["method"] == "exact" and res.positions.shape == (4000, 2)
    modes = target.responsibilities(torch.from_numpy(res.positions)).argmax(1).numpy()
    frac = np.bincount(modes, minlength=2) / 4000
    assert abs(frac[0] - 2 / 3) < 4 * math.sqrt(2 / 9 / 4000)
    np.testing.assert_allclose(res.reduced_energy, target.reduced_energy(torch.from_numpy(res.positions)).numpy())
    again = simulate(target, 4000, seed=0, progress=False)
    np.testing.assert_array_equal(again.positions, res.positions)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(n_samples=0), "n_samples"),
        (dict(timestep=-1.0), "timestep"),
        (dict(friction=0.0), "friction"),
        (dict(replicas=3, t_max=250.0), "t_max"),
        (dict(replicas=3, t_max=300.0), "t_max"),
        (dict(t_max=600.0), "replicas > 1"),
        (dict(replicas=0), "replicas"),
        (dict(stride=0), "stride"),
        (dict(chains=4), "chains \\(mcmc\\)"),
        (dict(platform="Nope"), "platform"),
        (dict(seed=-1), "seed"),
        (dict(workers=0), "workers"),
        (dict(method="exact"), "no exact sampler"),
        (dict(temperature=0.0), "temperature"),
    ],
)
def test_bad_input(harmonic, kwargs, match):
    kwargs = {"n_samples": 2, "progress": False, **kwargs}
    with pytest.raises(ValueError, match=match):
        simulate(harmonic, **kwargs)


def test_bad_input_other_methods():
    with pytest.raises(ValueError, match="do not apply"):
        simulate(load("gmm-two-modes"), 5, stride=3, progress=False)
    with pytest.raises(ValueError, match="target temperature"):
        simulate(load("gmm-two-modes"), 5, temperature=500.0, progress=False)
    with pytest.raises(ValueError, match="OpenMM target"):
        simulate(load("lj13"), 5, method="md", progress=False)
    with pytest.raises(ValueError, match="timestep"):
        simulate(load("lj13"), 5, timestep=1.0, progress=False)


def test_unstable_dynamics_raise_clear_error(harmonic):
    with pytest.raises(RuntimeError, match="unstable.*smaller timestep"):
        simulate(harmonic, 20, timestep=300.0, stride=20, equilibration=0, progress=False)


def _double_well_system(barrier: float = 50.0, k: float = 5000.0, n_atoms: int = 5) -> openmm.System:
    """Particles (12 amu) in U = barrier (x² − 1)² + ½ k (y² + z²) (kJ/mol, nm): two basins x = ±1
    nm separated by ``barrier`` (20 kT at 300 K), harmonic across."""
    system = openmm.System()
    force = openmm.CustomExternalForce(f"{barrier}*(x^2-1)^2 + 0.5*{k}*(y^2+z^2)")
    for i in range(n_atoms):
        system.addParticle(12.0)
        force.addParticle(i, [])
    system.addForce(force)
    return system


def test_quench_gives_target_temperature_and_keeps_basins():
    """Hot frames (spread 10x the 300 K width, in random basins) quenched to 300 K: the harmonic
    directions have variance kT/k (exact; 6000 degrees of freedom, 1.8 % sampling error), every
    particle stays in its basin, and the returned energies are the quenched frames' energies."""
    from boltzgen.md.dynamics import quench

    k, temperature, n_frames, n_atoms = 5000.0, 300.0, 600, 5
    system = _double_well_system(k=k, n_atoms=n_atoms)
    rng = np.random.default_rng(0)
    side = rng.choice([-1.0, 1.0], size=(n_frames, n_atoms))
    hot = np.empty((n_frames, n_atoms, 3))
    hot[..., 0] = side + 0.1 * rng.standard_normal((n_frames, n_atoms))
    hot[..., 1:] = 10 * math.sqrt(kT_of(temperature) / k) * rng.standard_normal((n_frames, n_atoms, 2))
    cold, energy = quench(system, hot, temperature, time_ps=0.5, seed=1)
    assert cold.shape == hot.shape
    variance = cold[..., 1:].var() / (kT_of(temperature) / k)
    assert abs(variance - 1.0) < 0.08, variance
    assert (np.sign(cold[..., 0]) == side).all()
    expected = (50.0 * (cold[..., 0] ** 2 - 1) ** 2 + 0.5 * k * (cold[..., 1:] ** 2).sum(-1)).sum(-1)
    np.testing.assert_allclose(energy, expected, rtol=1e-6, atol=1e-6)
    again, _ = quench(system, hot[:3], temperature, time_ps=0.5, seed=1)
    np.testing.assert_array_equal(again, cold[:3])  # seeded: reproducible
    # Minimisation alone (a single 1 fs step) leaves the frames far too cold: the check can fail.
    frozen, _ = quench(system, hot[:50], temperature, time_ps=0.001, seed=1)
    assert frozen[..., 1:].var() / (kT_of(temperature) / k) < 0.3
    with pytest.raises(ValueError, match="shape"):
        quench(system, hot[:, :2], temperature, time_ps=0.5)
    with pytest.raises(ValueError, match="positive"):
        quench(system, hot, temperature, time_ps=0.0)


def test_quench_frames_do_not_depend_on_the_processes(monkeypatch):
    """The quench runs in chunks with seeds of their own: two worker processes give the frames of
    one, bit for bit; the chunks' streams differ (no two chunks quench alike); a bad count is named."""
    from boltzgen.md import dynamics

    monkeypatch.setattr(dynamics, "QUENCH_CHUNK", 4)
    system = _double_well_system(k=5000.0, n_atoms=3)
    hot = np.zeros((10, 3, 3))
    hot[..., 0] = 1.0  # identical frames: only the chunks' random streams tell them apart
    one, e_one = dynamics.quench(system, hot, 300.0, time_ps=0.05, seed=2, processes=1)
    two, e_two = dynamics.quench(system, hot, 300.0, time_ps=0.05, seed=2, processes=2)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(e_one, e_two)
    assert not np.allclose(one[0], one[4]) and not np.allclose(one[4], one[8])
    with pytest.raises(ValueError, match="quench processes must be a positive integer"):
        dynamics.quench(system, hot, 300.0, time_ps=0.05, processes=0)


def test_quench_in_processes_needs_no_main_guard(tmp_path):
    """A user script with no ``if __name__ == "__main__":`` guard quenches in two processes: the
    spawned workers do not run the script again."""
    from helpers import run_unguarded_script

    out = run_unguarded_script(
        tmp_path / "unguarded.py",
        "import numpy as np, openmm\n"
        "from boltzgen.md import dynamics\n"
        "system = openmm.System()\n"
        "force = openmm.CustomExternalForce('500*(x^2+y^2+z^2)')\n"
        "system.addParticle(12.0)\n"
        "force.addParticle(0, [])\n"
        "system.addForce(force)\n"
        "dynamics.QUENCH_CHUNK = 2\n"
        "x, u = dynamics.quench(system, np.zeros((4, 1, 3)), 300.0, time_ps=0.01, processes=2)\n"
        "print('quenched', len(u), flush=True)\n",
    )
    assert "quenched 4" in out


def test_md_platform_is_cpu_where_reference_interprets_the_forces():
    """amber14's implicit/obc1.xml is a CustomGBForce (interpreted by Reference, several times slower
    there); plain force fields stay on Reference; a CustomGBForce inside a CustomCVForce counts."""
    import openmm

    from boltzgen.md import md_platform
    from boltzgen.systems import interpolated_system, load

    vacuum, obc1 = load("aldp-vacuum", n_workers=0), load("ala3", n_workers=0)
    assert md_platform(vacuum.system) == "Reference" and md_platform(obc1.system) == "CPU"
    gb = next(f for f in obc1.system.getForces() if isinstance(f, openmm.CustomGBForce))
    plain = openmm.System()
    for _ in range(obc1.event_shape[0]):
        plain.addParticle(1.0)
    wrapped = openmm.CustomCVForce("g")
    wrapped.addCollectiveVariable("g", openmm.XmlSerializer.clone(gb))
    plain.addForce(wrapped)
    assert md_platform(plain) == "CPU"
    assert md_platform(interpolated_system(load("aldp-vacuum").system, load("aldp-implicit").system)) == "Reference"
