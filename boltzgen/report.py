"""The ``boltzgen analyze`` report: plots and metrics of a (weighted) sample file.

:func:`analyze` reads a sample file (from ``boltzgen simulate``: unweighted; from ``boltzgen
sample`` or ``boltzgen reweight``: weighted), optionally a reference sample file of the same system
(e.g. long MD), and writes into an output directory, each file atomically:

- ``ramachandran.png``: the weighted (φ, ψ) free-energy surface in kT, one row per residue with a
  backbone φ and ψ (peptides);
- ``torsion_profiles.png``: F(φ) and F(ψ) of each residue with bootstrap error bands, the reference
  overlaid;
- ``energy_histogram.png``: weighted histograms of the reduced energy against the reference;
- ``ess_trace.png``: the ESS fraction along the SMC levels (when SMC metrics are found);
- ``training_loss.png``: the training-loss curves of the run that made the samples;
- ``metrics.json``: n, ESS, W2 distances to the reference, the free energies F_k − F_0 of the
  molecule's states (:func:`boltzgen.states.default_states`: for a peptide the joint φ signs of its
  residues; for two states, as alanine dipeptide, ΔF = F(φ > 0) − F(φ < 0)), per residue ΔF of
  its φ sign and the free energies of its Ramachandran basins β/PII, α_R, φ > 0 relative to β/PII
  (``per_residue``, :func:`boltzgen.states.basin_states_of`); errors of MD trajectories, time-ordered correlated frames, by a
  block bootstrap (``bootstrap_block_size``);
- ``index.html``: one page that leads, before any figure, with the answer (ΔF with its error in kT
  for two states, else the state free energies; the ESS and the number of distinct SMC ancestors)
  and a verdict in plain words (:func:`report_verdict`), then metrics tables labelled in words with
  units, the state and residue tables, the notes and the figures. The machine-readable names of
  the metrics are those of ``metrics.json``; on the page they appear only as ``data-metric``
  attributes of the table rows.

An analysis that does not apply (no topology, no backbone, no reference, no SMC trace) is skipped
with an entry in ``notes``; it never stops the report.

Figures use matplotlib's Agg canvas directly (no pyplot), so the global backend of an interactive
session is left alone.
"""

from __future__ import annotations

import csv
import html
import json
import math
import os
from typing import Any, Optional

import numpy as np

from . import analysis as A
from . import weights as W
from .io import atomic_path, is_md_trajectory, load_samples, write_json
from .states import BASIN_NAMES, backbone_states, backbone_torsions, basin_states_of, default_states

__all__ = ["analyze", "report_verdict"]

#: Colour-scale ceiling of free-energy maps and profiles, kT.
F_MAX_KT = 12.0

#: Fewest effective samples the verdict accepts: below it a handful of samples carry the weights.
ESS_MIN = 10.0

#: Largest Wasserstein-2 distance (kT) between the reduced-energy distributions of the samples and
#: of the reference that the verdict accepts (the mean-energy difference when W2 is missing; W2 is
#: never below it). The energy of a molecule with d degrees of freedom spreads over about
#: sqrt(d/2) kT (5-6 kT for alanine dipeptide), and two finite samples of one distribution differ
#: by about 1 kT in W2 at a hundred effective samples; 2 kT more is a systematic difference: the
#: samples miss or misweight part of the target's energy distribution.
ENERGY_W2_MAX_KT = 2.0

#: The verdict when no check fails.
TRUSTED = "These numbers can be trusted."


# ---------------------------------------------------------------------------- small helpers
def _finite_or_none(value):
    """JSON-friendly: numpy scalars to Python numbers, NaN and inf to None, recursively."""
    if isinstance(value, dict):
        return {str(k): _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, np.ndarray):
        return _finite_or_none(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _figure(ncols: int = 1, width: float = 5.0, height: float = 4.0, nrows: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(nrows * ncols)]
    return fig, axes


def _save(fig, out_dir: str, name: str, figures: dict, key: str) -> None:
    path = os.path.join(out_dir, name)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    figures[key] = name


def _bootstrap_groups(samples) -> Optional[np.ndarray]:
    """Bootstrap cluster of each particle (:func:`boltzgen.analysis.bootstrap_clusters`): its SMC
    lineage (``smc_lineage``), else its independent run (``smc_run``); None for single samples."""
    if samples is None:
        return None
    return A.bootstrap_clusters(_log_w(samples), samples.extra.get("smc_run"), samples.extra.get("smc_lineage"))[0]


def _log_w(samples) -> np.ndarray:
    n = len(samples)
    return np.zeros(n) if samples.log_weights is None else np.asarray(samples.log_weights, dtype=np.float64)


def _check_compatible(samples, reference, path: str, ref_path: str) -> None:
    xs, xr = samples.x.shape[1:], reference.x.shape[1:]
    if xs != xr:
        if len(xs) == 2 and len(xr) == 2:
            raise ValueError(f"{path} has {xs[0]} atoms per configuration but the reference {ref_path} has {xr[0]}")
        raise ValueError(f"{path} holds configurations of shape {xs} but the reference {ref_path} holds {xr}")
    if (samples.topology is None) != (reference.topology is None):
        which = path if samples.topology is None else ref_path
        raise ValueError(f"one file is molecular and the other is not ({which} has no topology)")


def _backbone(samples, notes: list, label: str) -> Optional[list]:
    """``[(residue, φ, ψ), ...]`` of the residues with a backbone φ and ψ, or None (with a note)."""
    if samples is None or samples.topology is None:
        return None
    try:
        tors = backbone_torsions(samples.x, samples.topology)
    except ValueError as exc:
        notes.append(f"{label}: {exc}; torsion plots and metrics skipped")
        return None
    residues = [key[4:-1] for key in tors if key.startswith("phi(") and f"psi{key[3:]}" in tors]
    if not residues:
        notes.append(f"{label}: no backbone phi and psi torsion; torsion plots and metrics skipped")
        return None
    return [(r, tors[f"phi({r})"], tors[f"psi({r})"]) for r in residues]


def _read_smc(path: str, smc_metrics: Optional[dict], notes: list) -> Optional[dict]:
    if smc_metrics is not None:
        summary = _with_all_ancestors(smc_metrics.get("smc", smc_metrics), smc_metrics)
        return summary if summary.get("ess") else None
    metrics_path = os.path.join(os.path.dirname(os.path.abspath(path)), "metrics.json")
    if not os.path.exists(metrics_path):
        notes.append("no SMC metrics (no metrics.json beside the sample file): ESS trace skipped")
        return None
    try:
        with open(metrics_path) as handle:
            metrics = json.load(handle)
    except (OSError, ValueError) as exc:
        notes.append(f"could not read {metrics_path} ({exc}): ESS trace skipped")
        return None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("smc"), dict) or not metrics["smc"].get("ess"):
        notes.append(f"{metrics_path} has no SMC trace (not written by `boltzgen sample`): ESS trace skipped")
        return None
    output = metrics.get("output")
    if output and os.path.abspath(output) != os.path.abspath(path):
        notes.append(f"{metrics_path} describes {output}, not this file: ESS trace skipped")
        return None
    return _with_all_ancestors(metrics["smc"], metrics)


def _with_all_ancestors(summary: dict, metrics: dict) -> dict:
    """The SMC summary (of the first run) with ``n_ancestors`` of all runs when ``metrics`` has it."""
    if metrics is not summary:
        extra = {
            "n_ancestors": metrics.get("n_ancestors"),
            "lineage_ess": metrics.get("lineage_ess"),
            "lineage_ess_states": metrics.get("lineage_ess_states"),
            "sampler_warnings": metrics.get("warnings"),
        }
        return {**summary, **{k: v for k, v in extra.items() if v is not None}}
    return summary


def _find_run_dir(samples, run_dir: Optional[str], notes: list) -> Optional[str]:
    if run_dir is not None:
        if not os.path.isdir(run_dir):
            raise FileNotFoundError(f"run directory not found: {run_dir}")
        return run_dir
    meta = samples.metadata or {}
    for candidate in (meta.get("run_dir"), (meta.get("source_metadata") or {}).get("run_dir")):
        if candidate and os.path.isdir(candidate):
            return candidate
    notes.append("no run directory (pass --run-dir): training-loss curves skipped")
    return None


def _model_diagnostics(run_dir: str) -> dict:
    """The training run's diagnostics on held-out target frames (its metrics.json), if it has them."""
    try:
        with open(os.path.join(run_dir, "metrics.json")) as handle:
            validation = json.load(handle).get("validation") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    keys = {
        "val_energy_gap_std_kT": "model_energy_gap_std_kT",
        "val_energy_gap_std_within_kT": "model_energy_gap_std_within_kT",
        "val_dF_error_kT": "model_state_dF_error_kT",
    }
    return {new: validation[old] for old, new in keys.items() if isinstance(validation.get(old), (int, float))}


def _read_train_log(path: str) -> dict:
    """Columns of train_log.csv as float arrays (NaN where empty), split by phase."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))

    def num(s):
        try:
            return float(s)
        except (TypeError, ValueError):
            return math.nan

    cols = rows[0].keys() if rows else []
    return {c: np.array([num(r.get(c)) for r in rows]) for c in cols if c != "phase"} | {
        "phase": np.array([r.get("phase", "") for r in rows])
    }


# ---------------------------------------------------------------------------- plots
def _plot_ramachandran(out_dir, figures, tors, lw, ref_tors, ref_lw):
    """One row per residue: F(φ, ψ) of the samples and, beside it, of the reference."""
    sources = [("samples", tors, lw)] + ([("reference", ref_tors, ref_lw)] if ref_tors is not None else [])
    fig, axes = _figure(len(sources), width=4.8, height=4.0, nrows=len(tors))
    mesh = None
    for row in range(len(tors)):
        for col, (title, per_residue, w) in enumerate(sources):
            ax = axes[row * len(sources) + col]
            residue, phi, psi = per_residue[row]
            f, xe, ye = A.free_energy_surface(phi, psi, w, bins=60)
            masked = np.ma.masked_invalid(np.where(np.isfinite(f), np.minimum(f, F_MAX_KT), np.nan))
            mesh = ax.pcolormesh(xe, ye, masked.T, cmap="viridis", vmin=0.0, vmax=F_MAX_KT, shading="flat")
            ax.set_xlim(-math.pi, math.pi)
            ax.set_ylim(-math.pi, math.pi)
            ax.set_xlabel("φ / rad")
            ax.set_ylabel("ψ / rad")
            ax.set_title(f"F(φ, ψ), {title}" + (f", {residue}" if len(tors) > 1 else ""))
            ax.set_aspect("equal")
    fig.colorbar(mesh, ax=axes, label="F / kT")
    _save(fig, out_dir, "ramachandran.png", figures, "ramachandran")


def _plot_profiles(out_dir, figures, tors, lw, ref_tors, ref_lw, seed, blocks=(1, 1)):
    """One row per residue: F(φ) and F(ψ) with bootstrap bands, the reference dashed."""
    fig, axes = _figure(2, width=5.0, height=3.8, nrows=len(tors))
    for row, (residue, *angles) in enumerate(tors):
        for k, name in enumerate(("φ", "ψ")):
            ax = axes[2 * row + k]
            series = [("samples", angles[k], lw, "C0", "-", blocks[0])]
            if ref_tors is not None:
                series.append(("reference", ref_tors[row][1 + k], ref_lw, "C1", "--", blocks[1]))
            for label, values, w, color, style, block in series:
                prof = A.free_energy_profile(values, w, bins=60, n_bootstrap=100, seed=seed, block_size=block)
                f = np.where(np.isfinite(prof.f_kT), prof.f_kT, np.nan)
                ax.plot(prof.centers, f, style, color=color, label=label)
                err = np.where(np.isfinite(prof.f_err_kT), prof.f_err_kT, np.nan)
                ax.fill_between(prof.centers, f - err, f + err, color=color, alpha=0.25, linewidth=0)
            ax.set_xlim(-math.pi, math.pi)
            ax.set_ylim(bottom=-0.5)
            ax.set_xlabel(f"{name} / rad")
            ax.set_ylabel("F / kT")
            where = f" of {residue}" if len(tors) > 1 else ""
            ax.set_title(f"F({name}){where} (band: bootstrap standard error)")
            ax.legend()
    _save(fig, out_dir, "torsion_profiles.png", figures, "torsion_profiles")


def _plot_energies(out_dir, figures, u, lw, ref_u, ref_lw):
    keep = np.isfinite(lw) & np.isfinite(u)
    pool = [u[keep]]
    if ref_u is not None:
        pool.append(ref_u[np.isfinite(ref_lw) & np.isfinite(ref_u)])
    pool = np.concatenate(pool)
    lo, hi = np.percentile(pool, [0.5, 99.5])
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.05 * (hi - lo)
    rng_ = (lo - pad, hi + pad)
    bins = int(np.clip(np.sqrt(pool.size), 10, 60))
    fig, axes = _figure(1, width=6.0, height=4.0)
    ax = axes[0]
    series = [("samples (weighted)" if np.any(lw != lw[0]) else "samples", u, lw, "C0")]
    if ref_u is not None:
        series.append(("reference", ref_u, ref_lw, "C1"))
    for label, values, w, color in series:
        hist, edges = A.weighted_histogram(values, w, bins=bins, range=rng_, density=True)
        ax.stairs(hist, edges, color=color, label=label, linewidth=1.5)
    ax.set_xlabel("reduced energy u = U / kT")
    ax.set_ylabel("density")
    ax.set_title("reduced-energy distribution")
    ax.legend()
    _save(fig, out_dir, "energy_histogram.png", figures, "energy_histogram")


def _plot_ess(out_dir, figures, smc):
    ess = np.array([math.nan if v is None else v for v in smc["ess"]], dtype=np.float64)
    levels = np.arange(ess.shape[0])
    fig, axes = _figure(1, width=6.0, height=3.8)
    ax = axes[0]
    ax.plot(levels, ess, "-", color="C0", label="ESS / particles")
    for i, level in enumerate(smc.get("resampled") or []):
        ax.axvline(level, color="0.6", linewidth=0.6, linestyle=":", label="resampled" if i == 0 else None)
    beta = smc.get("beta")
    if beta and len(beta) == ess.shape[0]:
        anneal = [i for i, b in enumerate(beta) if b is not None and b > 0]
        if anneal:
            ax.axvspan(anneal[0] - 0.5, levels[-1] + 0.5, color="C2", alpha=0.1, label="annealing to the target")
    ax.set_yscale("log")
    ax.set_xlabel("SMC level (0: prior at t = 1)")
    ax.set_ylabel("ESS fraction")
    ax.set_title("SMC effective sample size")
    ax.legend(loc="lower left")
    _save(fig, out_dir, "ess_trace.png", figures, "ess_trace")


def _plot_training(out_dir, figures, log: dict) -> None:
    fig, axes = _figure(1, width=6.0, height=4.0)
    ax = axes[0]
    step = log.get("step")
    positive = True
    for i, name in enumerate(("total", "dsm", "clf")):
        if name in log and np.isfinite(log[name]).any():
            ok = np.isfinite(log[name])
            ax.plot(step[ok], log[name][ok], "-", color=f"C{i}", linewidth=1, alpha=0.8, label=f"train {name}")
            positive &= bool((log[name][ok] > 0).all())
        val = "val_" + name
        if val in log and np.isfinite(log[val]).any():
            ok = np.isfinite(log[val])
            ax.plot(step[ok], log[val][ok], "o--", color=f"C{i}", markersize=3, label=f"validation {name}")
            positive &= bool((log[val][ok] > 0).all())
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("training losses")
    ax.legend(fontsize="small")
    _save(fig, out_dir, "training_loss.png", figures, "training_loss")


# ---------------------------------------------------------------------------- verdict
def _number(value) -> Optional[float]:
    """A finite float, or None (None, NaN, inf, non-numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _error_bar_problem(summary: dict) -> Optional[str]:
    """The sentence of the error-bar check, or None: a free energy without a finite error, or an
    error from fewer than two bootstrap blocks or independent runs."""
    names = list((summary.get("states") or {}).get("names") or [])
    values = summary.get("state_free_energies_kT")
    errors = summary.get("state_free_energies_err_kT")
    if "delta_f_kT" in summary and (len(names) == 2 or not names):
        pairs = [("ΔF", summary.get("delta_f_kT"), summary.get("delta_f_err_kT"))]
    elif isinstance(values, list):
        errors = errors if isinstance(errors, list) else [None] * len(values)
        pairs = [(f"F({n}) - F({names[0]})", v, e) for n, v, e in zip(names[1:], values[1:], errors[1:])]
    else:
        return None
    missing = [what for what, v, e in pairs if _number(v) is not None and _number(e) is None]
    if missing:
        return (
            f"The error bar of {', '.join(missing)} is infinite or missing: fewer than two bootstrap "
            "blocks or independent runs give it a value."
        )
    if not any(_number(v) is not None for _, v, _ in pairs):
        return None
    lineages = summary.get("bootstrap_lineages")
    if lineages is not None and _number(lineages) is not None and lineages < 2:
        return f"The error bars rest on {int(lineages)} SMC lineage: fewer than two, so they mean nothing."
    runs = summary.get("bootstrap_runs")
    if lineages is None and runs is not None and _number(runs) is not None and runs < 2:
        return f"The error bars rest on {int(runs)} independent run: fewer than two, so they mean nothing."
    n, block = _number(summary.get("n")), _number(summary.get("bootstrap_block_size"))
    if runs is None and n is not None and block is not None and block > 0 and n / block < 2:
        return (
            f"The error bars rest on fewer than two bootstrap blocks ({int(block)} correlated frames "
            f"per block, {int(n)} frames): they do not measure the statistical error."
        )
    return None


def _empty_states(summary: dict) -> list:
    """One sentence per state without samples or without weight."""
    names = list((summary.get("states") or {}).get("names") or [])
    if not names:
        return []
    counts = summary.get("state_counts")
    counts = counts if isinstance(counts, list) and len(counts) == len(names) else [None] * len(names)
    values = summary.get("state_free_energies_kT")
    if isinstance(values, list) and len(values) == len(names):
        weightless = [v is None or (isinstance(v, float) and not math.isfinite(v)) for v in values]
    elif "state_free_energies_kT" in summary and values is None:  # undefined: state 0 has no weight
        weightless = [True] + [False] * (len(names) - 1)
    elif len(names) == 2 and "delta_f_kT" in summary:
        weightless = [False, _number(summary.get("delta_f_kT")) is None]
    else:
        weightless = [False] * len(names)
    out = []
    for name, count, no_weight in zip(names, counts, weightless):
        if count == 0:
            out.append(f"State {name} is empty: no sample falls in it.")
        elif no_weight:
            what = f"its {count} samples carry" if count is not None else "its samples carry"
            out.append(f"State {name} is empty: {what} no weight.")
    return out


def _reference_problem(summary: dict) -> Optional[str]:
    """The sentence of the reference check, or None (close, or nothing to compare)."""
    w2 = _number(summary.get("energy_w2"))
    if w2 is not None:
        if w2 > ENERGY_W2_MAX_KT:
            floor = _number(summary.get("energy_w2_floor_lineages"))
            n, what = _number(summary.get("lineage_ess")), "lineages"
            if floor is None:
                floor, n, what = (
                    _number(summary.get("energy_w2_floor")),
                    _number(summary.get("energy_w2_floor_n")),
                    "ESS",
                )
            why = (
                f" As many independent draws of the reference itself as the samples' {n:.0f} ({what}) would be "
                f"{floor:.3g} kT from it: the samples rest on too few independent draws to tell more."
                if floor is not None and n is not None and floor > 0.5 * w2
                else ""
            )
            return (
                f"The samples are far from the reference: their reduced-energy distributions are "
                f"{w2:.3g} kT apart (Wasserstein-2 distance; more than {ENERGY_W2_MAX_KT:g} kT).{why}"
            )
        return None
    mean, ref_mean = _number(summary.get("mean_reduced_energy")), _number(summary.get("reference_mean_reduced_energy"))
    if mean is not None and ref_mean is not None and abs(mean - ref_mean) > ENERGY_W2_MAX_KT:
        return (
            f"The samples are far from the reference: their mean reduced energies differ by "
            f"{abs(mean - ref_mean):.3g} kT (more than {ENERGY_W2_MAX_KT:g} kT)."
        )
    return None


def report_verdict(summary: dict) -> list:
    """The report's verdict in plain words: whether the numbers of an analysis can be trusted.

    Four checks, each giving one sentence when it fails: the ESS is under :data:`ESS_MIN` ("The
    weights rest on N effective samples"); a free energy has an infinite or missing error bar, or
    its error comes from fewer than two bootstrap blocks or independent runs; a state has no sample
    or no weight ("State X is empty", one sentence per state); the samples are far from the
    reference (energy Wasserstein-2 distance, else the mean-energy difference, above
    :data:`ENERGY_W2_MAX_KT` kT; only when the summary has them, i.e. a reference was given).
    A pure function of the summary: no files, no HTML.

    Parameters
    ----------
    summary : dict
        Metrics as :func:`analyze` returns them (the keys of ``metrics.json``); the keys read are
        ``ess``, ``n``, ``states`` (``{"names": [...]}``), ``state_counts``,
        ``state_free_energies_kT``, ``state_free_energies_err_kT``, ``delta_f_kT``,
        ``delta_f_err_kT``, ``bootstrap_block_size``, ``bootstrap_runs``, ``bootstrap_lineages``, ``energy_w2``,
        ``mean_reduced_energy``, ``reference_mean_reduced_energy``, ``d_centre_fraction``,
        ``cis_bond_fraction`` and ``sampler_warnings`` (what
        the sampler said it could not do; one sentence each). Missing keys skip their
        check; None stands for a non-finite number (as in ``metrics.json``).

    Returns
    -------
    list of str
        ``[TRUSTED]`` ("These numbers can be trusted.") when every check passes, else one
        sentence per failed check (and per empty state), in the order above.
    """
    problems = []
    ess = _number(summary.get("ess"))
    if ess is not None and ess < ESS_MIN:
        problems.append(
            f"The weights rest on {ess:.3g} effective samples (fewer than {ESS_MIN:g}): a few samples "
            "decide every estimate."
        )
    error_bar = _error_bar_problem(summary)
    if error_bar:
        problems.append(error_bar)
    problems += _empty_states(summary)
    reference = _reference_problem(summary)
    if reference:
        problems.append(reference)
    problems += _structure_problems(summary)
    problems += [f"The sampler reported: {note}." for note in summary.get("sampler_warnings") or []]
    return problems or [TRUSTED]


#: Weight on D-amino acids, cis peptide bonds or broken bonds above which the verdict warns (MD of
#: an L-peptide with trans bonds has none; the force fields make each many kT unlikely).
STRUCTURE_MAX = 0.01

#: The weighted shares of :func:`structure_fractions`: key -> (the count of
#: :func:`boltzgen.systems.peptides.check_peptide` it is the share of, what that count counts).
STRUCTURE_FLAWS = {
    "d_centre_fraction": ("d_centres", "a D-amino acid"),
    "cis_bond_fraction": ("cis_bonds", "a cis peptide bond"),
    "broken_bond_fraction": ("broken_bonds", "a broken bond"),
}


def _structure_problems(summary: dict) -> list:
    out = []
    for key, (_, what) in STRUCTURE_FLAWS.items():
        value = _number(summary.get(key))
        if value is not None and value > STRUCTURE_MAX:
            out.append(
                f"{value:.1%} of the weight sits on samples with {what}, which the force field makes "
                "very unlikely: the sampler has not converged."
            )
    return out


# ---------------------------------------------------------------------------- html
_CAPTIONS = {
    "ramachandran": "Weighted Ramachandran free-energy maps F(φ, ψ) in kT, one row per residue (white: no weight).",
    "torsion_profiles": "Free-energy profiles along φ and ψ of each residue, bands one bootstrap standard error "
    "(block bootstrap for MD trajectories).",
    "energy_histogram": "Weighted reduced-energy histograms.",
    "ess_trace": "ESS fraction after each SMC reweighting (dotted: resampling).",
    "training_loss": "Training and validation losses (train_log.csv).",
}


def _fmt(value) -> str:
    if value is None:
        return "undefined"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value + 0.0:.6g}"  # + 0.0: no "-0"
    return str(value)


def _table(header: list, rows: list) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table>\n<tr>{head}</tr>\n{body}\n</table>"


#: The metrics tables of the page: (title, [(metrics.json key, label in words with its unit)]).
#: Scalars not listed here (``command``, notes) are in ``metrics.json`` only.
_METRIC_TABLES = (
    (
        "Samples",
        [
            ("samples", "Sample file"),
            ("system", "System"),
            ("n", "Samples"),
            ("weighted", "Weighted"),
            ("n_zero_weight", "Samples with zero weight"),
            ("ess", "Effective sample size (samples)"),
            ("ess_fraction", "Effective sample size (fraction of the samples)"),
            ("n_ancestors", "Distinct SMC ancestors of the final samples"),
            ("lineage_ess", "Effective SMC lineages of the weights (independent draws the estimates rest on)"),
            ("mean_reduced_energy", "Mean reduced energy (kT)"),
            *((key, f"Weight on samples with {what} (fraction)") for key, (_, what) in STRUCTURE_FLAWS.items()),
        ],
    ),
    (
        "Free energies",
        [
            ("delta_f_definition", "Free-energy difference: definition"),
            ("delta_f_kT", "Free-energy difference (kT)"),
            ("delta_f_err_kT", "Free-energy difference: standard error (kT)"),
            ("phi_positive_n", "Samples with φ > 0 and nonzero weight"),
            ("bootstrap_block_size", "Bootstrap block length (frames)"),
            ("bootstrap_runs", "Independent SMC runs"),
            ("bootstrap_lineages", "SMC lineages in the bootstrap"),
        ],
    ),
    (
        "Comparison with the reference",
        [
            ("reference", "Reference file"),
            ("reference_n", "Reference samples"),
            ("reference_ess", "Reference effective sample size (samples)"),
            ("reference_mean_reduced_energy", "Reference mean reduced energy (kT)"),
            ("energy_w2", "Energy Wasserstein-2 distance to the reference (kT)"),
            ("energy_w2_floor", "Energy W2 of exact independent draws with the samples' weights (kT)"),
            ("energy_w2_floor_lineages", "The same for lineage-ESS-many draws (kT)"),
            ("torsion_w2", "Torsion Wasserstein-2 distance to the reference (rad)"),
            ("torsion_w2_n", "Resampled configurations of the torsion distance"),
            ("reference_delta_f_kT", "Reference free-energy difference (kT)"),
            ("reference_delta_f_err_kT", "Reference free-energy difference: standard error (kT)"),
            ("reference_phi_positive_n", "Reference samples with φ > 0 and nonzero weight"),
            ("reference_bootstrap_block_size", "Reference bootstrap block length (frames)"),
        ],
    ),
    (
        "Sequential Monte Carlo",
        [
            ("smc_min_ess_fraction", "Smallest effective sample size along the levels (fraction of the particles)"),
            ("smc_log_z", "Log normalising constant, log Z"),
            ("smc_n_resampling", "Resampling steps"),
        ],
    ),
    (
        "Training",
        [
            ("run_dir", "Training run directory"),
            ("model_energy_gap_std_kT", "Model energy at t_min minus the force field: spread on held-out frames (kT)"),
            ("model_energy_gap_std_within_kT", "The same spread within the worst state (kT)"),
            ("model_state_dF_error_kT", "Model's own state free-energy difference minus the force field's (kT)"),
        ],
    ),
)


def _metric_tables(metrics: dict) -> str:
    """The scalar metrics as tables labelled in words (each row's metrics.json key in ``data-metric``)."""
    out = []
    for title, entries in _METRIC_TABLES:
        rows = [
            f'<tr data-metric="{html.escape(key)}"><th>{html.escape(label)}</th>'
            f"<td>{html.escape(_fmt(metrics[key]))}</td></tr>"
            for key, label in entries
            if key in metrics and not (key == "reference" and metrics[key] is None)
        ]
        if rows:
            out.append(f"<h3>{html.escape(title)}</h3>\n<table>\n" + "\n".join(rows) + "\n</table>")
    return "\n".join(out)


def _state_tables(metrics: dict) -> str:
    """The state free energies and the per-residue ΔF as HTML tables ('' when there are none)."""
    out = ""
    names = (metrics.get("states") or {}).get("names")
    if names:
        none = [None] * len(names)
        columns = [("State", list(names)), ("Samples", metrics.get("state_counts") or none)]
        columns += [
            (f"Free energy relative to {names[0]} (kT)", metrics.get("state_free_energies_kT") or none),
            ("Standard error (kT)", metrics.get("state_free_energies_err_kT") or none),
        ]
        if "reference_state_counts" in metrics:
            columns += [
                ("Reference samples", metrics.get("reference_state_counts") or none),
                ("Reference free energy (kT)", metrics.get("reference_state_free_energies_kT") or none),
                ("Reference standard error (kT)", metrics.get("reference_state_free_energies_err_kT") or none),
            ]
        rows = [list(row) for row in zip(*(values for _, values in columns))]
        out += "<h2>States</h2>\n" + _table([title for title, _ in columns], rows)
    per_residue = metrics.get("per_residue") or {}
    if per_residue:
        labels = {
            "phi_positive_n": "Samples with φ > 0",
            "delta_f_kT": "Free-energy difference (kT)",
            "delta_f_err_kT": "Standard error (kT)",
            "reference_delta_f_kT": "Reference free-energy difference (kT)",
            "reference_delta_f_err_kT": "Reference standard error (kT)",
            "torsion_w2": "Torsion W2 of (φ, ψ) (rad)",
        }
        keys = [k for k in labels if any(k in entry for entry in per_residue.values())]
        rows = [[residue] + [entry.get(k) for k in keys] for residue, entry in per_residue.items()]
        header = ["Residue"] + [labels[k] for k in keys]
        out += "\n<h2>Per residue: F(φ &gt; 0) − F(φ &lt; 0)</h2>\n" + _table(header, rows)
    keys = [key for key in BASIN_COLUMNS if any(key in entry for entry in per_residue.values())]
    rows = [
        [residue, basin] + [(entry.get(key) or [None] * len(entry["basins"]))[k] for key in keys]
        for residue, entry in per_residue.items()
        for k, basin in enumerate(entry.get("basins") or [])
    ]
    if rows:
        header = ["Residue", "Basin"] + [BASIN_COLUMNS[key] for key in keys]
        out += "\n<h2>Per residue: Ramachandran basins, F − F(β/PII)</h2>\n" + _table(header, rows)
    return out


#: Columns of the report's basin table: metric key -> heading.
BASIN_COLUMNS = {
    "basin_counts": "Samples",
    "basin_free_energies_kT": "Free energy relative to beta_PII (kT)",
    "basin_free_energies_err_kT": "Standard error (kT)",
    "reference_basin_counts": "Reference samples",
    "reference_basin_free_energies_kT": "Reference free energy (kT)",
    "reference_basin_free_energies_err_kT": "Reference standard error (kT)",
}


def _with_error(value, error) -> str:
    """``1.23 ± 0.45 kT``; the error as ∞ when missing."""
    if _number(value) is None:
        return "undefined"
    err = _number(error)
    return f"{value:.2f} ± {'∞' if err is None else f'{err:.2f}'} kT"


def _answer(metrics: dict) -> str:
    """The page's first section: ΔF (two states) or the state free energies, the ESS, the ancestors."""
    names = list((metrics.get("states") or {}).get("names") or [])
    parts = []
    if len(names) == 2 and "delta_f_kT" in metrics:
        definition = metrics.get("delta_f_definition") or f"F({names[1]}) - F({names[0]})"
        definition = definition.removesuffix(" in kT").replace(" - ", " − ")
        value = _with_error(metrics.get("delta_f_kT"), metrics.get("delta_f_err_kT"))
        parts.append(
            f'<p class="headline">Free-energy difference ΔF = {html.escape(definition)} = '
            f"<strong>{html.escape(value)}</strong></p>"
        )
    elif names:
        values = metrics.get("state_free_energies_kT") or [None] * len(names)
        errors = metrics.get("state_free_energies_err_kT") or [None] * len(names)
        items = "".join(
            f"<li>F({html.escape(n)}) − F({html.escape(names[0])}) = <strong>{html.escape(_with_error(v, e))}"
            "</strong></li>"
            for n, v, e in zip(names[1:], values[1:], errors[1:])
        )
        parts.append(
            f'<p class="headline">State free energies relative to {html.escape(names[0])}:</p><ul>{items}</ul>'
        )
    else:
        parts.append('<p class="headline">No states are defined for this system, so there are no free energies.</p>')
    ess, fraction, n = metrics.get("ess"), metrics.get("ess_fraction"), metrics.get("n")
    if _number(ess) is not None:
        share = f" ({100.0 * fraction:.1f} %)" if _number(fraction) is not None else ""
        line = f"Effective sample size: <strong>{ess:.1f}</strong> of {n} samples{share}."
        if metrics.get("n_ancestors") is not None:
            line += f" Distinct ancestors (SMC): <strong>{int(metrics['n_ancestors'])}</strong>."
        if _number(metrics.get("lineage_ess")) is not None:
            line += f" Effective lineages: <strong>{metrics['lineage_ess']:.1f}</strong>"
            per_state = metrics.get("lineage_ess_states") or {}
            if per_state:
                line += " (" + ", ".join(f"{html.escape(str(k))} {v:.1f}" for k, v in per_state.items()) + ")"
            line += "."
        parts.append(f"<p>{line}</p>")
    return '<section id="answer">\n<h2>Answer</h2>\n' + "\n".join(parts) + "\n</section>"


def _verdict_box(metrics: dict) -> str:
    """The verdict of :func:`report_verdict` as a box, with what the checks covered when it is clean."""
    verdict = report_verdict(metrics)
    if verdict == [TRUSTED]:
        checked = [f"at least {ESS_MIN:g} effective samples"]
        if (metrics.get("states") or {}).get("names"):
            checked += [
                "finite error bars from two or more bootstrap blocks or runs",
                "every state sampled with weight",
            ]
        if _number(metrics.get("energy_w2")) is not None or _number(metrics.get("reference_mean_reduced_energy")):
            checked.append(f"energies within {ENERGY_W2_MAX_KT:g} kT of the reference")
        else:
            checked.append("no reference energies to compare with (not checked)")
        body = f'<p><strong>{html.escape(TRUSTED)}</strong></p>\n<p class="scope">Checked: {html.escape("; ".join(checked))}.</p>'
        kind = "ok"
    else:
        body = "<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in verdict) + "</ul>"
        kind = "warn"
    return f'<section id="verdict" class="verdict {kind}">\n<h2>Verdict</h2>\n{body}\n</section>'


def _write_html(out_dir: str, metrics: dict) -> None:
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in metrics.get("notes", []))
    figs = "\n".join(
        f'<figure><img src="{html.escape(name)}" alt="{html.escape(_CAPTIONS.get(key, key))}">'
        f"<figcaption>{html.escape(_CAPTIONS.get(key, key))}</figcaption></figure>"
        for key, name in metrics.get("figures", {}).items()
    )
    title = f"boltzgen report: {os.path.basename(metrics.get('samples', ''))}"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1100px; }}
table {{ border-collapse: collapse; }} th, td {{ border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }}
th {{ background: #f4f4f4; font-weight: normal; }} figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; }}
figcaption {{ color: #555; }} .headline {{ font-size: 1.25em; }}
.verdict {{ border: 2px solid; border-radius: 6px; padding: 0.2em 1em; margin: 1em 0; }}
.verdict.ok {{ border-color: #2a7d2a; background: #eef8ee; }} .verdict.warn {{ border-color: #b35900; background: #fff4e5; }}
.scope {{ color: #555; font-size: 0.9em; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
{_answer(metrics)}
{_verdict_box(metrics)}
<h2>Metrics</h2>
<p class="scope">The same numbers, under their machine-readable names, are in metrics.json.</p>
{_metric_tables(metrics)}
{_state_tables(metrics)}
{"<h2>Notes</h2><ul>" + notes + "</ul>" if notes else ""}
<h2>Figures</h2>
{figs or "<p>No figures.</p>"}
</body></html>
"""
    with atomic_path(os.path.join(out_dir, "index.html")) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(page)


# ---------------------------------------------------------------------------- torsions and states
def _state_metrics(states, source, w, groups, seed) -> dict:
    """:func:`boltzgen.analysis.state_free_energy_metrics` of one file (block bootstrap for MD)."""
    block = "auto" if is_md_trajectory(source.metadata) else 1
    return A.state_free_energy_metrics(
        w, states.assign(source.x), states.names, seed=seed, n_bootstrap=200, block_size=block, groups=groups
    )


def _torsion_analysis(out_dir, figures, metrics, notes, samples, ref, lw, ref_lw, seed) -> None:
    """Ramachandran maps, torsion profiles, state free energies, per-residue ΔF and torsion W2."""
    tors = _backbone(samples, notes, "samples")
    if tors is None:
        if samples.topology is None:
            notes.append("not a molecular system: torsion plots and metrics skipped")
        return
    ref_tors = _backbone(ref, [], "reference")
    if ref_tors is not None and [r[0] for r in ref_tors] != [r[0] for r in tors]:
        notes.append("the reference has other residues: reference torsions skipped")
        ref_tors = None
    states = default_states(samples.topology)
    sources = [("", samples, lw, _bootstrap_groups(samples))] + (
        [("reference_", ref, ref_lw, None)] if ref_tors else []
    )
    blocks = [1, 1]
    for i, (prefix, source, w, groups) in enumerate(sources):
        result = _state_metrics(states, source, w, groups, seed)
        blocks[i] = result["bootstrap_block_size"]
        if result.get("delta_f_note"):
            notes.append(f"{prefix}delta_f: {result['delta_f_note']}")
        if result.get("state_free_energies_note"):
            notes.append(f"{prefix}state free energies: {result['state_free_energies_note']}")
        if groups is not None:
            runs = source.extra.get("smc_run")
            if runs is not None:
                metrics[f"{prefix}bootstrap_runs"] = int(np.unique(runs).size)
            if source.extra.get("smc_lineage") is not None:
                metrics[f"{prefix}bootstrap_lineages"] = int(np.unique(groups[np.isfinite(w)]).size)
        if len(tors) == 1 and len(states.names) == 2:  # φ > 0 frames with weight (alanine dipeptide's rare state)
            phi = (ref_tors if prefix else tors)[0][1]
            metrics[f"{prefix}phi_positive_n"] = int(np.sum((phi > 0) & np.isfinite(w)))
        definition = result.pop("delta_f_definition", None)
        result.pop("delta_f_note", None)
        if len(states.names) != 2:  # ΔF between two states: per residue below, not of the joint states
            result = {k: v for k, v in result.items() if not k.startswith("delta_f")}
            definition = None
        if not prefix:
            metrics["states"] = {"name": states.name, "names": list(states.names)}
            if definition is not None:
                metrics["delta_f_definition"] = definition
        metrics.update({prefix + k: v for k, v in result.items()})
    metrics["per_residue"] = _per_residue(samples, ref if ref_tors else None, lw, ref_lw, seed, blocks)
    _plot_ramachandran(out_dir, figures, tors, lw, ref_tors, ref_lw)
    _plot_profiles(out_dir, figures, tors, lw, ref_tors, ref_lw, seed, blocks)
    if ref_tors is not None:
        n_w2 = int(min(2000, max(len(samples), len(ref))))
        columns = [np.stack([a for _, phi, psi in t for a in (phi, psi)], 1) for t in (tors, ref_tors)]
        metrics["torsion_w2"] = A.torsion_w2(*columns, samples.log_weights, ref.log_weights, n=n_w2, seed=seed)
        metrics["torsion_w2_n"] = n_w2
        for (residue, phi, psi), (_, ref_phi, ref_psi) in zip(tors, ref_tors):  # each residue's own torus
            metrics["per_residue"].setdefault(residue, {})["torsion_w2"] = A.torsion_w2(
                np.stack([phi, psi], 1),
                np.stack([ref_phi, ref_psi], 1),
                samples.log_weights,
                ref.log_weights,
                n=n_w2,
                seed=seed,
            )


def _per_residue(samples, ref, lw, ref_lw, seed, blocks) -> dict:
    """ΔF = F(φ > 0) − F(φ < 0) of each residue (and of the reference), with notes where undefined."""
    out = {}
    for states in backbone_states(samples.topology):
        residue = states.name[4:-1]  # "phi(ALA2)" -> "ALA2"
        entry: dict[str, Any] = {}
        sources = [("", samples, lw, _bootstrap_groups(samples), blocks[0])]
        sources += [("reference_", ref, ref_lw, None, blocks[1])] if ref is not None else []
        for prefix, source, w, groups, block in sources:
            labels = states.assign(source.x)
            result = A.state_free_energy_metrics(w, labels, states.names, seed=seed, block_size=block, groups=groups)
            entry[f"{prefix}phi_positive_n"] = int(np.sum((labels == 1) & np.isfinite(w)))
            entry[f"{prefix}delta_f_kT"] = result["delta_f_kT"]
            entry[f"{prefix}delta_f_err_kT"] = result["delta_f_err_kT"]
            if result.get("delta_f_note"):
                entry[f"{prefix}note"] = result["delta_f_note"]
        entry.update(_basin_metrics(samples.topology, residue, sources, seed))
        out[residue] = entry
    return out


def _basin_metrics(topology, residue: str, sources, seed) -> dict:
    """Free energies of one residue's Ramachandran basins (β/PII, α_R, φ > 0) relative to β/PII,
    for the samples and the reference; {} for a residue without ψ."""
    try:
        basins = basin_states_of(topology, residue)
    except ValueError:
        return {}
    out: dict[str, Any] = {"basins": list(BASIN_NAMES)}
    for prefix, source, w, groups, block in sources:
        result = A.state_free_energy_metrics(
            w, basins.assign(source.x), basins.names, seed=seed, block_size=block, groups=groups
        )
        out[f"{prefix}basin_counts"] = result["state_counts"]
        out[f"{prefix}basin_free_energies_kT"] = result["state_free_energies_kT"]
        out[f"{prefix}basin_free_energies_err_kT"] = result.get("state_free_energies_err_kT")
    return out


# ---------------------------------------------------------------------------- entry point
def structure_fractions(samples, log_w) -> dict:
    """Weighted share of peptide samples with a D-Cα or a cis peptide bond (both 0 for MD of an
    L-peptide with trans bonds); empty for samples without a peptide backbone.

    Parameters
    ----------
    samples : boltzgen.io.Samples
    log_w : array (B,)
        Log-weights of the samples.

    Returns
    -------
    dict
        ``d_centre_fraction``, ``cis_bond_fraction``, ``broken_bond_fraction`` (weighted, in
        [0, 1]), or {}.
    """
    from .states import chiral_centres, peptide_bonds
    from .systems.peptides import check_peptide

    top = samples.topology
    if top is None or (not len(chiral_centres(top)) and not len(peptide_bonds(top))):
        return {}
    counts = check_peptide(top, samples.x)
    w = W.normalized_weights(log_w)
    total = np.sum(w)  # their sum as summed here: an all-True share is then exactly 1

    def share(mask):  # clipped: a partial sum may round a hair past the total
        return float(np.clip(np.sum(w[mask]) / total, 0.0, 1.0))

    return {key: share(counts[count] > 0) for key, (count, _) in STRUCTURE_FLAWS.items()}


def analyze(
    path: str,
    out_dir: str,
    reference: Optional[str] = None,
    *,
    run_dir: Optional[str] = None,
    smc_metrics: Optional[dict] = None,
    seed: int = 0,
    topology=None,
) -> dict:
    """Plots and metrics of a sample file, written into ``out_dir``.

    Parameters
    ----------
    path : str
        Sample file (HDF5, :func:`boltzgen.io.save_samples`): unweighted (``boltzgen simulate``,
        ``boltzgen sample --method sde``) or weighted (``boltzgen sample``, ``boltzgen reweight``).
        Samples without ``log_weights`` count as equally weighted.
    out_dir : str
        Output directory (created): PNG figures, ``metrics.json`` and ``index.html``.
    reference : str, optional
        Reference sample file of the same system (same atoms or dimension), e.g. long MD; its
        ``log_weights`` are used when present. Gives ``energy_w2`` and ``torsion_w2``.
    run_dir : str, optional
        Run directory of ``boltzgen train`` for the training-loss curves (its ``train_log.csv``);
        default: the ``run_dir`` recorded in the sample file's metadata, when it exists.
    smc_metrics : dict, optional
        SMC summary (``SMCResult.summary()``, or a metrics dict with it under ``"smc"``) for the
        ESS trace; default: the ``"smc"`` entry of the ``metrics.json`` beside the sample file.
    seed : int
        Random state of the bootstraps and of the torsion-W2 resampling.
    topology : path or mdtraj.Topology, optional
        Topology of a trajectory file that has none (DCD, XTC, …; :func:`boltzgen.io.load_samples`).

    Returns
    -------
    dict
        The metrics also written to ``out_dir/metrics.json`` (non-finite numbers as None):
        ``n``, ``weighted``, ``n_zero_weight``, ``ess``, ``ess_fraction``, ``mean_reduced_energy``
        (kT), with a reference ``energy_w2`` (kT), ``energy_w2_floor`` (the W2 of independent draws of
        the reference carrying the samples' weights, :func:`boltzgen.analysis.energy_w2_floor`; their
        ESS ``energy_w2_floor_n``), when the SMC metrics have the lineage ESS also
        ``energy_w2_floor_lineages`` (as many draws as lineages), and ``torsion_w2`` (rad); for
        alanine-dipeptide-like molecules ``delta_f_kT`` and ``delta_f_err_kT`` = F(φ > 0) − F(φ < 0)
        in kT (and the same of the reference); ``n_ancestors`` (distinct SMC ancestors of the final particles, all runs),
        ``lineage_ess`` and per state ``lineage_ess_states`` (:func:`boltzgen.weights.lineage_ess`)
        when the SMC metrics have them; for peptides ``d_centre_fraction`` and ``cis_bond_fraction``
        (weighted share of samples with a D-Cα or a cis peptide bond); ``figures`` (name → file)
        and ``notes`` (what was skipped and why). :func:`report_verdict` of them heads ``index.html``.

    Raises
    ------
    FileNotFoundError
        A missing sample, reference or run directory.
    ValueError
        Unreadable files, reference of another shape (atom count), invalid weights.
    """
    path = os.fspath(path)
    samples = load_samples(path, topology=topology)
    ref = None
    if reference is not None:
        ref = load_samples(reference)
        _check_compatible(samples, ref, path, reference)
    os.makedirs(out_dir, exist_ok=True)
    notes: list = []
    figures: dict = {}

    lw = _log_w(samples)
    W.check_log_weights(lw, f"log_weights of {path}")
    W.require_some_weight(lw, f"log_weights of {path}")
    meta = samples.metadata or {}
    metrics: dict[str, Any] = {
        "command": "analyze",
        "samples": os.path.abspath(path),
        "reference": os.path.abspath(reference) if reference is not None else None,
        "system": meta.get("system") or (meta.get("source_metadata") or {}).get("system"),
        "n": len(samples),
        "weighted": samples.log_weights is not None,
        "n_zero_weight": int(np.sum(~np.isfinite(lw))),
        "ess": W.ess(lw),
        "ess_fraction": W.ess_fraction(lw),
    }
    ref_lw = None
    if ref is not None:
        ref_lw = _log_w(ref)
        W.check_log_weights(ref_lw, f"log_weights of {reference}")
        W.require_some_weight(ref_lw, f"log_weights of {reference}")
        metrics.update(reference_n=len(ref), reference_ess=W.ess(ref_lw))
        t_s, t_r = meta.get("temperature_K"), (ref.metadata or {}).get("temperature_K")
        if t_s is not None and t_r is not None and t_s != t_r:
            notes.append(f"temperatures differ (samples {t_s}, reference {t_r}): reduced energies are not comparable")

    # energies
    u = samples.reduced_energy
    ref_u = ref.reduced_energy if ref is not None else None
    if u is None:
        notes.append("the sample file has no reduced energies: energy histogram and energy W2 skipped")
    else:
        if ref is not None and ref_u is None:
            notes.append("the reference has no reduced energies: energy W2 skipped")
        try:
            metrics["mean_reduced_energy"] = W.expectation(u, lw).value
            if ref_u is not None:
                metrics["reference_mean_reduced_energy"] = W.expectation(ref_u, ref_lw).value
                metrics["energy_w2"] = A.energy_w2(u, ref_u, lw, ref_lw)
            _plot_energies(out_dir, figures, u, lw, ref_u, ref_lw)
        except ValueError as exc:
            notes.append(f"reduced energies: {exc}; energy metrics and histogram skipped")

    _torsion_analysis(out_dir, figures, metrics, notes, samples, ref, lw, ref_lw, seed)
    metrics.update(structure_fractions(samples, lw))

    # SMC and training
    smc = _read_smc(path, smc_metrics, notes)
    if smc is not None:
        _plot_ess(out_dir, figures, smc)
        for key in ("n_ancestors", "lineage_ess", "lineage_ess_states"):
            if smc.get(key) is not None:
                metrics[key] = smc[key]
        if smc.get("sampler_warnings"):
            metrics["sampler_warnings"] = list(smc["sampler_warnings"])
        metrics.update(
            smc_min_ess_fraction=smc.get("min_ess_fraction"),
            smc_log_z=smc.get("log_z"),
            smc_n_resampling=smc.get("n_resampling"),
        )
    if metrics.get("energy_w2") is not None:
        # what exact independent particles with these weights would score (moves made the
        # particles independent) and, for SMC, as many draws as lineages (descendants of one
        # ancestor are copies); the truth lies between, nearer the first for fast coordinates
        metrics["energy_w2_floor_n"] = float(metrics["ess"])
        metrics["energy_w2_floor"] = A.energy_w2_floor(ref_u, log_w_ref=ref_lw, seed=seed, log_w=lw)
        if metrics.get("lineage_ess"):
            metrics["energy_w2_floor_lineages"] = A.energy_w2_floor(ref_u, metrics["lineage_ess"], ref_lw, seed=seed)
    rd = _find_run_dir(samples, run_dir, notes)
    if rd is not None:
        log_path = os.path.join(rd, "train_log.csv")
        if not os.path.exists(log_path):
            notes.append(f"{rd} has no train_log.csv: training-loss curves skipped")
        else:
            log = _read_train_log(log_path)
            if log.get("step") is None or log["step"].size == 0:
                notes.append(f"{log_path} is empty: training-loss curves skipped")
            else:
                _plot_training(out_dir, figures, log)
                metrics["run_dir"] = os.path.abspath(rd)
        metrics.update(_model_diagnostics(rd))

    metrics["figures"] = figures
    metrics["notes"] = notes
    metrics = _finite_or_none(metrics)
    write_json(os.path.join(out_dir, "metrics.json"), metrics)
    _write_html(out_dir, metrics)
    return metrics
