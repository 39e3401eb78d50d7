"""Chirality of peptide samples drawn from E(3)-invariant models.

An energy that is invariant under all of E(3), reflections included, gives a configuration and
its mirror image the same density, so a model trained on L-peptides puts half its mass on
D-forms. The inversion through the centre of mass, x → 2 x̄ − x (x → −x for centred
configurations), maps one onto the other. It is an involution with |det| = 1 (volume
preserving), so reflecting the wrong-handed samples of a mirror-symmetric density p is an exact,
density-preserving fold: the result has density 2 p on the correctly-handed region (and the
importance weights of the samples do not change).

Handedness of an amino acid's Cα: the signed volume

    V = ((N − CA) × (C − CA)) · (CB − CA)

is positive for L-amino acids (the only form proteins use) and negative for D. Glycine (no CB)
is not chiral. With several centres, a configuration is reflected when most centres are D (ties
broken by the first centre); the inversion flips every centre at once and maps this region
exactly onto its complement, so the fold stays exact. Centres that are still D after the fold
cannot be fixed by a reflection: :func:`count_wrong` counts them, and since molecular dynamics
from an L-peptide never inverts a centre, the samplers' target is the Boltzmann density on the
all-L region (:func:`all_l_form`), where such configurations have zero weight.
"""

from __future__ import annotations

import torch

from ..nn.chirality import as_centres, signed_volume
from ..states import chiral_centres

__all__ = [
    "chiral_centres",
    "signed_volume",
    "is_l_form",
    "in_l_region",
    "all_l_form",
    "fix_chirality",
    "count_wrong",
]


def is_l_form(x, centres) -> torch.Tensor:
    """True where a centre is L-handed (signed volume > 0).

    Parameters
    ----------
    x : array_like, shape (B, N_atoms, 3) or (N_atoms, 3)
        Configurations (nm).
    centres : array_like, shape (K, 4)
        Atom indices (N, CA, C, CB) of the chiral centres.

    Returns
    -------
    torch.BoolTensor, shape (B, K) (or (K,) for one configuration)
    """
    return signed_volume(x, centres) > 0


def in_l_region(x, centres) -> torch.Tensor:
    """Whether each configuration lies in the L-region: most centres L-handed (ties: the first
    centre decides).

    The region and its image under the inversion x → −x partition configuration space (up to
    the measure-zero set of planar centres).

    Parameters
    ----------
    x : array_like, shape (B, N_atoms, 3) or (N_atoms, 3)
        Configurations (nm).
    centres : array_like, shape (K, 4)
        Atom indices (N, CA, C, CB) of the chiral centres.

    Returns
    -------
    torch.BoolTensor, shape (B,) (0-dim for one configuration)
        All True when K = 0.
    """

    def most_l(lf):
        n_l, k = lf.sum(1), lf.shape[1]
        return (2 * n_l > k) | ((2 * n_l == k) & lf[:, 0])

    return _per_configuration(x, centres, most_l)


def all_l_form(x, centres) -> torch.Tensor:
    """Whether every centre of each configuration is L-handed: the support of the target.

    Molecular dynamics started from an L-peptide never inverts a centre, so the target a sampler
    is compared with is the Boltzmann density restricted to this region. After the fold
    (:func:`fix_chirality`) a configuration outside it has centres of both hands, which no
    reflection can mend: the samplers give it zero weight.

    Parameters
    ----------
    x : array_like, shape (B, N_atoms, 3) or (N_atoms, 3)
        Configurations (nm).
    centres : array_like, shape (K, 4)
        Atom indices (N, CA, C, CB) of the chiral centres.

    Returns
    -------
    torch.BoolTensor, shape (B,) (0-dim for one configuration)
        All True when K = 0; the same as :func:`in_l_region` when K = 1.
    """
    return _per_configuration(x, centres, lambda lf: lf.all(1))


def _per_configuration(x, centres, rule) -> torch.Tensor:
    """``rule`` of the (B, K) L-form mask for each configuration; all True without centres."""
    x = torch.as_tensor(x)
    single = x.dim() == 2
    xb = x.unsqueeze(0) if single else x
    c = as_centres(centres)
    if c.shape[0] == 0:
        out = torch.ones(xb.shape[0], dtype=torch.bool, device=xb.device)
    else:
        out = rule(is_l_form(xb, c))
    return out[0] if single else out


def count_wrong(x, centres) -> int:
    """Number of D-handed centres summed over the batch (what a reflection cannot fix).

    Parameters
    ----------
    x : array_like, shape (B, N_atoms, 3) or (N_atoms, 3)
        Configurations (nm).
    centres : array_like, shape (K, 4)
        Atom indices (N, CA, C, CB) of the chiral centres.

    Returns
    -------
    int
        Count of (configuration, centre) pairs with signed volume ≤ 0; 0 when K = 0.
    """
    c = as_centres(centres)
    if c.shape[0] == 0:
        return 0
    return int((~is_l_form(x, c)).sum())


def fix_chirality(x, centres, return_mask: bool = False):
    """Reflect the wrong-handed configurations through their centre of mass, x → 2 x̄ − x.

    Parameters
    ----------
    x : tensor (B, N_atoms, 3) or (N_atoms, 3)
    centres : (K, 4) atom indices (N, CA, C, CB), e.g. from :func:`chiral_centres`
    return_mask : bool
        Also return the (B,) bool mask of reflected configurations.

    Returns
    -------
    x_fixed : tensor like x (a new tensor; correctly-handed configurations are unchanged)
    n_reflected : int
    mask : tensor (B,) bool (only with ``return_mask``)

    The map is an involution with unit Jacobian: log-densities and importance weights of the
    samples are unchanged, and for a mirror-symmetric density p the fixed samples have density
    2 p on the correctly-handed region.
    """
    x = torch.as_tensor(x)
    single = x.dim() == 2
    xb = x.unsqueeze(0) if single else x
    flip = ~in_l_region(xb, centres)
    com = xb.mean(dim=-2, keepdim=True)
    fixed = torch.where(flip.reshape(-1, 1, 1), 2.0 * com - xb, xb)
    n = int(flip.sum())
    if single:
        fixed, flip = fixed[0], flip[0]
    return (fixed, n, flip) if return_mask else (fixed, n)
