"""Time embeddings of the diffusion time t ∈ [0, 1], shared by every network.

:class:`FourierTimeFeatures` maps t to fixed sin/cos features of t and log t (no parameters);
:class:`TimeEmbedding` passes them through a small SiLU MLP to a learned vector per configuration.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .layers import mlp

#: What the Fourier time features are of: "linear" (t alone, the features of the first models)
#: or "log" (t and log t; see :class:`FourierTimeFeatures`).
TIME_FEATURES = ("linear", "log")

#: Largest angular frequency of each kind of time features when none is given.
DEFAULT_MAX_FREQUENCY = {"linear": 1000.0, "log": 30.0}

#: Times below this are embedded as this time by the "log" features (log t must stay finite).
LOG_TIME_FLOOR = 1e-6


class FourierTimeFeatures(nn.Module):
    """Fixed Fourier features of the diffusion time.

    With ``kind="linear"`` (the default), φ(t) = [sin(ω_1 t), …, sin(ω_K t), cos(ω_1 t), …, cos(ω_K t)] with
    angular frequencies ω_k spaced geometrically between ``min_frequency`` and ``max_frequency``.
    To resolve the fine changes of the noise level near t = 0 this needs ω up to ~1000, and then
    every function of φ oscillates in t with a period of a few thousandths: an energy built on it
    wiggles between neighbouring noise levels, which a sampler stepping along t sees as noise.

    With ``kind="log"``, the same sines and cosines, with ω up to ~30, are taken of
    t and of v = log(t) / log(t_floor) ∈ [0, 1] (t_floor = :data:`LOG_TIME_FLOOR`): v resolves the
    small times, where the noise level changes as a power of t, and every feature is smooth on the
    scale of any sampler's step. 4K features.

    Parameters
    ----------
    n_frequencies : int
        Number K of frequencies.
    min_frequency : float
        Smallest angular frequency (radians per unit of t or of v).
    max_frequency : float, optional
        Largest angular frequency; default :data:`DEFAULT_MAX_FREQUENCY` of ``kind``.
    kind : {"linear", "log"}
        Features of t alone, or of t and log t.
    """

    def __init__(
        self,
        n_frequencies: int = 16,
        min_frequency: float = 1.0,
        max_frequency: Optional[float] = None,
        kind: str = "linear",
    ):
        super().__init__()
        if kind not in TIME_FEATURES:
            raise ValueError(f"unknown time features {kind!r}; choose one of {TIME_FEATURES}")
        if max_frequency is None:
            max_frequency = DEFAULT_MAX_FREQUENCY[kind]
        if n_frequencies < 1:
            raise ValueError(f"n_frequencies must be at least 1, got {n_frequencies}")
        if not 0 < min_frequency <= max_frequency:
            raise ValueError(f"need 0 < min_frequency <= max_frequency, got {min_frequency}, {max_frequency}")
        frequencies = torch.logspace(
            math.log10(min_frequency), math.log10(max_frequency), n_frequencies, dtype=torch.float64
        )
        self.register_buffer("frequencies", frequencies.to(torch.get_default_dtype()), persistent=False)
        self.kind = kind
        self.out_dim = (4 if kind == "log" else 2) * n_frequencies

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Features of a batch of times.

        Parameters
        ----------
        t : tensor, shape (B,)
            Diffusion times.

        Returns
        -------
        tensor, shape (B, out_dim)
            Fourier features, dtype of ``t``.
        """
        variables = [t]
        if self.kind == "log":
            variables.append(torch.log(t.clamp_min(LOG_TIME_FLOOR)) / math.log(LOG_TIME_FLOOR))
        angles = torch.cat([v.unsqueeze(-1) * self.frequencies.to(t.dtype) for v in variables], dim=-1)
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class TimeEmbedding(nn.Module):
    """Learned time embedding: Fourier features followed by a SiLU MLP.

    Parameters
    ----------
    out_dim : int
        Size of the embedding.
    n_frequencies : int
        Number of Fourier frequencies (see :class:`FourierTimeFeatures`).
    max_frequency : float, optional
        Largest angular frequency of the Fourier features (default: that of ``kind``).
    kind : {"log", "linear"}
        What the features are of (see :class:`FourierTimeFeatures`).
    """

    def __init__(
        self, out_dim: int, n_frequencies: int = 16, max_frequency: Optional[float] = None, kind: str = "linear"
    ):
        super().__init__()
        self.features = FourierTimeFeatures(n_frequencies, max_frequency=max_frequency, kind=kind)
        self.mlp = mlp([self.features.out_dim, out_dim, out_dim])
        self.out_dim = out_dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Embed a batch of times.

        Parameters
        ----------
        t : torch.Tensor, shape (B,)
            Diffusion times in [0, 1].

        Returns
        -------
        torch.Tensor, shape (B, out_dim)
            Learned embedding, dtype of the parameters.
        """
        return self.mlp(self.features(t))
