"""The base class of every energy network, and the MLP energy network for toy (B, D) targets.

Every network maps a batch of configurations and diffusion times to one scalar per member,
``net(x, t) -> (B,)``, with a zero-initialised final layer so that an untrained network returns
exactly 0.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch
from torch import nn

from .layers import mlp
from .time import FourierTimeFeatures


class EnergyNetwork(nn.Module):
    """Base class of the energy networks g_θ(x, t).

    Subclasses implement :meth:`_energy` on checked inputs and set :attr:`final_layer` (the
    zero-initialised module) and :attr:`config` (the plain-dict sizes that rebuild the network with
    :func:`boltzgen.nn.build_network`).
    """

    #: Kind name used by :func:`boltzgen.nn.build_network`.
    kind: str = ""
    #: Shape of one configuration, ``(N, 3)`` or ``(D,)``.
    event_shape: tuple[int, ...] = ()
    #: Sizes and options that rebuild the network (JSON/YAML serialisable).
    config: dict[str, Any]
    #: The zero-initialised last layer (tests perturb it to get a non-trivial network).
    final_layer: nn.Module

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        """Scalar network output per configuration.

        Parameters
        ----------
        x : tensor, shape (B, *event_shape)
            Configurations, dimensionless (divided by a length scale and centred by the caller).
        t : tensor, shape (B,), or float
            Diffusion times in [0, 1]; a float or 0-d tensor is used for every member.

        Returns
        -------
        tensor, shape (B,)
            g_θ(x, t), dtype of the network's parameters.
        """
        x, t = self._check_inputs(x, t)
        return self._energy(x, t)

    def _check_inputs(self, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        if tuple(x.shape[1:]) != self.event_shape or x.dim() != len(self.event_shape) + 1:
            expected = "(B, " + ", ".join(str(s) for s in self.event_shape) + ")"
            raise ValueError(f"{type(self).__name__}: expected x of shape {expected}, got {tuple(x.shape)}")
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if tuple(t.shape) != (x.shape[0],):
            raise ValueError(f"{type(self).__name__}: expected t of shape ({x.shape[0]},), got {tuple(t.shape)}")
        return x, t

    def _energy(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class MLPEnergy(EnergyNetwork):
    """SiLU MLP on the flattened configuration concatenated with Fourier time features.

    g(x, t) = MLP([x.flatten(), φ(t)]), with φ from :class:`boltzgen.nn.time.FourierTimeFeatures`.
    Not symmetric under rotations or permutations: meant for toy (B, D) targets.

    Parameters
    ----------
    event_shape : sequence of int
        Shape of one configuration, ``(D,)`` (or ``(N, 3)``, flattened).
    hidden : int
        Width of the hidden layers.
    n_layers : int
        Number of hidden layers.
    n_frequencies : int
        Number of Fourier time frequencies (2 × that many time features).
    max_frequency : float, optional
        Largest angular frequency of the time features (default: that of ``time_features``).
    time_features : {"log", "linear"}
        Fourier features of t and log t, or of t alone (:class:`boltzgen.nn.time.FourierTimeFeatures`).
    """

    kind = "mlp"

    def __init__(
        self,
        event_shape: Sequence[int],
        hidden: int = 128,
        n_layers: int = 3,
        n_frequencies: int = 16,
        max_frequency: Optional[float] = None,
        time_features: str = "linear",
    ):
        super().__init__()

        self.event_shape = tuple(int(s) for s in event_shape)
        self.config = dict(
            hidden=int(hidden),
            n_layers=int(n_layers),
            n_frequencies=int(n_frequencies),
            max_frequency=None if max_frequency is None else float(max_frequency),
            time_features=str(time_features),
        )
        self.time_features = FourierTimeFeatures(n_frequencies, max_frequency=max_frequency, kind=time_features)
        in_dim = math.prod(self.event_shape) + self.time_features.out_dim
        self.net = mlp([in_dim] + [hidden] * n_layers + [1], zero_last=True)
        self.final_layer = self.net[-1]

    def _energy(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        inputs = torch.cat([x.reshape(x.shape[0], -1), self.time_features(t)], dim=-1)
        return self.net(inputs).squeeze(-1)
