"""The training configuration of ``boltzgen train``: typed, validated, with the defaults in one place.

A configuration is built from, in this order (later ones win, nested mappings merge key by key):

1. the defaults of the dataclasses below (the only place they are written down);
2. the system's shipped ``systems/<name>.train.yaml`` (:func:`system_config_path`);
3. a user YAML file (``config_file``);
4. ``overrides``, a nested dict (the CLI's and :func:`boltzgen.workflow.train`'s options).

A YAML file may start from another one with ``extends: other.yaml`` (a path relative to the
file; a bare file name that is not there names a shipped file under ``systems/``, e.g.
``extends: aldp-vacuum.train.yaml``): the other file is merged first, then this one.

Every key is checked when the configuration is built: an unknown key, a value of the wrong type
or out of range raises :class:`ConfigError`, whose message starts with the key's path
(``optim.lr: must be > 0, got -1``). :meth:`TrainConfig.to_dict` gives the nested dict the
trainer reads and the run directory stores (``config.yaml``, ``model.pt``). The sections and
what each setting does are listed in ``docs/design.md``.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, Optional, Union

import yaml

__all__ = [
    "ConfigError",
    "NetConfig",
    "ModelConfig",
    "LossConfig",
    "OptimConfig",
    "TrainSection",
    "DataConfig",
    "TrainConfig",
    "load_train_config",
    "derived_defaults",
    "read_config_file",
    "read_yaml",
    "deep_update",
    "system_config_path",
    "lambda_clf_at",
    "state_fraction_of",
]


class ConfigError(ValueError):
    """An invalid training configuration; the message starts with the key path (``optim.lr: ...``)."""


# ---------------------------------------------------------------------------- value checks
def _kind_of(value) -> str:
    return "null" if value is None else type(value).__name__


def integer(path: str, value, low: Optional[int] = None, optional: bool = False):
    """``value`` checked as an integer ≥ ``low`` (bool and float are refused).

    Parameters
    ----------
    path : str
        Key path for the error message.
    value : object
        The configured value.
    low : int, optional
        Smallest allowed value.
    optional : bool
        Whether None (YAML ``null``) is allowed.

    Returns
    -------
    int or None

    Raises
    ------
    ConfigError
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(
            f"{path}: must be an integer{' or null' if optional else ''}, got {value!r} ({_kind_of(value)})"
        )
    if low is not None and value < low:
        raise ConfigError(f"{path}: must be >= {low}, got {value}")
    return int(value)


def number(
    path: str,
    value,
    low: Optional[float] = None,
    high: Optional[float] = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
):
    """``value`` checked as a real number in a range, returned as float (bool is refused).

    Parameters
    ----------
    path : str
        Key path for the error message.
    value : object
        The configured value.
    low, high : float, optional
        Bounds of the range.
    low_open, high_open : bool
        Whether the bound itself is excluded.
    optional : bool
        Whether None (YAML ``null``) is allowed.

    Returns
    -------
    float or None

    Raises
    ------
    ConfigError
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        hint = (
            " (YAML reads a number without a decimal point, such as 1e-3, as text: write 1.0e-3)"
            if isinstance(value, str)
            else ""
        )
        raise ConfigError(f"{path}: must be a number{' or null' if optional else ''}, got {value!r}{hint}")
    value = float(value)
    if value != value:
        raise ConfigError(f"{path}: must be a number, got nan")
    if low is not None and (value <= low if low_open else value < low):
        raise ConfigError(f"{path}: must be {'>' if low_open else '>='} {low:g}, got {value:g}")
    if high is not None and (value >= high if high_open else value > high):
        raise ConfigError(f"{path}: must be {'<' if high_open else '<='} {high:g}, got {value:g}")
    return value


def choice(path: str, value, choices) -> str:
    """``value`` checked as one of ``choices``.

    Raises
    ------
    ConfigError
    """
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{path}: must be one of {', '.join(map(str, choices))}; got {value!r}")
    return value


def boolean(path: str, value) -> bool:
    """``value`` checked as true or false.

    Raises
    ------
    ConfigError
    """
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: must be true or false, got {value!r}")
    return value


def lambda_clf(path: str, value):
    """``loss.lambda_clf`` checked: a number ≥ 0 or a schedule ``[[0, λ_0], [s_1, λ_1], …]``.

    Returns
    -------
    float or list
        A number as float; a schedule as a list of [int, number] pairs.

    Raises
    ------
    ConfigError
    """
    if not isinstance(value, (list, tuple)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0.0:
            raise ConfigError(
                f"{path}: must be a number >= 0 or a schedule [[0, lambda_0], [step_1, lambda_1], ...], got {value!r}"
            )
        return float(value)
    bad = ConfigError(
        f"{path}: a schedule must be [[0, lambda_0], [step_1, lambda_1], ...] with increasing "
        f"integer steps starting at 0 and lambdas >= 0, got {value!r}"
    )
    if not value or any(not isinstance(pair, (list, tuple)) or len(pair) != 2 for pair in value):
        raise bad
    steps = [pair[0] for pair in value]
    if (
        any(not isinstance(s, int) or isinstance(s, bool) for s in steps)
        or steps[0] != 0
        or any(b <= a for a, b in zip(steps, steps[1:]))
    ):
        raise bad
    if any(isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam >= 0.0 for _, lam in value):
        raise bad
    return [list(pair) for pair in value]


def lambda_clf_at(value, step: int) -> float:
    """The DiffCLF weight λ_clf in force at a training step.

    Parameters
    ----------
    value : float or list of [step, float] pairs
        ``loss.lambda_clf``: one number for the whole run, or a piecewise-constant schedule
        ``[[0, λ_0], [s_1, λ_1], …]`` (λ_i from step s_i on; steps increasing, the first 0).
    step : int
        Training step (0-based).

    Returns
    -------
    float
    """
    if not isinstance(value, (list, tuple)):
        return float(value)
    current = float(value[0][1])
    for start, lam in value:
        if step >= int(start):
            current = float(lam)
    return current


def _state_shares(path: str, value):
    """``data.state_weights``: true, false, or a mapping of state names to positive shares."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"{path}: must be true, false or a mapping of state names to shares, got {value!r}")
    return {str(k): number(f"{path}.{k}", v, 0.0, low_open=True) for k, v in value.items()}


# ---------------------------------------------------------------------------- sections
def _setting(default, check: Callable[[str, Any], Any], *, factory: bool = False):
    """A dataclass field whose value ``check(path, value)`` validates (and normalises)."""
    if factory:
        return field(default_factory=default, metadata={"check": check})
    return field(default=default, metadata={"check": check})


class _Section:
    """Base of the configuration sections: checks every field on construction; from/to dicts."""

    PATH: ClassVar[str] = ""

    def __post_init__(self):
        for f in fields(self):
            check = f.metadata.get("check")
            if check is not None:
                object.__setattr__(self, f.name, check(self._path(f.name), getattr(self, f.name)))

    @classmethod
    def _path(cls, name: str) -> str:
        return f"{cls.PATH}.{name}" if cls.PATH else name

    @classmethod
    def known_keys(cls) -> list[str]:
        """The keys this section accepts.

        Returns
        -------
        list of str
            In the order of the YAML form.
        """
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, data):
        """The section from a mapping.

        Parameters
        ----------
        data : dict
            The section's keys; missing ones keep their defaults.

        Returns
        -------
        section

        Raises
        ------
        ConfigError
            For a non-mapping, an unknown key or an invalid value.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.PATH or 'configuration'}: must be a mapping, got {data!r}")
        known = cls.known_keys()
        for key in data:
            if key not in known:
                raise ConfigError(f"{cls._path(str(key))}: unknown key (known: {', '.join(known)})")
        return cls(**data)

    def to_dict(self) -> dict:
        """The section as the nested dict the trainer reads.

        Returns
        -------
        dict
            Key -> value (copies).
        """
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}


def _network_options(kind: str, options: dict) -> dict:
    """Check network options against :func:`boltzgen.nn.default_config` (keys and value types)."""
    from .nn import default_config

    allowed = default_config(kind)
    out = {}
    for key, value in options.items():
        path = f"net.{key}"
        if key not in allowed:
            raise ConfigError(f"{path}: unknown key for a {kind} network (known: kind, {', '.join(allowed)})")
        default = allowed[key]
        if default is None:  # an optional number (max_frequency: None is the kind's default)
            value = None if value is None else number(path, value)
        elif isinstance(default, bool):
            value = boolean(path, value)
        elif isinstance(default, int):
            value = integer(path, value, low=0)
        elif isinstance(default, float):
            value = number(path, value)
        elif isinstance(default, str) and not isinstance(value, str):
            raise ConfigError(f"{path}: must be a string, got {value!r}")
        out[key] = value
    if "time_features" in allowed:  # explicit, so that a stored config without it means the old "linear"
        from .nn.time import TIME_FEATURES

        out["time_features"] = choice(
            "net.time_features", out.get("time_features", allowed["time_features"]), TIME_FEATURES
        )
    return out


@dataclass(frozen=True)
class NetConfig(_Section):
    """``net``: the network g_θ(x, t) (:func:`boltzgen.nn.build_network`).

    Attributes
    ----------
    kind : {"mlp", "egnn", "e3nn"}
        ``mlp`` for toy (B, D) targets; ``egnn``/``e3nn`` for molecules (E(3)-invariant energies).
    options : dict
        Sizes and options of that kind (the keys of :func:`boltzgen.nn.default_config`, e.g.
        ``hidden``, ``n_layers``); in YAML they sit beside ``kind``. Larger networks fit better
        and train slower.
    """

    PATH: ClassVar[str] = "net"
    kind: str = "egnn"
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        from .nn import NETWORKS

        object.__setattr__(self, "kind", choice("net.kind", self.kind, sorted(NETWORKS)))
        object.__setattr__(self, "options", _network_options(self.kind, dict(self.options)))

    @classmethod
    def from_dict(cls, data) -> "NetConfig":
        """The section from its YAML form ``{"kind": ..., <options>}``.

        Parameters
        ----------
        data : dict
            ``kind`` (default ``egnn``) and the network's options.

        Returns
        -------
        NetConfig

        Raises
        ------
        ConfigError
            For an unknown kind, an option the kind does not have, or a value of the wrong type.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"net: must be a mapping, got {data!r}")
        data = dict(data)
        return cls(kind=data.pop("kind", cls.kind), options=data)

    def to_dict(self) -> dict:
        """The section's YAML form.

        Returns
        -------
        dict
            ``{"kind": ..., <options>}`` (a copy).
        """
        return {"kind": self.kind, **copy.deepcopy(self.options)}


def _schedule(path: str, value) -> dict:
    """Check a diffusion schedule mapping by building it (:func:`boltzgen.diffusion.schedule_from_config`)."""
    from .diffusion.schedules import schedule_from_config

    if not isinstance(value, dict):
        raise ConfigError(f"{path}: must be a mapping with a kind (vp or ve), got {value!r}")
    choice(f"{path}.kind", value.get("kind", "vp"), ("vp", "ve"))
    try:
        schedule_from_config(dict(value))
    except TypeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return dict(value)


def _output_scales():
    from .energy import OUTPUT_SCALES

    return OUTPUT_SCALES


def _log_normalisers():
    from .energy import LOG_NORMALISER_KINDS

    return LOG_NORMALISER_KINDS


@dataclass(frozen=True)
class ModelConfig(_Section):
    """``model``: the energy model around the network (:class:`boltzgen.energy.EnergyModel`).

    Attributes
    ----------
    schedule : dict
        Forward diffusion: ``{"kind": "vp", "beta_min", "beta_max"}`` or a ``ve`` schedule.
    t_min : float
        Smallest diffusion time trained and sampled, in (0, 1); lower it for sharper targets.
    log_normaliser : {"grid", "mlp", "none"}
        How the learned per-time constant log Z(t) is represented (DiffCLF needs one).
    n_levels : int
        Grid points of the ``grid`` normaliser.
    output_scale : {"none", "edm"}
        ``edm`` scales the network's score to unit size at every t (molecules).
    prior : {"none", "bonded", "forcefield"}
        ``bonded`` builds the force field's bonds, angles and torsions into the energy, diffused
        to each t; ``forcefield`` adds its nonbonded pairs (Coulomb and Lennard-Jones without
        cutoff) and an OBC implicit solvent (``GBSAOBCForce``, or the ``CustomGBForce`` of
        ``implicit/obc1.xml`` and ``obc2.xml``), so that at t → 0 the prior is the
        whole energy (:class:`boltzgen.nn.prior.ForceFieldPrior`; OpenMM targets and
        Lennard-Jones clusters, whose pairs and restraint are their whole energy).
    prior_fade_width : "auto" or float
        Noise-to-signal ratio σ_t/α_t (model units) at which the prior has faded to half;
        ``auto``: the thermal width of the stiffest bond, beyond which summing separately diffused
        terms overstates the curvature.
    prior_gates : {"fixed", "learned"}
        ``fixed``: all terms fade together at ``prior_fade_width``; ``learned``: each term class
        (bonds with and without hydrogen, angles, torsions, Coulomb, Lennard-Jones, GB, the
        cluster restraint) fades at its own trained width and steepness, starting from the fixed fade.
    """

    PATH: ClassVar[str] = "model"
    schedule: dict = _setting(lambda: {"kind": "vp", "beta_min": 0.1, "beta_max": 20.0}, _schedule, factory=True)
    t_min: float = _setting(1e-3, lambda p, v: number(p, v, 0.0, 1.0, low_open=True, high_open=True))
    log_normaliser: str = _setting("grid", lambda p, v: choice(p, v, _log_normalisers()))
    n_levels: int = _setting(64, lambda p, v: integer(p, v, low=1))
    output_scale: str = _setting("none", lambda p, v: choice(p, v, _output_scales()))
    prior: str = _setting("none", lambda p, v: choice(p, v, PRIORS))
    prior_fade_width: Union[str, float] = _setting(
        "auto", lambda p, v: v if v == "auto" else number(p, v, 0.0, low_open=True)
    )
    prior_gates: str = _setting("fixed", lambda p, v: choice(p, v, _prior_gates()))


PRIORS = ("none", "bonded", "forcefield")


def _prior_gates():
    from .nn.prior import GATES

    return GATES


def _losses():
    from .losses import LOSSES

    return LOSSES


def _level_modes():
    from .losses import LEVEL_MODES

    return LEVEL_MODES


def _clf_samples():
    from .losses import CLF_SAMPLES

    return CLF_SAMPLES


@dataclass(frozen=True)
class LossConfig(_Section):
    """``loss``: the training objective (:func:`boltzgen.losses.compute_loss`).

    Attributes
    ----------
    kind : {"dsm", "diffclf", "dsm+diffclf"}
        DSM learns the score; DiffCLF also fixes the energies' offsets between noise levels,
        which free energies between states need.
    k : int
        Noise levels classified together by DiffCLF (>= 2 unless ``kind`` is ``dsm``).
    lambda_clf : float or list
        DiffCLF weight: a number, or ``[[0, λ_0], [step, λ_1], …]`` (piecewise constant).
    levels : str
        How the noise levels of a batch are drawn (:data:`boltzgen.losses.LEVEL_MODES`).
    grid : int
        Points of the time grid of the ``*grid*`` level modes.
    clf_samples : {"all", "one"}
        ``one`` classifies one noisy sample per configuration (cheaper, unbiased).
    target_score : bool
        Regress the score on the data's forces mixed with DSM's noise (target score matching;
        needs forces in the data, or a known system to compute them).
    kappa : "auto" or float
        Stiffness (model units) of the target-score mix; ``auto`` takes the data's mean
        stiffness ⟨‖f‖²⟩/d (:func:`boltzgen.losses.mean_stiffness`).
    lambda_pin : float
        Weight of the energy pin, the spread of E(x, t_pin) − u(x) over a batch (0: off; needs
        reduced energies in the data).
    pin_time : float or None
        t_pin (default: the model's t_min).
    lambda_marginal : float
        Weight of marginal matching (0: off; needs the target): the spread of E(y, t) + log p_t(y)
        at low t, with p_t the target's exact noisy marginal (:func:`boltzgen.losses.marginal_loss`).
        It acts after the ``pretrain_dsm_steps``, as DiffCLF does.
    marginal_t_max : float
        Highest time of marginal matching; its levels are log-spaced from the model's t_min.
    marginal_levels : int
        Number of time levels of marginal matching.
    marginal_frames : int
        Noisy copies per level, computed once before training (each costs a few ms of force-field
        Hessians on small molecules).
    marginal_score : bool
        Also regress the model's score on the exact score of the same copies (DSM's scale).
    marginal_model_samples : int
        Samples of the model itself added to the copies when the term starts (0: none): the EMA
        model's predictor–corrector reverse diffusion (100 log-spaced levels, 3 moves each), so
        that the term also holds where the sampler's particles go, not only near the data.
    lambda_path : float
        Weight of path consistency (0: off; :func:`boltzgen.losses.path_loss`): the variance of the
        sampler's log-weight for one reverse step between neighbouring levels, on noised batch
        frames. It acts after the DSM-only steps.
    path_t_max : float
        Highest level of the pairs.
    path_levels : int
        Levels of the sampler's grid from t = 1 to the model's t_min whose neighbours are paired
        (``boltzgen sample --diffusion-steps``).
    """

    PATH: ClassVar[str] = "loss"
    kind: str = _setting("dsm+diffclf", lambda p, v: choice(p, v, _losses()))
    k: int = _setting(2, lambda p, v: integer(p, v, low=1))
    lambda_clf: Union[float, list] = _setting(1.0, lambda_clf)
    levels: str = _setting("uniform", lambda p, v: choice(p, v, _level_modes()))
    grid: int = _setting(64, lambda p, v: integer(p, v, low=2))
    clf_samples: str = _setting("all", lambda p, v: choice(p, v, _clf_samples()))
    target_score: bool = _setting(False, boolean)
    kappa: Union[str, float] = _setting("auto", lambda p, v: v if v == "auto" else number(p, v, 0.0, low_open=True))
    lambda_pin: float = _setting(0.0, lambda p, v: number(p, v, 0.0))
    pin_time: Optional[float] = _setting(
        None, lambda p, v: number(p, v, 0.0, 1.0, low_open=True, high_open=True, optional=True)
    )
    lambda_marginal: float = _setting(0.0, lambda p, v: number(p, v, 0.0))
    marginal_t_max: float = _setting(0.02, lambda p, v: number(p, v, 0.0, 1.0, low_open=True))
    marginal_levels: int = _setting(8, lambda p, v: integer(p, v, low=1))
    marginal_frames: int = _setting(256, lambda p, v: integer(p, v, low=2))
    marginal_score: bool = _setting(False, boolean)
    marginal_model_samples: int = _setting(0, lambda p, v: integer(p, v, low=0))
    lambda_path: float = _setting(0.0, lambda p, v: number(p, v, 0.0))
    path_t_max: float = _setting(0.1, lambda p, v: number(p, v, 0.0, 1.0, low_open=True))
    path_levels: int = _setting(100, lambda p, v: integer(p, v, low=1))

    def __post_init__(self):
        super().__post_init__()
        if self.kind != "dsm" and self.k < 2:
            raise ConfigError(f"loss.k: must be >= 2 for {self.kind}, got {self.k}")


@dataclass(frozen=True)
class OptimConfig(_Section):
    """``optim``: optimiser, learning-rate schedule and weight averaging.

    Attributes
    ----------
    optimizer : {"adam", "adamw"}
    lr : float
        Peak learning rate (> 0); lower it if training diverges.
    log_normaliser_lr : float or None
        Learning rate of log Z(t) (None: ``lr``).
    weight_decay : float
        >= 0.
    warmup_steps : int
        Linear warm-up steps.
    cosine : bool
        Cosine decay to ``min_lr_factor * lr`` after the warm-up.
    min_lr_factor : float
        In [0, 1].
    grad_clip : float or None
        Gradient-norm clip (0 or None: no clipping).
    ema : float
        Decay of the weight average the run directory's model holds, in [0, 1) (0: no
        averaging); :func:`boltzgen.train.ema_decay` warms it up.
    """

    PATH: ClassVar[str] = "optim"
    optimizer: str = _setting("adam", lambda p, v: choice(p, v, ("adam", "adamw")))
    lr: float = _setting(1e-3, lambda p, v: number(p, v, 0.0, low_open=True))
    log_normaliser_lr: Optional[float] = _setting(None, lambda p, v: number(p, v, 0.0, low_open=True, optional=True))
    weight_decay: float = _setting(0.0, lambda p, v: number(p, v, 0.0))
    warmup_steps: int = _setting(100, lambda p, v: integer(p, v, low=0))
    cosine: bool = _setting(True, boolean)
    min_lr_factor: float = _setting(0.05, lambda p, v: number(p, v, 0.0, 1.0))
    grad_clip: Optional[float] = _setting(1.0, lambda p, v: number(p, v, 0.0, optional=True))
    ema: float = _setting(0.999, lambda p, v: number(p, v, 0.0, 1.0, high_open=True))


@dataclass(frozen=True)
class TrainSection(_Section):
    """``train``: steps, batches, logging and checkpoints.

    Attributes
    ----------
    steps : int
        Optimisation steps.
    batch_size : int
        Configurations per step (split evenly over data-parallel processes).
    checkpoint_every, log_every, val_every : int
        Steps between checkpoints, log rows, validations.
    val_fraction : float
        Share of the data held out for validation, in [0, 1).
    val_batch_size : int
        Held-out configurations per validation.
    sample_check : int
        Reverse-diffusion samples drawn from the final model whose target energy is compared with
        held-out target frames (:func:`boltzgen.diagnostics.sample_quality`; 0: no check). Needs a
        known target.
    threads : int or None
        Torch CPU threads (None: torch's default).
    """

    PATH: ClassVar[str] = "train"
    steps: int = _setting(2000, lambda p, v: integer(p, v, low=1))
    batch_size: int = _setting(256, lambda p, v: integer(p, v, low=1))
    checkpoint_every: int = _setting(250, lambda p, v: integer(p, v, low=1))
    log_every: int = _setting(25, lambda p, v: integer(p, v, low=1))
    val_fraction: float = _setting(0.1, lambda p, v: number(p, v, 0.0, 1.0, high_open=True))
    val_every: int = _setting(250, lambda p, v: integer(p, v, low=1))
    val_batch_size: int = _setting(256, lambda p, v: integer(p, v, low=1))
    sample_check: int = _setting(64, lambda p, v: integer(p, v, low=0))
    threads: Optional[int] = _setting(None, lambda p, v: integer(p, v, low=1, optional=True))


@dataclass(frozen=True)
class DataConfig(_Section):
    """``data``: how training configurations are drawn.

    Attributes
    ----------
    state_fraction : float or None
        Share of every batch drawn from the least-populated state of the system's
        :class:`~boltzgen.states.StateSet`, in (0, 1); None draws frames uniformly. Set it when a
        metastable state is rare in the data (SMC's weights correct the oversampling).
    state_weights : bool or mapping
        Weight every training frame in the objective so that each state carries a share of the
        target, whatever the draws (oversampling) and the kept hotter replicas did to the
        states' shares in the batches: the model then learns one set of state weights at every
        noise level (docs/theory.md, "State weights across t"). ``true``: each state's share
        among the frames at the target temperature; a mapping {state name: share}: the given
        shares (every state named, positive, normalised to sum 1), for example from an earlier
        SMC run; ``false``: off.
    """

    PATH: ClassVar[str] = "data"
    state_fraction: Optional[float] = _setting(
        None, lambda p, v: number(p, v, 0.0, 1.0, low_open=True, high_open=True, optional=True)
    )
    state_weights: Any = _setting(False, lambda p, v: _state_shares(p, v))


#: Old keys still read: path -> new path (a configuration may not give both).
ALIASES = {
    ("train", "phi_positive_fraction"): ("data", "state_fraction"),
    ("data", "phi_positive_fraction"): ("data", "state_fraction"),
}


@dataclass(frozen=True)
class TrainConfig(_Section):
    """The whole training configuration.

    Attributes
    ----------
    net, model, loss, optim, train, data : sections
        See :class:`NetConfig`, :class:`ModelConfig`, :class:`LossConfig`, :class:`OptimConfig`,
        :class:`TrainSection`, :class:`DataConfig`.
    pretrain_dsm_steps : int
        First steps trained with DSM alone (between 0 and ``train.steps``).
    seed : int
        Seed of the weights, the validation split and the batches.
    """

    net: NetConfig = field(default_factory=NetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    pretrain_dsm_steps: int = _setting(0, lambda p, v: integer(p, v, low=0))
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainSection = field(default_factory=TrainSection)
    data: DataConfig = field(default_factory=DataConfig)
    seed: int = _setting(0, integer)

    def __post_init__(self):
        super().__post_init__()
        if self.pretrain_dsm_steps > self.train.steps:
            raise ConfigError(
                f"pretrain_dsm_steps: must be <= train.steps ({self.train.steps}), got {self.pretrain_dsm_steps}"
            )

    @classmethod
    def from_dict(cls, data) -> "TrainConfig":
        """The configuration from a nested dict.

        Parameters
        ----------
        data : dict
            Nested options; missing keys keep their defaults, old names such as
            ``train.phi_positive_fraction`` are read as the new ones.

        Returns
        -------
        TrainConfig

        Raises
        ------
        ConfigError
            For an unknown key, a wrong type or an out-of-range value, naming its path.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"configuration: must be a mapping, got {data!r}")
        data = apply_aliases(data)
        known = cls.known_keys()
        for key in data:
            if key not in known:
                raise ConfigError(f"{key}: unknown key (known: {', '.join(known)})")
        values = {}
        for key, value in data.items():
            section = _SECTIONS.get(key)
            values[key] = section.from_dict(value) if section is not None else value
        return cls(**values)

    def to_dict(self) -> dict:
        """The nested dict the trainer reads (and ``config.yaml`` holds).

        Returns
        -------
        dict
            Sections ``net``, ``model``, ``loss``, ``optim``, ``train``, ``data`` and the keys
            ``pretrain_dsm_steps`` and ``seed`` (copies).
        """
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, _Section) else copy.deepcopy(value)
        return out


_SECTIONS = {
    "net": NetConfig,
    "model": ModelConfig,
    "loss": LossConfig,
    "optim": OptimConfig,
    "train": TrainSection,
    "data": DataConfig,
}


def apply_aliases(data: dict) -> dict:
    """A copy of a nested configuration dict with old key names moved to the new ones.

    Parameters
    ----------
    data : dict
        Nested configuration (not modified).

    Returns
    -------
    dict

    Raises
    ------
    ConfigError
        If both an old name and its new name are given.
    """
    out = copy.deepcopy(data)
    for (section, key), (new_section, new_key) in ALIASES.items():
        part = out.get(section)
        if isinstance(part, dict) and key in part:
            value = part.pop(key)
            target = out.setdefault(new_section, {})
            if not isinstance(target, dict):
                raise ConfigError(f"{new_section}: must be a mapping, got {target!r}")
            if new_key in target:
                raise ConfigError(f"{section}.{key}: old name of {new_section}.{new_key}; give only one of them")
            target[new_key] = value
            if not part:
                del out[section]
    return out


def state_fraction_of(config: dict) -> Optional[float]:
    """``data.state_fraction`` of a nested configuration dict, also of one written before the key
    was renamed (``train.phi_positive_fraction``; e.g. an older checkpoint's).

    Parameters
    ----------
    config : dict

    Returns
    -------
    float or None
    """
    value = (config.get("data") or {}).get("state_fraction")
    if value is None:
        value = (config.get("train") or {}).get("phi_positive_fraction")
    return value


# ---------------------------------------------------------------------------- files
def deep_update(base: dict, update: Optional[dict]) -> dict:
    """A copy of ``base`` with ``update`` merged in recursively.

    Parameters
    ----------
    base : dict
        Nested configuration (not modified).
    update : dict or None
        Values to merge in: nested dicts are merged key by key, anything else replaces.

    Returns
    -------
    dict
        A deep copy.
    """
    out = copy.deepcopy(base)
    for key, value in (update or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(path: str) -> dict:
    """Read a YAML mapping with ``yaml.safe_load``; clear errors for missing or malformed files.

    Parameters
    ----------
    path : str
        YAML file.

    Returns
    -------
    dict
        Its contents (``{}`` for an empty file).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ConfigError
        For invalid YAML or a top level that is not a mapping.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path) as handle:
        try:
            data = yaml.safe_load(handle) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of options, got {type(data).__name__}")
    return data


def read_config_file(path: str) -> dict:
    """A YAML configuration file with its ``extends:`` chain merged in (the extended file first).

    Parameters
    ----------
    path : str
        YAML file. ``extends: OTHER.yaml`` names a file relative to this one's directory; a bare
        file name not found there names a shipped file under ``systems/``.

    Returns
    -------
    dict
        The merged nested options (old key names moved to the new ones), without ``extends``.

    Raises
    ------
    FileNotFoundError
        If a file of the chain does not exist.
    ConfigError
        For invalid YAML, a bad ``extends`` value or a cycle.
    """
    return _read_chain(path, ())


def _read_chain(path: str, seen: tuple) -> dict:
    """:func:`read_config_file` with the files already on the ``extends`` chain."""
    real = os.path.realpath(path)
    if real in seen:
        raise ConfigError(f"{path}: extends: cycle ({' -> '.join(seen + (real,))})")
    data = read_yaml(path)
    parent = data.pop("extends", None)
    data = apply_aliases(data)
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent:
        raise ConfigError(f"{path}: extends: must be a file name, got {parent!r}")
    other = os.path.join(os.path.dirname(os.path.abspath(path)), os.path.expanduser(parent))
    if not os.path.exists(other) and os.path.basename(parent) == parent:
        shipped = _shipped_file(parent)
        other = shipped if shipped is not None else other
    if not os.path.exists(other):
        raise FileNotFoundError(f"{path}: extends: file not found: {other}")
    return deep_update(_read_chain(other, seen + (real,)), data)


def _shipped_file(name: str) -> Optional[str]:
    from .systems.catalog import data_path

    try:
        return data_path(name)
    except FileNotFoundError:
        return None


def system_config_path(system: str) -> Optional[str]:
    """Path of the shipped training defaults of a built-in system (its ``SystemSpec.train_config``).

    Parameters
    ----------
    system : str
        System name.

    Returns
    -------
    str or None
        ``None`` when the system ships no training defaults (or is not built in).
    """
    from .systems.catalog import SPECS

    spec = SPECS.get(system)
    name = spec.train_config if spec is not None else f"{system}.train.yaml"
    return _shipped_file(name) if name else None


#: Per-step cost grows with the atoms (EGNN edges ~ N²); the batch of a derived config shrinks as
#: (N_ref / N)² so a step of an N-atom molecule costs about what a step of the reference system does.
_REFERENCE_CONFIGS = {"molecule": ("aldp-vacuum.train.yaml", 22), "cluster": ("lj13.train.yaml", 13)}


def derived_defaults(event_shape, molecular: bool) -> dict:
    """Training defaults for data of a system that ships no config, from its size and kind.

    A molecule (data with a topology) starts from the alanine-dipeptide recipe, a particle
    cluster (no topology, 3-D particles) from LJ13's, anything else (vectors) from the
    Gaussian-mixture recipe. A molecule's network also gets the bond-graph edge classes and the
    relative-chirality term (``net.bond_edges``, ``net.relative_chirality``). The batch is scaled
    by (reference atoms / atoms)², at least 16, since a step of the fully connected network costs
    about N² per configuration: the cost per step stays near the reference system's
    (benchmarks/cost_scaling.py).

    Parameters
    ----------
    event_shape : tuple of int
        Shape of one configuration: (N, 3) for particles, (d,) for vectors.
    molecular : bool
        Whether the data have a molecular topology.

    Returns
    -------
    dict
        Nested config over the built-in defaults (what ``systems/<name>.train.yaml`` would hold).
    """
    shape = tuple(int(v) for v in event_shape)
    if len(shape) != 2 or shape[1] != 3:
        return read_config_file(_shipped_file("gmm-two-modes.train.yaml"))
    name, atoms = _REFERENCE_CONFIGS["molecule" if molecular else "cluster"]
    config = read_config_file(_shipped_file(name))
    batch = int(config.get("train", {}).get("batch_size", 128))
    scaled = max(16, int(round(batch * (atoms / max(shape[0], 1)) ** 2 / 8.0)) * 8)
    config.setdefault("train", {})["batch_size"] = min(batch, scaled)
    if molecular:
        config.setdefault("data", {})["state_fraction"] = None
        # The bond graph as edge classes, and the relative hands of the Cα centres: without them a
        # longer peptide's own samples came out with overlapping atoms and mixed-hand centres
        # (docs/theory.md, Chirality).
        config.setdefault("net", {}).update(bond_edges=True, relative_chirality=True)
    return config


def load_train_config(
    system: Optional[str] = None,
    config_file: Optional[str] = None,
    overrides: Optional[dict] = None,
    *,
    event_shape=None,
    molecular: bool = False,
) -> TrainConfig:
    """The training configuration: defaults, the system's file, a user file, then overrides.

    Parameters
    ----------
    system : str, optional
        Built-in system whose shipped ``systems/<name>.train.yaml`` applies (if it has one).
    config_file : str, optional
        User YAML file (may say ``extends: other.yaml``).
    overrides : dict, optional
        Nested options merged last (e.g. ``{"train": {"steps": 100}}``).
    event_shape : tuple of int, optional
        Shape of one configuration of the data: when ``system`` ships no config, the defaults
        come from :func:`derived_defaults` instead.
    molecular : bool
        Whether the data have a molecular topology (with ``event_shape``).

    Returns
    -------
    TrainConfig

    Raises
    ------
    ConfigError
        For an unknown key, a wrong type or an out-of-range value (the message names the key).
    FileNotFoundError
        For a missing file.
    """
    merged = TrainConfig().to_dict()
    path = system_config_path(system) if system is not None else None
    if path is not None:
        merged = deep_update(merged, read_config_file(path))
    elif event_shape is not None:
        merged = deep_update(merged, derived_defaults(event_shape, molecular))
    if config_file is not None:
        merged = deep_update(merged, read_config_file(config_file))
    if overrides:
        if not isinstance(overrides, dict):
            raise ConfigError(f"overrides: must be a nested mapping, got {overrides!r}")
        merged = deep_update(merged, apply_aliases(overrides))
    return TrainConfig.from_dict(merged)
