"""The stages of SMC along the diffusion path, each a function over a :class:`ParticleState`.

:func:`~boltzgen.sampling.smc.smc_sample` runs them in order; each also runs alone (tests, custom
schedules). What stays fixed during a run (model, target, settings, grids, state labels) is an
:class:`SMCProblem`; the particles and everything that changes with them (positions, log-weights,
energies and gradients at hand, step-size controller, ancestors, evaluation counts) are a
:class:`ParticleState`; diagnostics go to an :class:`SMCRecorder`.

1. :func:`start_at_prior` (or :func:`start_from` given particles): level 0.
2. :func:`run_diffusion`: reverse-kernel proposals from t = 1 down to t_min, reweighting,
   resampling, optional MCMC moves.
3. :func:`fold_chirality`: wrong-handed particles reflected onto the L-form at t_min.
4. :func:`run_annealing`: optional equal shares of the states, or fewer particles than the
   diffusion drew (:func:`resample_to`), then
   levels β from exp(−E(y, t_min)) to the target exp(−u), on a fixed or adaptive grid; or
   :func:`run_handover` (``anneal.handover: laplace``): one importance step from the noisy
   particles to clean ones drawn from a Laplace approximation of the target's posterior
   (instead of 3 and 4; it folds the chirality after the step).
5. :func:`run_final_moves`: moves on the target alone, weights unchanged.

The weights, the log Z estimate and the kernels are described in :mod:`boltzgen.sampling.smc`
and docs/design.md.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from ..diffusion.laplace import laplace_log_marginal, target_energy_in_model_units
from ..diffusion.noise import event_dim, gaussian_log_prob, project_mean_free, sample_noise
from .chirality import all_l_form, chiral_centres, fix_chirality
from .mcmc import StepSize, adapted_moves, hmc_step, initial_step_size, mala_step, mts_hmc_step
from .resampling import ess_fraction, log_mean_exp, resample_by_state
from .sde import (
    model_device,
    model_energy_and_score,
    model_event_shape,
    model_mean_free,
    model_sigma_data,
    model_t_min,
    prior_log_prob,
    prior_variance,
    reverse_kernel,
    sample_prior,
    time_grid,
    unwrap_model,
)
from .settings import SMCSettings
from .tilt import StateTilt, torsion_coordinate

__all__ = [
    "SMCFailure",
    "SMCProblem",
    "ParticleState",
    "SMCRecorder",
    "StepSize",
    "initial_step_size",
    "conditional_ess",
    "next_beta_increment",
    "anneal_grid",
    "start_at_prior",
    "start_from",
    "maybe_resample",
    "run_diffusion",
    "fold_chirality",
    "balance_states",
    "resample_to",
    "run_annealing",
    "run_handover",
    "run_final_moves",
]

LOG2 = math.log(2.0)


# ---------------------------------------------------------------------------- small helpers
def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


def _clean(e: torch.Tensor, g: torch.Tensor):
    """Energies +inf and gradients 0 wherever either is not finite."""
    ok = torch.isfinite(e) & torch.isfinite(g.reshape(g.shape[0], -1)).all(1)
    return torch.where(ok, e, torch.full_like(e, math.inf)), torch.where(_bcast(ok, g), g, torch.zeros_like(g))


def _stay_in_states(problem: "SMCProblem", labels: Optional[torch.Tensor], old: tuple, new: tuple) -> tuple:
    """``new`` where a move kept its particle's state (``labels``), ``old`` where it left it.

    ``old`` and ``new`` are tuples of per-particle tensors whose first entry is the positions; with
    ``labels`` None (states not kept) ``new`` itself.
    """
    if labels is None:
        return new
    stay = problem.labels(new[0]) == labels
    return tuple(None if n is None else torch.where(_bcast(stay, n), n, o) for o, n in zip(old, new))


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


def next_beta_increment(
    log_w: torch.Tensor, slope: torch.Tensor, remaining: float, cess: float, iterations: int = 60
) -> float:
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


def anneal_grid(settings: SMCSettings) -> list:
    """The fixed β grid of the annealing (with ``anneal.cess``: the grid whose step bounds the adaptive one).

    Parameters
    ----------
    settings : SMCSettings

    Returns
    -------
    list of float
        ``anneal.betas``, else ``n_levels`` equal steps up to 1 (one jump to 1 for 0 levels).
    """
    a = settings.anneal
    if a.betas is not None:
        return list(a.betas)
    k = max(a.n_levels, 1)
    return [(i + 1) / k for i in range(k)]


class SMCFailure(RuntimeError):
    """The particles have nothing left to carry: every weight is zero (all of them outside the
    target's support, e.g. with mixed-hand centres after the chirality fold, or outside every
    state), so no estimate exists. A failure of the model or the settings, not of the input."""


# ---------------------------------------------------------------------------- the fixed parts
@dataclass
class SMCProblem:
    """What stays fixed during one SMC run: model, target, settings, grids, state labels.

    Build it with :meth:`build`. The evaluation methods count into the :class:`ParticleState`
    they are given.

    Attributes
    ----------
    model : DiffusionModel
        The model in y (a TrainedModel unwrapped).
    length_scale : float
        ℓ, x = ℓ y (units of x per unit of y).
    target : TargetSystem or None
        The final target exp(−u(x)); None stops at t_min.
    generator : torch.Generator or None
    settings : SMCSettings
    states : callable or None
        x (B, *event) float64 tensor in target units -> (B,) integer labels.
    centres : (K, 4) int array or None
        Chiral centres to fold at t_min.
    dim : int
        Degrees of freedom d (3(N − 1) for mean-free models).
    mean_free : bool
    t_min : float
    times : list of float
        Diffusion grid from 1 down to t_min.
    tilt : StateTilt or None
        The bias towards rare states added to the model energies (``settings.tilt``).
    """

    model: object
    length_scale: float
    target: object
    generator: Optional[torch.Generator]
    settings: SMCSettings
    states: Optional[Callable]
    centres: Optional[np.ndarray]
    dim: int
    mean_free: bool
    t_min: float
    times: list
    tilt: Optional[StateTilt] = None

    @classmethod
    def build(
        cls,
        model,
        target=None,
        generator=None,
        settings: Optional[SMCSettings] = None,
        states=None,
        length_scale: Optional[float] = None,
        tilt_coordinate: Optional[Callable] = None,
    ) -> "SMCProblem":
        """Check the model against the target and settings and fix the grids.

        Parameters
        ----------
        model : DiffusionModel or TrainedModel
        target : TargetSystem, optional
        generator : torch.Generator, optional
        settings : SMCSettings, optional
            Default: ``SMCSettings()``.
        states : callable or StateSet, optional
            Labels of metastable states (a :class:`~boltzgen.states.StateSet`'s ``assign`` is used).
        length_scale : float, optional
            ℓ (default: the TrainedModel's, else 1).
        tilt_coordinate : callable, optional
            With ``settings.tilt.kT`` ≠ 0: x (B, *event_shape) -> (B,) smooth indicator of the
            rare states (:class:`~boltzgen.sampling.tilt.StateTilt`); default: the count of the
            target's residues with φ > 0 (:func:`~boltzgen.sampling.tilt.torsion_coordinate`).

        Returns
        -------
        SMCProblem

        Raises
        ------
        ValueError
            For a shape mismatch, ``balance_states`` without ``states``, ``diffusion.particle_factor``
            above 1 without a target, an impossible chirality
            fold, or a tilt without a target or without a coordinate.
        """
        settings = SMCSettings() if settings is None else settings
        if not isinstance(settings, SMCSettings):
            raise ValueError(f"settings must be an SMCSettings, got {type(settings).__name__}")
        m, ls = unwrap_model(model, length_scale)
        ev = model_event_shape(m)
        if target is not None and tuple(target.event_shape) != ev:
            raise ValueError(f"model configurations {ev} and target configurations {tuple(target.event_shape)} differ")
        if settings.resampling.balance_states and states is None:
            raise ValueError("balance_states needs states (a function that labels the configurations)")
        factor = settings.diffusion.particle_factor
        if factor > 1 and target is None:
            raise ValueError(
                f"diffusion.particle_factor {factor} needs a target: the annealing to it resamples the particles down"
            )
        if states is not None and hasattr(states, "assign"):
            states = states.assign
        t_min = model_t_min(m, settings.diffusion.t_min)
        times = time_grid(settings.diffusion.n_steps, t_min, 1.0, settings.diffusion.spacing).tolist()
        centres = _resolve_centres(settings.chirality, model, target, ev)
        return cls(
            model=m,
            length_scale=ls,
            target=target,
            generator=generator,
            settings=settings,
            states=states,
            centres=centres,
            dim=event_dim(ev, model_mean_free(m)),
            mean_free=model_mean_free(m),
            t_min=t_min,
            times=times,
            tilt=_resolve_tilt(settings.tilt, target, tilt_coordinate, ls, centres),
        )

    def exponent(self, t: float) -> float:
        """Tempering exponent b(t): 1 at t = 1, ``diffusion.tempering`` at t_min, linear in t.

        Parameters
        ----------
        t : float
            Diffusion time.

        Returns
        -------
        float
        """
        b = self.settings.diffusion.tempering
        return 1.0 - (1.0 - b) * min(1.0, (1.0 - float(t)) / (1.0 - self.t_min))

    def model_eval(self, state: "ParticleState", y: torch.Tensor, t: float):
        """(Tempered) model energies b(t) E(y, t) and their gradients; +inf / 0 where not finite.

        Parameters
        ----------
        state : ParticleState
            Counts the evaluations.
        y : Tensor, shape (B, *event_shape)
            Configurations in model units.
        t : float
            Diffusion time.

        Returns
        -------
        energy : Tensor, shape (B,)
        grad : Tensor, shape (B, *event_shape)
        """
        state.n_model_evals += y.shape[0]
        e, s = model_energy_and_score(self.model, y, t, self.settings.batch_size)
        e, g = _clean(e, -s)
        if self.settings.diffusion.tempering != 1.0:
            b = self.exponent(t)
            e, g = b * e, b * g
        bias = None if self.tilt is None else self.tilt.energy_and_grad(y, t)
        if bias is not None:
            gb = project_mean_free(bias[1]) if self.mean_free else bias[1]
            e, g = e + bias[0].to(e.dtype), g + gb.to(g.dtype)
        return e, g

    def target_eval(self, state: "ParticleState", y: torch.Tensor):
        """Target energies u(ℓ y) and their gradients in y; +inf outside the all-L region when folding.

        Parameters
        ----------
        state : ParticleState
            Counts the evaluations.
        y : Tensor, shape (B, *event_shape)
            Configurations in model units.

        Returns
        -------
        u : Tensor, shape (B,), float64
            Reduced target energies (kT).
        grad_u : Tensor, shape (B, *event_shape), float64
            ∇_y u(ℓ y) (mean-free for molecules).
        """
        state.n_target_evals += y.shape[0]
        uu, force = self.target.reduced_energy_and_force(self.length_scale * y)
        uu = uu.to(torch.float64).to(y.device)
        gu = -self.length_scale * force.to(torch.float64).to(y.device)
        if self.mean_free:
            gu = project_mean_free(gu)
        uu, gu = _clean(uu, gu)
        if self.centres is not None:
            inside = all_l_form(y, self.centres)
            uu = torch.where(inside, uu, torch.full_like(uu, math.inf))
            gu = torch.where(_bcast(inside, gu), gu, torch.zeros_like(gu))
        return uu, gu

    def labels(self, y: torch.Tensor) -> torch.Tensor:
        """State labels of model configurations (folded onto the L-form first when folding); all 0
        (one state) without ``states``.

        Parameters
        ----------
        y : Tensor, shape (B, *event_shape)
            Configurations in model units (the labeller sees ℓ y, in the target's units).

        Returns
        -------
        Tensor, shape (B,), integer

        Raises
        ------
        ValueError
            When the labeller does not return one integer label per configuration.
        """
        if self.states is None:
            return torch.zeros(y.shape[0], dtype=torch.long, device=y.device)
        if self.centres is not None:
            y = fix_chirality(y, self.centres)[0]
        labels = torch.as_tensor(np.asarray(self.states((self.length_scale * y).detach())), device=y.device).reshape(-1)
        if labels.shape != (y.shape[0],) or torch.is_floating_point(labels):
            raise ValueError(
                f"states must map {y.shape[0]} configurations to {y.shape[0]} integer labels, "
                f"got {labels.dtype} of shape {tuple(labels.shape)}"
            )
        return labels

    def kept_labels(self, y: torch.Tensor) -> Optional[torch.Tensor]:
        """The labels that moves must keep (``anneal.keep_states`` with states), else None.

        Parameters
        ----------
        y : Tensor, shape (B, *event_shape)
            Configurations in model units.

        Returns
        -------
        Tensor, shape (B,), integer, or None
        """
        if self.states is None or not self.settings.anneal.keep_states:
            return None
        return self.labels(y)

    def denoised(self, y: torch.Tensor, grad: torch.Tensor, t: float) -> torch.Tensor:
        """Tweedie's E[y_0 | y_t] from the (tempered) gradient at hand; y itself where α_t = 0.

        Parameters
        ----------
        y : Tensor, shape (B, *event_shape)
            Noisy configurations at time t.
        grad : Tensor, shape (B, *event_shape)
            Gradient of the tempered energy b(t) E(y, t) (untempered here).
        t : float
            Diffusion time.

        Returns
        -------
        Tensor, shape (B, *event_shape)
        """
        tt = torch.tensor(float(t), dtype=torch.float64)
        if float(self.model.schedule.alpha(tt)) <= 1e-12:
            return y
        return self.model.schedule.denoise(y, -grad / self.exponent(t), tt)

    def step_kernel(self, kernel: Optional[str] = None, n_leapfrog: Optional[int] = None):
        """The MCMC step function of ``moves.kernel`` (or of ``kernel``) and its extra keyword arguments.

        Parameters
        ----------
        kernel : {"mala", "hmc"}, optional
            Another kernel than ``moves.kernel``.
        n_leapfrog : int, optional
            HMC leapfrog steps per move (default: ``moves.n_leapfrog``).

        Returns
        -------
        step : callable
            :func:`~boltzgen.sampling.mcmc.mala_step` or :func:`~boltzgen.sampling.mcmc.hmc_step`.
        options : dict
        """
        mv = self.settings.moves
        if (mv.kernel if kernel is None else kernel) == "mala":
            return mala_step, {}
        return hmc_step, {"n_leapfrog": mv.n_leapfrog if n_leapfrog is None else n_leapfrog}

    def new_step_size(self, given: Optional[float], kernel: Optional[str] = None) -> StepSize:
        """A step-size controller of ``moves.kernel`` (or of ``kernel``).

        Parameters
        ----------
        given : float or None
            Fixed reference step size in model units (None: automatic, from the gradients).
        kernel : {"mala", "hmc"}, optional
            Another kernel than ``moves.kernel`` (its default target acceptance then applies
            unless ``moves.target_acceptance`` is given).

        Returns
        -------
        StepSize
        """
        mv = self.settings.moves
        kernel = mv.kernel if kernel is None else kernel
        return StepSize(kernel, self.dim, given, mv.adapt_rate, mv.acceptance_for(kernel))


def _resolve_tilt(settings, target, coordinate, length_scale: float, centres) -> Optional[StateTilt]:
    if settings.kT == 0.0:
        return None
    if target is None:
        raise ValueError("tilt.kT needs a target: the annealing to the target is what removes the tilt")
    if coordinate is None:
        from ..states import phi_torsions

        quads = [atoms for _, atoms in phi_torsions(getattr(target, "topology", None))]
        if not quads:
            raise ValueError(
                "tilt.kT needs a coordinate of the rare states: a target with backbone φ torsions, "
                "or tilt_coordinate (a function of the configurations)"
            )
        coordinate = torsion_coordinate(np.stack(quads), settings.sharpness, centres)
    return StateTilt(coordinate, settings.kT, settings.t_on, settings.t_full, length_scale)


def _resolve_centres(chirality, model, target, event_shape) -> Optional[np.ndarray]:
    if chirality is False:
        return None
    if chirality in (True, "auto"):
        topo = getattr(target, "topology", None) if target is not None else getattr(model, "topology", None)
        if topo is None:
            if chirality == "auto":
                return None
            raise ValueError("chirality=True needs a target (or model) with a topology")
        centres = chiral_centres(topo)
    else:
        centres = np.asarray(chirality, dtype=np.int64).reshape(-1, 4)
    if len(event_shape) != 2 or event_shape[1] != 3:
        raise ValueError("chirality fixing needs molecular (N, 3) configurations")
    return centres if centres.shape[0] > 0 else None


# ---------------------------------------------------------------------------- the particles
@dataclass
class ParticleState:
    """The particles of an SMC run and everything that changes with them.

    Attributes
    ----------
    y : tensor (B, *event_shape), float64
        Positions in model coordinates.
    log_w : tensor (B,), float64
        Unnormalised log-weights of the densities in y (−inf for dead particles).
    energy, grad : tensors (B,), (B, *event_shape)
        (Tempered) model energy b(t) E(y, t) at the current time and its gradient.
    t : float
        Current diffusion time.
    beta : float
        Current annealing level (0 during the diffusion).
    ess : float
        ESS / B of ``log_w``.
    level : int
        Index of the current level (0 = the start).
    step_size : StepSize
        The current stage's step-size controller.
    u, grad_u : tensors (B,), (B, *event_shape), or None
        Target energy u(ℓ y) and its gradient in y, once the annealing has started.
    fold : float
        log 2 after a chirality fold (the reference density is then 2 γ_{t_min} on the L-region), else 0.
    ancestors : dict of str -> tensor (B,) int64
        For each key, the index of each particle's ancestor when the key was set ("start": t = 1,
        "anneal": the start of the annealing).
    anneal_capped_at : float or None
        β from which the adaptive annealing jumped to 1 because it reached ``anneal.max_levels``.
    n_model_evals, n_target_evals, n_reflected : int
        Energy evaluations (per configuration) of the model and of the target; particles reflected.
    log_z_diffusion : float
        log Z estimate in x at the end of the diffusion stage (NaN before).
    """

    y: torch.Tensor
    log_w: torch.Tensor
    energy: torch.Tensor
    grad: torch.Tensor
    t: float
    step_size: StepSize
    beta: float = 0.0
    ess: float = 1.0
    level: int = 0
    u: Optional[torch.Tensor] = None
    grad_u: Optional[torch.Tensor] = None
    fold: float = 0.0
    ancestors: dict = field(default_factory=dict)
    n_model_evals: int = 0
    n_target_evals: int = 0
    n_reflected: int = 0
    log_z_diffusion: float = math.nan
    anneal_capped_at: Optional[float] = None

    @property
    def n(self) -> int:
        """int: number of particles B."""
        return int(self.y.shape[0])

    def take(self, idx: torch.Tensor) -> None:
        """Apply a resampling: slot j now holds ancestor ``idx[j]`` (positions, energies, ancestors).

        Parameters
        ----------
        idx : Tensor, shape (B,), int64
            Ancestor index of each slot.
        """
        for key in self.ancestors:
            self.ancestors[key] = self.ancestors[key][idx]
        self.y, self.energy, self.grad = self.y[idx], self.energy[idx], self.grad[idx]
        if self.u is not None:
            self.u, self.grad_u = self.u[idx], self.grad_u[idx]


# ---------------------------------------------------------------------------- diagnostics
class SMCRecorder:
    """Collects the per-level trace of an SMC run (and shows a progress bar).

    Attributes
    ----------
    times, betas, ess_trace : list of float
        Diffusion time, β and ESS / B after each reweighting (level 0 is the start).
    acceptance, step_sizes : list of float
        Mean MCMC acceptance and step size (model units) of each level's moves (NaN where none).
    resampled : list of int
        Levels after whose reweighting the particles were resampled.
    final_acceptance : list of float
        Mean acceptance of each final move on the target.
    final_md_acceptance, final_md_kept : float or None
        Of the final MD moves: the Metropolis acceptance and the fraction of blocks kept in their
        state (None without them).
    """

    def __init__(self):
        self.times, self.betas, self.ess_trace = [], [], []
        self.acceptance, self.step_sizes = [], []
        self.resampled, self.final_acceptance = [], []
        self.final_md_acceptance, self.final_md_kept = None, None
        self._bar = None

    def start(self, n_levels: int, progress: bool = False) -> None:
        """Open the progress bar.

        Parameters
        ----------
        n_levels : int
            About how many levels the run has.
        progress : bool
            Show the bar on stderr.
        """
        from tqdm import tqdm

        self._bar = tqdm(total=n_levels, desc="SMC", unit="level", file=sys.stderr, disable=not progress, leave=False)

    def level(self, t: float, beta: float, ess: float) -> None:
        """Record a reweighting.

        Parameters
        ----------
        t : float
            Diffusion time (t_min during the annealing).
        beta : float
            Annealing β (0 during the diffusion).
        ess : float
            ESS / B after the reweighting.
        """
        self.ess_trace.append(float(ess))
        self.times.append(float(t))
        self.betas.append(float(beta))

    def particles(self, state: "ParticleState") -> None:
        """Look at the particles after a reweighting (before any resampling): a no-op here.

        A subclass may record more than the trace, e.g. the weight and the distinct ancestors
        (``state.ancestors["start"]``) of each metastable state level by level
        (``benchmarks/smc_lineages.py``). It must not change the state.

        Parameters
        ----------
        state : ParticleState
            The particles, their log-weights, energies and gradients at the level's t and β.
        """

    def moves(self, acceptance: float = math.nan, step_size: float = math.nan) -> None:
        """Record the moves after a level.

        Parameters
        ----------
        acceptance : float
            Mean acceptance (NaN: no moves).
        step_size : float
            Step size in model units (NaN: no moves).
        """
        self.acceptance.append(acceptance)
        self.step_sizes.append(step_size)

    def resampling(self, level: int) -> None:
        """Record a resampling.

        Parameters
        ----------
        level : int
            The level after whose reweighting the particles were resampled.
        """
        self.resampled.append(level)

    def final_move(self, acceptance: float) -> None:
        """Record one final move on the target alone.

        Parameters
        ----------
        acceptance : float
            Its mean acceptance.
        """
        self.final_acceptance.append(acceptance)

    def final_md(self, acceptance: float, kept: float) -> None:
        """Record the final Metropolis-adjusted MD moves (``final.md_moves``).

        Parameters
        ----------
        acceptance : float
            Fraction of the proposals that the Metropolis test accepted.
        kept : float
            Fraction of the blocks of proposals that stayed in their state.
        """
        self.final_md_acceptance, self.final_md_kept = acceptance, kept

    def advance(self) -> None:
        """One level done (progress bar)."""
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        """Close the progress bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# ---------------------------------------------------------------------------- stages
def _reweight(state: ParticleState, incr: torch.Tensor, t: float, beta: float, recorder: SMCRecorder) -> None:
    state.log_w = _add_log_w(state.log_w, incr)
    state.t, state.beta, state.ess = float(t), float(beta), ess_fraction(state.log_w)
    state.level += 1
    recorder.level(t, beta, state.ess)
    recorder.particles(state)


def start_at_prior(problem: SMCProblem, n_particles: int, recorder: SMCRecorder) -> ParticleState:
    """Level 0: B draws of the prior N(0, c² I) at t = 1, weighted by exp(−E(y, 1)) / prior.

    Parameters
    ----------
    problem : SMCProblem
    n_particles : int
        B ≥ 1.
    recorder : SMCRecorder

    Returns
    -------
    ParticleState
        At t = 1 (resampled if the ESS is already low).
    """
    n = int(n_particles)
    if n < 1:
        raise ValueError(f"n_particles must be at least 1, got {n_particles}")
    m = problem.model
    c2 = prior_variance(m)
    y = sample_prior(m, n, problem.generator, prior_var=c2, device=model_device(m, problem.generator))
    state = ParticleState(
        y=y,
        log_w=torch.zeros(n, dtype=torch.float64, device=y.device),
        energy=y,
        grad=y,
        t=problem.times[0],
        step_size=problem.new_step_size(problem.settings.diffusion.step_size),
        ancestors={"start": torch.arange(n)},
    )
    state.energy, state.grad = problem.model_eval(state, y, problem.times[0])
    state.log_w = _add_log_w(state.log_w, -state.energy - prior_log_prob(m, y, c2))
    state.ess = ess_fraction(state.log_w)
    recorder.level(problem.times[0], 0.0, state.ess)
    recorder.particles(state)
    recorder.moves()
    maybe_resample(state, problem, recorder)
    if state.step_size.auto:
        state.step_size.ref = initial_step_size(problem.settings.moves.kernel, c2, problem.dim)
    return state


def start_from(
    problem: SMCProblem, y: torch.Tensor, t: float, recorder: SMCRecorder, log_w: Optional[torch.Tensor] = None
) -> ParticleState:
    """Level 0 from given particles y at diffusion time t (e.g. exact samples of p_t, to run a later stage alone).

    Parameters
    ----------
    problem : SMCProblem
    y : tensor (B, *event_shape)
        Model coordinates.
    t : float
        Their diffusion time (``problem.t_min`` before :func:`run_annealing`).
    recorder : SMCRecorder
    log_w : tensor (B,), optional
        Their log-weights (default 0: unweighted draws of the normalised density).

    Returns
    -------
    ParticleState
    """
    y = y.detach().to(torch.float64)
    n = y.shape[0]
    lw = torch.zeros(n, dtype=torch.float64, device=y.device) if log_w is None else log_w.to(torch.float64)
    state = ParticleState(
        y=y,
        log_w=lw,
        energy=y,
        grad=y,
        t=float(t),
        ess=ess_fraction(lw),
        step_size=problem.new_step_size(problem.settings.diffusion.step_size),
        ancestors={"start": torch.arange(n)},
    )
    state.energy, state.grad = problem.model_eval(state, y, t)
    recorder.level(t, 0.0, state.ess)
    recorder.moves()
    return state


def maybe_resample(state: ParticleState, problem: SMCProblem, recorder: SMCRecorder, final: bool = False) -> None:
    """Resample after a reweighting when the ESS (of each state, with ``states``) is below the threshold.

    Never after the last reweighting (``final``): the output keeps its importance weights.
    Without ``states`` all particles form one state. With ``states`` and
    ``resampling.denoised_labels``, diffusion-stage particles are labelled by their denoised estimate.

    Parameters
    ----------
    state : ParticleState
        The particles.
    problem : SMCProblem
        Model, target, settings and states of the run.
    recorder : SMCRecorder
        Receives the trace.
    final : bool
        Whether this was the last reweighting.

    Raises
    ------
    SMCFailure
        When every particle has weight zero.
    """
    rs = problem.settings.resampling
    if final or (problem.states is None and state.ess >= rs.ess_threshold):
        return
    if not bool(torch.isfinite(state.log_w).any()):
        raise SMCFailure(
            f"SMC: every particle has weight zero at level {state.level} (t = {state.t:g}, beta = {state.beta:g}): "
            "all of them are outside the target's support (for a peptide: centres of both hands after the "
            "chirality fold; the sample check's sample_d_centre_fraction says how often the model makes them); "
            "try more particles, a smaller --t-min with --mcmc-steps, or a model with net.relative_chirality"
        )
    if problem.states is not None and rs.denoised_labels and state.beta == 0.0 and state.t > problem.t_min:
        labels = problem.labels(problem.denoised(state.y, state.grad, state.t))
    else:
        labels = problem.labels(state.y)
    out = resample_by_state(state.log_w, labels, problem.generator, rs.method, rs.ess_threshold)
    if out is not None:
        state.log_w = out[1]
        state.take(out[0])
        recorder.resampling(state.level)


def _diffusion_moves(state: ParticleState, problem: SMCProblem, recorder: SMCRecorder) -> None:
    k = problem.settings.diffusion.mcmc_steps
    if k == 0:
        recorder.moves()
        return
    step_fn, extra = problem.step_kernel()
    t = state.t

    def energy_t(z):
        return problem.model_eval(state, z, t)

    state.y, (state.energy, state.grad), acceptance, h = adapted_moves(
        step_fn,
        state.y,
        energy_t,
        (state.energy, state.grad),
        state.step_size,
        k,
        problem.generator,
        mean_free=problem.mean_free,
        **extra,
    )
    recorder.moves(acceptance, h)


def _kernel_step(state: ParticleState, problem: SMCProblem, t: float, t_next: float) -> torch.Tensor:
    """Move by the reverse kernel M of the learned score; log increment with the exact forward kernel L."""
    m, mf, g = problem.model, problem.mean_free, problem.generator
    y = state.y
    mean, var_m = reverse_kernel(
        m.schedule, y, -state.grad, t, t_next, problem.settings.diffusion.kernel, model_sigma_data(m)
    )
    y_new = mean + math.sqrt(var_m) * sample_noise(y.shape, g, mf, dtype=y.dtype, device=y.device)
    e_new, g_new = problem.model_eval(state, y_new, t_next)
    a, v = m.schedule.transition(t_next, t)
    log_l = gaussian_log_prob(y, float(a) * y_new, float(v), mean_free=mf)
    log_m = gaussian_log_prob(y_new, mean, var_m, mean_free=mf)
    incr = -e_new + state.energy + log_l - log_m
    state.y, state.energy, state.grad = y_new, e_new, g_new
    return incr


def _annealed_step(state: ParticleState, problem: SMCProblem, t: float, t_next: float) -> torch.Tensor:
    """Rescale y by c = sqrt(c²(t') / c²(t)), the ratio of the marginals' scales
    (:func:`prior_variance`; a deterministic map); log increment E(y, t) − E(c y, t') + d log c.

    The moves that follow (on exp(−E(y, t'))) make this annealed importance sampling.
    """
    c = math.sqrt(prior_variance(problem.model, t_next) / prior_variance(problem.model, t))
    y_new = state.y * c
    e_new, g_new = problem.model_eval(state, y_new, t_next)
    incr = state.energy - e_new + problem.dim * math.log(c)
    state.y, state.energy, state.grad = y_new, e_new, g_new
    return incr


def run_diffusion(state: ParticleState, problem: SMCProblem, recorder: SMCRecorder) -> ParticleState:
    """The diffusion stage: one level per step of ``problem.times`` from the state's t = 1 to t_min.

    With ``diffusion.weights`` "kernel", each level proposes y' ~ M(y' | y) (the reverse kernel of
    the learned score) and reweights by −E(y', t') + log L(y | y') + E(y, t) − log M(y' | y) with L
    the exact forward kernel; with "annealed", it rescales y' = c y by the ratio c of the
    marginals' scales (:func:`prior_variance` at both times) and reweights by
    E(y, t) − E(y', t') + d log c (annealed importance sampling). Then it resamples when due and
    runs ``diffusion.mcmc_steps`` moves on exp(−E(y, t')). Sets ``state.log_z_diffusion``.

    Parameters
    ----------
    state : ParticleState
        The particles.
    problem : SMCProblem
        Model, target, settings and states of the run.
    recorder : SMCRecorder
        Receives the trace.

    Returns
    -------
    ParticleState
        The same object, at t_min.
    """
    step = _annealed_step if problem.settings.diffusion.weights == "annealed" else _kernel_step
    times = problem.times
    for t, t_next in zip(times[:-1], times[1:]):
        incr = step(state, problem, t, t_next)
        _reweight(state, incr, t_next, 0.0, recorder)
        maybe_resample(state, problem, recorder, final=problem.target is None and t_next == times[-1])
        _diffusion_moves(state, problem, recorder)
        recorder.advance()
    state.log_z_diffusion = float(log_mean_exp(state.log_w)) + problem.dim * math.log(problem.length_scale)
    return state


def fold_chirality(state: ParticleState, problem: SMCProblem) -> ParticleState:
    """Reflect wrong-handed particles onto the L-form (no-op without chiral centres).

    The model must be mirror symmetric, so E and its gradient carry over (∇E(−y) = −∇E(y));
    the reference density becomes 2 γ_{t_min} on the L-region (``state.fold`` = log 2).

    Parameters
    ----------
    state : ParticleState
        The particles at t_min.
    problem : SMCProblem
        Holds the chiral centres.

    Returns
    -------
    ParticleState
        The same object.
    """
    if problem.centres is None:
        return state
    state.y, state.n_reflected, flipped = fix_chirality(state.y, problem.centres, return_mask=True)
    state.grad = torch.where(_bcast(flipped, state.grad), -state.grad, state.grad)
    state.fold = LOG2
    return state


def balance_states(state: ParticleState, problem: SMCProblem, recorder: SMCRecorder) -> ParticleState:
    """Give every state the same number of particles, each keeping its total weight (needs ``states``).

    Parameters
    ----------
    state : ParticleState
        The particles.
    problem : SMCProblem
        Model, target, settings and states of the run.
    recorder : SMCRecorder
        Receives the trace.

    Returns
    -------
    ParticleState
        The same object, resampled.
    """
    return resample_to(state, problem, recorder, state.n, balance=True)


def resample_to(
    state: ParticleState, problem: SMCProblem, recorder: SMCRecorder, n: int, balance: bool = False
) -> ParticleState:
    """Resample the particles into n slots, each state keeping its total weight (unbiased; the
    log Z estimate carries over, :func:`~boltzgen.sampling.resampling.resample_by_state`).

    The states share the slots equally with ``balance`` (which needs ``states``), else in
    proportion to their particle counts; without ``states`` all particles form one state. The
    annealing uses it to bring the ``diffusion.particle_factor`` × n particles of the diffusion
    stage down to n.

    Parameters
    ----------
    state : ParticleState
        The particles.
    problem : SMCProblem
        Model, target, settings and states of the run.
    recorder : SMCRecorder
        Receives the trace.
    n : int
        Particles after the resampling.
    balance : bool
        Equal shares per state.

    Returns
    -------
    ParticleState
        The same object, resampled to n particles.
    """
    rs = problem.settings.resampling
    labels = problem.labels(state.y)
    idx, state.log_w = resample_by_state(state.log_w, labels, problem.generator, rs.method, balance=balance, n_out=n)
    state.take(idx)
    state.ess = float(ess_fraction(state.log_w))
    recorder.resampling(state.level)
    return state


def _next_beta(
    state: ParticleState, problem: SMCProblem, slope: torch.Tensor, beta_prev: float, level: int, grid: list
) -> float:
    """β of annealing level ``level`` + 1: the fixed grid's, or the adaptive choice (per state with ``states``)."""
    cess = problem.settings.anneal.cess
    if cess is None:
        return grid[level]
    if level == max(problem.settings.anneal.max_levels, len(grid)) - 1:
        if beta_prev < 1.0:
            state.anneal_capped_at = beta_prev
        return 1.0
    remaining, max_increment = 1.0 - beta_prev, 1.0 / len(grid)
    if problem.states is None:
        full = next_beta_increment(state.log_w, slope, remaining, cess)
    else:  # the smallest step any state allows
        labels = problem.labels(state.y)
        masks = [labels == s for s in torch.unique(labels)]
        full = min(
            (
                next_beta_increment(state.log_w[k], slope[k], remaining, cess)
                for k in masks
                if bool(torch.isfinite(state.log_w[k] + slope[k]).any())
            ),
            default=remaining,
        )
    step = min(full, max_increment)
    if remaining - step < 0.25 * max_increment:  # no sliver of a last level
        step = full
    return 1.0 if step >= remaining * (1.0 - 1e-12) else beta_prev + step


def _anneal_mts_moves(state: ParticleState, problem: SMCProblem, recorder: SMCRecorder, n_moves: int) -> None:
    """Multiple-time-step HMC moves on (1 − β) E + β u: the model's force outside, the target's inside."""
    beta, k = state.beta, problem.settings.anneal.inner_steps
    eps = k * state.step_size.value((1.0 - beta) * state.grad + beta * state.grad_u)

    def slow(z):
        return problem.model_eval(state, z, problem.t_min)

    def fast(z):
        return problem.target_eval(state, z)

    accs, labels = [], problem.kept_labels(state.y)
    for _ in range(n_moves):
        current = (state.energy, state.grad, state.u, state.grad_u)
        out = mts_hmc_step(
            state.y,
            slow,
            fast,
            eps,
            problem.generator,
            weights=(1.0 - beta, beta),
            n_inner=k,
            mean_free=problem.mean_free,
            current=current,
        )
        state.y, state.energy, state.grad, state.u, state.grad_u = _stay_in_states(
            problem,
            labels,
            (state.y,) + current,
            (out.x, out.slow, out.slow_grad, out.fast, out.fast_grad),
        )
        accs.append(float(out.accept_prob.mean()))
    recorder.moves(float(np.mean(accs)), eps)
    state.step_size.update(float(np.mean(accs)))


def _anneal_moves(state: ParticleState, problem: SMCProblem, recorder: SMCRecorder, n_moves: int) -> None:
    if n_moves == 0:
        recorder.moves()
        return
    if problem.settings.anneal.inner_steps > 0:
        _anneal_mts_moves(state, problem, recorder, n_moves)
        return
    step_fn, extra = problem.step_kernel()
    beta, stash = state.beta, {}

    def energy_b(z):  # (1 − β) E + β u, keeping both parts of the last evaluation
        ez, gz = problem.model_eval(state, z, problem.t_min)
        uz, guz = problem.target_eval(state, z)
        stash["parts"] = (ez, gz, uz, guz)
        tot = (1.0 - beta) * ez + beta * uz
        bad = ~(torch.isfinite(ez) & torch.isfinite(uz))
        return torch.where(bad, torch.full_like(tot, math.inf), tot), (1.0 - beta) * gz + beta * guz

    accs, labels = [], problem.kept_labels(state.y)
    h = state.step_size.value((1.0 - beta) * state.grad + beta * state.grad_u)
    for _ in range(n_moves):
        cur = ((1.0 - beta) * state.energy + beta * state.u, (1.0 - beta) * state.grad + beta * state.grad_u)
        out = step_fn(state.y, energy_b, h, problem.generator, mean_free=problem.mean_free, current=cur, **extra)
        ez, gz, uz, guz = stash.pop("parts")
        acc, before = out.accepted, (state.y, state.energy, state.grad, state.u, state.grad_u)
        moved = (
            out.x,
            torch.where(acc, ez, state.energy),
            torch.where(_bcast(acc, state.grad), gz, state.grad),
            torch.where(acc, uz, state.u),
            torch.where(_bcast(acc, state.grad_u), guz, state.grad_u),
        )
        state.y, state.energy, state.grad, state.u, state.grad_u = _stay_in_states(problem, labels, before, moved)
        accs.append(float(out.accept_prob.mean()))
    recorder.moves(float(np.mean(accs)), h)
    state.step_size.update(float(np.mean(accs)))


def run_annealing(
    state: ParticleState, problem: SMCProblem, recorder: SMCRecorder, n_particles: Optional[int] = None
) -> ParticleState:
    """The annealing stage: from exp(−E(y, t_min)) (× 2 on the L-region after a fold) to the target.

    With ``resampling.balance_states`` the states first get equal shares, and with fewer
    ``n_particles`` than the state holds (the diffusion's ``particle_factor``) the particles are
    first resampled down to them (:func:`resample_to`).
    At each level β_k, log w += (β_k − β_{k−1}) (E(y, t_min) − fold − u(ℓ y)); then resampling
    when due (never after β = 1) and ``anneal.mcmc_steps`` moves on (1 − β) E + β u with the
    target's forces. The step-size controller starts from the diffusion stage's κ when that
    stage ran automatic-step moves.

    Parameters
    ----------
    state : ParticleState
        The particles.
    problem : SMCProblem
        Model, target, settings and states of the run.
    recorder : SMCRecorder
        Receives the trace.
    n_particles : int, optional
        Particles of the annealing (default: as many as the state holds).

    Returns
    -------
    ParticleState
        The same object, at β = 1, with ``u`` and ``grad_u``.
    """
    s = problem.settings
    if problem.target is None:
        raise ValueError("the annealing needs a target")
    n_particles = state.n if n_particles is None else int(n_particles)
    if s.resampling.balance_states or n_particles != state.n:
        resample_to(state, problem, recorder, n_particles, balance=s.resampling.balance_states)
    state.ancestors["anneal"] = torch.arange(state.n)
    state.u, state.grad_u = problem.target_eval(state, state.y)
    steps = problem.new_step_size(s.anneal.step_size, "hmc" if s.anneal.inner_steps else None)
    if steps.auto and state.step_size.auto and s.diffusion.mcmc_steps > 0 and not s.anneal.inner_steps:
        steps.kappa = state.step_size.kappa
    state.step_size = steps
    grid = anneal_grid(s)
    n_moves = 0 if s.anneal.betas is None and s.anneal.n_levels == 0 else s.anneal.mcmc_steps
    beta_prev, level = 0.0, 0
    while beta_prev < 1.0:
        ok = torch.isfinite(state.u) & torch.isfinite(state.energy - state.fold)
        slope = torch.where(ok, state.energy - state.fold - state.u, torch.full_like(state.u, -math.inf))
        beta = _next_beta(state, problem, slope, beta_prev, level, grid)
        level += 1
        incr = torch.where(ok, (beta - beta_prev) * slope, torch.full_like(state.u, -math.inf))
        _reweight(state, incr, problem.t_min, beta, recorder)
        maybe_resample(state, problem, recorder, final=beta >= 1.0)
        _anneal_moves(state, problem, recorder, n_moves)
        beta_prev = beta
        recorder.advance()
    return state


def run_handover(state: ParticleState, problem: SMCProblem, recorder: SMCRecorder) -> ParticleState:
    """The Laplace hand-over: one importance step from the noisy particles at t_min to the target.

    With (a, v) the forward kernel from 0 to t_min, each particle y_t draws a clean y_0 from q,
    the Gaussian (Laplace) approximation of the posterior exp(−u(ℓ y_0)) N(y_t; a y_0, v) at its
    mode (damped Newton steps from Tweedie's denoised estimate,
    :func:`~boltzgen.diffusion.laplace.laplace_log_marginal`), and is reweighted by

        log w += −u(ℓ y_0) + log N(y_t; a y_0, v) − log q(y_0 | y_t) + E(y_t, t_min).

    The extended target exp(−u(ℓ y_0)) N(y_t; a y_0, v) has the target as its y_0 marginal, so
    weights and log Z are exact at any t_min; the step is efficient where q is close to the
    posterior (low noise) and the model close to the exact marginal there. With chiral centres,
    wrong-handed y_0 are reflected after the step (u is mirror symmetric), the reference counts
    both hands (log w −= log 2) and mixed-handed y_0 get weight zero.

    Parameters
    ----------
    state : ParticleState
        The particles at t_min (not folded).
    problem : SMCProblem
        Model, target, settings and states of the run.
    recorder : SMCRecorder
        Receives the trace.

    Returns
    -------
    ParticleState
        The same object, at β = 1, with ``u`` and ``grad_u``.
    """
    if problem.target is None:
        raise ValueError("the hand-over needs a target")
    a, v = (float(z) for z in problem.model.schedule.transition(0.0, state.t))
    target_energy = target_energy_in_model_units(problem.target, problem.length_scale)

    def energy_and_grad(y):  # counted
        state.n_target_evals += y.shape[0]
        return target_energy(y)

    start = problem.denoised(state.y, state.grad, state.t)
    post = laplace_log_marginal(
        energy_and_grad, state.y, a, v, start, n_draws=1, mean_free=problem.mean_free, generator=problem.generator
    )
    incr, y0 = post.log_w[:, 0] + state.energy, post.x[:, 0]
    if problem.centres is not None:
        y0, state.n_reflected = fix_chirality(y0, problem.centres)[:2]
        incr = torch.where(all_l_form(y0, problem.centres), incr - LOG2, torch.full_like(incr, -math.inf))
        state.fold = LOG2
    state.ancestors["anneal"] = torch.arange(state.n)
    state.y = y0
    state.u, state.grad_u = problem.target_eval(state, y0)
    _reweight(state, incr, state.t, 1.0, recorder)
    recorder.moves()
    recorder.advance()
    return state


def run_final_moves(state: ParticleState, problem: SMCProblem, recorder: SMCRecorder) -> ParticleState:
    """``final.mcmc_steps`` moves on the target alone; the weights stay as they are.

    They leave exp(−u) invariant and need only the target's forces. With ``final.kernel: same``
    the step size continues the state's controller (the annealing's); with another kernel it is
    that kernel's own, automatic from the gradients. Either is adapted after every move.

    Parameters
    ----------
    state : ParticleState
        The particles.
    problem : SMCProblem
        Model, target, settings and states of the run.
    recorder : SMCRecorder
        Receives the trace.

    Returns
    -------
    ParticleState
        The same object.
    """
    if problem.target is None:
        raise ValueError("the final moves need a target")
    if state.u is None:
        state.u, state.grad_u = problem.target_eval(state, state.y)
    final = problem.settings.final
    step_fn, extra = problem.step_kernel()
    step_size = state.step_size
    if final.kernel != "same":  # a kernel of their own, with a step size of its own
        step_fn, extra = problem.step_kernel(final.kernel, final.n_leapfrog)
        step_size = problem.new_step_size(None, final.kernel)

    def target_energy(z):
        return problem.target_eval(state, z)

    labels = problem.kept_labels(state.y)
    for _ in range(final.mcmc_steps):
        h = step_size.value(state.grad_u)
        out = step_fn(
            state.y,
            target_energy,
            h,
            problem.generator,
            mean_free=problem.mean_free,
            current=(state.u, state.grad_u),
            **extra,
        )
        state.y, state.u, state.grad_u = _stay_in_states(
            problem, labels, (state.y, state.u, state.grad_u), (out.x, out.energy, out.grad)
        )
        recorder.final_move(float(out.accept_prob.mean()))
        step_size.update(recorder.final_acceptance[-1])
    if final.md_moves > 0:
        _final_md_moves(state, problem, recorder, labels)
    return state


def _final_md_moves(state: ParticleState, problem: SMCProblem, recorder: SMCRecorder, labels) -> None:
    """``final.md_moves`` HMC proposals with the atoms' masses (OpenMM), undone per block where
    they leave the particle's kept state or the L-region of a chirality fold."""
    from .openmm_hmc import hmc_moves

    system = getattr(problem.target, "system", None)
    if system is None or getattr(problem.target, "temperature", None) is None:
        raise ValueError(f"final.md_moves needs an OpenMM target; {problem.target.name} is not one")
    final, ls = problem.settings.final, problem.length_scale
    alive = torch.isfinite(state.log_w)
    dtype, device = state.y.dtype, state.y.device
    if labels is not None:
        labels = labels.to(device)

    def allowed(old, new):
        y = torch.as_tensor(new / ls, dtype=dtype, device=device)
        ok = torch.ones(y.shape[0], dtype=torch.bool, device=device)
        if labels is not None:
            ok &= problem.labels(y) == labels[alive]
        if problem.centres is not None:
            ok &= all_l_form(y, problem.centres)
        return ok.cpu().numpy()

    seed = int(torch.randint(1, 2**31 - 1, (1,), generator=problem.generator))
    x, acceptance, kept = hmc_moves(
        (ls * state.y[alive]).detach().cpu().numpy().reshape(int(alive.sum()), -1, 3),
        system,
        float(problem.target.temperature),
        final.md_moves,
        timestep=final.md_timestep,
        n_leapfrog=final.md_leapfrog,
        allowed=allowed,
        seed=seed,
    )
    y = state.y.clone()
    y[alive] = torch.as_tensor(x / ls, dtype=dtype, device=device).reshape(y[alive].shape)
    state.y = y
    state.n_target_evals += int(alive.sum()) * final.md_moves * final.md_leapfrog  # force evaluations in OpenMM
    state.u, state.grad_u = problem.target_eval(state, state.y)
    recorder.final_md(acceptance, kept)
