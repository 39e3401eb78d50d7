"""Capped peptides built from their sequence, checked, and made into targets.

:func:`build_capped_peptide` places the backbone of ACE-(residues)-NME from standard bond lengths
and angles (trans peptide bonds, one (φ, ψ) for every residue, Cβ on the L side), lets PDBFixer
add the rest of the side-chain heavy atoms of any of the 20 standard amino acids from its
templates (fitted to the residue's backbone and Cβ), lets OpenMM's ``Modeller.addHydrogens``
protonate it at pH 7 with the force field's templates, minimises it, and refuses the result
unless :func:`check_peptide` finds every Cα L, every peptide bond trans and no clash. :func:`from_sequence` turns a sequence, a force field
and a solvent (vacuum or one of OpenMM's implicit models, :data:`SOLVENTS`) into a target.

Conventions: lengths in nm, angles in degrees at this boundary (see docs/design.md).
"""

from __future__ import annotations

import random
from typing import Optional, Sequence, Union

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit

__all__ = [
    "BUILDABLE",
    "SOLVENTS",
    "THREE_LETTER",
    "parse_sequence",
    "build_capped_peptide",
    "check_peptide",
    "solvent_files",
    "from_sequence",
    "write_pdb",
]

#: One-letter codes of the 20 standard amino acids.
THREE_LETTER = {
    "A": "ALA",
    "R": "ARG",
    "N": "ASN",
    "D": "ASP",
    "C": "CYS",
    "Q": "GLN",
    "E": "GLU",
    "G": "GLY",
    "H": "HIS",
    "I": "ILE",
    "L": "LEU",
    "K": "LYS",
    "M": "MET",
    "F": "PHE",
    "P": "PRO",
    "S": "SER",
    "T": "THR",
    "W": "TRP",
    "Y": "TYR",
    "V": "VAL",
}
#: Residues whose side chains this builder places (all 20 standard amino acids).
BUILDABLE = tuple(sorted(THREE_LETTER.values()))

#: Solvent models by name: the OpenMM force-field files added to the peptide's force field.
#: ``obc-legacy`` is the ``amber99_obc.xml`` file of the published alanine-dipeptide and
#: tetrapeptide benchmarks; the others are OpenMM's ``implicit/*.xml`` models.
SOLVENTS = {
    "vacuum": (),
    "obc1": ("implicit/obc1.xml",),
    "obc2": ("implicit/obc2.xml",),
    "gbn": ("implicit/gbn.xml",),
    "gbn2": ("implicit/gbn2.xml",),
    "hct": ("implicit/hct.xml",),
    "obc-legacy": ("amber99_obc.xml",),
}


def parse_sequence(sequence: Union[str, Sequence[str]]) -> list[str]:
    """Residue names of a sequence given in one-letter ("AAA") or three-letter ("ALA-ALA") codes.

    Parameters
    ----------
    sequence : str or sequence of str
        One-letter codes ("AGA"), three-letter codes separated by "-" or spaces, or a list of
        three-letter names. Case is ignored; a string that is exactly one three-letter name
        ("ALA") is read as that residue.

    Returns
    -------
    list of str
        Three-letter residue names (upper case), caps not included.

    Raises
    ------
    ValueError
        For an empty sequence or an unknown residue code (the message names it).
    """
    if isinstance(sequence, str):
        text = sequence.strip().upper()
        parts = (
            text.replace("-", " ").split()
            if ("-" in text or " " in text or len(text) == 3 and text in THREE_LETTER.values())
            else list(text)
        )
    else:
        parts = [str(p).strip().upper() for p in sequence]
    if not parts:
        raise ValueError("the peptide sequence is empty")
    names = []
    for i, code in enumerate(parts):
        name = THREE_LETTER.get(code, code)
        if name not in THREE_LETTER.values():
            raise ValueError(
                f"unknown residue {code!r} at position {i + 1} of the sequence "
                f"(one-letter codes {''.join(THREE_LETTER)} or their three-letter names)"
            )
        names.append(name)
    return names


def _place(a, b, c, bond, angle, torsion):
    """Position of d with |cd| = bond (nm), angle bcd and torsion abcd (degrees)."""
    angle, torsion = np.radians(angle), np.radians(torsion)
    bc = (c - b) / np.linalg.norm(c - b)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n)
    m = np.cross(n, bc)
    local = np.array(
        [-bond * np.cos(angle), bond * np.sin(angle) * np.cos(torsion), bond * np.sin(angle) * np.sin(torsion)]
    )
    return c + local[0] * bc + local[1] * m + local[2] * n


def _heavy_atoms(residues: list[str], phi: float, psi: float) -> list[tuple[int, str, np.ndarray]]:
    """(residue index, atom name, xyz nm) of the backbone heavy atoms, CB and caps; residue 0 is
    ACE, the last NME. The rest of the side chains is left to :func:`_add_side_chains`."""
    out = [(0, "CH3", np.zeros(3)), (0, "C", np.array([0.152, 0.0, 0.0]))]
    backbone = [out[0][2], out[1][2]]
    carbonyls = [(0, out[1][2])]  # (residue, C position) whose O is placed once the next N and CA exist
    angle = np.radians(116.0)
    for k in range(1, len(residues) + 2):  # the residues, then NME
        if k == 1:
            n_pos = backbone[1] + 0.133 * np.array([-np.cos(angle), np.sin(angle), 0.0])
        else:
            n_pos = _place(backbone[-3], backbone[-2], backbone[-1], 0.133, 116.2, psi)
        ca_pos = _place(backbone[-2], backbone[-1], n_pos, 0.146, 121.7, 180.0)
        rk, c_prev = carbonyls[-1]
        out.append((rk, "O", _place(ca_pos, n_pos, c_prev, 0.123, 123.0, 0.0)))
        if k == len(residues) + 1:  # NME: N and its methyl carbon
            out += [(k, "N", n_pos), (k, "C", ca_pos)]
            break
        phi_k = -65.0 if residues[k - 1] == "PRO" else phi  # the ring holds proline's φ near −65°
        c_pos = _place(backbone[-1], n_pos, ca_pos, 0.152, 111.0, phi_k)
        out += [(k, "N", n_pos), (k, "CA", ca_pos), (k, "C", c_pos)]
        if residues[k - 1] != "GLY":  # CB fixes the L-form; PDBFixer's template fit follows it
            cb = _place(c_pos, n_pos, ca_pos, 0.153, 110.5, -122.5)
            if np.dot(np.cross(n_pos - ca_pos, c_pos - ca_pos), cb - ca_pos) < 0:
                cb = _place(c_pos, n_pos, ca_pos, 0.153, 110.5, 122.5)
            out.append((k, "CB", cb))
        backbone += [n_pos, ca_pos, c_pos]
        carbonyls.append((k, c_pos))
    return out


def _backbone_topology(residues: list[str], phi: float, psi: float):
    """OpenMM topology and positions (nm) of the caps and the backbone heavy atoms N, CA, C, O, CB."""
    top = app.Topology()
    chain = top.addChain()
    res_objs = [top.addResidue(name, chain) for name in ["ACE", *residues, "NME"]]
    positions = []
    for rk, name, xyz in sorted(_heavy_atoms(residues, phi, psi), key=lambda item: item[0]):
        top.addAtom(name, app.Element.getBySymbol(name[0]), res_objs[rk])
        positions.append(xyz)
    return top, np.asarray(positions)


def _add_side_chains(top, positions):
    """Side-chain heavy atoms from PDBFixer's residue templates, superposed on each backbone."""
    import io

    from pdbfixer import PDBFixer

    buffer = io.StringIO()
    app.PDBFile.writeFile(top, positions * 10.0 * unit.angstrom, buffer)
    fixer = PDBFixer(pdbfile=io.StringIO(buffer.getvalue()))
    fixer.missingResidues = {}
    fixer.findMissingAtoms()
    fixer.missingTerminals = {}
    fixer.addMissingAtoms(seed=0)
    return fixer.topology, np.asarray(fixer.positions.value_in_unit(unit.nanometer), dtype=np.float64)


def build_capped_peptide(
    sequence,
    forcefield: Sequence[str] = ("amber14-all.xml",),
    *,
    phi: float = -80.0,
    psi: float = 75.0,
    minimise: bool = True,
):
    """ACE-(sequence)-NME with hydrogens, minimised in vacuum and checked: (topology, positions nm).

    Parameters
    ----------
    sequence : str or sequence of str
        Residues between the caps (:func:`parse_sequence`), any of the 20 standard amino acids.
    forcefield : sequence of str
        OpenMM force-field XML files whose templates protonate the peptide (pH 7) and minimise it.
    phi, psi : float
        Backbone torsions of every residue in degrees (default: the C7eq basin).
    minimise : bool
        Minimise the structure with ``forcefield`` (vacuum, no cutoff).

    Returns
    -------
    topology : openmm.app.Topology
    positions : ndarray, shape (N, 3), float64, nm

    Raises
    ------
    ValueError
        For an empty sequence, an unknown residue, or a built structure that fails
        :func:`check_peptide` (a D-centre, a cis bond, a clash).
    """
    residues = parse_sequence(sequence)
    top, positions = _add_side_chains(*_backbone_topology(residues, phi, psi))
    ff = app.ForceField(*forcefield)
    modeller = app.Modeller(top, positions * unit.nanometer)
    # Modeller places hydrogens with Python's global random module and then minimises them on the
    # fastest platform, whose multi-threaded sums differ from run to run: seeded here (the caller's
    # state restored) and minimised on Reference, so that one sequence always builds the same
    # structure, which resuming an MD checkpoint and comparing runs need.
    state = random.getstate()
    try:
        random.seed(0)
        modeller.addHydrogens(ff, pH=7.0, platform=openmm.Platform.getPlatformByName("Reference"))
    finally:
        random.setstate(state)
    xyz = np.asarray(modeller.positions.value_in_unit(unit.nanometer), dtype=np.float64)
    if minimise:
        system = ff.createSystem(modeller.topology, nonbondedMethod=app.NoCutoff, constraints=None)
        context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
        context.setPositions(xyz * unit.nanometer)
        openmm.LocalEnergyMinimizer.minimize(context, 1e-3)
        xyz = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    xyz = np.asarray(xyz, dtype=np.float64)
    problems = check_peptide(modeller.topology, xyz[None])
    bad = {k: v for k, v in problems.items() if k != "frames" and int(np.sum(v)) > 0}
    if bad:
        raise ValueError(
            f"the structure built for {'-'.join(residues)} fails its checks ({bad}); "
            "give a structure of your own with --pdb"
        )
    return modeller.topology, xyz


#: Covalent bonds of a peptide (C–H 0.109, N–H 0.101, C–S 0.182 nm) lie inside this range (nm);
#: a bond outside it is broken, the sign of a generated molecule with misplaced atoms.
BOND_LENGTH_RANGE = (0.07, 0.22)


def check_peptide(topology, x, clash_distance: float = 0.1) -> dict:
    """Count what no L-peptide of the force field should show: D-centres, cis bonds, clashes,
    broken bonds.

    Parameters
    ----------
    topology : mdtraj.Topology or openmm.app.Topology
    x : array, shape (B, N, 3), nm
    clash_distance : float
        Atoms more than three bonds apart closer than this (nm) clash.

    Returns
    -------
    dict
        ``d_centres`` (B,) number of Cα in the D-form; ``cis_bonds`` (B,) peptide bonds with
        |ω| < 90°; ``clashes`` (B,) atom pairs closer than ``clash_distance``;
        ``broken_bonds`` (B,) bonds of the topology with a length outside
        :data:`BOND_LENGTH_RANGE`; ``frames`` B.
    """
    from ..states import as_mdtraj_topology, chiral_centres, peptide_bonds, torsion_angles

    top = as_mdtraj_topology(topology)
    x = np.asarray(x, dtype=np.float64).reshape(-1, top.n_atoms, 3)
    c = chiral_centres(top)
    n, ca, cc, cb = (x[:, c[:, i]] for i in range(4))  # (B, K, 3); signed volume > 0 is L
    d_count = ((np.cross(n - ca, cc - ca) * (cb - ca)).sum(-1) < 0).sum(-1)
    bonds = peptide_bonds(top)
    omega = torsion_angles(x, bonds) if len(bonds) else np.zeros((len(x), 0))
    cis = (np.abs(omega) < np.pi / 2).sum(-1)
    close = _close_pairs(top)
    clashes = np.zeros(len(x), dtype=np.int64)
    for start in range(0, len(x), 256):  # frames in chunks: pairs × frames distances stay small
        xs = x[start : start + 256]
        d = np.linalg.norm(xs[:, close[:, 0]] - xs[:, close[:, 1]], axis=-1)
        clashes[start : start + 256] = (d < clash_distance).sum(-1)
    pairs = np.array([[a.index, b.index] for a, b in top.bonds], dtype=np.int64).reshape(-1, 2)
    length = np.linalg.norm(x[:, pairs[:, 0]] - x[:, pairs[:, 1]], axis=-1)
    low, high = BOND_LENGTH_RANGE
    return {
        "d_centres": d_count.astype(np.int64),
        "cis_bonds": np.asarray(cis, dtype=np.int64),
        "clashes": clashes,
        "broken_bonds": ((length < low) | (length > high)).sum(-1).astype(np.int64),
        "frames": len(x),
    }


def _close_pairs(top) -> np.ndarray:
    """Atom pairs more than three bonds apart (the pairs a force field treats as non-bonded)."""
    from ..states import bond_separation

    separation = bond_separation(top, 3)
    i, j = np.triu_indices(top.n_atoms, k=1)
    far = separation[i, j] == 0
    return np.stack([i[far], j[far]], axis=1).astype(np.int64).reshape(-1, 2)


def solvent_files(solvent: str) -> tuple:
    """The force-field files of a solvent model (:data:`SOLVENTS`).

    Parameters
    ----------
    solvent : str
        A name of :data:`SOLVENTS` (case ignored).

    Returns
    -------
    tuple of str

    Raises
    ------
    ValueError
        For an unknown solvent; the message lists the known ones.
    """
    key = str(solvent).strip().lower()
    if key not in SOLVENTS:
        raise ValueError(f"unknown solvent {solvent!r}; choose one of {', '.join(SOLVENTS)}")
    return SOLVENTS[key]


def from_sequence(
    sequence,
    forcefield: Sequence[str] = ("amber14-all.xml",),
    solvent: str = "vacuum",
    temperature: float = 300.0,
    *,
    name: Optional[str] = None,
    platform: str = "auto",
    n_workers: Optional[int] = None,
):
    """Target of a capped peptide named by its sequence (NoCutoff, no constraints).

    The structure is :func:`build_capped_peptide` (deterministic: the same sequence and force
    field give the same start positions and atom order everywhere).

    Parameters
    ----------
    sequence : str or sequence of str
        Residues between the ACE and NME caps (:func:`parse_sequence`).
    forcefield : sequence of str
        Protein force-field XML files (e.g. ``["amber14-all.xml"]``).
    solvent : str
        ``"vacuum"`` or an implicit model of :data:`SOLVENTS`.
    temperature : float
        Temperature in K.
    name : str, optional
        System name in metadata (default ``ACE-ALA-ALA-NME``-style from the sequence).
    platform : str
        OpenMM platform for energies.
    n_workers : int, optional
        Worker processes of the energy pool.

    Returns
    -------
    OpenMMTarget
        ``description`` records ``sequence``, ``forcefield`` and ``solvent``: enough to rebuild it.

    Raises
    ------
    ValueError
        Empty sequence, unknown residue, unknown solvent or a force field that cannot be read.
    """
    from .openmm_target import OpenMMTarget, load_forcefield

    residues = parse_sequence(sequence)
    protein = [forcefield] if isinstance(forcefield, str) else list(forcefield)
    files = [*protein, *solvent_files(solvent)]
    ff = load_forcefield(files)
    topology, positions = build_capped_peptide(residues, protein)
    system = ff.createSystem(topology, nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False)
    description = {
        "sequence": "-".join(residues),
        "forcefield": protein,
        "solvent": str(solvent).strip().lower(),
        "nonbonded_method": "NoCutoff",
        "constraints": "none",
    }
    return OpenMMTarget(
        system,
        topology,
        positions,
        temperature,
        name=name or "-".join(["ACE", *residues, "NME"]),
        platform=platform,
        n_workers=n_workers,
        description=description,
    )


def write_pdb(path: str, topology, positions) -> None:
    """Write a structure to a PDB file (atomically).

    Parameters
    ----------
    path : str
        Output ``.pdb``.
    topology : openmm.app.Topology
    positions : array, shape (N, 3), nm
    """
    from ..io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        app.PDBFile.writeFile(topology, np.asarray(positions) * 10.0 * unit.angstrom, handle, keepIds=False)
