"""Simulation of training data: exact samples, OpenMM Langevin dynamics / replica exchange, MCMC.

The entry point is :func:`simulate`; see :mod:`boltzgen.md.simulate` for the methods,
:mod:`boltzgen.md.dynamics` for the OpenMM replica-exchange engine and
:mod:`boltzgen.md.checkpoint` for the resumable state.
"""

from .dynamics import temperature_ladder
from .simulate import DEFAULTS, METHODS, SimulationResult, ladder_frames, md_platform, quench_frames, simulate

__all__ = [
    "simulate",
    "SimulationResult",
    "temperature_ladder",
    "ladder_frames",
    "quench_frames",
    "md_platform",
    "DEFAULTS",
    "METHODS",
]
