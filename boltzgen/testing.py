"""Reusable physics checks for energies and networks (the NequIP / e3nn pattern).

They raise ``AssertionError`` with a message that says what failed, so they serve both the
project's tests and users checking their own targets or models.
"""

from __future__ import annotations

from typing import Callable

import torch

EnergyFn = Callable[[torch.Tensor], torch.Tensor]


def assert_gradient_matches_finite_differences(
    energy: EnergyFn,
    x: torch.Tensor,
    *,
    eps: float = 1e-6,
    rtol: float = 1e-5,
    atol: float = 1e-6,
    n_coords: int = 12,
    generator: torch.Generator | None = None,
) -> None:
    """Check autograd ∇E against central finite differences, in float64.

    Parameters
    ----------
    energy : callable
        Maps a batch (B, *event) to energies (B,).
    x : tensor, shape (B, *event)
        Points at which to check.
    eps : float
        Finite-difference step (units of x).
    rtol, atol : float
        Relative and absolute tolerances of ``torch.allclose`` (energy units per unit of x).
    n_coords : int
        Number of randomly chosen coordinates per configuration to check.
    generator : torch.Generator, optional
        Chooses the coordinates (default: seeded with 0).

    Raises
    ------
    AssertionError
        Naming the first coordinate whose derivative differs.
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
            raise AssertionError(
                f"gradient of coordinate {j} differs from finite differences: autograd {ad.tolist()}, "
                f"finite differences {fd.tolist()}"
            )


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
            others = torch.cat([grad[:b], grad[b + 1 :]])
            if others.abs().max() > 0:
                raise AssertionError(
                    f"output {b} has a gradient with respect to other batch members "
                    f"(max {others.abs().max().item():.3g})"
                )


def _random_orthogonal(generator: torch.Generator, reflect: bool) -> torch.Tensor:
    """A random 3×3 rotation (det +1), or a rotation composed with a reflection (det −1), float64."""
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))  # Haar-distributed orthogonal matrix
    if (torch.det(q) < 0) != reflect:
        q = q * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)  # flip one column: det changes sign
    return q


def assert_equivariant(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    kind: str = "scalar",
    reflections: bool = True,
    translations: bool = True,
    permutation_groups: list[list[int]] | None = None,
    n_trials: int = 3,
    generator: torch.Generator | None = None,
    rtol: float = 1e-6,
    atol: float = 1e-8,
) -> None:
    """Check that ``fn`` is invariant (scalars) or equivariant (vectors) under E(3) and permutations.

    Each trial draws a random rotation, a random reflection (rotation composed with a mirror, when
    ``reflections``), a random translation (when ``translations``) and, for every group of identical
    atoms, a random permutation within it, and checks each transformation g separately, then all of
    them composed:

    - ``kind="scalar"``: fn(g·x) == fn(x), outputs of shape (B,);
    - ``kind="vector"``: fn(g·x) == g·fn(x), outputs of shape (B, N, 3), where g acts on the
      output by the same rotation/reflection and permutation but not by the translation.

    Parameters
    ----------
    fn : callable
        Maps configurations (B, N, 3), float64, to (B,) or (B, N, 3).
    x : tensor, shape (B, N, 3)
        Configurations at which to check; converted to float64.
    kind : {"scalar", "vector"}
        Whether the output is invariant or transforms like the coordinates.
    reflections : bool
        Also check improper rotations (det −1). Set ``False`` for SE(3)-only functions.
    translations : bool
        Also check translations x_i → x_i + c.
    permutation_groups : list of list of int, optional
        Groups of interchangeable atoms; atoms are permuted within each group.
    n_trials : int
        Number of random draws of each transformation.
    generator : torch.Generator, optional
        Source of randomness (a fixed seed by default).
    rtol, atol : float
        Tolerances of the comparison.

    Raises
    ------
    AssertionError
        Naming the transformation (and trial) that failed and the largest deviation.
    """
    if kind not in ("scalar", "vector"):
        raise ValueError(f"kind must be 'scalar' or 'vector', got {kind!r}")
    x = x.detach().to(torch.float64)
    if x.dim() != 3 or x.shape[-1] != 3:
        raise ValueError(f"expected configurations of shape (B, N, 3), got {tuple(x.shape)}")
    n_atoms = x.shape[1]
    g = torch.Generator().manual_seed(0) if generator is None else generator
    reference = fn(x)
    expected_shape = (x.shape[0],) if kind == "scalar" else tuple(x.shape)
    if tuple(reference.shape) != expected_shape:
        raise AssertionError(f"fn returned shape {tuple(reference.shape)}, expected {expected_shape} for kind={kind!r}")
    reference = reference.to(torch.float64)
    identity = torch.eye(3, dtype=torch.float64)
    no_shift = torch.zeros(3, dtype=torch.float64)
    spread = float(x.std()) + 1.0

    for trial in range(n_trials):
        rotation = _random_orthogonal(g, reflect=False)
        reflection = _random_orthogonal(g, reflect=True)
        shift = torch.randn(3, generator=g, dtype=torch.float64) * spread if translations else no_shift
        order = torch.arange(n_atoms)
        for group in permutation_groups or []:
            group = torch.as_tensor(group, dtype=torch.long)
            order[group] = group[torch.randperm(len(group), generator=g)]
        checks = [("rotation", rotation, no_shift, None)]
        if reflections:
            checks.append(("reflection", reflection, no_shift, None))
        if translations:
            checks.append(("translation", identity, shift, None))
        if permutation_groups:
            checks.append(("permutation of identical atoms", identity, no_shift, order))
        checks.append(
            (
                "all transformations composed",
                reflection if reflections else rotation,
                shift,
                order if permutation_groups else None,
            )
        )
        for name, matrix, offset, perm in checks:
            moved = x @ matrix.T + offset
            expected = reference if kind == "scalar" else reference @ matrix.T
            if perm is not None:
                moved = moved[:, perm]
                if kind == "vector":
                    expected = expected[:, perm]
            got = fn(moved).to(torch.float64)
            if not torch.allclose(got, expected, rtol=rtol, atol=atol):
                deviation = (got - expected).abs().max().item()
                what = "invariant" if kind == "scalar" else "equivariant"
                raise AssertionError(
                    f"not {what} under {name} (trial {trial}): max deviation {deviation:.3g} "
                    f"(rtol={rtol:g}, atol={atol:g})"
                )


class CallCounter(torch.nn.Module):
    """Wraps a network ``net(x, t)`` and records ``(batch size, x.requires_grad)`` of every call,
    to check that an objective or sampler makes no duplicate network passes.

    Parameters
    ----------
    inner : torch.nn.Module
        The wrapped network ``inner(x, t) -> (B,)``.

    Attributes
    ----------
    calls : list of (int, bool)
    """

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        self.calls: list[tuple[int, bool]] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Record the call, then evaluate the wrapped network.

        Parameters
        ----------
        x : torch.Tensor, shape (B, *event_shape)
            Network input.
        t : torch.Tensor, shape (B,)
            Diffusion times.

        Returns
        -------
        torch.Tensor, shape (B,)
            ``inner(x, t)``.
        """
        self.calls.append((x.shape[0], x.requires_grad))
        return self.inner(x, t)
