"""Sequential Monte Carlo along the reverse diffusion, then annealing to the target (docs/design.md).

Particles y (model coordinates, y = x / ℓ with ℓ the model's length scale) move through the
unnormalised densities

    γ_1, γ_{t_1}, …, γ_{t_min}   with γ_t(y) = exp(−E(y, t))   (the learned energies), then
    π_β(y) ∝ γ_{t_min}(y)^{1−β} exp(−β u(ℓ y)),  0 < β_1 < … < β_K = 1   (the target u).

1. **Start** at t = 1 (k B particles with ``diffusion.particle_factor`` k, resampled down to B
   as the annealing starts): y ~ q_0 = N(0, c² I) (mean-free for molecules, c² = α_1² σ_data² + σ_1²),
   log w = −E(y, 1) − log q_0(y).
2. **Diffusion steps** t → t' < t: propose y' ~ M(y' | y) = N(mean, v_M) with a reverse-diffusion
   kernel built from the learned score (:func:`~boltzgen.sampling.sde.reverse_kernel`, "ddpm" or
   "euler"), and reweight by

       log w += −E(y', t') + log L(y | y') + E(y, t) − log M(y' | y),

   with L the exact forward Gaussian kernel from t' to t (:meth:`Schedule.transition`). Both L and
   M are exact Gaussians; for molecules they are densities on the zero-centre-of-mass subspace
   and count d = 3(N − 1) dimensions.
3. **Annealing to the target**: at each β_k, log w += (β_k − β_{k−1}) (E(y, t_min) − u(ℓ y)); MCMC
   moves use the target's forces (``target.reduced_energy_and_force``, the only place the target
   is called — once per particle for the first β, then once per MALA step or per leapfrog step).
   The β grid is fixed (linear, or given) or adaptive (``anneal.cess``): each β_k is the largest
   whose increment keeps the conditional ESS at a target value, chosen from the energies at hand.
   After β = 1, moves on the target alone (``final.mcmc_steps``) relax the particles without
   changing their weights (they leave exp(−u) invariant and need no model evaluation).
4. After every reweighting but the last, **resample** (systematic by default) when ESS/N <
   ``resampling.ess_threshold`` (with ``states``: within each metastable state, so each keeps its
   particles and its weight; with ``resampling.denoised_labels`` a particle's state during the
   diffusion is that of its denoised estimate);
   then, optionally, **MCMC moves** (MALA or HMC, :mod:`boltzgen.sampling.mcmc`) that leave the
   current density invariant. Step sizes h = κ · h_ref: h_ref follows the scale of the level's
   density (from the median gradient norm of the particles entering the moves, unless a step
   size is given), and κ is adapted between levels towards a target acceptance (it depends only
   on earlier levels). This is the usual adaptive SMC: consistent as N → ∞; set
   ``moves.adapt_rate = 0`` and explicit step sizes for kernels fixed in advance.

**log Z.** With unnormalised log-weights l_i, Ẑ = (1/N) Σ exp(l_i) is an unbiased estimate of
the normaliser of the current density; resampling sets every l_i to log Ẑ, so the estimate
carries through (``log_z = logsumexp(log_weights) − log N`` at the end). The model works in
y = x / ℓ; the target's normaliser in x is Z_x = ℓ^d Z_y (d = 3(N − 1) for mean-free systems,
the number of coordinates otherwise), and ``log_z`` is reported in x:

    log_z ≈ log ∫ exp(−u(x)) dx      (over the zero-COM subspace for molecules).

Without a target, ``log_z`` estimates log ∫ exp(−E(x/ℓ, t_min)) dx instead.

**Chirality.** With ``chirality`` (Cα centres; by default those of the target's topology),
wrong-handed particles are reflected at t_min (:func:`~boltzgen.sampling.chirality.fix_chirality`;
the model must be mirror symmetric, as E(3)-invariant networks are), so the reference density becomes 2 γ_{t_min} restricted to the
L-region. The target is exp(−u) on the all-L region
(:func:`~boltzgen.sampling.chirality.all_l_form`): particles with centres of both hands get zero
weight, and MCMC proposals that change any centre's hand are rejected. ``log_z`` then estimates
the normaliser of exp(−u) over the all-L region only (Z / 2 of the mirror pair for a
mirror-symmetric force field).

**Stages.** :func:`smc_sample` runs the stages of :mod:`boltzgen.sampling.stages` in order
(:func:`~boltzgen.sampling.stages.start_at_prior`, :func:`~boltzgen.sampling.stages.run_diffusion`,
:func:`~boltzgen.sampling.stages.fold_chirality`, :func:`~boltzgen.sampling.stages.run_annealing`,
:func:`~boltzgen.sampling.stages.run_final_moves`) under one :class:`SMCSettings`, whose defaults
are those of ``boltzgen sample``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from ..allocator import tune_malloc
from .exact import ExactMarginalModel
from .resampling import ess_fraction, log_mean_exp
from .settings import AnnealSettings, DiffusionSettings, FinalSettings, MoveSettings, ResampleSettings, SMCSettings
from .stages import (
    ParticleState,
    SMCProblem,
    SMCRecorder,
    anneal_grid,
    conditional_ess,
    fold_chirality,
    next_beta_increment,
    run_annealing,
    run_diffusion,
    run_final_moves,
    run_handover,
    start_at_prior,
)

__all__ = [
    "ExactMarginalModel",
    "SMCResult",
    "SMCSettings",
    "DiffusionSettings",
    "AnnealSettings",
    "FinalSettings",
    "MoveSettings",
    "ResampleSettings",
    "SMCRecorder",
    "conditional_ess",
    "next_beta_increment",
    "smc_sample",
]


# ---------------------------------------------------------------------------- result
#: Below this many effective particles an SMC estimate is flagged as untrustworthy.
MIN_TRUSTED_ESS = 10


def sampler_warnings(state: ParticleState, problem: SMCProblem, log_w: torch.Tensor) -> list:
    """What a finished run could not do as asked, each also issued as a ``RuntimeWarning``.

    Parameters
    ----------
    state : ParticleState
        The particles after the last stage.
    problem : SMCProblem
        The run's settings.
    log_w : Tensor, shape (B,)
        The final log-weights.

    Returns
    -------
    list of str
    """
    import warnings

    notes = []
    if state.anneal_capped_at is not None:
        notes.append(
            f"the adaptive annealing reached its cap of {problem.settings.anneal.max_levels} levels at "
            f"beta = {state.anneal_capped_at:.3g} and jumped to beta = 1: the last reweighting carries the rest "
            "and the weights may degenerate (raise --max-anneal or anneal.max_levels)"
        )
    ess = float(ess_fraction(log_w)) * state.n if torch.isfinite(log_w).any() else 0.0
    if ess < MIN_TRUSTED_ESS:
        notes.append(
            f"the final weights rest on {ess:.1f} effective particles (fewer than {MIN_TRUSTED_ESS}): "
            "estimates from them cannot be trusted"
        )
    notes.extend(_empty_state_notes(state, problem, log_w))
    for note in notes:
        warnings.warn(note, RuntimeWarning, stacklevel=3)
    return notes


def _empty_state_notes(state: ParticleState, problem: SMCProblem, log_w: torch.Tensor) -> list:
    """One note per named metastable state that holds no particle with weight at the end."""
    names = getattr(getattr(problem.states, "__self__", None), "names", None)
    if problem.states is None or not names:
        return []
    labels = np.asarray(problem.states((problem.length_scale * state.y).detach())).reshape(-1)
    weighted = torch.isfinite(log_w).cpu().numpy()
    return [
        f"state {name} holds no particle with weight at the end: its free energy is unknown (more particles, "
        "--balance-states, or a model whose samples reach it)"
        for k, name in enumerate(names)
        if not np.any(weighted & (labels == k))
    ]


def _lineage_ess(log_w: torch.Tensor, ancestors: torch.Tensor) -> float:
    from ..weights import lineage_ess

    if not bool(torch.isfinite(log_w).any()):
        return math.nan
    return lineage_ess(log_w.detach().cpu().numpy(), ancestors.detach().cpu().numpy())


@dataclass
class SMCResult:
    """Weighted particles and diagnostics of :func:`smc_sample`.

    Attributes
    ----------
    x : tensor (B, *event_shape), float64
        Particles in the target's units (nm for molecules): x = ℓ y.
    log_weights : tensor (B,), float64
        Unnormalised importance log-weights of the particles x (x-space densities, so they
        include the Jacobian d log ℓ); ``logsumexp(log_weights) − log B == log_z``.
    log_z : float
        Estimate of log ∫ exp(−u(x)) dx (see the module docstring).
    log_z_diffusion : float
        Estimate of log ∫ exp(−E(x/ℓ, t_min)) dx at the end of the diffusion stage (before any
        chirality fold).
    reduced_energy : tensor (B,), float64, or None
        u(x) of the final particles (None without a target).
    ess : tensor (L,), float64
        ESS / B after each reweighting: level 0 is the prior at t = 1, then one per diffusion step,
        then one per β.
    acceptance : tensor (L,), float64
        Mean MCMC acceptance at each level (NaN where no moves ran).
    step_size : tensor (L,), float64
        MCMC step size at each level, in model coordinates y (MALA h, HMC ε; NaN where none).
    t : tensor (L,), float64
        Diffusion time of each level (t_min for the annealing levels).
    beta : tensor (L,), float64
        β of each level (0 for the diffusion levels).
    resampled : list of int
        Levels after whose reweighting the particles were resampled.
    n_model_evals, n_target_evals : int
        Energy evaluations (per configuration) of the model and of the target.
    n_reflected : int
        Particles reflected to fix their chirality.
    length_scale : float
        ℓ, units of x per unit of y.
    dim : int
        Degrees of freedom d.
    final_acceptance : float
        Mean acceptance of the moves on the target after the last reweighting (NaN if none ran).
    final_md_acceptance, final_md_kept : float
        Of the final MD moves (``final.md_moves``): Metropolis acceptance, and the fraction of
        blocks of proposals kept in their state (NaN if none ran).
    n_ancestors, n_ancestors_anneal : int
        Distinct particles at t = 1, and at the start of the annealing, that the final particles
        descend from (B when nothing was resampled; at most k B at t = 1): the diversity left after resampling, which
        the ESS of the final weights does not show.
    ancestors : tensor (B,), int64, or None
        Index (0 … k B − 1, k = ``diffusion.particle_factor``) of each final particle's ancestor
        at t = 1, its lineage.
    lineage_ess : float
        :func:`boltzgen.weights.lineage_ess` of the final weights over those lineages: how many
        independent draws the weighted estimates rest on (at most ``n_ancestors``).
    settings : SMCSettings or None
        The settings of the run.
    warnings : list of str
        What the sampler could not do as asked (the adaptive annealing reached its cap and jumped
        to β = 1; the final weights rest on fewer than ten effective particles). Each is also
        issued as a ``RuntimeWarning``.
    """

    x: torch.Tensor
    log_weights: torch.Tensor
    log_z: float
    log_z_diffusion: float
    reduced_energy: Optional[torch.Tensor]
    ess: torch.Tensor
    acceptance: torch.Tensor
    step_size: torch.Tensor
    t: torch.Tensor
    beta: torch.Tensor
    resampled: list = field(default_factory=list)
    n_model_evals: int = 0
    n_target_evals: int = 0
    n_reflected: int = 0
    length_scale: float = 1.0
    dim: int = 0
    final_acceptance: float = math.nan
    final_md_acceptance: float = math.nan
    final_md_kept: float = math.nan
    n_ancestors: int = 0
    n_ancestors_anneal: int = 0
    ancestors: Optional[torch.Tensor] = None
    lineage_ess: float = math.nan
    settings: Optional[SMCSettings] = None
    warnings: list = field(default_factory=list)

    @classmethod
    def from_state(cls, state: ParticleState, problem: SMCProblem, recorder: SMCRecorder) -> "SMCResult":
        """The result of a finished run: particles in x, weights with the Jacobian ℓ^{-d}, traces.

        Parameters
        ----------
        state : ParticleState
        problem : SMCProblem
        recorder : SMCRecorder

        Returns
        -------
        SMCResult
        """
        ls = problem.length_scale
        lw = state.log_w + problem.dim * math.log(ls)  # densities of x = ℓ y carry the Jacobian ℓ^{-d}
        f64 = lambda v: torch.as_tensor(v, dtype=torch.float64)  # noqa: E731
        anneal = state.ancestors.get("anneal")
        start = state.ancestors["start"]
        notes = sampler_warnings(state, problem, lw)
        return cls(
            x=(ls * state.y).detach(),
            log_weights=lw.detach(),
            log_z=float(log_mean_exp(lw)),
            log_z_diffusion=state.log_z_diffusion,
            reduced_energy=None if state.u is None else state.u.detach(),
            ess=f64(recorder.ess_trace),
            acceptance=f64(recorder.acceptance),
            step_size=f64(recorder.step_sizes),
            t=f64(recorder.times),
            beta=f64(recorder.betas),
            resampled=list(recorder.resampled),
            n_model_evals=state.n_model_evals,
            n_target_evals=state.n_target_evals,
            n_reflected=state.n_reflected,
            length_scale=ls,
            dim=problem.dim,
            final_acceptance=float(np.mean(recorder.final_acceptance)) if recorder.final_acceptance else math.nan,
            final_md_acceptance=math.nan if recorder.final_md_acceptance is None else recorder.final_md_acceptance,
            final_md_kept=math.nan if recorder.final_md_kept is None else recorder.final_md_kept,
            n_ancestors=int(start.unique().numel()),
            n_ancestors_anneal=state.n if anneal is None else int(anneal.unique().numel()),
            ancestors=start.detach().cpu().clone(),
            lineage_ess=_lineage_ess(lw, start),
            settings=problem.settings,
            warnings=notes,
        )

    @property
    def n_particles(self) -> int:
        """int: number of particles B."""
        return int(self.x.shape[0])

    @property
    def weights(self) -> torch.Tensor:
        """Self-normalised weights (B,), float64."""
        return torch.softmax(self.log_weights, 0)

    @property
    def ess_trace(self) -> torch.Tensor:
        """ESS / B after each reweighting (L,), float64: the same as :attr:`ess`."""
        return self.ess

    @property
    def ess_fraction(self) -> float:
        """Final Kish ESS / B."""
        return ess_fraction(self.log_weights)

    def summary(self) -> dict:
        """JSON-serialisable scalars and traces (for metrics.json).

        Returns
        -------
        dict
            Scalars (``n_particles``, ``log_z``, ``log_z_diffusion``, ``ess_fraction``,
            ``min_ess_fraction``, evaluation counts, ``length_scale``, ``dim``, …) and per-level
            lists (``ess``, ``acceptance``, ``step_size``, ``t``, ``beta``; non-finite values as
            ``None``).
        """

        def lst(v):
            return [None if not math.isfinite(float(a)) else float(a) for a in v.tolist()]

        return {
            "n_particles": self.n_particles,
            "log_z": self.log_z,
            "log_z_diffusion": self.log_z_diffusion,
            "ess_fraction": self.ess_fraction,
            "min_ess_fraction": float(self.ess.min()),
            "n_resampling": len(self.resampled),
            "resampled": list(self.resampled),
            "n_model_evals": self.n_model_evals,
            "n_target_evals": self.n_target_evals,
            "n_reflected": self.n_reflected,
            "length_scale": self.length_scale,
            "dim": self.dim,
            "n_anneal_levels": int((self.beta > 0).sum()),
            "n_ancestors": self.n_ancestors,
            "n_ancestors_anneal": self.n_ancestors_anneal,
            "lineage_ess": self.lineage_ess if math.isfinite(self.lineage_ess) else None,
            "final_acceptance": self.final_acceptance if math.isfinite(self.final_acceptance) else None,
            "final_md_acceptance": self.final_md_acceptance if math.isfinite(self.final_md_acceptance) else None,
            "final_md_kept": self.final_md_kept if math.isfinite(self.final_md_kept) else None,
            "ess": lst(self.ess),
            "acceptance": lst(self.acceptance),
            "step_size": lst(self.step_size),
            "t": lst(self.t),
            "beta": lst(self.beta),
        }


# ---------------------------------------------------------------------------- the sampler
def smc_sample(
    model,
    target=None,
    n_particles: int = 1024,
    generator: Optional[torch.Generator] = None,
    *,
    settings: Optional[SMCSettings] = None,
    states: Optional[Callable] = None,
    recorder: Optional[SMCRecorder] = None,
    length_scale: Optional[float] = None,
    tilt_coordinate: Optional[Callable] = None,
) -> SMCResult:
    """SMC from the prior through the learned diffusion marginals to the target (module docstring).

    Parameters
    ----------
    model : DiffusionModel or TrainedModel
        :class:`~boltzgen.sampling.protocol.DiffusionModel`; a TrainedModel runs its ``inner``
        model on y = x / length_scale.
    target : TargetSystem, optional
        Final target exp(−u(x)), x in its own units; None stops at t_min (samples of the model).
    n_particles : int
        B (the diffusion stage draws ``settings.diffusion.particle_factor`` × B, resampled down
        to B as the annealing starts).
    generator : torch.Generator, optional
        Source of all random numbers; its device is the device of the run.
    settings : SMCSettings, optional
        Every setting, grouped by stage (default ``SMCSettings()``: the defaults of ``boltzgen sample``).
    states : callable or StateSet, optional
        x (B, *event_shape) float64 tensor in the target's units -> (B,) integer labels of
        metastable states (configurations are folded onto the L-form first when folding).
        Resampling then happens within each state, each state's ESS decides whether it is
        resampled, and an adaptive β step keeps the conditional ESS of every state at
        ``anneal.cess``; ``resampling.balance_states`` and ``resampling.denoised_labels`` act
        only with states. A state the model puts too high keeps its particles, with small
        weights, until the annealing corrects its weight; the estimator stays consistent.
    recorder : SMCRecorder, optional
        Receives the per-level trace (a fresh one per run by default).
    length_scale : float, optional
        ℓ (default: the TrainedModel's, else 1).
    tilt_coordinate : callable, optional
        With ``settings.tilt.kT`` ≠ 0, the smooth indicator of the rare states that the tilt
        lowers (default: the target's residues with φ > 0; :mod:`boltzgen.sampling.tilt`).

    Returns
    -------
    SMCResult
    """
    tune_malloc()  # the model's large temporaries recycled in the process (boltzgen.allocator)
    problem = SMCProblem.build(model, target, generator, settings, states, length_scale, tilt_coordinate)
    recorder = SMCRecorder() if recorder is None else recorder
    n_levels = len(problem.times) - 1 + (len(anneal_grid(problem.settings)) if target is not None else 0)
    recorder.start(n_levels, problem.settings.progress)
    try:
        state = start_at_prior(problem, problem.settings.diffusion.particle_factor * n_particles, recorder)
        run_diffusion(state, problem, recorder)
        if target is not None and problem.settings.anneal.handover == "laplace":
            run_handover(state, problem, recorder)
        else:
            fold_chirality(state, problem)
            if target is not None:
                run_annealing(state, problem, recorder, n_particles)
        if target is not None:
            run_final_moves(state, problem, recorder)
    finally:
        recorder.close()
    return SMCResult.from_state(state, problem, recorder)
