"""Neural networks g_θ(x, t) for the energy model.

Every network maps configurations and diffusion times to one scalar per configuration,
``net(x, t) -> (B,)``, starts at exactly 0 (zero-initialised final layer), runs in float32
(``net.double()`` for float64) and is twice differentiable in x (the score-matching loss
differentiates the score). Inputs x are dimensionless: divided by a length scale and centred by the
caller.

========  =========================  ==================================================
kind      input                      symmetry of g
========  =========================  ==================================================
``mlp``   (B, D) or (B, N, 3)        none (toy targets)
``egnn``  (B, N, 3)                  E(3) and permutations of identical atoms
``e3nn``  (B, N, 3)                  E(3) (``parity=True``) or SE(3) (``parity=False``),
                                     and permutations of identical atoms
========  =========================  ==================================================

Build one with :func:`build_network`; ``net.config`` holds the plain-dict sizes that rebuild it.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from .e3nn_net import E3nnEnergy
from .egnn import EGNNEnergy
from .features import AtomEmbedding, atom_type_indices, identical_atom_groups
from .layers import mlp
from .mlp import EnergyNetwork, MLPEnergy
from .time import FourierTimeFeatures, TimeEmbedding

#: kind -> network class
NETWORKS: dict[str, type[EnergyNetwork]] = {"mlp": MLPEnergy, "egnn": EGNNEnergy, "e3nn": E3nnEnergy}


def default_config(kind: str) -> dict[str, Any]:
    """The default sizes and options of a network kind (the keys :func:`build_network` accepts).

    Parameters
    ----------
    kind : {"mlp", "egnn", "e3nn"}
        Network family.

    Returns
    -------
    dict
        Keyword arguments of the network class with their defaults (``topology`` excluded).

    Raises
    ------
    ValueError
        For an unknown kind.
    """
    cls = _network_class(kind)
    return {
        name: p.default
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty and name != "topology"
    }


def build_network(kind: str, target_or_shape, *, dtype: torch.dtype | None = None, **config) -> EnergyNetwork:
    """Build an energy network for a target.

    Parameters
    ----------
    kind : {"mlp", "egnn", "e3nn"}
        Network family.
    target_or_shape : TargetSystem, mdtraj.Topology or sequence of int
        What the network is for: a target system (its ``event_shape`` and ``topology`` are used),
        a topology (N atoms with its atom types), or an event shape ``(N, 3)`` / ``(D,)``
        (graph networks then treat all atoms as identical).
    dtype : torch.dtype, optional
        Parameter dtype (default: torch's default dtype, float32). The network is built with it as
        the default dtype, so e3nn computes its Clebsch-Gordan constants in that precision: a
        float64 network built this way is equivariant to ~1e-12, one built in float32 and cast with
        ``.double()`` only to ~1e-8 (harmless for training, visible in tight symmetry tests).
    **config
        Sizes and options, a plain dict that can be stored in YAML; see :func:`default_config` for
        the keys and defaults of each kind. Unknown keys raise ``TypeError``.

    Returns
    -------
    EnergyNetwork
        ``net(x, t) -> (B,)``; ``net.config`` holds the full configuration
        (``build_network(kind, target, **net.config)`` rebuilds it, with the same parameter shapes).
    """
    cls = _network_class(kind)
    allowed = default_config(kind)
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise TypeError(f"unknown {kind} network option(s) {unknown}; accepted: {sorted(allowed)}")
    event_shape, topology = _event_shape_and_topology(target_or_shape)
    if kind != "mlp" and (len(event_shape) != 2 or event_shape[1] != 3):
        raise ValueError(f"a {kind} network needs (N, 3) configurations, the target has event shape {event_shape}")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype or previous)
    try:
        return cls(event_shape, **config) if kind == "mlp" else cls(event_shape[0], topology, **config)
    finally:
        torch.set_default_dtype(previous)


def _network_class(kind: str) -> type[EnergyNetwork]:
    try:
        return NETWORKS[kind]
    except KeyError:
        raise ValueError(f"unknown network kind {kind!r}; choose one of {sorted(NETWORKS)}") from None


def _event_shape_and_topology(target_or_shape) -> tuple[tuple[int, ...], Any]:
    if hasattr(target_or_shape, "event_shape"):
        return tuple(target_or_shape.event_shape), getattr(target_or_shape, "topology", None)
    if hasattr(target_or_shape, "n_atoms") and hasattr(target_or_shape, "atoms"):  # mdtraj.Topology
        return (target_or_shape.n_atoms, 3), target_or_shape
    return tuple(int(s) for s in target_or_shape), None


__all__ = [
    "build_network",
    "default_config",
    "NETWORKS",
    "EnergyNetwork",
    "MLPEnergy",
    "EGNNEnergy",
    "E3nnEnergy",
    "FourierTimeFeatures",
    "TimeEmbedding",
    "AtomEmbedding",
    "atom_type_indices",
    "identical_atom_groups",
    "mlp",
]
