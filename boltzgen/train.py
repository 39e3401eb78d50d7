"""Training of energy models E_θ(x, t) with DSM, DiffCLF or both, and the run directory.

A run directory holds

``config.yaml``       the resolved configuration (what ``boltzgen train`` ran with);
``checkpoint.pt``     the last checkpoint: model, EMA, optimiser and RNG state (atomic; resumable);
``model.pt``          the EMA weights and everything :func:`boltzgen.model.load_model` needs;
``topology.pdb``      the atoms of molecular systems (network atom embeddings are built from it);
``train_log.csv``     one row per logged step (loss parts, learning rate, validation losses);
``metrics.json``      a summary written at the end;
``tensorboard/``      the same scalars for TensorBoard, when it is installed.

Coordinates are standardised before training: the model works in units of ``length_scale``
(the RMS per degree of freedom of the centred data), so noise levels mean the same for nm-scale
molecules and reduced-unit toy targets. :func:`boltzgen.model.load_model` returns a
:class:`~boltzgen.model.TrainedModel` whose
``energy`` and ``score`` take coordinates in the data's own units (nm for molecules).

Data-parallel training on CPU cores is :func:`boltzgen.parallel.train_in_processes` (``boltzgen
train --processes P``); the loop here also runs under any ``torch.distributed`` process group
initialised by the caller, and only rank 0 writes files. The configuration is
:class:`boltzgen.config.TrainConfig` (:func:`boltzgen.config.load_train_config`); the workflow
entry point is :func:`boltzgen.workflow.train`, and :func:`boltzgen.workflow.quickstart` runs the
whole chain.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import time
import warnings
from typing import Optional

import numpy as np
import torch
import yaml

from .allocator import tune_malloc
from .config import (  # noqa: F401  (system_config_path: re-exported for older imports)
    TrainConfig,
    deep_update,
    lambda_clf_at,
    load_train_config,
    state_fraction_of,
    system_config_path,
)
from .energy import EnergyModel
from .io import atomic_path, load_samples, write_json
from .losses import calibrate_log_normaliser, compute_loss, marginal_loss, path_loss
from .model import TrainedModel, build_model, legacy_net_options, load_checkpoint, load_model  # noqa: F401  (TrainedModel, load_model: re-exported for older imports)
from .version import __version__

LOG_FIELDS = [
    "step",
    "phase",
    "lr",
    "total",
    "dsm",
    "clf",
    "clf_accuracy",
    "grad_norm",
    "seconds",
    "val_total",
    "val_dsm",
    "val_clf",
    "pin",
    "val_pin",
    "val_energy_gap_std_kT",
    "val_energy_gap_std_within_kT",
    "val_dF_error_kT",
    "val_score_residual_t0.01",
    "marginal",
    "val_marginal_std_kT_t0.01",
    "path",
]


#: Times and held-out frames of the validation's marginal diagnostic: the spread of
#: E(y, t) + log p_t(y) (kT) with p_t the target's exact noisy marginal (boltzgen.diffusion.laplace).
MARGINAL_DIAGNOSTIC_TIMES = (0.002, 0.01, 0.02)
MARGINAL_DIAGNOSTIC_FRAMES = 128

#: Copies per time level in one step of marginal matching (its within-level spread needs several).
MARGINAL_COPIES_PER_LEVEL = 8

#: The energy pin wants σ(t_pin) below this fraction of the stiffest coordinate's thermal width
#: (a harmonic mode of width w then has E(x, t_pin) − u(x) ∝ σ²/(w² + σ²) ≈ 4 % of its energy).
PIN_SIGMA_OVER_WIDTH = 0.2


# ---------------------------------------------------------------------------- configuration
def _relevant(config: dict, key: str):
    """``config[key]`` without the settings that cannot change the run (for the resume check).

    A DSM-only run ignores the DiffCLF options (``lambda_clf``, ``clf_samples``), so a changed
    default of those does not block resuming it.
    """
    value = config.get(key)
    if key == "loss" and isinstance(value, dict) and value.get("kind") == "dsm":
        value = {k: v for k, v in value.items() if k not in ("lambda_clf", "clf_samples")}
    return value


def resolve_config(
    system: Optional[str] = None,
    config_file: Optional[str] = None,
    overrides: Optional[dict] = None,
    *,
    event_shape=None,
    molecular: bool = False,
) -> dict:
    """The training configuration as the nested dict the :class:`Trainer` reads.

    ``load_train_config(system, config_file, overrides).to_dict()``
    (:func:`boltzgen.config.load_train_config`): the defaults, the system's shipped
    ``systems/<name>.train.yaml``, a user file, then ``overrides``.

    Parameters
    ----------
    system : str, optional
        Built-in system whose shipped defaults apply (if it has any).
    config_file : str, optional
        User YAML file (may say ``extends: other.yaml``).
    overrides : dict, optional
        Nested options merged last (e.g. ``{"train": {"steps": 100}}``).
    event_shape : tuple of int, optional
        Shape of one configuration of the data; for a system without shipped defaults they are
        derived from it (:func:`boltzgen.config.derived_defaults`).
    molecular : bool
        Whether the data have a molecular topology.

    Returns
    -------
    dict

    Raises
    ------
    boltzgen.config.ConfigError
        For an unknown key, a wrong type or an out-of-range value, naming the key.
    """
    return load_train_config(system, config_file, overrides, event_shape=event_shape, molecular=molecular).to_dict()


# ---------------------------------------------------------------------------- data
def prepare_data(x: np.ndarray, mean_free: bool) -> tuple[torch.Tensor, float]:
    """Centre (molecules) and standardise training configurations.

    Parameters
    ----------
    x : array, shape (B, N, 3) or (B, D)
        Configurations in the data's units (nm for molecules).
    mean_free : bool
        Remove each configuration's centre of geometry (translation-invariant targets).

    Returns
    -------
    y : tensor, float32, same shape
        Standardised configurations x / length_scale (centred when mean_free).
    length_scale : float
        RMS per degree of freedom of the centred data (units of x).
    """
    x = torch.as_tensor(np.asarray(x, dtype=np.float64))
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x.reshape(x.shape[0], -1))).any(1).sum())
        raise ValueError(f"training data contain {bad} configurations with NaN or infinite coordinates")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 training configurations, got {x.shape[0]}")
    if mean_free:
        x = x - x.mean(dim=-2, keepdim=True)
        dof = x[0].numel() - x.shape[-1]
    else:
        dof = x[0].numel()
    length_scale = math.sqrt(float((x**2).sum()) / (x.shape[0] * dof))
    return (x / length_scale).float(), length_scale


def state_draw_probabilities(in_state, fraction: float, name: str = "the state") -> torch.Tensor:
    """Per-frame draw probabilities that put ``fraction`` of every batch, on average, in a state.

    Frames in the state are drawn with probability ``fraction / n_in`` each, the others with
    ``(1 - fraction) / n_out``: within each group the draws stay uniform.

    Parameters
    ----------
    in_state : array of bool, shape (B,)
        Which training frames lie in the state.
    fraction : float
        Expected fraction of drawn frames in the state, in (0, 1).
    name : str
        The state, as error messages name it.

    Returns
    -------
    tensor, float64, shape (B,)
        Probabilities summing to 1.

    Raises
    ------
    ValueError
        If the fraction lies outside (0, 1), or no frame (or every frame) lies in the state.
    """
    in_state = np.asarray(in_state, dtype=bool)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the fraction of a state in each batch must lie in (0, 1), got {fraction}")
    n_in = int(in_state.sum())
    if n_in == 0 or n_in == in_state.size:
        raise ValueError(
            f"{n_in} of {in_state.size} training frames lie in {name}; oversampling it needs frames "
            "both in and out of it (simulate longer, or at higher temperatures)"
        )
    p = np.where(in_state, fraction / n_in, (1.0 - fraction) / (in_state.size - n_in))
    return torch.as_tensor(p / p.sum(), dtype=torch.float64)


def rare_state_draw_probabilities(labels, names, fraction: float, state_set: str = "states"):
    """Draw probabilities that give the least-populated state ``fraction`` of every batch.

    The least-populated of the states that hold at least one frame (ties: the lowest label) is
    drawn with total probability ``fraction``, the other frames with ``1 - fraction``
    (:func:`state_draw_probabilities`). When the frames lie in one state only, nothing can be
    oversampled: the draws stay uniform, with a warning.

    Parameters
    ----------
    labels : array of int, shape (B,)
        State label of every training frame (:meth:`boltzgen.states.StateSet.assign`).
    names : sequence of str
        Name of each state (label k is ``names[k]``).
    fraction : float
        ``data.state_fraction``, in (0, 1).
    state_set : str
        Name of the state set, for the messages.

    Returns
    -------
    probabilities : tensor, float64, shape (B,), or None
        None for uniform draws.
    info : dict
        ``state`` (the oversampled state's name or None) and ``n_train_state`` (its frames).
    """
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=len(names))
    occupied = np.flatnonzero(counts)
    rare = int(occupied[np.argmin(counts[occupied])])
    info = {"state": str(names[rare]), "n_train_state": int(counts[rare])}
    if len(occupied) < 2:  # a smoke run whose data never left one state must still train
        shown = ", ".join(f"{name}: {int(n)}" for name, n in zip(names, counts))
        warnings.warn(
            f"data.state_fraction = {fraction}: all training frames lie in one state of {state_set} "
            f"({shown}), so frames are drawn uniformly (simulate longer, or keep hotter replicas: "
            "boltzgen simulate --keep-replicas)",
            stacklevel=3,
        )
        return None, {"state": None, "n_train_state": int(counts[rare])}
    return state_draw_probabilities(labels == rare, float(fraction), str(names[rare])), info


def state_shares(labels, target_frames, names, given=None) -> np.ndarray:
    """The share π_s of each state in the target, for ``data.state_weights``.

    Parameters
    ----------
    labels : array of int, shape (B,)
        State label of every frame.
    target_frames : array of bool, shape (B,)
        Which frames are samples of the target (its temperature).
    names : sequence of str
        State names (label k is ``names[k]``).
    given : mapping, optional
        {name: share} for every state (normalised here); default: the fraction of the target
        frames in each state.

    Returns
    -------
    array, float64, shape (len(names),), summing to 1

    Raises
    ------
    ValueError
        For a mapping that misses or adds a state, when no frame is a target frame, or when a
        state holds frames but none of the target's (its share is unknown).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if given is not None:
        if set(given) != set(names):
            raise ValueError(
                f"data.state_weights names the states {sorted(given)}; the data's states are {list(names)}"
            )
        share = np.array([float(given[n]) for n in names])
        return share / share.sum()
    target = np.asarray(target_frames, dtype=bool)
    if not target.any():
        raise ValueError("data.state_weights needs frames at the target temperature; these data have none")
    share = np.bincount(labels[target], minlength=len(names)) / target.sum()
    present = np.bincount(labels, minlength=len(names)) > 0
    orphan = np.flatnonzero(present & (share == 0))
    if orphan.size:
        raise ValueError(
            f"data.state_weights: {names[orphan[0]]} holds training frames but none at the target "
            "temperature, so its share is unknown (simulate longer, or give the shares)"
        )
    return share


def state_share_weights(labels, shares, draw_probabilities=None) -> torch.Tensor:
    """Per-frame weights that give each state its share π_s in a weighted average over draws.

    With frames drawn with probabilities q_i (uniform when None), frame i of state s gets
    w_i = π_s / Q_s, Q_s = Σ_{j∈s} q_j: the draws' own distribution within each state is kept and
    E_q[w] = 1.

    Parameters
    ----------
    labels : array of int, shape (B,)
        State label of every frame.
    shares : array, shape (n_states,)
        π_s (:func:`state_shares`), summing to 1 over the states that hold frames.
    draw_probabilities : tensor, shape (B,), optional
        How the frames are drawn (default: uniformly).

    Returns
    -------
    tensor, float64, shape (B,)
    """
    labels = np.asarray(labels, dtype=np.int64)
    shares = np.asarray(shares, dtype=np.float64)
    q = np.full(labels.size, 1.0 / labels.size) if draw_probabilities is None else np.asarray(draw_probabilities)
    drawn = np.bincount(labels, weights=q, minlength=shares.size)
    return torch.as_tensor(shares[labels] / np.where(drawn > 0, drawn, 1.0)[labels] * (q > 0), dtype=torch.float64)


# ---------------------------------------------------------------------------- trainer
def _lr_factor(step: int, total: int, warmup: int, cosine: bool, min_factor: float) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if not cosine:
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def local_batch_size(batch_size: int, processes: int) -> int:
    """Each training process's share of a batch.

    Parameters
    ----------
    batch_size : int
        ``train.batch_size``: the configurations of one optimisation step.
    processes : int
        Number of data-parallel training processes.

    Returns
    -------
    int
        ``batch_size / processes``.

    Raises
    ------
    ValueError
        If the batch does not split evenly.
    """
    if batch_size % processes:
        raise ValueError(
            f"train.batch_size = {batch_size} must be divisible by the number of training processes "
            f"({processes}): each draws an equal share of every batch"
        )
    return batch_size // processes


def _batch_seed(seed: int, rank: int) -> int:
    """Seed of the batch generator of training process ``rank`` (distinct streams per process)."""
    return seed * 1000003 + rank


def ema_decay(decay: float, step: int) -> float:
    """EMA decay used after optimisation step ``step`` (0-based): min(decay, (1 + step) / (10 + step)).

    The warm-up keeps the average from clinging to the initial weights in short runs (with a fixed
    decay d the EMA after n steps still holds d^n of the untrained network): until it reaches
    ``decay`` it averages over roughly the last tenth of the steps.

    Parameters
    ----------
    decay : float
        The configured decay ``optim.ema`` (0 disables averaging).
    step : int
        Optimisation steps done before this update.

    Returns
    -------
    float
        The decay of this update.
    """
    return min(float(decay), (1.0 + step) / (10.0 + step))


class Trainer:
    """Trains an energy model on standardised configurations; see the module docstring.

    Parameters
    ----------
    config : TrainConfig or dict
        The configuration (:func:`boltzgen.config.load_train_config`, or its nested dict; a dict
        is checked and completed with the defaults). ``trainer.config`` holds the nested dict.
    data : array, shape (B, N, 3) or (B, D)
        Training configurations in data units.
    run_dir : str
        Output directory (created; an existing checkpoint there is resumed).
    topology : mdtraj.Topology, optional
        Atoms of molecular data.
    metadata : dict, optional
        Stored in model.pt and metrics.json (system, data file, …).
    progress : bool
        Show a progress bar with the loss parts.
    start_from : str, optional
        A DSM pre-training checkpoint to start from when the run directory holds none
        (:meth:`start_from`).
    states : StateSet, optional
        Metastable states for ``data.state_fraction`` and the per-state diagnostics (default:
        :func:`boltzgen.states.default_states` of ``topology``).
    energies : array, shape (B,), optional
        Reduced target energies u of the configurations (kT): the energy pin and the
        diagnostics.
    forces : array, shape of ``data``, optional
        Reduced forces −∇u (kT per data unit of length): target score matching.
    target_frames : array of bool, shape (B,), optional
        Which configurations are samples of the target itself (default: all); the diagnostics
        use the held-out ones (a replica ladder's hotter frames are not).
    target : OpenMMTarget, optional
        The target, for ``model.prior`` (its force field's terms).
    """

    def __init__(
        self,
        config,
        data,
        run_dir: str,
        *,
        topology=None,
        metadata: Optional[dict] = None,
        progress: bool = True,
        start_from: Optional[str] = None,
        states=None,
        energies=None,
        forces=None,
        target_frames=None,
        target=None,
    ):
        if not isinstance(config, TrainConfig):
            config = TrainConfig.from_dict(config)
        self.settings = config
        self.config = config = config.to_dict()
        self.run_dir = run_dir
        self.metadata = dict(metadata or {})
        self.progress = progress
        self.rank, self.world = _dist_info()
        self.local_batch = local_batch_size(int(config["train"]["batch_size"]), self.world)
        data = np.asarray(data)
        event_shape = tuple(data.shape[1:])
        mean_free = len(event_shape) == 2 and event_shape[1] == 3
        if topology is not None and (len(event_shape) != 2 or event_shape[0] != topology.n_atoms):
            raise ValueError(
                f"data have {event_shape[0] if event_shape else '?'} atoms, the topology {topology.n_atoms}"
            )
        y, self.length_scale = prepare_data(data, mean_free)
        seed = int(config["seed"])
        split = torch.Generator().manual_seed(seed)
        order = torch.randperm(y.shape[0], generator=split)
        n_val = int(round(float(config["train"]["val_fraction"]) * y.shape[0]))
        self.val_data, self.train_data = y[order[:n_val]], y[order[n_val:]]
        self.topology = topology
        self._physics(config, data, energies, forces, target_frames, order[:n_val], order[n_val:])
        if states is None and topology is not None:
            from .states import default_states

            states = default_states(topology)
        self.states = states
        self._diagnostic_cache: Optional[tuple] = None
        # Rare-state oversampling: the model then learns a proposal with more weight in the rare
        # state than the data have; SMC's weights and the reweighting against the target correct it.
        self.draw_probabilities: Optional[torch.Tensor] = None
        fraction = state_fraction_of(config)
        if fraction is not None:
            self.draw_probabilities = self._oversample(data[order[n_val:].numpy()], states, float(fraction))
        self.sample_weight: Optional[torch.Tensor] = None
        self.val_weight: Optional[torch.Tensor] = None
        if config["data"]["state_weights"]:
            self._state_weights(data, order[:n_val].numpy(), order[n_val:].numpy(), states)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the same seed gives the same initial weights
            self.model = build_model(config, event_shape, topology, self.length_scale, prior=self._prior(target))
        self.marginal = self._marginal_pairs(config, target, seed)
        # kept (open) for the model's own copies of marginal matching, added when the term starts
        self._marginal_target = (
            target if self.marginal is not None and config["loss"]["marginal_model_samples"] else None
        )
        self.path_times = self._path_times(config)
        # built at the first validation, on rank 0 only (it alone validates): a finished run that
        # is reused never validates, and these take minutes of target Hessians for a peptide
        self._val_marginal, self._val_marginal_source = None, ((target, seed) if self.rank == 0 else None)
        self.ema = copy.deepcopy(self.model.inner).requires_grad_(False)
        o = config["optim"]
        groups = self.model.inner.parameter_groups(
            float(o["lr"]), o.get("log_normaliser_lr"), weight_decay=float(o["weight_decay"])
        )
        optimiser = torch.optim.AdamW if o["optimizer"] == "adamw" else torch.optim.Adam
        self.optimiser = optimiser(groups)
        for group in self.optimiser.param_groups:
            group["base_lr"] = group["lr"]
        self.generator = torch.Generator().manual_seed(_batch_seed(seed, self.rank))
        self.step = 0
        self.best_val: Optional[float] = None
        self.start_checkpoint = start_from

    def _prior(self, target):
        """The force-field prior of ``model.prior`` in model units (None for ``none``)."""
        if self.config["model"]["prior"] == "none" or target is None:
            return None
        from .nn.prior import prior_for_target

        m = self.config["model"]
        prior = prior_for_target(
            target,
            self.length_scale,
            m["prior_fade_width"],
            nonbonded=m["prior"] == "forcefield",
            gates=m["prior_gates"],
        )
        self.metadata["prior_terms"] = prior.extra_repr()
        return prior

    def _physics(self, config, data, energies, forces, target_frames, val_idx, train_idx) -> None:
        """Energies, forces (model units) and the target-frame mask, split like the data."""
        loss, n = config["loss"], data.shape[0]
        if loss["target_score"] and forces is None:
            raise ValueError(
                "loss.target_score needs the forces of the training data: train on a file written by "
                "boltzgen simulate, or name the system (--system) so that they can be computed"
            )
        if float(loss["lambda_pin"]) > 0 and energies is None:
            raise ValueError("loss.lambda_pin needs the reduced energies of the training data (reduced_energy)")
        u = None if energies is None else torch.as_tensor(np.asarray(energies, dtype=np.float64).reshape(-1))
        if u is not None and (u.shape[0] != n or not torch.isfinite(u).all()):
            raise ValueError(f"need {n} finite reduced energies, got {u.shape[0]} (or non-finite values)")
        f = None
        if forces is not None:
            f = torch.as_tensor(np.asarray(forces, dtype=np.float64))
            if f.shape != data.shape or not torch.isfinite(f).all():
                raise ValueError(f"forces must be finite with the data's shape {data.shape}, got {tuple(f.shape)}")
            # model coordinates y = x / L: -grad_y u = L (-grad_x u)
            f = f * self.length_scale
            if self.val_data.dim() == 3:
                f = f - f.mean(dim=-2, keepdim=True)
            f = f.float()
        mask = torch.ones(n, dtype=torch.bool) if target_frames is None else torch.as_tensor(target_frames).bool()
        self.train_u, self.val_u = (None, None) if u is None else (u[train_idx], u[val_idx])
        self.train_force, self.val_force = (None, None) if f is None else (f[train_idx], f[val_idx])
        self.val_target, self.train_target = mask[val_idx], mask[train_idx]
        self.kappa: Optional[float] = None
        if f is not None and float(loss["lambda_pin"]) > 0:
            self._check_pin_time(config, f)
        if loss["target_score"]:
            from .losses import mean_stiffness

            auto = loss["kappa"] == "auto"
            self.kappa = mean_stiffness(self.train_force, self.val_data.dim() == 3) if auto else float(loss["kappa"])
            self.metadata["kappa"] = self.kappa

    def _marginal_pairs(self, config: dict, target, seed: int) -> Optional[tuple]:
        """Noisy training copies and their exact log-marginals for ``loss.lambda_marginal`` (None: off).

        The levels are log-spaced from the model's t_min to ``loss.marginal_t_max``; the copies
        come from training frames drawn as the batches are (a rare state oversampled with
        ``data.state_fraction``; a ladder's hotter frames included), with the run's seed, so a
        resumed run gets the same. The exact marginal holds at any y, and the spread's minimiser,
        E_θ = −log p_t + c, does not depend on where the copies lie: every state needs copies, and
        the frames at the target temperature alone may hold none of a rare one.
        """
        loss = config["loss"]
        if float(loss["lambda_marginal"]) <= 0:
            return None
        if target is None:
            raise ValueError(
                "loss.lambda_marginal needs the target (name the system, or train on a boltzgen simulate file)"
            )
        t_lo, t_hi = float(config["model"]["t_min"]), float(loss["marginal_t_max"])
        if t_hi <= t_lo:
            raise ValueError(f"loss.marginal_t_max ({t_hi:g}) must exceed model.t_min ({t_lo:g})")
        times = np.geomspace(t_lo, t_hi, int(loss["marginal_levels"])).tolist()
        g = torch.Generator().manual_seed(seed + 7919)
        n = min(int(loss["marginal_frames"]), self.train_data.shape[0])
        if n < 2:
            raise ValueError("loss.lambda_marginal needs at least 2 training frames")
        if self.draw_probabilities is None:
            pick = torch.randperm(self.train_data.shape[0], generator=g)[:n]
        else:
            pick = torch.multinomial(self.draw_probabilities, n, replacement=False, generator=g)
        y, log_p, t, score = self._noisy_marginals(target, self.train_data[pick].double(), times, g)
        keep = torch.isfinite(log_p).all(0)
        score = score[:, keep].float() if loss["marginal_score"] else None
        return y[:, keep].float(), log_p[:, keep], t, score

    @staticmethod
    def _path_times(config: dict) -> Optional[torch.Tensor]:
        """The sampler's levels (``loss.path_levels`` from t = 1 to the model's t_min, quadratic
        as ``boltzgen sample``'s default grid) up to ``loss.path_t_max``, for ``loss.lambda_path``
        (None: off)."""
        loss = config["loss"]
        if float(loss["lambda_path"]) <= 0:
            return None
        from .diffusion.kernels import time_grid

        times = time_grid(int(loss["path_levels"]), float(config["model"]["t_min"]))
        keep = times <= float(loss["path_t_max"])
        if int(keep.sum()) < 2:
            raise ValueError(f"loss.path_t_max ({loss['path_t_max']:g}) leaves fewer than 2 levels of the grid")
        return times[keep]

    def _noisy_marginals(self, target, x0: torch.Tensor, times: list, generator: torch.Generator) -> tuple:
        """:func:`~boltzgen.diffusion.laplace.marginal_pairs` of model-unit frames x0 under the
        target's energy u(L y): (y, log_p, t, score)."""
        from .diffusion.laplace import marginal_pairs, target_energy_in_model_units

        pairs = marginal_pairs(
            target_energy_in_model_units(target, self.length_scale),
            x0,
            self.model.inner.schedule,
            times,
            mean_free=x0.dim() == 3,
            generator=generator,
        )
        return pairs.y, pairs.log_p, pairs.t, pairs.score

    def _validation_marginals(self, target, seed: int) -> Optional[tuple]:
        """Noisy copies of held-out target frames at :data:`MARGINAL_DIAGNOSTIC_TIMES` with their
        exact log-marginals, and the frames' state labels and state names (None without a target
        or validation frames): the arguments of :func:`boltzgen.diagnostics.marginal_spread`."""
        if target is None or not hasattr(target, "reduced_energy_and_force"):
            return None
        pick = self.val_target.nonzero().reshape(-1)[:MARGINAL_DIAGNOSTIC_FRAMES]
        times = [t for t in MARGINAL_DIAGNOSTIC_TIMES if t > float(self.config["model"]["t_min"])]
        if pick.numel() < 2 or not times:
            return None
        x0 = self.val_data[pick].double()
        y, log_p, t, _ = self._noisy_marginals(target, x0, times, torch.Generator().manual_seed(seed + 104729))
        labels, names = None, None
        if self.states is not None:
            labels = np.asarray(self.states.assign((x0 * self.length_scale).numpy()))
            names = list(self.states.names)
        return y.float(), log_p, t, labels, names

    def _validation_marginal(self) -> Optional[tuple]:
        """:meth:`_validation_marginals` of this run, built once at its first call."""
        if self._val_marginal_source is not None:
            self._val_marginal = self._validation_marginals(*self._val_marginal_source)
            self._val_marginal_source = None
        return self._val_marginal

    def _check_pin_time(self, config: dict, f: torch.Tensor) -> None:
        """Warn when σ(t_pin) is not well below the thermal width of the stiffest coordinate.

        The pin equates E(x, t_pin) with u(x), which holds only where p_{t_pin} ≈ p_0. The
        stiffest coordinate's stiffness is estimated from the forces as max over coordinates (atoms,
        for molecules) of ⟨f²⟩ per degree of freedom; its thermal width is 1/√stiffness.
        """
        from .diffusion.schedules import schedule_from_config

        schedule = schedule_from_config(config["model"]["schedule"])
        t_pin = config["loss"]["pin_time"] or config["model"]["t_min"]
        per_coordinate = (f.double() ** 2).mean(0)
        stiffest = float(per_coordinate.mean(-1).max() if f.dim() == 3 else per_coordinate.max())
        ratio = float(schedule.sigma(torch.tensor(float(t_pin), dtype=torch.float64))) * math.sqrt(stiffest)
        self.metadata["pin_sigma_over_width"] = ratio
        if ratio > PIN_SIGMA_OVER_WIDTH:
            warnings.warn(
                f"the energy pin at t = {t_pin:g} smears the stiffest coordinate: sigma(t_pin) is {ratio:.2f} of its "
                f"thermal width (want < {PIN_SIGMA_OVER_WIDTH}); E(x, t_pin) then differs from u(x) by more than a "
                "constant. Lower model.t_min or loss.pin_time",
                RuntimeWarning,
                stacklevel=3,
            )

    def _oversample(self, train_x: np.ndarray, states, fraction: float) -> Optional[torch.Tensor]:
        """Draw probabilities of the training frames for ``data.state_fraction`` (None: uniform)."""
        if states is None:
            raise ValueError(
                "data.state_fraction (boltzgen train --state-fraction) needs the system's metastable "
                "states; these data have "
                + ("no topology" if self.topology is None else "no default states (no peptide backbone phi)")
            )
        labels = np.asarray(states.assign(train_x), dtype=np.int64)
        probabilities, info = rare_state_draw_probabilities(labels, states.names, fraction, states.name)
        self.metadata.update(oversampled_state=info["state"], n_train_state=info["n_train_state"])
        return probabilities

    def _state_weights(self, data: np.ndarray, val_idx, train_idx, states) -> None:
        """``data.state_weights``: the training frames' weights (for their draws) and the
        validation frames' (taken uniformly)."""
        if states is None:
            raise ValueError("data.state_weights needs the system's metastable states; these data have none")
        labels = np.asarray(states.assign(np.asarray(data)), dtype=np.int64)
        names = list(states.names)
        setting = self.config["data"]["state_weights"]
        given = setting if isinstance(setting, dict) else None
        share = state_shares(labels[train_idx], self.train_target.numpy(), names, given)
        self.sample_weight = state_share_weights(labels[train_idx], share, self.draw_probabilities).float()
        if len(val_idx):
            self.val_weight = state_share_weights(labels[val_idx], share).float()
        self.metadata["state_shares"] = {n: float(v) for n, v in zip(names, share)}

    # -------------------------------------------------------------- files
    def _path(self, name: str) -> str:
        return os.path.join(self.run_dir, name)

    def checkpoint_state(self) -> dict:
        """Everything :meth:`resume` needs to continue the run bit for bit.

        Returns
        -------
        dict
            ``step``, model, EMA and optimiser state dicts, the batch generator's state
            (``generator``; every rank's in ``rank_generators``, and ``world`` the number of
            processes), torch's RNG state, ``config``, ``length_scale``, ``best_val`` and
            ``boltzgen_version``. With several processes this is a collective call.
        """
        return {
            "step": self.step,
            "model": self.model.inner.state_dict(),
            "ema": self.ema.state_dict(),
            "optimiser": self.optimiser.state_dict(),
            "generator": self.generator.get_state(),
            "rank_generators": self._gather_generator_states(),
            "world": self.world,
            "torch_rng": torch.get_rng_state(),
            "config": self.config,
            "length_scale": self.length_scale,
            "best_val": self.best_val,
            "boltzgen_version": __version__,
        }

    def _gather_generator_states(self) -> list:
        """Every rank's batch-generator state, in rank order (a collective call)."""
        own = self.generator.get_state()
        if self.world == 1:
            return [own]
        states = [torch.empty_like(own) for _ in range(self.world)]
        torch.distributed.all_gather(states, own)
        return states

    def _check_ranks_agree(self) -> None:
        """Raise if the ranks' parameters differ (a collective call; they must stay identical)."""
        if self.world == 1:
            return
        flat = torch.cat([p.detach().reshape(-1) for p in self.model.inner.parameters()])
        reference = flat.clone()
        torch.distributed.broadcast(reference, 0)
        if not torch.equal(reference, flat):
            raise RuntimeError(
                f"training process {self.rank} holds other parameters than process 0 at step "
                f"{self.step}; the processes must apply identical updates"
            )

    def save(self) -> None:
        """Write checkpoint.pt and model.pt atomically (rank 0 writes; every rank must call it,
        and returns once the files are complete)."""
        self._check_ranks_agree()
        state = self.checkpoint_state()  # collective: gathers every rank's generator state
        if self.rank == 0:
            with atomic_path(self._path("checkpoint.pt")) as tmp:
                torch.save(state, tmp)
            blob = {
                "state_dict": self.ema.state_dict(),
                "config": self.config,
                "event_shape": list(self.model.event_shape),
                "length_scale": self.length_scale,
                "has_topology": self.topology is not None,
                "prior": self.model.inner.config()["prior"],
                "step": self.step,
                "metadata": self.metadata,
                "boltzgen_version": __version__,
            }
            with atomic_path(self._path("model.pt")) as tmp:
                torch.save(blob, tmp)
        if self.world > 1:
            torch.distributed.barrier()  # no rank reads a checkpoint before it is written

    def _write_static_files(self) -> None:
        if self.rank != 0:
            return
        os.makedirs(self.run_dir, exist_ok=True)
        with atomic_path(self._path("config.yaml")) as tmp, open(tmp, "w") as handle:
            yaml.safe_dump(self.config, handle, sort_keys=False)
        if self.topology is not None:
            import mdtraj

            with atomic_path(self._path("topology.pdb")) as tmp:
                xyz = np.zeros((1, self.topology.n_atoms, 3), dtype=np.float32)
                xyz[0, :, 0] = np.arange(self.topology.n_atoms) * 0.15  # placeholder coordinates
                mdtraj.Trajectory(xyz, self.topology).save_pdb(tmp)

    def resume(self) -> bool:
        """Load checkpoint.pt from the run directory if there is one.

        Returns
        -------
        bool
            True if a checkpoint was loaded (the training log is truncated to its step).

        Raises
        ------
        ValueError
            If the checkpoint was written with a different net, model, loss, optim,
            pretraining or seed configuration.
        """
        path = self._path("checkpoint.pt")
        if not os.path.exists(path):
            return False
        state = load_checkpoint(path)
        state["config"] = legacy_net_options(state["config"])
        for key in ("net", "model", "loss", "optim", "pretrain_dsm_steps", "seed"):
            if _relevant(state["config"], key) != _relevant(self.config, key):
                raise ValueError(
                    f"{self.run_dir} holds a run with a different {key!r} configuration "
                    f"({state['config'].get(key)} vs {self.config.get(key)}); use a new run directory"
                )
        before, now = state_fraction_of(state["config"]), state_fraction_of(self.config)
        if before != now:
            raise ValueError(
                f"{self.run_dir} holds a run with data.state_fraction = {before}, this run has {now}; "
                "use a new run directory"
            )
        self._load_state(state)
        self._truncate_log(self.step)
        return True

    def _load_state(self, state: dict) -> None:
        self.model.inner.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimiser.load_state_dict(state["optimiser"])
        generators = state.get("rank_generators") or [state["generator"]]
        if len(generators) == self.world:
            self.generator.set_state(generators[self.rank])
        else:  # the batches cannot continue bit for bit: start fresh streams, distinct per rank and step
            warnings.warn(
                f"the checkpoint was written by {len(generators)} training process(es), this run has "
                f"{self.world}: training continues, with new random batches",
                stacklevel=2,
            )
            self.generator.manual_seed(
                _batch_seed(int(self.config["seed"]), self.rank) + 7919 * (int(state["step"]) + 1)
            )
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        self.best_val = state.get("best_val")

    def start_from(self, path: str) -> int:
        """Start this run from a checkpoint of another run's DSM pre-training, bit for bit.

        The result is the run this configuration gives from step 0: the checkpoint's steps were
        DSM alone, as this run's first steps are (``pretrain_dsm_steps``), with the same network,
        model, optimiser, seed, schedule, batch and data. One pre-training can so be fine-tuned
        with several DiffCLF settings (``lambda_clf``, ``clf_samples``). The source's log rows up
        to the checkpoint are copied when its ``train_log.csv`` lies beside it.

        Parameters
        ----------
        path : str
            A ``checkpoint.pt`` (or a copy of one).

        Returns
        -------
        int
            The step the run continues from.

        Raises
        ------
        ValueError
            If the checkpoint's run differs in anything that acted before its step, or if its
            step lies past either run's DSM-only phase.
        """
        if not os.path.exists(path):
            raise FileNotFoundError(f"checkpoint to start from not found: {path}")
        state = load_checkpoint(path)
        source, step = legacy_net_options(state["config"]), int(state["step"])
        for key in ("net", "model", "optim", "seed"):
            if source.get(key) != self.config.get(key):
                raise ValueError(
                    f"{path} comes from a run with a different {key!r} configuration "
                    f"({source.get(key)} vs {self.config.get(key)})"
                )
        for key in ("steps", "batch_size", "val_fraction"):
            if source["train"].get(key) != self.config["train"].get(key):
                raise ValueError(
                    f"{path} comes from a run with train.{key} = {source['train'].get(key)}, this run "
                    f"has {self.config['train'].get(key)} (the schedule and batches would differ)"
                )
        if state_fraction_of(source) != state_fraction_of(self.config):
            raise ValueError(
                f"{path} comes from a run with data.state_fraction = {state_fraction_of(source)}, this "
                f"run has {state_fraction_of(self.config)} (the batches would differ)"
            )
        for key in ("k", "levels", "grid"):
            if source["loss"].get(key) != self.config["loss"].get(key):
                raise ValueError(
                    f"{path} comes from a run with loss.{key} = {source['loss'].get(key)}, this run "
                    f"has {self.config['loss'].get(key)}"
                )
        if abs(float(state["length_scale"]) - self.length_scale) > 1e-9 * self.length_scale:
            raise ValueError(
                f"{path} was trained on other data (length scale {state['length_scale']:.6g} vs "
                f"{self.length_scale:.6g})"
            )
        for name, config in (("the checkpoint's run", source), ("this run", self.config)):
            if config["loss"]["kind"] != "dsm" and step > int(config.get("pretrain_dsm_steps", 0)):
                raise ValueError(
                    f"{path} is at step {step}, past the DSM-only steps of {name} "
                    f"(pretrain_dsm_steps = {config.get('pretrain_dsm_steps', 0)})"
                )
        self._load_state(state)
        self.metadata["started_from"] = {"checkpoint": os.path.abspath(path), "step": step}
        log = os.path.join(os.path.dirname(os.path.abspath(path)), "train_log.csv")
        if self.rank == 0:
            self._copy_log_until(log, step)
        return step

    def _truncate_log(self, step: int) -> None:
        self._copy_log_until(self._path("train_log.csv"), step)

    def _copy_log_until(self, source: str, step: int) -> None:
        """Make this run's train_log.csv the rows of ``source`` up to ``step`` (atomically; nothing
        if ``source`` does not exist)."""
        if not os.path.exists(source):
            return
        with open(source) as handle:
            rows = [row for row in csv.DictReader(handle) if int(row["step"]) <= step]
        with atomic_path(self._path("train_log.csv")) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, LOG_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def _tensorboard(self):
        """A SummaryWriter under RUN_DIR/tensorboard when TensorBoard is installed, else None."""
        if not hasattr(self, "_tb"):
            self._tb = None
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                return None
            self._tb = SummaryWriter(self._path("tensorboard"), purge_step=self.step)
        return self._tb

    def _log(self, row: dict) -> None:
        if self.rank != 0:
            return
        writer = self._tensorboard()
        if writer is not None:
            for key, value in row.items():
                if key not in ("step", "phase") and isinstance(value, float):
                    writer.add_scalar(key, value, int(row["step"]))
        path = self._path("train_log.csv")
        new = not os.path.exists(path)
        with open(path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, LOG_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow({k: row.get(k, "") for k in LOG_FIELDS})

    # -------------------------------------------------------------- steps
    def _loss_options(self, step: int) -> dict:
        loss = self.config["loss"]
        kind = "dsm" if step < int(self.config["pretrain_dsm_steps"]) else loss["kind"]
        return dict(
            loss=kind,
            k=int(loss["k"]),
            lambda_clf=lambda_clf_at(loss["lambda_clf"], step),
            levels=loss["levels"],
            grid=loss["grid"],
            clf_samples=loss.get("clf_samples", "all"),
            kappa=self.kappa,
            lambda_pin=float(loss["lambda_pin"]),
            t_pin=loss["pin_time"],
        )

    def _physics_batch(self, idx: torch.Tensor, forces, energies, weights=None) -> dict:
        """The forces, energies and weights of the frames ``idx`` that the objective uses."""
        out = {} if weights is None else {"sample_weight": weights[idx]}
        if self.kappa is not None:
            out["force"] = forces[idx]
        if float(self.config["loss"]["lambda_pin"]) > 0:
            out["energy"] = energies[idx]
        return out

    def _batch_indices(self, data: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
        if self.draw_probabilities is None:
            return torch.randint(0, data.shape[0], (size,), generator=generator)
        return torch.multinomial(self.draw_probabilities, size, replacement=True, generator=generator)

    def _batch(self, data: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
        return data[self._batch_indices(data, size, generator)]

    def train_step(self) -> dict:
        """One optimisation step (learning-rate schedule, loss, gradient clipping, EMA update).

        Returns
        -------
        dict
            The scalar loss parts as floats (``total``, ``dsm``, ``clf``, ``clf_accuracy`` as
            computed), plus ``phase`` (the loss kind), ``lr`` and ``grad_norm`` (before clipping).

        Raises
        ------
        FloatingPointError
            On a non-finite gradient.
        """
        cfg, o = self.config["train"], self.config["optim"]
        factor = _lr_factor(
            self.step, int(cfg["steps"]), int(o["warmup_steps"]), bool(o["cosine"]), float(o["min_lr_factor"])
        )
        for group in self.optimiser.param_groups:
            group["lr"] = group["base_lr"] * factor
        options = self._loss_options(self.step)
        self._calibrate_at_clf_start(options)
        idx = self._batch_indices(self.train_data, self.local_batch, self.generator)
        physics = self._physics_batch(idx, self.train_force, self.train_u, self.sample_weight)
        parts = compute_loss(self.model.inner, self.train_data[idx], self.generator, **options, **physics)
        # the extra terms act after the DSM-only phase: from the first step marginal matching kept
        # the network on DSM's initial plateau
        after_dsm = self.step >= int(self.config["pretrain_dsm_steps"])
        if self.marginal is not None and after_dsm:
            if self._marginal_target is not None:
                self._add_model_marginals()
            parts["marginal"] = self._marginal_term()
            parts["total"] = parts["total"] + float(self.config["loss"]["lambda_marginal"]) * parts["marginal"]
        if self.path_times is not None and after_dsm:
            parts["path"] = path_loss(
                self.model.inner,
                self.train_data[idx],
                self.path_times,
                self.generator,
                sample_weight=physics.get("sample_weight"),
            )
            parts["total"] = parts["total"] + float(self.config["loss"]["lambda_path"]) * parts["path"]
        self.optimiser.zero_grad(set_to_none=True)
        parts["total"].backward()
        scalars = {k: v.detach() for k, v in parts.items() if torch.is_tensor(v) and v.numel() == 1}
        if self.world > 1:
            scalars = self._average_over_ranks(scalars)
        clip = o.get("grad_clip")
        params = [p for p in self.model.inner.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, float(clip) if clip else float("inf"))
        if not torch.isfinite(norm):
            raise FloatingPointError(f"non-finite gradient at step {self.step}; lower optim.lr or raise model.t_min")
        self.optimiser.step()
        decay = ema_decay(float(o["ema"]), self.step)
        with torch.no_grad():
            for p_ema, p in zip(self.ema.parameters(), self.model.inner.parameters()):
                p_ema.lerp_(p, 1.0 - decay)
        self.step += 1
        out = {k: float(v) for k, v in scalars.items()}
        out.update(phase=options["loss"], lr=self.optimiser.param_groups[0]["lr"], grad_norm=float(norm))
        return out

    def _add_model_marginals(self) -> None:
        """Add ``loss.marginal_model_samples`` copies of the EMA model's own samples to the
        marginal-matching pairs, once (at the first step of the term, also after a resume)."""
        from .sampling.sde import reverse_sde

        loss, model = self.config["loss"], self.ema
        g = torch.Generator().manual_seed(int(self.config["seed"]) + 15485863)
        t_min = float(model.t_min)
        y = reverse_sde(
            model,
            int(loss["marginal_model_samples"]),
            g,
            n_steps=100,
            mcmc_steps=3,
            spacing="log",
            t_min=t_min,
            return_y=True,
        )
        x0 = y.double() / float(model.schedule.alpha(torch.tensor(t_min, dtype=torch.float64)))
        y_old, log_p_old, t, score_old = self.marginal
        y_new, log_p, _, score = self._noisy_marginals(self._marginal_target, x0, t.tolist(), g)
        keep = torch.isfinite(log_p).all(0)
        self.marginal = (
            torch.cat([y_old, y_new[:, keep].to(y_old)], 1),
            torch.cat([log_p_old, log_p[:, keep].to(log_p_old)], 1),
            t,
            None if score_old is None else torch.cat([score_old, score[:, keep].to(score_old)], 1),
        )
        self.metadata["marginal_model_copies"] = int(keep.sum())
        self._marginal_target = None

    def _marginal_term(self) -> torch.Tensor:
        """:func:`marginal_loss` on ``batch_size`` precomputed copies: :data:`MARGINAL_COPIES_PER_LEVEL`
        from each of batch_size / that many levels drawn at random (all levels when fewer)."""
        y, log_p, t, score = self.marginal
        n_levels = min(y.shape[0], max(1, self.local_batch // MARGINAL_COPIES_PER_LEVEL))
        per_level = max(2, self.local_batch // n_levels)
        levels = torch.randperm(y.shape[0], generator=self.generator)[:n_levels]
        idx = torch.randint(0, y.shape[1], (n_levels, per_level), generator=self.generator)
        rows = levels[:, None]
        score = None if score is None else score[rows, idx]
        return marginal_loss(self.model.inner, y[rows, idx], t[levels], log_p[rows, idx], score)

    def _calibrate_at_clf_start(self, options: dict) -> None:
        """At the first step with DiffCLF, set F(t) to the current energies' normalisers
        (:func:`boltzgen.losses.calibrate_log_normaliser`), in the model and its EMA, the same on
        every rank. Its frames come from a generator of their own, so a resumed run repeats it."""
        first = int(self.config["pretrain_dsm_steps"]) if options["loss"] != "dsm" else -1
        if self.step != first or options["lambda_clf"] <= 0:
            return
        generator = torch.Generator().manual_seed(int(self.config["seed"]) + 104729)
        idx = self._batch_indices(self.train_data, min(256, self.train_data.shape[0]), generator)
        change = calibrate_log_normaliser(self.model.inner, self.train_data[idx], generator)
        if change is None:
            return
        values = self.model.inner.normaliser.values.detach()  # shares the parameter's storage
        if self.world > 1:
            torch.distributed.broadcast(values, 0)  # in place: every rank holds rank 0's
        self.ema.normaliser.values.detach().copy_(values)
        self.metadata["log_normaliser_calibration_kT"] = change

    def _average_over_ranks(self, scalars: dict) -> dict:
        """Average the gradients (in one flat all-reduce) and the loss parts over the ranks.

        Every rank's loss is a mean over its equal share of the batch, so the average of the
        ranks' gradients is the gradient of the whole batch's mean loss.
        """
        params = [p for p in self.model.inner.parameters() if p.grad is not None]
        keys = sorted(scalars)
        flat = torch.cat(
            [p.grad.reshape(-1) for p in params] + [torch.stack([scalars[k].to(params[0].grad.dtype) for k in keys])]
        )
        torch.distributed.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
            offset += p.numel()
        return dict(zip(keys, flat[offset:]))

    def validate(self, model: Optional[EnergyModel] = None) -> dict:
        """Validation losses of the EMA model on the held-out split (fixed noise; same objective),
        averaged over chunks of about the training batch (the memory of one training step).

        Parameters
        ----------
        model : EnergyModel, optional
            Model to evaluate (default: the EMA model).

        Returns
        -------
        dict
            ``val_total``, ``val_dsm``, ``val_clf`` (floats, those the objective has); empty
            without validation data.
        """
        if self.val_data.shape[0] == 0:
            return {}
        model = self.ema if model is None else model
        generator = torch.Generator().manual_seed(int(self.config["seed"]) + 12345)
        size = min(int(self.config["train"]["val_batch_size"]), self.val_data.shape[0])
        options = self._loss_options(int(self.config["train"]["steps"]))
        # in chunks of about the training batch: one pass over the whole validation batch held
        # the graph of several training steps at once (GBs for a peptide in every process)
        chunks = torch.arange(size).tensor_split(-(-size // int(self.config["train"]["batch_size"])))
        sums: dict = {}
        for idx in chunks:
            physics = self._physics_batch(idx, self.val_force, self.val_u, self.val_weight)
            parts = compute_loss(model, self.val_data[idx], generator, **options, **physics)
            for k, v in parts.items():
                if k in ("total", "dsm", "clf", "pin") and torch.is_tensor(v):
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) * idx.numel()
        out = {f"val_{k}": v / size for k, v in sums.items()}
        if self.val_u is not None:
            from .diagnostics import model_diagnostics

            out.update(model_diagnostics(model, *self._diagnostic_frames(), self.length_scale, kappa=self.kappa))
        marginals = self._validation_marginal()
        if marginals is not None:
            from .diagnostics import marginal_spread

            out.update({f"val_{k}": v for k, v in marginal_spread(model, *marginals).items()})
        return out

    def _validate_on_rank_0(self) -> dict:
        """:meth:`validate` on rank 0, which alone logs and saves; {} on the other ranks."""
        return self.validate() if self.rank == 0 else {}

    def _diagnostic_frames(self):
        """Held-out samples of the target: (y, u, forces or None, state labels or None, names),
        chosen and labelled once (the split is fixed)."""
        if self._diagnostic_cache is None:
            pick = self.val_target.nonzero().reshape(-1)[:512]
            y, u = self.val_data[pick], self.val_u[pick]
            f = None if self.val_force is None else self.val_force[pick]
            labels, names = None, None
            if self.states is not None and y.shape[0] > 0:
                x = (y.double() * self.length_scale).numpy()
                labels, names = np.asarray(self.states.assign(x)), list(self.states.names)
            self._diagnostic_cache = (y, u, f, labels, names)
        return self._diagnostic_cache

    def fit(self) -> dict:
        """Train to ``train.steps`` (resuming from a checkpoint if present).

        Returns
        -------
        dict
            Metrics, also written to ``metrics.json``: ``steps``, ``resumed``, ``wall_time_s``
            (s), ``length_scale``, ``n_train``, ``n_val``, ``final`` (last loss parts),
            ``validation``, ``prior_gate_half_widths`` (σ/α where each prior term class is half
            faded, with a prior), ``boltzgen_version`` and the trainer's metadata. A run that had
            already reached ``train.steps`` returns its stored ``metrics.json`` with ``resumed``
            and ``reused`` true, and trains, validates and writes nothing.
        """
        from tqdm import tqdm

        cfg = self.config["train"]
        if cfg.get("threads"):
            torch.set_num_threads(int(cfg["threads"]))
        tune_malloc()  # boltzgen.allocator
        self._write_static_files()
        resumed = self.resume()
        if not resumed and self.start_checkpoint:
            self.start_from(self.start_checkpoint)
        total = int(cfg["steps"])
        finished = self._finished_metrics(total) if resumed else None
        if finished is not None:
            return finished
        bar = tqdm(
            total=total,
            initial=self.step,
            desc="train",
            unit="step",
            disable=not self.progress or self.rank != 0,
            dynamic_ncols=True,
        )
        start = time.perf_counter()
        last = {}
        window: list[dict] = []
        final_val = None  # the last step's validation, when the loop ran it (the EMA is unchanged after)
        try:
            while self.step < total:
                t0 = time.perf_counter()
                last = self.train_step()
                last["seconds"] = time.perf_counter() - t0
                window.append(last)
                bar.update(1)
                shown = {k: f"{last[k]:.3g}" for k in ("total", "dsm", "clf") if k in last}
                bar.set_postfix(shown, refresh=False)
                row = None
                if self.step % int(cfg["log_every"]) == 0 or self.step == total:
                    row = {k: float(np.mean([w[k] for w in window if k in w])) for k in last if k != "phase"}
                    row.update(step=self.step, phase=last["phase"])
                    window = []
                if self.step % int(cfg["val_every"]) == 0 or self.step == total:
                    val = self._validate_on_rank_0()
                    final_val = val if self.step == total else None
                    row = {**(row or {"step": self.step, "phase": last["phase"]}), **val}
                    if val:
                        self.best_val = (
                            val["val_total"] if self.best_val is None else min(self.best_val, val["val_total"])
                        )
                if row is not None:
                    self._log(row)
                if self.step % int(cfg["checkpoint_every"]) == 0 or self.step == total:
                    self.save()
        finally:
            bar.close()
            if getattr(self, "_tb", None) is not None:
                self._tb.close()
                del self._tb
        metrics = {
            "steps": self.step,
            "resumed": resumed,
            "wall_time_s": time.perf_counter() - start,
            "length_scale": self.length_scale,
            "n_train": int(self.train_data.shape[0]),
            "n_val": int(self.val_data.shape[0]),
            "final": {k: v for k, v in last.items() if k != "phase"},
            "validation": self._validate_on_rank_0() if final_val is None else final_val,
            "boltzgen_version": __version__,
            **self.metadata,
        }
        if self.ema.prior is not None:  # the exported (averaged) model's
            metrics["prior_gate_half_widths"] = self.ema.prior.gate_half_widths()
        if self.rank == 0:
            write_json(self._path("metrics.json"), metrics)
        return metrics

    def _finished_metrics(self, total: int) -> Optional[dict]:
        """The stored metrics of a run that already reached ``total`` steps, or None.

        A finished run entered again (a resumed workflow) returns what its end wrote instead of
        validating and checking samples once more, so ``metrics.json`` keeps the run's own
        numbers and wall time."""
        path = self._path("metrics.json")
        if self.step < total or not os.path.exists(path):
            return None
        with open(path) as handle:
            stored = json.load(handle)
        if stored.get("steps") != self.step:
            return None
        return {**stored, "resumed": True, "reused": True}


def run_overrides(overrides: Optional[dict], *, seed: Optional[int] = None, threads: Optional[int] = None) -> dict:
    """``overrides`` with a given ``seed`` and ``threads`` merged in last (``train.threads``).

    Parameters
    ----------
    overrides : dict or None
        Nested configuration options.
    seed, threads : int, optional
        Applied when not None.

    Returns
    -------
    dict
        A new nested dict.
    """
    given: dict = {}
    if seed is not None:
        given["seed"] = seed
    if threads is not None:
        given["train"] = {"threads": threads}
    return deep_update(overrides or {}, given)


def train_from_file(
    data_path: str,
    run_dir: str,
    *,
    system: Optional[str] = None,
    config_file: Optional[str] = None,
    overrides: Optional[dict] = None,
    seed: Optional[int] = None,
    progress: bool = True,
    threads: Optional[int] = None,
    start_from: Optional[str] = None,
    target: Optional[dict] = None,
) -> dict:
    """Train on a sample file written by ``boltzgen simulate``.

    Parameters
    ----------
    data_path : str
        Sample file of unweighted configurations (MD or exact samples), or a replica-ladder data
        set of ``boltzgen simulate --keep-replicas K`` (every frame is trained on).
    run_dir : str
        Output directory (an existing checkpoint there is resumed).
    system : str, optional
        System name for the shipped training defaults (default: the file's metadata).
    config_file : str, optional
        User YAML configuration.
    overrides : dict, optional
        Nested options merged over the files (e.g. ``{"train": {"steps": 100}}``).
    seed : int, optional
        The run's seed (``seed``; default: the configuration's), applied after ``overrides``.
    progress : bool
        Show a progress bar.
    threads : int, optional
        Torch CPU threads (``train.threads``; default: the configuration's), applied after
        ``overrides``.
    start_from : str, optional
        Checkpoint of another run's DSM pre-training to continue from (:meth:`Trainer.start_from`).
    target : dict, optional
        The data's target as :func:`boltzgen.systems.resolve` arguments (default: rebuilt from
        the file's metadata, :func:`boltzgen.systems.target_recipe`). Recorded in the model's
        metadata so ``boltzgen sample`` finds it; used for forces the file lacks and for the
        force-field prior.

    Returns
    -------
    dict
        The metrics of :meth:`Trainer.fit`.

    Raises
    ------
    ValueError
        If the file holds weighted samples.
    """
    samples = load_samples(data_path)
    system = system or samples.metadata.get("system")
    config = resolve_config(
        system,
        config_file,
        run_overrides(overrides, seed=seed, threads=threads),
        event_shape=samples.x.shape[1:],
        molecular=samples.topology is not None,
    )
    # A replica-ladder data set (`boltzgen simulate --keep-replicas K`) weights its frames 1 at the
    # target temperature and 0 elsewhere as samples of the target, but the model is trained on
    # all of them: the ensemble of the kept temperatures, which reweighting corrects later.
    ladder = "temperature_K" in samples.extra
    if samples.log_weights is not None and not ladder and np.ptp(samples.log_weights) > 0:
        raise ValueError(f"{data_path} holds weighted samples; train on unweighted MD or exact samples")
    recipe = target or _recipe_of(system, samples.metadata)
    meta = {"system": system, "data": os.path.abspath(data_path), "n_data": len(samples), "target": recipe}
    target = _target_for(recipe, config, samples)
    try:  # the target builds the trainer (forces, the force-field prior) and serves marginal matching
        energies, forces = physics_of(samples, target)
        trainer = Trainer(
            config,
            samples.x,
            run_dir,
            topology=samples.topology,
            metadata=meta,
            progress=progress,
            start_from=start_from,
            energies=energies,
            forces=forces,
            target_frames=None if samples.log_weights is None else np.isfinite(samples.log_weights),
            target=target,
        )
        metrics = trainer.fit()
    finally:
        if target is not None and hasattr(target, "close"):
            target.close()
    if trainer.rank == 0 and int(config["train"]["sample_check"]) > 0 and recipe and not metrics.get("reused"):
        metrics["sample_check"] = sample_check(trainer, recipe)
        write_json(os.path.join(run_dir, "metrics.json"), metrics)
    return metrics


def sample_check(trainer: Trainer, recipe: dict) -> dict:
    """:func:`boltzgen.diagnostics.sample_quality` of a trained run against its held-out target
    frames (``train.sample_check`` samples of the predictor–corrector reverse diffusion; empty
    with fewer than 2 such frames or without their target energies).

    Parameters
    ----------
    trainer : Trainer
        After :meth:`Trainer.fit` (its run directory holds ``model.pt``).
    recipe : dict
        The data's target as :func:`boltzgen.systems.resolve` arguments.

    Returns
    -------
    dict
    """
    from .diagnostics import sample_quality

    if trainer.val_u is None:  # data without target energies: nothing to compare the samples with
        return {}
    y = trainer._diagnostic_frames()[0]
    if y.shape[0] < 2:
        return {}
    target = _resolve_in_process(recipe)
    try:
        model = load_model(trainer.run_dir)
        n = int(trainer.config["train"]["sample_check"])
        # the predictor-corrector sampler (3 moves per level, log grid): without moves the plain
        # reverse process ends off the model's own marginal, which says little about the model
        out = sample_quality(
            model,
            target,
            y.double() * trainer.length_scale,
            n=max(n, 2),
            mcmc_steps=3,
            spacing="log",
            seed=int(trainer.config["seed"]),
        )
        return {**out, "sample_check_sampler": "reverse_sde, 100 log-spaced levels, 3 MALA moves per level"}
    finally:
        if hasattr(target, "close"):
            target.close()


def _recipe_of(system: Optional[str], metadata: dict) -> Optional[dict]:
    """The data's target as resolve() arguments: a built-in ``system``, else the file's own."""
    from .systems import target_recipe

    return target_recipe({**metadata, "system": system} if system else metadata)


def _target_for(recipe: Optional[dict], config: dict, samples):
    """The data's target when training needs it (missing forces or energies, or the force-field
    prior), else None."""
    loss = config["loss"]
    need = (loss["target_score"] and samples.reduced_force is None) or config["model"]["prior"] != "none"
    need = need or (float(loss["lambda_pin"]) > 0 and samples.reduced_energy is None)
    need = need or float(loss["lambda_marginal"]) > 0
    if not need or not recipe:
        return None
    return _resolve_in_process(recipe)


def _resolve_in_process(recipe: dict):
    """The target of a recipe, an OpenMM one evaluated in this process (no worker pool)."""
    from .systems import resolve
    from .systems.catalog import SPECS

    name = recipe.get("system")
    options = {"n_workers": 0} if name is None or SPECS[name].openmm else {}
    return resolve(**recipe, **options)


def physics_of(samples, target=None):
    """The reduced energies and forces of training samples: from the file, or computed.

    Files of ``boltzgen simulate`` carry both. For others (a user's own trajectory) they are
    computed with the target's force field when a target is given.

    Parameters
    ----------
    samples : boltzgen.io.Samples
        The training data.
    target : TargetSystem, optional
        The data's target.

    Returns
    -------
    energies : ndarray (B,) or None
        Reduced energies (kT).
    forces : ndarray, shape of ``samples.x``, or None
        Reduced forces (kT per unit length).
    """
    energies, forces = samples.reduced_energy, samples.reduced_force
    if target is not None and (forces is None or energies is None):
        from .systems import energies_and_forces

        energies, forces = energies_and_forces(target, samples.x)
    return energies, forces
