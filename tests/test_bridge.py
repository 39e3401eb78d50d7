"""EnergyBridge against direct single-Context OpenMM calls, finite differences, failures and dead workers."""

import os
import signal
import sys
import threading
import time

import numpy as np
import openmm
import pytest

from boltzgen.systems import bridge as bridge_module
from boltzgen.systems.bridge import EnergyBridge

T = 300.0
KT = 8.31446261815324e-3 * T  # kJ/mol: R T with CODATA R, as OpenMM's MOLAR_GAS_CONSTANT_R
N_ATOMS = 6
KJ_PER_MOL_NM = openmm.unit.kilojoule_per_mole / openmm.unit.nanometer


def make_system(n=N_ATOMS):
    """A bead chain: harmonic bonds and angles, Lennard-Jones and Coulomb between atoms beyond 1-3."""
    system = openmm.System()
    for _ in range(n):
        system.addParticle(12.0)
    bonds = openmm.HarmonicBondForce()
    angles = openmm.HarmonicAngleForce()
    nonbonded = openmm.NonbondedForce()
    nonbonded.setNonbondedMethod(openmm.NonbondedForce.NoCutoff)
    for i in range(n):
        nonbonded.addParticle(0.2 * (-1) ** i, 0.3, 0.5)
    for i in range(n - 1):
        bonds.addBond(i, i + 1, 0.15, 2.0e5)
    for i in range(n - 2):
        angles.addAngle(i, i + 1, i + 2, 1.9, 300.0)
    nonbonded.createExceptionsFromBonds([(i, i + 1) for i in range(n - 1)], 1.0, 1.0)
    for force in (bonds, angles, nonbonded):
        system.addForce(force)
    return system


def chain_positions(n=N_ATOMS):
    """Zig-zag chain with 0.15 nm bonds, (n, 3) nm."""
    return np.array([[0.123 * i, 0.086 * (i % 2), 0.0] for i in range(n)])


def batch(size, seed=0, noise=0.01):
    return chain_positions() + noise * np.random.default_rng(seed).standard_normal((size, N_ATOMS, 3))


def direct(system, x):
    """Reduced energies (B,) and forces (B, N, 3) from the plain public OpenMM API, one Context."""
    context = openmm.Context(system, openmm.VerletIntegrator(1.0), openmm.Platform.getPlatformByName("Reference"))
    energy, force = np.empty(len(x)), np.empty(x.shape)
    for i, row in enumerate(x):
        try:
            context.setPositions(row)
            state = context.getState(getEnergy=True, getForces=True)
            energy[i] = state.getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole)
            force[i] = state.getForces(asNumpy=True).value_in_unit(KJ_PER_MOL_NM)
        except Exception:
            energy[i], force[i] = np.nan, np.nan
    return energy / KT, force / KT


def run_with_deadline(fn, seconds):
    """Run fn() in a thread; fail (instead of hanging) if it does not return within ``seconds``."""
    result = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as exc:  # re-raised in the test thread
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"call did not return within {seconds} s"
    if "error" in result:
        raise result["error"]
    return result["value"]


def child_pids():
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE}


@pytest.fixture(scope="module")
def system():
    return make_system()


@pytest.fixture(scope="module")
def pooled(system):
    with EnergyBridge(system, T, platform="Reference", n_workers=2, min_batch_per_worker=4, timeout=20.0) as b:
        yield b


def test_kT_and_platform(pooled):
    assert pooled.kT == pytest.approx(KT, rel=1e-12)
    assert pooled.platform_name == "Reference"


def test_pooled_matches_direct_in_batch_order(system, pooled):
    x = batch(203, seed=1)  # not a multiple of any chunk size
    u, f = pooled.evaluate(x)
    assert len(pooled.worker_pids) == 2  # the pool did the work
    u_ref, f_ref = direct(system, x)
    assert u.shape == (203,) and f.shape == (203, N_ATOMS, 3)
    assert u.dtype == np.float64 and f.dtype == np.float64
    np.testing.assert_allclose(u, u_ref, rtol=1e-9, atol=0)
    np.testing.assert_allclose(f, f_ref, rtol=1e-9, atol=1e-9 * np.abs(f_ref).max())
    # float32 input and a second, bigger batch (reallocated shared memory) give the same rows
    u2, _ = pooled.evaluate(np.concatenate([x, x]).astype(np.float32), forces=False)
    u32, _ = direct(system, x.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(u2, np.concatenate([u32, u32]), rtol=1e-9)


@pytest.mark.parametrize("n_workers", [0, 2])
def test_in_process_matches_direct(system, pooled, n_workers):
    x = batch(5, seed=2)  # fewer than 2 * min_batch_per_worker: evaluated in the parent
    bridge = pooled if n_workers else EnergyBridge(system, T, platform="Reference", n_workers=0)
    u, f = bridge.evaluate(x)
    u_ref, f_ref = direct(system, x)
    np.testing.assert_allclose(u, u_ref, rtol=1e-9)
    np.testing.assert_allclose(f, f_ref, rtol=1e-9, atol=1e-9 * np.abs(f_ref).max())
    u1, f1 = bridge.evaluate(x[3])  # (N, 3) is a batch of one
    assert u1.shape == (1,) and f1.shape == (1, N_ATOMS, 3)
    np.testing.assert_allclose(u1, u_ref[3:4], rtol=1e-9)
    u0, f0 = bridge.evaluate(x, forces=False)
    assert f0 is None
    np.testing.assert_allclose(u0, u_ref, rtol=1e-9)


def test_system_as_xml_and_torch_input(system):
    torch = pytest.importorskip("torch")
    x = batch(4, seed=3)
    with EnergyBridge(openmm.XmlSerializer.serialize(system), T, platform="reference", n_workers=0) as b:
        assert b.platform_name == "Reference"
        u, _ = b.evaluate(torch.tensor(x, requires_grad=True))
    np.testing.assert_allclose(u, direct(system, x)[0], rtol=1e-9)


def test_forces_are_minus_gradient_of_reduced_energy(system):
    bridge = EnergyBridge(system, T, platform="Reference", n_workers=0)
    x = batch(1, seed=4)[0]
    _, f = bridge.evaluate(x)
    h = 1e-5
    for atom, axis in [(0, 0), (2, 1), (3, 2), (5, 0)]:
        plus, minus = x.copy(), x.copy()
        plus[atom, axis] += h
        minus[atom, axis] -= h
        u = bridge.evaluate(np.stack([plus, minus]), forces=False)[0]
        fd = -(u[0] - u[1]) / (2 * h)
        assert fd == pytest.approx(f[0, atom, axis], rel=1e-6, abs=1e-6 * np.abs(f).max())


@pytest.mark.parametrize("n_workers", [0, 2])
def test_failed_rows_get_inf_and_zero_force(system, pooled, n_workers):
    x = batch(40, seed=5)
    bad = {3: np.nan, 7: np.inf, 11: "overlap", 12: 1e200, 13: 1e12}
    for row, what in bad.items():
        if what == "overlap":
            x[row, 0] = x[row, 3]  # a non-bonded pair on top of each other: r = 0
        elif isinstance(what, float) and not np.isfinite(what):
            x[row, 2, 1] = what
        else:
            x[row] *= what
    bridge = pooled if n_workers else EnergyBridge(system, T, platform="Reference", n_workers=0)
    u, f = bridge.evaluate(x)
    u_ref, f_ref = direct(system, x)
    failed = ~np.isfinite(u_ref) | ~np.isfinite(f_ref).all(axis=(1, 2))
    assert set(np.flatnonzero(failed)) >= {3, 7, 11, 12}
    assert np.all(u[failed] == np.inf)
    assert np.all(f[failed] == 0.0)
    np.testing.assert_allclose(u[~failed], u_ref[~failed], rtol=1e-9)
    np.testing.assert_allclose(f[~failed], f_ref[~failed], rtol=1e-9, atol=1e-9 * np.abs(f_ref[~failed]).max())
    assert not np.any(u == 0.0)


def test_wrong_shapes_and_platform(system, pooled):
    with pytest.raises(ValueError, match=r"expected 6 atoms.*got 5"):
        pooled.evaluate(np.zeros((3, 5, 3)))
    with pytest.raises(ValueError, match="shape"):
        pooled.evaluate(np.zeros((3, 18)))
    with pytest.raises(ValueError, match="available platforms: .*Reference"):
        EnergyBridge(system, T, platform="NoSuchPlatform", n_workers=0)


def test_auto_platform_is_available_and_consistent(system):
    with EnergyBridge(system, T, n_workers=0) as b:
        assert b.platform_name in bridge_module.available_platforms()
        x = batch(3, seed=6)
        u, _ = b.evaluate(x)
    np.testing.assert_allclose(u, direct(system, x)[0], rtol=1e-5)  # CPU is mixed precision


def test_killed_idle_worker_is_replaced(system):
    with EnergyBridge(system, T, platform="Reference", n_workers=2, min_batch_per_worker=4, timeout=10.0) as b:
        x = batch(64, seed=7)
        b.evaluate(x)
        victim = b.worker_pids[0]
        os.kill(victim, signal.SIGKILL)
        u, f = run_with_deadline(lambda: b.evaluate(x), 60)
        assert victim not in b.worker_pids and len(b.worker_pids) == 2
        assert b.worker_restarts >= 1
        u_ref, f_ref = direct(system, x)
        np.testing.assert_allclose(u, u_ref, rtol=1e-9)  # the configuration in flight was retried
        np.testing.assert_allclose(f, f_ref, rtol=1e-9, atol=1e-9 * np.abs(f_ref).max())


def test_worker_killed_during_evaluation(system):
    n = 100_000  # about 0.3 s per worker
    x = batch(n, seed=8)
    with EnergyBridge(system, T, platform="Reference", n_workers=2, timeout=10.0) as b:
        b.evaluate(x[:64])  # start the pool
        b._pool._ensure_capacity(n)  # white-box: allocate the shared block now, then watch worker 0 work
        progress = lambda: int(b._pool._buffers.progress[0])  # noqa: E731
        victim = b.worker_pids[0]
        thread_result = {}
        evaluation = threading.Thread(target=lambda: thread_result.update(r=b.evaluate(x)), daemon=True)
        evaluation.start()
        deadline = time.monotonic() + 20
        while progress() < 1000 and time.monotonic() < deadline:
            time.sleep(0.002)
        os.kill(victim, signal.SIGKILL)
        evaluation.join(60)
        assert not evaluation.is_alive(), "evaluate hung after a worker was killed"
        u, f = thread_result["r"]
        assert b.worker_restarts == 1 and victim not in b.worker_pids
    assert np.isfinite(u).all()  # the configuration in flight at the first death is retried
    rows = np.random.default_rng(0).choice(n, 500, replace=False)
    u_ref, f_ref = direct(system, x[rows])
    np.testing.assert_allclose(u[rows], u_ref, rtol=1e-9)
    np.testing.assert_allclose(f[rows], f_ref, rtol=1e-9, atol=1e-9 * np.abs(f_ref).max())


def test_stalled_worker_is_killed_and_its_configuration_fails(system):
    with EnergyBridge(system, T, platform="Reference", n_workers=2, min_batch_per_worker=4, timeout=0.5) as b:
        x = batch(64, seed=9)
        b.evaluate(x)
        victim = b.worker_pids[0]
        os.kill(victim, signal.SIGSTOP)  # alive but making no progress
        start = time.monotonic()
        u, f = run_with_deadline(lambda: b.evaluate(x), 60)
        assert time.monotonic() - start < 30
        assert victim not in b.worker_pids and b.worker_restarts == 1
    failed = np.flatnonzero(~np.isfinite(u))
    assert len(failed) == 1 and u[failed[0]] == np.inf and np.all(f[failed[0]] == 0)
    ok = np.ones(len(x), bool)
    ok[failed] = False
    u_ref, f_ref = direct(system, x)
    np.testing.assert_allclose(u[ok], u_ref[ok], rtol=1e-9)
    np.testing.assert_allclose(f[ok], f_ref[ok], rtol=1e-9, atol=1e-9 * np.abs(f_ref).max())


def test_keyboard_interrupt_stops_workers_and_pool_restarts(system, monkeypatch):
    with EnergyBridge(system, T, platform="Reference", n_workers=2, min_batch_per_worker=4) as b:
        x = batch(64, seed=10)
        b.evaluate(x)
        old = set(b.worker_pids)

        real_wait, calls = bridge_module.mp_connection.wait, []

        def interrupted(*args, **kwargs):  # Ctrl-C while the parent waits for the workers
            calls.append(1)
            if len(calls) == 1:
                raise KeyboardInterrupt
            return real_wait(*args, **kwargs)

        monkeypatch.setattr(bridge_module.mp_connection, "wait", interrupted)
        with pytest.raises(KeyboardInterrupt):
            b.evaluate(x)
        monkeypatch.undo()
        assert b.worker_pids == [] and not (old & child_pids())
        u, _ = b.evaluate(x)
        assert len(b.worker_pids) == 2
    np.testing.assert_allclose(u, direct(system, x)[0], rtol=1e-9)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_do_not_import_torch_or_boltzgen(pooled):
    pooled.evaluate(batch(16, seed=11))
    for pid in pooled.worker_pids:
        with open(f"/proc/{pid}/maps") as handle:
            maps = handle.read()
        assert "libtorch" not in maps and "openmm" in maps.lower()


def test_close_is_idempotent_and_leaves_no_children(system):
    b = EnergyBridge(system, T, platform="Reference", n_workers=2, min_batch_per_worker=4)
    b.evaluate(batch(64, seed=12))
    pids = set(b.worker_pids)
    assert len(pids) == 2 and pids <= child_pids()
    b.close()
    b.close()
    assert b.worker_pids == [] and not (pids & child_pids())
    with pytest.raises(RuntimeError, match="closed"):
        b.evaluate(batch(2))


def test_bench_bridge_reports_rates_and_exact_energies(system):
    from boltzgen.bench import bench_bridge

    result = bench_bridge(system, T, chain_positions(), batch=64, n_workers=2, platform="Reference", rounds=1)
    for key in (
        "plain_loop_per_s",
        "bare_getstate_per_s",
        "bare_getstate_concurrent_per_s",
        "bridge_per_s",
        "limit_per_s",
        "single_context_limit_per_s",
    ):
        assert result[key] > 0
    assert result["limit_per_s"] == pytest.approx(result["n_cores"] * result["bare_getstate_concurrent_per_s"])
    assert result["single_context_limit_per_s"] == pytest.approx(result["n_cores"] * result["bare_getstate_per_s"])
    assert result["fraction_of_limit"] == pytest.approx(result["bridge_per_s"] / result["limit_per_s"])
    assert result["speedup_vs_plain_loop"] == pytest.approx(result["bridge_per_s"] / result["plain_loop_per_s"])
    assert result["platform"] == "Reference" and result["n_workers"] == 2 and result["batch"] == 64
    assert result["max_rel_energy_diff_vs_plain"] <= 1e-9


def test_bare_getstate_timing_in_every_worker_leaves_the_pool_usable(system):
    """All workers time bare getState at once and answer; evaluation still works afterwards."""
    with EnergyBridge(system, T, platform="Reference", n_workers=2, min_batch_per_worker=1) as b:
        seconds = b.bare_getstate_seconds(chain_positions(), calls=20)
        assert len(seconds) == 2 and all(0 < s < 1 for s in seconds)
        u, f = b.evaluate(batch(8))
        u_ref, _ = direct(system, batch(8))
        np.testing.assert_allclose(u, u_ref, rtol=1e-10)
        with pytest.raises(ValueError, match="calls"):
            b.bare_getstate_seconds(chain_positions(), calls=0)


def test_script_without_main_guard_does_not_rerun_in_workers(tmp_path):
    """A user script with no ``if __name__ == "__main__":`` guard works: the spawned workers do not
    re-run it (they would print twice more, or fail during start-up)."""
    from helpers import run_unguarded_script

    out = run_unguarded_script(
        tmp_path / "unguarded.py",
        "from boltzgen.systems import load\n"
        "target = load('aldp-vacuum', n_workers=2, platform='Reference')\n"
        "u = target.reduced_energy(target.positions[None].repeat(512, 1, 1))\n"
        "print('energies', len(u), flush=True)\n"
        "target.close()\n",
    )
    assert "energies 512" in out
