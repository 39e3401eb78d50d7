"""Samplers: batched MCMC kernels (MALA, HMC) and chain drivers.

Samplers are plain functions of an energy callable and a ``torch.Generator``.
"""

from .mcmc import (
    ChainState, MCMCResult, MCMCStep, energy_and_grad, hmc_step, init_chain_state, mala_step,
    project_mean_free, run_hmc, run_mala, run_mcmc,
)

__all__ = [
    "ChainState", "MCMCResult", "MCMCStep", "energy_and_grad", "hmc_step", "init_chain_state", "mala_step",
    "project_mean_free", "run_hmc", "run_mala", "run_mcmc",
]
