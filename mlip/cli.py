"""The `mlip` command line. Each subcommand is a thin layer over the Python API; errors in user
input (MlipError) are printed as one line, never as a traceback."""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import resources
from pathlib import Path

from mlip.errors import MlipError

log = logging.getLogger("mlip")


def bundled_structure() -> Path:
    """The structure shipped with mlip (64-atom diamond Si), used when none is given."""
    return Path(str(resources.files("mlip") / "assets" / "Si64-diamond.extxyz"))


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

    paths = args.structures or [bundled_structure()]
    for path in paths:
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
        **_read_options(args),
    )
    print(report.summary())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlip", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    inspect = commands.add_parser(
        "inspect",
        help="read structures and print their radius-graph statistics",
        description="Read structures (any supported format) and print their radius-graph "
        "statistics: atoms, cell, neighbours per atom, closest distance, padded batch shape. "
        "With no file, uses the bundled 64-atom diamond Si.",
    )
    inspect.add_argument("structures", nargs="*", type=Path, help="structure or data files")
    inspect.add_argument("--cutoff", type=float, default=5.0, help="radius-graph cutoff, Å (default 5)")
    _add_read_options(inspect)
    inspect.set_defaults(run=_cmd_inspect)

    convert = commands.add_parser(
        "convert",
        help="convert data files to mlip's sharded training format",
        description="Stream any supported data files (extxyz, ASE db, MPtrj JSON, mlearn JSON) "
        "into a directory of npz shards plus index.json, read later with constant memory.",
    )
    convert.add_argument("sources", nargs="+", type=Path, help="input data files")
    convert.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    convert.add_argument("--frames-per-shard", type=int, default=10_000)
    convert.add_argument("--overwrite", action="store_true", help="replace an existing dataset in OUTPUT")
    convert.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_read_options(convert)
    convert.set_defaults(run=_cmd_convert)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.run(args)
    except MlipError as exc:
        print(f"mlip: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mlip: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
