"""MLP building blocks, the base class of every energy network, and the MLP energy network for
toy (B, D) targets.

Every network maps a batch of configurations and diffusion times to one scalar per member,
``net(x, t) -> (B,)``, with a zero-initialised final layer so that an untrained network returns
exactly 0.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn


def mlp(sizes: Sequence[int], activation: type[nn.Module] = nn.SiLU, zero_last: bool = False,
        bias_last: bool = True) -> nn.Sequential:
    """A plain MLP: Linear → activation → … → Linear (no activation after the last layer).

    Parameters
    ----------
    sizes : sequence of int
        Layer widths ``[in, hidden, …, out]`` (at least two entries).
    activation : module class
        Smooth activation between layers (SiLU by default: energies are differentiated twice).
    zero_last : bool
        Zero the weights and bias of the last layer, so that the MLP starts as the zero map.
    bias_last : bool
        Whether the last layer has a bias.

    Returns
    -------
    torch.nn.Sequential
        Maps (..., sizes[0]) to (..., sizes[-1]).
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2:
        raise ValueError(f"an MLP needs at least input and output sizes, got {sizes}")
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        layers.append(nn.Linear(n_in, n_out, bias=bias_last or not last))
        if not last:
            layers.append(activation())
    if zero_last:
        zero_init(layers[-1])
    return nn.Sequential(*layers)


class ConcatLinear(nn.Linear):
    """``nn.Linear`` over a concatenation [a_1, …, a_k] whose parts can be applied separately.

    W [a_1, …, a_k] + b = Σ_k W_k a_k + b, so a part that is shared by many rows (a node feature
    gathered onto edges, a time embedding shared by all atoms of a configuration) can be projected
    once and gathered afterwards. Same parameters and initialisation as ``nn.Linear(sum(in_sizes),
    out_features)``.

    Parameters
    ----------
    in_sizes : sequence of int
        Sizes of the concatenated parts.
    out_features : int
        Output size.
    bias : bool
        Whether the layer has a bias b.
    """

    def __init__(self, in_sizes: Sequence[int], out_features: int, bias: bool = True):
        self.in_sizes = [int(s) for s in in_sizes]
        super().__init__(sum(self.in_sizes), out_features, bias=bias)

    def part_weight(self, index: int) -> torch.Tensor:
        """The block W_index of the weight (a view, so gradients flow to the full weight).

        Parameters
        ----------
        index : int
            Which concatenated part.

        Returns
        -------
        torch.Tensor, shape (out_features, in_sizes[index])
        """
        start = sum(self.in_sizes[:index])
        return self.weight[:, start:start + self.in_sizes[index]]

    def part(self, index: int, inputs: torch.Tensor, with_bias: bool = False) -> torch.Tensor:
        """Apply one part of the layer: W_index · inputs (+ b).

        Parameters
        ----------
        index : int
            Which concatenated part.
        inputs : torch.Tensor, shape (..., in_sizes[index])
            Values of that part.
        with_bias : bool
            Add the bias b (add it in exactly one of the parts that are summed).

        Returns
        -------
        torch.Tensor, shape (..., out_features)
        """
        return nn.functional.linear(inputs, self.part_weight(index), self.bias if with_bias else None)


#: 1 / sqrt(E[silu(z)²]) for z ~ N(0, 1): the weight gain that keeps unit variance through a SiLU.
SILU_GAIN = 1.6754


def init_variance_preserving(linears: Sequence[nn.Linear]) -> None:
    """Initialise a chain Linear → SiLU → Linear → … so that unit-variance inputs give
    unit-variance outputs (the convention of e3nn's ``FullyConnectedNet``, whose tensor products
    expect weights of order 1): weights N(0, gain² / fan_in), gain 1 for the first layer and
    :data:`SILU_GAIN` after each SiLU; zero biases.

    Parameters
    ----------
    linears : sequence of torch.nn.Linear
        The layers of the chain, in order (modified in place).
    """
    with torch.no_grad():
        for i, linear in enumerate(linears):
            gain = 1.0 if i == 0 else SILU_GAIN
            linear.weight.normal_(0.0, gain / math.sqrt(linear.weight.shape[1]))
            if linear.bias is not None:
                linear.bias.zero_()


def zero_init(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero (in place) and return it.

    Parameters
    ----------
    module : torch.nn.Module
        Module to zero.

    Returns
    -------
    torch.nn.Module
        The same ``module``.
    """
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.zero_()
    return module


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
    max_frequency : float
        Largest angular frequency of the time features.
    """

    kind = "mlp"

    def __init__(self, event_shape: Sequence[int], hidden: int = 128, n_layers: int = 3, n_frequencies: int = 16,
                 max_frequency: float = 1000.0):
        super().__init__()
        from .time import FourierTimeFeatures  # time.py builds its MLP with mlp() above

        self.event_shape = tuple(int(s) for s in event_shape)
        self.config = dict(hidden=int(hidden), n_layers=int(n_layers), n_frequencies=int(n_frequencies),
                           max_frequency=float(max_frequency))
        self.time_features = FourierTimeFeatures(n_frequencies, max_frequency=max_frequency)
        in_dim = math.prod(self.event_shape) + self.time_features.out_dim
        self.net = mlp([in_dim] + [hidden] * n_layers + [1], zero_last=True)
        self.final_layer = self.net[-1]

    def _energy(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        inputs = torch.cat([x.reshape(x.shape[0], -1), self.time_features(t)], dim=-1)
        return self.net(inputs).squeeze(-1)
