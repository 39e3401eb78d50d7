"""Relative handedness of chiral centres as an E(3)-invariant energy term.

An energy built from distances alone (as the EGNN's is) is invariant under reflections, so it
cannot tell a centre's hand; and although the relative hand of two centres (same or opposite) is
a function of the distances too, it is a far-reaching one that a message-passing network of a few
layers does not learn from a few thousand frames (on tri-alanine its own samples came out with a
D centre in almost every configuration). No reflection can mend a mixed-hand configuration.

The signed volume of a centre, V = ((N − CA) × (C − CA)) · (CB − CA), is a pseudoscalar: it
changes sign under a reflection. Normalised by its three bond lengths it becomes the chirality
index c = V / (|N − CA| |C − CA| |CB − CA|) ∈ [−1, 1] (about ±0.8 at a tetrahedral centre), and
the product of two indices, c_i c_j, is invariant under rotations, reflections and translations:
positive when the two centres have the same hand. :class:`RelativeChirality` is the energy term

    E_χ(x, t) = Σ_{i<j} φ(c_i c_j, τ(t), e_ij)

with φ a small MLP (zero at initialisation), τ(t) the network's time embedding and e_ij a learned
embedding of the pair, so the network can learn how the same-hand preference grows as the noise
falls.

Score matching sees mixed-hand configurations only at noise levels where the noise flips centres;
below them such configurations are off the data and their energy is whatever φ extrapolates to
(on tri-alanine it stayed a fraction of a kT). :meth:`RelativeChirality.wall` adds what the
diffused data's density says there: a configuration whose centres disagree lies a distance d of
order a bond length from any same-hand one, so its log-density is lower by about α_t² d² / (2 σ_t²).
The wall is

    W(x, t) = SNR(t) Σ_{i<j} w_ij f(c_i c_j),   SNR = α_t² / σ_t²,   f(s) = (ε softplus(−s/ε))²,

zero on same-hand pairs (f ≈ 0 for s > 0, about s² below 0) with learned weights w_ij = exp(ω_ij)
(about the squared distance, in model units, that restores the pair's agreement). The energy model
(:class:`boltzgen.energy.EnergyModel`) adds it, since only it knows α_t and σ_t. Both parts keep
the whole energy E(3)-invariant, so the chirality fold of the samplers
(:mod:`boltzgen.sampling.chirality`) stays exact.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .layers import mlp

__all__ = ["as_centres", "signed_volume", "chirality_index", "RelativeChirality"]


def as_centres(centres) -> torch.Tensor:
    """Chiral centres as a checked (K, 4) int64 tensor of atom indices (N, CA, C, CB).

    Parameters
    ----------
    centres : array_like, shape (K, 4) or (4,)

    Returns
    -------
    torch.Tensor, shape (K, 4), int64

    Raises
    ------
    ValueError
        For any other shape.
    """
    c = torch.as_tensor(np.asarray(centres, dtype=np.int64))
    if c.dim() == 1:
        c = c.reshape(1, -1)
    if c.dim() != 2 or c.shape[1] != 4:
        raise ValueError(f"centres must be (K, 4) atom indices (N, CA, C, CB), got shape {tuple(c.shape)}")
    return c


def _centre_vectors(x: torch.Tensor, centres) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    c = as_centres(centres).to(x.device)
    n, ca, cc, cb = (x[:, c[:, i]] for i in range(4))  # (B, K, 3)
    return n - ca, cc - ca, cb - ca


def signed_volume(x, centres) -> torch.Tensor:
    """V = ((N − CA) × (C − CA)) · (CB − CA) for each configuration and centre.

    Parameters
    ----------
    x : array_like, shape (B, N_atoms, 3) or (N_atoms, 3)
        Configurations (any length unit; V is in its cube).
    centres : array_like, shape (K, 4)
        Atom indices (N, CA, C, CB) of the chiral centres.

    Returns
    -------
    torch.Tensor, shape (B, K) (or (K,) for one configuration)
        dtype of x; positive for an L centre.
    """
    x = torch.as_tensor(x)
    single = x.dim() == 2
    a, b, d = _centre_vectors(x.unsqueeze(0) if single else x, centres)
    vol = (torch.cross(a, b, dim=-1) * d).sum(-1)
    return vol[0] if single else vol


def chirality_index(x: torch.Tensor, centres, eps: float = 1e-6) -> torch.Tensor:
    """The signed volume over the product of the centre's three bond lengths.

    Parameters
    ----------
    x : torch.Tensor, shape (B, N_atoms, 3)
        Configurations (any length unit: the index is dimensionless).
    centres : array_like, shape (K, 4)
        Atom indices (N, CA, C, CB).
    eps : float
        Added (in the units of x) to each length, so that the index stays smooth and bounded at
        coinciding atoms.

    Returns
    -------
    torch.Tensor, shape (B, K)
        In [−1, 1]; positive for an L centre, −c for the mirror image.
    """
    a, b, d = _centre_vectors(x, centres)
    vol = (torch.cross(a, b, dim=-1) * d).sum(-1)
    norm = lambda v: torch.sqrt((v * v).sum(-1) + eps * eps)  # noqa: E731
    return vol / (norm(a) * norm(b) * norm(d))


#: Width ε of the wall's smooth step f(s) = (ε softplus(−s/ε))² (units of the chirality product).
WALL_SOFTNESS = 0.05


class RelativeChirality(nn.Module):
    """E_χ(x, t) = Σ_{i<j} φ(c_i c_j, τ(t), e_ij): an invariant energy of the centres' relative hands.

    Parameters
    ----------
    centres : array_like, shape (K, 4)
        Atom indices (N, CA, C, CB) of the chiral centres; with fewer than two there are no
        pairs and the term is zero.
    time_dim : int
        Size of the time embedding τ(t) it is given.
    hidden : int
        Width of φ.
    """

    def __init__(self, centres, time_dim: int, hidden: int = 32):
        super().__init__()
        centres = as_centres(centres)
        self.register_buffer("centres", centres)
        pairs = torch.triu_indices(centres.shape[0], centres.shape[0], offset=1)
        self.register_buffer("pairs", pairs)
        n_pairs = pairs.shape[1]
        self.input = nn.Linear(1 + time_dim, hidden)
        self.pair_embedding = nn.Embedding(max(n_pairs, 1), hidden)
        nn.init.zeros_(self.pair_embedding.weight)
        self.output = mlp([hidden, hidden, 1], zero_last=True)
        self.log_wall_weight = nn.Parameter(torch.zeros(max(n_pairs, 1)))

    @property
    def n_pairs(self) -> int:
        """int: number of centre pairs i < j."""
        return int(self.pairs.shape[1])

    def forward(self, x: torch.Tensor, time_features: torch.Tensor) -> torch.Tensor:
        """The term for each configuration.

        Parameters
        ----------
        x : torch.Tensor, shape (B, N_atoms, 3)
            Configurations (any length unit).
        time_features : torch.Tensor, shape (B, time_dim)
            Time embedding τ(t) of each configuration.

        Returns
        -------
        torch.Tensor, shape (B,)
            dtype of the module's parameters; zeros without pairs.
        """
        if self.n_pairs == 0:
            return x.new_zeros(x.shape[0])
        s = self.products(x).unsqueeze(-1)  # (B, P, 1)
        tau = time_features.unsqueeze(1).expand(-1, self.n_pairs, -1)
        h = self.input(torch.cat([s, tau], dim=-1)) + self.pair_embedding.weight[: self.n_pairs]
        return self.output(nn.functional.silu(h)).squeeze(-1).sum(-1)

    def products(self, x: torch.Tensor) -> torch.Tensor:
        """The chirality products c_i c_j of every pair i < j.

        Parameters
        ----------
        x : torch.Tensor, shape (B, N_atoms, 3)
            Configurations (any length unit).

        Returns
        -------
        torch.Tensor, shape (B, P)
            In [−1, 1]; positive where the pair's centres have the same hand.
        """
        c = chirality_index(x, self.centres)
        return c[:, self.pairs[0]] * c[:, self.pairs[1]]

    def wall(self, x: torch.Tensor, snr: torch.Tensor) -> torch.Tensor:
        """W = SNR Σ_{i<j} w_ij f(c_i c_j): zero where the centres agree, rising where they do not.

        Parameters
        ----------
        x : torch.Tensor, shape (B, N_atoms, 3)
            Configurations (any length unit; noisy ones at time t).
        snr : torch.Tensor, shape (B,)
            α_t² / σ_t² of each configuration's time.

        Returns
        -------
        torch.Tensor, shape (B,)
            Reduced energies (kT); zeros without pairs.
        """
        if self.n_pairs == 0:
            return x.new_zeros(x.shape[0])
        eps = WALL_SOFTNESS
        f = (eps * nn.functional.softplus(-self.products(x) / eps)) ** 2
        w = self.log_wall_weight[: self.n_pairs].exp().to(f.dtype)
        return snr.to(f.dtype) * (f * w).sum(-1)
