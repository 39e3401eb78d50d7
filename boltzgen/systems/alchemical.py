"""The linear path between two OpenMM targets on the same molecule, as OpenMM Systems.

For targets A and B at one temperature, the intermediate state λ ∈ [0, 1] has the energy

    U_λ(x) = (1 − λ) U_A(x) + λ U_B(x),   so   u_λ = (1 − λ) u_A + λ u_B   (reduced, kT).

:func:`interpolated_system` builds U_λ as one OpenMM System: forces that the two Systems share
(identical serialised XML, e.g. the bonded terms and Coulomb/LJ of vacuum and implicit solvent)
are kept as they are, and the forces that differ (the solvent model) enter two ``CustomCVForce``
objects with the energies ``(1 − lambda_path) (a_1 + …)`` and ``lambda_path (b_1 + …)``. The global parameter
``lambda_path`` sets λ. Any OpenMM force can sit in the ``CustomCVForce``, so the construction does
not depend on what the force field is; what it needs is that MD of U_λ is meaningful, so the
Systems must agree in what is not an energy: masses, constraints, virtual sites and the box.

:func:`path_target` wraps the System at one λ as an :class:`~boltzgen.systems.OpenMMTarget`, which
the MD and free-energy code (``boltzgen.md``, :func:`boltzgen.workflow.free_energy`) use like any
target. Conventions: docs/theory.md, "Free energies between targets".
"""

from __future__ import annotations

import copy

import numpy as np
import openmm

__all__ = ["LAMBDA_PARAMETER", "interpolated_system", "path_target"]

#: Name of the global parameter that sets λ in :func:`interpolated_system`'s System.
LAMBDA_PARAMETER = "lambda_path"

# Forces without an energy: they must agree and are kept as they are.
_NO_ENERGY = (openmm.CMMotionRemover,)


def _xml(force) -> str:
    return openmm.XmlSerializer.serialize(force)


def _check_same_mechanics(system_a: openmm.System, system_b: openmm.System) -> None:
    """Refuse Systems whose MD differs other than through the energy."""
    n = system_a.getNumParticles()
    if n != system_b.getNumParticles():
        raise ValueError(f"the Systems have {n} and {system_b.getNumParticles()} particles")
    for i in range(n):
        m_a, m_b = (s.getParticleMass(i).value_in_unit(openmm.unit.dalton) for s in (system_a, system_b))
        if m_a != m_b:
            raise ValueError(f"particle {i} has mass {m_a} Da in A but {m_b} Da in B: the λ path needs the same masses")
        if system_a.isVirtualSite(i) != system_b.isVirtualSite(i):
            raise ValueError(f"particle {i} is a virtual site in one System only")
    constraints = [
        sorted(
            (min(p[0], p[1]), max(p[0], p[1]), round(p[2].value_in_unit(openmm.unit.nanometer), 10))
            for p in (s.getConstraintParameters(k) for k in range(s.getNumConstraints()))
        )
        for s in (system_a, system_b)
    ]
    if constraints[0] != constraints[1]:
        raise ValueError(
            f"the Systems have different constraints ({len(constraints[0])} and {len(constraints[1])}): "
            "build both with the same constraints= option"
        )
    if system_a.usesPeriodicBoundaryConditions() != system_b.usesPeriodicBoundaryConditions():
        raise ValueError("one System is periodic and the other is not")
    if system_a.usesPeriodicBoundaryConditions():
        boxes = [
            [v.value_in_unit(openmm.unit.nanometer) for v in s.getDefaultPeriodicBoxVectors()]
            for s in (system_a, system_b)
        ]
        if not np.allclose(np.asarray(boxes[0], dtype=float), np.asarray(boxes[1], dtype=float)):
            raise ValueError("the Systems have different periodic boxes")


def _global_parameters(system: openmm.System) -> dict:
    out = {}
    for force in system.getForces():
        for k in range(force.getNumGlobalParameters() if hasattr(force, "getNumGlobalParameters") else 0):
            out[force.getGlobalParameterName(k)] = force.getGlobalParameterDefaultValue(k)
    return out


def _check_global_parameters(system_a: openmm.System, system_b: openmm.System) -> None:
    """OpenMM holds one value per global parameter name in a Context: the ends must agree."""
    params_a, params_b = _global_parameters(system_a), _global_parameters(system_b)
    if LAMBDA_PARAMETER in params_a or LAMBDA_PARAMETER in params_b:
        raise ValueError(f"a System already has a global parameter {LAMBDA_PARAMETER!r}, the name the λ path uses")
    for name in sorted(set(params_a) & set(params_b)):
        if params_a[name] != params_b[name]:
            raise ValueError(
                f"global parameter {name!r} is {params_a[name]} in A but {params_b[name]} in B; one OpenMM "
                "Context holds one value per name: rename it in one of the Systems"
            )


def interpolated_system(system_a: openmm.System, system_b: openmm.System, lam: float = 0.0) -> openmm.System:
    """One OpenMM System of U_λ = (1 − λ) U_A + λ U_B.

    Parameters
    ----------
    system_a, system_b : openmm.System
        The two ends: the same particles, masses, constraints and virtual sites (the same molecule
        under two force fields or solvent models).
    lam : float
        Default value of the global parameter :data:`LAMBDA_PARAMETER` (a Context may change it).

    Returns
    -------
    openmm.System
        A new System: A's particles and constraints, the forces common to A and B, and a
        ``CustomCVForce`` for each end holding its forces that the other lacks. Force groups of
        the shared forces are kept; the ``CustomCVForce`` objects are in group 0.

    Raises
    ------
    ValueError
        Systems that differ in masses, constraints, virtual sites or box, that give one global
        parameter two default values, or ``lam`` outside [0, 1].
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must lie in [0, 1], got {lam}")
    _check_same_mechanics(system_a, system_b)
    _check_global_parameters(system_a, system_b)
    forces_a = [system_a.getForce(k) for k in range(system_a.getNumForces())]
    forces_b = [system_b.getForce(k) for k in range(system_b.getNumForces())]
    unmatched_b = {k: _xml(f) for k, f in enumerate(forces_b)}
    shared, only_a = [], []
    for force in forces_a:
        text = _xml(force)
        match = next((k for k, other in unmatched_b.items() if other == text), None)
        if match is None:
            only_a.append(force)
        else:
            shared.append(force)
            del unmatched_b[match]
    only_b = [forces_b[k] for k in sorted(unmatched_b)]
    for force in only_a + only_b:
        if isinstance(force, _NO_ENERGY):
            raise ValueError(f"{type(force).__name__} differs between the Systems: it has no energy to interpolate")

    mixed = copy.deepcopy(system_a)
    for k in reversed(range(mixed.getNumForces())):
        mixed.removeForce(k)
    for force in shared:
        mixed.addForce(copy.deepcopy(force))
    # One CustomCVForce per end, so that each end's forces sit together.
    for coefficient, forces in ((f"(1-{LAMBDA_PARAMETER})", only_a), (LAMBDA_PARAMETER, only_b)):
        if not forces:
            continue
        names = [f"u{k}" for k in range(len(forces))]
        cv = openmm.CustomCVForce(f"{coefficient}*({'+'.join(names)})")
        cv.addGlobalParameter(LAMBDA_PARAMETER, float(lam))
        for name, force in zip(names, forces):
            inner = copy.deepcopy(force)
            inner.setForceGroup(0)
            cv.addCollectiveVariable(name, inner)
        mixed.addForce(cv)
    return mixed


def path_target(target_a, target_b, lam: float, *, name=None):
    """The intermediate target u_λ = (1 − λ) u_A + λ u_B of two OpenMM targets at one temperature.

    Parameters
    ----------
    target_a, target_b : OpenMMTarget
        The ends (same molecule, same temperature).
    lam : float
        λ in [0, 1]; 0 and 1 give (copies of) the ends' energies.
    name : str, optional
        Name in metadata (default ``"A→B@λ"``).

    Returns
    -------
    OpenMMTarget
        A's topology and start positions, the System of :func:`interpolated_system` at ``lam``,
        A's platform and worker count; ``description`` records the ends and λ.

    Raises
    ------
    ValueError
        Targets that are not OpenMM targets, at different temperatures, or Systems that
        :func:`interpolated_system` refuses.
    """
    from .openmm_target import OpenMMTarget

    for t in (target_a, target_b):
        if not isinstance(t, OpenMMTarget):
            raise ValueError(f"the λ path needs two OpenMM targets; {t.name} is a {type(t).__name__}")
    if target_a.temperature != target_b.temperature:
        raise ValueError(
            f"the λ path joins targets at one temperature; {target_a.name} is at {target_a.temperature} K and "
            f"{target_b.name} at {target_b.temperature} K (use BAR between the two ends instead)"
        )
    system = interpolated_system(target_a.system, target_b.system, lam)
    return OpenMMTarget(
        system,
        target_a.topology,
        target_a.positions.numpy(),
        target_a.temperature,
        name=name or f"{target_a.name}->{target_b.name}@{lam:g}",
        platform=target_a.platform,
        n_workers=target_a.n_workers,
        description={"path_from": target_a.name, "path_to": target_b.name, "lambda": float(lam)},
    )
