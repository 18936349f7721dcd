"""`mlip warmup COMMAND ARGS...`: compile, into the persistent compilation cache, the programs
that `mlip COMMAND ARGS...` would compile, without running it; the command itself, run later
in any process with the same cache, then starts without compiling.

The command line is parsed by COMMAND's own parser and goes through COMMAND's own code with
``args.compile_only`` set, so the warmed programs are those of the run, option for option:
`mlip predict` compiles the padded shape of each batch (`Potential.compile_frames`); `mlip
relax` and `mlip md` on the batched engine compile the device functions of their first batch
(`mlip.sim.batcher.run`, ``compile_only``); with ``--engine ase`` the calculator's shape of the
structure and of edge counts 10% either side (`Calculator.compile`). Compilation is what a
new shape costs (benchmarks/RESULTS.md, "First call and warmup"); reading a program back from
the cache takes a fraction of it.
"""

from __future__ import annotations

import argparse
import collections
import time

from mlip.errors import MlipError

#: Commands whose programs `mlip warmup` compiles.
WARMED = ("predict", "relax", "md")


def _cmd_warmup(args) -> None:
    import jax

    from mlip.cli import build_parser

    if not args.command_line or args.command_line[0] not in WARMED:
        given = args.command_line[0] if args.command_line else "nothing"
        raise MlipError(f"mlip warmup takes the command line of one of {', '.join(WARMED)} (got {given})")
    run = build_parser().parse_args(args.command_line)
    run.compile_only = True
    events = collections.Counter()
    jax.monitoring.register_event_listener(lambda event, **_: events.update([event]))
    start = time.perf_counter()
    run.run(run)  # loads the model, which turns the persistent cache on (mlip.cli.load_model)
    seconds = time.perf_counter() - start
    directory = jax.config.jax_compilation_cache_dir
    if not directory:
        raise MlipError("the persistent compilation cache is off (see the warning above): nothing was kept")
    hits = events["/jax/compilation_cache/cache_hits"]
    compiled = events["/jax/compilation_cache/compile_requests_use_cache"] - hits
    print(f"warmed `mlip {' '.join(args.command_line)}` in {seconds:.1f} s: {compiled} programs compiled, "
          f"{hits} already in the cache {directory}")


def add_parsers(commands) -> None:
    """Add `mlip warmup` to the ``mlip`` subcommand parsers."""
    from mlip.cli import add_command

    warmup = add_command(
        commands, "warmup", _cmd_warmup,
        help="compile the programs of an mlip predict/relax/md command into the compilation cache",
        description="Compile, into the persistent compilation cache ($MLIP_CACHE_DIR, default "
        "~/.cache/mlip/jax), the programs that the given command line would compile, without "
        "running it: e.g. `mlip warmup md si.xyz --model m.mlip --steps 10000` before a batch "
        "job. The later `mlip md si.xyz --model m.mlip --steps 10000` (same options: they are "
        "compiled into the programs) reads them instead of compiling. Commands: "
        + ", ".join(WARMED) + ".",
    )
    warmup.add_argument("command_line", nargs=argparse.REMAINDER, metavar="COMMAND ARGS",
                        help="the mlip command line to prepare, without `mlip`")
