"""`mlip generate` and `mlip label`: the command-line faces of mlip.distill."""

from __future__ import annotations

import logging
from pathlib import Path

from mlip.cli import add_command
from mlip.errors import MlipError

log = logging.getLogger("mlip")


def _cmd_generate(args) -> None:
    import ase.io

    from mlip.distill.generate import SeedPlan, element_coverage, generate_seeds

    plan = SeedPlan(elemental_per_element=args.elemental, compounds=args.compounds,
                    random=args.random, real=args.real, min_per_element=args.min_per_element,
                    max_atoms=args.max_atoms, substitutions=args.substitutions,
                    substitution_max_atoms=args.substitution_max_atoms, seed=args.seed,
                    exclude=frozenset(_origins(args.exclude)))
    seeds = generate_seeds(plan, args.real_files)
    from mlip.fileio import atomic_write_text

    atomic_write_text(args.output, lambda f: ase.io.write(f, seeds, format="extxyz"))
    coverage = element_coverage(seeds)
    kinds = {}
    for atoms in seeds:
        kind = atoms.info["origin"].split(":")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    print(f"{args.output}: {len(seeds)} seeds ({', '.join(f'{k} {v}' for k, v in kinds.items())}), "
          f"{sum(len(a) for a in seeds)} atoms; every MPtrj element in >= {min(coverage.values())} "
          f"seeds (fewest: {', '.join(f'{s} {n}' for s, n in sorted(coverage.items(), key=lambda x: x[1])[:5])})")


def _origins(paths) -> set[str]:
    """The ``origin`` of every seed in the seeds files ``paths``."""
    from mlip.fileio import read_atoms

    origins = set()
    for path in paths:
        if not path.is_file():
            raise MlipError(f"--exclude {path}: no such seeds file")
        origins.update(atoms.info.get("origin", "") for atoms in read_atoms(path, ":"))
    return origins - {""}


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _cmd_label(args) -> None:
    import signal

    from mlip.distill.label import Filters, Recipe, label
    from mlip.fileio import read_atoms

    seeds = []
    for path in args.seeds:
        if not path.is_file():
            raise MlipError(f"seeds {path}: no such file (make one with mlip generate)")
        read = read_atoms(path, index=args.index)
        seeds += read if isinstance(read, list) else [read]
    if not (0 <= args.rattle[0] <= args.rattle[1] and 0 <= args.strain < 0.5
            and 0 < args.md_temperature[0] <= args.md_temperature[1]):
        raise MlipError("label: need 0 <= rattle MIN <= MAX, 0 <= strain < 0.5 and 0 < md-temperature MIN <= MAX")
    recipe = Recipe(relax_steps=args.relax_steps, perturbations=args.perturbations, rattle=tuple(args.rattle),
                    strain=args.strain, md_steps=args.md_steps, md_temperature=tuple(args.md_temperature),
                    seed=args.seed)
    filters = Filters(max_force=args.max_force, max_stress=args.max_stress)
    # A labelling run is long and often started in the background (where SIGINT is ignored) or
    # stopped by a scheduler (SIGTERM): both end it as Ctrl-C does, committing finished seeds.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    report = label(seeds, args.output, teacher=args.teacher, recipe=recipe, filters=filters,
                   workers=args.workers, seeds_per_shard=args.seeds_per_shard,
                   resume=args.resume, progress=not args.quiet)
    print(report.summary())


def add_parsers(commands) -> None:
    """Add ``generate`` and ``label`` to the ``mlip`` subcommand parsers."""
    generate = add_command(
        commands, "generate", _cmd_generate,
        help="seed structures for distillation (prototypes, random crystals, real frames)",
        description="Write seed crystals for teacher labelling: elemental and charge-balanced "
        "prototypes (rocksalt, CsCl, zincblende, wurtzite, fluorite, rutile, perovskite, "
        "spinel...), random symmetric crystals from pyxtal with 1-4 species drawn at the "
        "element frequencies of REAL_FILES, real frames drawn from REAL_FILES and, with "
        "--substitutions, real frames with elements swapped for chemically similar ones; topped up "
        "until every one of MPtrj's 89 elements is in --min-per-element seeds.",
    )
    generate.add_argument("real_files", nargs="*", type=Path,
                          help="real frames (MPtrj-like extxyz): element frequencies and real seeds")
    generate.add_argument("-o", "--output", type=Path, required=True, help="seeds file (extxyz)")
    generate.add_argument("--elemental", type=int, default=2, help="elemental prototypes per element")
    generate.add_argument("--compounds", type=int, default=600, help="binary/ternary prototype seeds")
    generate.add_argument("--random", type=int, default=600, help="pyxtal random crystals")
    generate.add_argument("--real", type=int, default=400, help="real frames used as seeds")
    generate.add_argument("--min-per-element", type=int, default=12)
    generate.add_argument("--max-atoms", type=int, default=16, help="largest made-up or real seed")
    generate.add_argument("--substitutions", type=int, default=0,
                          help="real frames with one or two elements swapped for similar ones "
                          "(same anion charge; cations sharing an oxidation state, radii within 30%%)")
    generate.add_argument("--substitution-max-atoms", type=int, default=64, help="largest substituted seed")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--exclude", type=Path, nargs="+", default=[], metavar="SEEDS",
                          help="seeds files of earlier runs: substitutions already in them, or drawn "
                          "twice in this run, are redrawn, so the new file holds only new structures")

    lab = add_command(
        commands, "label", _cmd_label,
        help="label seeds with a teacher (relaxation, perturbations, MD); resumable",
        description="Relax, perturb and heat every seed with a teacher calculator and keep "
        "its labelled frames (energy, forces, stress; provenance per frame), dropping "
        "garbage labels by filter. Appends to a compact mlip-shards directory, usable as "
        "training data as it stands. Interrupt any time; --resume skips the seeds done.",
    )
    lab.add_argument("seeds", type=Path, nargs="+", help="seeds files from mlip generate")
    lab.add_argument("-o", "--output", type=Path, required=True, help="labels directory")
    lab.add_argument("--teacher", default="sevenn-0", help="sevenn-0 (default), emt, lj or MODULE:FUNCTION")
    lab.add_argument("--workers", type=int, default=1, help="labelling processes (one per core)")
    lab.add_argument("--resume", action="store_true", help="continue the run in OUTPUT")
    lab.add_argument("--index", default=":", help="seeds to label from each file, ase slice syntax")
    lab.add_argument("--relax-steps", type=int, default=30)
    lab.add_argument("--perturbations", type=int, default=8)
    lab.add_argument("--rattle", type=float, nargs=2, default=(0.02, 0.15), metavar=("MIN", "MAX"),
                     help="Gaussian rattle of the perturbed copies, sigma drawn in [MIN, MAX] Å")
    lab.add_argument("--strain", type=float, default=0.05, help="largest strain component of the perturbed copies")
    lab.add_argument("--md-steps", type=int, default=24)
    lab.add_argument("--md-temperature", type=float, nargs=2, default=(300.0, 1500.0), metavar=("MIN", "MAX"),
                     help="Langevin MD temperature, drawn in [MIN, MAX] K per seed")
    lab.add_argument("--max-force", type=float, default=30.0, help="drop frames with a larger force, eV/Å")
    lab.add_argument("--max-stress", type=float, default=200.0, help="drop frames with a larger stress, GPa")
    lab.add_argument("--seeds-per-shard", type=int, default=50)
    lab.add_argument("--seed", type=int, default=0, help="random seed of perturbations and MD")
    lab.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
