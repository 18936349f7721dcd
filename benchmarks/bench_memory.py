"""Memory of one potential call (energy + forces + stress) against the edge count, with and
without chunked message sums (Potential.edge_chunk, mlip.nn.message_passing), and the largest
system that fits per GPU memory size.

    python benchmarks/bench_memory.py                      # small and medium, 2^14 .. 6.3 M edges
    python benchmarks/bench_memory.py --presets small --edges 16384,262144

Nothing is run: for each padded shape (N nodes, E edges, one graph; N = E / --edges-per-atom)
the jitted call is lowered on abstract inputs (jax.ShapeDtypeStruct) and compiled, and XLA's
``compiled.memory_analysis()`` gives the bytes of its temporaries (``temp_size_in_bytes``), its
arguments (parameters and the batch) and its outputs. Deterministic, so the machine's load does
not matter; on CPU it is XLA's CPU buffer assignment, which a GPU's will not match exactly (a GPU
run of benchmarks/device_check.py reads the device's real peak).

Projection: memory(N, E) = arguments + outputs + temporaries, fitted as a + b E at a fixed
edges-per-atom ratio over the largest sizes measured (chunked: the per-chunk temporaries are
the constant a, the per-edge inputs, Wigner blocks and cotangents the slope b); the largest
system for a GPU of M bytes is then the E where it reaches 90% of M (the rest: XLA's and
CUDA's own use, fragmentation).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mlip.data.graph import GraphBatch  # noqa: E402
from mlip.nn.message_passing import DEFAULT_EDGE_CHUNK  # noqa: E402
from mlip.potential import Potential, _jitted  # noqa: E402

#: GPU memory sizes of the projection, GB (10^9 bytes): A100/H100 80 GB, H200 141 GB.
GPU_MEMORY_GB = (24, 40, 80, 141)
USABLE = 0.9


def abstract_batch(num_nodes: int, num_edges: int, dtype) -> GraphBatch:
    """ShapeDtypeStructs of a one-graph GraphBatch (plus the padding graph)."""
    s = jax.ShapeDtypeStruct
    i32, f = jnp.int32, jnp.dtype(dtype)
    return GraphBatch(
        positions=s((num_nodes, 3), f), numbers=s((num_nodes,), i32), node_graph=s((num_nodes,), i32),
        node_mask=s((num_nodes,), bool), senders=s((num_edges,), i32), receivers=s((num_edges,), i32),
        shifts=s((num_edges, 3), i32), edge_mask=s((num_edges,), bool), cell=s((2, 3, 3), f),
        pbc=s((2, 3), bool), graph_mask=s((2,), bool), n_node=s((2,), i32),
    )


def memory(potential: Potential, num_nodes: int, num_edges: int, edge_chunk) -> dict:
    """XLA's memory analysis of the compiled call: bytes of temporaries, arguments, outputs."""
    start = time.perf_counter()
    batch = abstract_batch(num_nodes, num_edges, potential.dtype)
    runtime = dataclasses.replace(potential.runtime, edge_chunk=edge_chunk)
    compiled = _jitted(potential.config, runtime).lower(potential.params, batch).compile()
    analysis = compiled.memory_analysis()
    return {
        "nodes": num_nodes, "edges": num_edges, "edge_chunk": edge_chunk,
        "temp": analysis.temp_size_in_bytes, "arguments": analysis.argument_size_in_bytes,
        "outputs": analysis.output_size_in_bytes, "compile_s": time.perf_counter() - start,
    }


def largest_edges(rows: list[dict], capacity: float) -> float:
    """Edges at which the straight line through the last two rows' totals reaches ``capacity``."""
    (e0, m0), (e1, m1) = [(r["edges"], r["temp"] + r["arguments"] + r["outputs"]) for r in rows[-2:]]
    slope = (m1 - m0) / (e1 - e0)
    return e1 + (capacity - m1) / slope


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="small,medium")
    parser.add_argument("--edges", default="16384,65536,262144,1048576,4194304,6291456",
                        help="padded edge counts (comma-separated)")
    parser.add_argument("--edges-per-atom", type=float, default=60.0,
                        help="edges per atom of the shapes (60: a dense metal at 5 Å, 6 M edges for 100k atoms)")
    parser.add_argument("--chunk", type=int, default=DEFAULT_EDGE_CHUNK, help="edges per chunk of the chunked rows")
    parser.add_argument("--unchunked-up-to", type=int, default=1 << 20,
                        help="largest edge count compiled without chunks (XLA's buffer assignment is slow there)")
    args = parser.parse_args()
    device = jax.devices()[0]
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; jax {jax.__version__}; "
          f"{device.platform} ({device.device_kind}); float32; one graph, {args.edges_per_atom:g} edges per atom\n")
    edges = [int(e) for e in args.edges.split(",")]
    projections = []
    print("| preset | atoms | edges | edge_chunk | temporaries (MB) | arguments + outputs (MB) | temp bytes / edge | total bytes / edge | compile (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for preset in args.presets.split(","):
        potential = Potential.create(preset, species=["Si"], r_cut=5.0, dtype="float32", seed=0)
        potential = dataclasses.replace(potential, kernel="reference")
        for chunk in (None, args.chunk):
            rows = []
            for e in edges:
                if chunk is None and e > args.unchunked_up_to:
                    continue
                r = memory(potential, int(e / args.edges_per_atom) + 1, e, chunk)
                rows.append(r)
                io = r["arguments"] + r["outputs"]
                print(f"| {preset} | {r['nodes']:,} | {e:,} | {chunk or 'none'} | {r['temp'] / 1e6:,.0f} | {io / 1e6:,.0f} "
                      f"| {r['temp'] / e:,.0f} | {(r['temp'] + io) / e:,.0f} | {r['compile_s']:.0f} |", flush=True)
            projections.append((preset, chunk, rows))
    print(f"\nLargest system per GPU memory ({USABLE:.0%} usable), linear in the edges through the two largest rows:\n")
    print("| preset | edge_chunk | " + " | ".join(f"{m} GB: atoms (edges)" for m in GPU_MEMORY_GB) + " |")
    print("|---|---:|" + "---:|" * len(GPU_MEMORY_GB))
    for preset, chunk, rows in projections:
        cells = []
        for gb in GPU_MEMORY_GB:
            e = largest_edges(rows, USABLE * gb * 1e9)
            cells.append(f"{e / args.edges_per_atom / 1e3:,.0f}k ({e / 1e6:.1f} M)" if e > 0 else "none")
        print(f"| {preset} | {chunk or 'none'} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
