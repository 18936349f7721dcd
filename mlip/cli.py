"""The `mlip` command line. Each subcommand is a thin layer over the Python API; errors in user
input (MlipError) are printed as one line, never as a traceback."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from mlip.errors import MlipError

log = logging.getLogger("mlip")


def bundled_structure() -> Path:
    """The default bundled model's example structure (`mlip models`), used when none is given."""
    from mlip.registry import default_model

    return default_model().example


def bundled_model() -> Path:
    """The default bundled potential (`mlip models` lists them), used when --model is not given."""
    from mlip.registry import default_model

    return default_model().path


def _add_read_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("reading")
    group.add_argument("--format", help="input format (default: from the file); mptrj, mlearn, ase-db or any ase.io format")
    group.add_argument("--energy-key", default="energy", help="label key of the total energy, eV (MACE: REF_energy)")
    group.add_argument("--forces-key", default="forces", help="label key of the forces, eV/Å (MACE: REF_forces)")
    group.add_argument("--stress-key", default="stress", help="label key of the stress, eV/Å^3, ASE sign (MACE: REF_stress)")
    group.add_argument("--virials-key", default=None, help="label key of virials, eV (MACE: REF_virials); stress = -virials/V")
    group.add_argument(
        "--mptrj-energy",
        choices=["uncorrected_total_energy", "corrected_total_energy"],
        help="which MPtrj energy is the label (required for MPtrj JSON; MACE-MP/SevenNet use uncorrected)",
    )
    group.add_argument("--index", default=":", help="frames to read, ase slice syntax (default all)")
    group.add_argument("--on-error", choices=["raise", "skip"], default="raise", help="stop at the first bad frame, or skip (and count) bad frames")
    group.add_argument("--min-distance", type=float, default=0.5, help="closest allowed interatomic distance, Å")
    group.add_argument("--close-atoms", choices=["error", "warn", "ignore"], default="error", help="what to do with atoms closer than --min-distance")


def _read_options(args) -> dict:
    return dict(
        format=args.format,
        energy_key=args.energy_key,
        forces_key=args.forces_key,
        stress_key=args.stress_key,
        virials_key=args.virials_key,
        mptrj_energy=args.mptrj_energy,
        index=args.index,
        on_error=args.on_error,
        min_distance=args.min_distance,
        close_atoms=args.close_atoms,
    )


def _cmd_inspect(args) -> None:
    from mlip.data.inspect import describe_frames
    from mlip.data.readers import ReadReport, read_frames
    from mlip.data.shards import ShardedDataset

    paths = args.structures or [bundled_structure()]
    for path in paths:
        if Path(path).is_dir():  # an `mlip convert` / `mlip label` shard directory
            dataset = ShardedDataset(path)
            print(describe_frames((dataset[i] for i in range(len(dataset))), path, cutoff=args.cutoff))
            continue
        report = ReadReport()
        frames = read_frames(path, report=report, require_labels=False, **_read_options(args))
        print(describe_frames(frames, path, cutoff=args.cutoff))
        print(report.summary())


def _cmd_convert(args) -> None:
    from mlip.data.shards import convert

    report = convert(
        args.sources,
        args.output,
        frames_per_shard=args.frames_per_shard,
        overwrite=args.overwrite,
        progress=not args.quiet,
        edge_cutoffs=args.edge_cutoffs,
        **_read_options(args),
    )
    print(report.summary())


def _cmd_models(args) -> None:
    import dataclasses
    import json

    from mlip.potential import Potential
    from mlip.registry import bundled_models

    rows = []
    for card in bundled_models():
        potential = Potential.load(card.path)
        row = {k: v for k, v in dataclasses.asdict(card).items() if k not in ("path", "example")}
        row.update(file=str(card.path), example=str(card.example), elements=list(potential.config.species_symbols),
                   num_params=potential.num_params)
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    for row in rows:
        errors = {k: v for k, v in row["test_errors"].items() if k != "data"}
        elements = row["elements"]
        shown = " ".join(elements) if len(elements) <= 8 else f"{len(elements)} elements"
        print(f"{row['name']}{' (default)' if row['default'] else ''}: {row['description']}\n"
              f"  elements {shown}; {row['num_params']:,} parameters\n"
              f"  trained on {row['training_data']}" + (f"; teacher {row['teacher']}" if row["teacher"] else "")
              + f"\n  test errors on {row['test_errors'].get('data')}: "
              + ", ".join(f"{k} {v}" for k, v in errors.items()))


def _cmd_create(args) -> None:
    import jax

    from mlip.potential import Potential

    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    potential = Potential.create(
        args.preset, species=args.species, r_cut=args.r_cut, seed=args.seed, dtype=args.dtype
    )
    potential.save(args.output)
    c = potential.config
    print(
        f"{args.output}: {args.preset} preset, {potential.num_params:,} parameters, "
        f"lmax={c.lmax} mmax={c.mmax} channels={c.channels} layers={c.num_layers}, "
        f"r_cut={c.r_cut} Å, species {' '.join(c.species_symbols)}, {args.dtype}, random weights"
    )


def load_model(path, dtype: str | None = None):
    """The potential saved at ``path``, cast to ``dtype`` (None: as saved), for a command. The
    command's process-wide choices, made here explicitly (a library call never makes them):
    JAX's x64 mode when the file or ``dtype`` asks for float64, and the persistent
    compilation cache (mlip.runtime.enable_compilation_cache, in $MLIP_CACHE_DIR or
    ~/.cache/mlip/jax)."""
    import jax

    from mlip.potential import Potential, saved_dtype
    from mlip.runtime import enable_compilation_cache

    enable_compilation_cache()
    if "float64" in (dtype, saved_dtype(path)):
        jax.config.update("jax_enable_x64", True)
    potential = Potential.load(path)
    return potential if dtype in (None, potential.dtype) else potential.astype(dtype)


def _cmd_predict(args) -> None:
    import numpy as np

    from mlip.data.readers import ReadReport, read_frames
    from mlip.units import EV_PER_A3_TO_GPA

    potential = load_model(args.model, args.dtype)
    dispersion = None
    if args.d3:
        import jax

        from mlip.nn.dispersion import D3Dispersion, add_dispersion

        dispersion = D3Dispersion.from_name("d3bj", "float64" if jax.config.jax_enable_x64 else "float32")
    report = ReadReport()
    frames = read_frames(args.structure, require_labels=False, report=report, **_read_options(args))
    if args.compile_only:  # mlip warmup
        potential.compile_frames(frames, max_nodes=args.batch_nodes)
        return
    # Streamed: each batch is printed as soon as it is computed, in bounded memory.
    for frame, result in potential.predict_frames(frames, max_nodes=args.batch_nodes):
        if dispersion is not None:
            result = add_dispersion(result, dispersion(frame.to_atoms()))
        line = (
            f"frame {frame.index}: {frame.n_atoms} atoms, energy {result.energy:.6f} eV "
            f"({result.energy / frame.n_atoms:.6f} eV/atom), max |F| "
            f"{np.linalg.norm(result.forces, axis=1).max():.4f} eV/Å"
        )
        if result.stress is not None:
            pressure = -np.trace(result.stress) / 3 * EV_PER_A3_TO_GPA
            line += f", pressure {pressure:.4f} GPa"
        print(line, flush=True)
    if report.read == 0:
        skipped = f" (skipped {report.skipped} bad frames)" if report.skipped else ""
        raise MlipError(f"{args.structure}: no structure found{skipped}")


def _cmd_evaluate(args) -> None:
    import json
    import time

    from mlip.data.readers import ReadReport
    from mlip.evaluate import evaluate, open_data
    from mlip.fileio import atomic_write_bytes

    potential = load_model(args.model, args.dtype)
    report = ReadReport()
    frames, total = open_data(args.data, potential, report=report, **_read_options(args))
    start = time.perf_counter()
    metrics = evaluate(potential, frames, max_nodes=args.batch_nodes, max_edges=args.batch_edges,
                       progress=not args.quiet, total=total, by=args.by)
    seconds = time.perf_counter() - start
    skipped = f"; skipped {report.skipped} bad frames (see warnings)" if report.skipped else ""
    if metrics.frames == 0:
        raise MlipError(f"{args.data}: no frames to evaluate{skipped}")
    print(f"{args.data}: {metrics.frames} frames, {metrics.atoms} atoms, {seconds:.1f} s "
          f"({metrics.frames / seconds:.0f} frames/s){skipped}")
    print(metrics.table())
    if args.json:
        result = {"model": str(args.model), "data": str(args.data), **metrics.to_dict()}
        atomic_write_bytes(args.json, json.dumps(result, indent=1, ensure_ascii=False).encode())


def _read_structures(args) -> list:
    """The structures of args.structure selected by --index, as ase.Atoms without labels, each
    with its frame index in the file as ``info["source_frame"]`` (messages and outputs name
    it, so that frames skipped with --on-error skip do not shift the count); the bundled
    structure and model stand in for those not given."""
    from mlip.data.readers import read_frames

    if args.structure is None:
        args.structure = bundled_structure()
        print(f"structure: {args.structure.name} (bundled)")
    if args.model is None:
        args.model = bundled_model()
        print(f"model: {args.model.name} (bundled)")
    structures = []
    for frame in read_frames(args.structure, require_labels=False, **_read_options(args)):
        atoms = frame.to_atoms()
        atoms.calc = None  # input labels must not pass for results
        atoms.info["source_frame"] = frame.index
        structures.append(atoms)
    if not structures:
        raise MlipError(f"{args.structure}: no structure found")
    return structures


def _attach_calculator(atoms, args):
    from mlip.calculator import Calculator

    atoms.calc = Calculator(load_model(args.model, args.dtype), dispersion="d3bj" if args.d3 else None)
    return atoms


def _load_potential(args):
    """The potential of --model (cast to --dtype) for the batched engine of mlip.sim."""
    return load_model(args.model, args.dtype)


#: --optimizer choices of each engine (FIRE runs on both).
DEVICE_OPTIMIZERS, ASE_OPTIMIZERS = ("fire", "descent"), ("fire", "bfgs", "lbfgs")


def _engine(args, structures, **ase_options) -> str:
    """"ase" or "device": the ASE path only when asked for, by --engine ase or by an option
    only it has (``ase_options``: name -> given), never by the number of structures. The ASE
    path runs one structure."""
    chosen = [option for option, given in ase_options.items() if given]
    if args.engine == "ase" or chosen:
        if len(structures) > 1:
            option = chosen[0] if chosen else "--engine ase"
            raise MlipError(f"{option} works for one structure only (the ASE path); {args.structure} selects "
                            f"{len(structures)} (choose one with --index, or leave it out: the batched engine runs them all)")
        return "ase"
    return "device"


def _frame_name(args, atoms) -> str:
    return f"{args.structure}, frame {atoms.info['source_frame']}"


def _cmd_relax(args) -> None:
    from mlip.sim.ase import check_cell_relaxable

    if args.pressure and not args.cell:
        raise MlipError("--pressure applies to the cell: add --cell")
    structures = _read_structures(args)
    for atoms in structures if args.cell else ():  # before any output is written, on both paths
        check_cell_relaxable(atoms, _frame_name(args, atoms))
    # Next to the input, except for the bundled structure: never write into the installed package.
    folder = Path.cwd() if args.structure == bundled_structure() else args.structure.parent
    output = args.output or folder / (args.structure.stem + "-relaxed.extxyz")
    engine = _engine(args, structures, **{"--traj": args.traj,
                                          f"--optimizer {args.optimizer}": args.optimizer not in DEVICE_OPTIMIZERS})
    if engine == "device":
        return _relax_device(args, structures, output)
    if args.optimizer not in ASE_OPTIMIZERS:
        raise MlipError(f"--optimizer {args.optimizer} runs on the batched engine only (leave out --engine ase)")
    _relax_ase(args, structures[0], output)


def _relax_ase(args, atoms, output) -> None:
    """One structure through ASE's optimiser (mlip.sim.ase.relax), with a trajectory."""
    from mlip.sim.ase import relax, summary, write_structure

    atoms = _attach_calculator(atoms, args)
    if args.compile_only:  # mlip warmup
        atoms.calc.compile(atoms)
        return
    trajectory = args.traj or output.with_suffix(".traj")
    print(f"initial: {summary(atoms)}")
    converged = relax(
        atoms, fmax=args.fmax, steps=args.steps, relax_cell=args.cell, pressure=args.pressure,
        optimizer=args.optimizer, trajectory=trajectory, progress=not args.quiet,
    )
    write_structure(atoms, output)
    print(f"{'converged' if converged else 'NOT converged'}: {summary(atoms)}")
    print(f"wrote {output} and {trajectory}")
    if not converged:
        raise MlipError(f"relaxation did not reach fmax {args.fmax} eV/Å in {args.steps} steps")


def _relax_device(args, structures, output) -> None:
    """Every structure on the device (mlip.sim.relax: FIRE or descent, + FrechetCellFilter)."""
    import time

    from mlip import sim
    from mlip.sim.ase import summary, write_structure

    potential = _load_potential(args)
    start = time.perf_counter()
    results = sim.relax(potential, structures, fmax=args.fmax, relax_cell=args.cell, max_steps=args.steps,
                        pressure=args.pressure, optimizer=args.optimizer,
                        budget=sim.Budget(max_atoms=args.batch_atoms), progress=not args.quiet,
                        compile_only=args.compile_only, dispersion="d3bj" if args.d3 else None)
    if args.compile_only:  # mlip warmup
        return
    seconds = time.perf_counter() - start
    for result in results:
        result.atoms.info.update(relax_status=result.status, relax_steps=result.steps)
        if not result.converged:
            print(f"{_frame_name(args, result.atoms)}: {result.status} after {result.steps} steps "
                  f"{result.message}".rstrip())
    if len(results) == 1 and results[0].atoms.calc is not None:
        print(f"{results[0].status}: {summary(results[0].atoms)}")
    write_structure([r.atoms for r in results], output)
    converged = sum(r.converged for r in results)
    atom_steps = sum(r.steps * len(r.atoms) for r in results)
    print(f"relaxed {len(results)} structures in {seconds:.1f} s ({len(results) / seconds:.2f} structures/s, "
          f"{atom_steps / seconds:.4g} atom-steps/s): {converged} converged")
    print(f"wrote {output}")
    if converged < len(results):
        raise MlipError(f"{len(results) - converged} of {len(results)} structures did not reach fmax "
                        f"{args.fmax} eV/Å in {args.steps} steps (their status is in {output})")


def _md_parameters(args):
    from mlip.sim.ensembles import Parameters

    return Parameters(timestep=args.timestep, friction=args.friction, tau=args.tau, tau_p=args.tau_p)


def _cmd_md(args) -> None:
    structures = _read_structures(args)
    if _engine(args, structures, **{"--traj": args.traj}) == "device":
        return _md_device(args, structures)
    _md_ase(args, structures[0])


def _md_ase(args, atoms) -> None:
    """One structure through ASE's integrator of the ensemble (mlip.sim.ase.run_md)."""
    from mlip.sim.ase import run_md, summary, write_structure

    atoms = _attach_calculator(atoms, args)
    if args.compile_only:  # mlip warmup
        atoms.calc.compile(atoms)
        return
    print(f"initial: {summary(atoms)}")
    stats = run_md(
        atoms, ensemble=args.ensemble, temperature=args.temperature, steps=args.steps, pressure=args.pressure,
        parameters=_md_parameters(args), seed=args.seed, interval=args.interval, trajectory=args.traj,
        logfile=args.log, progress=not args.quiet, max_drift=args.max_drift or None,
    )
    if args.output:
        write_structure(atoms, args.output)
    print(f"final: {summary(atoms)}, T {atoms.get_temperature():.1f} K")
    print(f"{stats['ns_per_day']:.4f} ns/day, {stats['atom_steps_per_second']:.4g} atom-steps/s")


def _md_device(args, structures) -> None:
    """Every structure on the device (mlip.sim.md), each with its own velocities (seed + index)
    and random stream; the integrator and its parameters are the ASE path's row of
    mlip.sim.ensembles."""
    import time

    from mlip import sim
    from mlip.fileio import atomic_write_bytes
    from mlip.sim.ase import write_structure

    potential = _load_potential(args)
    parameters = _md_parameters(args)
    start = time.perf_counter()
    results = sim.md(
        potential, structures, ensemble=args.ensemble, steps=args.steps, timestep=parameters.timestep,
        temperature=args.temperature, init_temperature=args.temperature, pressure=args.pressure,
        friction=parameters.friction, tau=parameters.tau, tau_p=parameters.tau_p, seed=args.seed,
        interval=args.interval, max_drift=args.max_drift or None, budget=sim.Budget(max_atoms=args.batch_atoms),
        progress=not args.quiet, compile_only=args.compile_only,
        dispersion="d3bj" if args.d3 else None,
    )
    if args.compile_only:  # mlip warmup
        return
    seconds = time.perf_counter() - start
    if args.log:
        lines = ["frame step potential_energy_eV kinetic_energy_eV conserved_eV temperature_K volume_A3"]
        for result in results:
            lines += [f"{result.atoms.info['source_frame']} {e['steps']} {e['potential_energy']:.6f} {e['kinetic_energy']:.6f} {e['conserved']:.6f} "
                      f"{e['temperature']:.2f} {e['volume']:.4f}" for e in result.log]
        atomic_write_bytes(args.log, ("\n".join(lines) + "\n").encode())
    if args.output:
        write_structure([r.atoms for r in results], args.output)
    failed = [r for r in results if not r.converged]
    for result in failed:
        print(f"{_frame_name(args, result.atoms)}: {result.status} after {result.steps} steps "
              f"{result.message}".rstrip())
    atom_steps = sum(r.steps * len(r.atoms) for r in results)
    print(f"{len(results)} structures, {args.steps} steps of {args.ensemble} in {seconds:.1f} s: "
          f"{len(results) / seconds:.3f} structures/s, {atom_steps / seconds:.4g} atom-steps/s")
    if failed:
        raise MlipError(f"{len(failed)} of {len(results)} structures failed (see above)")


def _cmd_train(args) -> None:
    import jax
    import yaml

    if args.distributed:  # one process per host; unset values are detected (SLURM, Open MPI, ...)
        if jax.config.jax_cpu_collectives_implementation in (None, "none"):
            # CPU processes reduce across hosts with gloo (over TCP); jax < 0.5 had none by default.
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    from mlip.runtime import enable_compilation_cache
    from mlip.train import load_config, train

    enable_compilation_cache()  # a resumed run skips most compilation
    overrides: dict = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise MlipError(f"--set expects KEY=VALUE (e.g. training.epochs=10), got {item!r}")
        node = overrides
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    config = load_config(args.config, overrides)
    if config.training.precision == "float64":
        jax.config.update("jax_enable_x64", True)
    result = train(config, resume=args.resume, progress=not args.quiet)
    print(f"trained {result.steps} steps; best model {result.best_path}")


def _add_simulation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("structure", type=Path, nargs="?", default=None,
                        help="structure file (any supported format); every frame (see --index) runs on the "
                        "batched engine unless --engine ase; default: the bundled 64-atom diamond Si")
    parser.add_argument("--model", type=Path, default=None,
                        help="potential file (from mlip train or mlip create); default: the bundled mlearn Si model")
    parser.add_argument("--dtype", choices=["float32", "float64"], default=None, help="cast the potential (default: as saved)")
    parser.add_argument("--d3", action="store_true", help="add Grimme's D3(BJ) dispersion with PBE parameters (two-body) to energy, forces and "
                        "stress (both engines)")
    parser.add_argument("--engine", choices=["device", "ase"], default="device",
                        help="device (default): mlip.sim's batched engine, any number of structures; ase: "
                        "one structure through ASE's optimisers and integrators (also chosen by --traj and "
                        "by an ASE-only --optimizer)")
    parser.add_argument("--batch-atoms", type=int, default=2048,
                        help="batched engine: atom slots of the device batch (default 2048)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_read_options(parser)


def add_command(commands, name: str, run, *, help: str, description: str) -> argparse.ArgumentParser:
    """Register the subcommand ``name``, which runs ``run(args)``: the one way every mlip
    command is added (here and in each module of `COMMAND_MODULES`)."""
    parser = commands.add_parser(name, help=help, description=description)
    parser.set_defaults(run=run)
    return parser


#: Modules whose ``add_parsers(commands)`` register subcommands, in the order `mlip -h` lists them.
COMMAND_MODULES = ("mlip.cli", "mlip.distill.commands", "mlip.materials.commands", "mlip.deploy_commands",
                   "mlip.warmup")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="mlip", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.set_defaults(compile_only=False)  # `mlip warmup` sets it: compile, do not run
    commands = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_parsers(commands)
    return parser


def add_parsers(commands) -> None:
    """Add the data, model and simulation commands to the ``mlip`` subcommand parsers."""
    from mlip.sim.ensembles import ENSEMBLES

    inspect = add_command(
        commands, "inspect", _cmd_inspect,
        help="read structures and print their radius-graph statistics",
        description="Read structures (any supported format) and print their radius-graph "
        "statistics: atoms, cell, neighbours per atom, closest distance, padded batch shape. "
        "With no file, uses the bundled 64-atom diamond Si.",
    )
    inspect.add_argument("structures", nargs="*", type=Path, help="structure or data files")
    inspect.add_argument("--cutoff", type=float, default=5.0, help="radius-graph cutoff, Å (default 5)")
    _add_read_options(inspect)

    convert = add_command(
        commands, "convert", _cmd_convert,
        help="convert data files to mlip's sharded training format",
        description="Stream any supported data files (extxyz, ASE db, MPtrj JSON, mlearn JSON) "
        "into a directory of npz shards plus index.json, read later with constant memory.",
    )
    convert.add_argument("sources", nargs="+", type=Path, help="input data files")
    convert.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    convert.add_argument("--frames-per-shard", type=int, default=10_000)
    convert.add_argument("--overwrite", action="store_true", help="replace an existing dataset in OUTPUT")
    convert.add_argument(
        "--edge-cutoffs", type=float, nargs="*", default=[5.0], metavar="R",
        help="radii (Å) at which to count each frame's edges, so that training a model with one "
        "of these cutoffs packs batches without building neighbour lists first (default 5; "
        "none with an empty list)",
    )
    convert.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_read_options(convert)
    models = add_command(
        commands, "models", _cmd_models,
        help="list the bundled models (name, default, elements, training data, test errors)",
        description="List the potentials shipped with mlip. Any command's --model (and "
        "Potential.load) takes a bundled model's name as well as a file.",
    )
    models.add_argument("--json", action="store_true", help="print the model cards as JSON")
    create = add_command(
        commands, "create", _cmd_create,
        help="create a randomly initialised potential file from a preset",
        description="Create a potential with random weights from a preset and save it; prints "
        "its parameter count. A starting point for training, and for testing pipelines.",
    )
    create.add_argument("--preset", default="small", help="architecture preset: small (lmax 2) or medium (lmax 3)")
    create.add_argument("--species", nargs="+", required=True, help="element symbols the model covers, e.g. Si O")
    create.add_argument("--r-cut", type=float, default=5.0, help="cutoff radius, Å")
    create.add_argument("--seed", type=int, default=0)
    create.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    create.add_argument("-o", "--output", type=Path, required=True, help="potential file to write (e.g. model.mlip)")

    train = add_command(
        commands, "train", _cmd_train,
        help="train or fine-tune a potential from a YAML config",
        description="Train a potential as CONFIG (YAML) says: data, model, loss, optimiser, "
        "schedule, epochs (see the README and mlip/train/config.py for every key). Writes the "
        "resolved config, logs, metrics.csv/jsonl, checkpoints and best.mlip/last.mlip to the "
        "config's output_dir. Ctrl-C writes a checkpoint; --resume continues exactly there.",
    )
    train.add_argument("config", type=Path, help="training config, YAML")
    train.add_argument("--resume", action="store_true", help="continue the run in output_dir from its newest checkpoint")
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a config value, e.g. --set training.epochs=10 (repeatable)")
    train.add_argument("--distributed", action="store_true",
                       help="multi-host: run once per host; calls jax.distributed.initialize() first")
    train.add_argument("--coordinator", help="with --distributed: HOST:PORT of process 0 (else detected)")
    train.add_argument("--num-processes", type=int, help="with --distributed: number of processes (else detected)")
    train.add_argument("--process-id", type=int, help="with --distributed: this process's rank (else detected)")
    train.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    predict = add_command(
        commands, "predict", _cmd_predict,
        help="energy, forces and pressure of structures with a potential",
        description="Evaluate a potential file on every frame of a structure file.",
    )
    predict.add_argument("model", type=Path, help="potential file (from mlip create or training)")
    predict.add_argument("structure", type=Path, help="structure file (any supported format)")
    predict.add_argument("--dtype", choices=["float32", "float64"], default=None, help="cast the potential (default: as saved)")
    predict.add_argument("--batch-nodes", type=int, default=1024, help="atoms per batch (default 1024)")
    predict.add_argument("--d3", action="store_true", help="add Grimme's D3(BJ) dispersion with PBE parameters (two-body) to energy, forces and stress")
    _add_read_options(predict)
    evaluate = add_command(
        commands, "evaluate", _cmd_evaluate,
        help="energy, force and stress errors (MAE, RMSE) of a potential on labelled data",
        description="Evaluate a potential on labelled data (any supported file, or a directory "
        "written by mlip convert): energy MAE/RMSE in meV/atom, forces in meV/Å (per component), "
        "stress in GPa (per component), with force and energy errors per element. Frames "
        "without a label are left out of that label's metrics.",
    )
    evaluate.add_argument("model", type=Path, help="potential file")
    evaluate.add_argument("data", type=Path, help="labelled data file, or mlip convert directory")
    evaluate.add_argument("--batch-nodes", type=int, default=1024, help="atoms per batch (default 1024)")
    evaluate.add_argument("--batch-edges", type=int, default=None, help="edges per batch (default 48 per atom)")
    evaluate.add_argument("--json", type=Path, help="also write the metrics to this JSON file")
    evaluate.add_argument("--dtype", choices=["float32", "float64"], default=None, help="cast the potential (default: as saved)")
    evaluate.add_argument("--by", metavar="KEY", help="also report errors per value of this info key of the "
                          "structures (e.g. group in mlearn files, config_type in MACE's)")
    evaluate.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_read_options(evaluate)

    relax = add_command(
        commands, "relax", _cmd_relax,
        help="relax structures (positions, optionally the cells)",
        description="Relax structures with FIRE (FrechetCellFilter for the cell). Every structure "
        "of the file relaxes on the batched engine (mlip.sim.relax: FIRE step for step ASE's, or "
        "descent) with a structures/s progress bar; --engine ase (or --optimizer bfgs|lbfgs, or "
        "--traj) runs one structure through ASE's optimisers instead and writes its trajectory. "
        "Writes the relaxed structures; prints energy, max force and pressure.",
    )
    _add_simulation_options(relax)
    relax.add_argument("--fmax", type=float, default=0.05, help="force convergence, eV/Å (default 0.05)")
    relax.add_argument("--cell", action="store_true", help="also relax the cell (to zero stress)")
    relax.add_argument("--pressure", type=float, default=0.0, help="with --cell: external pressure, GPa (default 0)")
    relax.add_argument("--steps", type=int, default=500, help="maximum optimiser steps (per structure)")
    relax.add_argument("--optimizer", choices=sorted(set(DEVICE_OPTIMIZERS + ASE_OPTIMIZERS)), default="fire",
                       help="fire (both engines), descent (batched engine: steepest descent with a line "
                       "search), bfgs or lbfgs (ASE, one structure)")
    relax.add_argument("-o", "--output", type=Path, help="relaxed structures (default STRUCTURE-relaxed.extxyz)")
    relax.add_argument("--traj", type=Path, help="ASE path: trajectory file (default OUTPUT.traj)")

    md = add_command(
        commands, "md", _cmd_md,
        help="molecular dynamics of structures",
        description="Molecular dynamics: nve (velocity Verlet), nvt (Nose-Hoover chain), "
        "nvt-langevin (BAOAB), npt (Langevin + isotropic barostat), npt-aniso (anisotropic "
        "barostat). Every structure of the file runs on the batched engine (mlip.sim.md); "
        "--engine ase (or --traj) runs one structure through the matching ASE integrator "
        "(the table in mlip.sim.ensembles). Velocities are drawn from Maxwell-Boltzmann at "
        "--temperature.",
    )
    _add_simulation_options(md)
    md.add_argument("--ensemble", choices=list(ENSEMBLES), default="nve")
    md.add_argument("--temperature", type=float, default=300.0, help="K (initial velocities and thermostat)")
    md.add_argument("--timestep", type=float, default=1.0, help="fs")
    md.add_argument("--steps", type=int, default=1000)
    md.add_argument("--pressure", type=float, default=0.0, help="GPa (npt)")
    md.add_argument("--friction", type=float, default=0.01, help="1/fs (nvt-langevin, npt, npt-aniso)")
    md.add_argument("--tau", type=float, default=None, help="fs, Nose-Hoover time (nvt; default 100 timesteps)")
    md.add_argument("--tau-p", type=float, default=None, help="fs, barostat time (npt; default 1000 timesteps)")
    md.add_argument("--seed", type=int, default=0, help="seed of the initial velocities")
    md.add_argument("--interval", type=int, default=10, help="steps between log lines and frames")
    md.add_argument("--max-drift", type=float, default=1.0,
                    help="eV/atom: a run whose conserved energy drifts further (checked every --interval "
                    "steps) has blown up and fails (default 1; 0: no check)")
    md.add_argument("--traj", type=Path, help="ASE path: trajectory file (.traj)")
    md.add_argument("--log", type=Path, help="log file (ASE path: ASE MDLogger columns; batched engine: one "
                    "line per structure and interval)")
    md.add_argument("-o", "--output", type=Path, help="final structures")


def main(argv=None) -> int:
    if argv is None:  # the `mlip` program itself, not a call from Python (whose process it is)
        from mlip.runtime import tune_allocator

        tune_allocator()  # before JAX starts its threads (see its docstring; MLIP_SYSTEM_MALLOC=1: off)
    args = build_parser().parse_args(argv)
    # mlip's own progress at INFO; other libraries (jax's backend probing...) only at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mlip").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        args.run(args)
    except MlipError as exc:
        print(f"mlip: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mlip: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which closed early
        sys.stderr.close()
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
