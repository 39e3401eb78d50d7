"""Samplers: batched MCMC kernels (MALA, HMC) and chain drivers, reverse-diffusion SDE / ODE
samplers, sequential Monte Carlo along the diffusion path (as stages, :mod:`.stages`, under one
:class:`SMCSettings`), resampling and chirality fixing.

Samplers are plain functions of an energy callable (or a :class:`DiffusionModel`) and a
``torch.Generator``.
"""

from .chirality import all_l_form, chiral_centres, count_wrong, fix_chirality, in_l_region, is_l_form, signed_volume
from .exact import ExactMarginalModel
from .mcmc import (
    ChainState,
    MCMCResult,
    MCMCStep,
    energy_and_grad,
    hmc_step,
    init_chain_state,
    mala_step,
    project_mean_free,
    run_hmc,
    run_mala,
    run_mcmc,
)
from .protocol import DiffusionModel
from .resampling import (
    ess_fraction,
    multinomial_resample,
    resample,
    residual_resample,
    stratified_resample,
    systematic_resample,
)
from .sde import probability_flow, reverse_kernel, reverse_sde, time_grid
from .settings import (
    AnnealSettings,
    DiffusionSettings,
    FinalSettings,
    MoveSettings,
    ResampleSettings,
    SMCSettings,
    TiltSettings,
)
from .smc import SMCResult, smc_sample
from .stages import (
    ParticleState,
    SMCFailure,
    SMCProblem,
    SMCRecorder,
    fold_chirality,
    run_annealing,
    run_diffusion,
    run_final_moves,
    start_at_prior,
    start_from,
)
from .tilt import StateTilt, torsion_coordinate

__all__ = [
    "SMCFailure",
    "ChainState",
    "MCMCResult",
    "MCMCStep",
    "energy_and_grad",
    "hmc_step",
    "init_chain_state",
    "mala_step",
    "project_mean_free",
    "run_hmc",
    "run_mala",
    "run_mcmc",
    "reverse_sde",
    "probability_flow",
    "reverse_kernel",
    "time_grid",
    "smc_sample",
    "SMCResult",
    "ExactMarginalModel",
    "DiffusionModel",
    "SMCSettings",
    "DiffusionSettings",
    "AnnealSettings",
    "FinalSettings",
    "MoveSettings",
    "ResampleSettings",
    "TiltSettings",
    "StateTilt",
    "torsion_coordinate",
    "SMCProblem",
    "ParticleState",
    "SMCRecorder",
    "start_at_prior",
    "start_from",
    "run_diffusion",
    "fold_chirality",
    "run_annealing",
    "run_final_moves",
    "resample",
    "systematic_resample",
    "stratified_resample",
    "multinomial_resample",
    "residual_resample",
    "ess_fraction",
    "chiral_centres",
    "signed_volume",
    "is_l_form",
    "in_l_region",
    "all_l_form",
    "fix_chirality",
    "count_wrong",
]
