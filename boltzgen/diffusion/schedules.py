"""Noise schedules of the forward diffusion x_t = α_t x_0 + σ_t ε.

Times are dimensionless, t ∈ [0, 1]. All schedule quantities accept a float or a tensor of times
and return tensors of the same shape (float64 for a float, else the dtype of the tensor ``t``).

Every schedule defines log α_t and σ_t² and, from them,

- the exact Gaussian transition kernel between two times s ≤ t (:meth:`Schedule.transition`):
  x_t = a x_s + sqrt(v) ε with a = α_t / α_s and v = σ_t² − a² σ_s²;
- the coefficients of the equivalent SDE dx = f(t) x dt + g(t) dW (:meth:`Schedule.drift_coef`,
  :meth:`Schedule.g2`): f = d log α_t / dt and g² = dσ_t²/dt − 2 f σ_t², so that the SDE has
  the marginals above;
- forward noising (:meth:`Schedule.q_sample`) and the log-density of the transition kernel
  (:meth:`Schedule.transition_log_prob`), mean-free for molecules (d = 3(N − 1) dimensions).

Two families: :class:`VPSchedule` (variance preserving, α_t² + σ_t² = 1, the default) and
:class:`VESchedule` (variance exploding, α_t = 1, σ_t geometric between σ_min and σ_max, or EDM's
ρ-spacing). :func:`schedule_from_config` rebuilds either from its :meth:`Schedule.config`.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .noise import gaussian_log_prob, q_sample

__all__ = ["Schedule", "VPSchedule", "VESchedule", "schedule_from_config"]


def _as_time(t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        return torch.as_tensor(t, dtype=torch.float64)
    return t if torch.is_floating_point(t) else t.to(torch.float64)


class Schedule:
    """Base class: subclasses define :meth:`log_alpha`, :meth:`sigma2`, their time derivatives
    :meth:`d_log_alpha`, :meth:`d_sigma2`, and :meth:`config`."""

    kind = "base"

    # ------------------------------------------------------------------ to implement
    def log_alpha(self, t) -> torch.Tensor:
        """log α_t, the log of the signal scale.

        Parameters
        ----------
        t : float or torch.Tensor, any shape
            Diffusion time(s) in [0, 1] (dimensionless).

        Returns
        -------
        torch.Tensor, shape of ``t``
            log α_t (dimensionless; float64 for a float ``t``, else the dtype of ``t``).
        """
        raise NotImplementedError

    def sigma2(self, t) -> torch.Tensor:
        """Noise variance σ_t² of x_t given x_0, per coordinate.

        Parameters
        ----------
        t : float or torch.Tensor, any shape
            Diffusion time(s) in [0, 1].

        Returns
        -------
        torch.Tensor, shape of ``t``
            σ_t², in units of x² (x as seen by the diffusion, e.g. standardised coordinates).
        """
        raise NotImplementedError

    def d_log_alpha(self, t) -> torch.Tensor:
        """Time derivative d log α_t / dt.

        Parameters
        ----------
        t : float or torch.Tensor, any shape
            Diffusion time(s) in [0, 1].

        Returns
        -------
        torch.Tensor, shape of ``t``
            d log α_t / dt (per unit diffusion time).
        """
        raise NotImplementedError

    def d_sigma2(self, t) -> torch.Tensor:
        """Time derivative d σ_t² / dt.

        Parameters
        ----------
        t : float or torch.Tensor, any shape
            Diffusion time(s) in [0, 1].

        Returns
        -------
        torch.Tensor, shape of ``t``
            dσ_t²/dt (units of x² per unit diffusion time).
        """
        raise NotImplementedError

    def config(self) -> dict:
        """JSON-serialisable description; :func:`schedule_from_config` rebuilds the schedule.

        Returns
        -------
        dict
            ``{"kind": ..., <constructor arguments>}``.
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ derived quantities
    def alpha(self, t) -> torch.Tensor:
        """Signal scale α_t = exp(log α_t).

        Parameters
        ----------
        t : float or torch.Tensor, any shape
            Diffusion time(s) in [0, 1].

        Returns
        -------
        torch.Tensor, shape of ``t``
            α_t (dimensionless).
        """
        return torch.exp(self.log_alpha(t))

    def sigma(self, t) -> torch.Tensor:
        """Noise scale σ_t = sqrt(σ_t²).

        Parameters
        ----------
        t : float or torch.Tensor, any shape
            Diffusion time(s) in [0, 1].

        Returns
        -------
        torch.Tensor, shape of ``t``
            σ_t, in units of x.
        """
        return self.sigma2(t).sqrt()

    def denoise(self, x_t: torch.Tensor, score: torch.Tensor, t) -> torch.Tensor:
        """Tweedie's estimate E[x_0 | x_t] = (x_t + σ_t² ∇ log p_t(x_t)) / α_t.

        Parameters
        ----------
        x_t : torch.Tensor, shape (B, *event_shape)
            Noisy configurations, in units of x.
        score : torch.Tensor, shape of ``x_t``
            ∇ log p_t at ``x_t`` (units 1/x), e.g. the model's −∇E.
        t : float or torch.Tensor broadcastable to ``x_t``
            Diffusion time(s) in [0, 1].

        Returns
        -------
        torch.Tensor, shape of ``x_t``
            The posterior mean of x_0, in units of x.
        """
        return (x_t + self.sigma2(t) * score) / self.alpha(t)

    def drift_coef(self, t) -> torch.Tensor:
        """f(t) = d log α_t / dt, the linear drift of the forward SDE dx = f x dt + g dW.

        Parameters
        ----------
        t : float or torch.Tensor, any shape
            Diffusion time(s) in [0, 1].

        Returns
        -------
        torch.Tensor, shape of ``t``
            f(t) (per unit diffusion time).
        """
        return self.d_log_alpha(t)

    def g2(self, t) -> torch.Tensor:
        """g(t)² = dσ_t²/dt − 2 f(t) σ_t², the squared diffusion coefficient of the forward SDE.

        Parameters
        ----------
        t : float or torch.Tensor, any shape
            Diffusion time(s) in [0, 1].

        Returns
        -------
        torch.Tensor, shape of ``t``
            g(t)² (units of x² per unit diffusion time).
        """
        return self.d_sigma2(t) - 2.0 * self.d_log_alpha(t) * self.sigma2(t)

    def transition(self, s, t) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact Gaussian kernel of x_t given x_s for s ≤ t: x_t = a x_s + sqrt(v) ε.

        Parameters
        ----------
        s, t : float or torch.Tensor (broadcastable shapes), s ≤ t
            Start and end diffusion times in [0, 1].

        Returns
        -------
        a, v : torch.Tensor, broadcast shape of ``s`` and ``t``
            Scale a = α_t / α_s (dimensionless) and variance v = σ_t² − a² σ_s² (per coordinate,
            units of x²).
        """
        log_a = self.log_alpha(t) - self.log_alpha(s)
        a = torch.exp(log_a)
        return a, self.sigma2(t) - a * a * self.sigma2(s)

    def transition_log_prob(
        self, x_t: torch.Tensor, x_s: torch.Tensor, s, t, mean_free: bool = False, n_atoms: Optional[int] = None
    ) -> torch.Tensor:
        """log q(x_t | x_s) of the exact forward kernel from time s to time t ≥ s.

        log q = −‖x_t − a x_s‖² / (2 v) − (d/2) log(2π v), with (a, v) = :meth:`transition`
        and d = 3(N − 1) for mean-free configurations (density on the zero-centre-of-mass
        subspace; x_t − a x_s is projected onto it), d = number of coordinates otherwise.

        Parameters
        ----------
        x_t, x_s : tensors, shape (B, *event_shape)
        s, t : float or tensor of shape (B,)
        mean_free : bool
            Configurations (B, N, 3) diffusing with mean-free noise.
        n_atoms : int, optional
            N (inferred from the shape when not given).

        Returns
        -------
        tensor, shape (B,), dtype of ``x_t``
        """
        s = torch.as_tensor(s, dtype=x_t.dtype, device=x_t.device)
        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device)
        a, v = self.transition(s, t)
        n_ev = x_t.dim() - 1
        a = a.reshape(a.shape + (1,) * n_ev) if a.dim() > 0 else a
        return gaussian_log_prob(x_t, a * x_s, v, mean_free=mean_free, n_atoms=n_atoms)

    def q_sample(
        self,
        x0: torch.Tensor,
        t,
        generator: Optional[torch.Generator] = None,
        *,
        mean_free: bool = False,
        noise: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward noising x_t = α_t x_0 + σ_t ε; see :func:`boltzgen.diffusion.noise.q_sample`.

        Returns
        -------
        x_t, eps : tensors of the shape of ``x0``
        """
        return q_sample(self, x0, t, generator, mean_free=mean_free, noise=noise)

    # ------------------------------------------------------------------ misc
    def __eq__(self, other) -> bool:
        return isinstance(other, Schedule) and self.config() == other.config()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.config().items())))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "kind")
        return f"{type(self).__name__}({args})"


class VPSchedule(Schedule):
    """Variance-preserving schedule with a linear β(t) = β_min + t (β_max − β_min).

    log α_t = −½ (β_min t + ½ (β_max − β_min) t²),  σ_t² = 1 − α_t².
    The SDE is dx = −½ β(t) x dt + sqrt(β(t)) dW.

    Parameters
    ----------
    beta_min, beta_max : float
        End points of the linear β(t) (defaults 0.1 and 20, the usual VP-SDE values).
    """

    kind = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        if not 0 <= beta_min <= beta_max:
            raise ValueError(f"need 0 <= beta_min <= beta_max, got {beta_min}, {beta_max}")
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    def beta(self, t) -> torch.Tensor:
        """β(t) = β_min + t (β_max − β_min), the instantaneous noise rate.

        Parameters
        ----------
        t : float or torch.Tensor, any shape
            Diffusion time(s) in [0, 1].

        Returns
        -------
        torch.Tensor, shape of ``t``
            β(t) (per unit diffusion time; float64 for a float ``t``).
        """
        t = _as_time(t)
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_alpha(self, t) -> torch.Tensor:
        """log α_t = −½ (β_min t + ½ (β_max − β_min) t²).

        Parameters
        ----------
        t : float or torch.Tensor, any shape
            Diffusion time(s) in [0, 1].

        Returns
        -------
        torch.Tensor, shape of ``t``
            log α_t (≤ 0).
        """
        t = _as_time(t)
        return -0.5 * (self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t)

    def sigma2(self, t) -> torch.Tensor:
        """Noise variance σ_t² = 1 − α_t² (computed without cancellation).

        Parameters
        ----------
        t : float or torch.Tensor, any shape
            Diffusion time(s) in [0, 1].

        Returns
        -------
        torch.Tensor, shape of ``t``
            σ_t² ∈ [0, 1), in units of x² (data of unit scale).
        """
        return -torch.expm1(2.0 * self.log_alpha(t))

    def d_log_alpha(self, t) -> torch.Tensor:
        """d log α_t / dt = −β(t)/2.

        Parameters
        ----------
        t : float or torch.Tensor, any shape
            Diffusion time(s) in [0, 1].

        Returns
        -------
        torch.Tensor, shape of ``t``
            −β(t)/2.
        """
        return -0.5 * self.beta(t)

    def d_sigma2(self, t) -> torch.Tensor:
        """dσ_t²/dt = α_t² β(t).

        Parameters
        ----------
        t : float or torch.Tensor, any shape
            Diffusion time(s) in [0, 1].

        Returns
        -------
        torch.Tensor, shape of ``t``
            α_t² β(t).
        """
        return self.alpha(t) ** 2 * self.beta(t)

    def g2(self, t) -> torch.Tensor:
        """g(t)² = β(t), the squared diffusion coefficient of the VP-SDE.

        Parameters
        ----------
        t : float or torch.Tensor, any shape
            Diffusion time(s) in [0, 1].

        Returns
        -------
        torch.Tensor, shape of ``t``
            β(t).
        """
        return self.beta(t)

    def transition(self, s, t) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact Gaussian kernel of x_t given x_s for s ≤ t: x_t = a x_s + sqrt(v) ε.

        Parameters
        ----------
        s, t : float or torch.Tensor (broadcastable shapes), s ≤ t
            Start and end diffusion times in [0, 1].

        Returns
        -------
        a, v : torch.Tensor, broadcast shape of ``s`` and ``t``
            Scale a = α_t / α_s and variance v = σ_t² − a² σ_s² = 1 − a² (per coordinate,
            computed without cancellation).
        """
        log_a = self.log_alpha(t) - self.log_alpha(s)
        return torch.exp(log_a), -torch.expm1(2.0 * log_a)

    def config(self) -> dict:
        """JSON-serialisable description; :func:`schedule_from_config` rebuilds the schedule.

        Returns
        -------
        dict
            ``{"kind": "vp", "beta_min": float, "beta_max": float}``.
        """
        return {"kind": self.kind, "beta_min": self.beta_min, "beta_max": self.beta_max}


class VESchedule(Schedule):
    """Variance-exploding schedule: α_t = 1 and σ_t increasing from σ_min (t = 0) to σ_max (t = 1).

    ``spacing="geometric"`` (the VE-SDE of Song et al.): σ_t = σ_min (σ_max / σ_min)^t.
    ``spacing="edm"`` (Karras et al.'s ρ-spacing, in forward time):
    σ_t = (σ_min^{1/ρ} + t (σ_max^{1/ρ} − σ_min^{1/ρ}))^ρ.

    The SDE is dx = sqrt(dσ_t²/dt) dW. Note σ_0 = σ_min > 0: the t = 0 marginal is the data
    convolved with N(0, σ_min²).

    Parameters
    ----------
    sigma_min, sigma_max : float
        Noise scales at t = 0 and t = 1, in units of x (defaults 1e-3 and 10, for data of unit
        scale).
    spacing : {"geometric", "edm"}
    rho : float
        Exponent of the EDM spacing (default 7).
    """

    kind = "ve"

    def __init__(self, sigma_min: float = 1e-3, sigma_max: float = 10.0, spacing: str = "geometric", rho: float = 7.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        if spacing not in ("geometric", "edm"):
            raise ValueError(f"spacing must be 'geometric' or 'edm', got {spacing!r}")
        if rho <= 0:
            raise ValueError(f"rho must be positive, got {rho}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.spacing, self.rho = spacing, float(rho)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)
        self._u0 = self.sigma_min ** (1.0 / self.rho)
        self._du = self.sigma_max ** (1.0 / self.rho) - self._u0

    def log_alpha(self, t) -> torch.Tensor:
        """log α_t = 0 (no signal scaling).

        Parameters
        ----------
        t : float or torch.Tensor, any shape
            Diffusion time(s) in [0, 1].

        Returns
        -------
        torch.Tensor, shape of ``t``
            Zeros.
        """
        return torch.zeros_like(_as_time(t))

    def sigma(self, t) -> torch.Tensor:
        """Noise scale σ_t (geometric or EDM ρ-spacing between σ_min and σ_max).

        Parameters
        ----------
        t : float or torch.Tensor, any shape
            Diffusion time(s) in [0, 1].

        Returns
        -------
        torch.Tensor, shape of ``t``
            σ_t, in units of x.
        """
        t = _as_time(t)
        if self.spacing == "geometric":
            return self.sigma_min * torch.exp(t * self._log_ratio)
        return (self._u0 + t * self._du) ** self.rho

    def sigma2(self, t) -> torch.Tensor:
        """Noise variance σ_t².

        Parameters
        ----------
        t : float or torch.Tensor, any shape
            Diffusion time(s) in [0, 1].

        Returns
        -------
        torch.Tensor, shape of ``t``
            σ_t², in units of x².
        """
        return self.sigma(t) ** 2

    def d_log_alpha(self, t) -> torch.Tensor:
        """d log α_t / dt = 0.

        Parameters
        ----------
        t : float or torch.Tensor, any shape
            Diffusion time(s) in [0, 1].

        Returns
        -------
        torch.Tensor, shape of ``t``
            Zeros.
        """
        return torch.zeros_like(_as_time(t))

    def d_sigma2(self, t) -> torch.Tensor:
        """dσ_t²/dt: 2 σ_t² log(σ_max/σ_min) (geometric) or 2 ρ u^{2ρ−1} du/dt (EDM).

        Parameters
        ----------
        t : float or torch.Tensor, any shape
            Diffusion time(s) in [0, 1].

        Returns
        -------
        torch.Tensor, shape of ``t``
            dσ_t²/dt (units of x² per unit diffusion time); equals g(t)² since α_t = 1.
        """
        t = _as_time(t)
        if self.spacing == "geometric":
            return 2.0 * self._log_ratio * self.sigma2(t)
        u = self._u0 + t * self._du
        return 2.0 * self.rho * u ** (2.0 * self.rho - 1.0) * self._du

    def transition(self, s, t) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact kernel of x_t given x_s, s ≤ t: a = 1, v = σ_t² − σ_s² (without cancellation for
        the geometric spacing: σ_s² expm1(2 (t − s) log(σ_max/σ_min))).

        Parameters
        ----------
        s, t : float or torch.Tensor (broadcastable shapes), s ≤ t
            Start and end diffusion times in [0, 1].

        Returns
        -------
        a, v : torch.Tensor, broadcast shape of ``s`` and ``t``
            Scale a = 1 (ones) and variance v = σ_t² − σ_s² (units of x², per coordinate).
        """
        s, t = _as_time(s), _as_time(t)
        if self.spacing == "geometric":
            v = self.sigma2(s) * torch.expm1(2.0 * (t - s) * self._log_ratio)
        else:
            sig_s, sig_t = self.sigma(s), self.sigma(t)
            v = (sig_t - sig_s) * (sig_t + sig_s)
        return torch.ones_like(v), v

    def config(self) -> dict:
        """JSON-serialisable description; :func:`schedule_from_config` rebuilds the schedule.

        Returns
        -------
        dict
            ``{"kind": "ve", "sigma_min": float, "sigma_max": float, "spacing": str,
            "rho": float}``.
        """
        return {
            "kind": self.kind,
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "spacing": self.spacing,
            "rho": self.rho,
        }


_SCHEDULES = {"vp": VPSchedule, "ve": VESchedule}


def schedule_from_config(config) -> Schedule:
    """Rebuild a schedule from :meth:`Schedule.config` (a dict with ``kind`` ∈ {"vp", "ve"}).

    Parameters
    ----------
    config : dict, Schedule or None
        The output of :meth:`Schedule.config` (``kind`` defaults to ``"vp"``; the other keys
        are constructor arguments). ``None`` gives the default :class:`VPSchedule`; a schedule
        is returned as is.

    Returns
    -------
    Schedule
        A :class:`VPSchedule` or :class:`VESchedule`.

    Raises
    ------
    ValueError
        For an unknown ``kind``.
    """
    if config is None:
        return VPSchedule()
    if isinstance(config, Schedule):
        return config
    config = dict(config)
    kind = config.pop("kind", "vp")
    if kind not in _SCHEDULES:
        raise ValueError(f"unknown schedule kind {kind!r}; known: {sorted(_SCHEDULES)}")
    return _SCHEDULES[kind](**config)
