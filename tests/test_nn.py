"""Energy networks: symmetries of the energy and of the score, gradients against finite
differences, independence of batch members, zero output at initialisation, double backward."""

import copy

import numpy as np
import pytest
import torch

import boltzgen.systems as systems
from boltzgen.nn import NETWORKS, build_network, default_config, identical_atom_groups
from boltzgen.nn.features import BatchGraph, atom_type_indices, fully_connected_edges, radius_edges, smooth_cutoff
from boltzgen.testing import assert_equivariant, assert_gradient_matches_finite_differences, assert_no_batch_leak

#: Small sizes so that every check runs in well under a second per network.
SMALL = {
    "egnn": dict(hidden=16, n_layers=3, time_dim=8, n_frequencies=4),
    "e3nn": dict(
        scalar_channels=8,
        vector_channels=4,
        lmax=2,
        n_layers=3,
        n_basis=6,
        radial_hidden=16,
        time_dim=8,
        n_frequencies=4,
    ),
}
ALDP_SCALE_NM = 0.15  # aldp coordinates are divided by this: dimensionless, a few units across

#: id -> (system, kind, extra config, mirror symmetric, atom typing scheme)
CASES = {
    "egnn-full-aldp": ("aldp", "egnn", {}, True),
    "egnn-radius-aldp": ("aldp", "egnn", dict(graph="radius", cutoff=3.0), True),
    "egnn-full-aldp-equivalent-H": ("aldp", "egnn", dict(atom_types="equivalent_hydrogens"), True),
    "egnn-full-aldp-bond-edges": ("aldp", "egnn", dict(bond_edges=True, atom_types="equivalent_hydrogens"), True),
    "egnn-radius-aldp-bond-edges": ("aldp", "egnn", dict(bond_edges=True, graph="radius", cutoff=3.0), True),
    "egnn-full-lj13": ("lj13", "egnn", {}, True),
    "egnn-radius-lj13": ("lj13", "egnn", dict(graph="radius", cutoff=1.8), True),
    "e3nn-O3-aldp": ("aldp", "e3nn", {}, True),
    "e3nn-O3-radius-lj13": ("lj13", "e3nn", dict(graph="radius", cutoff=1.8), True),
    "e3nn-SE3-aldp": ("aldp", "e3nn", dict(parity=False), False),
    "e3nn-SE3-radius-lj13": ("lj13", "e3nn", dict(parity=False, graph="radius", cutoff=1.8), False),
}


@pytest.fixture(scope="module")
def targets():
    aldp = systems.load("aldp-vacuum", n_workers=0)
    yield {"aldp": aldp, "lj13": systems.load("lj13")}
    aldp.close()


def configurations(target, n: int = 3, seed: int = 0) -> torch.Tensor:
    """n perturbed, centred, dimensionless copies of the target's start configuration, float64."""
    g = torch.Generator().manual_seed(seed)
    x = target.positions.to(torch.float64)
    scale = ALDP_SCALE_NM if target.name.startswith("aldp") else 1.0
    x = (x - x.mean(0)) / scale
    return x + 0.15 * torch.randn((n,) + tuple(x.shape), generator=g, dtype=torch.float64)


def perturb_final_layer(net: torch.nn.Module, seed: int = 0, std: float = 0.5) -> torch.nn.Module:
    """Random weights in the zero-initialised final layer, so that the network is not trivially 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.final_layer.parameters():
            p.copy_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for layer in getattr(net, "layers", []):  # zero-initialised bond-edge embeddings too
            if getattr(layer, "edge_class", None) is not None:
                layer.edge_class.weight.copy_(torch.randn(layer.edge_class.weight.shape, generator=g, dtype=p.dtype))
    return net


def score_fn(net, t):
    def score(x):
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(net(x, t).sum(), x)
        return -grad

    return score


@pytest.fixture(scope="module")
def case_nets(targets):
    """Per case: (float64 network with a perturbed final layer, target, inputs, times, permutation groups)."""
    built = {}
    for name, (system, kind, extra, _) in CASES.items():
        target = targets[system]
        torch.manual_seed(1)
        # built in float64 (not cast): e3nn's constants are then exact to float64 precision
        net = perturb_final_layer(build_network(kind, target, dtype=torch.float64, **SMALL[kind], **extra))
        x = configurations(target)
        t = torch.tensor([0.05, 0.4, 0.9], dtype=torch.float64)
        groups = identical_atom_groups(target.topology, target.n_atoms, net.config["atom_types"])
        built[name] = (net, target, x, t, groups)
    return built


# ---------------------------------------------------------------------------- symmetries
@pytest.mark.parametrize("case", list(CASES))
def test_energy_is_invariant(case, case_nets):
    net, _, x, t, groups = case_nets[case]
    mirror_symmetric = CASES[case][3]
    assert_equivariant(
        lambda y: net(y, t),
        x,
        kind="scalar",
        reflections=mirror_symmetric,
        permutation_groups=groups,
        rtol=1e-9,
        atol=1e-9,
    )


@pytest.mark.parametrize("case", list(CASES))
def test_score_is_equivariant(case, case_nets):
    net, _, x, t, groups = case_nets[case]
    mirror_symmetric = CASES[case][3]
    assert_equivariant(
        score_fn(net, t),
        x,
        kind="vector",
        reflections=mirror_symmetric,
        permutation_groups=groups,
        n_trials=2,
        rtol=1e-8,
        atol=1e-9,
    )


@pytest.mark.parametrize("case", [c for c, spec in CASES.items() if not spec[3]])
def test_se3_network_tells_mirror_images_apart(case, case_nets):
    net, _, x, t, _ = case_nets[case]
    # the LJ start structure is nearly achiral (its mirror image is nearly a rotated copy): use
    # random, generically chiral configurations of the same size instead
    x = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=x.dtype)
    mirrored = x * torch.tensor([-1.0, 1.0, 1.0], dtype=x.dtype)
    e, e_mirror = net(x, t), net(mirrored, t)
    assert ((e - e_mirror).abs() > 1e-5 * (1 + e.abs())).all(), (e, e_mirror)


def test_equivalent_hydrogens_are_interchangeable(case_nets):
    groups = case_nets["egnn-full-aldp-equivalent-H"][4]
    assert sorted(groups) == [[0, 2, 3], [11, 12, 13], [19, 20, 21]]  # the three methyl groups


def test_assert_equivariant_catches_broken_symmetries():
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    with pytest.raises(AssertionError, match="rotation"):
        assert_equivariant(lambda y: y[:, :, 0].sum(-1), x, kind="scalar", translations=False)
    with pytest.raises(AssertionError, match="reflection"):  # a triple product: a pseudoscalar
        assert_equivariant(lambda y: torch.linalg.det(y[:, :3] - y[:, 3:4]), x, kind="scalar", translations=False)
    with pytest.raises(AssertionError, match="translation"):
        assert_equivariant(lambda y: y.pow(2).sum((-1, -2)), x, kind="scalar")
    with pytest.raises(AssertionError, match="permutation"):
        assert_equivariant(
            lambda y: (y - y.mean(1, keepdim=True))[:, 0].pow(2).sum(-1),
            x,
            kind="scalar",
            permutation_groups=[[0, 1, 2, 3, 4]],
        )
    # and passes the right things: a centred, permutation-equivariant vector field
    assert_equivariant(lambda y: y - y.mean(1, keepdim=True), x, kind="vector", permutation_groups=[[0, 1, 2, 3, 4]])


# ---------------------------------------------------------------------------- gradients, batch, init
@pytest.mark.parametrize("case", list(CASES))
def test_score_matches_finite_differences(case, case_nets):
    net, _, x, t, _ = case_nets[case]
    assert_gradient_matches_finite_differences(lambda y: net(y, t), x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", list(CASES))
def test_no_gradient_leaks_between_batch_members(case, case_nets):
    net, _, x, t, _ = case_nets[case]
    assert_no_batch_leak(lambda y: net(y, t), x)


@pytest.mark.parametrize("kind", ["egnn", "e3nn"])
def test_zero_at_initialisation_float32(kind, targets):
    target = targets["aldp"]
    net = build_network(kind, target, **SMALL[kind])
    out = net(configurations(target).float(), torch.rand(3))
    assert out.dtype == torch.float32 and out.shape == (3,)
    assert torch.equal(out, torch.zeros(3))


@pytest.mark.parametrize("case", ["egnn-full-aldp", "egnn-radius-lj13", "e3nn-O3-aldp", "e3nn-SE3-radius-lj13"])
def test_double_backward_reaches_every_parameter(case, case_nets):
    """A loss on the score (create_graph=True) has finite gradients, nonzero for every parameter
    except biases of the last layer (a constant shift of g does not change the score)."""
    net64, _, x, t, _ = case_nets[case]
    net = copy.deepcopy(net64).float()
    x = x.float().requires_grad_(True)
    energy = net(x, t.float())
    (grad_x,) = torch.autograd.grad(energy.sum(), x, create_graph=True)
    loss = (0.3 * grad_x + torch.randn_like(grad_x)).pow(2).mean()
    names, params = zip(*net.named_parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    final_layer = {id(p) for p in net.final_layer.parameters()}
    final_biases = {n for n, p in net.named_parameters() if id(p) in final_layer and p.dim() == 1}
    for name, g in zip(names, grads):
        if name in final_biases:
            continue
        assert g is not None, f"{name} gets no gradient"
        assert torch.isfinite(g).all(), f"{name} has a non-finite gradient"
        assert g.abs().max() > 0, f"{name} has a zero gradient"


def test_time_conditioning_changes_the_output(case_nets):
    for case in ["egnn-full-aldp", "e3nn-O3-aldp"]:
        net, _, x, _, _ = case_nets[case]
        e1 = net(x, torch.full((3,), 0.1, dtype=x.dtype))
        e2 = net(x, torch.full((3,), 0.7, dtype=x.dtype))
        assert (e1 - e2).abs().min() > 1e-6, case


def test_scalar_time_is_broadcast(case_nets):
    net, _, x, _, _ = case_nets["egnn-full-lj13"]
    assert torch.equal(net(x, 0.3), net(x, torch.full((3,), 0.3, dtype=x.dtype)))
    with pytest.raises(ValueError, match="shape"):
        net(x, torch.rand(2, dtype=x.dtype))
    with pytest.raises(ValueError, match="shape"):
        net(x[:, :5], 0.3)


# ---------------------------------------------------------------------------- MLP (toy targets)
@pytest.mark.parametrize("shape", [(4,), (5, 3)])
def test_mlp_network(shape):
    torch.manual_seed(0)
    net = build_network("mlp", shape, hidden=32)
    x = torch.randn((3,) + shape)
    t = torch.tensor([0.1, 0.5, 0.9])
    assert torch.equal(net(x, t), torch.zeros(3))
    perturb_final_layer(net)
    net64 = copy.deepcopy(net).double()
    assert_gradient_matches_finite_differences(lambda y: net64(y, t.double()), x.double())
    assert_no_batch_leak(lambda y: net64(y, t.double()), x.double())
    xg = x.clone().requires_grad_(True)
    (grad_x,) = torch.autograd.grad(net(xg, t).sum(), xg, create_graph=True)
    grads = torch.autograd.grad(grad_x.pow(2).mean(), list(net.parameters()), allow_unused=True)
    assert all(g is not None and torch.isfinite(g).all() for g in grads[:-1])  # the last bias gets none
    assert sum(g.abs().sum() for g in grads if g is not None) > 0


# ---------------------------------------------------------------------------- factory
@pytest.mark.parametrize("kind", sorted(NETWORKS))
def test_factory_config_rebuilds_the_network(kind, targets):
    target = targets["aldp"] if kind != "mlp" else systems.load("gmm-two-modes", dim=3)
    config = SMALL.get(kind, dict(hidden=16))
    net = build_network(kind, target, **config)
    assert set(net.config) == set(default_config(kind))
    rebuilt = build_network(kind, target, **net.config)
    rebuilt.load_state_dict(net.state_dict())  # same parameter shapes
    with pytest.raises(TypeError, match="unknown"):
        build_network(kind, target, not_a_size=1)


def test_factory_rejects_bad_requests():
    with pytest.raises(ValueError, match="unknown network kind"):
        build_network("transformer", (3, 3))
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        build_network("egnn", (6,))
    with pytest.raises(ValueError, match="at least 3"):
        build_network("e3nn", (4, 3), parity=False, n_layers=2)


def test_auto_graph_switches_to_radius_above_the_threshold():
    assert build_network("egnn", (10, 3), max_atoms_fully_connected=10).graph_kind == "full"
    assert build_network("egnn", (11, 3), max_atoms_fully_connected=10).graph_kind == "radius"


# ---------------------------------------------------------------------------- features and graphs
def test_atom_types_of_alanine_dipeptide(targets):
    top = targets["aldp"].topology
    element, types = atom_type_indices(top, 22, "residue_atom")
    assert element.max() == 3 and types.max() == 21  # H, C, N, O; every atom its own type
    assert identical_atom_groups(top, 22, "residue_atom") == []
    assert sorted(len(g) for g in identical_atom_groups(top, 22, "element")) == [2, 2, 6, 12]
    assert identical_atom_groups(None, 13) == [list(range(13))]


def test_radius_edges_match_brute_force():
    g = torch.Generator().manual_seed(3)
    x = 2.0 * torch.randn(4, 9, 3, generator=g, dtype=torch.float64)
    edges = radius_edges(x, 2.5, max_pairs_per_chunk=200)  # several chunks
    expected = {
        (b * 9 + j, b * 9 + i)
        for b in range(4)
        for i in range(9)
        for j in range(9)
        if i != j and (x[b, i] - x[b, j]).norm() < 2.5
    }
    assert set(map(tuple, edges.T.tolist())) == expected
    everything = radius_edges(x, 1e6)
    assert set(map(tuple, everything.T.tolist())) == set(map(tuple, fully_connected_edges(4, 9).T.tolist()))


def test_dense_and_sparse_layouts_agree():
    """Pair sums over the dense (B, N, N) layout equal those over a torch-geometric edge list."""
    g = torch.Generator().manual_seed(4)
    pos = torch.randn(2 * 6, 3, generator=g, dtype=torch.float64)
    per_graph = torch.randn(2, 1, generator=g, dtype=torch.float64)
    results = []
    for graph in (BatchGraph.full(2, 6), BatchGraph(2, 6, fully_connected_edges(2, 6))):
        vectors = graph.vectors(pos)
        pair = vectors * graph.targets(pos).pow(2).sum(-1, keepdim=True) * graph.graphs(per_graph)
        if graph.dense:
            pair = pair * graph.edge_weight(vectors)
        results.append(graph.sum_over_sources(pair))
    assert results[0].shape == results[1].shape == (12, 3)
    assert torch.allclose(results[0], results[1])


@pytest.mark.parametrize("update_coordinates", [True, False])
def test_dense_egnn_layer_equals_the_per_pair_message_formula(update_coordinates):
    """The rearranged dense EGNN layer (no per-pair messages) equals Σ_{j≠i} of the per-pair
    message m_ij = W SiLU(pre_ij) + b and gated displacement, computed pair by pair."""
    from boltzgen.nn.egnn import EGNNLayer

    g = torch.Generator().manual_seed(7)
    torch.manual_seed(7)
    layer = EGNNLayer(8, 4, update_coordinates).double()
    if update_coordinates:
        torch.nn.init.normal_(layer.coordinate_weight.weight, std=0.5, generator=g)
    batch, n_atoms = 3, 5
    h = torch.randn(batch * n_atoms, 8, generator=g, dtype=torch.float64)
    pos = torch.randn(batch * n_atoms, 3, generator=g, dtype=torch.float64)
    tau = torch.randn(batch, 4, generator=g, dtype=torch.float64)
    graph = BatchGraph.full(batch, n_atoms)
    h_new, pos_new = layer(h, pos, graph, tau, neighbour_norm=4.0)

    part = layer.edge_input.part
    a = (part(0, h, with_bias=True) + part(3, tau).repeat_interleave(n_atoms, 0)).reshape(batch, n_atoms, -1)
    b = part(1, h).reshape(batch, n_atoms, -1)
    x = pos.reshape(batch, n_atoms, 3)
    w_r2 = layer.edge_input.part_weight(2).squeeze(1)
    messages = torch.zeros(batch, n_atoms, 8, dtype=torch.float64)
    displacement = torch.zeros(batch, n_atoms, 3, dtype=torch.float64)
    for k in range(batch):
        for i in range(n_atoms):
            for j in range(n_atoms):
                if i == j:
                    continue
                d = x[k, i] - x[k, j]
                m = layer.edge_mlp(a[k, i] + b[k, j] + d.dot(d) * w_r2)
                messages[k, i] += m
                if update_coordinates:
                    displacement[k, i] += d * torch.tanh(layer.coordinate_weight(m))
    expected_h = h + layer.node_mlp(torch.cat([h, messages.reshape(-1, 8) / 2.0], -1))
    expected_pos = pos + displacement.reshape(-1, 3) / 4.0 if update_coordinates else pos
    assert torch.allclose(h_new, expected_h, atol=1e-12)
    assert torch.allclose(pos_new, expected_pos, atol=1e-12)


def test_bond_distance_classes_of_alanine_dipeptide(targets):
    """Classes 1/2/3 are the bonds, angles and proper torsions of the bond graph (each pair twice)."""
    from boltzgen.nn.features import bond_distance_classes

    topology = targets["aldp"].topology
    classes = bond_distance_classes(topology, 22)
    assert torch.equal(classes, classes.T) and int(classes.diagonal().abs().sum()) == 0
    assert int((classes == 1).sum()) == 2 * topology.n_bonds
    bonded = {(a.index, b.index) for a, b in topology.bonds} | {(b.index, a.index) for a, b in topology.bonds}
    assert all((i, j) in bonded for i, j in (classes == 1).nonzero().tolist())
    angles = {(i, k) for i, j in bonded for j2, k in bonded if j == j2 and i != k}
    assert {tuple(p) for p in (classes == 2).nonzero().tolist()} == angles - bonded
    assert torch.equal(bond_distance_classes(None, 5), torch.zeros(5, 5, dtype=torch.long))


def test_bond_edges_change_the_energy_and_layouts_agree(targets):
    """With trained (nonzero) bond-edge embeddings the energy depends on the bond graph, and the
    dense and torch-geometric layouts give the same energy."""
    aldp = targets["aldp"]
    torch.manual_seed(3)
    kw = dict(hidden=16, n_layers=2, bond_edges=True, neighbour_norm=21.0, dtype=torch.float64)
    full = perturb_final_layer(build_network("egnn", aldp, graph="full", **kw))
    sparse = build_network("egnn", aldp, graph="radius", cutoff=1000.0, **kw)  # envelope ~1
    sparse.load_state_dict(full.state_dict())
    x, t = configurations(aldp), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    torch.testing.assert_close(full(x, t), sparse(x, t), rtol=1e-10, atol=1e-10)
    plain = build_network("egnn", aldp, graph="full", **{**kw, "bond_edges": False})
    plain.load_state_dict({k: v for k, v in full.state_dict().items() if "edge_class" not in k})
    assert float((plain(x, t) - full(x, t)).abs().min()) > 1e-3


def test_smooth_cutoff_vanishes_smoothly():
    r = torch.tensor([0.0, 0.5, 1.0, 1.5], dtype=torch.float64, requires_grad=True)
    u = smooth_cutoff(r, 1.0)
    (du,) = torch.autograd.grad(u.sum(), r, create_graph=True)
    (d2u,) = torch.autograd.grad(du.sum(), r)
    assert u[0] == 1 and u[2] == 0 and u[3] == 0 and 0 < u[1] < 1
    assert du[2].abs() < 1e-12 and d2u[2].abs() < 1e-9


# ---------------------------------------------------------------------------- time features
def test_log_time_features_are_sines_of_t_and_log_t_and_smooth_on_a_sampler_step():
    """The "log" features against their formula; their largest change between neighbouring levels
    of the sampler's 100-level grid (t ≥ 0.01) against the "linear" features of the first models
    (ω up to 1000: a period of 0.006 in t, so an energy built on them wiggles from level to level)."""
    from boltzgen.nn.time import LOG_TIME_FLOOR, FourierTimeFeatures

    t = torch.tensor([1e-8, 1e-5, 0.01, 0.3, 1.0], dtype=torch.float64)
    feats = FourierTimeFeatures(4, max_frequency=30.0, kind="log")
    omega = np.geomspace(1.0, 30.0, 4)
    v = np.log(np.maximum(t.numpy(), LOG_TIME_FLOOR)) / np.log(LOG_TIME_FLOOR)
    angles = np.concatenate([t.numpy()[:, None] * omega, v[:, None] * omega], 1)
    expected = np.concatenate([np.sin(angles), np.cos(angles)], 1)
    np.testing.assert_allclose(feats(t).numpy(), expected, atol=1e-6)  # frequencies stored in float32
    assert feats.out_dim == 16 and FourierTimeFeatures(4, kind="linear").out_dim == 8

    from boltzgen.sampling.sde import time_grid

    grid = torch.tensor(
        [t for t in time_grid(100, 1e-5, spacing="quadratic").tolist() if t >= 0.01], dtype=torch.float64
    )

    def steepest(kind):  # the largest change of a feature between neighbouring levels, over t ≥ 0.01
        f = FourierTimeFeatures(16, kind=kind)(grid)
        return float((f[1:] - f[:-1]).abs().max())

    assert steepest("log") < 0.7 and steepest("linear") > 1.5  # sin, cos: 2 is a random phase
    with pytest.raises(ValueError, match="unknown time features"):
        FourierTimeFeatures(4, kind="sqrt")


def test_models_stored_before_time_features_existed_load_with_the_linear_features():
    from boltzgen.config import ConfigError, NetConfig
    from boltzgen.model import legacy_net_options

    old = {"net": {"kind": "egnn", "hidden": 8}, "model": {}}
    assert legacy_net_options(old)["net"]["time_features"] == "linear"
    assert "time_features" not in old["net"]  # a copy
    new = {"net": NetConfig.from_dict({"kind": "egnn", "hidden": 8}).to_dict()}
    assert new["net"]["time_features"] == "linear"
    log = {"net": NetConfig.from_dict({"kind": "egnn", "time_features": "log"}).to_dict()}
    assert legacy_net_options(log)["net"]["time_features"] == "log"
    options = {k: v for k, v in legacy_net_options(old)["net"].items() if k != "kind"}
    linear = build_network("egnn", (5, 3), **options)
    assert linear.time_embedding.features.out_dim == 32
    with pytest.raises(ConfigError, match="net.time_features"):
        NetConfig.from_dict({"kind": "egnn", "time_features": "sqrt"})


def test_random_models_for_timing_carry_the_systems_own_training_network():
    """boltzgen.bench.random_model: net=None builds the network of the system's training defaults
    (lj55's shipped file asks for a radius graph), a kind builds that network at its defaults; both
    give finite energies and scores."""
    from boltzgen.bench import random_model
    from boltzgen.sampling.sde import model_energy_and_score

    _, shipped = random_model("lj55", None)
    _, plain = random_model("lj55", "egnn")
    assert shipped.net.graph_kind == "radius" and plain.net.graph_kind == "full"
    y = torch.randn(3, 55, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for model in (shipped, plain):
        e, s = model_energy_and_score(model, y, 0.5)
        assert e.shape == (3,) and s.shape == (3, 55, 3)
        assert torch.isfinite(e).all() and torch.isfinite(s).all()
