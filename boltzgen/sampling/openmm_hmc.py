"""Metropolis-adjusted molecular dynamics on an OpenMM target: HMC with the atoms' masses.

The MALA and HMC moves of :mod:`boltzgen.sampling.mcmc` have unit mass: their step is set by the
stiffest bond, so a torsion of a peptide barely moves in a hundred steps. Molecular dynamics moves
heavy atoms and hydrogens at their own thermal speeds; with a Metropolis test on the total energy
after each short trajectory it leaves exp(−U/kT) exactly invariant (Duane et al. 1987), whatever
the time step. One proposal: velocities drawn afresh from Maxwell–Boltzmann at the target's
temperature, ``n_leapfrog`` velocity-Verlet steps of ``timestep`` fs, accepted with probability
min(1, exp(−ΔH/kT)), else the positions return to where the proposal began. The whole proposal
runs inside OpenMM as one step of a ``CustomIntegrator``.

Each proposal is reversible with respect to exp(−U/kT) (fresh momenta, a symmetric integrator), so
any number k of them in a row is reversible too; a block of k proposals whose end lies outside an
allowed set (a particle's state, the L-region) is therefore rejected as a whole, and the result is
exact for the target restricted to that set (:func:`hmc_moves`, ``allowed``).
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from ..units import kT_of

__all__ = ["hmc_integrator", "hmc_moves"]


def hmc_integrator(temperature: float, timestep: float = 1.0, n_leapfrog: int = 10, seed: int = 1):
    """One OpenMM step = one HMC proposal with the atoms' masses (no constraints).

    Parameters
    ----------
    temperature : float
        Temperature in K.
    timestep : float
        Velocity-Verlet step in fs.
    n_leapfrog : int
        Velocity-Verlet steps per proposal.
    seed : int
        OpenMM's random seed, at least 1 (0 would ask OpenMM for a random one).

    Returns
    -------
    openmm.CustomIntegrator
        Its global variables ``naccept`` and ``ntrials`` count the accepted and tried proposals.

    Raises
    ------
    ValueError
        A non-positive temperature, time step or leapfrog count, or a seed below 1.
    """
    import openmm
    from openmm import unit

    if not temperature > 0 or not timestep > 0 or int(n_leapfrog) < 1:
        raise ValueError(
            f"HMC needs temperature > 0, timestep > 0 and n_leapfrog >= 1, got {temperature}, {timestep}, {n_leapfrog}"
        )
    if int(seed) < 1:
        raise ValueError(f"seed must be at least 1 (0 asks OpenMM for a random seed), got {seed}")
    integrator = openmm.CustomIntegrator(timestep * unit.femtosecond)
    integrator.addGlobalVariable("kT", kT_of(temperature))
    for name in ("naccept", "ntrials", "ke", "h_old", "h_new", "accept"):
        integrator.addGlobalVariable(name, 0.0)
    integrator.addPerDofVariable("x_old", 0.0)
    integrator.addUpdateContextState()
    integrator.addComputePerDof("v", "sqrt(kT/m)*gaussian")
    integrator.addComputeSum("ke", "0.5*m*v*v")
    integrator.addComputeGlobal("h_old", "ke + energy")
    integrator.addComputePerDof("x_old", "x")
    for _ in range(int(n_leapfrog)):
        integrator.addComputePerDof("v", "v + 0.5*dt*f/m")
        integrator.addComputePerDof("x", "x + dt*v")
        integrator.addComputePerDof("v", "v + 0.5*dt*f/m")
    integrator.addComputeSum("ke", "0.5*m*v*v")
    integrator.addComputeGlobal("h_new", "ke + energy")
    # a NaN energy fails the test (step(NaN) is 0 in OpenMM's expressions)
    integrator.addComputeGlobal("accept", "step(exp(-(h_new - h_old)/kT) - uniform)")
    integrator.beginIfBlock("accept != 1")
    integrator.addComputePerDof("x", "x_old")
    integrator.endBlock()
    integrator.addComputeGlobal("naccept", "naccept + accept")
    integrator.addComputeGlobal("ntrials", "ntrials + 1")
    integrator.setRandomNumberSeed(int(seed))
    return integrator


def hmc_moves(
    x,
    system,
    temperature: float,
    n_moves: int,
    *,
    timestep: float = 1.0,
    n_leapfrog: int = 10,
    block: int = 10,
    allowed: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]] = None,
    seed: int = 1,
    platform: str = "Reference",
) -> tuple:
    """``n_moves`` HMC proposals with the atoms' masses for every configuration of a batch.

    The proposals come in blocks of ``block``; after each block ``allowed(old, new)`` may send
    configurations back to where the block began (exact for the restricted target, see the
    module docstring). The centre of mass, which the dynamics moves freely, is put back where it
    was (U is translation invariant, so this changes nothing else).

    Parameters
    ----------
    x : array, shape (B, N, 3)
        Configurations in nm.
    system : openmm.System
        The target's force field (no constraints, no periodic box needed).
    temperature : float
        Temperature in K (the target's).
    n_moves : int
        Proposals per configuration.
    timestep : float
        fs.
    n_leapfrog : int
        Velocity-Verlet steps per proposal.
    block : int
        Proposals between checks of ``allowed``.
    allowed : callable, optional
        ``allowed(old, new) -> (B,) bool`` for the blocks' start and end configurations.
    seed : int
        Random seed (at least 1).
    platform : str
        OpenMM platform.

    Returns
    -------
    x : ndarray, shape (B, N, 3), float64
        The moved configurations (nm).
    acceptance : float
        Fraction of the proposals accepted by the Metropolis test (before ``allowed``).
    kept : float
        Fraction of the blocks that ``allowed`` kept (1.0 without it).

    Raises
    ------
    ValueError
        A system with constraints, or one of another size than x.
    """
    import openmm
    from openmm import unit

    x = np.array(x, dtype=np.float64)
    if x.ndim != 3 or x.shape[2] != 3 or x.shape[1] != system.getNumParticles():
        raise ValueError(f"x must have shape (B, {system.getNumParticles()}, 3), got {x.shape}")
    if system.getNumConstraints() > 0:
        raise ValueError("HMC moves need a system without constraints (the targets have none)")
    if int(n_moves) < 0 or int(block) < 1:
        raise ValueError(f"n_moves must be >= 0 and block >= 1, got {n_moves}, {block}")
    integrator = hmc_integrator(temperature, timestep, n_leapfrog, seed)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName(platform))
    centre = x.mean(axis=1, keepdims=True)
    blocks_kept, blocks = 0, 0
    try:
        done = 0
        while done < int(n_moves):
            k = min(int(block), int(n_moves) - done)
            new = np.empty_like(x)
            for i in range(x.shape[0]):
                context.setPositions(x[i] * unit.nanometer)
                integrator.step(k)
                new[i] = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
            new += centre - new.mean(axis=1, keepdims=True)
            keep = np.ones(x.shape[0], dtype=bool) if allowed is None else np.asarray(allowed(x, new), dtype=bool)
            x = np.where(keep[:, None, None], new, x)
            blocks_kept, blocks = blocks_kept + int(keep.sum()), blocks + x.shape[0]
            done += k
        trials = integrator.getGlobalVariableByName("ntrials")
        acceptance = integrator.getGlobalVariableByName("naccept") / trials if trials else float("nan")
    finally:
        del context
    return x, float(acceptance), (blocks_kept / blocks if blocks else 1.0)
