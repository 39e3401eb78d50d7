"""Rebuild ``aldp.pdb``: Ace-Ala-Nme (alanine dipeptide), 22 atoms, standard PDB names.

The structure is built from standard internal coordinates (trans peptide bonds, L-alanine,
phi = -80 deg, psi = 75 deg: the C7eq basin), protonated by OpenMM's ``Modeller.addHydrogens``
with amber99sbildn templates, put in the atom order of the published alanine-dipeptide
Boltzmann-generator data sets (phi = atoms 4-6-8-14, psi = 6-8-14-16, zero-based) and minimised
in vacuum with amber99sbildn. Run ``python systems/build_aldp.py`` to regenerate the file.
"""

from __future__ import annotations

import os

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit

HERE = os.path.dirname(os.path.abspath(__file__))

#: (residue, atom name) in the published atom order.
ATOM_ORDER = [
    ("ACE", "H1"),
    ("ACE", "CH3"),
    ("ACE", "H2"),
    ("ACE", "H3"),
    ("ACE", "C"),
    ("ACE", "O"),
    ("ALA", "N"),
    ("ALA", "H"),
    ("ALA", "CA"),
    ("ALA", "HA"),
    ("ALA", "CB"),
    ("ALA", "HB1"),
    ("ALA", "HB2"),
    ("ALA", "HB3"),
    ("ALA", "C"),
    ("ALA", "O"),
    ("NME", "N"),
    ("NME", "H"),
    ("NME", "C"),
    ("NME", "H1"),
    ("NME", "H2"),
    ("NME", "H3"),
]


def place(a, b, c, bond, angle, torsion):
    """Position of atom d with |cd| = bond, angle bcd and torsion abcd (nm, degrees)."""
    angle, torsion = np.radians(angle), np.radians(torsion)
    bc = (c - b) / np.linalg.norm(c - b)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n)
    m = np.cross(n, bc)
    d2 = np.array(
        [-bond * np.cos(angle), bond * np.sin(angle) * np.cos(torsion), bond * np.sin(angle) * np.sin(torsion)]
    )
    return c + d2[0] * bc + d2[1] * m + d2[2] * n


def heavy_atoms(phi=-80.0, psi=75.0):
    ch3 = np.zeros(3)
    c0 = np.array([0.152, 0.0, 0.0])
    n1 = c0 + 0.133 * np.array([-np.cos(np.radians(116.0)), np.sin(np.radians(116.0)), 0.0])
    ca = place(ch3, c0, n1, 0.146, 121.7, 180.0)
    c1 = place(c0, n1, ca, 0.152, 111.0, phi)
    n2 = place(n1, ca, c1, 0.133, 116.2, psi)
    c2 = place(ca, c1, n2, 0.146, 121.7, 180.0)
    o0 = place(ca, n1, c0, 0.123, 123.0, 0.0)
    o1 = place(c2, n2, c1, 0.123, 123.0, 0.0)
    cb = place(c1, n1, ca, 0.153, 110.5, -122.5)
    if np.dot(np.cross(n1 - ca, c1 - ca), cb - ca) < 0:  # keep L-alanine
        cb = place(c1, n1, ca, 0.153, 110.5, 122.5)
    return {
        ("ACE", "CH3"): ch3,
        ("ACE", "C"): c0,
        ("ACE", "O"): o0,
        ("ALA", "N"): n1,
        ("ALA", "CA"): ca,
        ("ALA", "CB"): cb,
        ("ALA", "C"): c1,
        ("ALA", "O"): o1,
        ("NME", "N"): n2,
        ("NME", "C"): c2,
    }


def build():
    top = app.Topology()
    chain = top.addChain()
    coords = heavy_atoms()
    positions = []
    for resname in ("ACE", "ALA", "NME"):
        res = top.addResidue(resname, chain)
        for (rn, name), xyz in coords.items():
            if rn == resname:
                element = app.Element.getBySymbol(name[0])
                top.addAtom(name, element, res)
                positions.append(openmm.Vec3(*xyz))
    atoms = list(top.atoms())
    by_name = {(a.residue.name, a.name): a for a in atoms}
    for r1, a1, r2, a2 in [
        ("ACE", "CH3", "ACE", "C"),
        ("ACE", "C", "ACE", "O"),
        ("ACE", "C", "ALA", "N"),
        ("ALA", "N", "ALA", "CA"),
        ("ALA", "CA", "ALA", "CB"),
        ("ALA", "CA", "ALA", "C"),
        ("ALA", "C", "ALA", "O"),
        ("ALA", "C", "NME", "N"),
        ("NME", "N", "NME", "C"),
    ]:
        top.addBond(by_name[(r1, a1)], by_name[(r2, a2)])
    forcefield = app.ForceField("amber99sbildn.xml")
    modeller = app.Modeller(top, positions * unit.nanometer)
    modeller.addHydrogens(forcefield)
    # Reorder to the published atom order.
    old = {(a.residue.name, a.name): a for a in modeller.topology.atoms()}
    missing = [k for k in ATOM_ORDER if k not in old]
    if missing or len(old) != len(ATOM_ORDER):
        raise RuntimeError(f"unexpected protonation: missing {missing}, got {sorted(old)}")
    xyz_old = modeller.positions.value_in_unit(unit.nanometer)
    new_top = app.Topology()
    chain = new_top.addChain()
    new_atoms, new_pos, residues = {}, [], {}
    for rn, name in ATOM_ORDER:
        if rn not in residues:
            residues[rn] = new_top.addResidue(rn, chain)
        atom = old[(rn, name)]
        new_atoms[atom.index] = new_top.addAtom(name, atom.element, residues[rn])
        new_pos.append(xyz_old[atom.index])
    for bond in modeller.topology.bonds():
        new_top.addBond(new_atoms[bond[0].index], new_atoms[bond[1].index])
    system = forcefield.createSystem(new_top, nonbondedMethod=app.NoCutoff, constraints=None)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(new_pos * unit.nanometer)
    openmm.LocalEnergyMinimizer.minimize(context, 1e-3)
    state = context.getState(getPositions=True, getEnergy=True)
    path = os.path.join(HERE, "aldp.pdb")
    with open(path, "w") as handle:
        app.PDBFile.writeFile(new_top, state.getPositions(), handle, keepIds=False)
    print(f"wrote {path}: energy {state.getPotentialEnergy()}")


if __name__ == "__main__":
    build()
