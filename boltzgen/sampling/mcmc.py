"""Batched MCMC kernels (MALA, HMC) and a chain driver, as plain functions of an energy callable.

Every kernel acts on a batch of independent chains ``x`` of shape (C, *event_shape) and targets
p(x) ∝ exp(−u(x)) with u a *reduced* (dimensionless) energy. Random numbers come only from the
``torch.Generator`` passed in (the k-diffusion style), so a run is reproducible from a seed.

The energy may be given in three forms (see :func:`energy_and_grad`):

- a :class:`~boltzgen.systems.TargetSystem` (its ``reduced_energy_and_force`` is used);
- a callable ``x -> u`` with ``u`` of shape (C,), differentiated with autograd;
- a callable ``x -> (u, grad_u)`` returning the energies and their gradient ∇u.

Energies are float64. A configuration whose energy (or gradient) is not finite counts as
``u = +inf``: a proposal there is never accepted, and a chain stuck at such a point accepts the
first finite proposal.

Mean-free chains (``mean_free=True``, configurations (C, N, 3)): the noise and the gradient drift
are projected onto the zero-centre-of-mass subspace (the per-configuration mean over atoms is
subtracted), so every move keeps each chain's centre of mass where it started. For a
translation-invariant u (LJ clusters, molecules) the chain then samples exp(−u) restricted to that
3(N − 1)-dimensional subspace exactly.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import torch

from ..diffusion.noise import project_mean_free

__all__ = [
    "MCMCStep",
    "ChainState",
    "MCMCResult",
    "energy_and_grad",
    "project_mean_free",
    "mala_step",
    "hmc_step",
    "MTSStep",
    "mts_hmc_step",
    "init_chain_state",
    "run_mcmc",
    "run_mala",
    "run_hmc",
    "DEFAULT_TARGET_ACCEPTANCE",
    "StepSize",
    "initial_step_size",
    "adapted_moves",
]

#: Default target acceptance of step-size adaptation per kernel (0.574 is the optimal MALA rate).
DEFAULT_TARGET_ACCEPTANCE = {"mala": 0.574, "hmc": 0.65}

Energy = Union[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], tuple], object]


# ---------------------------------------------------------------------------- helpers
def _bcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-chain (C,) tensor to broadcast against (C, *event_shape)."""
    return values.reshape((-1,) + (1,) * (like.dim() - 1))


def _sq_norm(v: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean norm over all event dimensions: (C, *event) -> (C,)."""
    return v.reshape(v.shape[0], -1).pow(2).sum(dim=1)


def energy_and_grad(energy: Energy, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduced energies and gradients of a batch, detached, with non-finite values cleaned.

    Parameters
    ----------
    energy : TargetSystem, callable x -> u, or callable x -> (u, grad_u)
        The reduced energy (see the module docstring).
    x : tensor, shape (C, *event_shape)
        Configurations.

    Returns
    -------
    u : tensor, shape (C,), float64
        Reduced energies; ``+inf`` wherever u or ∇u is not finite.
    grad : tensor, shape (C, *event_shape), dtype of ``x``
        ∇u (kT per unit length); zero where ``u`` is ``+inf``.
    """
    if hasattr(energy, "reduced_energy_and_force"):
        u, force = energy.reduced_energy_and_force(x)
        u, grad = u, -force
    else:
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            out = energy(xg)
            if isinstance(out, (tuple, list)):
                u, grad = out
            else:
                u = out.reshape(x.shape[0])
                ok = torch.isfinite(u)
                (grad,) = torch.autograd.grad(torch.where(ok, u, torch.zeros_like(u)).sum(), xg, allow_unused=True)
                grad = torch.zeros_like(xg) if grad is None else grad
    u = u.detach().to(torch.float64).reshape(x.shape[0])
    grad = grad.detach().to(x.dtype).reshape(x.shape)
    finite = torch.isfinite(u) & torch.isfinite(grad.reshape(x.shape[0], -1)).all(dim=1)
    u = torch.where(finite, u, torch.full_like(u, math.inf))
    grad = torch.where(_bcast(finite, grad), grad, torch.zeros_like(grad))
    return u, grad


def _as_step_sizes(step_size, x: torch.Tensor) -> torch.Tensor:
    """Step size(s) as a float64 (C,) tensor; raises on non-positive values."""
    h = torch.as_tensor(step_size, dtype=torch.float64, device=x.device)
    if h.dim() == 0:
        h = h.expand(x.shape[0])
    if h.shape != (x.shape[0],):
        raise ValueError(f"step_size must be a scalar or have shape ({x.shape[0]},), got {tuple(h.shape)}")
    if not bool((h > 0).all()) or not bool(torch.isfinite(h).all()):
        raise ValueError("step sizes must be positive and finite")
    return h


def _metropolis(log_alpha: torch.Tensor, new_u: torch.Tensor, generator: Optional[torch.Generator]):
    """Accept mask and acceptance probabilities min(1, exp(log_alpha)); +inf energies never accepted."""
    log_alpha = torch.nan_to_num(log_alpha, nan=-math.inf)
    uniform = torch.rand(log_alpha.shape, generator=generator, dtype=torch.float64, device=log_alpha.device)
    accept = (torch.log(uniform) < log_alpha) & torch.isfinite(new_u)
    prob = torch.where(torch.isfinite(new_u), log_alpha.clamp(max=0.0).exp(), torch.zeros_like(log_alpha))
    return accept, prob


@dataclass
class MCMCStep:
    """Outcome of one kernel application to a batch of C chains.

    Attributes
    ----------
    x : tensor, shape (C, *event_shape)
        New states (the proposal where accepted, the old state elsewhere).
    energy : tensor, shape (C,), float64
        Reduced energies of ``x``.
    grad : tensor, shape (C, *event_shape)
        ∇u at ``x`` (projected when mean-free); reuse it as ``current`` of the next step.
    accepted : tensor, shape (C,), bool
        Which proposals were accepted.
    accept_prob : tensor, shape (C,), float64
        Metropolis acceptance probabilities min(1, α) (used for step-size adaptation).
    """

    x: torch.Tensor
    energy: torch.Tensor
    grad: torch.Tensor
    accepted: torch.Tensor
    accept_prob: torch.Tensor


def _current(x, energy, current, mean_free):
    if current is None:
        u, grad = energy_and_grad(energy, x)
        return u, (project_mean_free(grad) if mean_free else grad)
    return current


def _noise(x: torch.Tensor, generator, mean_free: bool) -> torch.Tensor:
    xi = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return project_mean_free(xi) if mean_free else xi


def _select(accept: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.where(_bcast(accept, new) if new.dim() > 1 else accept, new, old)


# ---------------------------------------------------------------------------- kernels
def mala_step(
    x: torch.Tensor,
    energy: Energy,
    step_size,
    generator: Optional[torch.Generator] = None,
    *,
    mean_free: bool = False,
    current: Optional[tuple] = None,
) -> MCMCStep:
    """One Metropolis-adjusted Langevin step for every chain.

    Proposal x' = x − h ∇u(x) + √(2h) ξ, ξ ~ N(0, I) (projected to the zero-COM subspace when
    ``mean_free``), accepted with probability min(1, exp(−u(x') + u(x)) q(x | x') / q(x' | x)),
    q(y | x) ∝ exp(−‖y − x + h∇u(x)‖² / (4h)).

    Parameters
    ----------
    x : tensor, shape (C, *event_shape)
        Current states of C independent chains (float64 recommended).
    energy : TargetSystem or callable
        Reduced energy u (see :func:`energy_and_grad`).
    step_size : float or tensor of shape (C,)
        h, one for all chains or one per chain, in units of x squared (nm² for molecules):
        the time step of overdamped Langevin dynamics with unit diffusion constant.
    generator : torch.Generator, optional
        Source of all random numbers.
    mean_free : bool
        Keep each chain's centre of mass fixed (x of shape (C, N, 3)).
    current : (u, grad) tuple, optional
        Energies (C,) and gradients at ``x`` from the previous step, to save one evaluation.

    Returns
    -------
    MCMCStep
    """
    h = _as_step_sizes(step_size, x)
    u, grad = _current(x, energy, current, mean_free)
    hb = _bcast(h, x).to(x.dtype)
    y = x - hb * grad + torch.sqrt(2.0 * hb) * _noise(x, generator, mean_free)
    u_y, grad_y = energy_and_grad(energy, y)
    if mean_free:
        grad_y = project_mean_free(grad_y)
    log_q_fwd = -_sq_norm(y - x + hb * grad).to(torch.float64) / (4.0 * h)
    log_q_bwd = -_sq_norm(x - y + hb * grad_y).to(torch.float64) / (4.0 * h)
    accept, prob = _metropolis(u - u_y + log_q_bwd - log_q_fwd, u_y, generator)
    return MCMCStep(_select(accept, y, x), _select(accept, u_y, u), _select(accept, grad_y, grad), accept, prob)


def hmc_step(
    x: torch.Tensor,
    energy: Energy,
    step_size,
    generator: Optional[torch.Generator] = None,
    *,
    n_leapfrog: int = 10,
    mean_free: bool = False,
    current: Optional[tuple] = None,
) -> MCMCStep:
    """One Hamiltonian Monte Carlo step (unit mass, leapfrog, Metropolis) for every chain.

    Momenta p ~ N(0, I) (projected when ``mean_free``), ``n_leapfrog`` leapfrog steps of size ε,
    acceptance min(1, exp(H(x, p) − H(x', p'))) with H = u + ‖p‖²/2. A trajectory that meets a
    non-finite energy is rejected.

    Parameters
    ----------
    x : tensor, shape (C, *event_shape)
    energy : TargetSystem or callable
        Reduced energy u (see :func:`energy_and_grad`).
    step_size : float or tensor of shape (C,)
        Leapfrog step ε (units of x).
    generator : torch.Generator, optional
    n_leapfrog : int
        Number of leapfrog steps per proposal.
    mean_free : bool
        Keep each chain's centre of mass fixed.
    current : (u, grad) tuple, optional
        Energies and gradients at ``x``.

    Returns
    -------
    MCMCStep
    """
    if int(n_leapfrog) < 1:
        raise ValueError(f"n_leapfrog must be at least 1, got {n_leapfrog}")
    eps = _bcast(_as_step_sizes(step_size, x), x).to(x.dtype)
    u, grad = _current(x, energy, current, mean_free)
    p = _noise(x, generator, mean_free)
    h0 = u + 0.5 * _sq_norm(p).to(torch.float64)
    y, g, u_y = x, grad, u
    finite = torch.ones_like(u, dtype=torch.bool)
    p = p - 0.5 * eps * g
    for i in range(int(n_leapfrog)):
        y = y + eps * p
        u_y, g = energy_and_grad(energy, y)
        finite &= torch.isfinite(u_y)
        if mean_free:
            g = project_mean_free(g)
        if i < int(n_leapfrog) - 1:
            p = p - eps * g
    p = p - 0.5 * eps * g
    u_y = torch.where(finite, u_y, torch.full_like(u_y, math.inf))
    h1 = u_y + 0.5 * _sq_norm(p).to(torch.float64)
    accept, prob = _metropolis(h0 - h1, u_y, generator)
    return MCMCStep(_select(accept, y, x), _select(accept, u_y, u), _select(accept, g, grad), accept, prob)


@dataclass
class MTSStep:
    """Result of one :func:`mts_hmc_step` for C chains: both parts of the energy at the new states.

    Attributes
    ----------
    x : tensor, shape (C, *event_shape)
    slow, fast : tensor, shape (C,), float64
        U_s and U_f at ``x`` (unweighted).
    slow_grad, fast_grad : tensor, shape of ``x``
        Their gradients (projected when mean-free).
    accepted : tensor, shape (C,), bool
    accept_prob : tensor, shape (C,), float64
    """

    x: torch.Tensor
    slow: torch.Tensor
    slow_grad: torch.Tensor
    fast: torch.Tensor
    fast_grad: torch.Tensor
    accepted: torch.Tensor
    accept_prob: torch.Tensor


def mts_hmc_step(
    x: torch.Tensor,
    slow: Energy,
    fast: Energy,
    step_size,
    generator: Optional[torch.Generator] = None,
    *,
    weights: tuple = (1.0, 1.0),
    n_inner: int = 10,
    mean_free: bool = False,
    current: Optional[tuple] = None,
) -> MTSStep:
    """One multiple-time-step HMC proposal for U = a U_s + b U_f (unit mass, Metropolis).

    The impulse (r-RESPA) integrator of Tuckerman, Berne & Martyna: a half kick of the slow force
    with step ε, ``n_inner`` leapfrog steps of ε / n_inner on the fast force, a half kick of the
    slow force; it is symplectic and time-reversible, so accepting with min(1, exp(H − H')),
    H = U + ‖p‖²/2, leaves exp(−U) invariant exactly. Each proposal evaluates the slow energy once
    and the fast one ``n_inner`` times: with an expensive smooth U_s (a learned energy) and a cheap
    stiff U_f (a force field) the trajectory goes ``n_inner`` times further per slow evaluation than
    one leapfrog step would. A trajectory that meets a non-finite energy is rejected.

    Parameters
    ----------
    x : tensor, shape (C, *event_shape)
    slow, fast : TargetSystem or callable
        U_s and U_f (see :func:`energy_and_grad`).
    step_size : float or tensor of shape (C,)
        Outer step ε (units of x).
    generator : torch.Generator, optional
    weights : (float, float)
        a and b of U = a U_s + b U_f (non-negative).
    n_inner : int
        Fast leapfrog steps per outer step (≥ 1; 1 is plain leapfrog HMC with one step).
    mean_free : bool
        Keep each chain's centre of mass fixed.
    current : (U_s, ∇U_s, U_f, ∇U_f) tuple, optional
        Both parts at ``x``, to save their evaluation.

    Returns
    -------
    MTSStep
    """
    k = int(n_inner)
    if k < 1:
        raise ValueError(f"n_inner must be at least 1, got {n_inner}")
    a, b = (float(w) for w in weights)
    if current is None:
        us, gs = _current(x, slow, None, mean_free)
        uf, gf = _current(x, fast, None, mean_free)
    else:
        us, gs, uf, gf = current
    eps = _bcast(_as_step_sizes(step_size, x), x).to(x.dtype)
    inner = eps / k
    p = _noise(x, generator, mean_free)
    h0 = a * us + b * uf + 0.5 * _sq_norm(p).to(torch.float64)
    y, gs_y, gf_y, uf_y = x, gs, gf, uf
    finite = torch.ones_like(us, dtype=torch.bool)
    p = p - 0.5 * a * eps * gs_y
    for _ in range(k):
        p = p - 0.5 * b * inner * gf_y
        y = y + inner * p
        uf_y, gf_y = _current(y, fast, None, mean_free)
        finite &= torch.isfinite(uf_y)
        p = p - 0.5 * b * inner * gf_y
    us_y, gs_y = _current(y, slow, None, mean_free)
    p = p - 0.5 * a * eps * gs_y
    finite &= torch.isfinite(us_y)
    h1 = torch.where(finite, a * us_y + b * uf_y + 0.5 * _sq_norm(p).to(torch.float64), torch.full_like(h0, math.inf))
    accept, prob = _metropolis(h0 - h1, h1, generator)
    return MTSStep(
        _select(accept, y, x),
        _select(accept, us_y, us),
        _select(accept, gs_y, gs),
        _select(accept, uf_y, uf),
        _select(accept, gf_y, gf),
        accept,
        prob,
    )


_KERNELS = {"mala": mala_step, "hmc": hmc_step}


# ---------------------------------------------------------------------------- chain driver
@dataclass
class ChainState:
    """Everything a chain run needs to continue exactly where it stopped.

    Attributes
    ----------
    x : tensor, shape (C, *event_shape)
        Current states.
    energy : tensor, shape (C,), float64
        Reduced energies at ``x``.
    grad : tensor, shape (C, *event_shape)
        ∇u at ``x`` (projected when mean-free).
    step_size : tensor, shape (C,), float64
        Current step size of each chain (all equal unless adapted per chain).
    step : int
        Kernel applications done so far, burn-in included.
    n_accepted : tensor, shape (C,), float64
        Accepted proposals after burn-in.
    samples : list of tensors of shape (C, *event_shape)
        Saved states, one entry per save (after burn-in, every ``thin`` steps).
    sample_energy : list of tensors of shape (C,)
        Reduced energies of the saved states.
    """

    x: torch.Tensor
    energy: torch.Tensor
    grad: torch.Tensor
    step_size: torch.Tensor
    step: int = 0
    n_accepted: Optional[torch.Tensor] = None
    samples: list = field(default_factory=list)
    sample_energy: list = field(default_factory=list)

    def __post_init__(self):
        if self.n_accepted is None:
            self.n_accepted = torch.zeros(self.x.shape[0], dtype=torch.float64)


def init_chain_state(x0: torch.Tensor, energy: Energy, step_size, *, mean_free: bool = False) -> ChainState:
    """A fresh :class:`ChainState` at ``x0`` with initial step size(s).

    Parameters
    ----------
    x0 : array_like, shape (C, *event_shape)
        Initial states of the C chains (nm for molecules); integer input becomes float64.
    energy : TargetSystem or callable
        Reduced energy u (see :func:`energy_and_grad`); evaluated once at ``x0``.
    step_size : float or torch.Tensor of shape (C,)
        Initial step size(s): MALA h (x units squared), HMC leapfrog ε (x units).
    mean_free : bool
        Project the gradient onto the zero-centre-of-mass subspace.

    Returns
    -------
    ChainState
        With ``step = 0`` and no saved samples.
    """
    x0 = torch.as_tensor(x0)
    if not torch.is_floating_point(x0):
        x0 = x0.to(torch.float64)
    u, grad = energy_and_grad(energy, x0)
    if mean_free:
        grad = project_mean_free(grad)
    return ChainState(x=x0.clone(), energy=u, grad=grad, step_size=_as_step_sizes(step_size, x0).clone())


@dataclass
class MCMCResult:
    """Output of :func:`run_mcmc`.

    Attributes
    ----------
    samples : tensor, shape (S, C, *event_shape)
        Saved states, save-major (S saves of C chains).
    energy : tensor, shape (S, C), float64
        Their reduced energies.
    acceptance : tensor, shape (C,), float64
        Fraction of accepted proposals after burn-in, per chain.
    step_size : tensor, shape (C,), float64
        The (frozen) step sizes used after burn-in.
    state : ChainState
        Final state; pass it back as ``state`` to continue the run.
    """

    samples: torch.Tensor
    energy: torch.Tensor
    acceptance: torch.Tensor
    step_size: torch.Tensor
    state: ChainState


def run_mcmc(
    x0: Optional[torch.Tensor],
    energy: Energy,
    n_steps: int,
    generator: Optional[torch.Generator] = None,
    *,
    kernel: str = "mala",
    step_size=1e-3,
    burn_in: int = 0,
    thin: int = 1,
    adapt: Optional[str] = "global",
    target_acceptance: Optional[float] = None,
    mean_free: bool = False,
    n_leapfrog: int = 10,
    state: Optional[ChainState] = None,
    callback: Optional[Callable[[ChainState], None]] = None,
    progress: bool = False,
) -> MCMCResult:
    """Run C chains in parallel: burn-in with step-size adaptation, then an exact, thinned chain.

    During the first ``burn_in`` steps the log step size follows a Robbins–Monro recursion
    log h ← log h + γ_k (ᾱ − α*), γ_k = (k + 1)^(−0.6), with ᾱ the Metropolis acceptance
    probability (averaged over chains for ``adapt="global"``, per chain for ``"per_chain"``).
    After burn-in the step sizes are frozen, so the saved chain is an exact (time-homogeneous)
    Metropolis–Hastings chain for exp(−u). Nothing is saved during burn-in.

    Parameters
    ----------
    x0 : tensor, shape (C, *event_shape), or None
        Initial states (ignored when ``state`` is given).
    energy : TargetSystem or callable
        Reduced energy u (see :func:`energy_and_grad`).
    n_steps : int
        Kernel applications after burn-in; a state is saved every ``thin`` of them, so
        ``n_steps // thin`` saves of C chains.
    generator : torch.Generator, optional
        Source of all random numbers.
    kernel : {"mala", "hmc"}
    step_size : float or tensor (C,)
        Initial step size(s): MALA h (x units squared), HMC leapfrog ε (x units).
    burn_in : int
        Adaptation steps before saving starts.
    thin : int
        Steps between saved states.
    adapt : {"global", "per_chain", None}
        Step-size adaptation during burn-in: one step size shared by all chains (robust, the
        default), one per chain (for chains in different regions), or none.
    target_acceptance : float, optional
        α*; default 0.574 for MALA, 0.65 for HMC.
    mean_free : bool
        Keep each chain's centre of mass fixed (see the module docstring).
    n_leapfrog : int
        Leapfrog steps per HMC proposal.
    state : ChainState, optional
        Continue from this state (its ``step`` counts burn-in); saved samples are kept. With the
        same generator state this gives exactly the uninterrupted run.
    callback : callable(ChainState), optional
        Called after every save (e.g. to write a checkpoint); the state is live, do not modify.
    progress : bool
        Show a tqdm progress bar on stderr.

    Returns
    -------
    MCMCResult
    """
    if kernel not in _KERNELS:
        raise ValueError(f"unknown MCMC kernel {kernel!r}; choose one of {sorted(_KERNELS)}")
    if adapt not in ("global", "per_chain", None):
        raise ValueError(f"adapt must be 'global', 'per_chain' or None, got {adapt!r}")
    n_steps, burn_in, thin = int(n_steps), int(burn_in), int(thin)
    if n_steps < 0 or burn_in < 0 or thin < 1:
        raise ValueError(f"need n_steps >= 0, burn_in >= 0, thin >= 1; got {n_steps}, {burn_in}, {thin}")
    alpha_star = DEFAULT_TARGET_ACCEPTANCE[kernel] if target_acceptance is None else float(target_acceptance)
    if not 0.0 < alpha_star < 1.0:
        raise ValueError(f"target_acceptance must lie in (0, 1), got {alpha_star}")
    if state is None:
        if x0 is None:
            raise ValueError("give initial states x0 or a state to continue")
        state = init_chain_state(x0, energy, step_size, mean_free=mean_free)
    step_fn = _KERNELS[kernel]
    extra = {"n_leapfrog": n_leapfrog} if kernel == "hmc" else {}
    total = burn_in + n_steps

    from tqdm import tqdm

    bar = tqdm(
        total=total,
        initial=min(state.step, total),
        desc=f"{kernel} chains",
        unit="step",
        file=sys.stderr,
        disable=not progress,
        leave=False,
    )
    try:
        while state.step < total:
            out = step_fn(
                state.x,
                energy,
                state.step_size,
                generator,
                mean_free=mean_free,
                current=(state.energy, state.grad),
                **extra,
            )
            state.x, state.energy, state.grad = out.x, out.energy, out.grad
            if state.step < burn_in:
                if adapt is not None:
                    rate = (state.step + 1.0) ** -0.6
                    alpha = (
                        out.accept_prob if adapt == "per_chain" else out.accept_prob.mean().expand_as(out.accept_prob)
                    )
                    state.step_size = state.step_size * torch.exp(rate * (alpha - alpha_star))
            else:
                state.n_accepted = state.n_accepted + out.accepted.to(torch.float64)
            state.step += 1
            bar.update(1)
            if state.step > burn_in and (state.step - burn_in) % thin == 0:
                state.samples.append(state.x.clone())
                state.sample_energy.append(state.energy.clone())
                if callback is not None:
                    callback(state)
    finally:
        bar.close()
    done = max(state.step - burn_in, 0)
    c = state.x.shape[0]
    samples = torch.stack(state.samples) if state.samples else state.x.new_zeros((0,) + tuple(state.x.shape))
    energies = torch.stack(state.sample_energy) if state.sample_energy else torch.zeros(0, c, dtype=torch.float64)
    acceptance = state.n_accepted / done if done else torch.full((c,), math.nan, dtype=torch.float64)
    return MCMCResult(samples, energies, acceptance, state.step_size.clone(), state)


def run_mala(x0, energy: Energy, n_steps: int, generator: Optional[torch.Generator] = None, **options) -> MCMCResult:
    """:func:`run_mcmc` with the MALA kernel (target acceptance 0.574).

    Parameters
    ----------
    x0 : torch.Tensor, shape (C, *event_shape), or None
        Initial states (nm for molecules).
    energy : TargetSystem or callable
        Reduced energy u.
    n_steps : int
        Kernel applications after burn-in.
    generator : torch.Generator, optional
        Source of all random numbers.
    **options
        Further keyword arguments of :func:`run_mcmc` (``step_size``, ``burn_in``, ``thin``,
        ``adapt``, ``mean_free``, ``state``, …).

    Returns
    -------
    MCMCResult
    """
    return run_mcmc(x0, energy, n_steps, generator, kernel="mala", **options)


def run_hmc(x0, energy: Energy, n_steps: int, generator: Optional[torch.Generator] = None, **options) -> MCMCResult:
    """:func:`run_mcmc` with the HMC kernel (target acceptance 0.65).

    Parameters
    ----------
    x0 : torch.Tensor, shape (C, *event_shape), or None
        Initial states (nm for molecules).
    energy : TargetSystem or callable
        Reduced energy u.
    n_steps : int
        Kernel applications after burn-in.
    generator : torch.Generator, optional
        Source of all random numbers.
    **options
        Further keyword arguments of :func:`run_mcmc` (``step_size``, ``n_leapfrog``,
        ``burn_in``, ``thin``, ``adapt``, ``mean_free``, ``state``, …).

    Returns
    -------
    MCMCResult
    """
    return run_mcmc(x0, energy, n_steps, generator, kernel="hmc", **options)


# ---------------------------------------------------------------------------- step sizes
def initial_step_size(kernel: str, scale2: float, d: int) -> float:
    """A step size for a Gaussian of per-coordinate variance ``scale2`` in d dimensions.

    Parameters
    ----------
    kernel : {"mala", "hmc"}
    scale2 : float
        Per-coordinate variance s² (model units squared).
    d : int
        Dimensions.

    Returns
    -------
    float
        MALA h = s² d^(−1/3) or HMC ε = s d^(−1/4) (model units squared, resp. model units).
    """
    if kernel == "mala":
        return scale2 * d ** (-1.0 / 3.0)
    return math.sqrt(scale2) * d ** (-0.25)


class StepSize:
    """Step size h = κ · h_ref of one stage's MCMC moves.

    ``auto`` (no step size given): h_ref is the step suited to a Gaussian whose per-coordinate
    variance is d / median‖∇U‖² over the particles entering the level's moves (for N(0, s² I),
    ‖∇U‖² ≈ d / s²; for anisotropic densities this picks the stiff directions), so the step
    follows the shrinking scales of the diffusion. Otherwise h_ref = the given step size. κ starts
    at 1 and is adapted between levels, log κ += rate · (mean acceptance − target): it depends
    only on earlier levels.

    Parameters
    ----------
    kernel : {"mala", "hmc"}
    d : int
        Dimensions.
    given : float, optional
        A fixed h_ref (model units); None for automatic.
    rate : float
        Adaptation rate of κ (0: κ stays 1).
    alpha_star : float
        Target acceptance.
    """

    def __init__(self, kernel: str, d: int, given: Optional[float], rate: float, alpha_star: float):
        self.kernel, self.d, self.rate, self.alpha_star = kernel, d, float(rate), alpha_star
        self.auto = given is None
        self.ref = 1.0 if given is None else float(given)
        self.kappa = 1.0
        if not self.auto and not self.ref > 0:
            raise ValueError(f"step sizes must be positive, got {given}")

    def value(self, grad: torch.Tensor) -> float:
        """The step size for moves starting from particles with these gradients.

        Parameters
        ----------
        grad : Tensor, shape (B, *event_shape)
            Gradients of the energy the moves target.

        Returns
        -------
        float
            κ · h_ref in model units.
        """
        if self.auto:
            sq = grad.reshape(grad.shape[0], -1).pow(2).sum(1)
            sq = sq[torch.isfinite(sq) & (sq > 0)]
            m = float(sq.median()) if sq.numel() else float("nan")
            if math.isfinite(m) and m > 0:
                self.ref = initial_step_size(self.kernel, self.d / m, self.d)
        return self.kappa * self.ref

    def update(self, acceptance: float) -> None:
        """Adapt κ after a level's moves: log κ += rate · (acceptance − target acceptance).

        Parameters
        ----------
        acceptance : float
            Mean acceptance of the level's moves.
        """
        self.kappa *= math.exp(self.rate * (acceptance - self.alpha_star))


def adapted_moves(
    step_fn: Callable,
    x: torch.Tensor,
    energy: Energy,
    current: tuple,
    step: StepSize,
    n_moves: int,
    generator: Optional[torch.Generator] = None,
    *,
    mean_free: bool = False,
    **options,
) -> tuple:
    """``n_moves`` moves of one kernel at one step size, then the step adapted to their acceptance.

    The step size is ``step.value`` of the gradients at ``x``; after the moves ``step.update``
    receives their mean acceptance (so the next call, at the next level, uses the adapted κ).

    Parameters
    ----------
    step_fn : callable
        :func:`mala_step` or :func:`hmc_step`.
    x : tensor, shape (C, *event_shape)
        Current states.
    energy : TargetSystem or callable
        Reduced energy (see :func:`energy_and_grad`).
    current : (u, grad) tuple
        Energies (C,) and gradients at ``x``.
    step : StepSize
        The step-size controller (changed in place).
    n_moves : int
        Moves (≥ 1).
    generator : torch.Generator, optional
    mean_free : bool
        Keep each chain's centre of mass fixed.
    **options
        Passed to ``step_fn`` (``n_leapfrog`` for HMC).

    Returns
    -------
    x : tensor
        The states after the moves.
    current : (u, grad) tuple
        Their energies and gradients.
    acceptance : float
        Mean acceptance probability of the moves.
    step_size : float
        The step size they used.
    """
    h = step.value(current[1])
    accs = []
    for _ in range(int(n_moves)):
        out = step_fn(x, energy, h, generator, mean_free=mean_free, current=current, **options)
        x, current = out.x, (out.energy, out.grad)
        accs.append(float(out.accept_prob.mean()))
    acceptance = math.fsum(accs) / len(accs)
    step.update(acceptance)
    return x, current, acceptance, h
