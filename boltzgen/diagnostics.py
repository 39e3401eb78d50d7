"""How close a trained energy model is to the force field, measured on held-out target samples.

The SMC sampler ends its diffusion at the model's t_min and anneals from there to exp(−u); the
closer E_θ(x, t_min) is to u(x) + const on the target's own configurations, the less the
annealing has to correct and the higher the final ESS. Three measures (all in kT, on samples x of
the target, configurations in model units y = x / L):

- the spread std(r) of r(x) = E_θ(x, t_min) − u(x), over all samples and within each metastable
  state (a constant offset is free; a spread of s kT costs ESS roughly like exp(−s²));
- the error of the model's own state free energies: for states A and B,
  ΔF_θ(A − B) − ΔF_u(A − B) = −log⟨e^{−r}⟩_A + log⟨e^{−r}⟩_B (averages over target samples in
  each state; exact, as ∫_A e^{−E} = ∫_A e^{−u} e^{−r}), against the most populated state;
- the score residual at a few times: mean ‖σ_t s_θ(x_t, t) − T‖² / d for the regression target T
  of training (the target-score mix when forces are given, else −ε): the squared score error plus
  the target's own variance, which the force term makes small at small t.

These three look at the model where the data are. :func:`sample_quality` looks where the model's
own reverse diffusion goes: the force-field energy of its samples at t_min against held-out target
frames. A model can be accurate on noised data and still end its reverse process in distorted
molecules (stretched angles, clashing atoms) that no importance weight can repair.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from .diffusion.noise import event_dim, sample_noise, sq_norm
from .evaluate import model_energies

__all__ = ["model_diagnostics", "marginal_spread", "sample_quality", "structure_flaws", "DIAGNOSTIC_TIMES"]

#: Times of the score residual (clipped below at the model's t_min).
DIAGNOSTIC_TIMES = (0.001, 0.01, 0.1, 0.5)


def _score_residual(model, y, force, kappa, t: float, generator) -> float:
    from .losses import score_target
    from .sampling.sde import model_energy_and_score

    dtype = next(model.parameters()).dtype
    y = y.to(dtype)
    tt = torch.full((y.shape[0],), t, dtype=dtype)
    eps = sample_noise(tuple(y.shape), generator, model.mean_free, dtype=dtype)
    x_t, eps = model.schedule.q_sample(y, tt, noise=eps)
    n_ev = y.dim() - 1
    sigma = model.schedule.sigma(tt).reshape((-1,) + (1,) * n_ev)
    target = score_target(model, tt, eps, force if kappa is not None else None, kappa)
    _, score = model_energy_and_score(model, x_t, t)  # in chunks: hundreds of peptide frames at once took GBs
    residual = sq_norm(sigma * score.to(dtype) - target, n_ev) / event_dim(model.event_shape, model.mean_free)
    return float(residual.mean())


def model_diagnostics(
    model,
    y: torch.Tensor,
    u: torch.Tensor,
    force: Optional[torch.Tensor],
    labels: Optional[np.ndarray],
    names: Optional[Sequence[str]],
    length_scale: float,
    *,
    kappa: Optional[float] = None,
    times: Sequence[float] = DIAGNOSTIC_TIMES,
    seed: int = 0,
) -> dict:
    """Energy gap, state free-energy error and score residual of a model on target samples.

    Parameters
    ----------
    model : EnergyModel
        In model coordinates (``TrainedModel.inner``, or a trainer's EMA model).
    y : tensor, shape (B, *event_shape)
        Samples of the target in model units (x / ``length_scale``).
    u : tensor, shape (B,)
        Their reduced energies (kT).
    force : tensor, shape of ``y``, or None
        Their reduced forces in model units (for the score residual's target).
    labels : array of int, shape (B,), or None
        State index of each sample (−1: none).
    names : sequence of str, or None
        State names, indexed by ``labels``.
    length_scale : float
        L of y = x / L (recorded only; the energies do not depend on it).
    kappa : float, optional
        Stiffness of the target-score mix (with ``force``).
    times : sequence of float
        Times of the score residual.
    seed : int
        Seed of the residual's noise.

    Returns
    -------
    dict of str -> float
        ``val_energy_gap_std_kT``; per state ``val_energy_gap_std_kT_<state>`` and, for every
        state but the most populated, ``val_dF_error_kT_<state>`` (model minus target, kT), with
        the summaries ``val_energy_gap_std_within_kT`` (the largest within-state spread) and
        ``val_dF_error_kT`` (the largest error, signed);
        ``val_score_residual_t<t>`` for each time. Empty without samples.
    """
    if y.shape[0] < 2 or u is None:
        return {}
    r = model_energies(model, y, float(model.t_min), batch=256) - u.double()
    out = {"val_energy_gap_std_kT": float(r.std())}
    if labels is not None and names:
        labels = np.asarray(labels)
        counts = [int((labels == i).sum()) for i in range(len(names))]
        ref = int(np.argmax(counts))
        log_mean = {}
        for i, name in enumerate(names):
            pick = torch.from_numpy(labels == i)
            if counts[i] >= 2:
                out[f"val_energy_gap_std_kT_{name}"] = float(r[pick].std())
            if counts[i] >= 1:
                log_mean[i] = float(torch.logsumexp(-r[pick], 0)) - math.log(counts[i])
        for i, name in enumerate(names):
            if i != ref and i in log_mean:
                out[f"val_dF_error_kT_{name}"] = -log_mean[i] + log_mean[ref]
        within = [v for k, v in out.items() if k.startswith("val_energy_gap_std_kT_")]
        errors = [v for k, v in out.items() if k.startswith("val_dF_error_kT_")]
        if within:
            out["val_energy_gap_std_within_kT"] = max(within)
        if errors:
            out["val_dF_error_kT"] = max(errors, key=abs)
    generator = torch.Generator().manual_seed(seed)
    for t in times:
        t = max(float(t), float(model.t_min))
        out[f"val_score_residual_t{t:g}"] = _score_residual(model, y, force, kappa, t, generator)
    return out


def marginal_spread(model, y: torch.Tensor, log_p: torch.Tensor, t: torch.Tensor, labels=None, names=None) -> dict:
    """The model's error against the target's exact noisy marginal: spread of E(y, t) + log p_t(y).

    For the exact model E(y, t) = −log p_t(y) + C(t), so the spread over noisy copies of target
    samples at one t is zero; otherwise it is the error of the learned energy there (kT), which
    is what SMC's weights pay for. Pairs come from :func:`boltzgen.diffusion.laplace.marginal_pairs`.

    Parameters
    ----------
    model : EnergyModel
        Has ``energy(y, t)`` (model coordinates).
    y : tensor, shape (L, M, *event_shape)
        Noisy copies at L times (model units).
    log_p : tensor, shape (L, M)
        Their exact log-marginals (up to a constant per time).
    t : tensor, shape (L,)
    labels : array of int, shape (M,), optional
        State of the clean sample behind each copy (−1: none).
    names : sequence of str, optional
        State names, indexed by ``labels``.

    Returns
    -------
    dict of str -> float
        ``marginal_std_kT_t<t>`` per time and, with states of at least 5 copies,
        ``marginal_std_kT_t<t>_<state>`` and, for every such state but the one with the most
        copies (the reference), ``marginal_dF_error_kT_t<t>_<state>``: the error of the model's
        own state free energy at t, −log⟨e^{−r}⟩_state + log⟨e^{−r}⟩_reference with
        r = E + log p_t (exact for copies of target samples, as for :func:`model_diagnostics`).
        For a model whose energies at all t are one diffusion it does not depend on t.
    """
    out = {}
    lab = None if labels is None or names is None else torch.as_tensor(np.asarray(labels))
    with torch.no_grad():
        for i, ti in enumerate(t.tolist()):
            r = model.energy(y[i], torch.full((y.shape[1],), ti, dtype=y.dtype)).double() + log_p[i].double()
            ok = torch.isfinite(r)
            out[f"marginal_std_kT_t{ti:g}"] = float(r[ok].std()) if int(ok.sum()) > 1 else math.nan
            if lab is None:
                continue
            log_mean, counts = {}, {}
            for k, name in enumerate(names):
                mask = ok & (lab == k)
                counts[k] = int(mask.sum())
                if counts[k] >= 5:
                    out[f"marginal_std_kT_t{ti:g}_{name}"] = float(r[mask].std())
                    log_mean[k] = float(torch.logsumexp(-r[mask], 0)) - math.log(counts[k])
            if len(log_mean) > 1:
                ref = max(log_mean, key=counts.get)
                for k in log_mean:
                    if k != ref:
                        out[f"marginal_dF_error_kT_t{ti:g}_{names[k]}"] = log_mean[ref] - log_mean[k]
    return out


def sample_quality(
    model,
    target,
    reference,
    *,
    n: int = 64,
    n_steps: int = 100,
    mcmc_steps: int = 0,
    spacing: str = "quadratic",
    t_min: Optional[float] = None,
    seed: int = 0,
) -> dict:
    """The target energy of the model's own reverse-diffusion samples against held-out target frames.

    Draws ``n`` samples with :func:`~boltzgen.sampling.sde.reverse_sde` to the model's t_min and
    evaluates the target on their signal estimate x = y / α(t_min) (data units). With a force
    field (an OpenMM target or a Lennard-Jones cluster) the energy is also split into the term
    classes of :data:`boltzgen.nn.prior.TERM_CLASSES` (bonds, angles, …, as the prior computes them).

    Parameters
    ----------
    model : TrainedModel or diffusion model
        The model (a :class:`~boltzgen.sampling.protocol.DiffusionModel` without a
        ``length_scale`` acts on data units).
    target : TargetSystem
        Its target (``reduced_energy`` of configurations in data units).
    reference : array_like, shape (R, *event_shape)
        Held-out samples of the target (data units).
    n : int
        Reverse-diffusion samples (≥ 2).
    n_steps : int
        Their diffusion levels.
    mcmc_steps : int
        Corrector moves per level (see :func:`~boltzgen.sampling.sde.reverse_sde`).
    spacing : {"quadratic", "uniform", "log"}
        Time grid of the levels.
    t_min : float, optional
        Last time (default: the model's t_min).
    seed : int
        Seed of the samples.

    Returns
    -------
    dict
        ``sample_check_n``; ``sample_energy_excess_kT`` and ``sample_energy_excess_p90_kT``: the
        median and the 90th percentile of u over the samples minus the same over ``reference``
        (kT; about 0 for a model whose reverse process ends on the target);
        ``sample_term_excess_kT``: class -> median difference (kT), for the classes the target has;
        for a peptide, the share of samples with a D centre after the chirality fold (mixed
        hands, which no reflection mends), a cis peptide bond, a broken bond or a clash
        (``sample_d_centre_fraction``, ``sample_cis_bond_fraction``,
        ``sample_broken_bond_fraction``, ``sample_clash_fraction``; all 0 for MD of an L-peptide).
    """
    from .nn.prior import TERM_CLASSES, prior_for_target
    from .sampling.sde import reverse_sde
    from .systems.lj import LennardJonesCluster

    if int(n) < 2:
        raise ValueError(f"sample_quality needs at least 2 samples, got {n}")
    reference = torch.as_tensor(np.asarray(reference), dtype=torch.float64)
    t_min = float(model.t_min if t_min is None else t_min)
    generator = torch.Generator().manual_seed(seed)
    y = reverse_sde(
        model, int(n), generator, n_steps=n_steps, mcmc_steps=mcmc_steps, spacing=spacing, t_min=t_min, return_y=True
    )
    y = y / float(model.schedule.alpha(torch.tensor(t_min, dtype=torch.float64)))
    length_scale = float(getattr(model, "length_scale", 1.0))
    x = y * length_scale
    u_s, u_r = target.reduced_energy(x).detach(), target.reduced_energy(reference).detach()
    out = {
        "sample_check_n": int(n),
        "sample_energy_excess_kT": float(u_s.median() - u_r.median()),
        "sample_energy_excess_p90_kT": float(u_s.quantile(0.9) - u_r.quantile(0.9)),
    }
    if getattr(target, "system", None) is not None or isinstance(target, LennardJonesCluster):
        prior = prior_for_target(target, length_scale).double()
        ones = torch.ones(y.shape[0], dtype=torch.float64)
        terms_s = prior.term_energies(y, ones, torch.zeros_like(ones))
        ones = torch.ones(reference.shape[0], dtype=torch.float64)
        terms_r = prior.term_energies(reference / length_scale, ones, torch.zeros_like(ones))
        present = (terms_r != 0).any(0)
        diff = terms_s.median(0).values - terms_r.median(0).values
        out["sample_term_excess_kT"] = {c: float(v) for c, v, k in zip(TERM_CLASSES, diff, present) if k}
    out.update(structure_flaws(getattr(target, "topology", None), x))
    return out


def structure_flaws(topology, x) -> dict:
    """Shares of peptide configurations with each flaw that MD of an L-peptide never shows.

    The configurations are folded onto the L-form first
    (:func:`~boltzgen.sampling.chirality.fix_chirality`), so a D centre left counts a
    configuration whose centres have both hands.

    Parameters
    ----------
    topology : mdtraj.Topology or None
    x : array_like, shape (B, N, 3)
        Configurations (nm).

    Returns
    -------
    dict
        ``sample_d_centre_fraction``, ``sample_cis_bond_fraction``, ``sample_broken_bond_fraction``
        and ``sample_clash_fraction`` in [0, 1]; empty without a topology or a peptide backbone.
    """
    from .sampling.chirality import fix_chirality
    from .states import chiral_centres, peptide_bonds
    from .systems.peptides import check_peptide

    if topology is None:
        return {}
    centres = chiral_centres(topology)
    if not len(centres) and not len(peptide_bonds(topology)):
        return {}
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    if len(centres):
        x = fix_chirality(x, centres)[0]
    counts = check_peptide(topology, x.numpy())
    names = {"d_centres": "d_centre", "cis_bonds": "cis_bond", "broken_bonds": "broken_bond", "clashes": "clash"}
    return {f"sample_{name}_fraction": float(np.mean(counts[key] > 0)) for key, name in names.items()}
