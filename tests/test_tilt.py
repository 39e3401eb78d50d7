"""The state tilt of the SMC path (boltzgen.sampling.tilt): its coordinate against mdtraj and finite
differences, its symmetries, and SMC with it against the exact weights of a 97 : 3 mixture."""

import math

import mdtraj
import numpy as np
import pytest
import torch
from test_smc import rare_mixture, settings

from boltzgen.sampling import (
    SMCSettings,
    StateTilt,
    chiral_centres,
    in_l_region,
    smc_sample,
    torsion_coordinate,
)
from boltzgen.sampling.tilt import sin_dihedral
from boltzgen.systems.catalog import data_path


def _aldp_frames(n=64, seed=0):
    traj = mdtraj.load(data_path("aldp.pdb"))
    rng = np.random.default_rng(seed)
    x = traj.xyz[0].astype(np.float64)[None] + 0.04 * rng.standard_normal((n, traj.n_atoms, 3))
    return traj.topology, x


def test_sin_dihedral_is_mdtrajs_angle_and_its_gradient_is_exact():
    top, x = _aldp_frames()
    quads = np.array([(4, 6, 8, 14), (6, 8, 14, 16)])  # phi, psi of alanine dipeptide
    ref = mdtraj.compute_dihedrals(mdtraj.Trajectory(x.astype(np.float32), top), quads).astype(np.float64)
    got = sin_dihedral(torch.from_numpy(x), quads).numpy()
    np.testing.assert_allclose(got, np.sin(ref), atol=2e-5)  # mdtraj computes in float32
    coord = torsion_coordinate(quads, sharpness=5.0)
    xs = torch.from_numpy(x[:4]).requires_grad_(True)
    assert torch.autograd.gradcheck(coord, (xs,), eps=1e-6, atol=1e-6)


def test_torsion_coordinate_is_invariant_under_rigid_motions_and_flips_under_reflection():
    _, x = _aldp_frames(16, seed=1)
    x = torch.from_numpy(x)
    quads = [(4, 6, 8, 14)]
    coord = torsion_coordinate(quads, sharpness=5.0)
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    rot = q * torch.sign(torch.linalg.det(q))  # a proper rotation
    moved = x @ rot.T + torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(coord(moved), coord(x), rtol=0, atol=1e-12)
    # a mirror image changes the sign of every dihedral: σ(κ s) + σ(−κ s) = 1
    torch.testing.assert_close(coord(-x) + coord(x), torch.ones(16, dtype=torch.float64), rtol=0, atol=1e-12)
    # with the chiral centre, the coordinate is that of the folded configuration: the same for a
    # mirror image, the plain one for L-form frames and the mirror image's for the others
    top, _ = _aldp_frames(1)
    centres = chiral_centres(top)
    folded = torsion_coordinate(quads, sharpness=5.0, centres=centres)
    torch.testing.assert_close(folded(-x), folded(x), rtol=0, atol=1e-12)
    left = in_l_region(x, centres)
    assert 8 < int(left.sum()) < 16  # the noise flipped a few
    torch.testing.assert_close(folded(x), torch.where(left, coord(x), coord(-x)), rtol=0, atol=0)


def test_tilt_strength_ramps_in_log_t_and_bad_settings_are_named():
    tilt = StateTilt(lambda x: x.sum(-1), kT=3.0, t_on=0.5, t_full=0.05)
    assert tilt.strength(0.9) == 0.0 and tilt.strength(0.05) == 3.0 and tilt.strength(1e-3) == 3.0
    assert tilt.strength(math.sqrt(0.5 * 0.05)) == pytest.approx(1.5)
    assert tilt.energy_and_grad(torch.zeros(2, 3), 0.7) is None
    e, g = tilt.energy_and_grad(torch.ones(2, 3, dtype=torch.float64), 0.01)
    torch.testing.assert_close(e, torch.full((2,), -9.0, dtype=torch.float64))
    torch.testing.assert_close(g, torch.full((2, 3), -3.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="tilt.t_full"):
        SMCSettings.from_dict({"tilt": {"kT": 2.0, "t_on": 0.1, "t_full": 0.2}})
    with pytest.raises(ValueError, match="tilt.kT"):
        SMCSettings.from_dict({"tilt": {"kT": math.inf}})


def test_smc_tilt_fills_a_rare_mode_and_its_weight_stays_exact():
    """A 97 : 3 mixture and a deliberately wrong model, states = the side of the midpoint: with a
    tilt of log(97/3) ≈ 3.5 kT towards the rare side the runs end with several times more rare
    particles, the weights still give 3 % over independent runs (and log Z ≈ 0), and the spread of
    that weight between runs is no larger than without the tilt."""
    target, model, side, coordinate = rare_mixture()

    def run(seed, kT):
        r = smc_sample(
            model,
            target,
            500,
            torch.Generator().manual_seed(seed),
            states=side,
            tilt_coordinate=coordinate,
            settings=settings(
                diffusion={"n_steps": 30},
                anneal={"n_levels": 4, "cess": 0.9, "mcmc_steps": 2},
                tilt={"kT": kT, "t_on": 0.99, "t_full": 0.05},
            ),
        )
        rare = side(r.x).double()
        return float(rare.sum()), float((r.weights * rare).sum()), r.log_z

    plain = np.array([run(seed, 0.0) for seed in range(12)])
    tilted = np.array([run(seed, 3.5) for seed in range(12)])
    assert tilted[:, 0].mean() > 3 * plain[:, 0].mean(), (tilted[:, 0].mean(), plain[:, 0].mean())
    p = tilted[:, 1]
    assert abs(p.mean() - 0.03) < 4 * p.std(ddof=1) / math.sqrt(len(p)), p
    assert abs(tilted[:, 2].mean()) < 4 * tilted[:, 2].std(ddof=1) / math.sqrt(len(p)) + 0.05
    assert p.std(ddof=1) <= plain[:, 1].std(ddof=1), (p.std(ddof=1), plain[:, 1].std(ddof=1))


def test_smc_tilt_needs_a_target_and_a_coordinate():
    target, model, _, coordinate = rare_mixture()
    tilt = settings(diffusion={"n_steps": 2}, tilt={"kT": 1.0})
    with pytest.raises(ValueError, match="tilt.kT needs a target"):
        smc_sample(model, None, 8, torch.Generator().manual_seed(0), settings=tilt, tilt_coordinate=coordinate)
    with pytest.raises(ValueError, match="tilt.kT needs a coordinate"):
        smc_sample(model, target, 8, torch.Generator().manual_seed(0), settings=tilt)
