"""Capped peptides built from their sequence: standard internal coordinates, OpenMM hydrogens.

:func:`build_capped_peptide` places the heavy atoms of ACE-(residues)-NME from standard bond
lengths and angles (trans peptide bonds, L-amino acids, one (φ, ψ) for every residue), lets
OpenMM's ``Modeller.addHydrogens`` add the hydrogens with the force field's templates, and
minimises the structure with that force field in vacuum. The side chains built today are those
of alanine and glycine; other residues raise a clear error.

Conventions: lengths in nm, angles in degrees at this boundary (see docs/design.md).
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit

__all__ = ["BUILDABLE", "THREE_LETTER", "parse_sequence", "build_capped_peptide", "write_pdb"]

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
#: Residues whose side chains this builder places.
BUILDABLE = ("ALA", "GLY")


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
    """(residue index, atom name, xyz nm) of the heavy atoms; residue 0 is ACE, the last NME."""
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
        c_pos = _place(backbone[-1], n_pos, ca_pos, 0.152, 111.0, phi)
        out += [(k, "N", n_pos), (k, "CA", ca_pos), (k, "C", c_pos)]
        if residues[k - 1] == "ALA":
            cb = _place(c_pos, n_pos, ca_pos, 0.153, 110.5, -122.5)
            if np.dot(np.cross(n_pos - ca_pos, c_pos - ca_pos), cb - ca_pos) < 0:  # keep the L-form
                cb = _place(c_pos, n_pos, ca_pos, 0.153, 110.5, 122.5)
            out.append((k, "CB", cb))
        backbone += [n_pos, ca_pos, c_pos]
        carbonyls.append((k, c_pos))
    return out


def build_capped_peptide(
    sequence,
    forcefield: Sequence[str] = ("amber14-all.xml",),
    *,
    phi: float = -80.0,
    psi: float = 75.0,
    minimise: bool = True,
):
    """ACE-(sequence)-NME with hydrogens, minimised in vacuum: (OpenMM topology, positions in nm).

    Parameters
    ----------
    sequence : str or sequence of str
        Residues between the caps (:func:`parse_sequence`); alanine and glycine today.
    forcefield : sequence of str
        OpenMM force-field XML files whose templates protonate the peptide and minimise it.
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
        For an empty sequence, an unknown residue, or one whose side chain is not built yet.
    """
    residues = parse_sequence(sequence)
    missing = sorted(set(residues) - set(BUILDABLE))
    if missing:
        raise ValueError(
            f"the builder places side chains of {', '.join(BUILDABLE)} only; "
            f"the sequence has {', '.join(missing)}: give a PDB of your own with --pdb"
        )
    names = ["ACE", *residues, "NME"]
    top = app.Topology()
    chain = top.addChain()
    res_objs = [top.addResidue(name, chain) for name in names]
    atoms, positions = {}, []
    for rk, name, xyz in sorted(_heavy_atoms(residues, phi, psi), key=lambda item: item[0]):
        atoms[(rk, name)] = top.addAtom(name, app.Element.getBySymbol(name[0]), res_objs[rk])
        positions.append(openmm.Vec3(*xyz))
    bonds = [((0, "CH3"), (0, "C")), ((0, "C"), (0, "O")), ((0, "C"), (1, "N"))]
    for k in range(1, len(residues) + 1):
        bonds += [((k, "N"), (k, "CA")), ((k, "CA"), (k, "C")), ((k, "C"), (k, "O")), ((k, "C"), (k + 1, "N"))]
        if (k, "CB") in atoms:
            bonds.append(((k, "CA"), (k, "CB")))
    bonds.append(((len(residues) + 1, "N"), (len(residues) + 1, "C")))
    for a, b in bonds:
        top.addBond(atoms[a], atoms[b])
    ff = app.ForceField(*forcefield)
    modeller = app.Modeller(top, positions * unit.nanometer)
    modeller.addHydrogens(ff)
    xyz = np.asarray(modeller.positions.value_in_unit(unit.nanometer), dtype=np.float64)
    if minimise:
        system = ff.createSystem(modeller.topology, nonbondedMethod=app.NoCutoff, constraints=None)
        context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
        context.setPositions(xyz * unit.nanometer)
        openmm.LocalEnergyMinimizer.minimize(context, 1e-3)
        xyz = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    return modeller.topology, np.asarray(xyz, dtype=np.float64)


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
