"""Where the time of one energy + forces + stress call goes, per source line of mlip, on CPU.

Run pinned to a single core, from the repository root:

    taskset -c 0 .venv/bin/python benchmarks/profile_potential.py --preset small --system si512

It compiles the potential's jitted value_and_grad for one structure (see bench_potential.py for
the structures), records a JAX profiler trace of a few steady-state calls, and attributes the
time of every executed XLA op (a fusion, a dot, a scatter, ...) to the innermost line of mlip
that produced it (from the stack-frame table of the optimised HLO). Backward ops (those
under ``transpose(...)`` in their op_name) are counted apart from forward ones. Prints:

- XLA's cost analysis of the whole program (flops, bytes accessed) and the achieved rates;
- time by component (edge rotation, Wigner-D, rotations into/out of the edge frame, SO(2)
  convolution, aggregation, norm, S2 mixing, ...), forward and backward;
- the most expensive source lines and the most expensive single ops.

The per-op times are what the XLA CPU runtime reports for each op; their sum is a little less
than the wall time of a call (runtime overhead between ops).
"""

from __future__ import annotations

import argparse
import collections
import functools
import glob
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_potential import SYSTEMS, build_system, set_single_thread_env  # noqa: E402

set_single_thread_env()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.profiler import ProfileData  # noqa: E402

from mlip.data.frame import frame_from_atoms  # noqa: E402
from mlip.data.graph import build_graph, collate  # noqa: E402
from mlip.data.padding import BucketLadder  # noqa: E402
from mlip.potential import Potential, _jitted  # noqa: E402

#: Named scopes added around mlip's functions for this profile (their ops' op_name then says
#: which function made them; flax modules are named in op_name anyway), and the component
#: each scope or module belongs to, tried in this order. The edge chain's reference
#: (kernels/so2_message.py) names its own scopes: rotate_to_edge_frame, SO2Convolution,
#: rotate_from_edge_frame.
SCOPED = ("wigner_d", "edge_rotation", "zbl_pair_energy")
COMPONENTS = (
    ("rotate_to_edge_frame", "rotate into edge frame (D h_j)"),
    ("rotate_from_edge_frame", "rotate back (D^T m_ij)"),
    ("wigner_d", "Wigner-D blocks (CG recursion)"),
    ("edge_rotation", "edge rotation matrices"),
    ("SO2Convolution", "SO(2) convolution"),
    ("S2Mixing", "S2-grid mixing"),
    ("Gate", "gate"),
    ("EquivariantRMSNorm", "equivariant RMS norm"),
    ("RadialEmbedding", "radial embedding"),
    ("zbl_pair_energy", "ZBL pair repulsion"),
    ("segment_sum", "segment_sum over receivers"),
    ("readout", "readout MLP"),
)
#: Sub-components of the SO(2) convolution, by a piece of the source line.
SO2_PARTS = (
    ("[:, gather]", "SO(2): component gather x radial"),
    ("@ _block_matrix", "SO(2): per-|m| matmuls"),
    ("[:, scatter]", "SO(2): concatenate + scatter back"),
)


def add_named_scopes() -> None:
    """Wrap the functions facet.py calls (and jax.ops.segment_sum, in this process only) in
    jax.named_scope, so that their ops can be told apart in the profile."""
    import mlip.models.facet as facet

    def scoped(name, function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            with jax.named_scope(name):
                return function(*args, **kwargs)

        return wrapper

    for name in SCOPED:
        if hasattr(facet, name):
            setattr(facet, name, scoped(name, getattr(facet, name)))
    jax.ops.segment_sum = scoped("segment_sum", jax.ops.segment_sum)


def parse_hlo(text: str) -> dict[str, tuple[str, tuple[str, str, int] | None]]:
    """Instruction name -> (op_name, innermost source location (file, function, line))."""
    sections: dict[str, dict[int, str]] = {}
    current = None
    for line in text.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            current = sections.setdefault(line, {})
            continue
        match = re.match(r"^(\d+) (.*)$", line) if current is not None else None
        if match:
            current[int(match.group(1))] = match.group(2)
        elif current is not None and line.strip() == "":
            current = None
    files = {k: v.strip('"') for k, v in sections.get("FileNames", {}).items()}
    functions = {k: v.strip('"') for k, v in sections.get("FunctionNames", {}).items()}
    locations = {}
    for k, v in sections.get("FileLocations", {}).items():
        fields = dict(re.findall(r"(\w+)=(\d+)", v))
        locations[k] = (
            files.get(int(fields["file_name_id"]), "?"),
            functions.get(int(fields["function_name_id"]), "?"),
            int(fields["line"]),
        )
    frames = {}
    for k, v in sections.get("StackFrames", {}).items():
        frames[k] = int(dict(re.findall(r"(\w+)=(\d+)", v))["file_location_id"])

    instructions = {}
    pattern = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{([^}]*)\}")
    for line in text.splitlines():
        match = pattern.match(line)
        if not match:
            continue
        name, metadata = match.groups()
        op_name = re.search(r'op_name="([^"]*)"', metadata)
        frame = re.search(r"stack_frame_id=(\d+)", metadata)
        location = locations.get(frames.get(int(frame.group(1)))) if frame else None
        instructions[name] = (op_name.group(1) if op_name else "", location)
    return instructions


def component(op_name: str, location, source_line) -> str:
    scopes = op_name.split("/")
    file, _, line = location if location else ("", "", 0)
    code = source_line(file, line) if location else ""
    for key, name in COMPONENTS:
        if any(s == key or s.startswith(key + "_") for s in scopes):
            if key == "SO2Convolution":
                return next((label for piece, label in SO2_PARTS if piece in code), name)
            return name
    if "senders]" in code and "interaction" in op_name:
        return "gather h[senders]"
    if file.endswith("graph.py"):
        return "edge vectors (positions, strain)"
    if "interaction" in op_name:
        return "interaction: residual, masks"
    return "other (embedding, strain, stress, ...)"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small", choices=("small", "medium"))
    parser.add_argument("--system", default="si512", choices=sorted(SYSTEMS))
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--calls", type=int, default=3, help="profiled calls")
    parser.add_argument("--top", type=int, default=15, help="source lines and ops listed")
    args = parser.parse_args()
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)

    atoms = build_system(args.system)
    potential = Potential.create(args.preset, species=["Si", "Cu"], dtype=args.dtype)
    graph = build_graph(frame_from_atoms(atoms), potential.config.r_cut)
    shape = BucketLadder().shape_for(graph.n_node, graph.n_edge, 1)
    batch = collate([graph], *shape, dtype=np.dtype(args.dtype), labels=False)
    add_named_scopes()
    compiled = _jitted(potential.config, potential.runtime).lower(potential.params, batch).compile()
    instructions = parse_hlo(compiled.as_text())
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost

    jax.block_until_ready(potential(batch))
    walls = []
    for _ in range(3):
        start = time.perf_counter()
        jax.block_until_ready(potential(batch))
        walls.append(time.perf_counter() - start)
    wall = float(np.median(walls))

    with tempfile.TemporaryDirectory() as directory:
        jax.profiler.start_trace(directory)
        for _ in range(args.calls):
            jax.block_until_ready(potential(batch))
        jax.profiler.stop_trace()
        trace = ProfileData.from_file(sorted(glob.glob(f"{directory}/**/*.xplane.pb", recursive=True))[-1])
    per_op = collections.Counter()
    for plane in trace.planes:
        for line in plane.lines:
            for event in line.events:
                if event.name in instructions:
                    per_op[event.name] += event.duration_ns / 1e6 / args.calls

    cache: dict[tuple[str, int], str] = {}

    def source_lines(file: str, line: int) -> str:
        if (file, line) not in cache:
            text = Path(file).read_text().splitlines() if Path(file).is_file() else []
            cache[(file, line)] = text[line - 1].strip() if 0 < line <= len(text) else ""
        return cache[(file, line)]

    def short(location) -> str:
        if location is None or "/mlip/" not in location[0]:
            return "(outside mlip)" if location else "(no source line)"
        file, function, line = location
        return f"{file.split('/mlip/')[-1]}:{line} ({function})"

    by_component = collections.defaultdict(lambda: [0.0, 0.0])
    by_line = collections.defaultdict(lambda: [0.0, 0.0])
    for name, ms in per_op.items():
        op_name, location = instructions[name]
        backward = "transpose(" in op_name
        by_component[component(op_name, location, source_lines)][backward] += ms
        by_line[short(location)][backward] += ms
    total = sum(per_op.values())

    print(
        f"{args.preset} preset, {args.dtype}, {args.system}: {graph.n_node} atoms, {graph.n_edge} "
        f"edges, padded to {shape[0]} nodes / {shape[1]} edges; {potential.num_params:,} parameters"
    )
    flops, accessed = cost.get("flops", 0.0), cost.get("bytes accessed", 0.0)
    print(
        f"wall {wall * 1e3:.1f} ms per call (median of 3); per-op sum {total:.1f} ms; "
        f"XLA cost analysis: {flops / 1e9:.2f} GFLOP, {accessed / 1e9:.2f} GB accessed "
        f"-> {flops / wall / 1e9:.1f} GFLOP/s, {accessed / wall / 1e9:.1f} GB/s\n"
    )
    print("| component | forward (ms) | backward (ms) | share |")
    print("|---|---:|---:|---:|")
    for name, (fwd, bwd) in sorted(by_component.items(), key=lambda kv: -sum(kv[1])):
        print(f"| {name} | {fwd:.1f} | {bwd:.1f} | {100 * (fwd + bwd) / total:.0f}% |")
    print(f"\ntop {args.top} source lines (innermost mlip frame):\n")
    print("| line | forward (ms) | backward (ms) | code |")
    print("|---|---:|---:|---|")
    for key, (fwd, bwd) in sorted(by_line.items(), key=lambda kv: -sum(kv[1]))[: args.top]:
        file, line = key.split(" ")[0].split(":") if ":" in key else ("", "0")
        code = source_lines(str(Path(__file__).resolve().parents[1] / "mlip" / file), int(line)) if file else ""
        print(f"| {key} | {fwd:.1f} | {bwd:.1f} | `{code[:90]}` |")
    print(f"\ntop {args.top} ops:\n")
    text = compiled.as_text()
    for name, ms in per_op.most_common(args.top):
        shape_match = re.search(rf"%{re.escape(name)} = (\S+)", text)
        op_name, location = instructions[name]
        where = short(location).split(" ")[0]
        kind = "bwd" if "transpose(" in op_name else "fwd"
        print(f"{ms:8.1f} ms  {name:32s} {kind} {where:22s} {shape_match.group(1) if shape_match else ''}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
