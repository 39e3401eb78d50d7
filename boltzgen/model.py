"""Trained energy models in data units, and reading them from a run directory.

A run directory of ``boltzgen train`` (:mod:`boltzgen.train`) holds ``model.pt`` (the EMA
weights, the configuration, the event shape and the length scale) and, for molecules,
``topology.pdb``. :func:`load_model` rebuilds the network from them and returns a
:class:`TrainedModel`, whose ``energy`` and ``score`` take coordinates in the data's own units
(nm for molecules). This module does not import the trainer, so sampling needs no training code.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from .energy import EnergyModel

__all__ = ["TrainedModel", "build_model", "load_checkpoint", "load_model"]


class TrainedModel(torch.nn.Module):
    """A trained energy model in the data's own units.

    ``energy(x, t)`` and ``score(x, t)`` take x in the units of the training data (nm for
    molecules) and t a float or a (B,) tensor; energies are reduced (dimensionless), defined up
    to one constant per t; the score is −∇ₓE in 1/nm. The diffusion itself runs in standardised
    coordinates y = x / length_scale: ``inner`` is the :class:`~boltzgen.energy.EnergyModel` on y.

    Attributes
    ----------
    inner : EnergyModel
    length_scale : float
        Units of x per unit of y.
    t_min : float
        Smallest diffusion time trained on.
    schedule : diffusion schedule of ``inner``
    config : dict
        The training configuration.
    metadata : dict
        What the run recorded about its data (``system``, ``data``, ``n_data``).
    topology : mdtraj.Topology or None
        Atoms of molecular data.
    """

    def __init__(
        self,
        inner: EnergyModel,
        length_scale: float,
        config: Optional[dict] = None,
        topology=None,
        metadata: Optional[dict] = None,
    ):
        super().__init__()
        self.inner = inner
        self.length_scale = float(length_scale)
        self.config = dict(config or {})
        self.topology = topology
        self.metadata = dict(metadata or {})

    @property
    def t_min(self) -> float:
        """float: smallest diffusion time trained on (of ``inner``)."""
        return self.inner.t_min

    @property
    def schedule(self):
        """Schedule: the forward diffusion of ``inner`` (acting on y = x / length_scale)."""
        return self.inner.schedule

    @property
    def event_shape(self) -> tuple:
        """tuple of int: shape of one configuration, (N, 3) or (D,)."""
        return self.inner.event_shape

    def energy(self, x, t) -> torch.Tensor:
        """E_θ(x, t) of configurations in data units.

        Parameters
        ----------
        x : array_like, shape (B, *event_shape)
            Configurations in the units of the training data (nm for molecules).
        t : float or torch.Tensor of shape (B,)
            Diffusion time(s).

        Returns
        -------
        torch.Tensor, shape (B,)
            Reduced (dimensionless) energies, defined up to one constant per t; dtype of the
            model's parameters.
        """
        x = torch.as_tensor(x)
        return self.inner.energy(x.to(self._dtype()) / self.length_scale, t)

    def score(self, x, t, create_graph: bool = False) -> torch.Tensor:
        """Score −∇ₓE_θ(x, t) of configurations in data units.

        Parameters
        ----------
        x : array_like, shape (B, *event_shape)
            Configurations in the units of the training data (nm for molecules).
        t : float or torch.Tensor of shape (B,)
            Diffusion time(s).
        create_graph : bool
            Keep the graph of the score (for losses of the score).

        Returns
        -------
        torch.Tensor, shape (B, *event_shape)
            −∇ₓE, in 1/(data unit) (1/nm for molecules).
        """
        x = torch.as_tensor(x)
        return self.inner.score(x.to(self._dtype()) / self.length_scale, t, create_graph) / self.length_scale

    def _dtype(self) -> torch.dtype:
        return next(self.inner.parameters()).dtype


def build_model(config: dict, event_shape, topology, length_scale: float, prior=None) -> TrainedModel:
    """An untrained :class:`TrainedModel` as a training configuration describes it.

    Parameters
    ----------
    config : dict
        A resolved training configuration (``TrainConfig.to_dict()``); its ``net`` and
        ``model`` sections are used.
    event_shape : tuple of int
        Shape of one configuration, (N, 3) or (D,).
    topology : mdtraj.Topology or None
        Atoms of molecular data (network atom embeddings are built from it).
    length_scale : float
        Units of x per unit of the standardised coordinates y.
    prior : ForceFieldPrior or dict, optional
        The force-field prior, or its :meth:`~boltzgen.nn.prior.ForceFieldPrior.config` (needed
        when ``model.prior`` is not ``none``).

    Returns
    -------
    TrainedModel
        With freshly initialised weights (drawn from torch's global generator).

    Raises
    ------
    ValueError
        When the configuration asks for a prior and none is given.
    """
    from .nn import build_network

    net_cfg = dict(config["net"])
    kind = net_cfg.pop("kind")
    target_like = topology if topology is not None else tuple(event_shape)
    net = build_network(kind, target_like, **net_cfg)
    m = config["model"]
    inner = EnergyModel(
        net,
        event_shape,
        m["schedule"],
        sigma_data=1.0,
        t_min=m["t_min"],
        log_normaliser=m["log_normaliser"],
        n_levels=m["n_levels"],
        output_scale=m.get("output_scale", "none"),
        net_config={"kind": kind, **net.config},
        prior=_prior_config(m, prior),
    )
    return TrainedModel(inner, length_scale, config, topology)


def _prior_config(model_section: dict, prior) -> Optional[dict]:
    if model_section.get("prior", "none") == "none":
        return None
    if isinstance(prior, dict):
        return prior
    if prior is None:
        raise ValueError(
            f"model.prior: {model_section['prior']} needs the target's OpenMM force field; name the system (--system) or "
            "set model.prior: none"
        )
    return prior.config()


def load_checkpoint(path: str) -> dict:
    """Read a ``checkpoint.pt`` or ``model.pt`` of a run directory (tensors and plain data only).

    Parameters
    ----------
    path : str
        File written by :class:`boltzgen.train.Trainer`.

    Returns
    -------
    dict
        Its contents, on the CPU (``torch.load(..., weights_only=True)``: no code is run).

    Raises
    ------
    ValueError
        If the file cannot be read (corrupt, truncated, or not a boltzgen checkpoint).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable boltzgen checkpoint (corrupt or truncated?): {exc}") from None


def legacy_net_options(config: dict) -> dict:
    """A run configuration with the network options of the version that wrote it made explicit.

    Models written before ``net.time_features`` existed embed t with the "linear" features
    (:class:`boltzgen.nn.time.FourierTimeFeatures`); a stored configuration without the key means
    "linear" whatever the default of the code that reads it.

    Parameters
    ----------
    config : dict
        A run configuration as stored in model.pt or checkpoint.pt.

    Returns
    -------
    dict
        A copy, with ``net.time_features`` set.
    """
    config = dict(config)
    net = dict(config.get("net") or {})
    net.setdefault("time_features", "linear")
    config["net"] = net
    return config


def load_model(run_dir: str) -> TrainedModel:
    """The trained model of a run directory (EMA weights), ready for sampling.

    Parameters
    ----------
    run_dir : str
        A directory written by ``boltzgen train``.

    Returns
    -------
    TrainedModel
        With ``energy(x, t)``, ``score(x, t)``, ``t_min``, ``length_scale``, in eval mode.
    """
    path = os.path.join(run_dir, "model.pt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no trained model in {run_dir} (model.pt missing; has training written a checkpoint?)")
    blob = load_checkpoint(path)
    topology = None
    if blob.get("has_topology"):
        import mdtraj

        topology = mdtraj.load_topology(os.path.join(run_dir, "topology.pdb"))
    config = legacy_net_options(blob["config"])
    model = build_model(config, blob["event_shape"], topology, blob["length_scale"], prior=blob.get("prior"))
    model.inner.load_state_dict(blob["state_dict"])
    model.metadata = dict(blob.get("metadata") or {})
    model.eval()
    return model
