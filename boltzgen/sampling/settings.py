"""Settings of :func:`~boltzgen.sampling.smc.smc_sample`, grouped by stage.

One frozen dataclass per stage (:class:`DiffusionSettings`, :class:`AnnealSettings`,
:class:`FinalSettings`), one for the MCMC moves all stages share (:class:`MoveSettings`), one for
the resampling (:class:`ResampleSettings`) and one for the state tilt (:class:`TiltSettings`),
gathered in :class:`SMCSettings`. The defaults are those of ``boltzgen sample``: the Python API
and the command line run the same sampler. Every value is checked when the object is built; a
wrong one raises a ``ValueError`` that names it (e.g. ``anneal.cess: must lie in (0, 1), got
1.5``). :meth:`SMCSettings.from_dict` reads the nested dict that :meth:`SMCSettings.to_dict`
writes (a YAML or JSON file), and rejects unknown keys.

The stages and what each setting does: docs/design.md and :mod:`boltzgen.sampling.smc`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np

from .mcmc import DEFAULT_TARGET_ACCEPTANCE
from .resampling import RESAMPLING_METHODS
from .sde import SDE_METHODS, TIME_SPACINGS

__all__ = [
    "DiffusionSettings",
    "AnnealSettings",
    "FinalSettings",
    "MoveSettings",
    "ResampleSettings",
    "TiltSettings",
    "SMCSettings",
    "MOVE_KERNELS",
    "DIFFUSION_WEIGHTS",
    "HANDOVERS",
]

#: How the diffusion stage moves and weights particles (:class:`DiffusionSettings`).
DIFFUSION_WEIGHTS = ("kernel", "annealed")

#: How the sampler passes from the model's last level to the target (:class:`AnnealSettings`).
HANDOVERS = ("geometric", "laplace")

#: MCMC kernels of the moves.
MOVE_KERNELS = tuple(sorted(DEFAULT_TARGET_ACCEPTANCE))


# ---------------------------------------------------------------------------- checks
def _fail(name: str, message: str, value) -> ValueError:
    return ValueError(f"{name}: {message}, got {value!r}")


def _int(obj, name: str, path: str, low: int) -> None:
    v = getattr(obj, name)
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) != v:
        raise _fail(path, "must be an integer", v)
    if v < low:
        raise _fail(path, f"must be at least {low}", v)
    object.__setattr__(obj, name, int(v))


def _float(obj, name: str, path: str, low=None, high=None, low_open=False, high_open=False, optional=False) -> None:
    v = getattr(obj, name)
    if v is None and optional:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
        raise _fail(path, "must be a finite number" + (" or None" if optional else ""), v)
    v = float(v)
    below = low is not None and (v <= low if low_open else v < low)
    above = high is not None and (v >= high if high_open else v > high)
    if below or above:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
        if low is not None and high is not None:
            raise _fail(path, f"must lie in {lo}, {hi}", v)
        raise _fail(
            path,
            f"must be {'>' if low_open else '>='} {low:g}"
            if low is not None
            else f"must be {'<' if high_open else '<='} {high:g}",
            v,
        )
    object.__setattr__(obj, name, v)


def _choice(obj, name: str, path: str, choices) -> None:
    v = getattr(obj, name)
    if v not in tuple(choices):
        raise _fail(path, f"must be one of {tuple(choices)}", v)


def _bool(obj, name: str, path: str) -> None:
    v = getattr(obj, name)
    if not isinstance(v, (bool, np.bool_)):
        raise _fail(path, "must be true or false", v)
    object.__setattr__(obj, name, bool(v))


# ---------------------------------------------------------------------------- stage settings
@dataclass(frozen=True)
class DiffusionSettings:
    """The diffusion stage: from the prior at t = 1 down to t_min along the learned marginals.

    Attributes
    ----------
    n_steps : int
        Reverse-diffusion levels from t = 1 to t_min. More levels mean smaller steps and so
        weights closer to each other (higher ESS) at a cost proportional to the number.
    spacing : {"quadratic", "uniform", "log"}
        Time grid (:func:`~boltzgen.sampling.sde.time_grid`); "quadratic" puts more levels at
        small t, where the marginals change fastest.
    t_min : float, optional
        Last diffusion time (default: the model's ``t_min``). A larger value hands the particles
        to the annealing earlier, when the model is poor at small t.
    kernel : {"ddpm", "euler"}
        Reverse-diffusion proposal (:func:`~boltzgen.sampling.sde.reverse_kernel`).
    mcmc_steps : int
        MCMC moves per level targeting exp(−E(y, t)); 0 (none) unless the particles need
        rejuvenating between levels.
    step_size : float, optional
        Step size of these moves in model units (MALA h, HMC ε), times the adapted factor κ;
        default: from the median gradient norm at each level.
    weights : {"kernel", "annealed"}
        How a level moves and weights the particles. "kernel": a step of the reverse-diffusion
        kernel built from the learned score, weighted by the exact forward kernel (exact
        marginals keep equal weights; a model whose energies at neighbouring levels disagree with
        its own score loses weight there). "annealed": annealed importance sampling along the
        learned energies: the configurations are rescaled by the ratio of the marginals' scales
        sqrt(α² σ_data² + σ²) of the two levels, weighted by the change of the energy there, then
        moved by ``mcmc_steps`` MCMC steps on exp(−E(y, t')) (at least one). The weights then only ask neighbouring levels to be close, not consistent
        with the forward process; the moves cost one model evaluation each.
    tempering : float in (0, 1]
        Exponent b of the learned energies at t_min (1: none). The stage then targets
        exp(−b(t) E(y, t)) with b(t) falling linearly from 1 at t = 1 to b at t_min: b < 1 shrinks
        the model's free-energy differences between states by b, so rare states get more
        particles, at the price of a lower ESS; the weights correct for it.
    particle_factor : int
        The stage draws this many times the run's particles, which the annealing's first step
        resamples down to the run's number (within each state; equal shares with
        ``resampling.balance_states``), exactly as any resampling does. A step of the diffusion
        costs a fraction of an annealing level per particle, and the resampling along the
        diffusion path leaves few distinct ancestors: a wider diffusion hands more independent
        lineages to the annealing, whose estimates of the states' weights rest on them
        (docs/theory.md, "What the estimates rest on"). Needs a target and the geometric
        annealing.
    """

    n_steps: int = 100
    spacing: str = "quadratic"
    t_min: Optional[float] = None
    kernel: str = "ddpm"
    weights: str = "kernel"
    mcmc_steps: int = 0
    step_size: Optional[float] = None
    tempering: float = 1.0
    particle_factor: int = 1

    def __post_init__(self):
        _int(self, "n_steps", "diffusion.n_steps", 1)
        _int(self, "particle_factor", "diffusion.particle_factor", 1)
        _choice(self, "spacing", "diffusion.spacing", TIME_SPACINGS)
        _float(self, "t_min", "diffusion.t_min", 0.0, 1.0, low_open=True, high_open=True, optional=True)
        _choice(self, "kernel", "diffusion.kernel", SDE_METHODS)
        _choice(self, "weights", "diffusion.weights", DIFFUSION_WEIGHTS)
        _int(self, "mcmc_steps", "diffusion.mcmc_steps", 0)
        if self.weights == "annealed" and self.mcmc_steps < 1:
            raise _fail("diffusion.mcmc_steps", "must be at least 1 with diffusion.weights 'annealed'", self.mcmc_steps)
        _float(self, "step_size", "diffusion.step_size", 0.0, low_open=True, optional=True)
        _float(self, "tempering", "diffusion.tempering", 0.0, 1.0, low_open=True)


@dataclass(frozen=True)
class AnnealSettings:
    """The annealing stage: from exp(−E(y, t_min)) to the target exp(−u) over levels β ∈ (0, 1].

    Attributes
    ----------
    n_levels : int
        With ``cess``: the fewest levels (no β step larger than 1 / n_levels); without: the
        number of levels of a linear grid. 0 jumps straight to the target (plain importance
        sampling of the last stage, no moves).
    betas : tuple of float, optional
        An explicit increasing grid ending at exactly 1 (then ``cess`` must be None).
    cess : float in (0, 1), optional
        Adaptive grid: each next β is the largest whose incremental weights keep the conditional
        ESS at this value (per state with ``states``), chosen from the energies at hand. Raise
        it towards 1 for more, gentler levels; None uses the fixed grid.
    max_levels : int
        With ``cess``: the most levels; the last one then jumps to β = 1.
    mcmc_steps : int
        Moves per level, using the target's forces; they keep the particles diverse after
        resampling.
    step_size : float, optional
        Step size of these moves in model units, times the adapted κ (which starts from the
        diffusion stage's when that stage ran moves); default: from the median norm of
        ∇[(1 − β) E + β u] at each level.
    handover : {"geometric", "laplace"}
        ``geometric``: the levels above. ``laplace``: one importance step from the noisy
        particles at t_min to clean configurations drawn from the Laplace approximation of the
        target's posterior exp(−u(x)) N(y; a x, v) (:func:`~boltzgen.sampling.stages.run_handover`);
        the other annealing settings are then unused. Exact at any t_min, efficient only at
        low noise (t_min of about 0.01 or less).
    inner_steps : int
        0: the moves use ``moves.kernel``. K ≥ 1: each move is one multiple-time-step HMC
        proposal (:func:`~boltzgen.sampling.mcmc.mts_hmc_step`): K leapfrog steps on the
        target's forces inside one step on the learned energy's, so a move costs one model
        evaluation (as a MALA move does) and K cheap force-field ones, and carries the particles
        about K times further; its step is adapted towards HMC's acceptance.
    keep_states : bool
        With ``states``: a move (here and in the final moves) that would carry its particle into
        another state is rejected, so every state keeps its particles from the start of the
        annealing to the end. Exact: each state's particles then anneal along the path restricted
        to that state, whose normaliser is the state's share of Z. Without it a state the
        balancing filled (a rare one) loses its particles to the common one through the moves of
        the early, smooth levels, and its weight ends on a few of them.
    """

    n_levels: int = 16
    betas: Optional[tuple] = None
    cess: Optional[float] = 0.9
    max_levels: int = 64
    mcmc_steps: int = 5
    step_size: Optional[float] = None
    handover: str = "geometric"
    inner_steps: int = 0
    keep_states: bool = False

    def __post_init__(self):
        _choice(self, "handover", "anneal.handover", HANDOVERS)
        _bool(self, "keep_states", "anneal.keep_states")
        _int(self, "inner_steps", "anneal.inner_steps", 0)
        _int(self, "n_levels", "anneal.n_levels", 0)
        if self.betas is not None:
            try:
                grid = [float(b) for b in np.asarray(self.betas, dtype=np.float64).reshape(-1)]
            except (TypeError, ValueError):
                raise _fail("anneal.betas", "must be a sequence of numbers", self.betas) from None
            if not grid or any(b1 <= b0 for b0, b1 in zip([0.0] + grid[:-1], grid)) or abs(grid[-1] - 1.0) > 1e-12:
                raise _fail("anneal.betas", "must increase from above 0 to exactly 1", self.betas)
            grid[-1] = 1.0
            object.__setattr__(self, "betas", tuple(grid))
        _float(self, "cess", "anneal.cess", 0.0, 1.0, low_open=True, high_open=True, optional=True)
        if self.betas is not None and self.cess is not None:
            raise ValueError(
                "anneal.betas and anneal.cess: give either betas (a fixed grid) or cess (an adaptive "
                "one), not both; set cess to None to use betas"
            )
        _int(self, "max_levels", "anneal.max_levels", 1)
        _int(self, "mcmc_steps", "anneal.mcmc_steps", 0)
        _float(self, "step_size", "anneal.step_size", 0.0, low_open=True, optional=True)


@dataclass(frozen=True)
class FinalSettings:
    """Moves on the target alone after the last reweighting.

    Attributes
    ----------
    mcmc_steps : int
        Moves leaving exp(−u) invariant, so the weights stay as they are; they need only the
        target's forces (no model evaluation) and relax the particles locally and spread
        resampled copies apart. 0 returns the particles as the annealing left them.
    md_moves : int
        After them, HMC proposals with the atoms' masses run by OpenMM (an OpenMM target only;
        :mod:`boltzgen.sampling.openmm_hmc`): Metropolis-adjusted molecular dynamics, exact for
        the target, that moves torsions and side chains at their thermal speeds where the
        unit-mass moves barely shift them, so copies of one ancestor decorrelate within their
        basin. With ``anneal.keep_states`` a block of proposals that leaves the particle's state
        is undone. 0: none.
    md_timestep : float
        Velocity-Verlet step of those proposals in fs.
    md_leapfrog : int
        Velocity-Verlet steps per proposal (its length is md_leapfrog · md_timestep).
    kernel : {"same", "mala", "hmc"}
        Kernel of the ``mcmc_steps`` moves. "same": ``moves.kernel``, continuing the annealing's
        step size. "mala" or "hmc": that kernel with a step size of its own (automatic from the
        target's gradients, adapted after every move). HMC moves ``n_leapfrog`` steps per
        proposal, so its particles travel ballistically where MALA's diffuse: the energy, a
        slow variable for diffusive moves, relaxes in fewer force evaluations.
    n_leapfrog : int
        Leapfrog steps per HMC move of ``kernel: hmc`` (each step is one target force).
    """

    mcmc_steps: int = 50
    md_moves: int = 0
    md_timestep: float = 1.0
    md_leapfrog: int = 10
    kernel: str = "same"
    n_leapfrog: int = 10

    def __post_init__(self):
        _int(self, "mcmc_steps", "final.mcmc_steps", 0)
        _choice(self, "kernel", "final.kernel", ("same", *MOVE_KERNELS))
        _int(self, "n_leapfrog", "final.n_leapfrog", 1)
        _int(self, "md_moves", "final.md_moves", 0)
        _float(self, "md_timestep", "final.md_timestep", 0.0, low_open=True)
        _int(self, "md_leapfrog", "final.md_leapfrog", 1)


@dataclass(frozen=True)
class MoveSettings:
    """The MCMC kernel of every stage's moves and the adaptation of its step size.

    Attributes
    ----------
    kernel : {"mala", "hmc"}
        MCMC kernel (:mod:`boltzgen.sampling.mcmc`).
    target_acceptance : float in (0, 1), optional
        Acceptance the step sizes are adapted to (default: the kernel's,
        :data:`~boltzgen.sampling.mcmc.DEFAULT_TARGET_ACCEPTANCE`).
    n_leapfrog : int
        Leapfrog steps per HMC move.
    adapt_rate : float
        Between levels, log κ += adapt_rate · (mean acceptance − target). 0 keeps κ = 1: with
        explicit step sizes, kernels fixed in advance.
    """

    kernel: str = "mala"
    target_acceptance: Optional[float] = None
    n_leapfrog: int = 5
    adapt_rate: float = 1.0

    def __post_init__(self):
        _choice(self, "kernel", "moves.kernel", MOVE_KERNELS)
        _float(
            self, "target_acceptance", "moves.target_acceptance", 0.0, 1.0, low_open=True, high_open=True, optional=True
        )
        _int(self, "n_leapfrog", "moves.n_leapfrog", 1)
        _float(self, "adapt_rate", "moves.adapt_rate", 0.0)

    @property
    def acceptance(self) -> float:
        """float: the target acceptance in use (the given one, else the kernel's default)."""
        return self.acceptance_for(self.kernel)

    def acceptance_for(self, kernel: str) -> float:
        """The target acceptance of ``kernel`` (the given one, else that kernel's default).

        Parameters
        ----------
        kernel : {"mala", "hmc"}

        Returns
        -------
        float
        """
        return DEFAULT_TARGET_ACCEPTANCE[kernel] if self.target_acceptance is None else self.target_acceptance


@dataclass(frozen=True)
class ResampleSettings:
    """When and how particles are resampled.

    Attributes
    ----------
    ess_threshold : float in [0, 1]
        Resample when ESS / B falls below this (0: never, 1: at every level but the last).
    method : {"systematic", "stratified", "multinomial", "residual"}
        Scheme (:mod:`boltzgen.sampling.resampling`).
    denoised_labels : bool
        With ``states``: during the diffusion stage, label each particle by its denoised estimate
        E[y_0 | y_t] (Tweedie, from the gradient at hand) instead of its noisy configuration.
        Labels that need the fine structure of a configuration (a torsion angle) are noise until
        the noise is smaller than a bond; the denoised estimate shows earlier which state a
        particle is heading for. Set False where the labels are coarse functions of the
        coordinates. Only the resampling changes; the estimator stays consistent.
    balance_states : bool
        With ``states``: at the start of the annealing, give every state the same number of
        particles (each keeps its total weight), so a state the model puts a few kT up does not
        rest on a handful of particles.
    strata : {"states", "basins"}
        What per-state resampling (and ``balance_states``, ``anneal.keep_states``) works within:
        the target's states, or the Ramachandran basins of a peptide's residues
        (:func:`boltzgen.states.basin_states`: β/PII, α_R and φ > 0 apart, where the φ-sign states
        pool the first two). The free energies are still reported for the target's states.
    """

    ess_threshold: float = 0.5
    method: str = "systematic"
    denoised_labels: bool = True
    balance_states: bool = False
    strata: str = "states"

    def __post_init__(self):
        _float(self, "ess_threshold", "resampling.ess_threshold", 0.0, 1.0)
        _choice(self, "method", "resampling.method", sorted(RESAMPLING_METHODS))
        _bool(self, "denoised_labels", "resampling.denoised_labels")
        _bool(self, "balance_states", "resampling.balance_states")
        _choice(self, "strata", "resampling.strata", ["basins", "states"])


@dataclass(frozen=True)
class TiltSettings:
    """A bias towards rare states along the diffusion (:mod:`boltzgen.sampling.tilt`).

    The model energies of the diffusion stage become E(y, t) − b(t) s(x), with s a smooth count
    of the rare states (by default, of the target's residues with backbone φ > 0) and b(t)
    rising from 0 at ``t_on`` to ``kT`` at ``t_full`` (linear in log t). More particles then end
    in the rare states, with distinct ancestors; the annealing or hand-over to exp(−u) removes
    the bias exactly, so weights, log Z and state free energies are the target's.

    Attributes
    ----------
    kT : float
        Full strength (reduced units); 0 turns the tilt off. About the model's free-energy
        excess of one rare state gives it a fair share of the particles.
    t_on, t_full : float in (0, 1]
        The bias starts at ``t_on`` and is full from ``t_full`` down to t_min (t_full < t_on).
    sharpness : float
        κ of the default coordinate σ(κ sin φ) per residue.
    """

    kT: float = 0.0
    t_on: float = 0.3
    t_full: float = 0.05
    sharpness: float = 5.0

    def __post_init__(self):
        _float(self, "kT", "tilt.kT")
        _float(self, "t_on", "tilt.t_on", 0.0, 1.0, low_open=True)
        _float(self, "t_full", "tilt.t_full", 0.0, 1.0, low_open=True)
        if self.t_full >= self.t_on:
            raise _fail("tilt.t_full", f"must be below tilt.t_on = {self.t_on}", self.t_full)
        _float(self, "sharpness", "tilt.sharpness", 0.0, low_open=True)


_GROUPS = {
    "diffusion": DiffusionSettings,
    "anneal": AnnealSettings,
    "final": FinalSettings,
    "moves": MoveSettings,
    "resampling": ResampleSettings,
    "tilt": TiltSettings,
}


def _check_chirality(value):
    """False, True, "auto", or (K, 4) chiral-centre indices as a tuple of 4-tuples of int."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, str):
        if value != "auto":
            raise _fail("chirality", 'must be true, false, "auto" or (K, 4) atom indices', value)
        return value
    try:
        centres = np.asarray(value)
        ok = centres.size == 0 or np.issubdtype(centres.dtype, np.integer)
        centres = centres.astype(np.int64).reshape(-1, 4)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise _fail("chirality", 'must be true, false, "auto" or (K, 4) integer atom indices', value)
    return tuple(tuple(int(i) for i in row) for row in centres)


# ---------------------------------------------------------------------------- all settings
@dataclass(frozen=True)
class SMCSettings:
    """Every setting of :func:`~boltzgen.sampling.smc.smc_sample`, grouped by stage.

    Attributes
    ----------
    diffusion : DiffusionSettings
    anneal : AnnealSettings
    final : FinalSettings
    moves : MoveSettings
    resampling : ResampleSettings
    tilt : TiltSettings
    chirality : bool, "auto" or (K, 4) atom indices
        Fold the particles onto the L-form at t_min (the model must be mirror symmetric, as
        E(3)-invariant networks are). "auto": when the target (or, without one, the model) has
        a topology with chiral centres; True: the same, but an error without a topology; (K, 4)
        indices (N, CA, C, CB) name the centres; False never folds.
    batch_size : int, optional
        Evaluate the model in chunks of at most this many configurations (default:
        :func:`~boltzgen.sampling.sde.cpu_eval_chunk` on the CPU, all at once on a GPU; 0: all
        at once). Lower it when a batch does not fit in memory.
    progress : bool
        Show a progress bar on stderr.

    Examples
    --------
    >>> s = SMCSettings.from_dict({"diffusion": {"n_steps": 50}, "final": {"mcmc_steps": 0}})
    >>> s.diffusion.n_steps, s.anneal.cess
    (50, 0.9)
    >>> SMCSettings.from_dict(s.to_dict()) == s
    True
    """

    diffusion: DiffusionSettings = field(default_factory=DiffusionSettings)
    anneal: AnnealSettings = field(default_factory=AnnealSettings)
    final: FinalSettings = field(default_factory=FinalSettings)
    moves: MoveSettings = field(default_factory=MoveSettings)
    resampling: ResampleSettings = field(default_factory=ResampleSettings)
    tilt: TiltSettings = field(default_factory=TiltSettings)
    chirality: Union[bool, str, tuple] = "auto"
    batch_size: Optional[int] = None
    progress: bool = False

    def __post_init__(self):
        for name, cls in _GROUPS.items():
            if not isinstance(getattr(self, name), cls):
                raise _fail(name, f"must be a {cls.__name__}", getattr(self, name))
        object.__setattr__(self, "chirality", _check_chirality(self.chirality))
        if self.batch_size is not None:
            _int(self, "batch_size", "batch_size", 0)
        _bool(self, "progress", "progress")
        if self.diffusion.particle_factor > 1 and self.anneal.handover != "geometric":
            raise _fail(
                "diffusion.particle_factor",
                f"above 1 needs anneal.handover 'geometric' (the annealing resamples the particles down), "
                f"not {self.anneal.handover!r}",
                self.diffusion.particle_factor,
            )

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "SMCSettings":
        """Settings from a nested dict (as :meth:`to_dict` writes it); missing keys keep their defaults.

        Parameters
        ----------
        d : dict or None
            ``{"diffusion": {...}, "anneal": {...}, "final": {...}, "moves": {...},
            "resampling": {...}, "tilt": {...}, "chirality": ..., "batch_size": ..., "progress": ...}``.

        Returns
        -------
        SMCSettings

        Raises
        ------
        ValueError
            For an unknown key (named with its path, e.g. ``anneal.cesss``) or a bad value.
        """
        d = {} if d is None else d
        if not isinstance(d, dict):
            raise ValueError(f"SMC settings must be a dict, got {type(d).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        kwargs = {}
        for key, value in d.items():
            if key not in known:
                raise ValueError(f"{key}: unknown key; known keys: {', '.join(known)}")
            group = _GROUPS.get(key)
            if group is not None and not isinstance(value, group):
                if not isinstance(value, dict):
                    raise _fail(key, "must be a dict", value)
                names = [f.name for f in dataclasses.fields(group)]
                for sub in value:
                    if sub not in names:
                        raise ValueError(f"{key}.{sub}: unknown key; known keys of {key}: {', '.join(names)}")
                value = group(**value)
            kwargs[key] = value
        return cls(**kwargs)

    def to_dict(self) -> dict:
        """Nested dict of plain values (lists for tuples), readable by :meth:`from_dict`.

        Returns
        -------
        dict
        """
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _GROUPS:
                value = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(value).items()}
            elif isinstance(value, tuple):
                value = [list(row) for row in value]
            out[f.name] = value
        return out

    def updated(self, changes: Optional[dict]) -> "SMCSettings":
        """A copy with some settings changed, given as a nested dict like :meth:`from_dict`'s.

        Parameters
        ----------
        changes : dict or None
            E.g. ``{"anneal": {"cess": None}, "chirality": False}``; groups are merged key by key.

        Returns
        -------
        SMCSettings
        """
        if not changes:
            return self
        if not isinstance(changes, dict):
            raise ValueError(f"SMC settings changes must be a dict, got {type(changes).__name__}")
        merged = self.to_dict()
        for key, value in changes.items():
            if key in _GROUPS and isinstance(value, dict) and key in merged:
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        return SMCSettings.from_dict(merged)
