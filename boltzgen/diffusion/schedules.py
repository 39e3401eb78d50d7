"""Noise schedules of the forward diffusion x_t = α_t x_0 + σ_t ε.

Times are dimensionless, t ∈ [0, 1]. All schedule quantities accept a float or a tensor of times
and return tensors of the same shape (float64 unless ``t`` is a float32 tensor).
"""

from __future__ import annotations

import torch


def _as_time(t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        return torch.as_tensor(t, dtype=torch.float64)
    return t if torch.is_floating_point(t) else t.to(torch.float64)


class VPSchedule:
    """Variance-preserving schedule with a linear β(t) = β_min + t (β_max − β_min).

    log α_t = −½ (β_min t + ½ (β_max − β_min) t²),  σ_t² = 1 − α_t².

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
        """β(t), the instantaneous noise rate."""
        t = _as_time(t)
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_alpha(self, t) -> torch.Tensor:
        """log α_t."""
        t = _as_time(t)
        return -0.5 * (self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t)

    def alpha(self, t) -> torch.Tensor:
        """Signal scale α_t."""
        return torch.exp(self.log_alpha(t))

    def sigma2(self, t) -> torch.Tensor:
        """Noise variance σ_t² = 1 − α_t² (computed without cancellation)."""
        return -torch.expm1(2.0 * self.log_alpha(t))

    def sigma(self, t) -> torch.Tensor:
        """Noise scale σ_t."""
        return self.sigma2(t).sqrt()

    def transition(self, s, t) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact Gaussian kernel of x_t given x_s for s ≤ t: x_t = a x_s + sqrt(v) ε.

        Returns
        -------
        a, v : tensors
            Scale a = α_t / α_s and variance v = σ_t² − a² σ_s² = 1 − a².
        """
        log_a = self.log_alpha(t) - self.log_alpha(s)
        return torch.exp(log_a), -torch.expm1(2.0 * log_a)

    def config(self) -> dict:
        return {"kind": self.kind, "beta_min": self.beta_min, "beta_max": self.beta_max}
