"""The ``boltzgen`` command line: one entry point with sub-commands.

Every sub-command has ``--help`` and ``--seed``, and writes a metrics.json (or prints JSON with
``--json``). Targets are named the same way everywhere: ``--system NAME``, ``--pdb FILE
--forcefield XML [XML ...]``, or ``--system-xml FILE --topology FILE`` (plus ``--temperature K``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from .allocator import tune_malloc
from .version import __version__

# Idle OpenMP threads of torch sleep instead of spinning: on a small CPU box shared with the
# OpenMM energy workers, spinning threads steal the cores the busy ones need (docs/design.md).
# Set before torch loads; an explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class CommandError(ValueError):
    """A user error: printed as one line, exit status 2 (a ValueError, so :func:`main` reports it
    like every other bad input)."""


# ---------------------------------------------------------------------------- shared options
def _add_common(parser: argparse.ArgumentParser, seed: bool = True) -> None:
    if seed:
        parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON on stdout")


def _add_file_command_options(parser: argparse.ArgumentParser) -> None:
    """--metrics, --no-progress, --seed and --json of the commands that write a sample file."""
    parser.add_argument("--metrics", help="metrics file (default: metrics.json beside the output)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_common(parser)


def _block_size_arg(value: str):
    """``--block-size``: a positive integer or ``auto``."""
    if value == "auto":
        return value
    try:
        size = int(value)
    except ValueError:
        size = 0
    if size < 1:
        raise argparse.ArgumentTypeError(f"block size must be a positive integer or 'auto', got {value!r}")
    return size


def _add_target(parser: argparse.ArgumentParser, positional: bool = False) -> None:
    group = parser.add_argument_group("target (name it one way)")
    if positional:
        group.add_argument("system_name", nargs="?", metavar="SYSTEM", help="built-in system (see `boltzgen systems`)")
    group.add_argument("--system", help="built-in system name")
    group.add_argument("--pdb", help="structure file (all atoms) for --forcefield")
    group.add_argument(
        "--forcefield", nargs="+", metavar="XML", help="OpenMM force-field XML files (with --pdb or --sequence)"
    )
    group.add_argument(
        "--sequence",
        metavar="SEQ",
        help="a capped peptide built from its sequence (ACE-SEQ-NME; one-letter 'AAA' or three-letter "
        "'ALA-ALA-ALA' codes), with --forcefield (default amber14-all.xml) and --solvent",
    )
    group.add_argument(
        "--solvent",
        metavar="MODEL",
        help="with --sequence: vacuum (default) or an OpenMM implicit model: obc1, obc2, gbn, gbn2, hct, "
        "obc-legacy (amber99_obc.xml)",
    )
    group.add_argument("--system-xml", help="serialized OpenMM System (XmlSerializer)")
    group.add_argument("--topology", help="topology for --system-xml: any file mdtraj reads")
    group.add_argument("--temperature", type=float, help="temperature in K (molecular targets)")
    group.add_argument("--dim", type=int, help="dimension of the Gaussian-mixture targets (default 2)")
    group.add_argument("--platform", default="auto", help="OpenMM platform for energies (default: fastest)")
    group.add_argument("--workers", type=int, default=None, help="energy worker processes (default: cores)")


def _target_from_args(args):
    from .systems import names, resolve
    from .systems.catalog import spec

    name = getattr(args, "system_name", None)
    if name is not None and args.system is not None and name != args.system:
        raise CommandError(f"two systems named: {name!r} and --system {args.system!r}")
    name = name or args.system
    options = {}
    if name is None or name not in names() or spec(name).openmm:
        options.update(platform=args.platform, n_workers=args.workers)
    if name is not None and name not in names():
        raise CommandError(f"unknown system {name!r}; built-in systems: {', '.join(names())}")
    try:
        return resolve(
            name,
            pdb=args.pdb,
            forcefield=args.forcefield,
            system_xml=args.system_xml,
            topology=args.topology,
            sequence=args.sequence,
            solvent=args.solvent,
            temperature=args.temperature,
            dim=args.dim,
            **options,
        )
    except (KeyError, ValueError, FileNotFoundError, TypeError) as exc:
        raise CommandError(str(exc).strip("'\"")) from None


#: The target flags that name a target by files or a sequence (``--system`` names a built-in one).
_FILE_TARGET_KEYS = ("pdb", "forcefield", "system_xml", "topology", "sequence", "solvent")


def _recipe_from_args(args) -> Optional[dict]:
    """The target flags as :func:`boltzgen.systems.resolve` arguments (nothing built), or None."""
    if not any(getattr(args, k, None) is not None for k in _FILE_TARGET_KEYS):
        return None
    recipe = {k: getattr(args, k) for k in (*_FILE_TARGET_KEYS, "temperature") if getattr(args, k, None) is not None}
    from .systems.catalog import check_target_flags

    try:  # complete before anything runs (train builds the target only at its end)
        check_target_flags(**{k: v for k, v in recipe.items() if k != "temperature"})
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    for k in ("pdb", "system_xml", "topology"):
        if k in recipe:
            recipe[k] = os.path.abspath(recipe[k])
    return recipe


def _emit(metrics: dict, args, path: Optional[str]) -> None:
    from .io import write_json

    if path:
        write_json(path, metrics)
    if args.json:
        json.dump(metrics, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")


def _target_named(args) -> bool:
    return any(getattr(args, k, None) is not None for k in ("system_name", "system", *_FILE_TARGET_KEYS))


def _metrics_path(args) -> str:
    return args.metrics or os.path.join(os.path.dirname(os.path.abspath(args.output)), "metrics.json")


def _run(function, *arguments, **options):
    """Call a workflow function; its user errors become one-line :class:`CommandError`s."""
    try:
        return function(*arguments, **options)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        raise CommandError(str(exc).strip("'\"")) from None


# ---------------------------------------------------------------------------- commands
def cmd_systems(args) -> int:
    """``boltzgen systems``: print the built-in systems (a table, or JSON with ``--json``).

    Parameters
    ----------
    args : argparse.Namespace
        Parsed options of the sub-command (``json``).

    Returns
    -------
    int
        Exit status 0.
    """
    from .systems import describe

    rows = describe()
    if args.json:
        _emit({"systems": rows}, args, None)
        return 0
    header = f"{'name':<15} {'atoms':>5} {'temperature':>12}  force field"
    print(header)
    print("-" * len(header))
    for row in rows:
        atoms = "-" if row["n_atoms"] is None else str(row["n_atoms"])
        temp = "reduced" if row["units"].startswith("reduced") else f"{row['temperature_K']:g} K"
        print(f"{row['name']:<15} {atoms:>5} {temp:>12}  {row['forcefield']}")
        print(f"{'':<15} {'':>5} {'':>12}  {row['description']}")
    return 0


def cmd_simulate(args) -> int:
    """``boltzgen simulate``: :func:`boltzgen.workflow.simulate_training_data` on the named target.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed options (see ``boltzgen simulate --help``).

    Returns
    -------
    int
        Exit status 0; metrics.json is written beside the output (or to ``--metrics``).

    Raises
    ------
    CommandError
        For invalid options or targets (exit status 2 through :func:`main`).
    """
    from .workflow import simulate_training_data

    if args.n < 1:
        raise CommandError(f"-n must be at least 1, got {args.n}")
    target = _target_from_args(args)
    try:
        metrics = _run(
            simulate_training_data,
            target,
            args.n,
            args.output,
            seed=args.seed,
            keep_replicas=args.keep_replicas,
            quench=args.quench,
            quench_processes=args.quench_processes,
            progress=not args.no_progress,
            stride=args.stride,
            equilibration=args.equilibration,
            timestep=args.timestep,
            friction=args.friction,
            replicas=args.replicas,
            t_max=args.t_max,
            exchange_interval=args.exchange_interval,
            workers=args.replica_threads,
        )
    finally:
        target.close()
    _emit(metrics, args, _metrics_path(args))
    if not args.json:
        print(f"wrote {metrics['n_samples']} samples of {metrics['system']} to {args.output}", file=sys.stderr)
    return 0


def parse_settings(items) -> dict:
    """``SECTION.KEY=VALUE`` strings (``boltzgen train --set``) as a nested configuration dict.

    Parameters
    ----------
    items : sequence of str
        Each a dotted key, ``=``, and a value read with ``yaml.safe_load`` (``1e-5`` and ``true``
        become a number and a bool, ``null`` None).

    Returns
    -------
    dict
        Nested, e.g. ``{"model": {"prior": "forcefield"}}``; keys are checked by the configuration.

    Raises
    ------
    ValueError
        For an item without ``=`` or without a section.
    """
    import yaml

    out: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        path = key.strip().split(".")
        if not sep or len(path) < 2 or not all(path):
            raise ValueError(f"--set {item!r}: want SECTION.KEY=VALUE, e.g. model.prior=forcefield")
        value = yaml.safe_load(text)
        if isinstance(value, str):
            try:  # YAML 1.1 reads 1e-5 as a string; the configuration wants the number
                value = float(value)
            except ValueError:
                pass
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def cmd_train(args) -> int:
    """``boltzgen train``: :func:`boltzgen.workflow.train` on a sample file into a run directory.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed options (see ``boltzgen train --help``).

    Returns
    -------
    int
        Exit status 0.

    Raises
    ------
    CommandError
        For unreadable data, a bad configuration or weighted samples.
    """
    from .workflow import train

    # The data file holds the topology; a built-in --system also selects its training defaults. A
    # target named by files (--pdb/--forcefield, --system-xml/--topology) uses the built-in defaults.
    fraction = args.state_fraction
    if fraction is not None and fraction.strip().lower() != "none":
        try:
            fraction = float(fraction)
        except ValueError:
            raise CommandError(f"--state-fraction must be a number in (0, 1) or 'none', got {fraction!r}") from None
    try:
        overrides = parse_settings(args.set)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    try:
        metrics = train(
            args.data,
            args.output,
            system=args.system,
            config_file=args.config,
            overrides=overrides,
            loss=args.loss,
            net=args.net,
            steps=args.steps,
            batch_size=args.batch_size,
            pretrain_dsm_steps=args.pretrain_dsm_steps,
            state_fraction=fraction,
            threads=args.threads,
            processes=args.processes,
            seed=args.seed,
            start_from=args.start_from,
            progress=not args.no_progress,
            target=_recipe_from_args(args),
        )
    except (ValueError, FileNotFoundError, TypeError, RuntimeError) as exc:
        raise CommandError(str(exc)) from None
    _emit(metrics, args, None)
    if not args.json:
        print(f"trained {metrics['steps']} steps; model in {args.output}/model.pt", file=sys.stderr)
    return 0


def _settings_from_args(args):
    """The SMCSettings of ``boltzgen sample``'s options (defaults: SMCSettings())."""
    from .sampling.smc import SMCSettings
    from .workflow import SAMPLE_OPTIONS

    d = SMCSettings().to_dict()
    for flag, (section, key), _, _ in SAMPLE_OPTIONS:
        d[section][key] = getattr(args, flag.lstrip("-").replace("-", "_"))
    if d["anneal"]["cess"] == 0:  # --anneal-cess 0: the linear grid
        d["anneal"]["cess"] = None
    d["resampling"]["balance_states"] = bool(args.balance_states)
    d["anneal"]["keep_states"] = bool(args.keep_states)
    d["resampling"]["strata"] = args.strata
    if args.no_chirality:
        d["chirality"] = False
    try:
        return SMCSettings.from_dict(d)
    except ValueError as exc:  # name the option the user typed, not the settings key behind it
        message = str(exc)
        for flag, (section, key), _, _ in SAMPLE_OPTIONS:
            prefix = f"{section}.{key}: "
            if message.startswith(prefix):
                raise CommandError(f"{flag} {message[len(prefix) :]}") from None
        raise


def cmd_sample(args) -> int:
    """``boltzgen sample``: :func:`boltzgen.workflow.sample` (SMC or reverse SDE) into a weighted sample file.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed options (see ``boltzgen sample --help``); the sampler options are the fields of
        :class:`~boltzgen.sampling.smc.SMCSettings` (:data:`boltzgen.workflow.SAMPLE_OPTIONS`).

    Returns
    -------
    int
        Exit status 0; metrics.json is written beside the output (or to ``--metrics``).

    Raises
    ------
    CommandError
        For a missing model, an unnamed target, invalid settings or a shape mismatch.
    """
    from .workflow import sample

    if args.n < 1:
        raise CommandError(f"-n must be at least 1, got {args.n}")
    settings = _run(_settings_from_args, args)
    target = _target_from_args(args) if _target_named(args) else None
    options = dict(platform=args.platform, n_workers=args.workers)
    try:
        run = _run(
            sample,
            args.run_dir,
            args.output,
            args.n,
            target=target,
            settings=settings,
            method=args.method,
            runs=args.runs,
            per_state_resampling=args.per_state_resampling,
            seed=args.seed,
            progress=not args.no_progress,
            target_options=options,
            processes=args.processes,
        )
    finally:
        if target is not None:
            target.close()
    metrics = run.metrics
    _emit(metrics, args, _metrics_path(args))
    if not args.json:
        line = f"wrote {args.n} samples of {metrics['system']} to {args.output}"
        if args.method == "smc":
            line += f"; ESS {metrics['ess']:.1f} ({metrics['ess_fraction']:.1%}), log Z {metrics['log_z']:.3f}"
        if metrics.get("delta_f_kT") is not None:
            line += (
                f", {metrics['delta_f_definition'][:-6]} = {metrics['delta_f_kT']:.2f} "
                f"+- {metrics['delta_f_err_kT']:.2f} kT"
            )
        print(line, file=sys.stderr)
    return 0


def cmd_free_energy(args) -> int:
    """``boltzgen free-energy``: :func:`boltzgen.workflow.free_energy` between two targets.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed options (see ``boltzgen free-energy --help``).

    Returns
    -------
    int
        Exit status 0.

    Raises
    ------
    CommandError
        Unknown systems, targets of other particles, a half-given route, bad settings.
    """
    from .systems.catalog import names, read_target_file
    from .workflow import free_energy

    ends = []
    for flag, name, temperature in (
        ("--from", args.target_from, args.temperature_from),
        ("--to", args.target_to, args.temperature_to),
    ):
        if name in names():
            end = {"system": name}
        elif name.endswith((".yaml", ".yml")) and os.path.isfile(name):
            end = _run(read_target_file, name)
        else:
            raise CommandError(
                f"{flag}: {name!r} is neither a built-in system ({', '.join(names())}) nor a target file (.yaml)"
            )
        ends.append({**end, **({} if temperature is None else {"temperature": temperature})})
    settings = _run(_settings_from_args, args) if args.model else None
    options = {"platform": args.platform, "n_workers": args.workers}
    out = _run(
        free_energy,
        *ends,
        run_dir=args.model,
        samples_from=args.samples_from,
        samples_to=args.samples_to,
        output_dir=args.output,
        n=args.n,
        runs=args.runs,
        md_frames=args.frames,
        lambda_states=args.lambda_states,
        path_levels=args.path_levels,
        settings=settings,
        per_state_resampling=args.per_state_resampling,
        seed=args.seed,
        progress=not args.no_progress,
        target_options=options,
    )
    _emit(out, args, None)
    if not args.json:
        err = out["delta_f_err_kT"]
        print(
            f"{out['delta_f_definition']}: {out['delta_f_kT']:.3f} +- {'inf' if err is None else f'{err:.3f}'} kT "
            f"({out['route']} route, {out['wall_time_s']:.0f} s)"
        )
        if out.get("method") == "mbar":
            ends = out["bar_ends"]
            print(
                f"  MBAR over {len(out['lambdas'])} lambda states (smallest neighbour overlap "
                f"{out['overlap_min']:.2f}); BAR on the ends alone: {ends['delta_f_kT']:.3f} +- "
                f"{ends['delta_f_err_kT']:.3f} kT"
            )
    return 0


def cmd_reweight(args) -> int:
    """``boltzgen reweight``: :func:`boltzgen.workflow.reweight` of a sample file against a target.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed options (see ``boltzgen reweight --help``).

    Returns
    -------
    int
        Exit status 0; metrics.json is written beside the output (or to ``--metrics``).

    Raises
    ------
    CommandError
        For a missing file or incompatible samples.
    """
    from .workflow import reweight

    if not os.path.exists(args.samples):
        raise CommandError(f"sample file not found: {args.samples}")
    target = _target_from_args(args)
    try:
        metrics = _run(
            reweight,
            args.samples,
            target,
            args.output,
            log_q=args.log_q,
            seed=args.seed,
            n_bootstrap=args.n_bootstrap,
            block_size=args.block_size,
            progress=not args.no_progress,
            log_q_from_energy=args.log_q_from_energy,
            proposal_temperature=args.proposal_temperature,
        )
    finally:
        target.close()
    _emit(metrics, args, _metrics_path(args))
    if not args.json:
        line = (
            f"ESS {metrics['ess']:.1f} of {metrics['n']} ({metrics['ess_fraction']:.1%}), "
            f"log Z {metrics['log_z']:.3f} +- {metrics['log_z_err']:.3f}"
        )
        if metrics.get("delta_f_kT") is not None:
            err = metrics["delta_f_err_kT"]
            line += f", Delta F = {metrics['delta_f_kT']:.2f} +- {'inf' if err is None else f'{err:.2f}'} kT"
        elif "delta_f_note" in metrics:
            line += f"; no Delta F ({metrics['delta_f_note']})"
        if metrics.get("n_infinite_energy"):
            line += f"; {metrics['n_infinite_energy']} samples had +inf energy (weight 0)"
        print(f"{line}; wrote {args.output}", file=sys.stderr)
    return 0


def cmd_analyze(args) -> int:
    """``boltzgen analyze``: :func:`boltzgen.workflow.analyze`, plots and metrics into a report directory.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed options (see ``boltzgen analyze --help``).

    Returns
    -------
    int
        Exit status 0.

    Raises
    ------
    CommandError
        For missing files or unreadable samples.
    """
    from .workflow import analyze

    target = _target_from_args(args) if _target_named(args) else None  # its topology, for DCD/XTC files
    try:
        metrics = _run(
            analyze,
            args.samples,
            args.output,
            args.reference,
            run_dir=args.run_dir,
            seed=args.seed,
            topology=None if target is None else target.topology,
        )
    finally:
        if target is not None:
            target.close()
    _emit(metrics, args, None)
    if not args.json:
        line = f"{metrics['n']} samples, ESS {metrics['ess']:.1f} ({metrics['ess_fraction']:.1%})"
        if metrics.get("energy_w2") is not None:
            line += f", energy W2 {metrics['energy_w2']:.3g} kT"
            if metrics.get("energy_w2_floor") is not None:
                line += f" (floor {metrics['energy_w2_floor']:.3g} for exact draws with these weights"
                if metrics.get("energy_w2_floor_lineages") is not None:
                    line += f", {metrics['energy_w2_floor_lineages']:.3g} for {metrics['lineage_ess']:.0f} lineages"
                line += ")"
        if metrics.get("torsion_w2") is not None:
            line += f", torsion W2 {metrics['torsion_w2']:.3g} rad"
        if metrics.get("delta_f_kT") is not None:
            err = metrics.get("delta_f_err_kT")
            line += f", Delta F = {metrics['delta_f_kT']:.2f} +- {'inf' if err is None else f'{err:.2f}'} kT"
        print(f"{line}; wrote {os.path.join(args.output, 'index.html')}", file=sys.stderr)
    return 0


def cmd_quickstart(args) -> int:
    """``boltzgen quickstart``: :func:`boltzgen.workflow.quickstart` on alanine dipeptide, then a summary.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed options (see ``boltzgen quickstart --help``): ``output``, ``fast``, ``long``, ``seed``.

    Returns
    -------
    int
        Exit status 0.

    Raises
    ------
    CommandError
        If a stage fails.
    """
    from .workflow import quickstart

    if args.fast and args.long:
        raise CommandError("--fast and --long exclude each other")
    if not args.json:
        print(
            f"boltzgen quickstart: alanine dipeptide in vacuum (amber99sbildn, 300 K) into {args.output}/ - "
            f"replica-exchange data, DSM + DiffCLF training of an EGNN energy, SMC with OpenMM reweighting, "
            f"report{' (--fast smoke run: tiny sizes, numbers meaningless)' if args.fast else ''}",
            file=sys.stderr,
        )
    recipe = "fast" if args.fast else "long" if args.long else "default"
    try:
        summary = quickstart(args.output, recipe, seed=args.seed, progress=not args.no_progress)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise CommandError(str(exc)) from None
    summary = {"command": "quickstart", "fast": bool(args.fast), "long": bool(args.long), **summary}
    _emit(summary, args, os.path.join(args.output, "metrics.json"))
    if not args.json:
        print_summary(summary)
    return 0


def _fmt(value, spec=".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def print_summary(summary: dict, file=None) -> None:
    """Print the quickstart's summary (ESS, free energies, warnings, files) to ``file`` (stderr).

    Parameters
    ----------
    summary : dict
        The summary of :func:`boltzgen.workflow.quickstart`.
    file : file object, optional
        Default ``sys.stderr``.
    """
    from .workflow import MIN_TRUSTED_ESS

    out = file or sys.stderr
    print("\nsummary", file=out)
    print(
        f"  ESS              {_fmt(summary.get('ess'), '.1f')} of {summary['n_samples']} "
        f"({_fmt(summary.get('ess_fraction'), '.1%')}; the particles descend from "
        f"{_fmt(summary.get('n_ancestors_anneal'), 'd')} of those at t_min)",
        file=out,
    )
    if summary.get("lineage_ess") is not None:
        per_state = summary.get("lineage_ess_states") or {}
        detail = ", ".join(f"{k} {v:.1f}" for k, v in per_state.items())
        print(
            f"  lineages         {summary['lineage_ess']:.1f} effective draws at t = 1 carry the weights"
            + (f" ({detail})" if detail else ""),
            file=out,
        )
    if summary.get("ess") is not None and summary["ess"] < MIN_TRUSTED_ESS:
        print(
            f"  warning          the weights rest on fewer than {MIN_TRUSTED_ESS} effective samples: the model "
            f"is too far from the force field for the estimates below to mean much (more training: --long)",
            file=out,
        )
    _print_free_energy(summary, out)
    floor = ""
    if summary.get("energy_w2_floor") is not None:
        floor = f" (exact independent draws with these weights: {summary['energy_w2_floor']:.3f})"
    print(f"  energy W2        {_fmt(summary.get('energy_w2'), '.3f')} kT against the training data{floor}", file=out)
    print(
        f"  wall time        {summary['total_seconds']:.0f} s "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in summary['stage_seconds'].items())})",
        file=out,
    )
    print(f"  samples          {summary['files']['samples']}", file=out)
    if "report" in summary["files"]:
        print(f"  report           {summary['files']['report']}", file=out)


def _print_free_energy(summary: dict, out) -> None:
    """The ΔF lines of the summary: estimate, reference, error method, runs, warnings."""
    import numpy as np

    from .workflow import MIN_STATE_PARTICLES

    names = (summary.get("states") or {}).get("names")
    if not names:
        print(f"  states           {summary.get('states_note', 'none')}", file=out)
        return
    label = summary.get("delta_f_definition", "Delta F")[:-6] if len(names) == 2 else "state free energies"
    per_run, counts = summary.get("delta_f_runs_kT"), summary.get("state_counts_runs")
    # the state whose particles a run can run out of: the second of two (ΔF = F_1 - F_0), else the rarest
    rare = 1 if len(names) == 2 or not summary.get("state_counts") else int(np.argmin(summary["state_counts"]))
    line = (
        f"  {label}  {_fmt(summary.get('delta_f_kT'))} +- {_fmt(summary.get('delta_f_err_kT'))} kT "
        f"(reference data: {_fmt(summary.get('reference_delta_f_kT'))} +- "
        f"{_fmt(summary.get('reference_delta_f_err_kT'))} kT"
        + (
            f", from {summary['reference_phi_positive_n']} phi > 0 frames"
            if summary.get("reference_phi_positive_n") is not None
            else ""
        )
        + ")"
    )
    if summary.get("delta_f_error_method"):
        line += f"\n                   error: {summary['delta_f_error_method']}"
    if per_run:
        line += f"; runs: {', '.join(_fmt(v, '.1f') for v in per_run)} kT"
    if counts:
        line += f" ({names[rare]} particles: {', '.join(str(c[rare]) for c in counts)})"
    if summary.get("delta_f_note"):
        line += f"\n                   no estimate: {summary['delta_f_note']}"
    print(line, file=out)
    if summary.get("delta_f_kT") is not None and per_run:
        print(
            "  note             the error is the spread of the runs; with a model this briefly trained the "
            "sampler's settings (e.g. --t-min) can move Delta F by a few kT more (docs/design.md)",
            file=out,
        )
    few = [r + 1 for r, c in enumerate(counts or []) if c[rare] < MIN_STATE_PARTICLES]
    if few:
        print(
            f"  warning          run{'s' if len(few) > 1 else ''} {', '.join(map(str, few))} ended with fewer "
            f"than {MIN_STATE_PARTICLES} {names[rare]} particles: such runs usually put Delta F too high (their "
            f"few particles underweight the state); more particles per run (-n) or runs (--runs) help",
            file=out,
        )


def cmd_bench_bridge(args) -> int:
    """``boltzgen bench bridge``: throughput (evaluations/s) of the OpenMM energy pool against a
    plain single-Context loop (:func:`boltzgen.bench.bench_bridge`).

    Parameters
    ----------
    args : argparse.Namespace
        Parsed options (see ``boltzgen bench bridge --help``).

    Returns
    -------
    int
        Exit status 0.

    Raises
    ------
    CommandError
        If the target is not an OpenMM system.
    """
    from .bench import bench_bridge

    target = _target_from_args(args)
    if not hasattr(target, "system"):
        raise CommandError(f"{target.name} is not an OpenMM system; the bridge benchmark needs one")
    try:
        result = bench_bridge(
            target.system,
            target.temperature,
            target.positions.numpy(),
            batch=args.batch,
            n_workers=args.workers,
            platform=args.platform,
            seed=args.seed,
        )
    finally:
        target.close()
    result = {"command": "bench bridge", "system": target.name, **result}
    _emit(result, args, args.output)
    if not args.json:
        print(
            f"{target.name}: bridge {result['bridge_per_s']:.0f}/s, plain loop {result['plain_loop_per_s']:.0f}/s "
            f"(speedup {result['speedup_vs_plain_loop']:.2f}), fraction of limit {result['fraction_of_limit']:.2f}"
        )
    return 0


# ---------------------------------------------------------------------------- parser
def _add_sample_settings(parser: argparse.ArgumentParser) -> None:
    """The sampler options of ``boltzgen sample``: one per SMCSettings field of
    :data:`boltzgen.workflow.SAMPLE_OPTIONS`, with SMCSettings()'s defaults."""
    from .sampling.smc import SMCSettings
    from .workflow import SAMPLE_OPTIONS

    defaults = SMCSettings().to_dict()
    for flag, (section, key), kind, text in SAMPLE_OPTIONS:
        default = defaults[section][key]
        names = (flag, "--steps") if flag == "--diffusion-steps" else (flag,)
        suffix = " (--steps is an old name)" if len(names) > 1 else ""
        parser.add_argument(
            *names,
            dest=flag.lstrip("-").replace("-", "_"),
            type=kind,
            default=default,
            help=f"{text} (default {default}){suffix}" if default is not None else text + suffix,
        )


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The argument parser of ``boltzgen`` with all sub-commands.

    Parameters
    ----------
    command : str, optional
        The sub-command about to be parsed: the sampler options (whose defaults come from
        :class:`~boltzgen.sampling.smc.SMCSettings`, an import of torch) are added to that
        sub-command's parser alone, so ``boltzgen --help`` and the other sub-commands start
        without importing torch. Default: every parser complete.

    Returns
    -------
    argparse.ArgumentParser
        Each sub-command's parser sets ``func`` to its ``cmd_*`` function.
    """
    parser = argparse.ArgumentParser(
        prog="boltzgen", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"boltzgen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    complete = lambda name: command is None or command == name  # noqa: E731

    p = sub.add_parser("systems", help="list the built-in systems")
    _add_common(p)
    p.set_defaults(func=cmd_systems)

    p = sub.add_parser(
        "simulate",
        help="MD / replica exchange / exact samples -> sample file",
        description="Simulate a target and write an HDF5 sample file (mdtraj-loadable for molecules). "
        "OpenMM Langevin dynamics (LangevinMiddle) for molecular systems, optionally "
        "replica exchange over a geometric temperature ladder; MALA chains for LJ "
        "clusters; exact draws for analytic targets. Resumes from FILE.checkpoint.",
    )
    _add_target(p, positional=True)
    p.add_argument("-n", type=int, required=True, help="number of samples (frames)")
    p.add_argument("-o", "--output", required=True, help="output sample file (.h5)")
    p.add_argument("--stride", type=int, help="MD steps (or MCMC steps) between saved frames")
    p.add_argument("--equilibration", type=int, help="equilibration steps before the first frame")
    p.add_argument("--timestep", type=float, help="MD time step in fs (default 1)")
    p.add_argument("--friction", type=float, help="Langevin friction in 1/ps (default 1)")
    p.add_argument(
        "--replicas",
        type=int,
        help="replica-exchange replicas (1: plain MD; default: the system's, see boltzgen/systems/catalog.py)",
    )
    p.add_argument("--t-max", type=float, help="highest temperature of the geometric replica ladder (K)")
    p.add_argument("--exchange-interval", type=int, help="MD steps between exchange attempts")
    p.add_argument(
        "--replica-threads",
        type=int,
        metavar="N",
        help="threads stepping the replicas at once (default: one per core, at most one per replica; the "
        "frames do not depend on it; the Reference platform always steps them one after another)",
    )
    p.add_argument(
        "--keep-replicas",
        type=int,
        default=1,
        metavar="K",
        help="replica exchange: keep the frames of the K coldest replicas, N per replica (default 1: "
        "the target temperature only). Training data for a model that must cover rare states; "
        "only the target-temperature frames count as Boltzmann samples of the target (the others "
        "get weight zero, and a per-frame temperature_K array)",
    )
    p.add_argument(
        "--quench",
        type=float,
        metavar="PS",
        help="with --keep-replicas: relax every frame of the hotter replicas to the target temperature "
        "(local energy minimisation, then PS ps of Langevin dynamics at friction 10/ps), so the "
        "rare states the hot replicas visit come with the target's local geometry (training data)",
    )
    p.add_argument(
        "--quench-processes",
        type=int,
        metavar="P",
        help="processes quenching the frames at once (default: one per core; the frames do not depend on it)",
    )
    _add_file_command_options(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser(
        "train",
        help="train an energy model on a sample file -> run directory",
        description="Train E_theta(x, t) with DSM, DiffCLF or both. Configuration: the built-in "
        "defaults, then the system's shipped defaults (systems/<name>.train.yaml), then "
        "--config FILE (YAML), then the flags. Resumes from RUN_DIR/checkpoint.pt.",
    )
    _add_target(p)
    p.add_argument("--data", required=True, help="sample file from `boltzgen simulate`")
    p.add_argument("-o", "--output", required=True, metavar="RUN_DIR", help="run directory")
    p.add_argument("--config", help="YAML configuration file")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="one configuration key over the config file (repeatable; the value is read as YAML), "
        "e.g. --set model.prior=forcefield --set loss.lambda_pin=1",
    )
    p.add_argument("--loss", choices=["dsm", "diffclf", "dsm+diffclf"], help="training objective")
    p.add_argument("--net", choices=["mlp", "egnn", "e3nn"], help="network family")
    p.add_argument("--steps", type=int, help="optimisation steps (training)")
    p.add_argument("--batch-size", type=int, help="configurations per step")
    p.add_argument(
        "--pretrain-dsm-steps",
        type=int,
        help="steps of DSM alone before the objective takes over (pre-training, then fine-tuning)",
    )
    p.add_argument(
        "--state-fraction",
        "--phi-positive-fraction",
        dest="state_fraction",
        metavar="F",
        help="share of every batch drawn from the least-populated of the system's states ('none' draws "
        "frames uniformly; default: the system's config). --phi-positive-fraction is an old name",
    )
    p.add_argument(
        "--start-from",
        metavar="CHECKPOINT",
        help="continue from another run's DSM pre-training checkpoint (same data, net, optimiser, "
        "steps, batch and seed; its step within both runs' --pretrain-dsm-steps): the same run "
        "as from step 0, so one pre-training serves several fine-tunings",
    )
    p.add_argument("--threads", type=int, help="torch CPU threads (per process)")
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="P",
        help="data-parallel training processes, each drawing batch/P of every batch, gradients "
        "averaged, cores / P torch threads each unless --threads says otherwise (default 1)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the config's, 0)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON on stdout")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "sample",
        help="SMC (or reverse SDE) from a trained model -> weighted sample file",
        description="Sequential Monte Carlo along the learned diffusion path, annealed to the "
        "target's energy at the end (OpenMM for molecules): weighted samples, log Z, "
        "ESS, and the free energies of the target's states. --method sde draws "
        "unweighted samples of the model itself. The target defaults to the system "
        "the model was trained on.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory of `boltzgen train`")
    _add_target(p)
    p.add_argument("-n", type=int, required=True, help="number of particles / samples")
    p.add_argument("-o", "--output", required=True, help="output sample file (.h5)")
    p.add_argument("--method", choices=["smc", "sde"], default="smc", help="sampler (default smc)")
    if complete("sample"):
        _add_sample_settings(p)
    p.add_argument(
        "--per-state-resampling",
        action="store_true",
        help="resample within the target's states (for a peptide: the joint phi signs of its residues; "
        "see `boltzgen systems`); during the diffusion a particle's state is that of its denoised "
        "estimate E[x_0 | x_t] (default: resample all particles together)",
    )
    p.add_argument(
        "--balance-states",
        action="store_true",
        help="with --per-state-resampling: give every state the same share of the particles at the start "
        "of the annealing (each keeps its weight), so a rare state's free energy does not rest on a "
        "handful of particles",
    )
    p.add_argument(
        "--keep-states",
        action="store_true",
        help="with --per-state-resampling: reject the annealing's and final moves that would carry a "
        "particle into another state, so every state keeps its particles to the end (exact)",
    )
    p.add_argument(
        "--strata",
        choices=["states", "basins"],
        default="states",
        help="with --per-state-resampling: resample within the target's states (default) or within the "
        "Ramachandran basins of every residue (beta/PII, alpha_R, phi>0), which refine the phi signs; "
        "the free energies are still those of the target's states",
    )
    p.add_argument(
        "--runs",
        type=int,
        default=1,
        help="independent SMC runs sharing the -n particles, pooled by their log Z: free energies then "
        "get the error of a bootstrap over runs, which includes the run-to-run spread (default 1)",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="P",
        help="CPU processes drawing the --runs at once, cores / P torch threads each; the samples are "
        "the same for any P (default 1)",
    )
    p.add_argument("--no-chirality", action="store_true", help="do not fold peptides onto the L-form")
    _add_file_command_options(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser(
        "free-energy",
        help="free-energy difference between two targets on the same molecule",
        description="F_to - F_from = -log(Z_to / Z_from) in kT. With --model, one trained model "
        "proposes for the first target by SMC and each run is carried on to the second along the "
        "linear path between them (the model's normaliser cancels), with BAR on the two weighted "
        "sample sets beside it; with --samples-from/--samples-to, BAR on sample files of "
        "both ends; with neither, OpenMM alone: replica-exchange MD at both ends and at intermediate "
        "states of the linear path between them (into -o DIR), then MBAR.",
    )
    target_help = (
        "a built-in system name or a target file: YAML with the keys of the target flags (sequence, "
        "forcefield, solvent, pdb, system_xml, topology, temperature; paths relative to the file)"
    )
    p.add_argument("--from", dest="target_from", required=True, metavar="TARGET", help=f"target A: {target_help}")
    p.add_argument("--to", dest="target_to", required=True, metavar="TARGET", help="target B, as --from")
    p.add_argument("--temperature-from", type=float, metavar="K", help="temperature of A (default: its own)")
    p.add_argument("--temperature-to", type=float, metavar="K", help="temperature of B (default: its own)")
    p.add_argument("--model", metavar="RUN_DIR", help="run directory of `boltzgen train` (the SMC route)")
    p.add_argument("--samples-from", metavar="FILE", help="sample file of A (the BAR route, with --samples-to)")
    p.add_argument("--samples-to", metavar="FILE", help="sample file of B")
    p.add_argument("-n", type=int, default=1024, help="SMC particles per target (default 1024)")
    p.add_argument("--runs", type=int, default=4, help="independent SMC runs (default 4)")
    p.add_argument(
        "--path-levels",
        type=int,
        default=16,
        metavar="K",
        help="with --model: carry each SMC run to --from on to --to in K steps of the path "
        "(1-l) u_from + l u_to (default 16; 0: a separate SMC run to each target)",
    )
    p.add_argument("--frames", type=int, default=2000, help="MD route: frames per state (default 2000)")
    p.add_argument(
        "--lambda-states",
        type=int,
        default=None,
        metavar="K",
        help="MD route: states on the path (1-l) u_from + l u_to, ends included (default: 5 between "
        "two OpenMM targets at one temperature, else 2, the ends alone)",
    )
    p.add_argument("-o", "--output", metavar="DIR", help="output directory (samples, metrics.json)")
    p.add_argument("--platform", default="auto", help="OpenMM platform for energies (default: fastest)")
    p.add_argument("--workers", type=int, default=None, help="energy worker processes (default: cores)")
    if complete("free-energy"):
        _add_sample_settings(p)
    p.add_argument(
        "--per-state-resampling",
        action="store_true",
        help="with --model: resample the SMC runs within each target's states, as `boltzgen sample "
        "--per-state-resampling` (ΔF between targets depends on the weights of the conformational states)",
    )
    p.add_argument("--balance-states", action="store_true", help="with --per-state-resampling: as for sample")
    p.add_argument("--keep-states", action="store_true", help="with --per-state-resampling: as for sample")
    p.add_argument(
        "--strata", choices=["states", "basins"], default="states", help="with --per-state-resampling: as for sample"
    )
    p.add_argument("--no-chirality", action="store_true", help="do not fold peptides onto the L-form")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_common(p)
    p.set_defaults(func=cmd_free_energy)

    p = sub.add_parser(
        "reweight",
        help="importance weights of samples against a target -> weighted sample file",
        description="Importance-weight the samples of FILE against a target: log w = -u(x) - log q(x) "
        "with u the target's reduced energy and log q the proposal log-density of each "
        "sample. Writes a weighted sample file and metrics (ESS, log Z and, for alanine "
        "dipeptide, F(phi > 0) - F(phi < 0) in kT with a bootstrap error).",
    )
    p.add_argument("samples", metavar="FILE", help="sample file (HDF5) to reweight")
    _add_target(p)
    p.add_argument(
        "--log-q",
        metavar="ARRAY",
        help="proposal log-density of each sample: the name of an array in FILE or a .npy file "
        "(default: FILE's log_q array)",
    )
    p.add_argument(
        "--log-q-from-energy",
        metavar="EFILE",
        help="instead of --log-q: potential energies U_A in kJ/mol of the proposal, one per frame of FILE "
        "(text file, one number a line, or .npy), for frames drawn from exp(-U_A/kT_A) such as MD under "
        "another force field; log q = -U_A/(k_B T_A)",
    )
    p.add_argument(
        "--proposal-temperature",
        type=float,
        metavar="K",
        help="T_A in kelvin for --log-q-from-energy (default: the target's temperature)",
    )
    p.add_argument("-o", "--output", required=True, help="output weighted sample file (.h5)")
    p.add_argument(
        "--n-bootstrap", type=int, default=200, help="bootstrap replicates of the Delta F error (default 200)"
    )
    p.add_argument(
        "--block-size",
        type=_block_size_arg,
        help="block length of the bootstrap in frames, or 'auto' (from the correlation of the phi "
        "states); default: auto for MD trajectories (files from `boltzgen simulate` with MD or replica "
        "exchange, and reweightings of them), else 1",
    )
    _add_file_command_options(p)
    p.set_defaults(func=cmd_reweight)

    p = sub.add_parser(
        "analyze",
        help="plots and metrics of a sample file -> report directory",
        description="Analyse a sample file (weighted or not): Ramachandran free-energy map and "
        "F(phi), F(psi) profiles with bootstrap errors for alanine dipeptide, reduced-"
        "energy histograms, the SMC ESS trace (from metrics.json beside FILE) and the "
        "training losses (from the run directory). With --reference: energy and torsion "
        "Wasserstein-2 distances. Writes PNGs, metrics.json and index.html into DIR.",
    )
    p.add_argument("samples", metavar="FILE", help="sample file (HDF5), or a trajectory mdtraj reads with a target")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory of the report")
    _add_target(p)
    p.add_argument("--reference", metavar="FILE", help="reference sample file of the same system (e.g. long MD)")
    p.add_argument(
        "--run-dir",
        metavar="DIR",
        help="run directory for the training-loss curves (default: the one recorded in FILE)",
    )
    _add_common(p)
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser(
        "quickstart",
        help="the whole pipeline on alanine dipeptide",
        description="Replica-exchange data, DSM + DiffCLF training of the EGNN energy, pooled SMC "
        "runs along the learned diffusion path annealed to the OpenMM energy (F(phi > 0) "
        "- F(phi < 0) with the error of a bootstrap over runs), and a report - the "
        "equivalent commands are printed as they run. The sizes are the recipes of "
        "systems/recipes.yaml. Leaves DIR/samples.h5 (weighted, mdtraj-loadable), "
        "DIR/metrics.json and DIR/report/index.html. Rerunning resumes.",
    )
    p.add_argument(
        "-o",
        "--output",
        default="boltzgen-quickstart",
        metavar="DIR",
        help="output directory (default ./boltzgen-quickstart)",
    )
    p.add_argument("--fast", action="store_true", help="a smoke run with tiny sizes (the 'fast' recipe)")
    p.add_argument(
        "--long",
        action="store_true",
        help="the 'long' recipe: the default's data and model, more SMC particles per run and more "
        "moves per particle (a smaller error of the free energies; the sampling takes several times as long)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_common(p)
    p.set_defaults(func=cmd_quickstart)

    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="BENCH")
    p = bench_sub.add_parser(
        "bridge",
        help="OpenMM energy pool against the plain single-Context loop",
        description="Configurations per second of the batched OpenMM energy pool against the "
        "plain single-Context loop and against cores x bare getState rate.",
    )
    _add_target(p)
    p.add_argument("--batch", type=int, default=4096, help="configurations per batch (default 4096)")
    p.add_argument("-o", "--output", help="write the JSON result here")
    _add_common(p)
    p.set_defaults(func=cmd_bench_bridge)
    bench.set_defaults(func=lambda args: (bench.print_help(), 2)[1])
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``boltzgen`` command.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments after ``boltzgen`` (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0 on success; 2 for bad input (a usage error, a bad value or file: one line
        on stderr naming it) or no sub-command; 1 for a run that failed on the way (I/O, memory,
        an OpenMM failure such as an unstable simulation: one line); 130 when interrupted. Any
        other exception is a bug: its traceback is printed with a request to report it.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    tune_malloc()  # before any work, inherited by worker processes (boltzgen.allocator)
    # the top level has flags alone (--help, --version), so the first word is the sub-command
    parser = build_parser(next((word for word in argv if not word.startswith("-")), ""))
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"boltzgen {args.command}: error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every failure ends here, as one line or as a bug report
        status, message = classify_error(exc)
        if status is None:
            import traceback

            traceback.print_exc()
            print(
                f"boltzgen {args.command}: this is a bug in boltzgen ({type(exc).__name__}); please report it "
                "with the command line and the traceback above",
                file=sys.stderr,
            )
            return 1
        print(f"boltzgen {args.command}: error: {message}", file=sys.stderr)
        return status


def classify_error(exc: BaseException) -> tuple:
    """How the command line reports an exception: (exit status, one-line message), or (None, None)
    for an unexpected exception (a bug, shown with its traceback).

    Parameters
    ----------
    exc : BaseException

    Returns
    -------
    status : int or None
        2 for bad input (:class:`CommandError`, ValueError, FileNotFoundError), 1 for failures
        on the way (other OSError such as a full or read-only disk, MemoryError, OpenMM errors, an
        SMC run whose particles all lost their weight).
    message : str or None
    """
    import openmm

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, (CommandError, ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return 2, text
    if isinstance(exc, MemoryError):
        return 1, "out of memory; use fewer samples or a smaller batch (-n, --batch-size)"
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if getattr(exc, "filename", None) and str(exc.filename) not in text else ""
        return 1, f"{text}{where}"
    from .md.dynamics import SimulationUnstableError
    from .sampling.stages import SMCFailure

    if isinstance(exc, (SimulationUnstableError, SMCFailure)):
        return 1, text
    if isinstance(exc, openmm.OpenMMException):
        return 1, f"OpenMM failed: {text} (an unstable simulation? try a smaller --timestep or check the structure)"
    return None, None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
