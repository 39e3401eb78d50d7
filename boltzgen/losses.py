"""Training objectives of time-dependent energy models: DSM and the Diffusive Classification loss.

All losses are plain functions ``loss(model, x0, generator, **options) -> dict``. ``model`` is an
:class:`~boltzgen.energy.EnergyModel` or any object with the same protocol:

- ``schedule`` (``alpha``, ``sigma``, ``q_sample``), ``t_min``, ``event_shape``, ``mean_free``;
- ``energy(x, t) -> (B,)`` and ``energy_and_score(x, t, create_graph) -> ((B,), (B, *event))``
  for x of shape (B, *event_shape) and t of shape (B,);
- ``log_normaliser(t)`` -> F(t), elementwise on a tensor of times.

Notation. Forward process x_t = α_t x_0 + σ_t ε (ε mean-free for molecules). Score
s_θ = −∇ₓE_θ. d = 3(N − 1) for mean-free models, the number of coordinates otherwise.

**Levels.** Each x_0 of the batch is noised at k levels t_1 < … < t_k in [t_min, 1] with
independent noises, drawn by :func:`sample_levels` (``levels=``):

- ``"uniform"``: k sorted independent U[t_min, 1] draws (for k = 2 the pair (s, t));
- ``"stratified"``: one uniform draw in each of k equal strata of [t_min, 1];
- ``"grid"``: k consecutive points of a time grid, the first uniform among the possible ones
  (for k = 2, consecutive levels of the grid);
- ``"grid-stratified"``: the grid cut into k contiguous blocks, one uniform grid point per block.

For ``"uniform"`` and ``"stratified"`` every level is marginally U[t_min, 1].

The ``"log-snr"`` variants (``"log-snr"``, ``"log-snr-stratified"``, ``"log-snr-grid"``,
``"log-snr-grid-stratified"``) do the same in the log signal-to-noise ratio
λ(t) = log(α_t² / σ_t²) of the model's schedule instead of in t: draws uniform on
[λ(1), λ(t_min)], strata of equal λ-width, and an integer ``grid`` of points equally spaced in λ.
This spreads the levels evenly over the noise scales (uniform t puts ≈ 10 % of the levels below
t = 0.1 for the default VP schedule, where the data's fine structure lives), and consecutive grid
levels are then a constant factor apart in SNR.

**DSM** (:func:`dsm_loss`), per noisy sample (x_t, ε, t):

    ℓ_DSM = w(t) ‖σ_t ∇ₓE_θ(x_t, t) − ε‖² / d = w(t) ‖σ_t s_θ(x_t, t) + ε‖² / d,

the usual λ(t) = σ_t² weighting of denoising score matching (the minimiser is
s_θ = ∇ log p_t since E[ε | x_t] = −σ_t ∇ log p_t(x_t)), averaged per degree of freedom and
over all B k noisy samples; w(t) = 1 unless ``weighting`` is given. The score is taken by
autograd with ``create_graph=True``.

**DiffCLF** (:func:`diffclf_loss`). The logit of level i for a configuration y is
ℓ_i(y) = −E_θ(y, t_i) + F(t_i). For one x_0 with noisy samples y_j = x_{t_j} build the k × k
matrix L_ij = ℓ_i(y_j) (energy of sample j at level i) and classify each sample's level:

    ℓ_CLF = Σ_j −log softmax_i(L_ij)|_{i=j} = Σ_j [ −L_jj + logsumexp_i L_ij ],

summed over the k samples of one x_0 and averaged over the batch. For k = 2 with levels (s, t)
this is exactly softplus(ℓ_t(x_s) − ℓ_s(x_s)) + softplus(ℓ_s(x_t) − ℓ_t(x_t)). At the optimum
ℓ_i(y) = log p_{t_i}(y) + c(y); DSM removes c(y).

**One classified sample per x_0** (``clf_samples="one"``). The sum over j can be estimated
without bias by classifying one sample j, drawn uniformly for each x_0, with weight k:
k [ −L_jj + logsumexp_i L_ij ]. It needs only the k − 1 energies of y_j at the other levels
instead of k (k − 1): for the binary form, one energy-only evaluation per x_0 instead of two,
which cuts the extra cost of DiffCLF over DSM about in half at a somewhat larger variance of the
classification gradient. ``clf_samples="all"`` (default) is the full sum.

**Combined** (:func:`dsm_diffclf_loss`): L = L_DSM + λ_clf L_CLF over the same noisy samples.
The diagonal energies E_θ(y_j, t_j) and the scores come from ONE network pass over the B k
samples at their own levels (with ``create_graph``); the B k (k − 1) off-diagonal energies take
one more, energy-only pass. :func:`dsm_loss` with the same ``k`` and ``levels`` is the fair
DSM-only baseline: it draws the same number B k of noisy samples from the same distribution of
times, so its value is distributed exactly like the DSM part of the combined loss.

**Target score matching** (``force=`` given: the reduced forces f = −∇u of the clean samples,
in model units). For x_t = α_t x_0 + σ_t ε the target score identity

    ∇ log p_t(x_t) = E[∇ log p_0(x_0) | x_t] / α_t = E[f(x_0) | x_t] / α_t

makes σ_t f(x_0)/α_t an unbiased regression target for σ_t s(x_t, t), like DSM's −ε, and any
t-dependent mix of the two stays unbiased. The DSM term then regresses on

    T = w_t σ_t f(x_0)/α_t − (1 − w_t) ε,      w_t = α_t² / (α_t² + κ σ_t²).

For a Gaussian mode of stiffness κ (model units) T is the exact score with zero variance, so
``kappa`` is a stiffness: :func:`mean_stiffness` estimates it from the forces as ⟨‖f‖²⟩/d, which
for Boltzmann samples equals the mean curvature ⟨∇²u⟩/d. At small σ_t (w → 1) the target is the
force, whose variance vanishes as σ_t → 0, exactly where DSM's −ε/σ_t is noisiest; at large σ_t it
is DSM. When the data were not drawn from exp(−u) (hotter replicas, oversampled states) the force
term still teaches the target's score wherever the data lie, which is what the low-noise end of the
model is for; DiffCLF and the SMC weights correct the rest.

**Energy pinning** (``energy=`` and ``lambda_pin > 0``): the spread over the batch of
E_θ(x_0, t_pin) − u(x_0), i.e. mean((r − mean r)²) with r = E_θ(x_0, t_pin) − u(x_0), in kT², added
with weight ``lambda_pin``. It ties the model's low-noise energy to the force field up to one
constant. It is exact only where p_{t_pin} ≈ p_0, i.e. σ(t_pin) well below the thermal width of
the stiffest bond (docs/theory.md).

**Marginal matching** (:func:`marginal_loss`): at low noise the exact marginal of the target,
p_t(y) ∝ ∫ exp(−u(x)) N(y; a x, v) dx, is computable from the force field alone
(:func:`boltzgen.diffusion.laplace.marginal_pairs`, precomputed once on noisy copies of the
data). The term is the spread of E_θ(y, t) + log p̂_t(y) over the copies at each such t: it
extends the pin from t_pin to a band of low times, where DSM's targets are noisiest. Optionally
(``loss.marginal_score``) it also regresses the score on the same copies' exact score (the
Laplace posterior mean through Tweedie's formula), a target without DSM's one-sample noise.

**Path consistency** (:func:`path_loss`): SMC along the diffusion weighs a step from level t to
t' < t by −E(y', t') + E(y, t) + log L(y | y') − log M(y' | y), with L the forward kernel and M
the reverse kernel built from the model's score. For pairs (y', y) of noised data it is one
constant per level pair exactly when the model's energies at the two levels are one diffusion and
M is the exact reverse kernel; its variance there (the log-variance divergence) trains what the
sampler's weights need, which the marginals at each t alone do not fix.

Every function returns a dict with ``total`` (the scalar to minimise, with its graph), the parts
``dsm`` and/or ``clf`` (with graph), and detached diagnostics: ``clf_accuracy`` (fraction of
noisy samples whose level has the largest logit), ``n_dsm`` and ``n_energy`` (numbers of score
and energy evaluations, ints).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch

from .diffusion.kernels import reverse_kernel
from .diffusion.noise import event_dim, gaussian_log_prob, project_mean_free, sample_noise, sq_norm
from .evaluate import model_energies

__all__ = [
    "LOSSES",
    "LEVEL_MODES",
    "CLF_SAMPLES",
    "sample_levels",
    "noise_at_levels",
    "dsm_loss",
    "diffclf_loss",
    "dsm_diffclf_loss",
    "compute_loss",
    "target_score_weight",
    "score_target",
    "mean_stiffness",
    "calibrate_log_normaliser",
    "marginal_loss",
    "path_loss",
]

#: Names accepted by :func:`compute_loss` (and ``boltzgen train --loss``).
LOSSES = ("dsm", "diffclf", "dsm+diffclf")
#: Level-sampling modes of :func:`sample_levels`.
#: Which noisy samples of each x_0 DiffCLF classifies (see the module docstring).
CLF_SAMPLES = ("all", "one")
LEVEL_MODES = (
    "uniform",
    "stratified",
    "grid",
    "grid-stratified",
    "log-snr",
    "log-snr-stratified",
    "log-snr-grid",
    "log-snr-grid-stratified",
)

Grid = Union[int, torch.Tensor]


def _grid_times(grid: Grid, t_min: float, dtype, device) -> torch.Tensor:
    if isinstance(grid, torch.Tensor):
        g = grid.to(dtype=dtype, device=device).reshape(-1)
        if g.numel() > 1 and not bool((g[1:] > g[:-1]).all()):
            raise ValueError("the time grid must be strictly increasing")
        return g
    return torch.linspace(t_min, 1.0, int(grid), dtype=dtype, device=device)


def sample_levels(
    batch: int,
    k: int,
    t_min: float,
    generator: Optional[torch.Generator] = None,
    *,
    levels: str = "uniform",
    grid: Grid = 64,
    dtype: Optional[torch.dtype] = None,
    device=None,
    schedule=None,
) -> torch.Tensor:
    """Draw k sorted diffusion levels for each member of a batch.

    Parameters
    ----------
    batch : int
        Number B of clean samples.
    k : int
        Number of levels per sample (k ≥ 1).
    t_min : float
        Smallest time; levels lie in [t_min, 1].
    generator : torch.Generator, optional
    levels : one of :data:`LEVEL_MODES`
        See the module docstring.
    grid : int or 1-D tensor
        The time grid of the grid modes: a number of points on [t_min, 1] (default 64; uniform
        in t, or in log-SNR for the ``"log-snr-grid"`` modes) or the increasing grid times
        themselves.
    dtype, device
        Of the result (default: the dtype of a tensor ``grid`` in the grid modes, else the
        default dtype).
    schedule : Schedule, optional
        Defines λ(t) for the ``"log-snr"`` modes (default: :class:`~boltzgen.diffusion.VPSchedule`).

    Returns
    -------
    tensor, shape (B, k), non-decreasing along axis 1
    """
    if k < 1:
        raise ValueError(f"need k >= 1 levels, got {k}")
    if levels not in LEVEL_MODES:
        raise ValueError(f"levels must be one of {LEVEL_MODES}, got {levels!r}")
    if dtype is None:
        dtype = grid.dtype if isinstance(grid, torch.Tensor) and "grid" in levels else torch.get_default_dtype()
    log_snr = levels.startswith("log-snr")
    base = levels[len("log-snr-") :] if levels.startswith("log-snr-") else ("uniform" if log_snr else levels)
    to_time = _log_snr_map(schedule, t_min) if log_snr else (lambda u: t_min + (1.0 - t_min) * u)
    if base in ("uniform", "stratified"):
        u = torch.rand(batch, k, generator=generator, dtype=dtype, device=device)
        if base == "uniform":
            u = u.sort(dim=1).values
        else:
            u = (torch.arange(k, dtype=dtype, device=device) + u) / k
        return to_time(u)
    if isinstance(grid, torch.Tensor) or not log_snr:
        g = _grid_times(grid, t_min, dtype, device)
    else:
        g = to_time(torch.linspace(0.0, 1.0, int(grid), dtype=dtype, device=device))
    n = g.numel()
    if n < k:
        raise ValueError(f"a grid of {n} times cannot hold {k} distinct levels")
    if base == "grid":
        start = torch.randint(0, n - k + 1, (batch, 1), generator=generator, device=device)
        idx = start + torch.arange(k, device=device)
    else:
        bounds = torch.div(torch.arange(k + 1, device=device) * n, k, rounding_mode="floor")
        width = (bounds[1:] - bounds[:-1]).to(dtype)
        u = torch.rand(batch, k, generator=generator, dtype=dtype, device=device)
        idx = bounds[:-1] + torch.minimum((u * width).floor(), width - 1).long()
    return g[idx]


def _log_snr(schedule, t: torch.Tensor) -> torch.Tensor:
    return 2.0 * schedule.log_alpha(t) - torch.log(schedule.sigma2(t))


def _log_snr_map(schedule, t_min: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """u ∈ [0, 1] -> the time t ∈ [t_min, 1] with λ(t) = λ(t_min) + u (λ(1) − λ(t_min))."""
    if schedule is None:
        from .diffusion import VPSchedule

        schedule = VPSchedule()
    lo_t = torch.tensor(float(t_min), dtype=torch.float64)
    lam_hi, lam_lo = float(_log_snr(schedule, lo_t)), float(_log_snr(schedule, torch.tensor(1.0, dtype=torch.float64)))

    def to_time(u: torch.Tensor) -> torch.Tensor:
        target = lam_hi + u.to(torch.float64) * (lam_lo - lam_hi)
        lo = torch.full_like(target, float(t_min))
        hi = torch.ones_like(target)
        for _ in range(60):  # λ decreases in t: bisection to float64 precision
            mid = 0.5 * (lo + hi)
            above = _log_snr(schedule, mid) > target
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        t = 0.5 * (lo + hi)
        t = torch.where(u <= 0, torch.full_like(t, float(t_min)), torch.where(u >= 1, torch.ones_like(t), t))
        return t.to(u.dtype)

    return to_time


def noise_at_levels(
    model,
    x0: torch.Tensor,
    t: torch.Tensor,
    generator: Optional[torch.Generator] = None,
    noise: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise each clean sample at its k levels: x_{b,j} = α(t_bj) x0_b + σ(t_bj) ε_bj.

    Parameters
    ----------
    model : energy model (uses ``schedule``, ``mean_free``)
    x0 : tensor, shape (B, *event_shape)
    t : tensor, shape (B, k)
    generator : torch.Generator, optional
    noise : tensor, shape (B, k, *event_shape), optional
        Given noise ε (used as is); drawn (mean-free for mean-free models) when absent.

    Returns
    -------
    x_t, eps : tensors, shape (B k, *event_shape), row b k + j for level j of sample b
    """
    b, k = t.shape
    event = tuple(x0.shape[1:])
    x0_rep = x0.unsqueeze(1).expand((b, k) + event).reshape((b * k,) + event)
    if noise is None:
        noise = sample_noise((b * k,) + event, generator, model.mean_free, dtype=x0.dtype, device=x0.device)
    else:
        noise = noise.to(x0).reshape((b * k,) + event)
    return model.schedule.q_sample(x0_rep, t.reshape(b * k), noise=noise)


def _levels(model, x0, generator, k, levels, grid, t) -> torch.Tensor:
    if t is None:
        return sample_levels(
            x0.shape[0],
            k,
            model.t_min,
            generator,
            levels=levels,
            grid=grid,
            dtype=x0.dtype,
            device=x0.device,
            schedule=getattr(model, "schedule", None),
        )
    t = torch.as_tensor(t, dtype=x0.dtype, device=x0.device)
    return t.reshape(x0.shape[0], -1)


def target_score_weight(schedule, t: torch.Tensor, kappa: float) -> torch.Tensor:
    """Weight w_t = α_t² / (α_t² + κ σ_t²) of the force term in the target-score DSM mix.

    Parameters
    ----------
    schedule : Schedule
        The model's noise schedule.
    t : tensor, shape (M,)
        Diffusion times.
    kappa : float
        Stiffness (model units, 1/length²) at which the mix has zero variance; > 0.

    Returns
    -------
    tensor, shape (M,), in (0, 1]
    """
    if not kappa > 0:
        raise ValueError(f"kappa must be > 0, got {kappa}")
    a2 = schedule.alpha(t) ** 2
    return a2 / (a2 + float(kappa) * schedule.sigma(t) ** 2)


def score_target(model, t: torch.Tensor, eps: torch.Tensor, force=None, kappa=None) -> torch.Tensor:
    """The regression target T of σ_t s_θ(x_t, t): −ε, or the target-score mix with forces.

    Parameters
    ----------
    model : energy model (uses ``schedule``, ``mean_free``)
    t : tensor, shape (M,)
        Times of the noisy samples.
    eps : tensor, shape (M, *event_shape)
        Their noise ε.
    force : tensor, shape of ``eps``, optional
        Reduced forces of their clean samples (model units).
    kappa : float, optional
        Stiffness of the mix (with ``force``).

    Returns
    -------
    tensor, shape of ``eps``
        T = w σ f/α − (1 − w) ε (see the module docstring), or −ε without forces.
    """
    if force is None:
        return -eps
    shape = (-1,) + (1,) * (eps.dim() - 1)
    f = project_mean_free(force.to(eps)) if model.mean_free else force.to(eps)
    sigma, alpha = model.schedule.sigma(t).reshape(shape), model.schedule.alpha(t).reshape(shape)
    w = target_score_weight(model.schedule, t, kappa).reshape(shape)
    return w * sigma * f / alpha - (1.0 - w) * eps


def mean_stiffness(force: torch.Tensor, mean_free: bool) -> float:
    """κ = ⟨‖f‖²⟩ / d, the mean stiffness of the data (model units, 1/length²).

    For Boltzmann samples of u, ⟨‖∇u‖²⟩ = ⟨∇²u⟩ (integration by parts), so this is the average
    curvature per degree of freedom: for a Gaussian with per-coordinate stiffness k it is k.

    Parameters
    ----------
    force : tensor, shape (B, *event_shape)
        Reduced forces −∇u of the samples in model units.
    mean_free : bool
        Molecular (mean-free) configurations: d = 3(N − 1).

    Returns
    -------
    float
    """
    event = tuple(force.shape[1:])
    f = project_mean_free(force) if mean_free else force
    value = float(sq_norm(f.to(torch.float64), len(event)).mean()) / event_dim(event, mean_free)
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"the forces give no usable stiffness (mean squared force per coordinate {value})")
    return value


def weighted_mean(values: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Σ w_b v_b / Σ w_b over the first axis (the plain mean without weights).

    Parameters
    ----------
    values : tensor, shape (B,)
    weight : tensor, shape (B,), optional
        Non-negative weights, not all zero.

    Returns
    -------
    tensor, scalar (with the graph of ``values``)
    """
    if weight is None:
        return values.mean()
    weight = weight.to(values)
    return (weight * values).sum() / weight.sum()


def _pin(model, x0, energy, lambda_pin, t_pin, out, weight=None) -> torch.Tensor:
    """Weighted spread of E_θ(x0, t_pin) − u(x0) over the batch (kT²)."""
    t = torch.full((x0.shape[0],), float(model.t_min if t_pin is None else t_pin), dtype=x0.dtype, device=x0.device)
    r = model.energy(x0, t) - energy.to(x0)
    r = r - weighted_mean(r, weight)
    out["pin"] = weighted_mean(r**2, weight)
    return lambda_pin * out["pin"]


def _objective(
    model,
    x0: torch.Tensor,
    generator,
    *,
    k: int,
    levels: str,
    grid: Grid,
    t,
    noise,
    use_dsm: bool,
    use_clf: bool,
    lambda_clf: float,
    weighting,
    clf_samples: str = "all",
    force: Optional[torch.Tensor] = None,
    kappa: Optional[float] = None,
    energy: Optional[torch.Tensor] = None,
    lambda_pin: float = 0.0,
    t_pin: Optional[float] = None,
    sample_weight: Optional[torch.Tensor] = None,
) -> dict:
    """The one implementation behind every loss: noise at k levels, then the DSM (or target-score)
    term, the CLF term and the energy pin, each a (weighted) mean over the clean samples."""
    t = _levels(model, x0, generator, k, levels, grid, t)
    b, k = t.shape
    if sample_weight is not None:
        sample_weight = torch.as_tensor(sample_weight).to(x0)
        if sample_weight.shape != (b,) or not torch.isfinite(sample_weight).all() or (sample_weight < 0).any():
            raise ValueError(
                f"sample_weight must hold {b} finite non-negative weights, got shape {tuple(sample_weight.shape)}"
            )
        if float(sample_weight.sum()) <= 0:
            raise ValueError("sample_weight must not be all zero")
    if use_clf and k < 2:
        raise ValueError(f"DiffCLF needs k >= 2 levels, got {k}")
    if force is not None and (kappa is None or tuple(force.shape) != tuple(x0.shape)):
        raise ValueError(f"target score matching needs kappa and forces of shape {tuple(x0.shape)}")
    if lambda_pin > 0 and (energy is None or energy.shape != (x0.shape[0],)):
        raise ValueError(f"energy pinning needs reduced energies of shape ({x0.shape[0]},)")
    event = tuple(x0.shape[1:])
    n_ev = len(event)
    x_t, eps = noise_at_levels(model, x0, t, generator, noise)
    t_flat = t.reshape(b * k)
    out: dict = {}
    total = x0.new_zeros(())
    n_energy = 0

    if use_dsm:
        # One pass over the B k noisy samples at their own levels gives the diagonal energies and
        # (with create_graph) the scores.
        e_diag, score = model.energy_and_score(x_t, t_flat, create_graph=True)
        sigma = model.schedule.sigma(t_flat).reshape((-1,) + (1,) * n_ev)
        f = None if force is None else force.unsqueeze(1).expand((b, k) + event).reshape((b * k,) + event)
        target = score_target(model, t_flat, eps, f, kappa)
        per_sample = sq_norm(sigma * score - target, n_ev) / event_dim(model.event_shape, model.mean_free)
        if weighting is not None:
            per_sample = weighting(t_flat) * per_sample
        out["dsm"] = weighted_mean(per_sample.reshape(b, k).mean(dim=1), sample_weight)
        total = total + out["dsm"]
        n_energy += b * k

    if use_clf and clf_samples == "one":
        # Classify one noisy sample y_j per x_0 (j uniform), weight k: unbiased for the sum over j.
        rows = torch.arange(b, device=x0.device)
        j = torch.randint(0, k, (b,), generator=generator).to(x0.device)
        levels_i = (j[:, None] + torch.arange(k, device=x0.device)) % k  # (B, k), column 0 is j
        first = 1 if use_dsm else 0  # E(y_j, t_j) from the DSM pass
        y_j = x_t.reshape((b, k) + event)[rows, j]
        x_rows = y_j.unsqueeze(1).expand((b, k - first) + event).reshape((-1,) + event)
        e_rest = model.energy(x_rows, t[rows[:, None], levels_i[:, first:]].reshape(-1)).reshape(b, k - first)
        n_energy += e_rest.numel()
        energies = torch.cat([e_diag.reshape(b, k)[rows, j][:, None], e_rest], 1) if use_dsm else e_rest
        logits = -energies + model.log_normaliser(t[rows[:, None], levels_i])  # (B, k), true class 0
        out["clf"] = k * weighted_mean(torch.logsumexp(logits, dim=1) - logits[:, 0], sample_weight)
        out["clf_accuracy"] = (logits.detach().argmax(dim=1) == 0).to(x0.dtype).mean()
        total = total + lambda_clf * out["clf"]
    elif use_clf:
        diag = torch.arange(k, device=x0.device)
        rows_i, cols_j = torch.meshgrid(diag, diag, indexing="ij")
        rows_i, cols_j = rows_i.reshape(-1), cols_j.reshape(-1)  # pair p = i k + j
        if use_dsm:
            pick = rows_i != cols_j  # only off-diagonal pairs
        else:
            pick = torch.ones_like(rows_i, dtype=torch.bool)  # every pair, one pass
        i_idx, j_idx = rows_i[pick], cols_j[pick]
        x_rows = x_t.reshape((b, k) + event)[:, j_idx].reshape((-1,) + event)
        e_pick = model.energy(x_rows, t[:, i_idx].reshape(-1)).reshape(b, -1)
        n_energy += e_pick.numel()
        if use_dsm:
            # Assemble the k×k energies: diagonal from the DSM pass, the rest from e_pick.
            order = torch.empty(k * k, dtype=torch.long, device=x0.device)
            order[rows_i == cols_j] = torch.arange(k, device=x0.device)
            order[pick] = k + torch.arange(int(pick.sum()), device=x0.device)
            energies = torch.cat([e_diag.reshape(b, k), e_pick], dim=1)[:, order]
        else:
            energies = e_pick
        logits = -energies.reshape(b, k, k) + model.log_normaliser(t).reshape(b, k, 1)  # L[b, i, j]
        log_post = torch.log_softmax(logits, dim=1)
        out["clf"] = -weighted_mean(torch.diagonal(log_post, dim1=1, dim2=2).sum(dim=1), sample_weight)
        out["clf_accuracy"] = (logits.detach().argmax(dim=1) == diag).to(x0.dtype).mean()
        total = total + lambda_clf * out["clf"]

    if energy is not None and lambda_pin > 0:
        total = total + _pin(model, x0, energy, lambda_pin, t_pin, out, sample_weight)
        n_energy += b

    out["total"] = total
    out["n_dsm"] = b * k if use_dsm else 0
    out["n_energy"] = n_energy
    return out


def dsm_loss(
    model,
    x0: torch.Tensor,
    generator: Optional[torch.Generator] = None,
    *,
    k: int = 1,
    levels: str = "uniform",
    grid: Grid = 64,
    t: Optional[torch.Tensor] = None,
    noise: Optional[torch.Tensor] = None,
    weighting: Optional[Callable] = None,
    force: Optional[torch.Tensor] = None,
    kappa: Optional[float] = None,
    energy: Optional[torch.Tensor] = None,
    lambda_pin: float = 0.0,
    t_pin: Optional[float] = None,
    sample_weight: Optional[torch.Tensor] = None,
) -> dict:
    """Denoising score matching, ‖σ_t ∇ₓE_θ(x_t, t) − ε‖² / d averaged over B k noisy samples.

    Parameters
    ----------
    model : energy model (see the module docstring)
    x0 : tensor, shape (B, *event_shape)
        Clean data (centred, for molecules).
    generator : torch.Generator, optional
    k : int
        Noisy copies per x_0 (default 1: t ~ U[t_min, 1]). With the ``k`` and ``levels`` of a
        ``dsm+diffclf`` run this is its fair DSM-only baseline (same number and distribution of
        DSM evaluations).
    levels, grid
        Level sampling (:func:`sample_levels`).
    t : tensor, shape (B, k) or (B,), optional
        Explicit times instead of sampled ones.
    noise : tensor, shape (B, k, *event_shape), optional
        Explicit noise ε.
    weighting : callable, optional
        Extra weight w(t) per noisy sample (t of shape (B k,)); default 1.
    force : tensor, shape (B, *event_shape), optional
        Reduced forces −∇u of ``x0`` in model units: the DSM term regresses on the target-score
        mix (see the module docstring) instead of −ε.
    kappa : float, optional
        Stiffness of the mix (needed with ``force``; :func:`mean_stiffness`).
    energy : tensor, shape (B,), optional
        Reduced energies u of ``x0`` (kT), for the energy pin.
    lambda_pin : float
        Weight of the energy pin (0: off).
    t_pin : float, optional
        Time of the energy pin (default: the model's ``t_min``).
    sample_weight : tensor, shape (B,), optional
        Weight of each clean sample in every average of the objective (default: equal), for
        data drawn from another distribution than the one to learn (:func:`weighted_mean`).

    Returns
    -------
    dict with ``total`` = ``dsm`` (scalar tensors with graph), ``n_dsm``, ``n_energy``
    """
    return _objective(
        model,
        x0,
        generator,
        k=k,
        levels=levels,
        grid=grid,
        t=t,
        noise=noise,
        use_dsm=True,
        use_clf=False,
        lambda_clf=0.0,
        weighting=weighting,
        force=force,
        kappa=kappa,
        energy=energy,
        lambda_pin=float(lambda_pin),
        t_pin=t_pin,
        sample_weight=sample_weight,
    )


def diffclf_loss(
    model,
    x0: torch.Tensor,
    generator: Optional[torch.Generator] = None,
    *,
    k: int = 2,
    levels: str = "uniform",
    grid: Grid = 64,
    t: Optional[torch.Tensor] = None,
    noise: Optional[torch.Tensor] = None,
    clf_samples: str = "all",
    energy: Optional[torch.Tensor] = None,
    lambda_pin: float = 0.0,
    t_pin: Optional[float] = None,
    sample_weight: Optional[torch.Tensor] = None,
) -> dict:
    """Diffusive classification loss alone (binary for k = 2, multi-level for k > 2).

    ℓ_CLF = Σ_j −log softmax_i(L_ij)|_{i=j}, L_ij = −E_θ(x_{t_j}, t_i) + F(t_i), averaged over
    the batch; all B k² energies in one network pass, no score.

    Parameters
    ----------
    model, x0, generator
        As in :func:`dsm_loss`.
    k : int
        Number of levels per x_0 (≥ 2; default 2, the binary form).
    levels, grid, t, noise
        As in :func:`dsm_loss`; ``t`` of shape (B, k) (sorted or not: classes are the columns).
    clf_samples : {"all", "one"}
        Classify all k noisy samples of each x_0, or one drawn uniformly with weight k (an
        unbiased estimate with k − 1 energy evaluations per x_0; see the module docstring).
    energy, lambda_pin, t_pin, sample_weight : optional
        The energy pin and the samples' weights, as in :func:`dsm_loss`.

    Returns
    -------
    dict with ``total`` = ``clf`` (with graph), ``clf_accuracy``, ``n_dsm`` (0), ``n_energy``
    """
    return _objective(
        model,
        x0,
        generator,
        k=k,
        levels=levels,
        grid=grid,
        t=t,
        noise=noise,
        use_dsm=False,
        use_clf=True,
        lambda_clf=1.0,
        weighting=None,
        clf_samples=_check_clf_samples(clf_samples),
        energy=energy,
        lambda_pin=float(lambda_pin),
        t_pin=t_pin,
        sample_weight=sample_weight,
    )


def _check_clf_samples(clf_samples: str) -> str:
    if clf_samples not in CLF_SAMPLES:
        raise ValueError(f"clf_samples must be one of {CLF_SAMPLES}, got {clf_samples!r}")
    return clf_samples


def dsm_diffclf_loss(
    model,
    x0: torch.Tensor,
    generator: Optional[torch.Generator] = None,
    *,
    k: int = 2,
    lambda_clf: float = 1.0,
    levels: str = "uniform",
    grid: Grid = 64,
    t: Optional[torch.Tensor] = None,
    noise: Optional[torch.Tensor] = None,
    weighting: Optional[Callable] = None,
    clf_samples: str = "all",
    force: Optional[torch.Tensor] = None,
    kappa: Optional[float] = None,
    energy: Optional[torch.Tensor] = None,
    lambda_pin: float = 0.0,
    t_pin: Optional[float] = None,
    sample_weight: Optional[torch.Tensor] = None,
) -> dict:
    """L = L_DSM + λ_clf L_CLF on the same B k noisy samples.

    The diagonal energies and the scores come from one network pass with ``create_graph``; the
    off-diagonal energies from one energy-only pass (B k (k − 1) evaluations; B (k − 1) with
    ``clf_samples="one"``).

    Parameters
    ----------
    model, x0, generator, k, levels, grid, t, noise, weighting, clf_samples
        As in :func:`dsm_loss` and :func:`diffclf_loss`.
    lambda_clf : float
        Weight of the classification term (default 1).
    force, kappa, energy, lambda_pin, t_pin, sample_weight : optional
        Target score matching, the energy pin and the samples' weights, as in :func:`dsm_loss`.

    Returns
    -------
    dict with ``total``, ``dsm``, ``clf`` (with graph), ``clf_accuracy``, ``n_dsm``, ``n_energy``
    """
    return _objective(
        model,
        x0,
        generator,
        k=k,
        levels=levels,
        grid=grid,
        t=t,
        noise=noise,
        use_dsm=True,
        use_clf=True,
        lambda_clf=float(lambda_clf),
        weighting=weighting,
        clf_samples=_check_clf_samples(clf_samples),
        force=force,
        kappa=kappa,
        energy=energy,
        lambda_pin=float(lambda_pin),
        t_pin=t_pin,
        sample_weight=sample_weight,
    )


def compute_loss(
    model,
    x0: torch.Tensor,
    generator: Optional[torch.Generator] = None,
    *,
    loss: str = "dsm+diffclf",
    k: int = 2,
    lambda_clf: float = 1.0,
    levels: str = "uniform",
    grid: Grid = 64,
    weighting: Optional[Callable] = None,
    clf_samples: str = "all",
    force: Optional[torch.Tensor] = None,
    kappa: Optional[float] = None,
    energy: Optional[torch.Tensor] = None,
    lambda_pin: float = 0.0,
    t_pin: Optional[float] = None,
    sample_weight: Optional[torch.Tensor] = None,
) -> dict:
    """The objective named ``loss`` (one of :data:`LOSSES`), for trainers and the CLI.

    ``"dsm"`` uses k noisy copies per x_0 (the fair baseline of ``"dsm+diffclf"`` with the same
    ``k``); ``"diffclf"`` is the classification term alone; ``"dsm+diffclf"`` the combination.

    Parameters
    ----------
    model : energy model (see the module docstring)
    x0 : tensor, shape (B, *event_shape)
        Clean data in model units (standardised; centred, for molecules).
    generator : torch.Generator, optional
        Source of the levels and the noise.
    loss : {"dsm", "diffclf", "dsm+diffclf"}
        The objective.
    k : int
        Noisy copies (levels) per x_0.
    lambda_clf : float
        Weight of the classification term (``"dsm+diffclf"`` only).
    levels, grid
        Level sampling (:func:`sample_levels`).
    weighting : callable, optional
        Extra DSM weight w(t) per noisy sample (``"dsm"`` and ``"dsm+diffclf"``).
    clf_samples : {"all", "one"}
        As in :func:`diffclf_loss` (``"diffclf"`` and ``"dsm+diffclf"``).
    force, kappa : optional
        Target score matching (``"dsm"`` and ``"dsm+diffclf"``; see :func:`dsm_loss`).
    energy, lambda_pin, t_pin : optional
        The energy pin (every loss; see :func:`dsm_loss`).
    sample_weight : tensor, shape (B,), optional
        Weight of each clean sample (every loss; see :func:`dsm_loss`).

    Returns
    -------
    dict
        That of :func:`dsm_loss`, :func:`diffclf_loss` or :func:`dsm_diffclf_loss`: ``total``
        (scalar tensor with graph, dimensionless) and its parts.

    Raises
    ------
    ValueError
        For an unknown ``loss``.
    """
    pin = dict(energy=energy, lambda_pin=lambda_pin, t_pin=t_pin, sample_weight=sample_weight)
    if loss == "dsm":
        return dsm_loss(
            model, x0, generator, k=k, levels=levels, grid=grid, weighting=weighting, force=force, kappa=kappa, **pin
        )
    if loss == "diffclf":
        return diffclf_loss(model, x0, generator, k=k, levels=levels, grid=grid, clf_samples=clf_samples, **pin)
    if loss == "dsm+diffclf":
        return dsm_diffclf_loss(
            model,
            x0,
            generator,
            k=k,
            lambda_clf=lambda_clf,
            levels=levels,
            grid=grid,
            weighting=weighting,
            clf_samples=clf_samples,
            force=force,
            kappa=kappa,
            **pin,
        )
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


#: Configurations per network evaluation in :func:`calibrate_log_normaliser`: its activations
#: grow with the chunk times the atoms squared, and a whole batch of a tetra-alanine in one
#: evaluation took several GB in each training process.
CALIBRATION_CHUNK = 32


@torch.no_grad()
def calibrate_log_normaliser(model, x0: torch.Tensor, generator: Optional[torch.Generator] = None) -> Optional[float]:
    """Set the learned residual f_φ of F(t) = −log Z_t to the current energies' own normalisers.

    DiffCLF's logits are −E_θ(x, t_i) + F(t_i). Before its first step F is the Gaussian term's
    normaliser plus f_φ = 0, which can be hundreds of kT away from −log ∫ exp(−E_θ(x, t)) dx
    (a force-field prior, a DSM pre-training): the first classification loss is then in the
    hundreds, and the clipped gradient steps spend many steps dragging the network, not F, until F
    has caught up. This sets F on the grid of a ``grid`` normaliser by free-energy perturbation
    between neighbouring levels, F(t_{g+1}) − F(t_g) = −log⟨exp(−ΔE)⟩ with ΔE = E(x, t_{g+1}) −
    E(x, t_g), averaged over the forward estimate on x ~ p_{t_g} and the backward one on
    x ~ p_{t_{g+1}} (``x0`` noised to each level), and anchors F at t = 1, where the model is its
    Gaussian term, to that term's normaliser. The classification loss is invariant to a constant
    in F, so only the differences matter to it.

    Parameters
    ----------
    model : EnergyModel
        With a ``grid`` log-normaliser (other kinds are left as they are).
    x0 : tensor, shape (B, *event_shape)
        Clean training samples (model units).
    generator : torch.Generator, optional
        For the noise.

    Returns
    -------
    float or None
        Largest change of F over the grid (kT), or None when nothing was calibrated.
    """
    normaliser = model.normaliser
    if normaliser.kind != "grid":
        return None
    dtype = normaliser.values.dtype
    times = normaliser.grid.to(dtype)
    energies = []  # E(x ~ p_g, t) at t = t_{g-1}, t_g, t_{g+1}
    for g, t in enumerate(times):
        noise = sample_noise(x0.shape, generator, model.mean_free, dtype=x0.dtype, device=x0.device)
        at = torch.full((x0.shape[0],), float(t), dtype=x0.dtype, device=x0.device)
        xt, _ = model.schedule.q_sample(x0, at, noise=noise)
        near = {
            h: model_energies(model, xt, float(times[h]), batch=CALIBRATION_CHUNK)
            for h in (g - 1, g, g + 1)
            if 0 <= h < len(times)
        }
        energies.append(near)
    log_b = torch.tensor(float(x0.shape[0]), dtype=torch.float64).log()
    steps = []
    for g in range(len(times) - 1):
        forward = -(torch.logsumexp(-(energies[g][g + 1] - energies[g][g]), 0) - log_b)
        backward = torch.logsumexp(-(energies[g + 1][g] - energies[g + 1][g + 1]), 0) - log_b
        steps.append(0.5 * (forward + backward))
    steps = torch.stack(steps).to(normaliser.values.device)
    target = torch.cat([steps.new_zeros(1), torch.cumsum(steps, 0)])
    gaussian = model.log_normaliser(times.to(torch.float64)) - normaliser(times.to(torch.float64))
    target = target - target[-1] + gaussian[-1]  # anchored at t = 1
    residual = (target - gaussian).to(dtype)
    change = float((residual - normaliser.values.detach()).abs().max())
    normaliser.values.copy_(residual)
    return change


def marginal_loss(
    model, y: torch.Tensor, t: torch.Tensor, log_p: torch.Tensor, score: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Spread of E_θ(y, t) + log p_t(y) within each time level (kT²), plus the score's error.

    Parameters
    ----------
    model : energy model
        Has ``energy(y, t)``, and with ``score`` ``energy_and_score(y, t, create_graph)`` and
        ``schedule``.
    y : tensor, shape (L, m, *event_shape)
        m noisy configurations at each of L times (model units), m ≥ 2.
    t : tensor, shape (L,)
        The times.
    log_p : tensor, shape (L, m)
        log of the target's exact marginal density at y, up to a constant per level
        (:func:`boltzgen.diffusion.laplace.marginal_pairs`).
    score : tensor, shape (L, m, *event_shape), optional
        ∇ log p_t(y) of the target at the same copies. Then the result adds
        ‖σ_t (s_θ(y, t) − ∇ log p_t(y))‖² / d, on the scale of the DSM term (where σ_t ∇ log p_t is
        −ε on average) but without noise in its target; the energies and scores come from one pass.

    Returns
    -------
    tensor, scalar, with graph
        mean over levels and copies of (r − mean_level r)², r = E_θ(y, t) + log p [+ the score term].
    """
    n_levels, m = log_p.shape
    if m < 2:
        raise ValueError(f"marginal matching needs at least 2 configurations per level, got {m}")
    event = tuple(y.shape[2:])
    flat = y.reshape((n_levels * m,) + event)
    tt = t.to(flat.dtype).repeat_interleave(m)
    if score is None:
        energy = model.energy(flat, tt)
    else:
        energy, model_score = model.energy_and_score(flat, tt, create_graph=True)
    r = energy.reshape(n_levels, m) + log_p.to(flat.dtype)
    loss = (r - r.mean(dim=1, keepdim=True)).pow(2).mean()
    if score is not None:
        sigma = model.schedule.sigma(tt).to(flat.dtype).reshape((-1,) + (1,) * len(event))
        resid = sigma * (model_score - score.reshape(flat.shape).to(flat.dtype))
        loss = loss + resid.pow(2).flatten(1).mean(1).mean()
    return loss


def path_loss(
    model,
    x0: torch.Tensor,
    times: torch.Tensor,
    generator: Optional[torch.Generator] = None,
    n_pairs: int = 4,
    sample_weight: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Variance of SMC's log-weight of one reverse step, within each level pair, on noised data.

    For each of ``n_pairs`` neighbouring levels t' < t of ``times`` (drawn at random) and a share of
    the batch: y' = α_{t'} x0 + σ_{t'} ε, y = a y' + √v ε₂ with (a, v) the forward kernel from t'
    to t, and log w = −E(y', t') + E(y, t) + log L(y | y') − log M(y' | y), M the ``ddpm`` reverse
    kernel of :func:`boltzgen.diffusion.kernels.reverse_kernel` with the model's score at y (kept in
    the graph). Zero for the exact model with an exact kernel.

    Parameters
    ----------
    model : energy model
        ``energy``, ``energy_and_score(y, t, create_graph)``, ``schedule``, ``mean_free``
        (``sigma_data`` if it has one).
    x0 : tensor, shape (B, *event_shape)
        Clean data (model units), B ≥ 2 ``n_pairs``.
    times : tensor, shape (L + 1,)
        Decreasing levels, as the sampler's grid (:func:`boltzgen.diffusion.kernels.time_grid`).
    generator : torch.Generator, optional
    n_pairs : int
        Level pairs per call.
    sample_weight : tensor, shape (B,), optional
        Weight of each clean sample in the variances (default: equal; :func:`weighted_mean`).

    Returns
    -------
    tensor, scalar, with graph
        Mean over the pairs of the (weighted) variance of log w (nats²).
    """
    n_pairs = max(1, min(int(n_pairs), times.numel() - 1, x0.shape[0] // 2))
    mf = bool(getattr(model, "mean_free", False))
    schedule = model.schedule
    pick = torch.randperm(times.numel() - 1, generator=generator)[:n_pairs]
    losses = []
    weights = [None] * n_pairs if sample_weight is None else torch.chunk(torch.as_tensor(sample_weight).to(x0), n_pairs)
    for chunk, w, i in zip(torch.chunk(x0, n_pairs), weights, pick.tolist()):
        t, t_next = float(times[i]), float(times[i + 1])
        alpha, sigma = float(schedule.alpha(t_next)), float(schedule.sigma(t_next))
        noise = sample_noise(chunk.shape, generator, mf, dtype=chunk.dtype, device=chunk.device)
        y_next = alpha * chunk + sigma * noise
        a, v = (float(z) for z in schedule.transition(t_next, t))
        noise = sample_noise(chunk.shape, generator, mf, dtype=chunk.dtype, device=chunk.device)
        y = a * y_next + math.sqrt(v) * noise
        e, score = model.energy_and_score(y, t, create_graph=True)
        mean, var = reverse_kernel(schedule, y, score, t, t_next, "ddpm", getattr(model, "sigma_data", 1.0))
        log_w = (
            -model.energy(y_next, t_next)
            + e
            + gaussian_log_prob(y, a * y_next, v, mean_free=mf)
            - gaussian_log_prob(y_next, mean, var, mean_free=mf)
        )
        if w is None:
            losses.append(log_w.var())
        else:
            losses.append(weighted_mean((log_w - weighted_mean(log_w, w)) ** 2, w))
    return torch.stack(losses).mean()
