"""The force field as a fixed, diffused prior energy of the model: bonded terms, and optionally
the nonbonded pairs.

A network has to resolve bond lengths to about a hundredth of the data's length scale to give the
energy of the force field at low noise; the bonded terms are known in closed form, so the model
carries them instead (``docs/theory.md``, "A force-field prior"):

    E_prior(x, t) = f(t) [ Σ_bonds ½ k_b(t) (r − α_t r₀)² + Σ_angles ½ k_θ(t) (θ − θ₀)²
                           + Σ_torsions k_φ (1 + cos(n φ − φ₀))
                           + Σ_pairs q_ij / ρ + 4 ε_ij ((s_ij / ρ)¹² − (s_ij / ρ)⁶) ],

with x in model units (nm / L) and every k reduced (kT per unit²). k_b(t) = k_b / (α_t² + 2 k_b σ_t²)
and k_θ(t) = k_θ / (1 + k_θ G σ_t²/α_t²), G = Σ_atoms ‖∂θ/∂x‖² at the equilibrium geometry, are the
stiffnesses of a harmonic coordinate whose atoms are each noised by σ_t: the exact diffusion
marginal of one harmonic bond (to first order in σ/r₀ for angles). At t → 0 the prior is the
bonded energy itself. f(t) = 1 / (1 + (σ_t / (α_t w))²), w = ``fade_width`` model units, fades it
out where the noise is larger than a bond's length change, so at t = 1 the model is its Gaussian
prior term again. The nonbonded pairs (Coulomb and Lennard-Jones of a ``NonbondedForce`` without
cutoff, its exceptions included) are evaluated on the signal scale and softened,
ρ² = (r/α_t)² + 2 (σ_t/α_t)² + ((1 − f(t)) s_ij)²: the noise smears a pair distance by √2 σ_t/α_t,
and the last term caps each pair's repulsion at O(ε) once the prior fades, so the energy stays
bounded when noisy atoms overlap; at t → 0 it is the force field's own. Torsions enter only with
phases 0 or π (the others are not invariant under reflection, and the model's energy must be).
With ``nonbonded``, an OpenMM ``GBSAOBCForce`` (OBC implicit solvent, its surface-area term
included), or the ``CustomGBForce`` of OpenMM's ``implicit/obc1.xml`` or ``obc2.xml``, joins the
pairs: its generalised-Born energy, Born radii and all, on the same smeared distances, so that at
t → 0 the prior is the whole implicit-solvent energy as well.
A Lennard-Jones cluster's prior (:meth:`ForceFieldPrior.lennard_jones`) is its pairs plus the
harmonic restraint to the centre of geometry, ½ k Σ‖x_i − x̄‖², whose stiffness diffuses as that of
one noised coordinate, k(t) = k / (α_t² + k σ_t²) (the noise is mean-free).

With ``gates="learned"`` each term class (:data:`TERM_CLASSES`) fades by a gate of its own,
g_c(t) = 1 / (1 + (σ_t / (α_t w_c))^p_c), whose width and steepness are trained with the model
(starting from f(t)); the Gaussian term, the network's scale and the pairs' softening keep f(t).

All terms depend on distances, angles and cos of dihedrals, so the prior is E(3)-invariant.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from .features import dihedral

__all__ = [
    "GATES",
    "OBC1",
    "OBC2",
    "TERM_CLASSES",
    "ForceFieldPrior",
    "custom_obc_parameters",
    "obc_energy",
    "prior_for_target",
    "prior_from_config",
]

ONE_4PI_EPS0 = 138.935456  # kJ mol⁻¹ nm e⁻², as OpenMM
#: OBC's dielectric offset (nm), ρ_i = r_i − offset; OpenMM's constant in every OBC model.
OBC_OFFSET = 0.009

#: The prior's term classes, each with its own gate when the gates are learned.
TERM_CLASSES = ("bond_h", "bond", "angle", "torsion", "coulomb", "lj", "gb", "centroid")
#: How the terms fade with the noise: one fixed fade f(t), or a learned one per term class.
GATES = ("fixed", "learned")
#: (a, b, c) of the Born radii's tanh(a Ψ − b Ψ² + c Ψ³): OBC-II (``GBSAOBCForce``, ``implicit/obc2.xml``).
OBC2 = (1.0, 0.8, 4.85)
#: The same for OBC-I (``implicit/obc1.xml``, Amber's igb=2).
OBC1 = (0.8, 0.0, 2.909125)


def _angle_g(r1: float, r2: float, theta0: float) -> float:
    """Σ over the three atoms of ‖∂θ/∂x‖² for bond lengths r1, r2 and angle θ0."""
    return 2.0 / r1**2 + 2.0 / r2**2 - 2.0 * math.cos(theta0) / (r1 * r2)


class ForceFieldPrior(nn.Module):
    """Diffused harmonic bonds and angles, periodic torsions and nonbonded pairs, in model units.

    Parameters
    ----------
    bonds : list of [i, j, r0, k]
        Atom indices, equilibrium length (model units) and reduced stiffness (kT / unit²).
    angles : list of [i, j, k, theta0, k_theta]
        Atom indices (j the centre), equilibrium angle (rad), reduced stiffness (kT / rad²).
    torsions : list of [i, j, k, l, n, phase, k_phi]
        Periodicity, phase (0 or π) and reduced barrier (kT).
    fade_width : float
        w of the fade f(t) (model units of noise per unit of signal).
    pairs : list of [i, j, qq, s, eps], optional
        Nonbonded pairs: reduced Coulomb product ``qq`` (kT · model unit, the energy is qq / r),
        Lennard-Jones radius ``s`` (model units) and depth ``eps`` (kT).
    replaces_gaussian : bool
        The model fades its Gaussian reference term out as the prior fades in (by 1 − f(t)), so
        that at t → 0 its energy is the prior plus the network, with no ‖x‖² term left for the
        network to cancel. False (the old form) keeps the Gaussian term at every t.
    centroid_k : float
        Reduced stiffness (kT / unit²) of a harmonic restraint ½ k Σ_i ‖x_i − x̄‖² of all atoms to
        their centre of geometry (the Lennard-Jones clusters' oscillator term; 0: none).
    gb : dict, optional
        An OBC generalised-Born term (:func:`obc_energy`): ``charges`` (e), ``radii`` (nm),
        ``scales``, ``solute_dielectric``, ``solvent_dielectric``, ``surface_area_energy``
        (kJ/mol/nm²), ``length_scale`` (nm per model unit) and ``kT`` (kJ/mol).
    gates : {"fixed", "learned"}
        ``fixed``: every term is weighted by the one fade f(t). ``learned``: each term class of
        :data:`TERM_CLASSES` by its own g_c(t) = 1 / (1 + (σ_t / (α_t w_c))^p_c), with w_c and
        p_c trainable (initialised to ``fade_width`` and 2, so it starts as f(t)). The separately
        diffused terms are exact for one isolated term and overstate the curvature where terms
        share atoms; how much, and so how fast each class should hand over to the network, is
        learned. The Gaussian term, the network's scale and the pairs' softening keep f(t).
    hydrogen : list of bool, optional
        Per bond, whether it involves a hydrogen (class ``bond_h``; default: none does).
    """

    def __init__(
        self,
        bonds,
        angles,
        torsions,
        fade_width: float = 0.1,
        pairs=(),
        replaces_gaussian: bool = False,
        centroid_k: float = 0.0,
        gb: Optional[dict] = None,
        gates: str = "fixed",
        hydrogen=None,
    ):
        super().__init__()
        if gates not in GATES:
            raise ValueError(f"gates must be one of {GATES}, got {gates!r}")
        self.fade_width = float(fade_width)
        self.gates = gates
        if gates == "learned":
            n = len(TERM_CLASSES)
            self.gate_log_width = nn.Parameter(torch.full((n,), math.log(self.fade_width), dtype=torch.float64))
            self.gate_log_slope = nn.Parameter(torch.full((n,), math.log(2.0), dtype=torch.float64))
        self.centroid_k = float(centroid_k)
        self.gb = None if not gb else dict(gb)
        if self.gb:
            for key in ("charges", "radii", "scales"):
                self.register_buffer(f"gb_{key}", torch.tensor(self.gb[key], dtype=torch.float64))
        self.replaces_gaussian = bool(replaces_gaussian)
        bonds, angles, torsions, pairs = list(bonds), list(angles), list(torsions), list(pairs)
        self.register_buffer("pair_idx", torch.tensor([p[:2] for p in pairs], dtype=torch.long).reshape(-1, 2))
        self.register_buffer("pair_par", torch.tensor([p[2:] for p in pairs], dtype=torch.float64).reshape(-1, 3))
        self._pairs = pairs
        self.register_buffer("bond_idx", torch.tensor([b[:2] for b in bonds], dtype=torch.long).reshape(-1, 2))
        self.register_buffer("bond_par", torch.tensor([b[2:] for b in bonds], dtype=torch.float64).reshape(-1, 2))
        hydrogen = [False] * len(bonds) if hydrogen is None else [bool(h) for h in hydrogen]
        if len(hydrogen) != len(bonds):
            raise ValueError(f"hydrogen needs one flag per bond ({len(bonds)}), got {len(hydrogen)}")
        self._hydrogen = hydrogen
        self.register_buffer("bond_h", torch.tensor(hydrogen, dtype=torch.bool), persistent=False)  # from config
        self.register_buffer("angle_idx", torch.tensor([a[:3] for a in angles], dtype=torch.long).reshape(-1, 3))
        self.register_buffer("angle_par", torch.tensor([a[3:] for a in angles], dtype=torch.float64).reshape(-1, 2))
        self.register_buffer("tors_idx", torch.tensor([d[:4] for d in torsions], dtype=torch.long).reshape(-1, 4))
        self.register_buffer("tors_par", torch.tensor([d[4:] for d in torsions], dtype=torch.float64).reshape(-1, 3))
        lengths = {(min(b[0], b[1]), max(b[0], b[1])): float(b[2]) for b in bonds}
        g = []
        for i, j, k, theta0, _ in angles:
            r1 = lengths.get((min(i, j), max(i, j)), 1.0)
            r2 = lengths.get((min(j, k), max(j, k)), 1.0)
            g.append(_angle_g(r1, r2, float(theta0)))
        self.register_buffer("angle_g", torch.tensor(g, dtype=torch.float64))
        self._bonds, self._angles, self._torsions = bonds, angles, torsions

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_openmm(
        cls, system, length_scale: float, kT: float, fade_width="auto", nonbonded: bool = False, gates: str = "fixed"
    ) -> "ForceFieldPrior":
        """The bonded (and nonbonded) terms of an OpenMM ``System`` in model units.

        Parameters
        ----------
        system : openmm.System
            With ``HarmonicBondForce``, ``HarmonicAngleForce`` and ``PeriodicTorsionForce`` terms
            (any others are left to the network).
        length_scale : float
            L in nm of the model coordinates y = x / L.
        kT : float
            kJ/mol at the target's temperature.
        fade_width : float or "auto"
            As in the class; ``auto`` takes the thermal width 1/√k of the stiffest bond (model
            units), the noise level beyond which the separately diffused terms, which share atoms,
            add up to more curvature than a diffused density can have (at most 1/σ_t²).
        nonbonded : bool
            Also carry the pairs of a ``NonbondedForce`` (which must have no cutoff: vacuum or
            implicit solvent) and a ``GBSAOBCForce`` if there is one (other solvation forces are
            left to the network).
        gates : {"fixed", "learned"}
            As in the class.

        Returns
        -------
        ForceFieldPrior

        Raises
        ------
        ValueError
            For ``nonbonded`` with a cutoff, a periodic box, or no ``NonbondedForce``.
        """
        import openmm

        L, bonds, angles, torsions = float(length_scale), [], [], []
        for force in system.getForces():
            if isinstance(force, openmm.HarmonicBondForce):
                for n in range(force.getNumBonds()):
                    i, j, r0, k = force.getBondParameters(n)
                    r0, k = r0.value_in_unit(r0.unit), k.value_in_unit(k.unit)  # nm, kJ/mol/nm²
                    if k > 0:
                        bonds.append([int(i), int(j), r0 / L, k * L**2 / kT])
            elif isinstance(force, openmm.HarmonicAngleForce):
                for n in range(force.getNumAngles()):
                    i, j, k, theta0, k_theta = force.getAngleParameters(n)
                    theta0, k_theta = theta0.value_in_unit(theta0.unit), k_theta.value_in_unit(k_theta.unit)
                    if k_theta > 0:
                        angles.append([int(i), int(j), int(k), theta0, k_theta / kT])
            elif isinstance(force, openmm.PeriodicTorsionForce):
                for n in range(force.getNumTorsions()):
                    i, j, k, m, per, phase, k_phi = force.getTorsionParameters(n)
                    phase, k_phi = phase.value_in_unit(phase.unit), k_phi.value_in_unit(k_phi.unit)
                    reflection_invariant = min(abs(math.sin(phase)), 1.0) < 1e-6
                    if k_phi != 0 and reflection_invariant:
                        torsions.append([int(i), int(j), int(k), int(m), int(per), phase, k_phi / kT])
        if fade_width == "auto":
            fade_width = min((1.0 / math.sqrt(b[3]) for b in bonds), default=0.1)
        pairs = _nonbonded_pairs(system, L, kT) if nonbonded else []
        gb = _obc_parameters(system, L, kT) if nonbonded else None
        light = [
            system.getParticleMass(i).value_in_unit(openmm.unit.dalton) < 1.5 for i in range(system.getNumParticles())
        ]
        hydrogen = [light[b[0]] or light[b[1]] for b in bonds]
        return cls(
            bonds,
            angles,
            torsions,
            float(fade_width),
            pairs,
            replaces_gaussian=True,
            gb=gb,
            gates=gates,
            hydrogen=hydrogen,
        )

    @classmethod
    def lennard_jones(
        cls,
        n_particles: int,
        length_scale: float,
        oscillator_scale: float = 1.0,
        fade_width="auto",
        pairs: bool = True,
        gates: str = "fixed",
    ) -> "ForceFieldPrior":
        """The energy of :class:`boltzgen.systems.lj.LennardJonesCluster` as a prior, in model units.

        Σ_{i<j} 2 (r⁻¹² − 2 r⁻⁶) (that is 4 ε ((s/r)¹² − (s/r)⁶) with ε = 2, s = 2^(−1/6)) plus
        ``oscillator_scale`` · ½ Σ_i ‖x_i − x̄‖², reduced units (r_m = 1, kT = 1).

        Parameters
        ----------
        n_particles : int
        length_scale : float
            L in reduced lengths of the model coordinates y = x / L.
        oscillator_scale : float
            The cluster's restraint strength.
        fade_width : float or "auto"
            ``auto``: the thermal width of the pair well at r_m, 1 / √(u''(1)) = 1/12, in model units.
        pairs : bool
            Carry the pair term; False leaves the restraint alone (``model.prior: bonded``).
        gates : {"fixed", "learned"}
            As in the class.

        Returns
        -------
        ForceFieldPrior
        """
        L = float(length_scale)
        s, eps = 2.0 ** (-1.0 / 6.0) / L, 2.0
        terms = [[i, j, 0.0, s, eps] for i in range(n_particles) for j in range(i + 1, n_particles)] if pairs else []
        if fade_width == "auto":
            fade_width = 1.0 / (12.0 * L)  # u''(r_m) = 2 (156 - 84) = 144 kT / r_m²
        return cls(
            [],
            [],
            [],
            float(fade_width),
            terms,
            replaces_gaussian=True,
            centroid_k=oscillator_scale * L**2,
            gates=gates,
        )

    def config(self) -> dict:
        """Plain lists that rebuild this prior (``ForceFieldPrior(**config)``).

        Returns
        -------
        dict
        """
        return {
            "bonds": self._bonds,
            "angles": self._angles,
            "torsions": self._torsions,
            "fade_width": self.fade_width,
            "pairs": self._pairs,
            "replaces_gaussian": self.replaces_gaussian,
            "centroid_k": self.centroid_k,
            "gb": self.gb,
            "gates": self.gates,
            "hydrogen": self._hydrogen,
        }

    # ------------------------------------------------------------------ energy
    def fade(self, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """f(t) = 1 / (1 + (σ_t / (α_t w))²).

        Parameters
        ----------
        alpha, sigma : tensor, shape (B,)

        Returns
        -------
        tensor, shape (B,)
        """
        return 1.0 / (1.0 + (sigma / (alpha * self.fade_width)) ** 2)

    def gate(self, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The weight of each term class at each time: f(t) for all (``fixed``), or g_c(t) (``learned``).

        Parameters
        ----------
        alpha, sigma : tensor, shape (B,)

        Returns
        -------
        tensor, shape (B, len(TERM_CLASSES))
        """
        if self.gates == "fixed":
            return self.fade(alpha, sigma)[:, None].expand(-1, len(TERM_CLASSES))
        log_ratio = torch.log(sigma.clamp_min(1e-30) / alpha)[:, None]
        slope, log_width = self.gate_log_slope.to(alpha.dtype).exp(), self.gate_log_width.to(alpha.dtype)
        return torch.sigmoid(-slope * (log_ratio - log_width))

    def forward(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """E_prior(x, t) for configurations in model units.

        Parameters
        ----------
        x : tensor, shape (B, N, 3)
            Model units.
        alpha, sigma : tensor, shape (B,)
            α_t and σ_t of each configuration's time.

        Returns
        -------
        tensor, shape (B,), dtype of x (kT)
        """
        a, s = alpha.to(x.dtype), sigma.to(x.dtype)
        return (self.gate(a, s) * self.term_energies(x, a, s)).sum(-1)

    def term_energies(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The diffused energy of each term class, before its gate.

        Parameters
        ----------
        x : tensor, shape (B, N, 3)
            Model units.
        alpha, sigma : tensor, shape (B,)

        Returns
        -------
        tensor, shape (B, len(TERM_CLASSES)), dtype of x (kT)
            Columns in the order of :data:`TERM_CLASSES` (zero for a class the prior lacks).
        """
        dtype = x.dtype
        a, s = alpha.to(dtype)[:, None], sigma.to(dtype)[:, None]
        fade = self.fade(alpha.to(dtype), sigma.to(dtype))
        terms = dict.fromkeys(TERM_CLASSES, x.new_zeros(x.shape[0]))
        if self.bond_idx.shape[0]:
            r0, k = self.bond_par[:, 0].to(dtype), self.bond_par[:, 1].to(dtype)
            d = x[:, self.bond_idx[:, 0]] - x[:, self.bond_idx[:, 1]]
            r = torch.sqrt((d**2).sum(-1) + 1e-12)
            k_t = k / (a**2 + 2.0 * k * s**2)
            e = 0.5 * k_t * (r - a * r0) ** 2
            terms["bond_h"], terms["bond"] = e[:, self.bond_h].sum(-1), e[:, ~self.bond_h].sum(-1)
        if self.angle_idx.shape[0]:
            theta0, k = self.angle_par[:, 0].to(dtype), self.angle_par[:, 1].to(dtype)
            u = x[:, self.angle_idx[:, 0]] - x[:, self.angle_idx[:, 1]]
            v = x[:, self.angle_idx[:, 2]] - x[:, self.angle_idx[:, 1]]
            cos = (u * v).sum(-1) / torch.sqrt((u**2).sum(-1) * (v**2).sum(-1) + 1e-12)
            theta = torch.acos(cos.clamp(-1.0 + 1e-7, 1.0 - 1e-7))
            k_t = k / (1.0 + k * self.angle_g.to(dtype) * (s / a) ** 2)
            terms["angle"] = (0.5 * k_t * (theta - theta0) ** 2).sum(-1)
        if self.tors_idx.shape[0]:
            n, phase, k = (self.tors_par[:, c].to(dtype) for c in range(3))
            p = [x[:, self.tors_idx[:, c]] for c in range(4)]
            phi = dihedral(*p)
            terms["torsion"] = (k * (1.0 + torch.cos(n * phi - phase))).sum(-1)
        if self.pair_idx.shape[0]:
            qq, sig, eps = (self.pair_par[:, c].to(dtype) for c in range(3))
            d = x[:, self.pair_idx[:, 0]] - x[:, self.pair_idx[:, 1]]
            soft = (1.0 - fade)[:, None] * sig
            rho2 = (d**2).sum(-1) / a**2 + 2.0 * (s / a) ** 2 + soft**2 + 1e-12
            s6 = (sig**2 / rho2) ** 3
            terms["coulomb"], terms["lj"] = (qq / torch.sqrt(rho2)).sum(-1), (4.0 * eps * (s6**2 - s6)).sum(-1)
        if self.gb:
            g, L = self.gb, float(self.gb["length_scale"])
            d = x[:, :, None] - x[:, None, :]
            r2 = L**2 * ((d**2).sum(-1) / a[:, :, None] ** 2 + 2.0 * (s[:, :, None] / a[:, :, None]) ** 2)
            e_gb = obc_energy(
                r2,
                self.gb_charges.to(dtype),
                self.gb_radii.to(dtype),
                self.gb_scales.to(dtype),
                g["solute_dielectric"],
                g["solvent_dielectric"],
                g["surface_area_energy"],
                psi_coefficients=g.get("psi_coefficients", OBC2),
                engulfed=g.get("engulfed", True),
            )
            terms["gb"] = e_gb / float(g["kT"])
        if self.centroid_k:
            k_t = self.centroid_k / (a[:, 0] ** 2 + self.centroid_k * s[:, 0] ** 2)
            centred = x - x.mean(dim=-2, keepdim=True)
            terms["centroid"] = 0.5 * k_t * centred.pow(2).sum(dim=(-2, -1))
        return torch.stack([terms[c] for c in TERM_CLASSES], dim=-1)

    def gate_half_widths(self) -> dict:
        """σ_t/α_t (model units) at which each term class's gate is one half.

        Returns
        -------
        dict
            Class name -> half width (all ``fade_width`` for fixed gates).
        """
        if self.gates == "fixed":
            return dict.fromkeys(TERM_CLASSES, self.fade_width)
        return {c: float(w) for c, w in zip(TERM_CLASSES, self.gate_log_width.detach().exp())}

    def extra_repr(self) -> str:
        """Sizes shown by ``repr``.

        Returns
        -------
        str
        """
        return (
            f"bonds={self.bond_idx.shape[0]}, angles={self.angle_idx.shape[0]}, "
            f"torsions={self.tors_idx.shape[0]}, pairs={self.pair_idx.shape[0]}, "
            f"centroid_k={self.centroid_k:g}, gb={'OBC' if self.gb else 'none'}, fade_width={self.fade_width}, "
            f"gates={self.gates}"
        )


def _nonbonded_pairs(system, L: float, kT: float) -> list:
    """[i, j, qq, s, eps] of every interacting pair of the System's ``NonbondedForce`` (model
    units, kT): Lorentz–Berthelot pairs, then its exceptions in their place (zero ones dropped)."""
    import openmm

    forces = [f for f in system.getForces() if isinstance(f, openmm.NonbondedForce)]
    if len(forces) != 1:
        raise ValueError(f"a nonbonded prior needs exactly one NonbondedForce, found {len(forces)}")
    force = forces[0]
    if force.getNonbondedMethod() != openmm.NonbondedForce.NoCutoff or system.usesPeriodicBoundaryConditions():
        raise ValueError("a nonbonded prior needs a NonbondedForce without cutoff or periodic box (vacuum or implicit)")
    atoms = []
    for n in range(force.getNumParticles()):
        q, s, e = force.getParticleParameters(n)
        atoms.append((q.value_in_unit(q.unit), s.value_in_unit(s.unit), e.value_in_unit(e.unit)))
    table = {}
    for i in range(len(atoms)):
        for j in range(i + 1, len(atoms)):
            (qi, si, ei), (qj, sj, ej) = atoms[i], atoms[j]
            table[(i, j)] = (qi * qj, 0.5 * (si + sj), math.sqrt(ei * ej))
    for n in range(force.getNumExceptions()):
        i, j, qq, s, e = force.getExceptionParameters(n)
        table[(min(i, j), max(i, j))] = (qq.value_in_unit(qq.unit), s.value_in_unit(s.unit), e.value_in_unit(e.unit))
    return [
        [i, j, ONE_4PI_EPS0 * qq / (kT * L), s / L, e / kT]
        for (i, j), (qq, s, e) in sorted(table.items())
        if qq != 0 or e != 0
    ]


def obc_energy(
    r2: torch.Tensor,
    charges: torch.Tensor,
    radii: torch.Tensor,
    scales: torch.Tensor,
    solute_dielectric: float,
    solvent_dielectric: float,
    surface_area_energy: float,
    offset: float = OBC_OFFSET,
    probe_radius: float = 0.14,
    psi_coefficients: Sequence[float] = OBC2,
    engulfed: bool = True,
) -> torch.Tensor:
    """OBC generalised-Born energy with the ACE surface-area term, as OpenMM's ``GBSAOBCForce``.

    Born radii B_i = 1 / (1/ρ_i − tanh(a Ψ_i − b Ψ_i² + c Ψ_i³) / r_i), ρ_i = r_i − 0.009 nm,
    Ψ_i = ρ_i/2 Σ_j of the pairwise descreening integral with the scaled radius s_j ρ_j (Onufriev,
    Bashford & Case 2004: (a, b, c) = (1, 0.8, 4.85) for their OBC-II, :data:`OBC2`, and
    (0.8, 0, 2.909125) for OBC-I, :data:`OBC1`); then −138.935 (1/ε_in − 1/ε_out)
    [Σ_{i<j} q_i q_j / f_ij + ½ Σ_i q_i² / B_i] with f_ij = √(r_ij² + B_i B_j exp(−r_ij² / 4 B_i B_j)),
    plus Σ_i 4π γ (r_i + 0.14)² (r_i / B_i)⁶. Tested against OpenMM's ``GBSAOBCForce`` and the
    ``CustomGBForce`` of its ``implicit/obc1.xml`` and ``implicit/obc2.xml``.

    Parameters
    ----------
    r2 : tensor, shape (B, N, N)
        Squared pair distances (nm²); the diagonal is ignored.
    charges, radii, scales : tensors, shape (N,)
        Per atom: charge (e), radius (nm), descreening scale.
    solute_dielectric, solvent_dielectric : float
    surface_area_energy : float
        γ (kJ/mol/nm²).
    offset, probe_radius : float
        The dielectric offset and the solvent probe radius (nm), OpenMM's constants.
    psi_coefficients : sequence of 3 float
        (a, b, c) of the Born radii's tanh(a Ψ − b Ψ² + c Ψ³).
    engulfed : bool
        Add 2 (1/ρ_i − 1/L_ij) to the descreening integral where atom i lies inside atom j's
        scaled sphere, as ``GBSAOBCForce`` does; the ``CustomGBForce`` models leave it out.

    Returns
    -------
    tensor, shape (B,)
        kJ/mol.
    """
    n = r2.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=r2.device)
    r = torch.sqrt(r2.masked_fill(eye, 1.0))
    rho = radii - offset
    scaled = (rho * scales)[None, None, :]  # atom j's
    rho_i = rho[None, :, None]
    upper = r + scaled
    low = 1.0 / torch.maximum(rho_i.expand_as(r), (r - scaled).abs())
    up = 1.0 / upper
    term = low - up + 0.25 * r * (up**2 - low**2) + 0.5 / r * torch.log(up / low)
    term = term + 0.25 * scaled**2 / r * (low**2 - up**2)
    if engulfed:
        term = term + torch.where(rho_i < scaled - r, 2.0 * (1.0 / rho_i - low), torch.zeros_like(term))
    term = torch.where((rho_i < upper) & ~eye, term, torch.zeros_like(term))
    psi = 0.5 * rho[None, :] * term.sum(-1)
    a, b, c = (float(v) for v in psi_coefficients)
    born = 1.0 / (1.0 / rho[None, :] - torch.tanh(a * psi - b * psi**2 + c * psi**3) / radii[None, :])
    pre = -ONE_4PI_EPS0 * (1.0 / solute_dielectric - 1.0 / solvent_dielectric)
    bb = born[:, :, None] * born[:, None, :]
    f = torch.sqrt(r2 + bb * torch.exp(-r2 / (4.0 * bb)))
    pairs = torch.triu(charges[:, None] * charges[None, :] / f, diagonal=1).sum((-1, -2))
    own = 0.5 * (charges**2 / born).sum(-1)
    surface = (4.0 * math.pi * surface_area_energy * (radii + probe_radius) ** 2 * (radii / born) ** 6).sum(-1)
    return pre * (pairs + own) + surface


def _obc_parameters(system, L: float, kT: float) -> Optional[dict]:
    """The ``gb`` argument of :class:`ForceFieldPrior` for the System's OBC term (None if none).

    Reads a ``GBSAOBCForce`` or the ``CustomGBForce`` of OpenMM's ``implicit/obc1.xml`` and
    ``implicit/obc2.xml`` (:func:`custom_obc_parameters`); other generalised-Born models are left
    out of the prior (the network learns them)."""
    import openmm

    forces = [f for f in system.getForces() if isinstance(f, openmm.GBSAOBCForce)]
    if not forces:
        for force in system.getForces():
            if isinstance(force, openmm.CustomGBForce):
                gb = custom_obc_parameters(force)
                if gb is not None:
                    return {**gb, "length_scale": float(L), "kT": float(kT)}
        return None
    force = forces[0]
    if force.getNonbondedMethod() != openmm.GBSAOBCForce.NoCutoff:
        raise ValueError("a nonbonded prior needs a GBSAOBCForce without cutoff")
    params = [force.getParticleParameters(i) for i in range(force.getNumParticles())]
    area = force.getSurfaceAreaEnergy()
    return {
        "charges": [p[0].value_in_unit(p[0].unit) for p in params],
        "radii": [p[1].value_in_unit(p[1].unit) for p in params],
        "scales": [float(p[2]) for p in params],
        "solute_dielectric": float(force.getSoluteDielectric()),
        "solvent_dielectric": float(force.getSolventDielectric()),
        "surface_area_energy": float(area.value_in_unit(area.unit)),
        "length_scale": float(L),
        "kT": float(kT),
    }


#: The descreening integral of OpenMM's OBC ``CustomGBForce`` models (spaces removed).
_CUSTOM_OBC_I = (
    "select(step(r+sr2-or1),0.5*(1/L-1/U+0.25*(r-sr2^2/r)*(1/(U^2)-1/(L^2))+0.5*log(L/U)/r),0);"
    "U=r+sr2;L=max(or1,D);D=abs(r-sr2)"
)
#: Their Born radii, by the coefficients of tanh(a Ψ − b Ψ² + c Ψ³).
_CUSTOM_OBC_B = {
    OBC1: "1/(1/or-tanh(0.8*psi+2.909125*psi^3)/radius);psi=I*or;radius=or+offset;offset=0.009",
    OBC2: "1/(1/or-tanh(psi-0.8*psi^2+4.85*psi^3)/radius);psi=I*or;radius=or+offset;offset=0.009",
}


def custom_obc_parameters(force) -> Optional[dict]:
    """Charges, radii, scales and constants of an OBC model written as a ``CustomGBForce``.

    OpenMM's ``implicit/obc1.xml`` and ``implicit/obc2.xml`` (the amber14 implicit solvents)
    build a ``CustomGBForce`` (``openmm.app.internal.customgbforces``) instead of a
    ``GBSAOBCForce``. It is recognised only when its expressions are exactly OpenMM's, without
    cutoff or salt, so that :func:`obc_energy` computes the same energy.

    Parameters
    ----------
    force : openmm.CustomGBForce

    Returns
    -------
    dict or None
        The keys of :func:`obc_energy`'s arguments (``charges``, ``radii`` (nm), ``scales``,
        ``solute_dielectric``, ``solvent_dielectric``, ``surface_area_energy`` (kJ/mol/nm², 0
        without the surface term), ``psi_coefficients``, ``engulfed``), or None for another
        model.
    """
    import re

    import openmm

    def squeeze(text: str) -> str:
        return re.sub(r"\s+", "", text)

    names = [force.getPerParticleParameterName(i) for i in range(force.getNumPerParticleParameters())]
    if names != ["charge", "or", "sr"] or force.getNumComputedValues() != 2 or force.getNumGlobalParameters():
        return None
    if force.getNonbondedMethod() != openmm.CustomGBForce.NoCutoff or force.getNumExclusions():
        return None
    (name_i, expr_i, _), (name_b, expr_b, _) = (force.getComputedValueParameters(i) for i in range(2))
    coefficients = [c for c, e in _CUSTOM_OBC_B.items() if squeeze(expr_b) == e]
    if (name_i, name_b) != ("I", "B") or squeeze(expr_i) != _CUSTOM_OBC_I or not coefficients:
        return None
    constants, area, kinds = None, 0.0, []
    for n in range(force.getNumEnergyTerms()):
        expr, kind = force.getEnergyTermParameters(n)
        head, *definitions = squeeze(expr).split(";")
        values = dict(item.split("=", 1) for item in definitions if "=" in item)
        local = {key: values.pop(key) for key in ("f", "radius") if key in values}
        if constants is None:
            constants = values
        if values != constants or "cutoff" in values:
            return None
        single = kind == openmm.CustomGBForce.SingleParticle
        if head == "-0.5*138.935485*(1/soluteDielectric-1/solventDielectric)*charge^2/B" and not local and single:
            kinds.append("self")
        elif head == "-138.935485*(1/soluteDielectric-1/solventDielectric)*charge1*charge2/f":
            if local != {"f": "sqrt(r^2+B1*B2*exp(-r^2/(4*B1*B2)))"}:
                return None
            if kind != openmm.CustomGBForce.ParticlePairNoExclusions:
                return None
            kinds.append("pairs")
        else:
            if local != {"radius": "or+offset"} or not single:
                return None
            found = re.fullmatch(r"([0-9.eE+-]+)\*\(radius\+0\.14\)\^2\*\(radius/B\)\^6", head)
            if found is None:
                return None
            kinds.append("surface")
            area = float(found.group(1)) / (4.0 * math.pi)
    if sorted(kinds) not in (["pairs", "self"], ["pairs", "self", "surface"]):
        return None
    if (
        float(constants.get("kappa", 0.0)) != 0.0
        or abs(float(constants.get("offset", OBC_OFFSET)) - OBC_OFFSET) > 1e-12
    ):
        return None
    params = [force.getParticleParameters(i) for i in range(force.getNumParticles())]
    return {
        "charges": [float(p[0]) for p in params],
        "radii": [float(p[1]) + OBC_OFFSET for p in params],
        "scales": [float(p[2]) / float(p[1]) for p in params],
        "solute_dielectric": float(constants["soluteDielectric"]),
        "solvent_dielectric": float(constants["solventDielectric"]),
        "surface_area_energy": area,
        "psi_coefficients": list(coefficients[0]),
        "engulfed": False,
    }


def prior_for_target(
    target, length_scale: float, fade_width="auto", nonbonded: bool = True, gates: str = "fixed"
) -> ForceFieldPrior:
    """The prior of a target: its OpenMM force field, or a Lennard-Jones cluster's energy.

    Parameters
    ----------
    target : boltzgen.systems.base.TargetSystem
        An OpenMM target (with a ``system``) or a :class:`boltzgen.systems.lj.LennardJonesCluster`.
    length_scale : float
        L of the model coordinates (nm for OpenMM targets, reduced lengths for LJ clusters).
    fade_width : float or "auto"
        See :meth:`ForceFieldPrior.from_openmm` and :meth:`ForceFieldPrior.lennard_jones`.
    nonbonded : bool
        Carry the nonbonded pairs (``model.prior: forcefield``); False keeps the bonded terms only
        (``bonded``; for an LJ cluster, the restraint only).
    gates : {"fixed", "learned"}
        See :class:`ForceFieldPrior`.

    Returns
    -------
    ForceFieldPrior

    Raises
    ------
    ValueError
        For a target that has neither.
    """
    from ..systems.lj import LennardJonesCluster

    if isinstance(target, LennardJonesCluster):
        n = target.event_shape[0]
        return ForceFieldPrior.lennard_jones(
            n, length_scale, target.oscillator_scale, fade_width, pairs=nonbonded, gates=gates
        )
    if getattr(target, "system", None) is None:
        raise ValueError(
            f"a force-field prior needs an OpenMM target or a Lennard-Jones cluster, not {type(target).__name__}"
        )
    return ForceFieldPrior.from_openmm(
        target.system, length_scale, float(target.kT), fade_width, nonbonded=nonbonded, gates=gates
    )


def prior_from_config(config: Optional[dict]) -> Optional[ForceFieldPrior]:
    """Rebuild a :class:`ForceFieldPrior` from :meth:`ForceFieldPrior.config` (None: no prior).

    Parameters
    ----------
    config : dict or None

    Returns
    -------
    ForceFieldPrior or None
    """
    return None if not config else ForceFieldPrior(**config)
