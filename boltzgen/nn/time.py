"""Time embeddings of the diffusion time t ∈ [0, 1], shared by every network.

:class:`FourierTimeFeatures` maps t to fixed sin/cos features (no parameters);
:class:`TimeEmbedding` passes them through a small SiLU MLP to a learned vector per configuration.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .layers import mlp


class FourierTimeFeatures(nn.Module):
    """Fixed Fourier features of the diffusion time.

    φ(t) = [sin(ω_1 t), …, sin(ω_K t), cos(ω_1 t), …, cos(ω_K t)] with angular frequencies ω_k
    spaced geometrically between ``min_frequency`` and ``max_frequency``, so that both coarse
    (t ≈ 1) and fine (t ≈ t_min) changes of the noise level are resolved.

    Parameters
    ----------
    n_frequencies : int
        Number K of frequencies; the output has 2K features.
    min_frequency, max_frequency : float
        Smallest and largest angular frequency (radians per unit time).
    """

    def __init__(self, n_frequencies: int = 16, min_frequency: float = 1.0, max_frequency: float = 1000.0):
        super().__init__()
        if n_frequencies < 1:
            raise ValueError(f"n_frequencies must be at least 1, got {n_frequencies}")
        if not 0 < min_frequency <= max_frequency:
            raise ValueError(f"need 0 < min_frequency <= max_frequency, got {min_frequency}, {max_frequency}")
        frequencies = torch.logspace(
            math.log10(min_frequency), math.log10(max_frequency), n_frequencies, dtype=torch.float64
        )
        self.register_buffer("frequencies", frequencies.to(torch.get_default_dtype()), persistent=False)
        self.out_dim = 2 * n_frequencies

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Features of a batch of times.

        Parameters
        ----------
        t : tensor, shape (B,)
            Diffusion times.

        Returns
        -------
        tensor, shape (B, 2K)
            Fourier features, dtype of ``t``.
        """
        angles = t.unsqueeze(-1) * self.frequencies.to(t.dtype)
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class TimeEmbedding(nn.Module):
    """Learned time embedding: Fourier features followed by a SiLU MLP.

    Parameters
    ----------
    out_dim : int
        Size of the embedding.
    n_frequencies : int
        Number of Fourier frequencies (see :class:`FourierTimeFeatures`).
    max_frequency : float
        Largest angular frequency of the Fourier features.
    """

    def __init__(self, out_dim: int, n_frequencies: int = 16, max_frequency: float = 1000.0):
        super().__init__()
        self.features = FourierTimeFeatures(n_frequencies, max_frequency=max_frequency)
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
