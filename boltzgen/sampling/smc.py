"""Sequential Monte Carlo along the reverse diffusion, then annealing to the target (DESIGN.md §4).

Particles y (model coordinates, y = x / ℓ with ℓ the model's length scale) move through the
unnormalised densities

    γ_1, γ_{t_1}, …, γ_{t_min}   with γ_t(y) = exp(−E(y, t))   (the learned energies), then
    π_β(y) ∝ γ_{t_min}(y)^{1−β} exp(−β u(ℓ y)),  0 < β_1 < … < β_K = 1   (the target u).

1. **Start** at t = 1: y ~ q_0 = N(0, c² I) (mean-free for molecules, c² = α_1² σ_data² + σ_1²),
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
   The β grid is fixed (linear, or given) or adaptive (``anneal_cess``): each β_k is the largest
   whose increment keeps the conditional ESS at a target value, chosen from the energies at hand.
   After β = 1, optional moves on the target alone (``final_mcmc_steps``) relax the particles
   without changing their weights (they leave exp(−u) invariant and need no model evaluation).
4. After every reweighting but the last, **resample** (systematic by default) when ESS/N < ``ess_threshold``
   (with ``states``: within each metastable state, so each keeps its particles and its weight; with
   ``denoised_states`` a particle's state during the diffusion is that of its denoised estimate);
   then, optionally, **MCMC moves** (MALA or HMC, :mod:`boltzgen.sampling.mcmc`) that leave the
   current density invariant. Step sizes h = κ · h_ref: h_ref follows the scale of the level's
   density (from the median gradient norm of the particles entering the moves, unless a step
   size is given), and κ is adapted between levels towards a target acceptance (it depends only
   on earlier levels). This is the usual adaptive SMC: consistent as N → ∞; pass
   ``adapt_rate=0`` and explicit step sizes for kernels fixed in advance.

**log Z.** With unnormalised log-weights l_i, Ẑ = (1/N) Σ exp(l_i) is an unbiased estimate of
the normaliser of the current density; resampling sets every l_i to log Ẑ, so the estimate
carries through (``log_z = logsumexp(log_weights) − log N`` at the end). The model works in
y = x / ℓ; the target's normaliser in x is Z_x = ℓ^d Z_y (d = 3(N − 1) for mean-free systems,
the number of coordinates otherwise), and ``log_z`` is reported in x:

    log_z ≈ log ∫ exp(−u(x)) dx      (over the zero-COM subspace for molecules).

Without a target, ``log_z`` estimates log ∫ exp(−E(x/ℓ, t_min)) dx instead.

**Chirality.** With ``chirality`` (Cα centres), wrong-handed particles are reflected at t_min
(:func:`~boltzgen.sampling.chirality.fix_chirality`; the model must be mirror symmetric, as
E(3)-invariant networks are), so the reference density becomes 2 γ_{t_min} restricted to the
L-region; the annealing targets are restricted to it too (MCMC proposals that change handedness
are rejected). ``log_z`` then estimates the normaliser of exp(−u) over the L-region only, which
is Z / 2 for a mirror-symmetric force field.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..diffusion.noise import event_dim, gaussian_log_prob, project_mean_free, sample_noise
from .chirality import chiral_centres, fix_chirality, in_l_region
from .mcmc import DEFAULT_TARGET_ACCEPTANCE, hmc_step, mala_step
from .resampling import RESAMPLING_METHODS, ess_fraction, log_mean_exp, resample_by_state
from .sde import (
    SDE_METHODS, TIME_SPACINGS, _event_shape, _mean_free, _model_device, _sigma_data, _t_min, model_energy_and_score,
    prior_log_prob, prior_variance, reverse_kernel, sample_prior, time_grid, unwrap_model,
)

__all__ = ["ExactMarginalModel", "SMCResult", "conditional_ess", "next_beta_increment", "smc_sample"]

LOG2 = math.log(2.0)


# ---------------------------------------------------------------------------- exact model
class ExactMarginalModel:
    """Exact diffusion energies E(y, t) = −log p_t(y) of an analytic target (a Gaussian mixture).

    A "model" for the samplers with F(t) = 0 (the energies are normalised): plug it into
    :func:`smc_sample` or :func:`~boltzgen.sampling.sde.reverse_sde` to check them against exact
    answers, or give it a different mixture (or a ``perturbation``) to get a deliberately wrong
    model.

    Parameters
    ----------
    target : GaussianMixture (anything with ``log_prob_t(y, t, schedule)`` and ``event_shape``)
    schedule : Schedule, optional
        Diffusion (default :class:`~boltzgen.diffusion.VPSchedule`).
    t_min : float
        Smallest diffusion time.
    perturbation : callable (y, t) -> (B,), optional
        Added to the energy: E(y, t) = −log p_t(y) + h(y, t) (differentiable in y).
    """

    mean_free = False

    def __init__(self, target, schedule=None, t_min: float = 1e-3, perturbation=None):
        from ..diffusion import VPSchedule

        self.target = target
        self.schedule = schedule if schedule is not None else VPSchedule()
        self.t_min = float(t_min)
        self.event_shape = tuple(target.event_shape)
        self.perturbation = perturbation
        self.dtype = torch.float64
        w = getattr(target, "weights", None)
        if w is not None and hasattr(target, "means"):
            mean = (w[:, None] * target.means).sum(0)
            var = (w[:, None] * (target.stds**2 + (target.means - mean) ** 2)).sum(0).mean()
            self.sigma_data = float(var.sqrt())
        else:
            self.sigma_data = 1.0

    def energy(self, y: torch.Tensor, t) -> torch.Tensor:
        """Exact diffusion energy −log p_t(y) (+ perturbation).

        Parameters
        ----------
        y : torch.Tensor, shape (B, D)
            Configurations (the target's standardised units).
        t : float or torch.Tensor of shape (B,)
            Diffusion time(s).

        Returns
        -------
        torch.Tensor, shape (B,), float64
            Normalised reduced energies, differentiable in ``y``.
        """
        y = y.to(torch.float64)
        e = -self.target.log_prob_t(y, t, self.schedule)
        if self.perturbation is not None:
            e = e + self.perturbation(y, t)
        return e

    def energy_and_score(self, y: torch.Tensor, t, create_graph: bool = False):
        """Energy and score −∇E by autograd.

        Parameters
        ----------
        y : torch.Tensor, shape (B, D)
            Configurations.
        t : float or torch.Tensor of shape (B,)
            Diffusion time(s).
        create_graph : bool
            Keep both attached to the graph (for higher derivatives); otherwise detached.

        Returns
        -------
        energy : torch.Tensor, shape (B,), float64
            −log p_t(y) (+ perturbation).
        score : torch.Tensor, shape (B, D), float64
            −∇_y E, units 1/y.
        """
        y = y.detach().to(torch.float64).requires_grad_(True)
        with torch.enable_grad():
            e = self.energy(y, t)
            (g,) = torch.autograd.grad(e.sum(), y, create_graph=create_graph)
        if not create_graph:
            return e.detach(), -g.detach()
        return e, -g

    def score(self, y: torch.Tensor, t, create_graph: bool = False) -> torch.Tensor:
        """Score −∇_y E(y, t); see :meth:`energy_and_score`.

        Returns
        -------
        torch.Tensor, shape (B, D), float64
        """
        return self.energy_and_score(y, t, create_graph)[1]

    def log_normaliser(self, t) -> torch.Tensor:
        """F(t) = 0 (normalised energies).

        Parameters
        ----------
        t : float or torch.Tensor, any shape
            Diffusion time(s).

        Returns
        -------
        torch.Tensor, shape of ``t``, float64
            Zeros.
        """
        return torch.zeros_like(torch.as_tensor(t, dtype=torch.float64))

    def __repr__(self) -> str:
        return f"ExactMarginalModel({getattr(self.target, 'name', self.target)!r}, {self.schedule!r})"


# ---------------------------------------------------------------------------- result
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
    n_ancestors, n_ancestors_anneal : int
        Distinct particles at t = 1, and at the start of the annealing, that the final particles
        descend from (B when nothing was resampled): the diversity left after resampling, which
        the ESS of the final weights does not show.
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
    n_ancestors: int = 0
    n_ancestors_anneal: int = 0

    @property
    def n_particles(self) -> int:
        """int: number of particles B."""
        return int(self.x.shape[0])

    @property
    def weights(self) -> torch.Tensor:
        """Self-normalised weights (B,), float64."""
        return torch.softmax(self.log_weights, 0)

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
            "n_particles": self.n_particles, "log_z": self.log_z, "log_z_diffusion": self.log_z_diffusion,
            "ess_fraction": self.ess_fraction, "min_ess_fraction": float(self.ess.min()),
            "n_resampling": len(self.resampled), "resampled": list(self.resampled),
            "n_model_evals": self.n_model_evals, "n_target_evals": self.n_target_evals,
            "n_reflected": self.n_reflected, "length_scale": self.length_scale, "dim": self.dim,
            "n_anneal_levels": int((self.beta > 0).sum()),
            "n_ancestors": self.n_ancestors, "n_ancestors_anneal": self.n_ancestors_anneal,
            "final_acceptance": self.final_acceptance if math.isfinite(self.final_acceptance) else None,
            "ess": lst(self.ess), "acceptance": lst(self.acceptance), "step_size": lst(self.step_size),
            "t": lst(self.t), "beta": lst(self.beta),
        }


# ---------------------------------------------------------------------------- helpers
def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


def _clean(e: torch.Tensor, g: torch.Tensor):
    """Energies +inf and gradients 0 wherever either is not finite."""
    ok = torch.isfinite(e) & torch.isfinite(g.reshape(g.shape[0], -1)).all(1)
    return torch.where(ok, e, torch.full_like(e, math.inf)), torch.where(_bcast(ok, g), g, torch.zeros_like(g))


def _add_log_w(lw: torch.Tensor, incr: torch.Tensor) -> torch.Tensor:
    """lw + incr with −inf (not NaN) for dead particles and non-finite increments."""
    out = lw + incr
    return torch.where(torch.isnan(out) | (out == math.inf), torch.full_like(out, -math.inf), out)


def conditional_ess(log_w: torch.Tensor, log_increment: torch.Tensor) -> float:
    """Conditional ESS of an incremental reweighting, as a fraction in [0, 1].

    CESS = (Σ_i W_i w_i)² / Σ_i W_i w_i² with W the normalised current weights and w the
    incremental weights (Zhou, Johansen & Aston 2016): the ESS fraction the increment alone
    would leave, 1 when it is constant over the particles.

    Parameters
    ----------
    log_w : tensor, shape (B,)
        Current log-weights (−inf for dead particles).
    log_increment : tensor, shape (B,)
        Log incremental weights (−inf allowed).

    Returns
    -------
    float
        The CESS fraction (0 if no live particle keeps any weight).
    """
    log_w_norm = log_w - torch.logsumexp(log_w, 0)
    a = torch.logsumexp(log_w_norm + log_increment, 0)
    b = torch.logsumexp(log_w_norm + 2.0 * log_increment, 0)
    if not bool(torch.isfinite(a)) or not bool(torch.isfinite(b)):
        return 0.0
    return float(torch.exp(2.0 * a - b).clamp(max=1.0))


def next_beta_increment(log_w: torch.Tensor, slope: torch.Tensor, remaining: float, cess: float,
                        iterations: int = 60) -> float:
    """The largest Δβ ≤ ``remaining`` whose increment Δβ · ``slope`` keeps the CESS at ``cess``.

    Parameters
    ----------
    log_w : tensor, shape (B,)
        Current log-weights.
    slope : tensor, shape (B,)
        d log w / dβ of each particle: E − u in the annealing (−inf for dead particles).
    remaining : float
        1 − β: the largest possible increment.
    cess : float in (0, 1)
        Target conditional ESS fraction.
    iterations : int
        Bisection steps.

    Returns
    -------
    float
        Δβ in (0, remaining]; ``remaining`` when even the full step keeps the CESS above target.
    """
    live = torch.isfinite(slope)
    centred = torch.where(live, slope - slope[live].mean() if bool(live.any()) else slope, slope)

    def cess_of(step: float) -> float:
        return conditional_ess(log_w, step * centred)

    if cess_of(remaining) >= cess:
        return remaining
    lo, hi = 0.0, remaining
    for _ in range(int(iterations)):
        mid = 0.5 * (lo + hi)
        if cess_of(mid) >= cess:
            lo = mid
        else:
            hi = mid
    return max(lo, remaining * 1e-9)  # always move forward


def _median_sq_norm(g: torch.Tensor) -> float:
    sq = g.reshape(g.shape[0], -1).pow(2).sum(1)
    sq = sq[torch.isfinite(sq) & (sq > 0)]
    return float(sq.median()) if sq.numel() else float("nan")


def _initial_step(kernel: str, scale2: float, d: int) -> float:
    """A step size for a Gaussian of per-coordinate variance ``scale2`` in d dimensions."""
    if kernel == "mala":
        return scale2 * d ** (-1.0 / 3.0)
    return math.sqrt(scale2) * d ** (-0.25)


class _StepSize:
    """Step size h = κ · h_ref of one stage's MCMC moves.

    ``auto`` (no step size given): h_ref is the step suited to a Gaussian whose per-coordinate
    variance is d / median‖∇U‖² over the particles entering the level's moves (for N(0, s² I),
    ‖∇U‖² ≈ d / s²; for anisotropic densities this picks the stiff directions), so the step
    follows the shrinking scales of the diffusion. Otherwise h_ref = the given step size. κ starts
    at 1 and is adapted between levels, log κ += rate · (mean acceptance − target).
    """

    def __init__(self, kernel: str, d: int, given: Optional[float], rate: float, alpha_star: float):
        self.kernel, self.d, self.rate, self.alpha_star = kernel, d, float(rate), alpha_star
        self.auto = given is None
        self.ref = 1.0 if given is None else float(given)
        self.kappa = 1.0
        if not self.auto and not self.ref > 0:
            raise ValueError(f"step sizes must be positive, got {given}")

    def value(self, grad: torch.Tensor) -> float:
        if self.auto:
            m = _median_sq_norm(grad)
            if math.isfinite(m) and m > 0:
                self.ref = _initial_step(self.kernel, self.d / m, self.d)
        return self.kappa * self.ref

    def update(self, acceptance: float) -> None:
        self.kappa *= math.exp(self.rate * (acceptance - self.alpha_star))


class _Counter:
    def __init__(self):
        self.model = 0
        self.target = 0


# ---------------------------------------------------------------------------- the sampler
def smc_sample(model, target=None, n_particles: int = 1024, generator: Optional[torch.Generator] = None, *,
               length_scale: Optional[float] = None, n_steps: int = 100, spacing: str = "quadratic",
               t_min: Optional[float] = None, kernel: str = "ddpm", ess_threshold: float = 0.5,
               resampling: str = "systematic", mcmc: str = "mala", mcmc_steps: int = 0,
               step_size: Optional[float] = None, target_acceptance: Optional[float] = None,
               n_leapfrog: int = 5, adapt_rate: float = 1.0, n_anneal: int = 16,
               betas: Optional[Sequence[float]] = None, anneal_cess: Optional[float] = None, max_anneal: int = 64,
               anneal_mcmc_steps: int = 5, anneal_step_size: Optional[float] = None, final_mcmc_steps: int = 0,
               tempering: float = 1.0, states: Optional[Callable] = None, denoised_states: bool = False,
               balance_states: bool = False, chirality=None,
               batch_size: Optional[int] = None, progress: bool = False) -> SMCResult:
    """SMC from the prior through the learned diffusion marginals to the target (module docstring).

    Parameters
    ----------
    model : diffusion model or TrainedModel
        ``energy(y, t)`` (and ``energy_and_score``), ``schedule``, ``event_shape``, ``t_min``,
        ``mean_free`` (see :mod:`boltzgen.sampling.sde`). A TrainedModel is unwrapped into its
        ``inner`` model on y = x / length_scale.
    target : TargetSystem, optional
        Final target exp(−u(x)), x in its own units; None stops at t_min (samples of the model).
    n_particles : int
        B (default 1024).
    generator : torch.Generator, optional
        Source of all random numbers; its device is the device of the run.
    length_scale : float, optional
        ℓ (default: the TrainedModel's, else 1).
    n_steps : int
        Diffusion steps from t = 1 to t_min (default 100).
    spacing : {"quadratic", "uniform", "log"}
        Time grid (:func:`~boltzgen.sampling.sde.time_grid`).
    t_min : float, optional
        Last diffusion time (default ``model.t_min``).
    kernel : {"ddpm", "euler"}
        Reverse-diffusion proposal M.
    ess_threshold : float
        Resample when ESS/B falls below this (default 0.5; 0 never, 1 always).
    resampling : {"systematic", "stratified", "multinomial", "residual"}
    mcmc : {"mala", "hmc"}
        MCMC kernel of the moves.
    mcmc_steps : int
        Moves per diffusion level (default 0: none), targeting exp(−E(y, t')).
    step_size : float, optional
        Step size of the diffusion-stage moves (y units; MALA h, HMC ε), then multiplied by the
        adapted κ; default: automatic, from the median gradient norm at each level.
    target_acceptance : float, optional
        Acceptance the step sizes are adapted to (default 0.574 MALA, 0.65 HMC).
    n_leapfrog : int
        Leapfrog steps per HMC move.
    adapt_rate : float
        Between levels, log κ += adapt_rate · (mean acceptance − target); 0 keeps κ = 1.
    n_anneal : int
        Number of β levels of the final stage, linear in β (default 16); ignored when ``betas``
        is given; 0 jumps straight to the target (plain importance sampling of the last stage).
        With ``anneal_cess``, the fewest levels: no step of β is larger than 1 / ``n_anneal``.
    betas : sequence of float, optional
        Explicit increasing β grid ending at 1.
    anneal_cess : float in (0, 1), optional
        Adaptive β grid: each next β is the largest one whose incremental weights keep the
        conditional ESS (Zhou, Johansen & Aston 2016; 1 = no loss) at this value, found by
        bisection on the energies already at hand (no extra evaluations). The number of levels
        then follows the mismatch between model and target: about std(E − u) · sqrt(2 (1 − c))⁻¹
        levels for a small loss 1 − c, at least ``n_anneal`` (more levels also mean more moves,
        which keep the particles diverse) and at most ``max_anneal``.
    max_anneal : int
        With ``anneal_cess``: the most levels (default 64); the last one then jumps to β = 1.
    anneal_mcmc_steps : int
        Moves per β level (default 5), using the target's forces.
    anneal_step_size : float, optional
        Step size of the annealing moves (y units), then multiplied by the adapted κ; default:
        automatic, from the median norm of ∇[(1 − β) E + β u] at each level (for a Gaussian of
        variance s² per coordinate, d / ‖∇U‖² ≈ s²), with κ carried over from the diffusion stage.
    final_mcmc_steps : int
        Moves on the target alone after the last reweighting (default 0). They leave exp(−u)
        invariant, so the weights stay as they are, and they need only the target's forces (no
        model evaluation): a cheap way to relax the particles locally (energy distribution) and to
        spread resampled copies apart. The step size is adapted after every move.
    tempering : float in (0, 1]
        Exponent b of the learned energies at t_min (default 1: none). The diffusion stage then
        targets exp(−b(t) E(y, t)) with b(t) falling linearly in t from 1 at t = 1 to b at t_min,
        and the annealing starts from exp(−b E(y, t_min)). b < 1 scales the model's free-energy
        differences between states by b, as the temperature T/b would, so rare states (a basin
        a few kT up) get more particles and their free energy a smaller error; the weights correct
        for it, at the price of a lower ESS (the tempered density is also wider in the stiff
        coordinates, which the annealing has to bring back). ``log_z_diffusion`` then refers to
        exp(−b E(y, t_min)).
    states : callable, optional
        x (B, *event_shape) float64 tensor in the target's units → (B,) integer labels of
        metastable states (e.g. φ > 0 and φ < 0 of a peptide; configurations are folded onto the
        L-form first when ``chirality`` is on). Resampling then happens within each state
        (:func:`~boltzgen.sampling.resampling.resample_by_state`), each state's ESS decides
        whether it is resampled, and an adaptive β step keeps the conditional ESS of every state
        at ``anneal_cess``. A state the model puts too high (DSM's mode blindness) keeps the
        particles the proposals put there, with small weights, instead of losing them before the
        annealing corrects its weight; the estimator stays consistent (only the resampling
        changes). The labels of noisy configurations at t > t_min need not mean anything (but
        see ``denoised_states``).
    denoised_states : bool
        During the diffusion stage, label each particle by its denoised estimate instead of its
        noisy configuration: Tweedie's formula E[y_0 | y_t] = (y_t − σ_t² ∇E(y, t)) / α_t, from
        the gradient at hand (no extra evaluation; untempered). Labels that need the fine
        structure of a configuration, such as a torsion angle, are noise until the noise is
        smaller than a bond, but the denoised estimate shows the state a particle is heading for
        much earlier (alanine dipeptide: the φ sign of E[y_0 | y_t] agrees with the final one for
        65–75 % of particles at t = 0.15–0.3, the noisy φ for 50 %), so each state keeps the
        particles it is going to get. Default False: where the labels are coarse functions of the
        coordinates (a mixture's modes) the noisy labels did as well or better. Only the
        resampling changes; the estimator stays consistent.
    balance_states : bool
        At the start of the annealing, give every state the same number of particles (each keeps
        its total weight: :func:`~boltzgen.sampling.resampling.resample_by_state` with
        ``balance=True``; needs ``states``). The annealing estimates each state's free-energy
        change from its own particles, so a state the model puts a few kT up would otherwise
        rest on a handful of them, and its free energy on their luck. Particles can still leave
        a state during the annealing.
    chirality : None, True, or (K, 4) array of (N, CA, C, CB) indices
        Fold the particles onto the L-form at t_min (True: the centres of ``target.topology``).
    batch_size : int, optional
        Evaluate the model in chunks of at most this many configurations (default: 128 on the
        CPU, all at once on a GPU; 0: all at once; :func:`~boltzgen.sampling.sde.model_energy_and_score`).
    progress : bool
        Show a progress bar on stderr.

    Returns
    -------
    SMCResult
    """
    m, ls = unwrap_model(model, length_scale)
    n = int(n_particles)
    if n < 1:
        raise ValueError(f"n_particles must be at least 1, got {n_particles}")
    if kernel not in SDE_METHODS:
        raise ValueError(f"unknown reverse kernel {kernel!r}; choose one of {SDE_METHODS}")
    if spacing not in TIME_SPACINGS:
        raise ValueError(f"unknown time spacing {spacing!r}; choose one of {TIME_SPACINGS}")
    if resampling not in RESAMPLING_METHODS:
        raise ValueError(f"unknown resampling method {resampling!r}; choose one of {sorted(RESAMPLING_METHODS)}")
    if mcmc not in DEFAULT_TARGET_ACCEPTANCE:
        raise ValueError(f"unknown MCMC kernel {mcmc!r}; choose one of {sorted(DEFAULT_TARGET_ACCEPTANCE)}")
    if not 0.0 <= ess_threshold <= 1.0:
        raise ValueError(f"ess_threshold must lie in [0, 1], got {ess_threshold}")
    if int(mcmc_steps) < 0 or int(anneal_mcmc_steps) < 0 or int(final_mcmc_steps) < 0:
        raise ValueError("mcmc_steps, anneal_mcmc_steps and final_mcmc_steps must be non-negative")
    if anneal_cess is not None and not 0.0 < float(anneal_cess) < 1.0:
        raise ValueError(f"anneal_cess must lie in (0, 1), got {anneal_cess}")
    if not 0.0 < float(tempering) <= 1.0:
        raise ValueError(f"tempering must lie in (0, 1], got {tempering}")
    if anneal_cess is not None and betas is not None:
        raise ValueError("give either betas (a fixed grid) or anneal_cess (an adaptive one), not both")
    if balance_states and states is None:
        raise ValueError("balance_states needs states (a function that labels the configurations)")
    alpha_star = DEFAULT_TARGET_ACCEPTANCE[mcmc] if target_acceptance is None else float(target_acceptance)
    ev = _event_shape(m)
    mf = _mean_free(m)
    d = event_dim(ev, mf)
    if target is not None and tuple(target.event_shape) != ev:
        raise ValueError(f"model configurations {ev} and target configurations {tuple(target.event_shape)} differ")
    tmin = _t_min(m, t_min)
    times = time_grid(n_steps, tmin, 1.0, spacing).tolist()
    if target is None:
        beta_grid: list = []
    elif betas is not None:
        beta_grid = [float(b) for b in betas]
        if not beta_grid or any(b1 <= b0 for b0, b1 in zip([0.0] + beta_grid[:-1], beta_grid)) \
                or abs(beta_grid[-1] - 1.0) > 1e-12:
            raise ValueError(f"betas must increase from above 0 to exactly 1, got {betas}")
        beta_grid[-1] = 1.0
    else:
        k = max(int(n_anneal), 1)
        beta_grid = [(i + 1) / k for i in range(k)]
        if int(n_anneal) == 0:
            anneal_mcmc_steps = 0
    if anneal_cess is not None:  # the grid is chosen on the way: steps of at most 1/n_anneal, at most max_anneal
        max_levels = max(int(max_anneal), len(beta_grid))
        max_increment = 1.0 / len(beta_grid)
        if int(max_anneal) < 1:
            raise ValueError(f"max_anneal must be at least 1, got {max_anneal}")
    centres = None
    if chirality is not None and chirality is not False:
        if chirality is True:
            topo = getattr(target, "topology", None) if target is not None else getattr(model, "topology", None)
            if topo is None:
                raise ValueError("chirality=True needs a target (or model) with a topology")
            centres = chiral_centres(topo)
        else:
            centres = np.asarray(chirality, dtype=np.int64).reshape(-1, 4)
        if len(ev) != 2 or ev[1] != 3:
            raise ValueError("chirality fixing needs molecular (N, 3) configurations")
        if centres.shape[0] == 0:
            centres = None

    count = _Counter()
    step_fn = mala_step if mcmc == "mala" else hmc_step
    extra = {"n_leapfrog": int(n_leapfrog)} if mcmc == "hmc" else {}

    def exponent(t):  # b(t): 1 at t = 1, ``tempering`` at t_min, linear in t
        return 1.0 - (1.0 - float(tempering)) * min(1.0, (1.0 - float(t)) / (1.0 - tmin))

    def model_eval(y, t):
        count.model += y.shape[0]
        e, s = model_energy_and_score(m, y, t, batch_size)
        e, g = _clean(e, -s)
        if tempering != 1.0:
            b = exponent(t)
            e, g = b * e, b * g
        return e, g  # (tempered) energy and its gradient ∇E

    ess_tr, acc_tr, h_tr, t_tr, b_tr, resampled = [], [], [], [], [], []
    # index of each particle's ancestor at t = 1 and at the start of the annealing: how many
    # distinct ones survive the resampling measures the diversity the ESS does not show
    ancestors = {"start": torch.arange(n)}
    final_acc: list = []  # acceptance of the moves on the target after the last reweighting

    def state_labels(z):
        if centres is not None:
            z = fix_chirality(z, centres)[0]
        labels = torch.as_tensor(np.asarray(states((ls * z).detach())), device=z.device).reshape(-1)
        if labels.shape != (z.shape[0],) or torch.is_floating_point(labels):
            raise ValueError(f"states must map {z.shape[0]} configurations to {z.shape[0]} integer labels, "
                             f"got {labels.dtype} of shape {tuple(labels.shape)}")
        return labels

    def denoised(z, grad, t):  # Tweedie's E[y_0 | y_t], score −∇E(y_t, t) (grad is tempered: untemper it)
        tt = torch.tensor(float(t), dtype=torch.float64)
        if float(m.schedule.alpha(tt)) <= 1e-12:  # α = 0: no signal left to denoise
            return z
        return m.schedule.denoise(z, -grad / exponent(t), tt)

    def maybe_resample(lw, tensors, final=False):
        # Never after the last reweighting: the output keeps its importance weights (resampling
        # there would only add noise and hide the ESS of the final weights). ``tensors[0]`` is y;
        # without ``states`` all particles form one state (resampled when the global ESS is low).
        level = len(ess_tr) - 1
        if final or (states is None and ess_tr[-1] >= ess_threshold):
            return lw, tensors
        if not bool(torch.isfinite(lw).any()):
            raise RuntimeError(f"SMC: every particle has weight zero at level {level} "
                               f"(t = {t_tr[-1]:g}, beta = {b_tr[-1]:g})")
        if states is None:
            labels = torch.zeros(n, dtype=torch.long)
        elif denoised_states and b_tr[-1] == 0.0 and t_tr[-1] > tmin:  # diffusion stage: E[y_0 | y_t]
            labels = state_labels(denoised(tensors[0], tensors[2], t_tr[-1]))
        else:
            labels = state_labels(tensors[0])
        out = resample_by_state(lw, labels, generator, resampling, ess_threshold)
        if out is None:
            return lw, tensors
        return out[1], take(out[0], tensors)

    def take(idx, tensors):  # the particles after a resampling: slot j holds ancestor idx[j]
        for key in ancestors:
            ancestors[key] = ancestors[key][idx]
        resampled.append(len(ess_tr) - 1)
        return [v[idx] for v in tensors]

    def record(lw, t, beta):
        ess_tr.append(ess_fraction(lw))
        t_tr.append(float(t))
        b_tr.append(float(beta))

    from tqdm import tqdm

    bar = tqdm(total=len(times) - 1 + len(beta_grid), desc="SMC", unit="level", file=sys.stderr,
               disable=not progress, leave=False)
    try:
        # -------------------------------------------------------------- prior at t = 1
        c2 = prior_variance(m)
        y = sample_prior(m, n, generator, prior_var=c2, device=_model_device(m, generator))
        e, g = model_eval(y, times[0])
        lw = _add_log_w(torch.zeros(n, dtype=torch.float64, device=y.device), -e - prior_log_prob(m, y, c2))
        record(lw, times[0], 0.0)
        acc_tr.append(math.nan)
        h_tr.append(math.nan)
        lw, (y, e, g) = maybe_resample(lw, [y, e, g])
        steps = _StepSize(mcmc, d, step_size, adapt_rate, alpha_star)
        if steps.auto:
            steps.ref = _initial_step(mcmc, c2, d)

        # -------------------------------------------------------------- diffusion levels
        for t, t_next in zip(times[:-1], times[1:]):
            mean, var_m = reverse_kernel(m.schedule, y, -g, t, t_next, kernel, _sigma_data(m))
            y_new = mean + math.sqrt(var_m) * sample_noise(y.shape, generator, mf, dtype=y.dtype, device=y.device)
            e_new, g_new = model_eval(y_new, t_next)
            a, v = m.schedule.transition(t_next, t)
            log_l = gaussian_log_prob(y, float(a) * y_new, float(v), mean_free=mf)
            log_m = gaussian_log_prob(y_new, mean, var_m, mean_free=mf)
            lw = _add_log_w(lw, -e_new + e + log_l - log_m)
            y, e, g = y_new, e_new, g_new
            record(lw, t_next, 0.0)
            lw, (y, e, g) = maybe_resample(lw, [y, e, g], final=target is None and t_next == times[-1])
            if int(mcmc_steps) > 0:
                def energy_t(z, _t=t_next):
                    return model_eval(z, _t)

                accs = []
                h = steps.value(g)
                for _ in range(int(mcmc_steps)):
                    out = step_fn(y, energy_t, h, generator, mean_free=mf, current=(e, g), **extra)
                    y, e, g = out.x, out.energy, out.grad
                    accs.append(float(out.accept_prob.mean()))
                acc_tr.append(float(np.mean(accs)))
                h_tr.append(h)
                steps.update(acc_tr[-1])
            else:
                acc_tr.append(math.nan)
                h_tr.append(math.nan)
            bar.update(1)

        log_z_diffusion = float(log_mean_exp(lw)) + d * math.log(ls)

        # -------------------------------------------------------------- chirality fold
        n_reflected = 0
        fold = 0.0
        if centres is not None:
            y, n_reflected, flipped = fix_chirality(y, centres, return_mask=True)
            g = torch.where(_bcast(flipped, g), -g, g)  # ∇E(−y) = −∇E(y) for a mirror-symmetric E
            fold = LOG2

        # -------------------------------------------------------------- equal shares of the states
        if balance_states and target is not None:
            idx, lw = resample_by_state(lw, state_labels(y), generator, resampling, balance=True)
            y, e, g = take(idx, [y, e, g])
        ancestors["anneal"] = torch.arange(n)

        # -------------------------------------------------------------- annealing to the target
        u = None
        if target is not None:
            stash = {}

            def target_eval(z):
                count.target += z.shape[0]
                uu, force = target.reduced_energy_and_force(ls * z)
                uu = uu.to(torch.float64).to(z.device)
                gu = -ls * force.to(torch.float64).to(z.device)
                if mf:
                    gu = project_mean_free(gu)
                uu, gu = _clean(uu, gu)
                if centres is not None:
                    inside = in_l_region(z, centres)
                    uu = torch.where(inside, uu, torch.full_like(uu, math.inf))
                    gu = torch.where(_bcast(inside, gu), gu, torch.zeros_like(gu))
                return uu, gu

            u, gu = target_eval(y)
            a_steps = _StepSize(mcmc, d, anneal_step_size, adapt_rate, alpha_star)
            if a_steps.auto and steps.auto and int(mcmc_steps) > 0:
                a_steps.kappa = steps.kappa
            beta_prev, level = 0.0, 0
            while beta_prev < 1.0:
                ref = e - fold
                ok = torch.isfinite(u) & torch.isfinite(ref)
                slope = torch.where(ok, ref - u, torch.full_like(u, -math.inf))  # d log w / d beta
                if anneal_cess is None:
                    beta = beta_grid[level]
                elif level == max_levels - 1:
                    beta = 1.0
                else:
                    remaining = 1.0 - beta_prev
                    if states is None:
                        full = next_beta_increment(lw, slope, remaining, float(anneal_cess))
                    else:  # the smallest step any state allows
                        labels = state_labels(y)
                        masks = [labels == s_ for s_ in torch.unique(labels)]
                        full = min((next_beta_increment(lw[m], slope[m], remaining, float(anneal_cess))
                                    for m in masks if bool(torch.isfinite(lw[m] + slope[m]).any())),
                                   default=remaining)
                    step = min(full, max_increment)
                    if remaining - step < 0.25 * max_increment:  # no sliver of a last level
                        step = full
                    beta = 1.0 if step >= remaining * (1.0 - 1e-12) else beta_prev + step
                level += 1
                incr = torch.where(ok, (beta - beta_prev) * slope, torch.full_like(u, -math.inf))
                lw = _add_log_w(lw, incr)
                record(lw, tmin, beta)
                lw, (y, e, g, u, gu) = maybe_resample(lw, [y, e, g, u, gu], final=beta >= 1.0)
                if int(anneal_mcmc_steps) > 0:
                    def energy_b(z, _b=beta):
                        ez, gz = model_eval(z, tmin)
                        uz, guz = target_eval(z)
                        stash["parts"] = (ez, gz, uz, guz)
                        tot = (1.0 - _b) * ez + _b * uz
                        grad = (1.0 - _b) * gz + _b * guz
                        bad = ~(torch.isfinite(ez) & torch.isfinite(uz))
                        tot = torch.where(bad, torch.full_like(tot, math.inf), tot)
                        return tot, grad

                    accs = []
                    h_a = a_steps.value((1.0 - beta) * g + beta * gu)
                    for _ in range(int(anneal_mcmc_steps)):
                        cur = ((1.0 - beta) * e + beta * u, (1.0 - beta) * g + beta * gu)
                        out = step_fn(y, energy_b, h_a, generator, mean_free=mf, current=cur, **extra)
                        ez, gz, uz, guz = stash.pop("parts")
                        acc = out.accepted
                        y = out.x
                        e = torch.where(acc, ez, e)
                        u = torch.where(acc, uz, u)
                        g = torch.where(_bcast(acc, g), gz, g)
                        gu = torch.where(_bcast(acc, gu), guz, gu)
                        accs.append(float(out.accept_prob.mean()))
                    acc_tr.append(float(np.mean(accs)))
                    h_tr.append(h_a)
                    a_steps.update(acc_tr[-1])
                else:
                    acc_tr.append(math.nan)
                    h_tr.append(math.nan)
                beta_prev = beta
                bar.update(1)

            # ---------------------------------------------------------- moves on the target alone
            for _ in range(int(final_mcmc_steps)):
                h_f = a_steps.value(gu)
                out = step_fn(y, target_eval, h_f, generator, mean_free=mf, current=(u, gu), **extra)
                y, u, gu = out.x, out.energy, out.grad
                final_acc.append(float(out.accept_prob.mean()))
                a_steps.update(final_acc[-1])
    finally:
        bar.close()

    lw = lw + d * math.log(ls)  # weights of x = ℓ y: the densities of x carry the Jacobian ℓ^{-d}
    log_z = float(log_mean_exp(lw))
    f64 = lambda v: torch.as_tensor(v, dtype=torch.float64)  # noqa: E731
    return SMCResult(
        x=(ls * y).detach(), log_weights=lw.detach(), log_z=log_z, log_z_diffusion=log_z_diffusion,
        reduced_energy=None if u is None else u.detach(), ess=f64(ess_tr), acceptance=f64(acc_tr),
        step_size=f64(h_tr), t=f64(t_tr), beta=f64(b_tr), resampled=resampled, n_model_evals=count.model,
        n_target_evals=count.target, n_reflected=n_reflected, length_scale=ls, dim=d,
        final_acceptance=float(np.mean(final_acc)) if final_acc else math.nan,
        n_ancestors=int(ancestors["start"].unique().numel()),
        n_ancestors_anneal=int(ancestors["anneal"].unique().numel()),
    )
