"""`mlip export` and `mlip lammps`: the command-line faces of mlip.export and mlip.lammps."""

from __future__ import annotations

import time
from pathlib import Path

from mlip.cli import add_command


def _cmd_export(args) -> None:
    from mlip.export import export_command

    start = time.perf_counter()
    meta = export_command(args.model, args.output, args.dtype)
    print(f"wrote {args.output}: {meta['dtype']}, species {' '.join(meta['species_symbols'])}, r_cut "
          f"{meta['r_cut']} Å, receptive field {meta['receptive_field']} Å, symbolic shapes, platforms "
          f"{', '.join(meta['platforms'])}, {args.output.stat().st_size / 1e6:.1f} MB "
          f"[{time.perf_counter() - start:.1f} s]")


def _cmd_lammps(args) -> None:
    from mlip.lammps import run_deck

    from mlip.errors import MlipError

    bad = [v for v in args.var or [] if "=" not in v]
    if bad:
        raise MlipError(f"--var takes NAME=VALUE, got {bad[0]!r}")
    variables = dict(v.split("=", 1) for v in args.var or [])
    start = time.perf_counter()
    lmp, coupling = run_deck(args.input, args.model, args.elements, fix_id=args.fix, mode=args.mode,
                             dtype=args.dtype, skin=args.skin, variables=variables)
    if lmp.extract_setting("world_rank") == 0:
        print(f"mlip: {coupling.calls} force calls ({coupling.mode} mode, {lmp.extract_setting('world_size')} "
              f"rank(s)) in {time.perf_counter() - start:.1f} s")
    lmp.close()


def add_parsers(commands) -> None:
    """Add ``export`` and ``lammps`` to the ``mlip`` subcommand parsers."""
    export = add_command(
        commands, "export", _cmd_export,
        help="write a potential as a compiled jax.export (StableHLO) artifact, NAME.mlipx",
        description="Export a potential's edge-level function (energy, per-atom energies, forces, "
        "virial, dE/dr per edge) as a serialized jax.export program with symbolic shapes, lowered "
        "for CPU and CUDA, plus its metadata (species, r_cut, units, padding rules). Load it with "
        "mlip/exported.py, which needs only jax and numpy. The reference edge chain is exported "
        "(not the Pallas kernel).",
    )
    export.add_argument("model", help="potential file or bundled model name")
    export.add_argument("-o", "--output", type=Path, required=True, help="artifact to write, NAME.mlipx")
    export.add_argument("--dtype", choices=["float32", "float64"], default=None, help="cast first (default: as saved)")

    lammps = add_command(
        commands, "lammps", _cmd_lammps,
        help="run a LAMMPS input deck with an mlip potential (fix external; mpirun for several ranks)",
        description="Run the LAMMPS input INPUT through the lammps Python module, with the mlip "
        "potential computing the forces, energy and virial of its 'fix mlip all external "
        "pf/callback 1 1' (fix_modify mlip energy yes virial yes). Several MPI ranks: "
        "mpirun -np N mlip lammps ... (LAMMPS' domain decomposition; ghost shell of num_layers * "
        "r_cut set by mlip). Needs pip install 'mlip-facet[lammps]'.",
    )
    lammps.add_argument("input", type=Path, help="LAMMPS input deck (units metal)")
    lammps.add_argument("--model", required=True, help="potential file, bundled model name, or exported .mlipx")
    lammps.add_argument("--elements", nargs="+", required=True, help="element of each atom type, in type order, e.g. Si O")
    lammps.add_argument("--fix", default="mlip", help="ID of the fix external the potential drives (default mlip)")
    lammps.add_argument("--mode", choices=["auto", "periodic", "ghost"], default="auto",
                        help="auto (default): periodic graph on one rank, ghost shell on several")
    lammps.add_argument("--dtype", choices=["float32", "float64"], default=None, help="cast the potential (default: as saved)")
    lammps.add_argument("--skin", type=float, default=1.0, help="neighbour skin, Å (default 1)")
    lammps.add_argument("--var", action="append", metavar="NAME=VALUE", help="LAMMPS variable, as lmp -var (repeatable)")
