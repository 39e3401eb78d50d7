"""NequIP-style tensor-product energy network (e3nn).

Per layer, for every pair j → i of the graph, with r_ij = x_j − x_i:

    w_ij  = MLP([Bessel(‖r_ij‖), τ(t)]) · envelope(‖r_ij‖)          (tensor-product weights)
    m_i   = Σ_j TP(W₁ h_j, Y(r̂_ij); w_ij) / √n                       (spherical harmonics Y, l ≤ lmax)
    h_i  ← Gate(W₂ m_i + W₃ h_i) (+ h_i when the irreps agree)

with τ(t) a learned time embedding (also added to the initial scalar features), n the typical
number of neighbours and the envelope present on radius graphs only. The energy is the sum over
atoms of the final invariant scalars: 0e (true scalars) for the default O(3) network, so mirror
images get the same energy; with ``parity=False`` the features carry both parities and the readout
adds 0o pseudoscalars, so the energy is invariant under rotations and translations only (SE(3))
and can tell mirror images apart.

Reference: Batzner et al., "E(3)-equivariant graph neural networks for data-efficient and
accurate interatomic potentials", Nat. Commun. 13, 2453 (2022).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from e3nn import o3
from e3nn.nn import Gate
from torch import nn

from .features import BatchGraph, MolecularEnergyNetwork, distances, sum_over_atoms
from .layers import ConcatLinear, init_variance_preserving, mlp, zero_init


def hidden_irreps(scalar_channels: int, vector_channels: int, lmax: int, parity: bool) -> o3.Irreps:
    """Irreps of the hidden node features.

    O(3) (``parity=True``): ``S×0e + V×1o + V×2e + …`` (the parities of spherical harmonics).
    SE(3) (``parity=False``): ``S×0e + V×0o`` and V copies of each l ≥ 1 with both parities.

    Parameters
    ----------
    scalar_channels : int
        Multiplicity S of the scalars 0e.
    vector_channels : int
        Multiplicity V of every l ≥ 1 irrep (and of 0o for SE(3)).
    lmax : int
        Largest rotation order l.
    parity : bool
        O(3) features (natural parities only) or SE(3) features (both parities).

    Returns
    -------
    e3nn.o3.Irreps
        Sorted and simplified.
    """
    irreps = [(scalar_channels, (0, 1))]
    if not parity:
        irreps.append((vector_channels, (0, -1)))
    for degree in range(1, lmax + 1):
        natural = (-1) ** degree
        irreps.append((vector_channels, (degree, natural)))
        if not parity:
            irreps.append((vector_channels, (degree, -natural)))
    return o3.Irreps(irreps).sort().irreps.simplify()


def _path_exists(irreps_in: o3.Irreps, irreps_edge: o3.Irreps, ir_out: o3.Irrep) -> bool:
    return any(ir_out in ir_a * ir_b for _, ir_a in irreps_in for _, ir_b in irreps_edge)


class BesselBasis(nn.Module):
    """Radial Bessel functions b_k(r) = √(2/r_c) sin(kπ r / r_c) / r, k = 1…K, written with sinc so
    that they are smooth at r = 0.

    Parameters
    ----------
    n_basis : int
        Number K of functions.
    cutoff : float
        Length r_c over which the functions oscillate (units of x).
    """

    def __init__(self, n_basis: int, cutoff: float):
        super().__init__()
        self.register_buffer("k", torch.arange(1, n_basis + 1, dtype=torch.get_default_dtype()), persistent=False)
        self.cutoff = float(cutoff)
        self.n_basis = int(n_basis)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """Basis values at a batch of distances.

        Parameters
        ----------
        r : torch.Tensor, shape (E,)
            Distances, in the units of ``cutoff`` (dimensionless model coordinates).

        Returns
        -------
        torch.Tensor, shape (E, K)
            b_k(r), dtype of ``r``.
        """
        k = self.k.to(r.dtype)
        scale = math.sqrt(2.0 / self.cutoff) * math.pi / self.cutoff
        return scale * k * torch.sinc(k * r.unsqueeze(-1) / self.cutoff)


class TensorProductConvolution(nn.Module):
    """One NequIP interaction block: tensor-product convolution, self-connection and gate.

    Parameters
    ----------
    irreps_in : Irreps
        Irreps of the input node features.
    irreps_sh : Irreps
        Irreps of the edge spherical harmonics.
    irreps_target : Irreps
        Wanted output irreps; only those reachable from ``irreps_in`` ⊗ ``irreps_sh`` are kept
        (:attr:`irreps_out`).
    n_basis : int
        Number of radial basis functions.
    time_dim : int
        Size of the time embedding fed to the radial MLP.
    radial_hidden : int
        Width of the radial MLP's hidden layers.
    radial_layers : int
        Number of hidden layers of the radial MLP.
    """

    def __init__(
        self,
        irreps_in: o3.Irreps,
        irreps_sh: o3.Irreps,
        irreps_target: o3.Irreps,
        n_basis: int,
        time_dim: int,
        radial_hidden: int,
        radial_layers: int,
    ):
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        reachable = o3.Irreps([(mul, ir) for mul, ir in irreps_target if _path_exists(self.irreps_in, irreps_sh, ir)])
        scalars = o3.Irreps([(mul, ir) for mul, ir in reachable if ir.l == 0])
        gated = o3.Irreps([(mul, ir) for mul, ir in reachable if ir.l > 0])
        gates = o3.Irreps([(gated.num_irreps, (0, 1))]) if gated.num_irreps else o3.Irreps("")
        self.gate = Gate(
            scalars,
            [torch.nn.functional.silu if ir.p == 1 else torch.tanh for _, ir in scalars],
            gates,
            [torch.sigmoid] * len(gates),
            gated,
        )
        self.irreps_out = self.gate.irreps_out
        conv_out = self.gate.irreps_in

        # channel-wise ("uvu") tensor product of each input irrep with each harmonic, per-edge weights
        irreps_mid, instructions = [], []
        for i, (mul, ir_in) in enumerate(self.irreps_in):
            for j, (_, ir_sh) in enumerate(irreps_sh):
                for ir_out in ir_in * ir_sh:
                    if ir_out in conv_out:
                        instructions.append((i, j, len(irreps_mid), "uvu", True))
                        irreps_mid.append((mul, ir_out))
        irreps_mid = o3.Irreps(irreps_mid)
        irreps_mid, permutation, _ = irreps_mid.sort()
        instructions = [(i, j, permutation[k], mode, train) for i, j, k, mode, train in instructions]

        self.linear_in = o3.Linear(self.irreps_in, self.irreps_in)
        self.tensor_product = o3.TensorProduct(
            self.irreps_in, irreps_sh, irreps_mid, instructions, shared_weights=False, internal_weights=False
        )
        self.radial_input = ConcatLinear([n_basis, time_dim], radial_hidden)
        radial_sizes = [radial_hidden] * radial_layers + [self.tensor_product.weight_numel]
        self.radial_mlp = nn.Sequential(nn.SiLU(), mlp(radial_sizes))
        radial_linears = [self.radial_input] + [m for m in self.radial_mlp.modules() if isinstance(m, nn.Linear)]
        init_variance_preserving(radial_linears)
        self.linear_out = o3.Linear(irreps_mid.simplify(), conv_out)
        self.self_connection = o3.Linear(self.irreps_in, conv_out)
        self.residual = self.irreps_in == self.irreps_out

    def forward(
        self,
        h: torch.Tensor,
        graph: BatchGraph,
        edge_sh: torch.Tensor,
        edge_basis: torch.Tensor,
        edge_weight: torch.Tensor,
        time_features: torch.Tensor,
        neighbour_norm: float,
    ) -> torch.Tensor:
        """Update node features.

        Parameters
        ----------
        h : tensor, shape (B·N, irreps_in.dim)
        graph : BatchGraph
            Interacting pairs; pair quantities below are in its layout ("pairs" = (B, N, N) or (E,)).
        edge_sh : tensor, shape (pairs, irreps_sh.dim)
            Spherical harmonics of the pair directions.
        edge_basis : tensor, shape (pairs, n_basis)
            Radial basis of the pair lengths.
        edge_weight : tensor, shape (pairs, 1)
            Pair weights (smooth cutoff envelope; 0 on dense self pairs).
        time_features : tensor, shape (B, time_dim)
            Time embedding of each configuration.
        neighbour_norm : float
            Typical number of neighbours.

        Returns
        -------
        tensor, shape (B·N, irreps_out.dim)
        """
        radial_time = graph.graphs(self.radial_input.part(1, time_features))
        radial = self.radial_input.part(0, edge_basis, with_bias=True) + radial_time
        weights = self.radial_mlp(radial) * edge_weight
        messages = self.tensor_product(graph.sources(self.linear_in(h)), edge_sh, weights)
        aggregated = graph.sum_over_sources(messages) / math.sqrt(neighbour_norm)
        out = self.gate(self.linear_out(aggregated) + self.self_connection(h))
        return out + h if self.residual else out


class E3nnEnergy(MolecularEnergyNetwork):
    """NequIP-style energy g(x, t) of (B, N, 3) configurations; see the module docstring.

    Parameters
    ----------
    n_atoms : int
        Number of atoms N.
    topology : mdtraj.Topology or None
        Atom types; ``None``: all atoms identical.
    scalar_channels : int
        Number of scalar (0e) features per atom.
    vector_channels : int
        Multiplicity of each l ≥ 1 irrep (of each parity when ``parity=False``; also the number of
        0o pseudoscalars then).
    lmax : int
        Largest degree of spherical harmonics and features (1 or 2 are sensible).
    n_layers : int
        Number of interaction blocks (at least 3 when ``parity=False``: pseudoscalars first appear
        in the third).
    parity : bool
        ``True``: O(3)-invariant energy (mirror images equal). ``False``: SE(3) only.
    n_basis : int
        Number of radial Bessel functions.
    radial_hidden, radial_layers : int
        Width and number of hidden layers of the radial MLP.
    time_dim : int
        Size of the learned time embedding.
    cutoff : float
        Radius-graph cutoff, and the length over which the Bessel functions oscillate (units of
        x). On a full graph nothing is cut off: farther pairs still interact through the decaying
        Bessel functions.
    atom_types, graph, max_atoms_fully_connected, neighbour_norm, n_frequencies, max_frequency,
    time_features, relative_chirality
        See :class:`boltzgen.nn.features.MolecularEnergyNetwork`.

    Notes
    -----
    e3nn computes its Clebsch-Gordan constants in the default dtype at construction. For float64
    work with tight symmetry, build the network in float64
    (``build_network("e3nn", target, dtype=torch.float64)``); ``.double()`` on a float32 network
    keeps ~1e-8 relative symmetry errors.
    """

    kind = "e3nn"

    def __init__(
        self,
        n_atoms: int,
        topology=None,
        *,
        scalar_channels: int = 32,
        vector_channels: int = 8,
        lmax: int = 1,
        n_layers: int = 3,
        parity: bool = True,
        n_basis: int = 8,
        radial_hidden: int = 32,
        radial_layers: int = 1,
        time_dim: int = 32,
        atom_types: str = "residue_atom",
        graph: str = "auto",
        cutoff: float = 5.0,
        max_atoms_fully_connected: int = 64,
        neighbour_norm: Optional[float] = None,
        n_frequencies: int = 16,
        max_frequency: Optional[float] = None,
        time_features: str = "linear",
        relative_chirality: bool = False,
    ):
        super().__init__(
            n_atoms,
            topology,
            node_dim=scalar_channels,
            time_dim=time_dim,
            atom_types=atom_types,
            graph=graph,
            cutoff=cutoff,
            max_atoms_fully_connected=max_atoms_fully_connected,
            neighbour_norm=neighbour_norm,
            n_frequencies=n_frequencies,
            max_frequency=max_frequency,
            time_features=time_features,
            relative_chirality=relative_chirality,
        )
        if lmax < 1:
            raise ValueError(f"lmax must be at least 1, got {lmax}")
        if n_layers < (1 if parity else 3):
            raise ValueError(
                f"n_layers must be at least {1 if parity else 3} (parity={parity}): pseudoscalars, "
                f"which tell mirror images apart, first appear in the third layer"
            )
        self.config.update(
            scalar_channels=int(scalar_channels),
            vector_channels=int(vector_channels),
            lmax=int(lmax),
            n_layers=int(n_layers),
            parity=bool(parity),
            n_basis=int(n_basis),
            radial_hidden=int(radial_hidden),
            radial_layers=int(radial_layers),
        )
        self.irreps_sh = o3.Irreps.spherical_harmonics(lmax)
        self.radial_basis = BesselBasis(n_basis, cutoff)

        features = hidden_irreps(scalar_channels, vector_channels, lmax, parity)
        invariants = o3.Irreps([(mul, ir) for mul, ir in features if ir.l == 0])  # the last layer keeps only these
        irreps = o3.Irreps(f"{scalar_channels}x0e")
        self.layers = nn.ModuleList()
        for i in range(n_layers):
            layer = TensorProductConvolution(
                irreps,
                self.irreps_sh,
                invariants if i == n_layers - 1 else features,
                n_basis,
                time_dim,
                radial_hidden,
                radial_layers,
            )
            self.layers.append(layer)
            irreps = layer.irreps_out
        readout_irreps = o3.Irreps("0e") if parity else o3.Irreps("0e + 0o")
        self.readout = zero_init(o3.Linear(irreps, readout_irreps))
        self.final_layer = self.readout

    def _energy(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        graph = self.batch_graph(x)
        vectors = graph.vectors(x.reshape(-1, 3))
        r = distances(vectors)
        edge_sh = o3.spherical_harmonics(
            self.irreps_sh, vectors / r.unsqueeze(-1), normalize=False, normalization="component"
        )
        edge_basis = self.radial_basis(r)
        edge_weight = graph.edge_weight(vectors)
        time_features = self.time_embedding(t)
        h = self.initial_node_features(time_features)  # scalars only
        for layer in self.layers:
            h = layer(h, graph, edge_sh, edge_basis, edge_weight, time_features, self.neighbour_norm)
        per_atom = self.readout(h)  # (B·N, 1): 0e, or (B·N, 2): 0e and 0o
        return sum_over_atoms(per_atom.sum(-1), x.shape[0]) + self.chirality_energy(x, time_features)
