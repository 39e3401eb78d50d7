"""Reusable physics checks for energies and networks (the NequIP / e3nn pattern).

They raise ``AssertionError`` with a message that says what failed, so they serve both the
project's tests and users checking their own targets or models.
"""

from __future__ import annotations

from typing import Callable

import torch

EnergyFn = Callable[[torch.Tensor], torch.Tensor]


def assert_gradient_matches_finite_differences(energy: EnergyFn, x: torch.Tensor, *, eps: float = 1e-6,
                                               rtol: float = 1e-5, atol: float = 1e-6, n_coords: int = 12,
                                               generator: torch.Generator | None = None) -> None:
    """Check autograd ∇E against central finite differences, in float64.

    Parameters
    ----------
    energy : callable
        Maps a batch (B, *event) to energies (B,).
    x : tensor, shape (B, *event)
        Points at which to check.
    eps : float
        Finite-difference step (units of x).
    n_coords : int
        Number of randomly chosen coordinates per configuration to check.
    """
    x = x.detach().to(torch.float64).clone().requires_grad_(True)
    with torch.enable_grad():
        e = energy(x)
        (grad,) = torch.autograd.grad(e.sum(), x)
    flat = x.detach().reshape(x.shape[0], -1)
    g = torch.Generator().manual_seed(0) if generator is None else generator
    idx = torch.randperm(flat.shape[1], generator=g)[: min(n_coords, flat.shape[1])]
    for j in idx.tolist():
        step = torch.zeros_like(flat)
        step[:, j] = eps
        with torch.no_grad():
            plus = energy((flat + step).reshape(x.shape)).to(torch.float64)
            minus = energy((flat - step).reshape(x.shape)).to(torch.float64)
        fd = (plus - minus) / (2 * eps)
        ad = grad.reshape(x.shape[0], -1)[:, j]
        if not torch.allclose(ad, fd, rtol=rtol, atol=atol):
            raise AssertionError(f"gradient of coordinate {j} differs from finite differences: autograd {ad.tolist()}, "
                                 f"finite differences {fd.tolist()}")


def assert_no_batch_leak(fn: EnergyFn, x: torch.Tensor) -> None:
    """Check that output b depends on input b only: ∂fn(x)_b / ∂x_c = 0 for c ≠ b.

    Parameters
    ----------
    fn : callable
        Maps a batch (B, *event) to one scalar per member (B,).
    x : tensor, shape (B, *event), B ≥ 2
    """
    if x.shape[0] < 2:
        raise ValueError("need a batch of at least two to check for leaks")
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = fn(x)
        for b in range(x.shape[0]):
            (grad,) = torch.autograd.grad(out[b], x, retain_graph=True, allow_unused=True)
            if grad is None:
                continue
            others = torch.cat([grad[:b], grad[b + 1:]])
            if others.abs().max() > 0:
                raise AssertionError(f"output {b} has a gradient with respect to other batch members "
                                     f"(max {others.abs().max().item():.3g})")
