"""The target-system interface.

A target is a Boltzmann density p(x) ∝ exp(-u(x)) over configurations x of a fixed event shape:
(N, 3) in nm for molecules and clusters, (D,) for analytic toy targets. Subclasses implement the
private hook :meth:`TargetSystem._reduced_energy`; users call the checked public method
:meth:`TargetSystem.reduced_energy` (the bgflow pattern).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..units import kT_of
from ..version import __version__


class TargetSystem:
    """A Boltzmann target p(x) ∝ exp(-u(x)) with a differentiable reduced energy u.

    Parameters
    ----------
    name : str
        Name of the system (a catalog name for built-in systems).
    event_shape : sequence of int
        Shape of one configuration: ``(n_atoms, 3)`` for molecules, ``(dim,)`` for toy targets.
    temperature : float
        Temperature in K. Reduced-unit systems (LJ clusters, Gaussian mixtures) use
        :data:`boltzgen.units.REDUCED_UNIT_TEMPERATURE`, at which kT = 1 kJ/mol.
    topology : mdtraj.Topology, optional
        Topology of molecular systems; ``None`` for toy targets.
    """

    def __init__(self, name: str, event_shape: Sequence[int], temperature: float, topology=None):
        self.name = str(name)
        self.event_shape = tuple(int(s) for s in event_shape)
        self.temperature = float(temperature)
        self.kT = kT_of(self.temperature)
        self.topology = topology
        if topology is not None and topology.n_atoms != self.event_shape[0]:
            raise ValueError(
                f"{self.name}: topology has {topology.n_atoms} atoms but the system has {self.event_shape[0]}"
            )

    # ------------------------------------------------------------------ description
    @property
    def n_atoms(self) -> Optional[int]:
        """Number of atoms (particles), or ``None`` for a non-molecular target."""
        return self.event_shape[0] if self.is_molecular else None

    @property
    def is_molecular(self) -> bool:
        """True when configurations are (N, 3) particle coordinates."""
        return len(self.event_shape) == 2 and self.event_shape[1] == 3

    @property
    def mean_free(self) -> bool:
        """True when u is translation invariant, so that p lives in the zero-centre-of-mass
        subspace of dimension 3(N - 1) (all molecular targets)."""
        return self.is_molecular

    @property
    def dim(self) -> int:
        """Number of coordinates of one configuration (3N or D)."""
        return int(np.prod(self.event_shape))

    @property
    def positions(self) -> torch.Tensor:
        """A valid start configuration, shape ``event_shape`` (nm), float64."""
        return self._positions()

    def _positions(self) -> torch.Tensor:
        raise NotImplementedError

    _UNSET = object()

    @property
    def states(self):
        """The system's metastable states: a :class:`boltzgen.states.StateSet`, or None.

        Default: :func:`boltzgen.states.default_states` of the topology (for a peptide, the joint
        phi signs of its residues; None for targets without a topology). Set it to use other
        states (e.g. :func:`boltzgen.states.torsion_states` or
        :func:`boltzgen.states.function_states`); set None for none. Per-state resampling,
        state oversampling in training and the free-energy differences between states use it.
        """
        states = self.__dict__.get("_states", self._UNSET)
        if states is self._UNSET:
            from ..states import default_states

            states = default_states(self.topology) if self.topology is not None else None
            self._states = states
        return states

    @states.setter
    def states(self, value) -> None:
        if value is not None and not (hasattr(value, "assign") and hasattr(value, "names")):
            raise TypeError(f"states must be a StateSet (with assign and names) or None, got {type(value).__name__}")
        self._states = value

    def metadata(self) -> dict[str, Any]:
        """JSON-serialisable description stored in sample files and run directories.

        Returns
        -------
        dict
            ``system`` (name), ``event_shape``, ``temperature_K`` (K), ``kT_kJ_per_mol``
            (kJ/mol) and ``boltzgen_version``; subclasses add their own keys.
        """
        return {
            "system": self.name,
            "event_shape": list(self.event_shape),
            "temperature_K": self.temperature,
            "kT_kJ_per_mol": self.kT,
            "boltzgen_version": __version__,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, event_shape={self.event_shape}, temperature={self.temperature:g} K)"

    # ------------------------------------------------------------------ energies
    def check_batch(self, x) -> torch.Tensor:
        """Return ``x`` as a tensor of shape (B, *event_shape), raising a clear error otherwise.

        A single configuration of shape ``event_shape`` is accepted and given a batch axis.

        Parameters
        ----------
        x : array_like, shape (B, *event_shape) or event_shape
            Configurations (nm for molecules).

        Returns
        -------
        torch.Tensor, shape (B, *event_shape)
            ``x`` as a floating-point tensor (integer input is converted to the default dtype;
            floating dtypes are kept).

        Raises
        ------
        ValueError
            On a wrong shape (with the atom count in the message for molecules).
        """
        x = torch.as_tensor(x)
        if not torch.is_floating_point(x):
            x = x.to(torch.get_default_dtype())
        ev = self.event_shape
        if tuple(x.shape) == ev:
            x = x.unsqueeze(0)
        if x.dim() != len(ev) + 1 or tuple(x.shape[1:]) != ev:
            got = tuple(x.shape)
            if self.is_molecular and x.dim() == 3 and x.shape[-1] == 3:
                raise ValueError(
                    f"{self.name}: wrong atom count: configurations have {x.shape[1]} atoms, "
                    f"the system has {ev[0]} (expected shape (B, {ev[0]}, 3), got {got})"
                )
            expected = "(B, " + ", ".join(str(s) for s in ev) + ")"
            raise ValueError(f"{self.name}: expected configurations of shape {expected}, got {got}")
        return x

    def reduced_energy(self, x) -> torch.Tensor:
        """Reduced energy u(x) = U(x)/kT of a batch.

        Parameters
        ----------
        x : tensor, shape (B, *event_shape)
            Configurations (nm for molecules). A single configuration is also accepted.

        Returns
        -------
        tensor, shape (B,), float64
            Reduced energies (dimensionless), differentiable in ``x``. Configurations with
            non-finite coordinates, or whose energy cannot be evaluated, get ``+inf`` (and zero
            gradient); they never raise and never give 0.
        """
        x = self.check_batch(x)
        x64 = x.to(torch.float64)
        finite = torch.isfinite(x64.reshape(x64.shape[0], -1)).all(dim=1)
        if not bool(finite.all()):
            mask = finite.reshape((-1,) + (1,) * len(self.event_shape))
            x64 = torch.where(mask, x64, self.positions.to(x64))
        u = self._reduced_energy(x64).to(torch.float64).reshape(x.shape[0])
        inf = torch.full_like(u, math.inf)
        return torch.where(finite & ~torch.isnan(u), u, inf)

    def reduced_energy_and_force(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        """Reduced energies and forces of a batch, detached from any graph.

        Parameters
        ----------
        x : array_like, shape (B, *event_shape) or event_shape
            Configurations (nm for molecules).

        Returns
        -------
        u : tensor, shape (B,), float64
            Reduced energies; ``+inf`` where not evaluable.
        force : tensor, shape (B, *event_shape), float64
            -∇u in kT per unit length (kT/nm for molecules); zero where ``u`` is not finite.
        """
        x = self.check_batch(x).detach().to(torch.float64).requires_grad_(True)
        with torch.enable_grad():
            u = self.reduced_energy(x)
            ok = torch.isfinite(u)
            (grad,) = torch.autograd.grad(torch.where(ok, u, torch.zeros_like(u)).sum(), x)
        force = torch.where(ok.reshape((-1,) + (1,) * len(self.event_shape)), -grad, torch.zeros_like(grad))
        return u.detach(), force

    def _reduced_energy(self, x: torch.Tensor) -> torch.Tensor:
        """Hook: reduced energy of finite float64 configurations (B, *event_shape) -> (B,)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ sampling
    @property
    def has_exact_sampler(self) -> bool:
        """True for analytic targets that can draw exact samples with :meth:`sample`."""
        return False

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Exact samples (analytic targets only).

        Parameters
        ----------
        n : int
            Number of samples.
        generator : torch.Generator, optional
            Source of randomness.

        Returns
        -------
        torch.Tensor, shape (n, *event_shape), float64

        Raises
        ------
        NotImplementedError
            For targets without an exact sampler (see :attr:`has_exact_sampler`).
        """
        raise NotImplementedError(f"{self.name} has no exact sampler; use boltzgen simulate")

    def close(self) -> None:
        """Release resources (worker processes of OpenMM targets). Idempotent."""


class TemperedTarget(TargetSystem):
    """A target at another temperature: u'(x) = (T / T') u(x), the same energy U seen at T'.

    For an OpenMM target this is the same density as building it at T' (the reduced energy is
    U/kT'); it also tempers analytic targets, whose reduced energy has no U.

    Parameters
    ----------
    base : TargetSystem
        The target at its own temperature T.
    temperature : float
        The new temperature T' (same unit as ``base.temperature``), > 0.
    """

    def __init__(self, base: TargetSystem, temperature: float):
        if not float(temperature) > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        super().__init__(f"{base.name}@{float(temperature):g}", base.event_shape, temperature, base.topology)
        self.base = base
        self.factor = base.temperature / self.temperature

    @property
    def mean_free(self) -> bool:
        """As the base target."""
        return self.base.mean_free

    def _positions(self) -> torch.Tensor:
        return self.base.positions

    def _reduced_energy(self, x: torch.Tensor) -> torch.Tensor:
        return self.factor * self.base.reduced_energy(x)

    def metadata(self) -> dict:
        """The base target's metadata at the new temperature.

        Returns
        -------
        dict
        """
        meta = dict(self.base.metadata())
        meta.update(system=self.name, temperature_K=self.temperature, kT_kJ_per_mol=self.kT)
        meta["tempered_from_K"] = self.base.temperature
        return meta

    def close(self) -> None:
        """Close the base target."""
        self.base.close()


def energies_and_forces(target, x, chunk_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Reduced energies and forces of many configurations, evaluated in chunks.

    Parameters
    ----------
    target : TargetSystem
        The target (``reduced_energy_and_force``).
    x : array_like, shape (B, *event_shape)
        Configurations (nm for molecules).
    chunk_size : int
        Configurations per call (bounds the memory of one call).

    Returns
    -------
    u : ndarray, shape (B,), float64
        Reduced energies u = U/kT.
    force : ndarray, shape (B, *event_shape), float64
        −∇u (kT/nm for molecules).

    Raises
    ------
    ValueError
        If a configuration cannot be evaluated (non-finite energy).
    """
    x = np.asarray(x, dtype=np.float64)
    us, fs = [], []
    for start in range(0, x.shape[0], max(1, int(chunk_size))):
        u, f = target.reduced_energy_and_force(torch.from_numpy(x[start : start + chunk_size]))
        us.append(u.detach().cpu().numpy())
        fs.append(f.detach().cpu().numpy())
    u = np.concatenate(us) if us else np.zeros(0)
    force = np.concatenate(fs) if fs else np.zeros_like(x)
    bad = ~np.isfinite(u) | ~np.isfinite(force.reshape(len(u), -1)).all(1)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} configurations have no finite energy or force under {target.name}")
    return u, force
