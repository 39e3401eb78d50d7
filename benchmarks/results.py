"""Write benchmarks/RESULTS.md from the benchmarks' JSON outputs.

Every benchmark script in ``benchmarks/`` writes a JSON file (by default under ``bench-results/``,
which git ignores). This script reads every ``*.json`` below the results directory, recognises
which benchmark wrote it from its content (so a file renamed with ``--out`` is still found), and
writes one markdown table per benchmark with its anchors. A benchmark without a JSON file gets a
table that says "not run", followed by the numbers recorded in ``benchmarks/recorded.json`` (from
earlier sessions' notes, each with its source) if there are any. The page opens with a headline
table (DSM against DSM + DiffCLF), which this script also writes into README.md between its
``<!-- headline:start -->`` and ``<!-- headline:end -->`` markers.

    python benchmarks/results.py                   # bench-results/ -> benchmarks/RESULTS.md, README.md
    python benchmarks/results.py --results DIR --out FILE --readme FILE
    python benchmarks/results.py --check           # exit 1 if either file is out of date

The quickstart counts as a benchmark: ``boltzgen quickstart -o bench-results/quickstart`` leaves its
``metrics.json`` where this script finds it. Smoke runs (``--quick``, ``--fast``) are listed but
never feed the headline. Only the standard library is used, so this runs without boltzgen.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import sys
from dataclasses import dataclass
from typing import Callable, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RECORDED = os.path.join(HERE, "recorded.json")
HEADLINE_START = "<!-- headline:start -->"
HEADLINE_END = "<!-- headline:end -->"
DASH = "–"


# ----------------------------------------------------------------------------- formatting
def fmt(value, spec: str = ".3f") -> str:
    """A number formatted with ``spec``; None, NaN and missing values as a dash."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return DASH
    return format(value, spec)


def plus_minus(value, error, spec: str = ".2f") -> str:
    """``value ± error`` (an undefined error reads "± inf", as the CLI prints it)."""
    if value is None:
        return DASH
    undefined = error is None or (isinstance(error, float) and not math.isfinite(error))
    return f"{fmt(value, spec)} ± {'inf' if undefined else fmt(error, spec)}"


def table(columns: list[str], rows: list[list[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def smoke(blob: dict) -> bool:
    """True for a smoke run (``--quick`` / ``--fast``) whose numbers mean nothing."""
    return bool(blob.get("quick") or blob.get("fast"))


# ----------------------------------------------------------------------------- benchmarks
def energy_w2_cell(r: dict) -> str:
    """Energy W2 with, when the report gave them, its floors: the W2 of exact independent draws of
    the reference with the samples' weights, and of as many draws as lineages
    (boltzgen.analysis.energy_w2_floor)."""
    if r.get("energy_w2_floor") is None:
        return fmt(r.get("energy_w2"))
    floors = f"floor {fmt(r['energy_w2_floor'])} at ESS {fmt(r.get('energy_w2_floor_n'), '.0f')}"
    if r.get("energy_w2_floor_lineages") is not None:
        floors += f", {fmt(r['energy_w2_floor_lineages'])} at the lineages"
    return f"{fmt(r.get('energy_w2'))} ({floors})"


def chain_rows(blob: dict) -> list[list[str]]:
    """Rows of a molecular chain result (benchmarks/aldp.py, benchmarks/lj13.py)."""
    rows = []
    recipe = blob.get("recipe")
    for loss, r in blob.get("results", {}).items():
        runs = r.get("delta_f_runs_kT")
        rows.append(
            [
                blob.get("system", DASH),
                loss if recipe in (None, "aldp", blob.get("system")) else f"{loss}, recipe {recipe}",
                fmt(r.get("ess_fraction")),
                f"{fmt(r.get('n_ancestors'), 'd')} / {fmt(r.get('n_ancestors_anneal'), 'd')}",
                energy_w2_cell(r),
                fmt(r.get("torsion_w2")),
                plus_minus(r.get("delta_f_kT"), r.get("delta_f_err_kT")),
                ", ".join(fmt(v, ".1f") for v in runs) if runs else DASH,
                plus_minus(r.get("reference_delta_f_kT"), r.get("reference_delta_f_err_kT")),
                fmt(r.get("train_seconds"), ".0f"),
                fmt(r.get("sample_seconds"), ".0f"),
            ]
        )
    return rows


def peptide_rows(blob: dict) -> list[list[str]]:
    """Rows of benchmarks/peptides.py: one per peptide and objective, per-residue numbers joined."""
    rows = []
    anchors = blob.get("published_anchors", {})
    for loss, r in blob.get("results", {}).items():
        residues = r.get("per_residue") or {}
        rows.append(
            [
                blob.get("system", DASH),
                loss,
                fmt(r.get("ess_fraction")),
                energy_w2_cell(r),
                fmt(r.get("torsion_w2")),
                ", ".join(f"{k} {fmt(v.get('torsion_w2'))}" for k, v in residues.items()) or DASH,
                ", ".join(
                    f"{k} {plus_minus(v.get('delta_f_kT'), v.get('delta_f_err_kT'))} "
                    f"({plus_minus(v.get('reference_delta_f_kT'), v.get('reference_delta_f_err_kT'))})"
                    for k, v in residues.items()
                )
                or DASH,
                fmt(r.get("train_seconds"), ".0f"),
                fmt(r.get("sample_seconds"), ".0f"),
                f"{fmt(anchors.get('energy_w2'))} / {anchors.get('ess_fraction', DASH)}",
            ]
        )
    return rows


def composition_rows(blob: dict) -> list[list[str]]:
    """Rows of benchmarks/composition.py: one per set of component models."""
    rows = []
    for name, r in blob.get("results", {}).items():
        p, m = r["product"], r["mixture"]
        rows.append(
            [
                name,
                fmt(r.get("train_seconds"), ".0f"),
                f"{plus_minus(p['left'], p['left_err'], '.3f')} ({fmt(p['exact_left'])})",
                plus_minus(p["log_z_error"], p["log_z_err"]),
                f"{plus_minus(m['left'], m['left_err'], '.3f')} ({fmt(m['exact_left'])})",
                plus_minus(m["log_z_error"], m["log_z_err"]),
            ]
        )
    return rows


def _spread(values: list[float]) -> str:
    """Mean ± half the range (the mean alone for one value)."""
    values = [v for v in values if v is not None]
    if not values:
        return DASH
    mean = sum(values) / len(values)
    return fmt(mean) if len(values) == 1 else f"{fmt(mean)} ± {fmt((max(values) - min(values)) / 2)}"


def _mean(values: list[float], spec: str = ".2f") -> str:
    values = [v for v in values if v is not None]
    return fmt(sum(values) / len(values), spec) if values else DASH


def gmm_groups(blob: dict) -> dict:
    """gmm_modes results grouped by (case, method), in the order they appear."""
    groups: dict = {}
    for r in blob.get("results", []):
        groups.setdefault((r["case"], r["method"]), []).append(r)
    return groups


def gmm_rows(blob: dict) -> list[list[str]]:
    """Rows of benchmarks/gmm_modes.py: one per (case, method), averaged over seeds."""
    rows = []
    for (case, method), rs in gmm_groups(blob).items():
        ess = {
            t: _mean([e["ess_fraction"] for r in rs for e in r["final"]["marginal_ess"] if e["t"] == t])
            for t in (1e-3, 0.1, 1.0)
        }
        rows.append(
            [
                case,
                method,
                str(len(rs)),
                f"{rs[0]['steps']} × {rs[0]['batch_size']}",
                _mean([r.get("wall_s") for r in rs], ".0f"),
                _spread([r["final"]["mode_weights"]["max_relative_error"] for r in rs]),
                _mean([r["final"]["chain"]["loss"] for r in rs]),
                ess[1e-3],
                ess[0.1],
                ess[1.0],
            ]
        )
    return rows


def bridge_rows(blob: dict) -> list[list[str]]:
    """Row of benchmarks/bridge.py (or ``boltzgen bench bridge -o``)."""
    return [
        [
            blob.get("system", DASH),
            blob.get("platform", DASH),
            fmt(blob.get("n_workers"), "d"),
            fmt(blob.get("batch"), "d"),
            fmt(blob.get("bridge_per_s"), ".0f"),
            fmt(blob.get("plain_loop_per_s"), ".0f"),
            fmt(blob.get("speedup_vs_plain_loop"), ".2f"),
            fmt(blob.get("fraction_of_limit")),
            fmt(blob.get("fraction_of_single_context_limit")),
        ]
    ]


def train_cost_rows(blob: dict) -> list[list[str]]:
    """Row of benchmarks/train_cost.py (one process, three objectives)."""
    return [
        [
            blob.get("net", DASH),
            fmt(blob.get("batch"), "d"),
            fmt(blob.get("k"), "d"),
            fmt(blob.get("threads"), "d"),
            fmt(blob.get("seconds_per_step_dsm"), ".2f"),
            fmt(blob.get("seconds_per_step_dsm_diffclf"), ".2f"),
            fmt(blob.get("ratio"), ".2f"),
            fmt(blob.get("seconds_per_step_dsm_diffclf_one"), ".2f"),
            fmt(blob.get("ratio_one_sample"), ".2f"),
            fmt(blob.get("seconds_per_step_full_recipe"), ".2f"),
            fmt(blob.get("ratio_full_recipe"), ".2f"),
        ]
    ]


def train_processes_rows(blob: dict) -> list[list[str]]:
    """Row of benchmarks/train_cost.py --processes P."""
    return [
        [
            fmt(blob.get("batch"), "d"),
            fmt(blob.get("processes"), "d"),
            fmt(blob.get("cpu_count"), "d"),
            fmt(blob.get("seconds_per_step_one_process")),
            fmt(blob.get("seconds_per_step_processes")),
            fmt(blob.get("speedup"), ".2f"),
        ]
    ]


def replica_threads_rows(blob: dict) -> list[list[str]]:
    """Rows of benchmarks/replica_threads.py: one per system."""
    return [
        [
            r.get("system", "–"),
            fmt(r.get("atoms"), "d"),
            r.get("platform", "–"),
            fmt(r.get("replicas"), "d"),
            fmt(r.get("cores"), "d"),
            fmt(r.get("seconds_sequential"), ".2f"),
            fmt(r.get("seconds_threads"), ".2f"),
            fmt(r.get("speedup"), ".2f"),
            "yes" if r.get("identical_frames") else "no",
        ]
        for r in blob.get("results", [])
    ]


def _md_solvation(md: dict) -> str:
    """The OpenMM-only cell: MBAR over the λ states (BAR on the ends beside it), or BAR alone."""
    value = plus_minus(md.get("delta_f_kT"), md.get("delta_f_err_kT"))
    if md.get("method") == "mbar":
        ends = md.get("bar_ends", {})
        return (
            f"{value} (MBAR, {len(md.get('lambdas', []))} λ states; BAR on the ends "
            f"{plus_minus(ends.get('delta_f_kT'), ends.get('delta_f_err_kT'))})"
        )
    return f"{value} (BAR; one-sided {fmt(md.get('exp_forward_kT'), '.2f')} / {fmt(md.get('exp_reverse_kT'), '.2f')})"


def free_energies_rows(blob: dict) -> list[list[str]]:
    """Rows of benchmarks/free_energies.py: solvation and temperature transfer, model against MD."""
    s, t = blob.get("solvation", {}), blob.get("transfer", {})
    train = blob.get("train_seconds")

    def seconds(d):
        return fmt(d.get("seconds"), ".0f")

    rows = []
    if s:
        m, md = s["model"], s["md"]
        rows.append(
            [
                "ΔF(vacuum → OBC)",
                f"{plus_minus(m.get('delta_f_kT'), m.get('delta_f_err_kT'))} (BAR on its samples "
                f"{plus_minus(m['bar'].get('delta_f_kT'), m['bar'].get('delta_f_err_kT'))})",
                f"{seconds(m)} + {fmt(train, '.0f')} training",
                _md_solvation(md),
                seconds(md),
            ]
        )
    if t:
        m, md = t["model"], t["remd"]
        rows.append(
            [
                f"ΔF(φ>0 − φ<0) at {fmt(blob.get('hot_K'), 'g')} K",
                f"{plus_minus(m.get('delta_f_kT'), m.get('delta_f_err_kT'))} (ESS {fmt(m.get('ess_fraction'), '.2f')})",
                f"{seconds(m)} + {fmt(train, '.0f')} training",
                f"{plus_minus(md.get('delta_f_kT'), md.get('delta_f_err_kT'))} (runs "
                + ", ".join(fmt(v, ".2f") for v in md.get("runs_kT", []))
                + ")",
                seconds(md),
            ]
        )
    return rows


def cost_scaling_rows(blob: dict) -> list[list[str]]:
    """Rows of benchmarks/cost_scaling.py: one per system (a failed system names its error)."""
    rows = []
    for r in blob.get("rows", []):
        if "error" in r:
            rows.append([r.get("name", DASH), f"failed: {r['error']}"] + [DASH] * 8)
            continue
        per_config = r.get("train_s_per_step_per_config")
        levels = r.get("smc_anneal_levels") or []
        rows.append(
            [
                r.get("name", DASH),
                fmt(r.get("n_atoms"), "d"),
                fmt(r.get("batch_size"), "d"),
                fmt(r.get("params"), "d"),
                fmt(r.get("train_s_per_step"), ".3f"),
                fmt(None if per_config is None else 1e3 * per_config, ".2f"),
                fmt(r.get("smc_s_per_particle"), ".3f"),
                " / ".join(fmt(v, "d") for v in levels) if levels else DASH,
                f"{fmt(r.get('train_hours_default_steps'), '.2f')} ({fmt(r.get('default_steps'), 'd')})",
                f"{fmt(r.get('threads'), 'd')} / {fmt(r.get('cpu_count'), 'd')}",
            ]
        )
    return rows


def eval_chunks_rows(blob: dict) -> list[list[str]]:
    """Rows of benchmarks/eval_chunks.py: one per system and chunk size."""
    rows = []
    for r in blob.get("systems", []):
        n = int(r["n_atoms"])
        for chunk, seconds in r["seconds_per_config"].items():
            label = chunk
            if int(chunk) == r["default_chunk"]:
                label += " (default)"
            elif int(chunk) == blob.get("fixed_chunk"):
                label += " (fixed, before)"
            rows.append(
                [
                    f"{r['system']} ({n}{', radius graph' if r.get('graph') == 'radius' else ''})",
                    label,
                    DASH if r.get("graph") == "radius" else str(int(chunk) * n * n),
                    fmt(1e3 * seconds, ".3f"),
                    fmt(r["ratio_to_default"][chunk], ".2f"),
                ]
            )
    return rows


def allocator_rows(blob: dict) -> list[list[str]]:
    """Rows of benchmarks/allocator.py: one per allocator setting."""
    return [
        [
            name,
            fmt(m["wall_s"], ".0f"),
            fmt(m["user_s"], ".0f"),
            fmt(m["system_s"], ".0f"),
            fmt(m["minor_page_faults"] / 1e6, ".2f"),
            fmt(blob["wall_ratio_to_tuned"][name], ".2f"),
            "yes" if blob.get("identical_samples") else "no",
        ]
        for name, m in blob.get("settings", {}).items()
    ]


def path_ess_rows(blob: dict) -> list[list[str]]:
    """Rows of benchmarks/path_ess.py: one per run directory (ESS fraction at each reported t, and
    the run's low-noise diagnostics)."""
    return [
        [
            os.path.basename(r["run_dir"].rstrip("/")) or r["run_dir"],
            ", ".join(f"t = {t}: {fmt(v)}" for t, v in r["ess_fraction_at_t"].items()),
            f"{fmt(r.get('energy_gap_std_kT'), '.2f')} ({fmt(r.get('energy_gap_std_worst_state_kT'), '.2f')})",
            fmt(r.get("dF_error_kT"), ".2f"),
            fmt(r.get("intact_fraction_t_min"), ".2f"),
            "; ".join(
                f"{w['levels']} {w['spacing']}: " + " / ".join(f"{x['loss']:.2f}" for x in w["loss_per_stretch"])
                for w in r.get("weight_loss", [])
            )
            or DASH,
        ]
        for r in blob.get("runs", [])
    ]


def marginal_error_rows(blob: dict) -> list[list[str]]:
    """Rows of benchmarks/marginal_error.py: one per run directory."""
    rows = []
    for r in blob.get("runs", []):
        spread = r.get("estimate_spread", {})
        rows.append(
            [
                os.path.basename(r["run_dir"].rstrip("/")) or r["run_dir"],
                ", ".join(
                    f"t = {t}: {fmt(v, '.2f')} (±{fmt(spread.get(t), '.2f')})" for t, v in r["marginal_std_kT"].items()
                ),
                ", ".join(f"{k}: {v}" for k, v in (r.get("state_counts") or {}).items()) or DASH,
                _state_df_errors(r.get("marginal_std_kT_per_state") or {}),
            ]
        )
    return rows


def _state_df_errors(per_state: dict) -> str:
    """ "t = …: state +x.xx, …" from the ``marginal_dF_error_kT_t<t>_<state>`` keys (— without)."""
    prefix = "marginal_dF_error_kT_t"
    cells = []
    for key, value in per_state.items():
        if key.startswith(prefix):
            t, state = key[len(prefix) :].split("_", 1)
            cells.append(f"t = {t}: {state} {value:+.2f}")
    return ", ".join(cells) or DASH


def sample_quality_rows(blob: dict) -> list[list[str]]:
    """Rows of benchmarks/sample_quality.py: one per run directory and sampler setting."""
    rows = []
    for r in blob.get("runs", []):
        for s in r.get("settings", []):
            terms = s.get("sample_term_excess_kT") or {}
            rows.append(
                [
                    os.path.basename(r["run_dir"].rstrip("/")) or r["run_dir"],
                    f"{s['mcmc_steps']} moves, {s['spacing']}, t_min {r['t_min']:g}",
                    f"{fmt(s['sample_energy_excess_kT'], '.1f')} / {fmt(s['sample_energy_excess_p90_kT'], '.1f')}",
                    ", ".join(f"{k} {v:.1f}" for k, v in terms.items()) or DASH,
                    fmt(s.get("wall_ratio"), ".2f"),
                ]
            )
    return rows


def smc_lineages_rows(blob: dict) -> list[list[str]]:
    """Rows of benchmarks/smc_lineages.py: one per seed (basin shares and ancestors stage by stage)."""
    ref = blob["reference"]
    basins = blob["basins"]

    def shares(stage: dict) -> str:
        return " / ".join(fmt(stage[b][0], ".3f") for b in basins)

    def ancestors(stage: dict) -> str:
        return "/".join(str(stage[b][2]) for b in basins)

    rows = []
    for r in blob.get("runs", []):
        st = r["stages"]
        per_state = r.get("lineage_ess_states") or {}
        rows.append(
            [
                f"{blob['label']} ({os.path.basename(blob['run_dir'].rstrip('/'))}, {blob['system']})",
                str(r["seed"]),
                f"{shares(st['diffusion end'])}; {shares(st['beta=1'])}; {shares(st['final'])}",
                f"{ancestors(st['diffusion end'])} → {ancestors(st['beta=1'])} → {ancestors(st['final'])}",
                f"{fmt(r['lineage_ess'], '.1f')} ({fmt(per_state.get('phi<0'), '.1f')} / {fmt(per_state.get('phi>0'), '.1f')})",
                fmt(r.get("delta_f_kT"), ".2f"),
                f"{' / '.join(fmt(v, '.3f') for v in ref['basin_shares'])}; {fmt(ref['anchor_delta_f_kT'], '.2f')}",
                fmt(r.get("seconds"), ".0f"),
            ]
        )
    return rows


def quickstart_rows(blob: dict) -> list[list[str]]:
    """Row of ``boltzgen quickstart``'s metrics.json."""
    recipe = "--fast" if blob.get("fast") else "--long" if blob.get("long") else "default"
    runs = blob.get("delta_f_runs_kT")
    return [
        [
            recipe,
            plus_minus(blob.get("delta_f_kT"), blob.get("delta_f_err_kT")),
            ", ".join(fmt(v, ".1f") for v in runs) if runs else DASH,
            fmt(blob.get("ess_fraction"), ".2f"),
            fmt(blob.get("energy_w2"), ".2f"),
            fmt(blob.get("torsion_w2"), ".2f"),
            fmt(blob.get("total_seconds"), ".0f"),
        ]
    ]


def versus_md_rows(blob: dict) -> list[list[str]]:
    """Rows of benchmarks/versus_md.py: one per seed, then the arms' bias, spread and RMS error."""
    rows = []
    for row in blob.get("seeds", []):
        p, m = row["pipeline"], row["remd"]
        rows.append(
            [
                str(row["seed"]),
                fmt(p.get("seconds"), ".0f"),
                plus_minus(p.get("delta_f_kT"), p.get("delta_f_err_kT")),
                plus_minus(m.get("delta_f_kT"), m.get("delta_f_err_kT")),
                f"{m.get('frames_equal_time', m.get('frames_per_run', DASH))} ({m.get('frames_per_run', DASH)})",
                fmt(m.get("reference_kT"), ".2f"),
            ]
        )
    ref = blob.get("reference", {})
    for arm, label in (("pipeline", "boltzgen"), ("remd", "REMD")):
        s = blob.get("summary", {}).get(arm, {})
        rows.append(
            [
                f"{label}: bias / spread / RMS",
                DASH,
                f"{fmt(s.get('bias_kT'), '.2f')} / {fmt(s.get('spread_kT'), '.2f')} / {fmt(s.get('rmse_kT'), '.2f')}",
                plus_minus(ref.get("delta_f_kT"), ref.get("delta_f_err_kT")),
                DASH,
                DASH,
            ]
        )
    return rows


def md_budget_rows(blob: dict) -> list[list[str]]:
    """Rows of benchmarks/md_budget.py: replica exchange at each run length, then each boltzgen recipe
    at its pipeline's wall time with replica exchange's fitted error at the same wall clock."""
    rows = []
    for r in blob.get("remd", []):
        rows.append(
            [
                f"replica exchange ({r['runs']} runs, {r['pairs']} pairs)",
                fmt(r.get("wall_s"), ".0f"),
                str(r["frames_per_run"]),
                fmt(r.get("single_rms_kT"), ".2f"),
                fmt(r.get("pair_rms_kT"), ".2f"),
                f"{fmt(r.get('single_bias_kT'), '.2f')} / {DASH}",
                DASH,
                fmt(r.get("fit_pair_kT"), ".2f"),
            ]
        )
    for p in blob.get("boltzgen", []):
        rows.append(
            [
                f"boltzgen {p['label']} ({len(p['delta_f_kT'])} seeds)",
                fmt(p.get("seconds"), ".0f"),
                str(p.get("remd_frames_per_run", DASH)),
                DASH,
                fmt(p.get("rmse_kT"), ".2f"),
                f"{fmt(p.get('bias_kT'), '.2f')} / {fmt(p.get('spread_kT'), '.2f')}",
                fmt(p.get("runs_implied_sd_kT"), ".2f"),
                fmt(p.get("remd_fit_pair_kT"), ".2f"),
            ]
        )
    return rows


def run_pooling_rows(blob: dict) -> list[list[str]]:
    """Rows of benchmarks/run_pooling.py: one per case, the exact ΔF, the bias and RMS error of
    each estimate (Ẑ-weighted and equal pooling, the jackknife), E[Ẑ_state] / Z_state and how often
    the two bootstrap errors cover the exact ΔF."""
    rows = []
    for r in blob.get("rows", []):
        ratios = r.get("z_state_ratio") or {}
        rows.append(
            [
                f"d {r['d']}, shift {r['shift']:g}, width {r['width']:g}, {r['anneal_moves']} moves per level"
                + (f", diffusion.particle_factor {r['particle_factor']}" if r.get("particle_factor", 1) > 1 else ""),
                str(r["particles_per_run"]),
                f"{blob.get('runs')} × {blob.get('groups')}",
                fmt(r.get("truth_kT"), ".3f"),
                *(
                    f"{fmt(r[k]['bias_kT'], '+.2f')} / {fmt(r[k]['rmse_kT'], '.2f')}" if k in r else DASH
                    for k in ("z_weighted", "equal", "jackknife")
                ),
                fmt(r.get("median_sd_log_z_runs"), ".2f"),
                " / ".join(f"{fmt(v['mean'], '.3f')} ± {fmt(v['se'], '.3f')}" for v in ratios.values()) or DASH,
                *(
                    f"{fmt(c['within_1'], '.2f')} / {fmt(c['within_2'], '.2f')} (median {fmt(c['median_error_kT'], '.2f')})"
                    if c
                    else DASH
                    for c in ((r.get("error_coverage") or {}).get(k) for k in ("runs", "lineages"))
                ),
            ]
        )
    return rows


def particle_factor_rows(blob: dict) -> list[list[str]]:
    """Rows of benchmarks/particle_factor.py: one per factor k."""
    rows = []
    for r in blob.get("rows", []):
        c, b = r["rare_weight"], r["within_state_share"]
        rows.append(
            [
                str(r["particle_factor"]),
                f"{blob.get('runs')} × {blob.get('particles')}",
                f"{c['mean']:.4f} ± {c['se']:.4f} ({c['exact']:.3f})",
                f"{b['mean']:.3f} ± {b['se']:.3f} ({b['exact']:.3f})",
                fmt(r.get("mean_ancestors"), ".1f"),
                fmt(r.get("seconds_per_run"), ".2f"),
                f"{fmt(c.get('cost_ratio'), '.2f')} / {fmt(b.get('cost_ratio'), '.2f')}",
            ]
        )
    return rows


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: how to recognise its JSON and how to tabulate it.

    Attributes
    ----------
    name : str
        Key in ``recorded.json`` and heading of its section.
    command : str
        The command that writes its JSON (with the default output path).
    columns : list of str
        Table header.
    rows : callable
        ``rows(blob) -> list[list[str]]``.
    matches : callable
        ``matches(blob) -> bool``: whether a JSON object came from this benchmark.
    anchors : str
        What the numbers should be compared with.
    """

    name: str
    command: str
    columns: list
    rows: Callable[[dict], list]
    matches: Callable[[dict], bool]
    anchors: str = ""


with open(os.path.join(HERE, "anchors.json"), encoding="utf-8") as _fh:
    #: The published numbers of benchmarks/anchors.json (the one place they are written).
    ANCHORS = json.load(_fh)
#: Published ESS / energy W2 (kT) / torsion W2 (rad) of flows on aldp-implicit, for the aldp
#: section's anchors and the README's aldp-implicit row.
PUBLISHED_FLOWS = {
    flow: " / ".join(str(ANCHORS["aldp-implicit"][flow][k]) for k in ("ess_fraction", "energy_w2", "torsion_w2"))
    for flow in ("ECNF++", "FALCON")
}

CHAIN_COLUMNS = [
    "system",
    "objective",
    "ESS fraction",
    "ancestors (t = 1 / annealing)",
    "energy W2 (kT)",
    "torsion W2 (rad)",
    "ΔF (kT)",
    "ΔF per run (kT)",
    "reference ΔF (kT)",
    "train s",
    "SMC s",
]

BENCHMARKS = [
    Benchmark(
        "gmm_modes",
        "python benchmarks/gmm_modes.py  # -> bench-results/gmm_modes.json",
        [
            "case",
            "method",
            "seeds",
            "steps × batch",
            "train s",
            "max rel. error of mode weights",
            "chain CE (chance 4.85)",
            "ESS t = 1e-3",
            "ESS t = 0.1",
            "ESS t = 1",
        ],
        gmm_rows,
        lambda b: b.get("benchmark") == "gmm_modes",
        "exact mode weights (error 0); chain classification loss over 128 levels: chance ln 128 = 4.85, "
        "the DiffCLF paper's gmm-40 in 128-D: 383.5 (DSM) against 4.40 (DSM + DiffCLF)",
    ),
    Benchmark(
        "aldp",
        "python benchmarks/aldp.py  # -> bench-results/aldp.json",
        CHAIN_COLUMNS,
        chain_rows,
        lambda b: str(b.get("benchmark", "")).startswith("aldp") and b.get("benchmark", "").endswith("chain"),
        "ΔF(φ > 0 vs φ < 0) of a 10 000-frame replica-exchange reference (in the table); published "
        "flows trained on GPU for aldp-implicit: ECNF++ ESS {}, energy W2 {} kT, torsion W2 {} rad; "
        "FALCON {}".format(*PUBLISHED_FLOWS["ECNF++"].split(" / "), PUBLISHED_FLOWS["FALCON"]),
    ),
    Benchmark(
        "lj13",
        "python benchmarks/lj13.py  # -> bench-results/lj13.json",
        CHAIN_COLUMNS,
        chain_rows,
        lambda b: b.get("benchmark") == "lj13 chain",
        "energy W2 against a 10 000-sample MALA reference",
    ),
    Benchmark(
        "lj55",
        "python benchmarks/lj55.py  # -> bench-results/lj55.json",
        CHAIN_COLUMNS,
        chain_rows,
        lambda b: b.get("benchmark") == "lj55 chain",
        "energy W2 against a 5000-sample MALA reference; published samplers trained from the energy alone "
        "(GPU): energy W2 {}".format(ANCHORS["lj55"]["energy_w2"].replace("-", "–")),
    ),
    Benchmark(
        "peptides",
        "python benchmarks/peptides.py --system ala3  # -> bench-results/peptides-ala3.json",
        [
            "system",
            "objective",
            "ESS fraction",
            "energy W2 (kT)",
            "torsion W2 (rad)",
            "torsion W2 per residue (rad)",
            "ΔF(φ>0 − φ<0) per residue, kT (reference)",
            "train s",
            "SMC s",
            "published energy W2 / ESS",
        ],
        peptide_rows,
        lambda b: b.get("benchmark") in ("ala3 chain", "ala4 chain", "ala6 chain"),
        "against a 5000-frame replica-exchange reference of each peptide (the system's ladder); the published "
        "anchors are a discrete-time flow trained on GPU, not the same protocol",
    ),
    Benchmark(
        "composition",
        "python benchmarks/composition.py  # -> bench-results/composition.json",
        [
            "component models",
            "train s",
            "product p_A·p_B: weight of x < 0 (exact)",
            "product: log Z − exact",
            "mixture ½p_A + ½p_B: weight of x < 0 (exact)",
            "mixture: log Z − exact",
        ],
        composition_rows,
        lambda b: b.get("benchmark") == "composition",
        "two 2-D mixtures with modes at x = ±4 and weights (2/3, 1/3) and (1/4, 3/4); the exact models through "
        "the same SMC are the control",
    ),
    Benchmark(
        "bridge",
        "python benchmarks/bridge.py --out bench-results/bridge.json",
        [
            "system",
            "platform",
            "workers",
            "batch",
            "bridge /s",
            "plain loop /s",
            "speedup vs plain loop",
            "fraction of limit",
            "fraction of single-Context limit",
        ],
        bridge_rows,
        lambda b: "bridge_per_s" in b,
        "goals: speedup ≥ 1.6 over the plain single-Context loop; ≥ 0.7 of the limit (cores × the bare "
        "getState rate per core with all cores busy)",
    ),
    Benchmark(
        "train_cost",
        "python benchmarks/train_cost.py  # -> bench-results/train_cost.json",
        [
            "net",
            "batch",
            "k",
            "threads",
            "s/step DSM",
            "s/step DSM + DiffCLF (all)",
            "ratio",
            "s/step DSM + DiffCLF (one)",
            "ratio (one)",
            "s/step forces + pin + DiffCLF (one)",
            "ratio (full recipe)",
        ],
        train_cost_rows,
        lambda b: "seconds_per_step_dsm" in b,
        "the DiffCLF paper's full binary form costs about 1.5× a DSM step; aim for the one-sample form: ≤ 1.3×, "
        "and for the full physics-informed recipe (target score matching, energy pin, one-sample DiffCLF): ≤ 1.5×",
    ),
    Benchmark(
        "train_processes",
        "python benchmarks/train_cost.py --processes 2 --batch 64 --steps 60 --out bench-results/train_processes.json",
        ["batch", "processes", "cores", "s/step one process (P threads)", "s/step P processes", "speedup"],
        train_processes_rows,
        lambda b: "seconds_per_step_processes" in b,
        "speedup > 1: data-parallel wins",
    ),
    Benchmark(
        "replica_threads",
        "python benchmarks/replica_threads.py  # -> bench-results/replica_threads.json",
        ["system", "atoms", "platform", "replicas", "cores", "s sequential", "s threads", "speedup", "same frames"],
        replica_threads_rows,
        lambda b: b.get("benchmark") == "replica_threads",
        "1 (the Reference platform steps its replicas one after another); the same frames either way",
    ),
    Benchmark(
        "Free energies between targets",
        "python benchmarks/free_energies.py --model RUN_DIR  # -> bench-results/free_energies.json",
        ["quantity", "model route (kT)", "model s", "plain MD route (kT)", "MD s"],
        free_energies_rows,
        lambda b: b.get("benchmark") == "free_energies",
        "alanine dipeptide, a model trained on 300 K vacuum data by the quickstart recipe; the plain MD "
        "route: replica exchange at both ends and at intermediate states of the linear λ path, MBAR (solvation), replica exchange at the new temperature "
        "(transfer); the issue's goals: the model within 0.3 kT (solvation) and 0.5 kT (400 K) of them",
    ),
    Benchmark(
        "Cost against system size",
        "python benchmarks/cost_scaling.py  # -> bench-results/cost_scaling.json",
        [
            "system",
            "atoms",
            "batch",
            "parameters",
            "s/step",
            "ms/step per configuration",
            "SMC s/particle",
            "annealing levels (N1 / N2 particles)",
            "train h at the default steps (steps)",
            "threads / cores",
        ],
        cost_scaling_rows,
        lambda b: b.get("benchmark") == "cost_scaling",
        "each system's own training defaults (the peptides without a shipped file get "
        "boltzgen.config.derived_defaults: the batch scaled by (22/N)²) and the default SMC settings, costs from "
        "the difference of two runs of different sizes; per configuration the fully connected EGNN's "
        "messages grow as N² (lj55's radius graph: as N); the CPU limit lies where the default number of "
        "training steps passes a working day (8 h); the adaptive annealing of a barely trained model runs "
        "up to its cap of levels, so SMC costs are upper bounds",
    ),
    Benchmark(
        "eval_chunks",
        "python benchmarks/eval_chunks.py  # -> bench-results/eval_chunks.json",
        [
            "system (atoms)",
            "chunk (configurations)",
            "atom pairs per chunk",
            "ms per configuration",
            "ratio to the default",
        ],
        eval_chunks_rows,
        lambda b: b.get("benchmark") == "eval_chunks",
        "the samplers' CPU default chunk is boltzgen.sampling.sde.cpu_eval_chunk: CPU_EVAL_PAIRS atom pairs' "
        "worth of configurations; one thread per process",
    ),
    Benchmark(
        "allocator",
        "python benchmarks/allocator.py RUN_DIR  # -> bench-results/allocator.json",
        [
            "malloc thresholds",
            "wall s",
            "user CPU s",
            "system CPU s",
            "minor page faults (millions)",
            "wall time / tuned",
            "identical samples",
        ],
        allocator_rows,
        lambda b: b.get("benchmark") == "allocator",
        "the quickstart's default SMC stage on a trained model; 'tuned' is boltzgen.allocator.tune_malloc, "
        "which the boltzgen command, the SMC and training apply",
    ),
    Benchmark(
        "path_ess",
        "python benchmarks/path_ess.py RUN_DIR  # -> bench-results/path_ess.json",
        [
            "run",
            "ESS fraction of the unresampled path weights",
            "std(E − u) at t_min, kT (worst state)",
            "model's state ΔF error, kT",
            "intact molecules at t_min",
            "−log cESS summed over t = 1–0.36 / 0.36–0.09 / 0.09–0.04 / 0.04–0.01 / 0.01–t_min, resampling at every level",
        ],
        path_ess_rows,
        lambda b: isinstance(b.get("runs"), list) and "n_particles" in b,
        "exact marginals keep ESS fraction 1 down to t_min; the issue's goal for the spread of E(x, t_min) − u(x) "
        "on held-out 300 K frames: ≤ 1 kT within each state",
    ),
    Benchmark(
        "marginal_error",
        "python benchmarks/marginal_error.py RUN_DIR --data DATA.h5  # -> bench-results/marginal_error.json",
        [
            "run",
            "std(E(y, t) + log p_t(y)) over noisy target frames, kT (the estimate's own spread)",
            "frames per state",
            "model's own state free energy minus the target's, kT",
        ],
        marginal_error_rows,
        lambda b: isinstance(b.get("runs"), list) and "times" in b and "data" in b,
        "the exact model has 0 at every t; SMC's hand-over from the model to the force field pays for this spread",
    ),
    Benchmark(
        "sample_quality",
        "python benchmarks/sample_quality.py RUN_DIR --data DATA.h5  # -> bench-results/sample_quality.json",
        [
            "run",
            "sampler (corrector moves per level, time grid)",
            "target energy above held-out frames, kT (median / 90th percentile)",
            "median excess per term class, kT",
            "wall time vs the first setting",
        ],
        sample_quality_rows,
        lambda b: b.get("benchmark") == "sample_quality",
        "a model whose reverse diffusion ends on the target has 0; the excess is what the hand-over "
        "to the force field has to reweight away",
    ),
    Benchmark(
        "smc_lineages",
        "python benchmarks/smc_lineages.py RUN_DIR --reference REF.h5  # -> bench-results/smc_lineages.json",
        [
            "setting (run, system)",
            "seed",
            "weight of β/PII / α_R / φ>0: end of diffusion (denoised); β = 1; after the final moves",
            "distinct t = 1 ancestors per basin: end of diffusion → β = 1 → final",
            "lineage ESS (φ<0 / φ>0)",
            "ΔF φ>0 − φ<0 (kT)",
            "reference: basin weights; ΔF (kT)",
            "SMC s",
        ],
        smc_lineages_rows,
        lambda b: b.get("benchmark") == "smc_lineages",
        "the reference's basin weights and ΔF; an estimate that rests on a few lineages per state scatters "
        "between seeds by more than its own bootstrap shows",
    ),
    Benchmark(
        "run_pooling",
        "python benchmarks/run_pooling.py  # -> bench-results/run_pooling.json",
        [
            "case (wrong model of a 97 : 3 two-mode mixture)",
            "particles per run",
            "runs × repetitions",
            "exact ΔF (kT)",
            "Ẑ-weighted pooling: bias / RMS error of ΔF (kT)",
            "equal run weights: bias / RMS error (kT)",
            "jackknife over the runs: bias / RMS error (kT)",
            "median spread of log Ẑ between runs",
            "E[Ẑ] / Z of one run: common / rare state",
            "error by the bootstrap over runs: share within 1 / 2 errors of the exact ΔF",
            "error by the bootstrap over lineages: share within 1 / 2 errors",
        ],
        run_pooling_rows,
        lambda b: b.get("benchmark") == "run_pooling",
        "the exact ΔF of the two states (the sides of the plane between the modes, which both "
        "components overlap): 3.356 kT; boltzgen sample pools its runs by Ẑ (boltzgen.weights.pool_runs) "
        "and reports the jackknife beside it; a calibrated standard error covers 0.68 / 0.95",
    ),
    Benchmark(
        "particle_factor",
        "python benchmarks/particle_factor.py  # -> bench-results/particle_factor.json",
        [
            "diffusion.particle_factor k",
            "runs × particles",
            "rare mode's weight: mean ± SE (exact)",
            "share within its state: mean ± SE (exact)",
            "ancestors at t = 1",
            "s per run",
            "cost of an error vs k = 1 (SE² × s): rare / within",
        ],
        particle_factor_rows,
        lambda b: b.get("benchmark") == "particle_factor",
        "exact weights of the three-mode mixture; the quickstart's SMC settings with a wrong model",
    ),
    Benchmark(
        "quickstart",
        "boltzgen quickstart -o bench-results/quickstart  # -> metrics.json there",
        [
            "recipe",
            "ΔF φ>0 vs φ<0 (kT)",
            "ΔF per run (kT)",
            "ESS fraction",
            "energy W2 (kT)",
            "torsion W2 (rad)",
            "wall s",
        ],
        quickstart_rows,
        # `boltzgen quickstart` says so; workflow.quickstart's metrics.json has its stage timings and files
        lambda b: b.get("command") == "quickstart" or ("stage_seconds" in b and "files" in b),
        "ΔF of every replica-exchange run of benchmarks/versus_md.py pooled (its table below); the rows "
        "before the eleventh session were compared with a 10 000-frame reference of benchmarks/aldp.py, "
        "4.28 ± 0.31 kT",
    ),
    Benchmark(
        "versus_md",
        "python benchmarks/versus_md.py  # -> bench-results/versus_md.json",
        [
            "seed",
            "wall s",
            "boltzgen ΔF (kT)",
            "REMD ΔF (kT), same wall clock, 2 runs",
            "REMD frames per run in that wall clock (run)",
            "reference (kT)",
        ],
        versus_md_rows,
        lambda b: "seeds" in b and "remd_frames_per_second" in b,
        "goal: boltzgen's ΔF error (bias and spread over seeds) no worse than replica exchange given the "
        "same wall clock on the same cores; reference: every replica-exchange run of the benchmark pooled "
        "(an arm's own runs left out of its reference)",
    ),
    Benchmark(
        "md_budget",
        "python benchmarks/md_budget.py --remd RUN.h5 ... --point LABEL SECONDS METRICS.json ...  # -> bench-results/md_budget.json",
        [
            "arm",
            "wall s",
            "REMD frames per run (in that wall clock)",
            "RMS error, one run (kT)",
            "RMS error, two runs / the pipeline (kT)",
            "bias / spread over seeds (kT)",
            "sd implied by the SMC runs (kT)",
            "REMD at that wall clock, two runs, √n fit (kT)",
        ],
        md_budget_rows,
        lambda b: b.get("benchmark") == "md_budget",
        "the pool of every replica-exchange run given (each run compared with the pool of the others); "
        "goal as versus_md: boltzgen's error no worse than replica exchange's at the same wall clock",
    ),
]
PATH_ESS_RECORDED_COLUMNS = [
    "run",
    "t = 0.36",
    "t = 0.25",
    "t = 0.16",
    "t = 0.09",
    "t_min",
    "std(E − u) at t_min, kT (worst state)",
    "model's state ΔF error, kT",
    "intact molecules at t_min",
    "weight loss per stretch (levels, spacing)",
]


# ----------------------------------------------------------------------------- reading
def load_results(results_dir: str) -> dict[str, list[tuple[str, dict]]]:
    """Every benchmark JSON below ``results_dir``, by benchmark name: ``{name: [(path, blob), ...]}``."""
    found: dict = {b.name: [] for b in BENCHMARKS}
    for path in sorted(glob.glob(os.path.join(results_dir, "**", "*.json"), recursive=True)):
        try:
            with open(path) as handle:
                blob = json.load(handle)
        except (OSError, ValueError):
            continue
        if not isinstance(blob, dict):
            continue
        for bench in BENCHMARKS:
            if bench.matches(blob):
                found[bench.name].append((path, blob))
                break
    return found


def load_recorded(path: str = RECORDED) -> dict:
    """The recorded numbers of ``recorded.json`` by benchmark name (empty if the file is absent)."""
    if not os.path.exists(path):
        return {}
    with open(path) as handle:
        return json.load(handle).get("benchmarks", {})


# ----------------------------------------------------------------------------- headline
def _chain(found: dict, system: str) -> Optional[dict]:
    """The newest non-smoke chain result of ``system``, or None."""
    blobs = [b for _, b in found.get("aldp", []) + found.get("lj13", []) if b.get("system") == system and not smoke(b)]
    return blobs[-1] if blobs else None


def headline(found: dict, recorded: dict) -> list[list[str]]:
    """Rows of the headline table: DSM against DSM + DiffCLF, from JSON where present, else recorded."""
    rows = []
    gmm = [b for _, b in found["gmm_modes"] if not smoke(b)]
    if gmm:
        by = {(row[0], row[1]): row for row in gmm_rows(gmm[-1])}
        src = "bench-results"
    else:
        by = {(row[0], row[1]): row for row in recorded.get("gmm_modes", {}).get("rows", [])}
        src = "recorded"
    for case, label, col, ref in (
        ("two-modes-d2", "gmm-two-modes, d = 2: max relative error of the 2 : 1 mode weights", 5, "0 (exact)"),
        ("gmm40-d128", "gmm-40, d = 128: 128-level chain classification loss", 6, "chance 4.85; paper 383.5 / 4.40"),
    ):
        dsm, clf = by.get((case, "dsm")), by.get((case, "dsm+diffclf"))
        rows.append([label, dsm[col] if dsm else "not run", clf[col] if clf else "not run", ref, f"gmm_modes ({src})"])
    rows += _aldp_headline(found, recorded)
    versus_md = _quickstart_headline(found, recorded)
    rows += versus_md
    rows += _md_budget_headline(found, recorded)
    rows += _latest_quickstart_headline(recorded, anchor=versus_md[0][3])
    return rows


def _md_budget_headline(found: dict, recorded: dict) -> list[list[str]]:
    """Each boltzgen recipe of benchmarks/md_budget.py: its RMS error over seeds at its pipeline's wall
    time (and the sd its SMC runs imply) beside replica exchange's at the same wall clock."""
    blobs = [b for _, b in found.get("md_budget", [])]
    if blobs:
        rows, src = md_budget_rows(blobs[-1]), "bench-results"
    else:
        rows, src = recorded.get("md_budget", {}).get("rows", []), "recorded"
    out = []
    for row in rows:
        match = re.match(r"boltzgen (\S+) \((\d+) seeds\)", row[0])
        if not match:
            continue
        recipe, seeds = match.groups()
        command = "`boltzgen quickstart`" if recipe == "default" else f"`boltzgen quickstart --{recipe}`"
        out.append(
            [
                f"{command}, {seeds} seeds in {row[1]} s each: RMS error of ΔF (sd its SMC runs imply), kT",
                DASH,
                f"{row[4]} ({row[6]})",
                f"{row[7]} (replica exchange, same wall clock, fit over independent runs)",
                f"md_budget ({src})",
            ]
        )
    return out


def _aldp_headline(found: dict, recorded: dict) -> list[list[str]]:
    """Alanine dipeptide in vacuum, DSM against DSM + DiffCLF (benchmarks/aldp.py), then the latest
    aldp-implicit chain beside the published flows, whose anchors are for implicit solvent."""
    blob = _chain(found, "aldp-vacuum")
    if blob is not None:
        cells = {row[1]: row for row in chain_rows(blob)}
        src = "bench-results"
    else:
        cells = {row[1]: row for row in recorded.get("aldp", {}).get("rows", []) if row[0] == "aldp-vacuum"}
        src = "recorded"
    ref = next((row[8] for row in cells.values()), DASH)
    dsm, clf = cells.get("dsm"), cells.get("dsm+diffclf")

    def quality(row):  # ESS / energy W2 / torsion W2, without the energy W2's floor
        return "not run" if row is None else " / ".join(row[col].split(" (")[0] for col in (2, 4, 5))

    rows = [
        [
            "alanine dipeptide in vacuum: ΔF(φ > 0 vs φ < 0), kT",
            dsm[6] if dsm else "not run",
            clf[6] if clf else "not run",
            f"{ref} (REMD reference)",
            f"aldp ({src})",
        ],
        [
            "alanine dipeptide in vacuum: ESS / energy W2, kT / torsion W2, rad",
            quality(dsm),
            quality(clf),
            DASH,
            f"aldp ({src})",
        ],
    ]
    blob = _chain(found, "aldp-implicit")
    if blob is not None:
        implicit, src = [r for r in chain_rows(blob) if r[1].startswith("dsm+diffclf")], "bench-results"
    else:
        implicit = [r for r in recorded.get("aldp", {}).get("rows", []) if r[0] == "aldp-implicit"]
        src = "recorded"
    if implicit:
        row = implicit[-1]
        rows.append(
            [
                "aldp-implicit, the quickstart's recipe: ESS / energy W2 / torsion W2; ΔF, kT",
                DASH,
                f"{quality(row)}; {row[6]}",
                f"ECNF++ {PUBLISHED_FLOWS['ECNF++']}, FALCON {PUBLISHED_FLOWS['FALCON']} (published GPU flows); "
                f"{row[8]} (REMD)",
                f"aldp ({src})",
            ]
        )
    return rows


def _quickstart_headline(found: dict, recorded: dict) -> list[list[str]]:
    """The comparison MD labs make (benchmarks/versus_md.py): the whole quickstart pipeline against
    replica exchange given the same wall clock, ΔF per seed and the RMS error over seeds."""
    blobs = [b for _, b in found.get("versus_md", [])]
    if blobs:
        rows, src = versus_md_rows(blobs[-1]), "bench-results"
    else:
        rows, src = recorded.get("versus_md", {}).get("rows", []), "recorded"
    seeds = [row for row in rows if not row[0].endswith("bias / spread / RMS")]
    summary = {row[0].split(":")[0]: row for row in rows if row[0].endswith("bias / spread / RMS")}
    if not seeds or "boltzgen" not in summary:
        return [
            [
                "`boltzgen quickstart` against replica exchange: ΔF(φ > 0 vs φ < 0), kT",
                DASH,
                "not run",
                DASH,
                "versus_md",
            ]
        ]
    ref = summary["boltzgen"][3]
    per_seed = ", ".join(row[2].split(" ± ")[0] for row in seeds)
    rms = {arm: summary[arm][2].split(" / ")[-1] if arm in summary else DASH for arm in ("boltzgen", "REMD")}
    return [
        [
            f"`boltzgen quickstart`, seeds {', '.join(row[0] for row in seeds)}: ΔF(φ > 0 vs φ < 0), kT",
            DASH,
            per_seed,
            f"{ref} (replica exchange, runs pooled)",
            f"versus_md ({src})",
        ],
        [
            "the same: RMS error of ΔF over seeds, kT",
            DASH,
            rms["boltzgen"],
            f"{rms['REMD']} (replica exchange, same wall clock)",
            f"versus_md ({src})",
        ],
    ]


def _latest_quickstart_headline(recorded: dict, anchor: str) -> list[list[str]]:
    """The latest whole quickstart of each seed and recipe in the recorded quickstart rows
    (labelled 'default quickstart, seed S, commit C' or 'long quickstart, seed S, commit C'), so the
    README shows what the current code gives beside versus_md's older equal-wall-clock runs."""
    rows = []
    for recipe, command in (("default", "`boltzgen quickstart`"), ("long", "`boltzgen quickstart --long`")):
        latest = {}
        for row in recorded.get("quickstart", {}).get("rows", []):
            match = re.match(rf"{recipe} quickstart, seed (\d+), commit ([0-9a-f]{{7}})", row[0])
            if match:
                latest[int(match.group(1))] = (match.group(2), row[1])
        if not latest:
            continue
        seeds = sorted(latest)
        commits = sorted({latest[s][0] for s in seeds})
        rows.append(
            [
                f"{command}, latest whole run of seeds {', '.join(map(str, seeds))}: ΔF(φ > 0 vs φ < 0), kT",
                DASH,
                "; ".join(latest[s][1] for s in seeds),
                anchor,
                f"quickstart (recorded; commits {', '.join(commits)})",
            ]
        )
    return rows


HEADLINE_COLUMNS = ["measure", "DSM", "DSM + DiffCLF", "reference / anchor", "source"]


def headline_table(found: dict, recorded: dict) -> str:
    """The headline table between its markers (the README copies this block verbatim)."""
    return "\n".join([HEADLINE_START, table(HEADLINE_COLUMNS, headline(found, recorded)), HEADLINE_END])


# ----------------------------------------------------------------------------- page
def section(bench: Benchmark, runs: list, recorded: dict, results_dir: str) -> str:
    """The markdown section of one benchmark; ``runs`` are (label, blob) pairs of its JSON files.

    Recorded numbers are shown while no JSON other than smoke runs exists.
    """
    out = [f"## {bench.name}", "", f"`{bench.command}`", ""]
    if bench.anchors:
        out += [f"Anchors: {bench.anchors}.", ""]
    for label, blob in runs:
        extra = ", ".join(str(blob[k]) for k in ("date", "machine", "boltzgen_version") if blob.get(k))
        out += [
            f"From `{label}`"
            + (f" ({extra})" if extra else "")
            + (" — smoke run, numbers meaningless" if smoke(blob) else "")
            + ":",
            "",
        ]
        out += [table(bench.columns, bench.rows(blob)), ""]
    if not runs:
        out += [
            f"Not run: no JSON of this benchmark in `{results_dir}/`.",
            "",
            table(bench.columns, [["not run"] + [DASH] * (len(bench.columns) - 1)]),
            "",
        ]
    entry = recorded.get(bench.name)
    if entry and all(smoke(blob) for _, blob in runs):
        columns = PATH_ESS_RECORDED_COLUMNS if bench.name == "path_ess" else bench.columns
        note = f" {entry['note']}." if entry.get("note") else ""
        out += [f"Recorded earlier (from stop notes; {entry['source']}).{note}", "", table(columns, entry["rows"]), ""]
    return "\n".join(out)


def render(results_dir: str, recorded_path: str = RECORDED) -> str:
    """The whole RESULTS.md page for the JSON files below ``results_dir``."""
    found, recorded = load_results(results_dir), load_recorded(recorded_path)
    shown = os.path.relpath(results_dir, ROOT) if os.path.isabs(results_dir) else results_dir
    parts = [
        "# Benchmark results",
        "",
        "Generated by `python benchmarks/results.py` from the JSON files under "
        f"`{shown}/` (git ignores that directory); do not edit by hand. Rows marked *recorded* come "
        "from `benchmarks/recorded.json`: numbers measured in earlier work sessions whose JSON was not "
        "kept, each with the note and commit it comes from. Timings depend on the machine and its load: "
        "compare ratios measured in one run.",
        "",
        "## Headline: DSM against DSM + DiffCLF",
        "",
        headline_table(found, recorded),
        "",
        "Source *recorded*: the benchmark's section below names the stop note and commit.",
        "",
    ]
    for bench in BENCHMARKS:
        runs = [(os.path.join(shown, os.path.relpath(path, results_dir)), blob) for path, blob in found[bench.name]]
        parts.append(section(bench, runs, recorded, shown))
    return "\n".join(parts).rstrip() + "\n"


def with_headline(readme: str, block: str) -> str:
    """``readme`` with the text between its headline markers replaced by ``block`` (markers included)."""
    start, end = readme.find(HEADLINE_START), readme.find(HEADLINE_END)
    if start < 0 or end < start:
        raise ValueError(f"README has no {HEADLINE_START} ... {HEADLINE_END} block")
    return readme[:start] + block + readme[end + len(HEADLINE_END) :]


def headline_block(page: str) -> str:
    """The headline block (markers included) of a RESULTS.md page."""
    start, end = page.find(HEADLINE_START), page.find(HEADLINE_END)
    return page[start : end + len(HEADLINE_END)]


def _write(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as handle:
        handle.write(text)
    os.replace(path + ".tmp", path)


def main(argv=None) -> int:
    """Command line: write (or ``--check``) RESULTS.md and the README's headline block."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--results",
        default=os.path.join(ROOT, "bench-results"),
        help="directory searched for the benchmarks' JSON files (default bench-results/)",
    )
    parser.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"), help="page to write")
    parser.add_argument(
        "--readme",
        default=os.path.join(ROOT, "README.md"),
        help="README whose headline block is replaced by the page's (default README.md)",
    )
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if --out or --readme differ")
    args = parser.parse_args(argv)
    page = render(args.results)
    with open(args.readme) as handle:
        readme = handle.read()
    outputs = {args.out: page, args.readme: with_headline(readme, headline_block(page))}
    if args.check:
        stale = [path for path, text in outputs.items() if not os.path.exists(path) or open(path).read() != text]
        for path in stale:
            print(f"{path} is out of date: run python benchmarks/results.py", file=sys.stderr)
        return 1 if stale else 0
    for path, text in outputs.items():
        _write(path, text)
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
