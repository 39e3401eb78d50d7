"""Atom and edge features shared by the graph networks (EGNN, e3nn).

- Atom types from an mdtraj topology (:func:`atom_type_indices`) and a learned
  :class:`AtomEmbedding`; atoms with the same type are interchangeable for the network, so the
  energy is invariant under permutations within :func:`identical_atom_groups`.
- Batched graphs in plain torch (:class:`BatchGraph`): a fully connected graph in a dense
  (B, N, N) layout, or a radius graph (:func:`radius_edges`) as a torch-geometric ``edge_index``
  over B configurations of N atoms, nodes numbered b·N + i.
- A smooth cutoff envelope (:func:`smooth_cutoff`) so radius-graph energies stay smooth when pairs
  cross the cutoff.
- :class:`MolecularEnergyNetwork`, the base of the graph networks: it owns the atom embedding, the
  time embedding and the graph choice.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ..states import chiral_centres
from .chirality import RelativeChirality
from .mlp import EnergyNetwork
from .time import TimeEmbedding

#: Atom typing schemes accepted by :func:`atom_type_indices`.
ATOM_TYPE_SCHEMES = ("residue_atom", "equivalent_hydrogens", "element")

#: Graph choices accepted by the graph networks.
GRAPH_KINDS = ("auto", "full", "radius")

#: Added to squared distances before a square root, so that r = 0 has finite derivatives.
DISTANCE_EPS = 1e-12


# ---------------------------------------------------------------------------- atom types
def atom_type_indices(topology, n_atoms: int, scheme: str = "residue_atom") -> tuple[torch.Tensor, torch.Tensor]:
    """Integer element and atom-type indices of every atom.

    Parameters
    ----------
    topology : mdtraj.Topology or None
        Topology of the molecule. ``None`` (Lennard-Jones clusters, bare shapes) makes all atoms
        one element and one type.
    n_atoms : int
        Number of atoms N (checked against the topology).
    scheme : {"residue_atom", "equivalent_hydrogens", "element"}
        How atom types are told apart:

        - ``"residue_atom"``: one type per distinct (residue name, atom name);
        - ``"equivalent_hydrogens"``: the same, except that hydrogens bonded to the same heavy
          atom share a type (methyl hydrogens become interchangeable); needs bonds;
        - ``"element"``: one type per element.

    Returns
    -------
    element_index : long tensor, shape (N,)
        Index of each atom's element among the topology's distinct elements (sorted by atomic
        number).
    type_index : long tensor, shape (N,)
        Index of each atom's type, numbered in order of first appearance.
    """
    if scheme not in ATOM_TYPE_SCHEMES:
        raise ValueError(f"unknown atom type scheme {scheme!r}; choose one of {ATOM_TYPE_SCHEMES}")
    if topology is None:
        zeros = torch.zeros(n_atoms, dtype=torch.long)
        return zeros, zeros.clone()
    if topology.n_atoms != n_atoms:
        raise ValueError(f"topology has {topology.n_atoms} atoms but the network is for {n_atoms}")
    atoms = list(topology.atoms)
    numbers = [a.element.atomic_number if a.element is not None else 0 for a in atoms]
    element_vocab = {z: i for i, z in enumerate(sorted(set(numbers)))}
    element_index = torch.tensor([element_vocab[z] for z in numbers], dtype=torch.long)

    if scheme == "element":
        tokens = [str(z) for z in numbers]
    else:
        tokens = [f"{a.residue.name}:{a.name}" for a in atoms]
        if scheme == "equivalent_hydrogens":
            if topology.n_bonds == 0:
                raise ValueError("atom types 'equivalent_hydrogens' need a topology with bonds")
            for a, b in topology.bonds:
                for hydrogen, partner in ((a, b), (b, a)):
                    if numbers[hydrogen.index] == 1 and numbers[partner.index] != 1:
                        tokens[hydrogen.index] = f"{hydrogen.residue.name}:H@{partner.name}"
    type_vocab: dict[str, int] = {}
    for token in tokens:
        type_vocab.setdefault(token, len(type_vocab))
    type_index = torch.tensor([type_vocab[token] for token in tokens], dtype=torch.long)
    return element_index, type_index


def bond_distance_classes(topology, n_atoms: int, max_bonds: int = 3) -> torch.Tensor:
    """How many bonds apart every pair of atoms is, capped: the edge classes of a molecular graph.

    Parameters
    ----------
    topology : mdtraj.Topology or None
        Its bonds define the graph; ``None`` or no bonds: every pair is class 0.
    n_atoms : int
        N (checked against the topology).
    max_bonds : int
        Pairs 1 … ``max_bonds`` bonds apart get that class; farther or unconnected pairs, and an
        atom with itself, get 0.

    Returns
    -------
    long tensor, shape (N, N)
        Symmetric; invariant under permutations of atoms that the bond graph cannot tell apart.
    """
    if topology is None or topology.n_bonds == 0:
        return torch.zeros(n_atoms, n_atoms, dtype=torch.long)
    if topology.n_atoms != n_atoms:
        raise ValueError(f"topology has {topology.n_atoms} atoms but the network is for {n_atoms}")
    from ..states import bond_separation

    return torch.as_tensor(bond_separation(topology, max_bonds), dtype=torch.long)


def identical_atom_groups(topology, n_atoms: int, scheme: str = "residue_atom") -> list[list[int]]:
    """Groups (of two or more) of atoms the network cannot tell apart: the same element and type.

    The energy of a graph network is invariant under permutations within each group.

    Parameters
    ----------
    topology : mdtraj.Topology or None
        Topology of the molecule; ``None`` makes all atoms one type.
    n_atoms : int
        Number of atoms N.
    scheme : {"residue_atom", "equivalent_hydrogens", "element"}
        Atom typing scheme, see :func:`atom_type_indices`.

    Returns
    -------
    list of list of int
        Atom indices, one list per group; all atoms for a topology-free system.
    """
    element_index, type_index = atom_type_indices(topology, n_atoms, scheme)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, key in enumerate(zip(element_index.tolist(), type_index.tolist())):
        groups.setdefault(key, []).append(i)
    return [g for g in groups.values() if len(g) > 1]


class AtomEmbedding(nn.Module):
    """Learned per-atom feature vectors: element embedding + atom-type embedding.

    Parameters
    ----------
    topology : mdtraj.Topology or None
        Source of the atom types (see :func:`atom_type_indices`).
    n_atoms : int
        Number of atoms N.
    dim : int
        Size of the feature vectors.
    scheme : str
        Atom typing scheme.
    """

    def __init__(self, topology, n_atoms: int, dim: int, scheme: str = "residue_atom"):
        super().__init__()
        element_index, type_index = atom_type_indices(topology, n_atoms, scheme)
        self.register_buffer("element_index", element_index)
        self.register_buffer("type_index", type_index)
        self.element_embedding = nn.Embedding(int(element_index.max()) + 1, dim)
        self.type_embedding = nn.Embedding(int(type_index.max()) + 1, dim)

    def forward(self) -> torch.Tensor:
        """Feature vectors of the N atoms.

        Returns
        -------
        torch.Tensor, shape (N, dim)
            Element embedding + atom-type embedding of each atom.
        """
        return self.element_embedding(self.element_index) + self.type_embedding(self.type_index)


# ---------------------------------------------------------------------------- graphs
def fully_connected_edges(batch_size: int, n_atoms: int, device=None) -> torch.Tensor:
    """All ordered pairs i ≠ j within each of B configurations.

    Parameters
    ----------
    batch_size : int
        Number of configurations B.
    n_atoms : int
        Number of atoms N per configuration.
    device : torch.device or str, optional
        Device of the result.

    Returns
    -------
    long tensor, shape (2, B·N·(N−1))
        ``edge_index``: row 0 the source j, row 1 the target i, nodes numbered b·N + atom.
    """
    idx = torch.arange(n_atoms, device=device)
    src, dst = torch.meshgrid(idx, idx, indexing="ij")
    off_diagonal = src != dst
    pairs = torch.stack([src[off_diagonal], dst[off_diagonal]])  # (2, N(N-1))
    offsets = (torch.arange(batch_size, device=device) * n_atoms).repeat_interleave(pairs.shape[1])
    return pairs.repeat(1, batch_size) + offsets


def radius_edges(x: torch.Tensor, cutoff: float, max_pairs_per_chunk: int = 2**24) -> torch.Tensor:
    """Ordered pairs i ≠ j closer than ``cutoff`` within each configuration (plain torch).

    Parameters
    ----------
    x : tensor, shape (B, N, 3)
        Coordinates.
    cutoff : float
        Cutoff radius, in the units of ``x``.
    max_pairs_per_chunk : int
        Bound on the size of the distance matrices computed at once (B is split into chunks).

    Returns
    -------
    long tensor, shape (2, E)
        ``edge_index`` as in :func:`fully_connected_edges`, sorted by configuration. Not
        differentiable (indices only).
    """
    batch_size, n_atoms, _ = x.shape
    chunk = max(1, max_pairs_per_chunk // max(1, n_atoms * n_atoms))
    not_self = ~torch.eye(n_atoms, dtype=torch.bool, device=x.device)
    pieces = []
    with torch.no_grad():
        for start in range(0, batch_size, chunk):
            xs = x[start : start + chunk]
            r2 = (xs.unsqueeze(1) - xs.unsqueeze(2)).pow(2).sum(-1)  # (b, i, j) = |x_j - x_i|²
            b, i, j = torch.nonzero((r2 < cutoff * cutoff) & not_self, as_tuple=True)
            node_offset = (b + start) * n_atoms
            pieces.append(torch.stack([node_offset + j, node_offset + i]))
    return torch.cat(pieces, dim=1)


def smooth_cutoff(r: torch.Tensor, cutoff: float, power: int = 6) -> torch.Tensor:
    """Polynomial cutoff envelope (DimeNet / NequIP): 1 at r = 0, vanishing at r = cutoff together
    with its first and second derivatives, exactly 0 beyond.

    u(d) = 1 − (p+1)(p+2)/2 d^p + p(p+2) d^(p+1) − p(p+1)/2 d^(p+2),  d = r / cutoff.

    Parameters
    ----------
    r : tensor, any shape
        Distances (non-negative).
    cutoff : float
        Cutoff radius.
    power : int
        Exponent p.

    Returns
    -------
    tensor, shape of ``r``
    """
    p = float(power)
    d = r / cutoff
    poly = (
        1.0
        - (p + 1.0) * (p + 2.0) / 2.0 * d.pow(p)
        + p * (p + 2.0) * d.pow(p + 1.0)
        - p * (p + 1.0) / 2.0 * d.pow(p + 2.0)
    )
    return torch.where(d < 1.0, poly, torch.zeros_like(poly))


def distances(vectors: torch.Tensor) -> torch.Tensor:
    """Lengths sqrt(‖v‖² + ε) of vectors, with finite derivatives at v = 0.

    Parameters
    ----------
    vectors : torch.Tensor, shape (..., 3)
        Pair vectors (units of x, e.g. nm).

    Returns
    -------
    torch.Tensor, shape (...)
        Lengths, in the units of ``vectors`` (ε = ``DISTANCE_EPS`` = 1e-12 squared units).
    """
    return (vectors.pow(2).sum(-1) + DISTANCE_EPS).sqrt()


def dihedral(p0: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, p3: torch.Tensor) -> torch.Tensor:
    """Dihedral angles of four point sets, differentiable (the convention of OpenMM and mdtraj).

    Parameters
    ----------
    p0, p1, p2, p3 : torch.Tensor, shape (..., 3)
        The four atoms of each dihedral (any length unit: the angle is scale invariant).

    Returns
    -------
    torch.Tensor, shape (...)
        φ in (−π, π] radians; 0 where the atoms are collinear.
    """
    b0, b1, b2 = p1 - p0, p2 - p1, p3 - p2
    n1, n2 = torch.cross(b0, b1, dim=-1), torch.cross(b1, b2, dim=-1)
    m = torch.cross(n1, b1 / torch.sqrt((b1**2).sum(-1, keepdim=True) + 1e-12), dim=-1)
    return torch.atan2(-(m * n2).sum(-1), (n1 * n2).sum(-1))


def sum_onto_nodes(edge_values: torch.Tensor, target: torch.Tensor, n_nodes: int) -> torch.Tensor:
    """Sum per-edge values onto their target nodes.

    Parameters
    ----------
    edge_values : torch.Tensor, shape (E, ...)
        One value (vector) per edge.
    target : torch.LongTensor, shape (E,)
        Target node of each edge (row 1 of ``edge_index``).
    n_nodes : int
        Number of nodes (B·N).

    Returns
    -------
    torch.Tensor, shape (n_nodes, ...)
        Σ over the incoming edges of each node (zero for nodes without edges).
    """
    out = edge_values.new_zeros((n_nodes,) + tuple(edge_values.shape[1:]))
    return out.index_add(0, target, edge_values)


class BatchGraph:
    """The interacting pairs (edges j → i) of a batch of B configurations of N atoms.

    Two layouts of per-pair quantities:

    - **dense** (fully connected graphs): shape (B, N, N, F), indexed [b, i, j], built by
      broadcasting node values (no gathers, no scatters: this is the fast path on CPU). The self
      pairs i = j are computed too and switched off by :meth:`edge_weight`, which is 0 there.
    - **sparse** (radius graphs): shape (E, F) along ``edge_index`` (row 0 source j, row 1 target
      i, nodes numbered b·N + i), as torch-geometric expects.

    Node values are always (B·N, F). Build one with :meth:`full` or :meth:`radius`.

    Parameters
    ----------
    batch_size : int
        Number of configurations B.
    n_atoms : int
        Number of atoms N per configuration.
    edge_index : torch.LongTensor, shape (2, E), optional
        Sparse edges (row 0 source j, row 1 target i); ``None`` for the dense, fully connected
        layout.
    cutoff : float, optional
        Cutoff radius of a radius graph (units of x), for :meth:`edge_weight`.
    """

    def __init__(
        self, batch_size: int, n_atoms: int, edge_index: Optional[torch.Tensor] = None, cutoff: Optional[float] = None
    ):
        self.batch_size = int(batch_size)
        self.n_atoms = int(n_atoms)
        self.edge_index = edge_index
        self.cutoff = cutoff

    @classmethod
    def full(cls, batch_size: int, n_atoms: int) -> "BatchGraph":
        """All pairs i ≠ j, dense layout.

        Parameters
        ----------
        batch_size : int
            Number of configurations B.
        n_atoms : int
            Number of atoms N.

        Returns
        -------
        BatchGraph
        """
        return cls(batch_size, n_atoms)

    @classmethod
    def radius(cls, x: torch.Tensor, cutoff: float) -> "BatchGraph":
        """Pairs closer than ``cutoff`` in x, sparse layout; edge weights vanish smoothly at the
        cutoff (:func:`smooth_cutoff`).

        Parameters
        ----------
        x : torch.Tensor, shape (B, N, 3)
            Coordinates (the graph is built from ``x.detach()``).
        cutoff : float
            Cutoff radius, in the units of ``x``.

        Returns
        -------
        BatchGraph
        """
        return cls(x.shape[0], x.shape[1], radius_edges(x.detach(), cutoff), cutoff)

    @property
    def dense(self) -> bool:
        """bool: whether pair values use the dense (B, N, N, F) layout (fully connected graph)."""
        return self.edge_index is None

    @property
    def n_nodes(self) -> int:
        """int: number of nodes B·N."""
        return self.batch_size * self.n_atoms

    def targets(self, node_values: torch.Tensor) -> torch.Tensor:
        """Value of the target atom i of each pair.

        Parameters
        ----------
        node_values : torch.Tensor, shape (B·N, F)
            One value per node.

        Returns
        -------
        torch.Tensor, shape (B, N, 1, F) (dense) or (E, F) (sparse)
        """
        if self.dense:
            return node_values.reshape(self.batch_size, self.n_atoms, 1, -1)
        return node_values.index_select(0, self.edge_index[1])

    def sources(self, node_values: torch.Tensor) -> torch.Tensor:
        """Value of the source atom j of each pair.

        Parameters
        ----------
        node_values : torch.Tensor, shape (B·N, F)
            One value per node.

        Returns
        -------
        torch.Tensor, shape (B, 1, N, F) (dense) or (E, F) (sparse)
        """
        if self.dense:
            return node_values.reshape(self.batch_size, 1, self.n_atoms, -1)
        return node_values.index_select(0, self.edge_index[0])

    def graphs(self, graph_values: torch.Tensor) -> torch.Tensor:
        """Value of the configuration of each pair.

        Parameters
        ----------
        graph_values : torch.Tensor, shape (B, F)
            One value per configuration.

        Returns
        -------
        torch.Tensor, shape (B, 1, 1, F) (dense) or (E, F) (sparse)
        """
        if self.dense:
            return graph_values.reshape(self.batch_size, 1, 1, -1)
        return graph_values.index_select(0, torch.div(self.edge_index[1], self.n_atoms, rounding_mode="floor"))

    def vectors(self, pos: torch.Tensor) -> torch.Tensor:
        """Pair vectors x_j − x_i from node positions.

        Parameters
        ----------
        pos : torch.Tensor, shape (B·N, 3)
            Node positions (units of x, e.g. nm).

        Returns
        -------
        torch.Tensor, shape (B, N, N, 3) (dense) or (E, 3) (sparse)
            x_j − x_i, units of ``pos``.
        """
        return self.sources(pos) - self.targets(pos)

    def edge_weight(self, vectors: torch.Tensor) -> torch.Tensor:
        """Weight of each pair: 0 on the self pairs of the dense layout, else 1; the smooth
        cutoff envelope on a radius graph.

        Parameters
        ----------
        vectors : torch.Tensor, shape (B, N, N, 3) or (E, 3)
            Pair vectors from :meth:`vectors` (only dtype and device are used for a dense graph).

        Returns
        -------
        torch.Tensor, shape (N, N, 1) (dense) or (E, 1) (sparse)
            Dimensionless weights in [0, 1].
        """
        if self.dense:
            return (1.0 - torch.eye(self.n_atoms, dtype=vectors.dtype, device=vectors.device)).unsqueeze(-1)
        return smooth_cutoff(distances(vectors), self.cutoff).unsqueeze(-1)

    def sum_over_sources(self, pair_values: torch.Tensor) -> torch.Tensor:
        """Σ_j of pair values onto their target atoms i. Self pairs of the dense layout must
        already carry weight 0 (see :meth:`edge_weight`).

        Parameters
        ----------
        pair_values : torch.Tensor, shape (B, N, N, F) (dense) or (E, F) (sparse)
            One value per pair (edge j → i).

        Returns
        -------
        torch.Tensor, shape (B·N, F)
        """
        if self.dense:
            return pair_values.sum(2).reshape(self.n_nodes, -1)
        return sum_onto_nodes(pair_values, self.edge_index[1], self.n_nodes)


# ---------------------------------------------------------------------------- base class
class MolecularEnergyNetwork(EnergyNetwork):
    """Base of the graph energy networks on (B, N, 3) inputs.

    Holds the atom embedding, the time embedding and the graph choice; subclasses implement
    :meth:`_energy`.

    Parameters
    ----------
    n_atoms : int
        Number of atoms N.
    topology : mdtraj.Topology or None
        Atom types come from it; ``None`` makes all atoms identical (LJ clusters).
    node_dim : int
        Size of the atom embedding.
    time_dim : int
        Size of the learned time embedding.
    atom_types : str
        Atom typing scheme, see :func:`atom_type_indices`.
    graph : {"auto", "full", "radius"}
        Interacting pairs: all pairs, pairs within ``cutoff``, or ``"full"`` up to
        ``max_atoms_fully_connected`` atoms and ``"radius"`` above.
    cutoff : float
        Radius-graph cutoff (units of x). Message weights go smoothly to 0 at the cutoff.
    max_atoms_fully_connected : int
        Largest N that ``graph="auto"`` connects fully.
    neighbour_norm : float or None
        Typical number of neighbours, used to normalise summed messages; ``None``: N − 1 for a
        full graph, min(N − 1, 16) for a radius graph.
    n_frequencies, max_frequency, time_features : int, float or None, str
        Fourier time features (see :class:`boltzgen.nn.time.FourierTimeFeatures`: "log" features
        of t and log t, or "linear" ones of t alone; max_frequency None: that kind's default).
    relative_chirality : bool
        Add the energy term of the chiral centres' relative hands
        (:class:`boltzgen.nn.chirality.RelativeChirality`; needs a topology with at least two
        Cα centres, else it is zero).
    """

    def __init__(
        self,
        n_atoms: int,
        topology,
        *,
        node_dim: int,
        time_dim: int,
        atom_types: str,
        graph: str,
        cutoff: float,
        max_atoms_fully_connected: int,
        neighbour_norm: Optional[float],
        n_frequencies: int,
        max_frequency: Optional[float],
        time_features: str,
        relative_chirality: bool = False,
    ):
        super().__init__()
        if graph not in GRAPH_KINDS:
            raise ValueError(f"unknown graph {graph!r}; choose one of {GRAPH_KINDS}")
        if cutoff <= 0:
            raise ValueError(f"cutoff must be positive, got {cutoff}")
        self.n_atoms = int(n_atoms)
        self.event_shape = (self.n_atoms, 3)
        self.graph_kind = graph if graph != "auto" else ("full" if n_atoms <= max_atoms_fully_connected else "radius")
        self.cutoff = float(cutoff)
        if neighbour_norm is None:
            neighbours = max(1, n_atoms - 1)
            self.neighbour_norm = float(neighbours if self.graph_kind == "full" else min(neighbours, 16))
        else:
            self.neighbour_norm = float(neighbour_norm)
        self.atom_embedding = AtomEmbedding(topology, n_atoms, node_dim, atom_types)
        self.time_embedding = TimeEmbedding(time_dim, n_frequencies, max_frequency, time_features)
        self.time_to_node = nn.Linear(time_dim, node_dim)
        self.config: dict[str, Any] = dict(
            atom_types=atom_types,
            graph=graph,
            cutoff=float(cutoff),
            max_atoms_fully_connected=int(max_atoms_fully_connected),
            neighbour_norm=None if neighbour_norm is None else float(neighbour_norm),
            time_dim=int(time_dim),
            n_frequencies=int(n_frequencies),
            max_frequency=None if max_frequency is None else float(max_frequency),
            time_features=str(time_features),
            relative_chirality=bool(relative_chirality),
        )
        centres = chiral_centres(topology)
        self.chirality = RelativeChirality(centres, time_dim) if relative_chirality and len(centres) >= 2 else None

    def chirality_energy(self, x: torch.Tensor, time_features: torch.Tensor) -> torch.Tensor:
        """The relative-chirality term (zeros when the network has none).

        Parameters
        ----------
        x : torch.Tensor, shape (B, N, 3)
            Coordinates (units of x).
        time_features : torch.Tensor, shape (B, time_dim)
            Time embedding of each configuration.

        Returns
        -------
        torch.Tensor, shape (B,)
        """
        if self.chirality is None:
            return x.new_zeros(x.shape[0])
        return self.chirality(x, time_features)

    def snr_energy(self, x: torch.Tensor, snr: torch.Tensor) -> torch.Tensor:
        """The relative-chirality wall (:meth:`boltzgen.nn.chirality.RelativeChirality.wall`;
        zeros without the term), added by the energy model outside the output scaling.

        Parameters
        ----------
        x : torch.Tensor, shape (B, N, 3)
            Coordinates (any length unit).
        snr : torch.Tensor, shape (B,)
            α_t² / σ_t² of each configuration's time.

        Returns
        -------
        torch.Tensor, shape (B,)
        """
        if self.chirality is None:
            return x.new_zeros(x.shape[0])
        return self.chirality.wall(x, snr)

    def batch_graph(self, x: torch.Tensor) -> BatchGraph:
        """The interacting pairs of a batch (full or radius graph, as configured).

        Parameters
        ----------
        x : torch.Tensor, shape (B, N, 3)
            Coordinates (units of x).

        Returns
        -------
        BatchGraph
        """
        if self.graph_kind == "full":
            return BatchGraph.full(x.shape[0], self.n_atoms)
        return BatchGraph.radius(x, self.cutoff)

    def initial_node_features(self, time_features: torch.Tensor) -> torch.Tensor:
        """Atom embedding plus projected time embedding τ(t).

        Parameters
        ----------
        time_features : torch.Tensor, shape (B, time_dim)
            Time embedding of each configuration.

        Returns
        -------
        torch.Tensor, shape (B·N, node_dim)
            Initial node features, nodes numbered b·N + i.
        """
        h = self.atom_embedding().unsqueeze(0) + self.time_to_node(time_features).unsqueeze(1)  # (B, N, node_dim)
        return h.reshape(-1, h.shape[-1])


def sum_over_atoms(per_atom: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Sum per-atom values over the atoms of each configuration.

    Parameters
    ----------
    per_atom : torch.Tensor, shape (B·N, ...)
        One value per node, nodes numbered b·N + i.
    batch_size : int
        Number of configurations B.

    Returns
    -------
    torch.Tensor, shape (B, ...)
    """
    return per_atom.reshape(batch_size, -1, *per_atom.shape[1:]).sum(1)
