"""Free-energy differences between two targets on the same particles: ΔF = F_B − F_A = −log(Z_B/Z_A).

Two routes, each a plain function of its inputs:

- :func:`delta_f_from_samples`: samples of both ends (MD, or weighted samples of any generator)
  and Bennett's acceptance ratio on u_B − u_A (:func:`boltzgen.weights.bar`), with the one-sided
  exponential averages beside it as an overlap check (they agree with BAR only when the two
  ensembles overlap).
- :func:`delta_f_from_model`: one learned energy model proposes for both targets; SMC along the
  diffusion, annealed to each target, estimates log Z_A and log Z_B. Both estimates carry the
  same unknown normaliser of the model's prior path, which cancels in the difference; BAR on the
  two weighted sample sets gives a second estimate from the same particles.

Reduced energies u = U/kT of each target at its own temperature, so ΔF is in kT and the targets
may differ in force field, solvent or temperature (temperature transfer: the same molecule at T_A
and T_B). Conventions: docs/theory.md, "Free energies between targets".
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np
import torch

from .weights import bar, logsumexp, normalized_weights

__all__ = [
    "check_same_particles",
    "reduced_energies",
    "delta_f_from_samples",
    "anneal_between_targets",
    "delta_f_from_model",
    "transfer_tempering",
]


def check_same_particles(target_a, target_b) -> None:
    """Refuse two targets whose configurations are not the same kind of object.

    Parameters
    ----------
    target_a, target_b : TargetSystem (or a trained model: anything with ``event_shape``,
        ``topology`` and a ``name``, which defaults to "the model")

    Raises
    ------
    ValueError
        Different shapes, or molecules whose atoms differ (element by element, in order).
    """
    name_a, name_b = (getattr(t, "name", "the model") for t in (target_a, target_b))
    if tuple(target_a.event_shape) != tuple(target_b.event_shape):
        raise ValueError(
            f"{name_a} has configurations of shape {tuple(target_a.event_shape)} and {name_b} "
            f"{tuple(target_b.event_shape)}: they need the same particles"
        )
    top_a, top_b = target_a.topology, target_b.topology
    if (top_a is None) != (top_b is None):
        raise ValueError(f"one of {name_a} and {name_b} is a molecule and the other is not")
    if top_a is None:
        return
    for a, b in zip(top_a.atoms, top_b.atoms):
        if a.element is not b.element and getattr(a.element, "symbol", None) != getattr(b.element, "symbol", None):
            raise ValueError(
                f"atom {a.index} is {a.element.symbol} ({a.residue}:{a.name}) in {name_a} but "
                f"{b.element.symbol} ({b.residue}:{b.name}) in {name_b}: they are different molecules"
            )


def reduced_energies(target, x) -> np.ndarray:
    """u(x) of a batch as a float64 NumPy array (no gradient).

    Parameters
    ----------
    target : TargetSystem
    x : array or tensor, shape (B, *event_shape)
        Configurations in the target's units.

    Returns
    -------
    numpy.ndarray, shape (B,)
        Reduced energies in kT; ``+inf`` where the target cannot evaluate them.
    """
    return target.reduced_energy(torch.as_tensor(np.asarray(x, dtype=np.float64))).detach().numpy()


def _side_weights(du: np.ndarray, log_w: Optional[np.ndarray]) -> np.ndarray:
    """Normalised weights of one side's samples (equal without log-weights)."""
    return np.full(du.size, 1.0 / du.size) if log_w is None else normalized_weights(log_w)


def _exp_average(du: np.ndarray, w: np.ndarray, sign: float) -> float:
    """−sign · log E_w[exp(−sign · Δu)]: the one-sided (Zwanzig) estimate from one end."""
    keep = w > 0
    return float(-sign * logsumexp(np.log(w[keep]) - sign * du[keep]))


def delta_f_from_samples(
    target_a,
    target_b,
    x_a,
    x_b,
    log_w_a=None,
    log_w_b=None,
    *,
    u_a=None,
    u_b=None,
    n_bootstrap: int = 200,
    seed: int = 0,
) -> dict:
    """ΔF = F_B − F_A (kT) from samples of both ends: BAR, with the one-sided averages beside it.

    Parameters
    ----------
    target_a, target_b : TargetSystem
        The two ends (same particles, :func:`check_same_particles`).
    x_a, x_b : array, shape (B_A, *event_shape), (B_B, *event_shape)
        Samples of A and of B in the targets' units.
    log_w_a, log_w_b : array, optional
        Their log-weights (default: equal, e.g. MD frames).
    u_a, u_b : array, optional
        u_A on the samples of A and u_B on the samples of B when already known (an SMC run's
        own energies); computed otherwise.
    n_bootstrap : int
        Bootstrap replicates of BAR's error.
    seed : int

    Returns
    -------
    dict
        ``delta_f_kT``, ``delta_f_err_kT`` (BAR), ``exp_forward_kT`` (from A's samples alone),
        ``exp_reverse_kT`` (from B's alone), ``du_mean_a_kT``, ``du_mean_b_kT`` (mean u_B − u_A on
        each side; their gap measures how little the ensembles overlap), ``n_a``, ``n_b``.
    """
    check_same_particles(target_a, target_b)
    x_a, x_b = np.asarray(x_a, dtype=np.float64), np.asarray(x_b, dtype=np.float64)
    u_a = reduced_energies(target_a, x_a) if u_a is None else np.asarray(u_a, dtype=np.float64)
    u_b = reduced_energies(target_b, x_b) if u_b is None else np.asarray(u_b, dtype=np.float64)
    du_a = reduced_energies(target_b, x_a) - u_a
    du_b = u_b - reduced_energies(target_a, x_b)
    est = bar(du_a, du_b, log_w_a, log_w_b, n_bootstrap=n_bootstrap, seed=seed)
    wa, wb = _side_weights(du_a, log_w_a), _side_weights(du_b, log_w_b)
    return {
        "delta_f_kT": est.value,
        "delta_f_err_kT": est.error,
        "method": "bar",
        "exp_forward_kT": _exp_average(du_a, wa, 1.0),
        "exp_reverse_kT": _exp_average(du_b, wb, -1.0),
        "du_mean_a_kT": float(np.sum(wa[wa > 0] * du_a[wa > 0])),
        "du_mean_b_kT": float(np.sum(wb[wb > 0] * du_b[wb > 0])),
        "n_a": int(du_a.size),
        "n_b": int(du_b.size),
    }


def anneal_between_targets(
    x,
    log_w,
    target_a,
    target_b,
    *,
    n_levels: int = 16,
    mcmc_steps: int = 5,
    step_size: Optional[float] = None,
    ess_threshold: float = 0.5,
    generator: Optional[torch.Generator] = None,
) -> dict:
    """Move weighted samples of A to B by SMC along u_λ = (1 − λ) u_A + λ u_B; log(Z_B / Z_A).

    At each of ``n_levels`` equal steps in λ the particles are reweighted by exp(−Δλ (u_B − u_A)),
    resampled (systematic) when their ESS fraction falls below ``ess_threshold``, and moved by
    ``mcmc_steps`` MALA steps that leave u_λ invariant (the step size is re-tuned between levels
    from the acceptance of the last level, never during one). The normalised mean of each level's
    incremental weights multiplies up to an unbiased estimate of Z_B / Z_A (Del Moral et al.
    2006), whatever proposed the samples of A: only its weights matter, not its normaliser.

    Parameters
    ----------
    x : tensor or array, shape (B, *event_shape)
        Samples of A in the targets' units.
    log_w : array, shape (B,)
        Their log-weights as samples of A (any constant offset; −inf for weight zero).
    target_a, target_b : TargetSystem
        The ends (same particles).
    n_levels : int
        λ steps, at least 1.
    mcmc_steps : int
        MALA steps per level (0: reweighting alone, the annealed importance estimate).
    step_size : float, optional
        Initial MALA step h (units of x squared); default 1e-6 for molecules (nm²), 1e-2 otherwise.
    ess_threshold : float
        Resample when the ESS fraction falls below this.
    generator : torch.Generator, optional

    Returns
    -------
    dict
        ``log_ratio`` (log Ẑ_B / Ẑ_A, so ΔF = −log_ratio), ``x`` (samples of B, float64 tensor),
        ``log_w`` (their log-weights), ``u_b`` (u_B on them), ``ess_fraction`` (at the end),
        ``n_resampling``, ``acceptance`` (mean MALA acceptance over the levels).

    Raises
    ------
    ValueError
        Targets of other particles, fewer than 1 level, or samples without weight.
    """
    from .sampling.mcmc import energy_and_grad, run_mcmc
    from .sampling.resampling import ess_fraction, resample

    check_same_particles(target_a, target_b)
    if n_levels < 1:
        raise ValueError(f"n_levels must be at least 1, got {n_levels}")
    x = torch.as_tensor(np.asarray(x, dtype=np.float64))
    log_w = torch.as_tensor(np.asarray(log_w, dtype=np.float64)).clone()
    if x.shape[0] != log_w.shape[0] or not torch.isfinite(log_w).any():
        raise ValueError(f"need one finite log-weight per sample ({x.shape[0]} samples, {log_w.shape[0]} log-weights)")
    mean_free = bool(target_a.is_molecular)
    h = step_size if step_size is not None else (1e-6 if mean_free else 1e-2)

    def ends(y):  # u_A and u_B of the particles
        return (torch.from_numpy(reduced_energies(t, y)) for t in (target_a, target_b))

    u_a, u_b = ends(x)
    log_ratio, n_resampling, acceptance = 0.0, 0, []
    lambdas = np.linspace(0.0, 1.0, n_levels + 1)
    for k in range(1, n_levels + 1):
        lam, step = float(lambdas[k]), float(lambdas[k] - lambdas[k - 1])
        increment = torch.where(torch.isfinite(u_b - u_a), -step * (u_b - u_a), torch.full_like(u_a, -math.inf))
        log_ratio += float(torch.logsumexp(log_w - torch.logsumexp(log_w, 0) + increment, 0))
        log_w = log_w + increment
        if ess_fraction(log_w) < ess_threshold:
            keep = resample(log_w, generator)
            x, u_a, u_b = x[keep], u_a[keep], u_b[keep]
            log_w = torch.zeros_like(log_w)
            n_resampling += 1
        if mcmc_steps > 0:

            def energy(y, lam=lam):
                ua, ga = energy_and_grad(target_a, y)
                ub, gb = energy_and_grad(target_b, y)
                return (1 - lam) * ua + lam * ub, (1 - lam) * ga + lam * gb

            moved = run_mcmc(x, energy, mcmc_steps, generator, step_size=h, adapt=None, mean_free=mean_free)
            x = moved.state.x.detach()
            rate = float(moved.acceptance.mean())
            acceptance.append(rate)
            h *= math.exp(2.0 * (rate - 0.574))  # for the next level (a Robbins–Monro step)
            u_a, u_b = ends(x)
    return {
        "log_ratio": log_ratio,
        "x": x,
        "log_w": log_w.numpy(),
        "u_b": u_b.numpy(),
        "ess_fraction": ess_fraction(log_w),
        "n_resampling": n_resampling,
        "acceptance": float(np.mean(acceptance)) if acceptance else None,
    }


def _smc_end(model, target, n: int, runs: int, settings, generator, states=None) -> dict:
    """R SMC runs to one target (:func:`~boltzgen.sampling.runs.smc_runs`, resampled within
    ``states`` when given): pooled samples, log-weights, their reduced energies and the runs' log Z."""
    from .sampling.runs import smc_runs

    results, log_w, log_z = smc_runs(model, target, n, runs, generator, settings=settings, states=states)
    return {
        "x": torch.cat([r.x for r in results]).detach().numpy(),
        "u": torch.cat([r.reduced_energy for r in results]).numpy(),
        "log_w": log_w,
        "log_z_runs": np.array([r.log_z for r in results], dtype=np.float64),
        "log_z": log_z,
        "warnings": [w for r in results for w in r.warnings],
        "results": results,
    }


def _path_end(model, target_a, target_b, n, runs, settings, generator, levels, mcmc_steps, states=None) -> tuple:
    """SMC runs to A, each carried on to B by :func:`anneal_between_targets`: both ends' pooled
    samples (as :func:`_smc_end` gives them) and the runs' log(Ẑ_B / Ẑ_A)."""
    from .weights import pool_runs

    a = _smc_end(model, target_a, n, runs, settings, generator, states)
    results = a.pop("results")
    moved = [
        anneal_between_targets(
            r.x, r.log_weights, target_a, target_b, n_levels=levels, mcmc_steps=mcmc_steps, generator=generator
        )
        for r in results
    ]
    log_ratio = np.array([m["log_ratio"] for m in moved], dtype=np.float64)
    log_z_b_runs = a["log_z_runs"] + log_ratio
    b = {
        "x": torch.cat([m["x"] for m in moved]).numpy(),
        "u": np.concatenate([m["u_b"] for m in moved]),
        "log_w": pool_runs([m["log_w"] for m in moved], log_z_b_runs),
        "log_z_runs": log_z_b_runs,
        "log_z": float(logsumexp(log_z_b_runs) - math.log(runs)),
        "warnings": [],
        "acceptance": [m["acceptance"] for m in moved],
    }
    return a, b, log_ratio


def delta_f_from_model(
    model,
    target_a,
    target_b,
    n: int = 1024,
    runs: int = 4,
    *,
    settings=None,
    settings_b=None,
    path_levels: int = 0,
    path_mcmc_steps: int = 5,
    states=None,
    states_b=None,
    generator=None,
    seed: int = 0,
) -> dict:
    """ΔF = F_B − F_A (kT) from one energy model proposing for both targets by SMC.

    Two estimators. With ``path_levels = 0`` the model proposes for each target by its own SMC
    runs and ΔF = log Ẑ_A − log Ẑ_B: the model's normaliser cancels on average, but each end
    carries the run-to-run noise of the whole diffusion path. With ``path_levels = K > 0`` each
    SMC run to A is carried on to B along u_λ = (1 − λ) u_A + λ u_B in K steps
    (:func:`anneal_between_targets`): ΔF = −log of the runs' Ẑ_A-weighted mean of Ẑ_B / Ẑ_A, in
    which the model's normaliser and its path noise cancel exactly; only the accuracy of the
    weighted samples of A and the overlap of the two targets set the error, and the second SMC
    run is not needed.

    Parameters
    ----------
    model : TrainedModel (or any DiffusionModel)
        The proposal: its diffusion path to t_min, then annealing to each target.
    target_a, target_b : TargetSystem
        The two ends, with the model's configuration shape.
    n : int
        Particles per target (shared by the runs).
    runs : int
        Independent SMC runs per target (the error is their spread), at least 2.
    settings : SMCSettings, optional
        Sampler settings (default: those of ``boltzgen sample``).
    settings_b : SMCSettings, optional
        Settings of the runs to B (default: ``settings``), e.g. tempered by
        :func:`transfer_tempering` when B is hotter (not used with ``path_levels``).
    path_levels : int
        λ steps from A to B (0: an SMC run to each target instead).
    path_mcmc_steps : int
        MALA steps per λ step.
    states, states_b : StateSet or callable, optional
        Per-state resampling of the SMC runs to A and to B (as ``states`` of
        :func:`~boltzgen.sampling.smc.smc_sample`; ``states_b`` defaults to ``states``, and is
        not used with ``path_levels``): every state keeps its weight through the resampling,
        so the weights of separated states, which set any ΔF that depends on conformation,
        do not rest on the few lineages that survive a global resampling.
    generator : torch.Generator, optional
    seed : int
        Seed of BAR's bootstrap.

    Returns
    -------
    dict
        ``delta_f_kT`` ± ``delta_f_err_kT`` from the SMC normalisers (log Ẑ_A − log Ẑ_B, the
        error from the spread of the runs' log Z over √runs, both ends in quadrature; with
        ``path_levels`` the spread of the runs' −log(Ẑ_B / Ẑ_A) over √runs), ``method``
        (``"smc"`` or ``"smc+path"``), ``log_z_a``, ``log_z_b`` with their runs,
        ``bar`` (:func:`delta_f_from_samples` on the two weighted sample sets), ``ess_a``,
        ``ess_b`` (fractions) and the sampler's ``warnings``; ``samples`` holds the two pooled
        sample sets (``x_a``, ``log_w_a``, ``u_a`` (u_A on them), ``x_b``, ``log_w_b``, ``u_b``) for
        the caller to write.

    Raises
    ------
    ValueError
        Targets of other particles, or fewer than 2 runs.
    """
    from .weights import ess_fraction

    check_same_particles(target_a, target_b)
    if runs < 2:
        raise ValueError(f"the error of ΔF comes from the spread of independent runs: runs must be >= 2, got {runs}")
    generator = generator if generator is not None else torch.Generator().manual_seed(seed)
    path = {}
    if path_levels > 0:
        a, b, log_ratio = _path_end(
            model, target_a, target_b, n, runs, settings, generator, path_levels, path_mcmc_steps, states
        )
        delta_f = float(logsumexp(a["log_z_runs"]) - logsumexp(a["log_z_runs"] + log_ratio))
        error = float(np.std(log_ratio, ddof=1) / math.sqrt(runs))
        path = {"path_levels": int(path_levels), "delta_f_runs_kT": (-log_ratio).tolist()}
        path["path_acceptance"] = b.pop("acceptance")
    else:
        plan = (
            (target_a, settings, states),
            (target_b, settings if settings_b is None else settings_b, states if states_b is None else states_b),
        )
        a, b = (_smc_end(model, t, n, runs, s_, generator, st) for t, s_, st in plan)
        a.pop("results"), b.pop("results")
        delta_f = a["log_z"] - b["log_z"]
        # the spread of the runs' log Z over √R: honest also when one run dominates the pooled Ẑ
        # (the delta method on Ẑ_r / Ẑ is then bounded by 1 and hides that the runs disagree)
        error = float(math.hypot(*(np.std(e["log_z_runs"], ddof=1) / math.sqrt(runs) for e in (a, b))))
    two_sided = delta_f_from_samples(
        target_a, target_b, a["x"], b["x"], a["log_w"], b["log_w"], u_a=a["u"], u_b=b["u"], seed=seed
    )
    return {
        "delta_f_kT": delta_f,
        "delta_f_err_kT": error,
        "method": "smc+path" if path else "smc",
        **path,
        "log_z_a": a["log_z"],
        "log_z_b": b["log_z"],
        "log_z_runs_a": a["log_z_runs"].tolist(),
        "log_z_runs_b": b["log_z_runs"].tolist(),
        "ess_a": ess_fraction(a["log_w"]),
        "ess_b": ess_fraction(b["log_w"]),
        "bar": two_sided,
        "warnings": [f"{target_a.name}: {w}" for w in a["warnings"]] + [f"{target_b.name}: {w}" for w in b["warnings"]],
        "samples": {f"{k}_{end}": e[k] for end, e in (("a", a), ("b", b)) for k in ("x", "log_w", "u")},
    }


def transfer_tempering(settings, model, target):
    """Temper the proposal for a target hotter than the model's data (temperature transfer).

    A model of the density at T_m proposes for a target at T > T_m: with the default
    ``diffusion.tempering`` of 1 it becomes T_m / T, so the learned energies reach the target's
    (flatter) free-energy differences at t_min (E / kT_m · T_m / T); the weights stay exact either way.

    Parameters
    ----------
    settings : SMCSettings
    model : TrainedModel
        Its ``metadata["target"]["temperature"]`` is T_m (models trained before it was recorded
        are left alone).
    target : TargetSystem

    Returns
    -------
    SMCSettings
    """
    t_model = ((model.metadata or {}).get("target") or {}).get("temperature")
    if t_model is None or settings.diffusion.tempering != 1.0 or not target.temperature > float(t_model):
        return settings
    diffusion = dataclasses.replace(settings.diffusion, tempering=float(t_model) / target.temperature)
    return dataclasses.replace(settings, diffusion=diffusion)
