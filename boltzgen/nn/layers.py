"""Layer building blocks shared by the energy networks: plain MLPs, a linear layer over a
concatenation whose parts apply separately, and initialisations (variance-preserving, zero).

Imported by :mod:`boltzgen.nn.mlp`, :mod:`boltzgen.nn.time`, :mod:`boltzgen.nn.egnn` and
:mod:`boltzgen.nn.e3nn_net`; it imports none of them.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

__all__ = ["SILU_GAIN", "ConcatLinear", "init_variance_preserving", "mlp", "zero_init"]


def mlp(
    sizes: Sequence[int], activation: type[nn.Module] = nn.SiLU, zero_last: bool = False, bias_last: bool = True
) -> nn.Sequential:
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
        return self.weight[:, start : start + self.in_sizes[index]]

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
