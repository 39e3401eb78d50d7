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
import time
from typing import Optional, Sequence

from . import __version__

# Idle OpenMP threads of torch sleep instead of spinning. On a small CPU box shared with the
# OpenMM energy workers, other jobs or a second torch thread, spinning threads steal the cores the
# busy ones need: a 2-thread EGNN training step took 10-20 s under load with the default policy
# and 1.7 s with this one (benchmarks at hand: the same step, same load). Set before torch loads;
# an explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

#: Below this effective sample size the quickstart's summary warns that its estimates rest on a
#: handful of samples (the self-normalised estimates and their bootstrap errors then mean little).
MIN_TRUSTED_ESS = 10
#: An SMC run that ends with fewer particles than this in phi > 0 usually puts Delta F too high
#: (its few particles underweight the state): 11-18 kT against 4.3 in the runs measured on
#: alanine dipeptide (README, How it works). The quickstart summary warns about such runs.
MIN_STATE_PARTICLES = 10


class CommandError(Exception):
    """A user error: printed as one line, exit status 2."""


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
    group.add_argument("--forcefield", nargs="+", metavar="XML", help="OpenMM force-field XML files")
    group.add_argument("--system-xml", help="serialized OpenMM System (XmlSerializer)")
    group.add_argument("--topology", help="topology for --system-xml: any file mdtraj reads")
    group.add_argument("--temperature", type=float, help="temperature in K (molecular targets)")
    group.add_argument("--dim", type=int, help="dimension of the Gaussian-mixture targets (default 2)")
    group.add_argument("--platform", default="auto", help="OpenMM platform for energies (default: fastest)")
    group.add_argument("--workers", type=int, default=None, help="energy worker processes (default: cores)")


def _target_from_args(args):
    from .systems import resolve

    name = getattr(args, "system_name", None)
    if name is not None and args.system is not None and name != args.system:
        raise CommandError(f"two systems named: {name!r} and --system {args.system!r}")
    name = name or args.system
    options = {}
    if name is None or not name.startswith(("gmm", "lj")):
        options.update(platform=args.platform, n_workers=args.workers)
    try:
        return resolve(name, pdb=args.pdb, forcefield=args.forcefield, system_xml=args.system_xml,
                       topology=args.topology, temperature=args.temperature, dim=args.dim, **options)
    except (KeyError, ValueError, FileNotFoundError, TypeError) as exc:
        raise CommandError(str(exc).strip("'\"")) from None


def _emit(metrics: dict, args, path: Optional[str]) -> None:
    from .io import write_json

    if path:
        write_json(path, metrics)
    if args.json:
        json.dump(metrics, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")


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


def _ladder_frames(result, keep: int, kt: float):
    """Frames of the ``keep`` coldest replicas of a replica-exchange result, coldest first.

    Returns
    -------
    positions : ndarray, shape (keep · n, N, 3), nm
    reduced_energy : ndarray, shape (keep · n,)
        U / kT at the *target* temperature (kT in kJ/mol) for every frame.
    temperature_K : ndarray, shape (keep · n,)
        Ladder temperature each frame was sampled at.
    """
    import numpy as np

    temps = result.metadata["temperatures_K"][:keep]
    n = result.positions.shape[0]
    positions = np.concatenate([result.replica_positions[k] for k in range(keep)])
    reduced_energy = np.concatenate([result.replica_potential_energy[:, k] / kt for k in range(keep)])
    return positions, reduced_energy, np.repeat(np.asarray(temps, dtype=np.float64), n)


def cmd_simulate(args) -> int:
    """``boltzgen simulate``: Boltzmann samples of a target (MD / replica exchange, MCMC or exact)
    written to a sample file, resumable through ``OUTPUT.checkpoint``.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed options (see ``boltzgen simulate --help``): the target, ``n``, ``output``,
        ``seed``, and MD options ``timestep`` (fs), ``friction`` (1/ps), ``t_max`` (K),
        ``stride``, ``equilibration``, ``replicas``, ``exchange_interval``, and ``keep_replicas``
        and ``quench`` (ps) for replica-ladder training data.

    Returns
    -------
    int
        Exit status 0; metrics.json is written beside the output (or to ``--metrics``).

    Raises
    ------
    CommandError
        For invalid options or targets (exit status 2 through :func:`main`).
    """
    import numpy as np

    from .io import save_samples
    from .md import simulate

    if args.n < 1:
        raise CommandError(f"-n must be at least 1, got {args.n}")
    if args.keep_replicas < 1:
        raise CommandError(f"--keep-replicas must be at least 1, got {args.keep_replicas}")
    target = _target_from_args(args)
    checkpoint = args.output + ".checkpoint"
    from .systems.catalog import simulate_defaults

    options = dict(stride=args.stride, equilibration=args.equilibration, timestep=args.timestep,
                   friction=args.friction, replicas=args.replicas, t_max=args.t_max,
                   exchange_interval=args.exchange_interval)
    options = {**simulate_defaults(target.name), **{k: v for k, v in options.items() if v is not None}}
    if options.get("replicas", 1) == 1:
        options.pop("t_max", None)
    keep = int(args.keep_replicas)
    if keep > 1:
        if target.topology is None or options.get("replicas", 1) < keep:
            target.close()
            raise CommandError(f"--keep-replicas {keep} needs replica exchange (molecular MD) with at least {keep} "
                               f"replicas; this run has {options.get('replicas', 1)}")
        options["keep_replicas"] = True
    if args.quench is not None and (keep < 2 or not args.quench > 0):
        target.close()
        raise CommandError(f"--quench needs a positive time in ps and --keep-replicas of at least 2 (it relaxes the "
                           f"hotter replicas' frames); got --quench {args.quench} with --keep-replicas {keep}")
    start = time.perf_counter()
    try:
        result = simulate(target, args.n, seed=args.seed, checkpoint=checkpoint, progress=not args.no_progress,
                          **options)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    finally:
        target.close()
    meta = {**target.metadata(), **result.metadata, "seed": args.seed, "command": "simulate"}
    positions, reduced_energy, arrays = result.positions, result.reduced_energy, {}
    log_weights = None
    if keep > 1:
        positions, reduced_energy, temperatures = _ladder_frames(result, keep, target.kT)
        meta["kept_temperatures_K"] = [float(t) for t in result.metadata["temperatures_K"][:keep]]
        arrays["temperature_K"] = temperatures
        # As Boltzmann samples of the target, only the frames at its temperature count.
        log_weights = np.where(np.arange(len(positions)) < len(result.positions), 0.0, -np.inf)
        if args.quench:
            from .md.dynamics import quench

            hot = slice(len(result.positions), None)
            quench_start = time.perf_counter()
            settings = dict(time_ps=float(args.quench), friction=10.0, minimize=True)  # recorded as run
            positions[hot], potential = quench(target.system, positions[hot], target.temperature, **settings,
                                               platform=result.metadata["parameters"]["platform"], seed=args.seed)
            reduced_energy[hot] = potential / target.kT
            meta["quench"] = {"time_ps": settings["time_ps"], "friction_per_ps": settings["friction"],
                              "minimize": settings["minimize"], "temperature_K": target.temperature,
                              "n_frames": int(len(potential)), "wall_time_s": time.perf_counter() - quench_start}
    save_samples(args.output, positions, topology=target.topology, reduced_energy=reduced_energy,
                 log_weights=log_weights, metadata=meta, extra=arrays)
    if os.path.exists(checkpoint):
        os.remove(checkpoint)
    metrics = {"command": "simulate", "system": target.name, **result.metadata,
               "n_samples": int(positions.shape[0]), "output": os.path.abspath(args.output),
               "wall_time_s": time.perf_counter() - start,
               "mean_reduced_energy": float(result.reduced_energy.mean())}
    if keep > 1:
        metrics.update(n_samples_per_replica=int(result.positions.shape[0]),
                       kept_temperatures_K=meta["kept_temperatures_K"])
        if "quench" in meta:
            metrics["quench"] = meta["quench"]
    _emit(metrics, args, args.metrics or os.path.join(os.path.dirname(os.path.abspath(args.output)), "metrics.json"))
    if not args.json:
        print(f"wrote {metrics['n_samples']} samples of {target.name} to {args.output}", file=sys.stderr)
    return 0


def cmd_train(args) -> int:
    """``boltzgen train``: train an energy model on a sample file into a run directory.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed options (see ``boltzgen train --help``): ``data``, ``output`` (run directory),
        ``system``, ``config``, and overrides ``loss``, ``net``, ``steps``, ``batch_size``,
        ``pretrain_dsm_steps``, ``phi_positive_fraction``, ``seed``, ``threads``, and
        ``processes`` (data-parallel CPU processes).

    Returns
    -------
    int
        Exit status 0.

    Raises
    ------
    CommandError
        For unreadable data, a bad configuration or weighted samples.
    """
    from .train import train_in_processes

    overrides: dict = {}
    if args.loss:
        overrides.setdefault("loss", {})["kind"] = args.loss
    if args.net:
        overrides["net"] = {"kind": args.net}
    if args.steps is not None:
        overrides.setdefault("train", {})["steps"] = args.steps
    if args.batch_size is not None:
        overrides.setdefault("train", {})["batch_size"] = args.batch_size
    if args.pretrain_dsm_steps is not None:
        overrides["pretrain_dsm_steps"] = args.pretrain_dsm_steps
    if args.phi_positive_fraction is not None:
        value = args.phi_positive_fraction.strip().lower()
        try:
            overrides.setdefault("train", {})["phi_positive_fraction"] = None if value == "none" else float(value)
        except ValueError:
            raise CommandError(f"--phi-positive-fraction must be a number in (0, 1) or 'none', "
                               f"got {args.phi_positive_fraction!r}") from None
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.threads is not None:
        overrides.setdefault("train", {})["threads"] = args.threads
    try:
        metrics = train_in_processes(args.processes, args.data, args.output, system=args.system,
                                     config_file=args.config, overrides=overrides, progress=not args.no_progress,
                                     start_from=args.start_from)
    except (ValueError, FileNotFoundError, TypeError, RuntimeError) as exc:
        raise CommandError(str(exc)) from None
    metrics = {"command": "train", "run_dir": os.path.abspath(args.output), **metrics}
    _emit(metrics, args, None)
    if not args.json:
        print(f"trained {metrics['steps']} steps; model in {args.output}/model.pt", file=sys.stderr)
    return 0


def cmd_sample(args) -> int:
    """``boltzgen sample``: SMC (or a plain reverse SDE) from a trained model, reweighted to the
    target, written to a weighted sample file (with ΔF in kT for alanine-dipeptide-like targets).

    Parameters
    ----------
    args : argparse.Namespace
        Parsed options (see ``boltzgen sample --help``): ``run_dir``, the target (default: the
        system the model was trained on), ``n``, ``method``, ``steps``, ``t_min``, ``mcmc_steps``,
        ``anneal``, ``anneal_cess``, ``max_anneal``, ``anneal_mcmc_steps``, ``final_mcmc_steps``, ``tempering``,
        ``per_state_resampling``, ``balance_states``, ``runs``, ``no_chirality``,
        ``output``, ``seed``.

    Returns
    -------
    int
        Exit status 0; metrics.json is written beside the output (or to ``--metrics``).

    Raises
    ------
    CommandError
        For a missing model, an unnamed target or a shape mismatch.
    """
    import numpy as np
    import torch

    from .io import save_samples
    from .sampling.chirality import chiral_centres
    from .sampling.sde import reverse_sde
    from .sampling.smc import smc_sample
    from .train import load_model
    from .weights import delta_f, delta_f_point, has_phi, logsumexp, phi_states, pool_runs
    from .weights import ess_fraction as ess_fraction_of

    if args.n < 1:
        raise CommandError(f"-n must be at least 1, got {args.n}")
    if not 1 <= args.runs <= args.n:
        raise CommandError(f"--runs must lie between 1 and -n ({args.n}), got {args.runs}")
    if args.runs > 1 and args.method != "smc":
        raise CommandError("--runs applies to --method smc (reverse-SDE samples are independent already)")
    run_index = None
    try:
        model = load_model(args.run_dir)
    except (ValueError, FileNotFoundError) as exc:
        raise CommandError(str(exc)) from None
    if not any([args.system, args.pdb, args.forcefield, args.system_xml, args.topology]):
        if not model.metadata.get("system"):
            raise CommandError(f"{args.run_dir} does not say which system it was trained on; name the target")
        args.system = model.metadata["system"]
    if args.t_min is not None and not model.t_min <= args.t_min < 1.0:
        raise CommandError(f"--t-min must lie in [{model.t_min:g}, 1) (the model is trained down to t = "
                           f"{model.t_min:g}), got {args.t_min:g}")
    t_min = model.t_min if args.t_min is None else float(args.t_min)
    target = _target_from_args(args)
    if tuple(target.event_shape) != tuple(model.event_shape):
        raise CommandError(f"the model is for configurations of shape {tuple(model.event_shape)}, "
                           f"the target {target.name} has {tuple(target.event_shape)}")
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    try:
        if args.method == "smc":
            centres = chiral_centres(target.topology) if target.topology is not None else None
            use_chirality = centres is not None and len(centres) > 0 and not args.no_chirality
            if not 0.0 < args.tempering <= 1.0:
                raise CommandError(f"--tempering must lie in (0, 1], got {args.tempering}")
            if not 0.0 <= args.anneal_cess < 1.0:
                raise CommandError(f"--anneal-cess must lie in [0, 1), got {args.anneal_cess}")
            states = None
            if args.balance_states and not args.per_state_resampling:
                raise CommandError("--balance-states needs --per-state-resampling")
            if args.per_state_resampling:
                if target.topology is None or not has_phi(target.topology):
                    raise CommandError(f"--per-state-resampling needs a peptide with one phi torsion; "
                                       f"{target.name} has none")
                topology = target.topology

                def states(x):  # 1 for phi > 0, 0 for phi < 0
                    return phi_states(x.cpu().numpy(), topology)[1].astype(np.int64)
            # Independent runs (--runs R): n / R particles each, pooled by their log Z estimates;
            # their spread gives ΔF an error that includes each run's shared path history.
            sizes = [args.n // args.runs + (1 if r < args.n % args.runs else 0) for r in range(args.runs)]
            results = [smc_sample(model, target, size, generator, n_steps=args.steps, t_min=t_min,
                                  mcmc_steps=args.mcmc_steps,
                                  n_anneal=args.anneal, anneal_cess=args.anneal_cess or None,
                                  max_anneal=args.max_anneal, anneal_mcmc_steps=args.anneal_mcmc_steps,
                                  final_mcmc_steps=args.final_mcmc_steps, tempering=args.tempering, states=states,
                                  denoised_states=states is not None, balance_states=args.balance_states,
                                  chirality=True if use_chirality else None, progress=not args.no_progress)
                       for size in sizes]
            x = torch.cat([r.x for r in results])
            u = torch.cat([r.reduced_energy for r in results]).numpy()
            if args.runs == 1:
                log_w = results[0].log_weights.numpy()
            else:
                log_w = pool_runs([r.log_weights.numpy() for r in results], [r.log_z for r in results])
                run_index = np.repeat(np.arange(args.runs), sizes)
            summaries = [r.summary() for r in results]
            acceptance = [a for sm in summaries for a in sm["acceptance"] if a is not None]
            # The headline ESS is that of the final weights: SMC never resamples after the last
            # reweighting, so for one run it is also the ESS of its last level.
            ess_fraction = float(results[0].ess[-1]) if args.runs == 1 else ess_fraction_of(log_w)
            log_z = results[0].log_z if args.runs == 1 else float(logsumexp(np.array([r.log_z for r in results]))
                                                                   - np.log(args.runs))
            metrics = {"ess": ess_fraction * args.n, "ess_fraction": ess_fraction,
                       "ess_fraction_final_weights": ess_fraction_of(log_w),
                       "resampled_levels": sum(len(r.resampled) for r in results),
                       "log_z": log_z, "acceptance": float(sum(acceptance) / len(acceptance)) if acceptance else None,
                       "n_reflected": int(sum(r.n_reflected for r in results)),
                       "n_anneal_levels": max(sm["n_anneal_levels"] for sm in summaries),
                       "n_ancestors": sum(r.n_ancestors for r in results),
                       "n_ancestors_anneal": sum(r.n_ancestors_anneal for r in results),
                       "final_acceptance": summaries[0]["final_acceptance"], "tempering": args.tempering,
                       "per_state_resampling": bool(args.per_state_resampling),
                       "denoised_state_labels": states is not None, "balance_states": bool(args.balance_states),
                       "runs": args.runs,
                       "smc": summaries[0]}
            if args.runs > 1:
                metrics.update(log_z_runs=[r.log_z for r in results],
                               ess_fraction_runs=[float(r.ess[-1]) for r in results], smc_runs=summaries[1:])
        else:
            x = reverse_sde(model, args.n, generator, n_steps=args.steps, t_min=t_min)
            log_w, u, metrics = None, target.reduced_energy(x).detach().numpy(), {"n_reflected": 0}
    finally:
        target.close()
    x = x.detach().cpu().double().numpy()
    if log_w is not None and target.topology is not None and has_phi(target.topology):
        in_a, in_b = phi_states(x, target.topology)
        try:
            estimate = delta_f(log_w, in_a, in_b, seed=args.seed, groups=run_index)
            metrics.update(delta_f_kT=estimate.value, delta_f_err_kT=estimate.error,
                           delta_f_error_method="bootstrap of particles" if run_index is None
                           else f"bootstrap of the {args.runs} independent runs",
                           delta_f_definition="F(phi > 0) - F(phi < 0) in kT")
        except ValueError as exc:
            metrics.update(delta_f_kT=None, delta_f_note=str(exc))
        if run_index is not None:
            in_run = [run_index == r for r in range(args.runs)]
            per_run = [delta_f_point(log_w[m], in_a[m], in_b[m]) for m in in_run]
            metrics["delta_f_runs_kT"] = [v if np.isfinite(v) else None for v in per_run]
            metrics["phi_positive_runs"] = [int(in_b[m].sum()) for m in in_run]
    meta = {**target.metadata(), "command": "sample", "method": args.method, "seed": args.seed,
            "run_dir": os.path.abspath(args.run_dir), "runs": args.runs if args.method == "smc" else 1}
    save_samples(args.output, x, topology=target.topology, log_weights=log_w, reduced_energy=u, metadata=meta,
                 extra=None if run_index is None else {"smc_run": run_index})
    metrics = {"command": "sample", "system": target.name, "method": args.method, "n_samples": args.n, "t_min": t_min,
               "output": os.path.abspath(args.output), "wall_time_s": time.perf_counter() - start, **metrics}
    _emit(metrics, args, args.metrics or os.path.join(os.path.dirname(os.path.abspath(args.output)), "metrics.json"))
    if not args.json:
        line = f"wrote {args.n} samples of {target.name} to {args.output}"
        if args.method == "smc":
            line += f"; ESS {metrics['ess']:.1f} ({metrics['ess_fraction']:.1%}), log Z {metrics['log_z']:.3f}"
        if metrics.get("delta_f_kT") is not None:
            line += f", F(phi>0) - F(phi<0) = {metrics['delta_f_kT']:.2f} +- {metrics['delta_f_err_kT']:.2f} kT"
        print(line, file=sys.stderr)
    return 0


def cmd_reweight(args) -> int:
    """``boltzgen reweight``: importance weights of a sample file against a target.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed options (see ``boltzgen reweight --help``): ``samples``, the target, ``log_q``,
        ``output``, ``n_bootstrap``, ``block_size``, ``seed``.

    Returns
    -------
    int
        Exit status 0; metrics.json is written beside the output (or to ``--metrics``).

    Raises
    ------
    CommandError
        For a missing file or incompatible samples.
    """
    from .reweight import reweight_samples

    if not os.path.exists(args.samples):
        raise CommandError(f"sample file not found: {args.samples}")
    target = _target_from_args(args)
    start = time.perf_counter()
    try:
        metrics = reweight_samples(args.samples, target, log_q=args.log_q, out_path=args.output, seed=args.seed,
                                   n_bootstrap=args.n_bootstrap, block_size=args.block_size,
                                   progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as exc:
        raise CommandError(str(exc)) from None
    finally:
        target.close()
    metrics = {"command": "reweight", **metrics, "wall_time_s": time.perf_counter() - start}
    _emit(metrics, args, args.metrics or os.path.join(os.path.dirname(os.path.abspath(args.output)), "metrics.json"))
    if not args.json:
        line = (f"ESS {metrics['ess']:.1f} of {metrics['n']} ({metrics['ess_fraction']:.1%}), "
                f"log Z {metrics['log_z']:.3f} +- {metrics['log_z_err']:.3f}")
        if metrics.get("delta_f_kT") is not None:
            err = metrics["delta_f_err_kT"]
            line += f", F(phi>0) - F(phi<0) = {metrics['delta_f_kT']:.2f} +- {'inf' if err is None else f'{err:.2f}'} kT"
        elif "delta_f_note" in metrics:
            line += f"; no Delta F ({metrics['delta_f_note']})"
        if metrics["n_infinite_energy"]:
            line += f"; {metrics['n_infinite_energy']} samples had +inf energy (weight 0)"
        print(f"{line}; wrote {args.output}", file=sys.stderr)
    return 0


def cmd_analyze(args) -> int:
    """``boltzgen analyze``: plots and metrics of a sample file into a report directory.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed options (see ``boltzgen analyze --help``): ``samples``, ``output``, ``reference``,
        ``run_dir``, ``seed``.

    Returns
    -------
    int
        Exit status 0.

    Raises
    ------
    CommandError
        For missing files or unreadable samples.
    """
    from .report import analyze

    for label, path in (("sample file", args.samples), ("reference file", args.reference)):
        if path is not None and not os.path.exists(path):
            raise CommandError(f"{label} not found: {path}")
    if args.run_dir is not None and not os.path.isdir(args.run_dir):
        raise CommandError(f"run directory not found: {args.run_dir}")
    try:
        metrics = analyze(args.samples, args.output, args.reference, run_dir=args.run_dir, seed=args.seed)
    except (ValueError, FileNotFoundError) as exc:
        raise CommandError(str(exc)) from None
    _emit(metrics, args, None)
    if not args.json:
        line = f"{metrics['n']} samples, ESS {metrics['ess']:.1f} ({metrics['ess_fraction']:.1%})"
        if metrics.get("energy_w2") is not None:
            line += f", energy W2 {metrics['energy_w2']:.3g} kT"
        if metrics.get("torsion_w2") is not None:
            line += f", torsion W2 {metrics['torsion_w2']:.3g} rad"
        if metrics.get("delta_f_kT") is not None:
            err = metrics.get("delta_f_err_kT")
            line += f", F(phi>0) - F(phi<0) = {metrics['delta_f_kT']:.2f} +- {'inf' if err is None else f'{err:.2f}'} kT"
        print(f"{line}; wrote {os.path.join(args.output, 'index.html')}", file=sys.stderr)
    return 0


def cmd_quickstart(args) -> int:
    """``boltzgen quickstart``: the whole chain (simulate, train, sample, analyze) on alanine
    dipeptide in vacuum (300 K), with a summary of ESS, ΔF (kT) and energy W2 (kT).

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
    from .pipeline import QUICKSTART_SIZES, run_pipeline

    if args.fast and args.long:
        raise CommandError("--fast and --long exclude each other")
    sizes = dict(QUICKSTART_SIZES["fast" if args.fast else "long" if args.long else "default"])
    if not args.json:
        print(f"boltzgen quickstart: alanine dipeptide in vacuum (amber99sbildn, 300 K) into {args.output}/ - "
              f"replica-exchange data, DSM + DiffCLF training of an EGNN energy, SMC with OpenMM reweighting, "
              f"report{' (--fast smoke run: tiny sizes, numbers meaningless)' if args.fast else ''}",
              file=sys.stderr)
    try:
        summary = run_pipeline(args.output, system="aldp-vacuum", seed=args.seed, progress=not args.no_progress,
                               log=None if not args.json else (lambda line: print(line, file=sys.stderr)), **sizes)
    except RuntimeError as exc:
        raise CommandError(str(exc)) from None
    summary = {"command": "quickstart", "fast": bool(args.fast), "long": bool(args.long), **summary}
    _emit(summary, args, os.path.join(args.output, "metrics.json"))
    if not args.json:
        def fmt(value, spec=".2f"):
            return "n/a" if value is None else format(value, spec)

        print("\nsummary", file=sys.stderr)
        print(f"  ESS              {fmt(summary['ess'], '.1f')} of {summary['n_samples']} "
              f"({fmt(summary['ess_fraction'], '.1%')}; the particles descend from "
              f"{fmt(summary.get('n_ancestors_anneal'), 'd')} of those at t_min)", file=sys.stderr)
        if summary.get("ess") is not None and summary["ess"] < MIN_TRUSTED_ESS:
            print(f"  warning          the weights rest on fewer than {MIN_TRUSTED_ESS} effective samples: the "
                  f"model is too far from the force field for the estimates below to mean much (more training: "
                  f"--long)", file=sys.stderr)
        per_run, counts = summary.get("delta_f_runs_kT"), summary.get("phi_positive_runs")
        print(f"  F(phi>0) - F(phi<0)  {fmt(summary.get('delta_f_kT'))} +- {fmt(summary.get('delta_f_err_kT'))} kT "
              f"(reference data: {fmt(summary.get('reference_delta_f_kT'))} +- "
              f"{fmt(summary.get('reference_delta_f_err_kT'))} kT"
              + (f", from {summary['reference_phi_positive_n']} phi > 0 frames"
                 if summary.get("reference_phi_positive_n") is not None else "") + ")"
              + (f"\n                   error: {summary['delta_f_error_method']}" if summary.get("delta_f_error_method")
                 else "")
              + (f"; runs: {', '.join(fmt(v, '.1f') for v in per_run)} kT" if per_run else "")
              + (f" (phi > 0 particles: {', '.join(map(str, counts))})" if counts else "")
              + (f"\n                   no estimate: {summary['delta_f_note']} (state B: phi > 0)"
                 if summary.get("delta_f_note") else ""), file=sys.stderr)
        if summary.get("delta_f_kT") is not None and per_run:
            print("  note             the error is the spread of the runs; with a model this briefly trained the "
                  "sampler's settings (e.g. --t-min) can move Delta F by a few kT more (README, How it works)",
                  file=sys.stderr)
        few = [r + 1 for r, c in enumerate(counts or []) if c < MIN_STATE_PARTICLES]
        if few:
            print(f"  warning          run{'s' if len(few) > 1 else ''} {', '.join(map(str, few))} ended with fewer "
                  f"than {MIN_STATE_PARTICLES} phi > 0 particles: such runs usually put Delta F too high (their "
                  f"few particles underweight the state); more particles per run (-n) or runs (--runs) help",
                  file=sys.stderr)
        print(f"  energy W2        {fmt(summary.get('energy_w2'), '.3f')} kT against the training data", file=sys.stderr)
        print(f"  wall time        {summary['total_seconds']:.0f} s "
              f"({', '.join(f'{k} {v:.0f} s' for k, v in summary['stage_seconds'].items())})", file=sys.stderr)
        print(f"  samples          {summary['files']['samples']}", file=sys.stderr)
        print(f"  report           {summary['files']['report']}", file=sys.stderr)
    return 0


def cmd_bench_bridge(args) -> int:
    """``boltzgen bench bridge``: throughput (evaluations/s) of the OpenMM energy pool against a
    plain single-Context loop.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed options (see ``boltzgen bench bridge --help``): the target, ``batch``,
        ``workers``, ``platform``, ``output``, ``seed``.

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
        result = bench_bridge(target.system, target.temperature, target.positions.numpy(), batch=args.batch,
                              n_workers=args.workers, platform=args.platform, seed=args.seed)
    finally:
        target.close()
    result = {"command": "bench bridge", "system": target.name, **result}
    _emit(result, args, args.output)
    if not args.json:
        print(f"{target.name}: bridge {result['bridge_per_s']:.0f}/s, plain loop {result['plain_loop_per_s']:.0f}/s "
              f"(speedup {result['speedup_vs_plain_loop']:.2f}), fraction of limit {result['fraction_of_limit']:.2f}")
    return 0


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``boltzgen`` with all sub-commands.

    Returns
    -------
    argparse.ArgumentParser
        Each sub-command's parser sets ``func`` to its ``cmd_*`` function.
    """
    parser = argparse.ArgumentParser(prog="boltzgen", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"boltzgen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("systems", help="list the built-in systems")
    _add_common(p)
    p.set_defaults(func=cmd_systems)

    p = sub.add_parser("simulate", help="MD / replica exchange / exact samples -> sample file",
                       description="Simulate a target and write an HDF5 sample file (mdtraj-loadable for molecules). "
                                   "OpenMM Langevin dynamics (LangevinMiddle) for molecular systems, optionally "
                                   "replica exchange over a geometric temperature ladder; MALA chains for LJ "
                                   "clusters; exact draws for analytic targets. Resumes from FILE.checkpoint.")
    _add_target(p, positional=True)
    p.add_argument("-n", type=int, required=True, help="number of samples (frames)")
    p.add_argument("-o", "--output", required=True, help="output sample file (.h5)")
    p.add_argument("--stride", type=int, help="MD steps (or MCMC steps) between saved frames")
    p.add_argument("--equilibration", type=int, help="equilibration steps before the first frame")
    p.add_argument("--timestep", type=float, help="MD time step in fs (default 1)")
    p.add_argument("--friction", type=float, help="Langevin friction in 1/ps (default 1)")
    p.add_argument("--replicas", type=int,
                   help="replica-exchange replicas (1: plain MD; alanine dipeptide defaults to 6 up to 1000 K)")
    p.add_argument("--t-max", type=float, help="highest temperature of the geometric replica ladder (K)")
    p.add_argument("--exchange-interval", type=int, help="MD steps between exchange attempts")
    p.add_argument("--keep-replicas", type=int, default=1, metavar="K",
                   help="replica exchange: keep the frames of the K coldest replicas, N per replica (default 1: "
                        "the target temperature only). Training data for a model that must cover rare states; "
                        "only the target-temperature frames count as Boltzmann samples of the target (the others "
                        "get weight zero, and a per-frame temperature_K array)")
    p.add_argument("--quench", type=float, metavar="PS",
                   help="with --keep-replicas: relax every frame of the hotter replicas to the target temperature "
                        "(local energy minimisation, then PS ps of Langevin dynamics at friction 10/ps), so the "
                        "rare states the hot replicas visit come with the target's local geometry (training data; "
                        "0.5 is enough for alanine dipeptide: the quenched frames' mean and spread of U/kT match "
                        "the target-temperature frames')")
    _add_file_command_options(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("train", help="train an energy model on a sample file -> run directory",
                       description="Train E_theta(x, t) with DSM, DiffCLF or both. Configuration: the built-in "
                                   "defaults, then the system's shipped defaults (systems/<name>.train.yaml), then "
                                   "--config FILE (YAML), then the flags. Resumes from RUN_DIR/checkpoint.pt.")
    p.add_argument("--system", help="built-in system the data belong to (default: from the data file)")
    p.add_argument("--data", required=True, help="sample file from `boltzgen simulate`")
    p.add_argument("-o", "--output", required=True, metavar="RUN_DIR", help="run directory")
    p.add_argument("--config", help="YAML configuration file")
    p.add_argument("--loss", choices=["dsm", "diffclf", "dsm+diffclf"], help="training objective")
    p.add_argument("--net", choices=["mlp", "egnn", "e3nn"], help="network family")
    p.add_argument("--steps", type=int, help="optimisation steps")
    p.add_argument("--batch-size", type=int, help="configurations per step")
    p.add_argument("--pretrain-dsm-steps", type=int,
                   help="steps of DSM alone before the objective takes over (pre-training, then fine-tuning)")
    p.add_argument("--phi-positive-fraction", metavar="F",
                   help="share of every batch drawn from the phi > 0 frames (peptides with one phi torsion; "
                        "'none' draws frames uniformly; default: the system's config, off for the built-in systems)")
    p.add_argument("--start-from", metavar="CHECKPOINT",
                   help="continue from another run's DSM pre-training checkpoint (same data, net, optimiser, "
                        "steps, batch and seed; its step within both runs' --pretrain-dsm-steps): the same run "
                        "as from step 0, so one pre-training serves several fine-tunings")
    p.add_argument("--threads", type=int, help="torch CPU threads (per process)")
    p.add_argument("--processes", type=int, default=1, metavar="P",
                   help="data-parallel training processes, each drawing batch/P of every batch, gradients "
                        "averaged, cores / P torch threads each unless --threads says otherwise (default 1; measured "
                        "on 2 cores: P = 2 runs a step 1.17x faster than one process with 2 threads)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the config's, 0)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON on stdout")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="SMC (or reverse SDE) from a trained model -> weighted sample file",
                       description="Sequential Monte Carlo along the learned diffusion path, annealed to the "
                                   "target's energy at the end (OpenMM for molecules): weighted samples, log Z, "
                                   "ESS; for alanine dipeptide F(phi > 0) - F(phi < 0). --method sde draws "
                                   "unweighted samples of the model itself. The target defaults to the system "
                                   "the model was trained on.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory of `boltzgen train`")
    _add_target(p)
    p.add_argument("-n", type=int, required=True, help="number of particles / samples")
    p.add_argument("-o", "--output", required=True, help="output sample file (.h5)")
    p.add_argument("--method", choices=["smc", "sde"], default="smc", help="sampler (default smc)")
    p.add_argument("--steps", type=int, default=100, help="diffusion steps from t = 1 to t_min (default 100)")
    p.add_argument("--t-min", type=float, default=None, metavar="T",
                   help="last diffusion time, where the annealing to the target starts (default: the model's "
                        "t_min; at least that). With a model far from the force field Delta F can move with it by "
                        "more than its quoted error (README, How it works): compare two values")
    p.add_argument("--mcmc-steps", type=int, default=0,
                   help="MALA moves per diffusion level (default 0). Each costs a model evaluation, like a "
                        "diffusion step; on alanine dipeptide 2 moves per level at 100 levels made independent "
                        "runs agree on log Z as 400 levels without moves do")
    p.add_argument("--anneal", type=int, default=16,
                   help="annealing levels from the model to the target: a linear beta grid of this many, or the "
                        "fewest with --anneal-cess (default 16)")
    p.add_argument("--anneal-cess", type=float, default=0.9,
                   help="adaptive beta grid: more levels where one would lose more than this conditional ESS "
                        "(default 0.9; 0 for the linear grid of --anneal levels)")
    p.add_argument("--max-anneal", type=int, default=64, help="the most annealing levels with --anneal-cess (default 64)")
    p.add_argument("--anneal-mcmc-steps", type=int, default=5,
                   help="MALA moves per annealing level (model and target forces; default 5)")
    p.add_argument("--final-mcmc-steps", type=int, default=50,
                   help="MALA moves on the target alone after the last reweighting (target forces only, the "
                        "weights stay valid; default 50)")
    p.add_argument("--tempering", type=float, default=1.0, metavar="B",
                   help="exponent b in (0, 1] of the learned energies at t_min: b < 1 flattens the model's "
                        "free-energy differences by b (as the temperature T/b would), so rare states get more "
                        "particles; the weights correct for it (default 1: none)")
    p.add_argument("--per-state-resampling", action="store_true",
                   help="resample within the states phi < 0 and phi > 0 separately (peptides with one phi "
                        "torsion): a state the model puts too high keeps its particles, with small weights, "
                        "until the annealing corrects them; during the diffusion a particle's state is the phi of "
                        "its denoised estimate E[x_0 | x_t], which shows where it is heading long before its noisy "
                        "phi does (default: resample all particles together)")
    p.add_argument("--balance-states", action="store_true",
                   help="with --per-state-resampling: give phi < 0 and phi > 0 half of the particles each at the "
                        "start of the annealing (each keeps its weight), so the rarer state's free energy does "
                        "not rest on a handful of particles")
    p.add_argument("--runs", type=int, default=1,
                   help="independent SMC runs sharing the -n particles, pooled by their log Z: Delta F then gets "
                        "the error of a bootstrap over runs, which includes the run-to-run spread that the "
                        "particles of one run share (default 1)")
    p.add_argument("--no-chirality", action="store_true", help="do not fold peptides onto the L-form")
    _add_file_command_options(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("reweight", help="importance weights of samples against a target -> weighted sample file",
                       description="Importance-weight the samples of FILE against a target: log w = -u(x) - log q(x) "
                                   "with u the target's reduced energy and log q the proposal log-density of each "
                                   "sample. Writes a weighted sample file and metrics (ESS, log Z and, for alanine "
                                   "dipeptide, F(phi > 0) - F(phi < 0) in kT with a bootstrap error).")
    p.add_argument("samples", metavar="FILE", help="sample file (HDF5) to reweight")
    _add_target(p)
    p.add_argument("--log-q", metavar="ARRAY",
                   help="proposal log-density of each sample: the name of an array in FILE or a .npy file "
                        "(default: FILE's log_q array)")
    p.add_argument("-o", "--output", required=True, help="output weighted sample file (.h5)")
    p.add_argument("--n-bootstrap", type=int, default=200, help="bootstrap replicates of the Delta F error (default 200)")
    p.add_argument("--block-size", type=_block_size_arg,
                   help="block length of the bootstrap in frames, or 'auto' (from the correlation of the phi "
                        "states); default: auto for MD trajectories (files from `boltzgen simulate` with MD or replica "
                        "exchange, and reweightings of them), else 1")
    _add_file_command_options(p)
    p.set_defaults(func=cmd_reweight)

    p = sub.add_parser("analyze", help="plots and metrics of a sample file -> report directory",
                       description="Analyse a sample file (weighted or not): Ramachandran free-energy map and "
                                   "F(phi), F(psi) profiles with bootstrap errors for alanine dipeptide, reduced-"
                                   "energy histograms, the SMC ESS trace (from metrics.json beside FILE) and the "
                                   "training losses (from the run directory). With --reference: energy and torsion "
                                   "Wasserstein-2 distances. Writes PNGs, metrics.json and index.html into DIR.")
    p.add_argument("samples", metavar="FILE", help="sample file (HDF5)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory of the report")
    p.add_argument("--reference", metavar="FILE", help="reference sample file of the same system (e.g. long MD)")
    p.add_argument("--run-dir", metavar="DIR",
                   help="run directory for the training-loss curves (default: the one recorded in FILE)")
    _add_common(p)
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("quickstart", help="the whole pipeline on alanine dipeptide (about 15 minutes on 2 cores)",
                       description="Replica-exchange data, DSM + DiffCLF training of the EGNN energy, 4 pooled SMC "
                                   "runs along the learned diffusion path annealed to the OpenMM energy (F(phi > 0) "
                                   "- F(phi < 0) with the error of a bootstrap over runs), and a report - the "
                                   "commands are printed as they run. Leaves DIR/samples.h5 (weighted, "
                                   "mdtraj-loadable), DIR/metrics.json and DIR/report/index.html. Rerunning resumes.")
    p.add_argument("-o", "--output", default="boltzgen-quickstart", metavar="DIR",
                   help="output directory (default ./boltzgen-quickstart)")
    p.add_argument("--fast", action="store_true", help="a one-minute smoke run with tiny sizes")
    p.add_argument("--long", action="store_true",
                   help="about 40 minutes: the recipe of benchmarks/aldp.py (5 ns of data, phi > 0 oversampled in "
                        "training, 3000 steps of 64, 4 pooled SMC runs of 400 levels), which gives Delta F with a "
                        "smaller error than the default")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_common(p)
    p.set_defaults(func=cmd_quickstart)

    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="BENCH")
    p = bench_sub.add_parser("bridge", help="OpenMM energy pool against the plain single-Context loop",
                             description="Configurations per second of the batched OpenMM energy pool against the "
                                         "plain single-Context loop and against cores x bare getState rate.")
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
        Exit status: 0 on success, 2 for usage errors (:class:`CommandError`, printed as one
        line) or no sub-command, 130 when interrupted.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CommandError as exc:
        print(f"boltzgen {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"boltzgen {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
