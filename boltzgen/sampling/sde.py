"""Reverse-diffusion samplers: the reverse SDE (Euler–Maruyama or the exact-Gaussian DDPM step)
and the probability-flow ODE (Euler or Heun, optionally with the log-density by the divergence).

Samplers are plain functions of a *model* and a ``torch.Generator`` (the k-diffusion style). A
model is anything with

- ``energy(y, t)`` -> (B,) and, optionally, ``energy_and_score(y, t)`` / ``score(y, t)`` (else the
  score −∇E is taken by autograd of ``energy``);
- ``schedule`` (a :class:`~boltzgen.diffusion.Schedule`), ``event_shape``;
- optionally ``t_min`` (default 1e-3), ``mean_free`` (default False), ``sigma_data`` (default 1,
  the per-coordinate scale of the data, which sets the prior variance at t = 1).

:class:`~boltzgen.energy.EnergyModel` is such a model, and so is
:class:`~boltzgen.sampling.smc.ExactMarginalModel` (exact energies −log p_t of a Gaussian mixture).
A :class:`~boltzgen.model.TrainedModel` (an ``inner`` EnergyModel on y = x / length_scale) is
unwrapped: the diffusion runs in y, and the samples are returned as x = length_scale · y in the
target's own units.

Diffusion (see :mod:`boltzgen.diffusion.schedules`): y_t = α_t y_0 + σ_t ε, forward SDE
dy = f(t) y dt + g(t) dW. Its time reversal, run from t = 1 down to t_min, is

    dy = [f(t) y − g(t)² s(y, t)] dt + g(t) dW̄,      s = ∇ log p_t ≈ −∇E(y, t),

and the probability-flow ODE is dy/dt = f(t) y − ½ g(t)² s(y, t). One reverse step from t to
t' < t is a Gaussian kernel N(mean, var · I) (mean-free Gaussian for molecules); see
:func:`reverse_kernel`:

- ``"ddpm"`` (ancestral sampling with the exact transition kernel y_t = a y_{t'} + √v ε): mean
  (y + v s)/a, which is DDPM's posterior mean at the Tweedie estimate ŷ_0 = (y + σ_t² s)/α_t and
  the exact E[y_{t'} | y_t] for the exact score, and variance v c_{t'}²/c_t² with
  c_t² = α_t² σ_data² + σ_t², the exact reverse kernel when the data are N(0, σ_data² I);
- ``"euler"`` (Euler–Maruyama, Δ = t − t'): mean y − Δ (f y − g² s), variance g² Δ.

Time grids (:func:`time_grid`) decrease from 1 to t_min: ``"uniform"``, ``"quadratic"``
(t = t_min + (1 − t_min) u², u uniform: denser at small t, where the marginals change fastest) or
``"log"`` (geometric).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..diffusion.kernels import SDE_METHODS, TIME_SPACINGS, reverse_kernel, time_grid
from ..diffusion.noise import event_dim, gaussian_log_prob, project_mean_free, sample_noise
from .mcmc import DEFAULT_TARGET_ACCEPTANCE, StepSize, adapted_moves, energy_and_grad, mala_step

__all__ = [
    "TIME_SPACINGS",
    "SDE_METHODS",
    "ODE_METHODS",
    "CPU_EVAL_PAIRS",
    "CPU_EVAL_CHUNK",
    "cpu_eval_chunk",
    "model_graph_kind",
    "time_grid",
    "unwrap_model",
    "model_dtype",
    "model_device",
    "model_t_min",
    "model_mean_free",
    "model_sigma_data",
    "model_event_shape",
    "prior_variance",
    "sample_prior",
    "prior_log_prob",
    "model_energy_and_score",
    "reverse_kernel",
    "reverse_sde",
    "probability_flow",
]

ODE_METHODS = ("heun", "euler")


# ---------------------------------------------------------------------------- model helpers
def unwrap_model(model, length_scale: Optional[float] = None):
    """(diffusion model, length scale): a TrainedModel gives (model.inner, model.length_scale).

    A model with ``inner`` and ``length_scale`` attributes (:class:`~boltzgen.model.TrainedModel`)
    runs in y = x / length_scale; any other model runs in x itself (length scale 1) unless
    ``length_scale`` is given.

    Parameters
    ----------
    model : TrainedModel, EnergyModel or model-like
        See the module docstring for the model interface.
    length_scale : float, optional
        Overrides the model's length scale (units of x per unit of y, e.g. nm).

    Returns
    -------
    inner : model
        The model that runs in y.
    length_scale : float
        x = length_scale · y.
    """
    if hasattr(model, "inner") and hasattr(model, "length_scale"):
        return model.inner, float(model.length_scale if length_scale is None else length_scale)
    return model, 1.0 if length_scale is None else float(length_scale)


def model_dtype(model) -> torch.dtype:
    """Floating-point type the model computes in.

    Parameters
    ----------
    model : model-like
        A ``torch.nn.Module`` (the dtype of its first parameter) or anything with ``dtype``.

    Returns
    -------
    torch.dtype
        The parameters' dtype, else ``model.dtype``, else float64.
    """
    params = getattr(model, "parameters", None)
    if callable(params):
        p = next(iter(params()), None)
        if p is not None:
            return p.dtype
    return getattr(model, "dtype", torch.float64)


def _same_device(a: torch.device, b: torch.device) -> bool:
    a, b = torch.device(a), torch.device(b)
    if a.type != b.type:
        return False
    return a.index == b.index or a.index is None or b.index is None


def model_device(model, generator: Optional[torch.Generator] = None) -> torch.device:
    """Device of a run: the model's parameters' (if any), else the generator's, else the CPU.

    Parameters
    ----------
    model : model-like
    generator : torch.Generator, optional
        Must live on the model's device (random numbers are drawn there).

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        When the generator and the model's parameters are on different devices.
    """
    device = None
    params = getattr(model, "parameters", None)
    if callable(params):
        p = next(iter(params()), None)
        if p is not None:
            device = p.device
    if generator is not None:
        if device is None:
            return torch.device(generator.device)
        if not _same_device(device, generator.device):
            raise ValueError(
                f"the generator is on {generator.device} but the model on {device}: "
                f"pass torch.Generator(device={str(device)!r})"
            )
    return torch.device("cpu") if device is None else device


def model_t_min(model, t_min: Optional[float] = None) -> float:
    """Smallest diffusion time of a run: ``t_min`` if given, else ``model.t_min`` (default 1e-3).

    Parameters
    ----------
    model : model-like
    t_min : float, optional
        An explicit value, which wins.

    Returns
    -------
    float
        Dimensionless diffusion time.
    """
    return float(getattr(model, "t_min", 1e-3) if t_min is None else t_min)


def model_mean_free(model) -> bool:
    """Whether the model lives on the zero-centre-of-mass subspace (``model.mean_free``, default False).

    Parameters
    ----------
    model : diffusion model
        See :class:`~boltzgen.sampling.protocol.DiffusionModel`.

    Returns
    -------
    bool
    """
    return bool(getattr(model, "mean_free", False))


def model_sigma_data(model) -> float:
    """Per-coordinate scale of the data in model units (``model.sigma_data``, default 1).

    Parameters
    ----------
    model : diffusion model
        See :class:`~boltzgen.sampling.protocol.DiffusionModel`.

    Returns
    -------
    float
    """
    return float(getattr(model, "sigma_data", 1.0))


def model_event_shape(model) -> tuple:
    """Shape of one configuration (``model.event_shape``), e.g. (N, 3) for molecules.

    Parameters
    ----------
    model : diffusion model
        See :class:`~boltzgen.sampling.protocol.DiffusionModel`.

    Returns
    -------
    tuple of int
    """
    return tuple(int(s) for s in model.event_shape)


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


def _f(v) -> float:
    return float(v)


def prior_variance(model, t: float = 1.0) -> float:
    """Per-coordinate variance c² = α_t² σ_data² + σ_t² of the Gaussian prior at time t.

    Parameters
    ----------
    model : model-like
        With ``schedule`` and optionally ``sigma_data`` (default 1).
    t : float
        Diffusion time (default 1, the start of the reverse diffusion).

    Returns
    -------
    float
        c², in model units squared (units of y²).
    """
    sd = model_sigma_data(model)
    return _f(model.schedule.alpha(t)) ** 2 * sd * sd + _f(model.schedule.sigma2(t))


def sample_prior(
    model, n: int, generator: Optional[torch.Generator] = None, *, prior_var: Optional[float] = None, device=None
) -> torch.Tensor:
    """n draws of the prior N(0, c² I) (mean-free for molecular models).

    Parameters
    ----------
    model : model-like
        With ``schedule``, ``event_shape`` and optionally ``sigma_data``, ``mean_free``.
    n : int
        Number of draws.
    generator : torch.Generator, optional
        Source of randomness (on the model's device).
    prior_var : float, optional
        Variance c² (default :func:`prior_variance` at t = 1).
    device : torch.device or str, optional
        Device of the result (default: the model's, else the generator's, else the CPU).

    Returns
    -------
    torch.Tensor, shape (n, *event_shape), float64
        Draws in model units (y).
    """
    c2 = prior_variance(model) if prior_var is None else float(prior_var)
    device = model_device(model, generator) if device is None else device
    eps = sample_noise(
        (int(n),) + model_event_shape(model), generator, model_mean_free(model), dtype=torch.float64, device=device
    )
    return math.sqrt(c2) * eps


def prior_log_prob(model, y: torch.Tensor, prior_var: Optional[float] = None) -> torch.Tensor:
    """log N(y; 0, c² I) (counting 3(N − 1) dimensions for mean-free models).

    Parameters
    ----------
    model : model-like
        With ``schedule`` and optionally ``sigma_data``, ``mean_free``.
    y : torch.Tensor, shape (B, *event_shape)
        Configurations in model units.
    prior_var : float, optional
        Variance c² (default :func:`prior_variance` at t = 1).

    Returns
    -------
    torch.Tensor, shape (B,), float64
        Log-densities with respect to the Lebesgue measure in y.
    """
    c2 = prior_variance(model) if prior_var is None else float(prior_var)
    return gaussian_log_prob(y.to(torch.float64), 0.0, c2, mean_free=model_mean_free(model))


#: Atom pairs per model evaluation on the CPU when no ``batch_size`` is given. A pair network's
#: temporaries (the EGNN's (B, N, N, H) tensors) grow as B·N²; once one passes the C allocator's
#: mmap threshold (:mod:`boltzgen.allocator`) every pass faults its pages in afresh, and large
#: passes fall out of the CPU cache, so the default chunk is this many pairs' worth of
#: configurations (:func:`cpu_eval_chunk`): with H = 64 float32 features a pair tensor stays
#: below the threshold. The budget is that of 128 alanine dipeptides (22 atoms), the fixed chunk
#: of earlier versions, whose samples it therefore reproduces. ``benchmarks/eval_chunks.py``
#: measures the cost per chunk size for systems of several sizes; change this when it finds a
#: better budget on your machine. On a GPU the whole batch goes in one pass.
CPU_EVAL_PAIRS = 128 * 22 * 22

#: Configurations per CPU model pass for events that are not (N, 3) atoms (flat vectors) and for
#: networks on a radius graph, whose edge tensors grow with the neighbours, not with N².
CPU_EVAL_CHUNK = 128


def cpu_eval_chunk(event_shape, graph: str = "full") -> int:
    """Configurations per model pass on the CPU when no ``batch_size`` is given.

    Parameters
    ----------
    event_shape : tuple of int
        Shape of one configuration: (N, 3) for N atoms, or a flat (D,).
    graph : {"full", "radius"}
        The network's graph (``net.graph_kind`` of the molecular networks): a fully connected
        one has N² pairs per configuration.

    Returns
    -------
    int
        :data:`CPU_EVAL_CHUNK`, and for (N, 3) events on a full graph at most
        ``max(1, CPU_EVAL_PAIRS // N²)`` (the pair budget: fewer configurations for large molecules,
        never more for small ones).
    """
    shape = tuple(int(k) for k in event_shape)
    if graph == "full" and len(shape) == 2 and shape[1] == 3:
        return min(CPU_EVAL_CHUNK, max(1, CPU_EVAL_PAIRS // (shape[0] * shape[0])))
    return CPU_EVAL_CHUNK


def model_graph_kind(model) -> str:
    """The graph of a model's network: ``"radius"`` or ``"full"`` (also for models without one).

    Parameters
    ----------
    model : model-like
        A TrainedModel, an EnergyModel or any model with ``energy(y, t)``.

    Returns
    -------
    str
    """
    net = getattr(getattr(model, "inner", model), "net", None)
    return getattr(net, "graph_kind", "full")


def model_energy_and_score(
    model, y: torch.Tensor, t: float, batch_size: Optional[int] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Energies E(y, t) and scores −∇E, both float64 and detached.

    ``y`` is cast to the model's dtype. Uses ``model.energy_and_score`` when there is one, else
    autograd of ``model.energy``. Mean-free models get a mean-free score.

    Parameters
    ----------
    model : model-like
        With ``energy(y, t)`` and optionally ``energy_and_score(y, t)``.
    y : torch.Tensor, shape (B, *event_shape)
        Configurations in model units.
    t : float
        Diffusion time.
    batch_size : int, optional
        Evaluate in chunks of at most this many configurations (default: :func:`cpu_eval_chunk`
        on the CPU, all at once on a GPU; 0: all at once).

    Returns
    -------
    energy : torch.Tensor, shape (B,), float64
        Reduced (dimensionless) energies E(y, t).
    score : torch.Tensor, shape (B, *event_shape), float64
        −∇_y E(y, t), units 1/y.
    """
    if batch_size is None:
        batch_size = cpu_eval_chunk(y.shape[1:], model_graph_kind(model)) if y.device.type == "cpu" else 0
    if int(batch_size) > 0 and y.shape[0] > int(batch_size):
        parts = [model_energy_and_score(model, chunk, t, 0) for chunk in torch.split(y, int(batch_size))]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    dtype = model_dtype(model)
    yy = y.detach().to(dtype)
    if hasattr(model, "energy_and_score"):
        e, s = model.energy_and_score(yy, t)
    else:
        yy = yy.requires_grad_(True)
        with torch.enable_grad():
            e = model.energy(yy, t)
            (g,) = torch.autograd.grad(e.sum(), yy)
        s = -g
    e = e.detach().to(torch.float64).reshape(y.shape[0])
    s = s.detach().to(torch.float64).reshape(y.shape)
    if model_mean_free(model):
        s = project_mean_free(s)
    return e, s


def _score_with_graph(model, y: torch.Tensor, t: float) -> torch.Tensor:
    """Score −∇E(y, t) with its graph (for divergences); y must require grad."""
    e = model.energy(y.to(model_dtype(model)), t)
    (g,) = torch.autograd.grad(e.sum(), y, create_graph=True)
    s = -g
    return project_mean_free(s) if model_mean_free(model) else s


def reverse_sde(
    model,
    n: int,
    generator: Optional[torch.Generator] = None,
    *,
    n_steps: int = 200,
    method: str = "ddpm",
    spacing: str = "quadratic",
    t_min: Optional[float] = None,
    length_scale: Optional[float] = None,
    y_init: Optional[torch.Tensor] = None,
    batch_size: Optional[int] = None,
    return_y: bool = False,
    mcmc_steps: int = 0,
) -> torch.Tensor:
    """Samples of the reverse SDE from the prior at t = 1 down to t_min (no weights).

    With ``mcmc_steps`` > 0 this is a predictor–corrector sampler: after each reverse step,
    that many Metropolis-adjusted Langevin moves on exp(−E(y, t')) at the new time (step size from
    the particles' gradients, adapted towards an acceptance of 0.574). The moves pull particles
    that the reverse steps took off the model's own marginal back onto it; they cost one model
    evaluation each.

    Parameters
    ----------
    model : diffusion model (see the module docstring) or TrainedModel
    n : int
        Number of samples (ignored when ``y_init`` is given).
    generator : torch.Generator, optional
        Source of all random numbers (its device is the device of the run).
    n_steps : int
        Reverse steps (default 200).
    method : {"ddpm", "euler"}
        Reverse kernel (see :func:`reverse_kernel`); ``"ddpm"`` is exact for Gaussian data.
    spacing : {"quadratic", "uniform", "log"}
        Time grid (:func:`time_grid`).
    t_min : float, optional
        Last time (default ``model.t_min``).
    length_scale : float, optional
        Units of x per unit of the model's coordinates (default: the TrainedModel's, else 1).
    y_init : tensor, optional
        Start from these states at t = 1 (model coordinates) instead of prior draws.
    batch_size : int, optional
        Evaluate the model in chunks of at most this many configurations (default:
        :func:`cpu_eval_chunk` on the CPU, all at once on a GPU; 0: all at once;
        :func:`model_energy_and_score`).
    return_y : bool
        Return model coordinates y instead of x = length_scale · y.
    mcmc_steps : int
        Corrector moves (MALA on the model's energy) after every reverse step (default 0).

    Returns
    -------
    tensor (n, *event_shape), float64: x in the target's units (or y)
    """
    model, ls = unwrap_model(model, length_scale)
    if int(mcmc_steps) < 0:
        raise ValueError(f"mcmc_steps must be non-negative, got {mcmc_steps}")
    if method not in SDE_METHODS:
        raise ValueError(f"unknown reverse-SDE method {method!r}; choose one of {SDE_METHODS}")
    mf = model_mean_free(model)
    device = model_device(model, generator)
    y = (
        sample_prior(model, n, generator, device=device)
        if y_init is None
        else y_init.detach().to(device=device, dtype=torch.float64).clone()
    )
    times = time_grid(n_steps, model_t_min(model, t_min), 1.0, spacing).tolist()
    d = event_dim(model_event_shape(model), mf)
    step = StepSize("mala", d, None, 1.0, DEFAULT_TARGET_ACCEPTANCE["mala"])
    s = None  # the score at (y, t) when the corrector has it already
    for t, t_next in zip(times[:-1], times[1:]):
        if s is None:
            _, s = model_energy_and_score(model, y, t, batch_size)
        mean, var = reverse_kernel(model.schedule, y, s, t, t_next, method, model_sigma_data(model))
        noise = sample_noise(y.shape, generator, mf, dtype=y.dtype, device=y.device)
        y, s = mean + math.sqrt(var) * noise, None
        if mcmc_steps:
            y, s = _corrector(model, y, t_next, int(mcmc_steps), generator, batch_size, step)
    return y if return_y else ls * y


def _corrector(model, y: torch.Tensor, t: float, n_moves: int, generator, batch_size, step) -> tuple:
    """``n_moves`` MALA moves on exp(−E(·, t)) (``step`` adapted in place): the new y and the
    score there."""

    def energy(z):
        e, s = model_energy_and_score(model, z, t, batch_size)
        return e.to(torch.float64), -s

    current = energy_and_grad(energy, y)
    y, (_, grad), _, _ = adapted_moves(
        mala_step, y, energy, current, step, n_moves, generator, mean_free=model_mean_free(model)
    )
    return y, -grad


# ---------------------------------------------------------------------------- probability flow
def _subspace_basis(event_shape: tuple, mean_free: bool, dtype, device) -> torch.Tensor:
    """Orthonormal basis (d, *event_shape) of the configuration space (the zero-COM subspace if
    mean_free)."""
    n_coord = math.prod(event_shape)
    eye = torch.eye(n_coord, dtype=dtype, device=device).reshape((n_coord,) + event_shape)
    if not mean_free:
        return eye
    p = project_mean_free(eye).reshape(n_coord, n_coord)
    evals, evecs = torch.linalg.eigh(p)  # eigenvalues 0 (3 times) and 1 (d times), ascending
    d = event_dim(event_shape, True)
    u = evecs[:, evals > 0.5]
    return u[:, :d].T.reshape((d,) + event_shape).contiguous()


def _velocity(
    model, y: torch.Tensor, t: float, batch_size, divergence: Optional[str], generator, basis: Optional[torch.Tensor]
):
    """ODE velocity f y − ½ g² s (float64) and, if asked, its divergence on the (sub)space."""
    f, g2 = _f(model.schedule.drift_coef(t)), _f(model.schedule.g2(t))
    if divergence is None:
        _, s = model_energy_and_score(model, y, t, batch_size)
        return f * y - 0.5 * g2 * s, None
    d = event_dim(model_event_shape(model), model_mean_free(model))
    vels, divs = [], []
    chunks = torch.split(y, int(batch_size)) if batch_size else (y,)
    for yc in chunks:
        yy = yc.detach().to(model_dtype(model)).requires_grad_(True)
        with torch.enable_grad():
            s = _score_with_graph(model, yy, t)
            if divergence == "exact":
                div_s = torch.zeros(yc.shape[0], dtype=torch.float64, device=y.device)
                for k in range(basis.shape[0]):
                    b = basis[k].to(s.dtype).expand_as(s)
                    (jb,) = torch.autograd.grad((s * b).sum(), yy, retain_graph=True)
                    div_s = div_s + (jb * b).reshape(yc.shape[0], -1).sum(1).to(torch.float64)
            else:  # Hutchinson with Gaussian probes in the (sub)space
                eps = sample_noise(yc.shape, generator, model_mean_free(model), dtype=s.dtype, device=s.device)
                (je,) = torch.autograd.grad((s * eps).sum(), yy)
                div_s = (je * eps).reshape(yc.shape[0], -1).sum(1).to(torch.float64)
        vels.append(f * yc - 0.5 * g2 * s.detach().to(torch.float64))
        divs.append(f * d - 0.5 * g2 * div_s)
    return torch.cat(vels), torch.cat(divs)


def probability_flow(
    model,
    n: int,
    generator: Optional[torch.Generator] = None,
    *,
    n_steps: int = 100,
    method: str = "heun",
    spacing: str = "quadratic",
    t_min: Optional[float] = None,
    length_scale: Optional[float] = None,
    y_init: Optional[torch.Tensor] = None,
    return_log_q: bool = False,
    divergence: str = "exact",
    batch_size: Optional[int] = None,
    return_y: bool = False,
):
    """Integrate the probability-flow ODE dy/dt = f y − ½ g² s(y, t) from the prior at t = 1 to t_min.

    Parameters
    ----------
    model, n, generator, n_steps, spacing, t_min, length_scale, y_init, batch_size, return_y
        As in :func:`reverse_sde` (default 100 steps).
    method : {"heun", "euler"}
        Integrator (Heun's second-order method by default).
    return_log_q : bool
        Also return the log-density of the samples under the ODE's pushforward of the prior,
        log q(y_{t_min}) = log N(y_1; 0, c²) − ∫_{t_min}^{1} div v dt … integrated with the same
        scheme along each path (continuous-time change of variables; approximate, to the
        accuracy of the integrator). In the units of the returned samples: with x = ℓ y,
        log q(x) = log q(y) − d log ℓ, d = 3(N − 1) for mean-free models.
    divergence : {"exact", "hutchinson"}
        Exact trace (d vector–Jacobian products per step: small systems) or a one-probe Gaussian
        Hutchinson estimate (unbiased, noisy).

    Returns
    -------
    x : tensor (n, *event_shape), float64 (or y with ``return_y``)
    log_q : tensor (n,), float64 (only with ``return_log_q``)
    """
    model, ls = unwrap_model(model, length_scale)
    if method not in ODE_METHODS:
        raise ValueError(f"unknown ODE method {method!r}; choose one of {ODE_METHODS}")
    if divergence not in ("exact", "hutchinson"):
        raise ValueError(f"divergence must be 'exact' or 'hutchinson', got {divergence!r}")
    c2 = prior_variance(model)
    device = model_device(model, generator)
    y = (
        sample_prior(model, n, generator, prior_var=c2, device=device)
        if y_init is None
        else y_init.detach().to(device=device, dtype=torch.float64).clone()
    )
    div_mode = divergence if return_log_q else None
    basis = None
    if div_mode == "exact":
        basis = _subspace_basis(model_event_shape(model), model_mean_free(model), torch.float64, y.device)
    log_q = prior_log_prob(model, y, c2) if return_log_q else None
    times = time_grid(n_steps, model_t_min(model, t_min), 1.0, spacing).tolist()
    for t, t_next in zip(times[:-1], times[1:]):
        dt = t_next - t  # negative
        v1, d1 = _velocity(model, y, t, batch_size, div_mode, generator, basis)
        if method == "euler":
            y = y + dt * v1
            if return_log_q:
                log_q = log_q - dt * d1
            continue
        y_pred = y + dt * v1
        v2, d2 = _velocity(model, y_pred, t_next, batch_size, div_mode, generator, basis)
        y = y + 0.5 * dt * (v1 + v2)
        if return_log_q:
            log_q = log_q - 0.5 * dt * (d1 + d2)
    if model_mean_free(model):
        y = project_mean_free(y)
    out = y if return_y else ls * y
    if not return_log_q:
        return out
    if not return_y:
        log_q = log_q - event_dim(model_event_shape(model), model_mean_free(model)) * math.log(ls)
    return out, log_q
