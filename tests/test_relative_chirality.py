"""The relative-chirality term of the energy networks (boltzgen.nn.chirality) on tri-alanine."""

from __future__ import annotations

import math

import pytest
import torch

import boltzgen.systems as systems
from boltzgen.nn import build_network, default_config
from boltzgen.nn.chirality import RelativeChirality, chirality_index
from boltzgen.sampling import all_l_form, count_wrong, fix_chirality, in_l_region, is_l_form
from boltzgen.states import chiral_centres
from boltzgen.testing import assert_equivariant, assert_gradient_matches_finite_differences, assert_no_batch_leak


@pytest.fixture(scope="module")
def ala3():
    target = systems.load("ala3", n_workers=0)
    yield target
    target.close()


def invert_residue(x: torch.Tensor, topology, residue: int) -> torch.Tensor:
    """The configuration with one residue's Cα inverted: its HA, CB and methyl hydrogens reflected
    through the plane of N, CA and C (HA and CB trade places; the rest of the molecule is kept)."""
    res = topology.residue(residue)
    names = {a.name: a.index for a in res.atoms}
    n, ca, c = (x[names[k]] for k in ("N", "CA", "C"))
    normal = torch.linalg.cross(n - ca, c - ca)
    normal = normal / normal.norm()
    moved = [names[k] for k in ("HA", "CB", "HB1", "HB2", "HB3")]
    y = x.clone()
    d = ((x[moved] - ca) * normal).sum(-1, keepdim=True)
    y[moved] = x[moved] - 2.0 * d * normal
    return y


def perturbed(module, seed: int = 0, std: float = 0.5):
    """Random weights in the zero-initialised layers of a chirality term (or a network's), so
    that it is not 0."""
    term = getattr(module, "chirality", module)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in term.output[-1].parameters():
            p.copy_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))
        term.pair_embedding.weight.copy_(torch.randn(term.pair_embedding.weight.shape, generator=g))
    return module


def test_chirality_index_is_a_normalised_signed_volume():
    """c = V / (|a| |b| |d|) for the bond vectors a = N − CA, b = C − CA, d = CB − CA: a right-handed
    orthogonal frame gives 1, its mirror −1, and c is unchanged by rotation, translation and scale."""
    x = torch.tensor([[[1.0, 0, 0], [0, 0, 0], [0, 2.0, 0], [0, 0, 0.5]]], dtype=torch.float64)
    centres = [[0, 1, 2, 3]]
    assert float(chirality_index(x, centres, eps=0.0)) == pytest.approx(1.0)
    assert float(chirality_index(-x, centres, eps=0.0)) == pytest.approx(-1.0)
    tetra = torch.tensor([[[1.0, 1, 1], [0, 0, 0], [1, -1, -1], [-1, 1, -1]]], dtype=torch.float64)
    # three vertices of a regular tetrahedron seen from its centre: |det| / |a|^3 = 4 / 3^{3/2}
    assert abs(float(chirality_index(tetra, centres, eps=0.0))) == pytest.approx(4 / 3**1.5)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    q = q * torch.sign(torch.det(q))  # a proper rotation
    moved = 3.7 * tetra @ q.T + torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(chirality_index(moved, centres, eps=0.0), chirality_index(tetra, centres, eps=0.0))


def test_inverting_one_residue_makes_a_mixed_hand_configuration(ala3):
    """The test's own D-residue builder flips exactly one centre; no reflection mends the result."""
    centres = chiral_centres(ala3.topology)
    x = ala3.positions.to(torch.float64)
    lld = invert_residue(x, ala3.topology, 3)  # residue 0 is the ACE cap
    assert is_l_form(x, centres).tolist() == [True, True, True]
    assert is_l_form(lld, centres).tolist() == [True, True, False]
    batch = torch.stack([x, lld, -x, -lld])
    assert all_l_form(batch, centres).tolist() == [True, False, False, False]
    assert in_l_region(batch, centres).tolist() == [True, True, False, False]  # majority L
    folded = fix_chirality(batch, centres)[0]
    assert all_l_form(folded, centres).tolist() == [True, False, True, False]
    assert count_wrong(folded, centres) == 2  # one D centre in each mixed configuration


def test_relative_chirality_term_is_invariant_and_tells_mixed_hands_apart(ala3):
    """E(3)-invariant (mirror images equal), smooth, no batch leaks; and, with nonzero weights,
    the energy of L, L, D differs from that of L, L, L, while D, D, D equals L, L, L."""
    centres = chiral_centres(ala3.topology)
    torch.manual_seed(0)
    term = perturbed(RelativeChirality(centres, time_dim=8).double())
    assert term.n_pairs == 3
    x0 = ala3.positions.to(torch.float64)
    g = torch.Generator().manual_seed(1)
    x = (x0 + 0.01 * torch.randn((3,) + tuple(x0.shape), generator=g, dtype=torch.float64)) / 0.1
    tau = torch.randn(1, 8, generator=g, dtype=torch.float64).expand(3, -1)
    energy = lambda y: term(y, tau[: y.shape[0]])  # noqa: E731
    assert_equivariant(energy, x, kind="scalar", reflections=True, rtol=1e-10, atol=1e-10)
    assert_gradient_matches_finite_differences(energy, x[:1].clone())
    assert_no_batch_leak(energy, x)
    lld = torch.stack([invert_residue(xi, ala3.topology, 3) for xi in x])
    assert float((term(lld, tau) - term(x, tau)).abs().min()) > 1e-3
    torch.testing.assert_close(term(-x, tau), term(x, tau), rtol=1e-12, atol=1e-12)


def test_networks_with_relative_chirality(ala3):
    """Both network kinds take the option: zero at initialisation (the plain network's energy),
    invariant with nonzero weights, rebuilt from their config; fewer than two centres: no term."""
    assert default_config("egnn")["relative_chirality"] is False
    x = (ala3.positions.to(torch.float64) - ala3.positions.mean(0).to(torch.float64)) / 0.1
    x = x + 0.05 * torch.randn((2,) + tuple(x.shape), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t = torch.tensor([0.05, 0.5], dtype=torch.float64)
    for kind, small in (("egnn", dict(hidden=16, n_layers=2)), ("e3nn", dict(scalar_channels=8, vector_channels=2))):
        torch.manual_seed(0)
        net = build_network(kind, ala3, dtype=torch.float64, relative_chirality=True, **small)
        torch.manual_seed(0)
        plain = build_network(kind, ala3, dtype=torch.float64, **small)
        torch.testing.assert_close(net(x, t), plain(x, t))
        assert net.config["relative_chirality"] is True and net.chirality.n_pairs == 3
        perturbed(net, seed=3)
        assert_equivariant(lambda y, net=net: net(y, t), x, kind="scalar", reflections=True, rtol=1e-9, atol=1e-9)
        again = build_network(kind, ala3, dtype=torch.float64, **net.config)
        again.load_state_dict(net.state_dict())
        torch.testing.assert_close(again(x, t), net(x, t))
    aldp = systems.load("aldp-vacuum", n_workers=0)
    try:
        one_centre = build_network("egnn", aldp, relative_chirality=True, hidden=16, n_layers=2)
        assert one_centre.chirality is None
    finally:
        aldp.close()


def test_relative_chirality_term_learns_the_same_hand_preference(ala3):
    """Fitting only the term by logistic regression on L, L, L against L, D, L configurations
    (noisy copies of each, so no other feature separates them): it learns a lower energy for the
    same-hand configurations, by a margin of several kT."""
    centres = chiral_centres(ala3.topology)
    torch.manual_seed(0)
    term = RelativeChirality(centres, time_dim=4).double()
    g = torch.Generator().manual_seed(4)
    x0 = ala3.positions.to(torch.float64)
    lll = x0 + 0.005 * torch.randn((64,) + tuple(x0.shape), generator=g, dtype=torch.float64)
    lld = torch.stack([invert_residue(xi, ala3.topology, 2) for xi in lll[:32]])
    x = torch.cat([lll[32:], lld])
    label = torch.cat([torch.ones(32), torch.zeros(32)]).double()
    tau = torch.zeros(64, 4, dtype=torch.float64)
    opt = torch.optim.Adam(term.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(-term(x, tau), label)  # p(same) ∝ e^{−E}
        loss.backward()
        opt.step()
    assert float(loss) < 0.05 * math.log(2)
    e = term(x, tau).detach()
    assert float(e[32:].min() - e[:32].max()) > 2.0


def test_structure_flaws_count_mixed_hands_after_the_fold(ala3):
    """The sample check's flaw shares: an L-peptide and its mirror image have none (the fold mends
    the mirror), a configuration with one D residue keeps its D centre."""
    from boltzgen.diagnostics import structure_flaws

    x = ala3.positions.to(torch.float64)
    lld = invert_residue(x, ala3.topology, 3)
    assert structure_flaws(ala3.topology, torch.stack([x, -x])) == {
        "sample_d_centre_fraction": 0.0,
        "sample_cis_bond_fraction": 0.0,
        "sample_broken_bond_fraction": 0.0,
        "sample_clash_fraction": 0.0,
    }
    flaws = structure_flaws(ala3.topology, torch.stack([x, lld, -lld, -x]))
    assert flaws["sample_d_centre_fraction"] == 0.5 and flaws["sample_broken_bond_fraction"] == 0.0
    assert structure_flaws(None, x[None]) == {}


def test_chirality_wall_follows_its_formula_in_the_energy_model(ala3):
    """W = SNR Σ w_ij (ε softplus(−s_ij/ε))²: about 0 for L, L, L and its mirror, the formula (from
    signed volumes computed here with numpy) for L, L, D; the energy model adds exactly W to the
    network's part, and stays invariant under reflections."""
    import numpy as np

    from boltzgen.energy import EnergyModel
    from boltzgen.nn.chirality import WALL_SOFTNESS

    centres = chiral_centres(ala3.topology)
    torch.manual_seed(0)
    net = build_network("egnn", ala3, dtype=torch.float64, relative_chirality=True, hidden=16, n_layers=2)
    with torch.no_grad():
        net.chirality.log_wall_weight.copy_(torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64))
    model = EnergyModel(net, (ala3.n_atoms, 3), mean_free=True, sigma_data=1.0).double()
    x0 = ala3.positions.to(torch.float64)
    x = torch.stack([x0, invert_residue(x0, ala3.topology, 3), -x0]) / 0.2
    t = torch.full((3,), 0.05, dtype=torch.float64)
    snr = (model.schedule.alpha(t) / model.schedule.sigma(t)) ** 2

    p = x.numpy()
    vol = lambda k: np.einsum(  # noqa: E731
        "bi,bi->b",
        np.cross(p[:, centres[k, 0]] - p[:, centres[k, 1]], p[:, centres[k, 2]] - p[:, centres[k, 1]]),
        p[:, centres[k, 3]] - p[:, centres[k, 1]],
    )
    norms = [
        np.prod([np.linalg.norm(p[:, centres[k, m]] - p[:, centres[k, 1]], axis=-1) for m in (0, 2, 3)], 0)
        for k in range(3)
    ]
    c = np.stack([vol(k) / norms[k] for k in range(3)], -1)
    eps = WALL_SOFTNESS
    f = lambda s: (eps * np.logaddexp(0.0, -s / eps)) ** 2  # noqa: E731
    w = np.exp([0.3, -0.2, 0.5])
    expected = snr.numpy() * sum(w[n] * f(c[:, i] * c[:, j]) for n, (i, j) in enumerate([(0, 1), (0, 2), (1, 2)]))
    wall = net.snr_energy(x, snr)
    np.testing.assert_allclose(wall.detach().numpy(), expected, rtol=1e-4)
    assert float(wall[0]) < 1e-6 and float(wall[2]) < 1e-6 and float(wall[1]) > 1.0
    with torch.no_grad():
        net.chirality.log_wall_weight.fill_(-30.0)  # the wall off: only the network's part is left
        without = model.energy(x, t)
        net.chirality.log_wall_weight.copy_(torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64))
        torch.testing.assert_close(model.energy(x, t) - without, wall.detach(), rtol=1e-6, atol=1e-8)
    assert_equivariant(
        lambda y: model.energy(y, t[: y.shape[0]]), x[:2], kind="scalar", reflections=True, rtol=1e-9, atol=1e-9
    )
