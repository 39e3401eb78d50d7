"""Metastable states of a system: named labels 0 … K−1 of configurations.

A :class:`StateSet` names K states and assigns each configuration one of them. Per-state
resampling in SMC, state oversampling in training, the free energies between states
(:func:`boltzgen.weights.state_free_energies`) and the report's state panels all take a StateSet,
so nothing downstream assumes a particular molecule. See ``docs/design.md`` (states).

Builders:

- :func:`torsion_states`: the sign, or given ranges, of one torsion (four atoms);
- :func:`function_states`: a user function of the configurations;
- :func:`phi_states_of`: the sign of one residue's backbone φ (φ < 0 → 0, φ > 0 → 1);
- :func:`backbone_states`: one φ-sign StateSet per residue that has a φ;
- :func:`basin_states_of`: one residue's Ramachandran basin (β/PII, α_R, φ > 0) from its (φ, ψ);
- :func:`basin_states`: the joint basins of every residue (finer than the φ signs);
- :func:`resampling_strata`: the states a target's SMC resamples within (its own, or the basins);
- :func:`joint_states`: the product of several StateSets (one label per combination);
- :func:`default_states`: a peptide's default, the joint φ signs of all its residues (for
  alanine dipeptide, with one φ, exactly the φ-sign states).

Torsions come from the topology through mdtraj (:func:`backbone_torsions`), in radians in
(−π, π]; coordinates are in nm.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Optional, Sequence

import numpy as np

__all__ = [
    "StateSet",
    "torsion_states",
    "function_states",
    "phi_states_of",
    "backbone_states",
    "basin_states_of",
    "basin_states",
    "resampling_strata",
    "BASIN_NAMES",
    "ALPHA_R_PSI_DEG",
    "joint_states",
    "default_states",
    "backbone_torsions",
    "phi_psi",
    "torsion_angles",
    "phi_torsions",
    "trajectory",
    "as_mdtraj_topology",
    "chiral_centres",
    "peptide_bonds",
    "bond_separation",
]


# ---------------------------------------------------------------------------- coordinates
def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def trajectory(x_or_traj, topology):
    """An ``mdtraj.Trajectory`` of configurations (float32, as mdtraj stores them).

    Parameters
    ----------
    x_or_traj : array (B, N, 3), (B, 3N) or (N, 3) in nm (NumPy or torch), or mdtraj.Trajectory
        Configurations; a Trajectory is returned as it is.
    topology : mdtraj.Topology or None
        Required for coordinate arrays (N atoms).

    Returns
    -------
    mdtraj.Trajectory

    Raises
    ------
    ValueError
        No topology for coordinates, or coordinates that do not fit the topology.
    """
    import mdtraj

    if isinstance(x_or_traj, mdtraj.Trajectory):
        return x_or_traj
    if topology is None:
        raise ValueError("torsions need a topology when given coordinates (or pass an mdtraj.Trajectory)")
    x = _frames(x_or_traj, topology.n_atoms)
    return mdtraj.Trajectory(x.astype(np.float32), topology)


def _frames(x, n_atoms: int) -> np.ndarray:
    """(B, N, 3) float64 from (B, N, 3), (B, 3N) or one (N, 3) configuration."""
    x = _as_numpy(x)
    if x.ndim == 2 and x.shape == (n_atoms, 3):
        x = x[None]
    elif x.ndim == 2 and x.shape[1] == 3 * n_atoms:
        x = x.reshape(x.shape[0], n_atoms, 3)
    if x.ndim != 3 or x.shape[1:] != (n_atoms, 3):
        raise ValueError(
            f"coordinates of shape {x.shape} do not match a topology of {n_atoms} atoms (expected (B, {n_atoms}, 3))"
        )
    return x


def torsion_angles(x_or_traj, atoms, topology=None) -> np.ndarray:
    """Torsion angles of atom quadruples, in radians in (−π, π].

    With a topology (or a Trajectory) through ``mdtraj.compute_dihedrals`` on float32
    coordinates, as mdtraj's own φ/ψ are computed; without one from the float64 coordinates
    directly (the same formula: atan2(|b1| b0·(b1×b2), (b0×b1)·(b1×b2)) with b_i the bond vectors).

    Parameters
    ----------
    x_or_traj : array (B, N, 3) or (B, 3N) in nm, or mdtraj.Trajectory
    atoms : array of int, shape (4,) or (T, 4)
        Zero-based atom indices of each torsion.
    topology : mdtraj.Topology, optional

    Returns
    -------
    ndarray, float64, shape (B,) for one quadruple, (B, T) for T of them
    """
    import mdtraj

    quads = np.asarray(atoms, dtype=np.int64)
    one = quads.ndim == 1
    quads = quads.reshape(-1, 4)
    if topology is not None or isinstance(x_or_traj, mdtraj.Trajectory):
        angles = mdtraj.compute_dihedrals(trajectory(x_or_traj, topology), quads).astype(np.float64)
    else:
        x = _as_numpy(x_or_traj)
        if x.ndim == 2:
            x = x.reshape(x.shape[0], -1, 3)
        angles = _dihedrals(x, quads)
    return angles[:, 0] if one else angles


def _dihedrals(x: np.ndarray, quads: np.ndarray) -> np.ndarray:
    """(B, T) torsions of (B, N, 3) coordinates, in (−π, π]."""
    p0, p1, p2, p3 = (x[:, quads[:, i]] for i in range(4))
    b0, b1, b2 = p1 - p0, p2 - p1, p3 - p2
    n1, n2 = np.cross(b0, b1), np.cross(b1, b2)
    y = np.linalg.norm(b1, axis=-1) * np.sum(b0 * n2, -1)
    return np.arctan2(y, np.sum(n1 * n2, -1))


def as_mdtraj_topology(topology):
    """An mdtraj Topology for an mdtraj or OpenMM one.

    Parameters
    ----------
    topology : mdtraj.Topology or openmm.app.Topology

    Returns
    -------
    mdtraj.Topology
    """
    if hasattr(topology, "residues") and hasattr(topology, "n_atoms"):
        return topology
    import mdtraj

    return mdtraj.Topology.from_openmm(topology)


def chiral_centres(topology) -> np.ndarray:
    """The (N, CA, C, CB) atom indices of every residue that has all four atoms (Cα centres).

    Parameters
    ----------
    topology : mdtraj.Topology (or openmm.app.Topology)

    Returns
    -------
    numpy int64 array, shape (K, 4); K = 0 for achiral molecules (glycine only, LJ clusters)
    """
    if topology is None:
        return np.zeros((0, 4), dtype=np.int64)
    topology = as_mdtraj_topology(topology)
    out = []
    for res in topology.residues:
        names = {atom.name: atom.index for atom in res.atoms}
        if all(k in names for k in ("N", "CA", "C", "CB")):
            out.append([names["N"], names["CA"], names["C"], names["CB"]])
    return np.asarray(out, dtype=np.int64).reshape(-1, 4)


def bond_separation(topology, max_bonds: int = 3) -> np.ndarray:
    """How many bonds apart every pair of atoms is, up to ``max_bonds`` (breadth-first search).

    Parameters
    ----------
    topology : mdtraj.Topology or openmm.app.Topology
        Its bonds define the graph.
    max_bonds : int
        Pairs 1 … ``max_bonds`` bonds apart get that number; farther or unconnected pairs, and an
        atom with itself, get 0.

    Returns
    -------
    numpy int64 array, shape (N, N)
        Symmetric.
    """
    top = as_mdtraj_topology(topology)
    n = top.n_atoms
    neighbours: list[list[int]] = [[] for _ in range(n)]
    for a, b in top.bonds:
        neighbours[a.index].append(b.index)
        neighbours[b.index].append(a.index)
    out = np.zeros((n, n), dtype=np.int64)
    for start in range(n):
        seen, frontier = {start}, [start]
        for depth in range(1, max_bonds + 1):
            frontier = list(dict.fromkeys(j for i in frontier for j in neighbours[i] if j not in seen))
            seen.update(frontier)
            out[start, frontier] = depth
    return out


def peptide_bonds(topology) -> np.ndarray:
    """The (CA_i, C_i, N_i+1, CA_i+1) atoms of every peptide bond's ω torsion (caps included).

    The caps' methyl carbons stand in for CA (ACE's CH3, NME's C).

    Parameters
    ----------
    topology : mdtraj.Topology or openmm.app.Topology

    Returns
    -------
    numpy int64 array, shape (K, 4)
    """
    top = as_mdtraj_topology(topology)
    out = []
    residues = list(top.residues)
    for prev, nxt in zip(residues[:-1], residues[1:]):
        a = {atom.name: atom.index for atom in prev.atoms}
        b = {atom.name: atom.index for atom in nxt.atoms}
        ca_prev = a.get("CA", a.get("CH3"))
        ca_next = b.get("CA", b.get("CH3", b.get("C") if nxt.name == "NME" else None))
        if None not in (ca_prev, a.get("C"), b.get("N"), ca_next):
            out.append([ca_prev, a["C"], b["N"], ca_next])
    return np.asarray(out, dtype=np.int64).reshape(-1, 4)


def _residue_label(residue) -> str:
    return f"{residue.name}{residue.resSeq}"


def phi_torsions(topology) -> list:
    """The backbone φ torsions of a topology: ``(residue label, atoms)`` per residue that has one.

    Parameters
    ----------
    topology : mdtraj.Topology or None

    Returns
    -------
    list of (str, ndarray of int64 shape (4,))
        In residue order; the label is the residue name and number (e.g. ``"ALA2"``). Empty for
        None and for topologies mdtraj cannot analyse.
    """
    return _backbone(topology, "phi")


def _backbone(topology, kind: str) -> list:
    import mdtraj

    if topology is None:
        return []
    empty = mdtraj.Trajectory(np.zeros((1, topology.n_atoms, 3), dtype=np.float32), topology)
    compute = mdtraj.compute_phi if kind == "phi" else mdtraj.compute_psi
    try:
        quads, _ = compute(empty)
    except Exception:  # topologies mdtraj cannot analyse (e.g. no residues)
        return []
    # φ belongs to the residue of its N, CA, C (atoms 1-3); ψ to that of its N, CA, C (atoms 0-2)
    owner = 1 if kind == "phi" else 0
    return [(_residue_label(topology.atom(int(q[owner])).residue), np.asarray(q, dtype=np.int64)) for q in quads]


def backbone_torsions(x_or_traj, topology=None) -> dict:
    """Backbone φ and ψ of every residue that has them, in radians in (−π, π].

    Parameters
    ----------
    x_or_traj : array (B, N, 3) or (B, 3N) in nm (NumPy or torch), or mdtraj.Trajectory
    topology : mdtraj.Topology, optional
        Required for coordinate arrays.

    Returns
    -------
    dict
        ``"phi(ALA2)" -> (B,) float64``, then ``"psi(ALA2)"`` etc., residues in order (φ and
        ψ of one residue next to each other). Empty when the topology has no backbone torsion.
    """
    traj = trajectory(x_or_traj, topology)
    out = {}
    phis = dict(_backbone(traj.topology, "phi"))
    psis = dict(_backbone(traj.topology, "psi"))
    for residue in traj.topology.residues:
        label = _residue_label(residue)
        for kind, table in (("phi", phis), ("psi", psis)):
            if label in table:
                out[f"{kind}({label})"] = torsion_angles(traj, table[label])
    return out


def phi_psi(x_or_traj, topology=None) -> tuple:
    """Backbone φ and ψ as arrays: (B,) each for a molecule with one of each, else (B, K).

    Parameters
    ----------
    x_or_traj : array (B, N, 3), (B, 3N) or (N, 3) in nm (NumPy or torch), or mdtraj.Trajectory
    topology : mdtraj.Topology, optional
        Required for coordinate arrays.

    Returns
    -------
    phi, psi : ndarray, float64, radians in (−π, π]
        Columns in residue order (:func:`backbone_torsions`).

    Raises
    ------
    ValueError
        No φ torsion in the topology, or coordinates that do not fit it.
    """
    tors = backbone_torsions(x_or_traj, topology)
    phi = [v for k, v in tors.items() if k.startswith("phi(")]
    psi = [v for k, v in tors.items() if k.startswith("psi(")]
    if not phi:
        raise ValueError("the topology has no phi torsion (needs a C-N-CA-C backbone across residues)")
    phi = np.stack(phi, 1)
    psi = np.stack(psi, 1) if psi else np.zeros((phi.shape[0], 0))
    return (phi[:, 0] if phi.shape[1] == 1 else phi), (psi[:, 0] if psi.shape[1] == 1 else psi)


# ---------------------------------------------------------------------------- state sets
class StateSet:
    """K named metastable states of one system.

    Parameters
    ----------
    name : str
        What the states are of (e.g. ``"phi"`` or ``"phi(ALA2)"``).
    names : sequence of str
        The K state names; label k means ``names[k]``.
    labeller : callable
        ``labeller(x) -> (B,)`` integer labels in [0, K) for configurations x (as :meth:`assign`
        takes them).
    components : sequence of StateSet, optional
        For a joint StateSet (:func:`joint_states`): the StateSets it combines.

    Attributes
    ----------
    name : str
    names : tuple of str
    components : tuple of StateSet
        Empty unless the set is a product.
    """

    def __init__(self, name: str, names: Sequence[str], labeller: Callable, components: Sequence = ()):
        self.name = str(name)
        self.names = tuple(str(n) for n in names)
        if len(self.names) < 1 or len(set(self.names)) != len(self.names):
            raise ValueError(f"state names must be distinct and at least one, got {self.names}")
        self._labeller = labeller
        self.components = tuple(components)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"StateSet({self.name!r}, names={self.names})"

    def assign(self, x) -> np.ndarray:
        """The state label of each configuration.

        Parameters
        ----------
        x : array (B, N, 3) in nm (NumPy or torch), mdtraj.Trajectory, or (B, D)
            Configurations, in the form the states were built for.

        Returns
        -------
        ndarray of int64, shape (B,)
            Labels in [0, K).

        Raises
        ------
        ValueError
            Labels that are not integers in [0, K).
        """
        labels = self._labeller(x)
        if hasattr(labels, "detach"):
            labels = labels.detach().cpu().numpy()
        labels = np.asarray(labels)
        if labels.dtype == bool:
            labels = labels.astype(np.int64)
        if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or np.all(labels == np.round(labels))):
            raise ValueError(
                f"states {self.name}: labels must be one integer per configuration, shape (B,); "
                f"got {labels.dtype} of shape {labels.shape}"
            )
        labels = labels.astype(np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.names)):
            raise ValueError(
                f"states {self.name}: labels must lie in [0, {len(self.names)}), got [{labels.min()}, {labels.max()}]"
            )
        return labels


def function_states(fn: Callable, names: Sequence[str], name: str = "states") -> StateSet:
    """States given by a user function.

    Parameters
    ----------
    fn : callable
        ``fn(x) -> (B,)`` integer (or boolean) labels in [0, len(names)), for x as the caller
        passes it to :meth:`StateSet.assign` (e.g. a (B, N, 3) array in nm).
    names : sequence of str
        The state names.
    name : str
        What the states are of.

    Returns
    -------
    StateSet
    """
    return StateSet(name, names, fn)


def torsion_states(
    topology, atoms, name: str, bounds: Optional[Sequence] = None, names: Optional[Sequence[str]] = None
) -> StateSet:
    """States by the value of one torsion: its sign, or given ranges.

    Parameters
    ----------
    topology : mdtraj.Topology or None
        With a topology the torsion comes from mdtraj (:func:`torsion_angles`); with None from
        the coordinates (B, N, 3) or (B, 3N) directly.
    atoms : sequence of 4 int
        Zero-based atoms of the torsion.
    name : str
        The torsion's name (e.g. ``"phi"``).
    bounds : sequence of (low, high) in radians, optional
        None: two states by sign, ``name<0`` → 0 (θ ≤ 0) and ``name>0`` → 1 (θ > 0). Otherwise one
        state per range, low ≤ θ < high with θ in [−π, π) (a range with low > high wraps through
        ±π); the first range that holds θ gives its label. Angles in no range get one more
        state, ``"other"``.
    names : sequence of str, optional
        State names for ``bounds`` (default ``"name[low,high)"`` in degrees).

    Returns
    -------
    StateSet
    """
    atoms = np.asarray(atoms, dtype=np.int64).reshape(-1)
    if atoms.shape != (4,):
        raise ValueError(f"a torsion needs 4 atoms, got {atoms.tolist()}")
    if bounds is None:
        if names is not None:
            raise ValueError("names go with bounds; the sign states are named '<name><0' and '<name>>0'")
        return StateSet(
            name, (f"{name}<0", f"{name}>0"), lambda x: (torsion_angles(x, atoms, topology) > 0).astype(np.int64)
        )
    ranges = [(float(lo), float(hi)) for lo, hi in bounds]
    if not ranges:
        raise ValueError("bounds must hold at least one (low, high) range")
    if names is None:
        names = [f"{name}[{math.degrees(lo):.0f},{math.degrees(hi):.0f})" for lo, hi in ranges]
    names = list(names)
    if len(names) != len(ranges):
        raise ValueError(f"{len(names)} names for {len(ranges)} ranges")
    if not _covers_circle(ranges):
        names.append("other")

    def labels(x):
        theta = torsion_angles(x, atoms, topology)
        return _range_labels(theta, ranges)

    return StateSet(name, names, labels)


def _in_range(theta, lo: float, hi: float):
    return (theta >= lo) & (theta < hi) if lo <= hi else (theta >= lo) | (theta < hi)


def _range_labels(theta: np.ndarray, ranges: list) -> np.ndarray:
    theta = np.where(theta >= math.pi, theta - 2.0 * math.pi, theta)  # π and −π are one angle
    out = np.full(theta.shape, len(ranges), dtype=np.int64)
    for k in range(len(ranges) - 1, -1, -1):  # the first range that holds θ wins
        out = np.where(_in_range(theta, *ranges[k]), k, out)
    return out


def _covers_circle(ranges: list) -> bool:
    """True when every angle lies in some range (checked at and between all range ends)."""
    edges = np.unique(np.clip([e for r in ranges for e in r] + [-math.pi, math.pi], -math.pi, math.pi))
    probes = np.concatenate([edges, (edges[:-1] + edges[1:]) / 2])
    return bool((_range_labels(probes, ranges) < len(ranges)).all())


def phi_states_of(topology, residue=None) -> StateSet:
    """The sign of one residue's backbone φ: φ < 0 → 0, φ > 0 → 1.

    For alanine dipeptide these are the standard two states (0: C7eq / β / αR, 1: αL / C7ax),
    named ``phi<0`` and ``phi>0``.

    Parameters
    ----------
    topology : mdtraj.Topology
    residue : int or str, optional
        The residue (its index in the topology, or its label such as ``"ALA2"``); needed when
        the molecule has more than one φ. With it the set is named ``phi(ALA2)``.

    Returns
    -------
    StateSet

    Raises
    ------
    ValueError
        No φ torsion, several and no ``residue``, or a residue without φ.
    """
    torsions = phi_torsions(topology)
    if not torsions:
        raise ValueError("the topology has no phi torsion (needs a C-N-CA-C backbone across residues)")
    if residue is None:
        if len(torsions) != 1:
            raise ValueError(
                f"the molecule has {len(torsions)} phi torsions ({', '.join(t[0] for t in torsions)}): "
                "pass residue=, or use backbone_states / default_states"
            )
        return torsion_states(topology, torsions[0][1], "phi")
    label = _residue_label(topology.residue(residue)) if isinstance(residue, (int, np.integer)) else str(residue)
    table = dict(torsions)
    if label not in table:
        raise ValueError(f"residue {label} has no phi torsion; residues with one: {', '.join(table)}")
    return torsion_states(topology, table[label], f"phi({label})")


def backbone_states(topology) -> list:
    """One φ-sign StateSet per residue that has a φ (names ``phi(ALA2)<0``, ``phi(ALA2)>0``).

    Parameters
    ----------
    topology : mdtraj.Topology or None

    Returns
    -------
    list of StateSet
        In residue order; empty without a topology or a backbone.
    """
    return [torsion_states(topology, atoms, f"phi({label})") for label, atoms in phi_torsions(topology)]


#: ψ range of the α_R basin (degrees, low ≤ ψ < high) among φ < 0; the rest of φ < 0 is β/PII.
ALPHA_R_PSI_DEG = (-120.0, 50.0)
#: Basin names of one residue, in label order.
BASIN_NAMES = ("beta_PII", "alpha_R", "phi>0")


def _phi_psi_quads(topology) -> dict:
    """``residue label -> (2, 4) atoms of its φ and ψ`` for the residues that have both, in order."""
    psis = dict(_backbone(topology, "psi"))
    return {label: np.stack([atoms, psis[label]]) for label, atoms in phi_torsions(topology) if label in psis}


def basin_states_of(topology, residue=None) -> StateSet:
    """One residue's Ramachandran basin from its backbone (φ, ψ): 0 β/PII, 1 α_R, 2 φ > 0.

    φ > 0 (α_L and C7ax) is state 2, as in :func:`phi_states_of`; among φ ≤ 0, ψ in
    [−120°, 50°) (:data:`ALPHA_R_PSI_DEG`) is α_R and the rest β/PII (C7eq, β, PII). The basins
    refine the φ-sign states: states 0 and 1 together are ``phi<0``.

    Parameters
    ----------
    topology : mdtraj.Topology
    residue : int or str, optional
        The residue (index or label such as ``"ALA2"``); needed when more than one residue has
        both φ and ψ. With it the names carry the label (``"alpha_R(ALA2)"``).

    Returns
    -------
    StateSet
        Named ``basin`` (``basin(ALA2)`` with ``residue``), states :data:`BASIN_NAMES`.

    Raises
    ------
    ValueError
        No residue with both φ and ψ, several and no ``residue``, or a residue without them.
    """
    quads_of = _phi_psi_quads(topology)
    both = list(quads_of)
    if not both:
        raise ValueError("no residue has both backbone phi and psi torsions (needs a capped or longer peptide)")
    if residue is None:
        if len(both) != 1:
            raise ValueError(f"{len(both)} residues have phi and psi ({', '.join(both)}): pass residue=")
        label, suffix, name = both[0], "", "basin"
    else:
        label = _residue_label(topology.residue(residue)) if isinstance(residue, (int, np.integer)) else str(residue)
        if label not in both:
            raise ValueError(f"residue {label} lacks phi or psi; residues with both: {', '.join(both)}")
        suffix, name = f"({label})", f"basin({label})"
    quads = quads_of[label]
    lo, hi = (math.radians(v) for v in ALPHA_R_PSI_DEG)

    def labels(x):
        phi, psi = torsion_angles(x, quads, topology).T
        return np.where(phi > 0, 2, np.where((psi >= lo) & (psi < hi), 1, 0)).astype(np.int64)

    return StateSet(name, [n + suffix for n in BASIN_NAMES], labels)


def basin_states(topology) -> Optional[StateSet]:
    """The Ramachandran basins of every residue with φ and ψ (:func:`basin_states_of`), jointly.

    For alanine dipeptide the three basins β/PII, α_R, φ > 0; with R residues the 3^R joint
    states of :func:`joint_states`. Per-state resampling within these keeps each basin's
    particles apart, where the φ-sign states pool β/PII and α_R.

    Parameters
    ----------
    topology : mdtraj.Topology or None

    Returns
    -------
    StateSet or None
        None without a topology or without a residue that has both φ and ψ.
    """
    if topology is None:
        return None
    labels = list(_phi_psi_quads(topology))
    if not labels:
        return None
    if len(labels) == 1:
        return basin_states_of(topology)
    return joint_states([basin_states_of(topology, label) for label in labels], name="basin")


def resampling_strata(target, strata: str = "states"):
    """The StateSet that per-state resampling works within (``resampling.strata``).

    Parameters
    ----------
    target : TargetSystem
    strata : {"states", "basins"}
        ``"states"``: ``target.states``; ``"basins"``: the Ramachandran basins of the target's
        residues (:func:`boltzgen.states.basin_states`), which refine its φ-sign states.

    Returns
    -------
    StateSet

    Raises
    ------
    ValueError
        A target without such states (no states, or no residue with φ and ψ for basins).
    """
    if strata == "basins":
        state_set = basin_states(target.topology)
        if state_set is None:
            raise ValueError(
                f"resampling.strata 'basins' needs a peptide with backbone phi and psi; {target.name} has none"
            )
        return state_set
    if strata != "states":
        raise ValueError(f"resampling.strata must be 'states' or 'basins', got {strata!r}")
    if target.states is None:
        raise ValueError(
            f"per-state resampling needs the target's states; {target.name} has none "
            "(set target.states to a boltzgen.states.StateSet)"
        )
    return target.states


def joint_states(state_sets: Sequence[StateSet], name: Optional[str] = None) -> StateSet:
    """The product of several StateSets: one state per combination of their labels.

    Label l = Σ_r l_r · Π_{s>r} K_s (the first set varies slowest, as ``itertools.product``);
    the name of a joint state joins the component names with commas.

    Parameters
    ----------
    state_sets : sequence of StateSet
    name : str, optional
        Default: the component names joined by ``×``.

    Returns
    -------
    StateSet
        With ``components`` the given sets.
    """
    sets = tuple(state_sets)
    if not sets:
        raise ValueError("joint_states needs at least one StateSet")
    sizes = [len(s) for s in sets]
    names = [",".join(combo) for combo in itertools.product(*(s.names for s in sets))]

    def labels(x):
        out = np.zeros(0, dtype=np.int64)
        for k, s in enumerate(sets):
            lab = s.assign(x)
            out = lab if k == 0 else out * sizes[k] + lab
        return out

    return StateSet(name or "×".join(s.name for s in sets), names, labels, components=sets)


def default_states(topology) -> Optional[StateSet]:
    """A system's default states: for a peptide the joint φ signs of its residues.

    With one φ (alanine dipeptide) identical to :func:`phi_states_of` (labels ``φ > 0``, names
    ``phi<0``, ``phi>0``); with R of them the 2^R joint states of :func:`backbone_states`.

    Parameters
    ----------
    topology : mdtraj.Topology or None

    Returns
    -------
    StateSet or None
        None without a topology or without a backbone φ.
    """
    per_residue = backbone_states(topology)
    if not per_residue:
        return None
    if len(per_residue) == 1:
        return phi_states_of(topology)
    return joint_states(per_residue, name="phi")
