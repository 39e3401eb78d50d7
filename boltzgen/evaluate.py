"""Exact-answer evaluation of a trained energy model on analytic targets (Gaussian mixtures).

Three measures, each against the exact diffusion marginals p_t of the target:

- :func:`mode_weights`: the relative mass of each mixture component under exp(−E_θ(·, t)),
  estimated by importance sampling (the central claim of DiffCLF: DSM alone gets these wrong);
- :func:`chain_classification_loss`: the cross-entropy of classifying the noise level of samples
  along a forward noising chain among L levels (chance is ln L);
- :func:`marginal_ess`: the ESS fraction of exact samples of p_t reweighted to exp(−E_θ(·, t)).

All take the model in its own coordinates (``TrainedModel.inner`` or an ``EnergyModel``) plus the
length scale s of the model coordinates y = x / s. The diffusion runs in y, so the exact reference
is the mixture rescaled by 1/s (again a Gaussian mixture) and its diffusion marginals.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from .systems.gmm import GaussianMixture


def model_energies(model, y: torch.Tensor, t: float, batch: int = 8192) -> torch.Tensor:
    """E_θ(y, t) of many configurations, without gradients, in chunks.

    Parameters
    ----------
    model : EnergyModel
        In its own coordinates (cast to its parameters' dtype).
    y : tensor, shape (B, *event_shape)
        Configurations in model units.
    t : float
        Diffusion time.
    batch : int
        Configurations per network pass.

    Returns
    -------
    tensor, shape (B,), float64
    """
    dtype = next(model.parameters()).dtype
    out = []
    with torch.no_grad():
        for chunk in torch.split(y, batch):
            out.append(model.energy(chunk.to(dtype), t).to(torch.float64))
    return torch.cat(out)


def rescaled(target: GaussianMixture, length_scale: float) -> GaussianMixture:
    """The mixture of y = x / length_scale for x ~ target (exact).

    Parameters
    ----------
    target : GaussianMixture
        Mixture of x.
    length_scale : float
        s in y = x / s (units of x per unit of y).

    Returns
    -------
    GaussianMixture
        Means and standard deviations divided by s, same weights (not re-standardised);
        ``target`` itself when s = 1.
    """
    if length_scale == 1.0:
        return target
    return GaussianMixture(
        target.means / length_scale, target.stds / length_scale, target.weights, name=target.name, standardise=False
    )


def mode_weights(
    model,
    target: GaussianMixture,
    t: Optional[float] = None,
    *,
    length_scale: float = 1.0,
    n_per_mode: int = 4096,
    generator: Optional[torch.Generator] = None,
    scales: Sequence[float] = (0.7, 1.0, 1.5),
) -> dict:
    """Relative mass of each mixture component under the model density at time t.

    For component k the proposal q_k is an equal mixture, over the factors c in ``scales``, of the
    exact diffused Gaussian with its standard deviation multiplied by c,
    N(α μ_k, c² (α² s_k² + σ²)) (a defensive mixture: a model mode somewhat narrower or wider
    than the exact one still gets a usable ESS; ``scales=(1,)`` is the plain exact proposal);
    the mass of the region where component k is the most responsible (at time t) is
    Z_k = E_{q_k}[exp(−E_θ(y, t)) 1{y in region k} / q_k(y)].

    Parameters
    ----------
    model : EnergyModel
        Model in its own coordinates y (``energy``, ``t_min``, optionally ``schedule``).
    target : GaussianMixture
        The exact mixture of x.
    t : float, optional
        Diffusion time (default ``model.t_min``).
    length_scale : float
        s in y = x / s.
    n_per_mode : int
        Proposal samples per component.
    generator : torch.Generator, optional
        Source of randomness (default: seeded with 0).
    scales : sequence of float
        Width factors c of the defensive proposal mixture (positive).

    Returns
    -------
    dict
        ``t``, ``weights`` (K,) estimated relative masses, ``true`` (K,) the exact masses of the
        same regions under p_t, ``ess_fraction`` (K,) of each estimate, ``max_relative_error``
        (all plain floats / lists).
    """
    from .diffusion import VPSchedule

    target = rescaled(target, length_scale)
    t = model.t_min if t is None else float(t)
    schedule = getattr(model, "schedule", None) or VPSchedule()
    g = generator or torch.Generator().manual_seed(0)
    a = float(schedule.alpha(t))
    s2 = float(schedule.sigma2(t))
    c = torch.as_tensor(list(scales), dtype=torch.float64)
    if c.numel() < 1 or not bool((c > 0).all()):
        raise ValueError(f"scales must be positive, got {scales}")
    log_z, log_true, ess = [], [], []
    for k in range(target.n_components):
        std = torch.sqrt(a**2 * target.stds[k] ** 2 + s2)  # (D,)
        which = torch.randint(0, c.numel(), (n_per_mode,), generator=g)
        z = torch.randn(n_per_mode, target.dim, generator=g, dtype=torch.float64)
        y = a * target.means[k] + c[which, None] * std * z
        r = (y - a * target.means[k]) / std  # (n, D)
        per_scale = (
            -0.5 * (r[:, None, :] / c[None, :, None]) ** 2
            - torch.log(c[None, :, None] * std)
            - 0.5 * math.log(2 * math.pi)
        ).sum(-1)  # (n, S)
        log_q = torch.logsumexp(per_scale, 1) - math.log(c.numel())
        region = target.responsibilities(y, t, schedule).argmax(1) == k
        log_w = -model_energies(model, y, t) - log_q
        log_w = torch.where(region, log_w, torch.full_like(log_w, -math.inf))
        log_z.append(torch.logsumexp(log_w, 0) - math.log(n_per_mode))
        w = torch.softmax(log_w, 0)
        ess.append(float(1.0 / (w**2).sum()) / n_per_mode)
        log_p = target.log_prob_t(y, t, schedule)
        log_true.append(
            torch.logsumexp(torch.where(region, log_p - log_q, torch.full_like(log_q, -math.inf)), 0)
            - math.log(n_per_mode)
        )
    weights = torch.softmax(torch.stack(log_z), 0)
    true = torch.softmax(torch.stack(log_true), 0)
    return {
        "t": t,
        "weights": weights.tolist(),
        "true": true.tolist(),
        "ess_fraction": ess,
        "max_relative_error": float(((weights - true).abs() / true).max()),
    }


def chain_classification_loss(
    model,
    target: GaussianMixture,
    *,
    n_levels: int = 128,
    n_chains: int = 256,
    length_scale: float = 1.0,
    generator: Optional[torch.Generator] = None,
) -> dict:
    """Cross-entropy of classifying the level of each sample of a forward noising chain.

    Exact samples x_0 are noised sequentially through ``n_levels`` levels t_1 < … < t_L
    (log-spaced between the model's t_min and 1) with the exact transition kernel; the logits of
    sample x_{t_j} are ℓ_i = −E_θ(x_{t_j}, t_i) + F(t_i), i = 1..L, and the loss is the mean
    cross-entropy with label j (chance: ln L).

    Parameters
    ----------
    model : EnergyModel
        Model in its own coordinates y (``energy``, ``log_normaliser``, ``schedule``, ``t_min``).
    target : GaussianMixture
        The exact mixture of x.
    n_levels : int
        Number of levels L.
    n_chains : int
        Number of independent chains.
    length_scale : float
        s in y = x / s.
    generator : torch.Generator, optional
        Source of randomness (default: seeded with 1).

    Returns
    -------
    dict
        ``loss``, ``chance`` (ln L), ``accuracy``, ``n_levels``.
    """
    target = rescaled(target, length_scale)
    g = generator or torch.Generator().manual_seed(1)
    schedule = model.schedule
    levels = torch.logspace(math.log10(model.t_min), 0.0, n_levels, dtype=torch.float64)
    x = target.sample(n_chains, g)
    chain = []
    prev = 0.0
    for t in levels.tolist():
        a, v = schedule.transition(prev, t) if prev > 0 else (schedule.alpha(t), schedule.sigma2(t))
        x = float(a) * x + math.sqrt(float(v)) * torch.randn(x.shape, generator=g, dtype=torch.float64)
        chain.append(x)
        prev = t
    y = torch.stack(chain, 1)  # (chains, L, D)
    flat = y.reshape(-1, target.dim)
    logits = torch.empty(n_chains, n_levels, n_levels, dtype=torch.float64)  # [chain, sample level j, class i]
    with torch.no_grad():
        for i, t in enumerate(levels.tolist()):
            f = model.log_normaliser(torch.tensor([t], dtype=next(model.parameters()).dtype)).to(torch.float64)
            logits[:, :, i] = (-model_energies(model, flat, t) + f).reshape(n_chains, n_levels)
    labels = torch.arange(n_levels).expand(n_chains, n_levels)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, n_levels), labels.reshape(-1))
    acc = (logits.argmax(-1) == labels).double().mean()
    return {"loss": float(loss), "chance": math.log(n_levels), "accuracy": float(acc), "n_levels": n_levels}


def marginal_ess(
    model,
    target: GaussianMixture,
    times: Sequence[float],
    *,
    n: int = 4096,
    length_scale: float = 1.0,
    generator: Optional[torch.Generator] = None,
) -> list[dict]:
    """ESS fraction of exact samples of p_t reweighted to the model density exp(−E_θ(·, t)).

    log w = −E_θ(y, t) − log p_t(y) for y ~ p_t; ESS fraction = (Σw)² / (n Σw²) (1 for a perfect model).

    Parameters
    ----------
    model : EnergyModel
        Model in its own coordinates y (``energy``, ``schedule``).
    target : GaussianMixture
        The exact mixture of x.
    times : sequence of float
        Diffusion times to evaluate.
    n : int
        Exact samples per time.
    length_scale : float
        s in y = x / s.
    generator : torch.Generator, optional
        Source of randomness (default: seeded with 2).

    Returns
    -------
    list of dict
        One ``{"t": float, "ess_fraction": float}`` per time.
    """
    target = rescaled(target, length_scale)
    g = generator or torch.Generator().manual_seed(2)
    schedule = model.schedule
    out = []
    for t in times:
        x0 = target.sample(n, g)
        y = schedule.alpha(t) * x0 + schedule.sigma(t) * torch.randn(x0.shape, generator=g, dtype=torch.float64)
        log_w = -model_energies(model, y, t) - target.log_prob_t(y, t, schedule)
        w = torch.softmax(log_w, 0)
        out.append({"t": float(t), "ess_fraction": float(1.0 / (w**2).sum()) / n})
    return out
