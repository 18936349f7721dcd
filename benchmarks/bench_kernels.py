"""Fused Pallas edge chain vs its pure-JAX reference: where the cost goes, the floor per edge,
and (on a GPU) time and memory.

From the repository root:

    .venv/bin/python benchmarks/bench_kernels.py --profile --presets small,medium --atoms 64
    .venv/bin/python benchmarks/bench_kernels.py --presets small,medium --atoms 1000,10000,100000 --largest

``--profile`` (any backend; deterministic, no timing, so load on the machine does not matter):
for each preset, on rattled diamond Si (cubic supercell of about ``--atoms`` atoms, 5 Å cutoff,
random weights, float32), XLA's cost analysis (flops, bytes accessed) and memory analysis
(temporary buffer) of

- the whole potential call, energy + forces + stress (the jitted value_and_grad over positions
  and strain that ``Potential.__call__`` runs), on the bucket ladder's padded batch;
- the reference edge chain of one interaction block (rotate in -> SO(2) -> rotate back,
  `so2_message_reference`) at the same padded edge count, forward, and forward + backward to
  its inputs (features, Wigner blocks, radial weights: what forces need), counted once per
  block that runs it (all but the first, which takes the scalar path);
- the analytic floor of the fused chain per edge (`chain_floor`): the bytes it must move and
  the flops it must do, against which the reference's bytes accessed are set.

XLA fuses across the chain's boundary inside the whole program, so the chain's share is an
estimate from compiling it alone, not a partition of the program's ops.

Without ``--profile`` (meant for a GPU, with a CUDA build of JAX): for each preset and size
(float32, matmul precision "highest"), and for each implementation of the edge chain
(the runtime setting Potential.kernel = "reference" or "pallas"):

- the median wall time of one steady-state ``potential(batch)`` call on a padded batch built
  once, i.e. forward + backward;
- the compiled program's temporary buffer (``compiled.memory_analysis()``), and the device's
  peak bytes in use after the calls where the backend reports it (GPU);
- with ``--largest``: the largest cubic supercell that still runs, growing by 1.25x in atoms
  until the device runs out of memory.

The kernel is checked against the reference on first use (kernels/selection.py); if it fails,
its rows say so instead of timing the reference under the kernel's name. On a CPU only the
reference is timed (the Pallas kernel would run in the interpreter). Prints markdown tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from ase.build import bulk  # noqa: E402

from kernels.selection import KernelFallbackWarning  # noqa: E402
from kernels.so2_message import random_inputs, so2_message_reference  # noqa: E402
from mlip.data.frame import frame_from_atoms  # noqa: E402
from mlip.data.graph import build_graph, collate  # noqa: E402
from mlip.data.padding import BucketLadder  # noqa: E402
from mlip.potential import Potential, _jitted  # noqa: E402
from mlip.runtime import Runtime  # noqa: E402

CUTOFF = 5.0  # Å
A_SI = 5.43  # Å, diamond Si; 8 atoms per cubic cell


def silicon(num_atoms: int):
    """Rattled diamond Si, a cubic supercell of about ``num_atoms`` atoms (8 per cell)."""
    repeats = max(1, round((num_atoms / 8) ** (1 / 3)))
    atoms = bulk("Si", "diamond", a=A_SI, cubic=True).repeat(repeats)
    atoms.rattle(stdev=0.03, seed=0)
    return atoms


def padded_batch(potential: Potential, atoms):
    """(graph, batch): the structure's graph and its batch padded to the bucket ladder."""
    graph = build_graph(frame_from_atoms(atoms), CUTOFF)
    shape = BucketLadder().shape_for(graph.n_node, graph.n_edge, 1)
    return graph, collate([graph], *shape, dtype=np.dtype(potential.dtype), labels=False)


# --- profile: XLA's cost and memory analysis, and the analytic floor ---------------------------


def chain_floor(config, itemsize: int) -> dict:
    """The least the fused edge chain of one block must do per edge, as the two kernels of
    kernels/so2_message.py split it (a forward pass, and a backward pass to the per-edge inputs).

    Bytes: every per-edge input read once and every per-edge output written once. Forward reads
    the features x [(L+1)**2, C], the Wigner blocks (sum of (2l+1)**2 entries) and the radial
    weights [rows, C], and writes the message [(L+1)**2, C]; backward reads x, the Wigner
    blocks, the radial weights and the message's cotangent, and writes the cotangents of x,
    the Wigner blocks and the radial weights. The SO(2) weights, read once per tile of edges,
    are left out.

    Flops (2 per multiply-add): the rotations in and out touch only the kept rows of the
    edge frame (|m| <= mmax, 2l+1 entries each); the SO(2) map is n**2 C**2 multiply-adds for
    m = 0 and 4 n**2 C**2 for each m > 0 (n = L - m + 1 degrees, complex blocks). Backward:
    the transposed SO(2) map, two rotations, the Wigner cotangent (two channel contractions
    per kept row entry) and the radial cotangent. ``backward_recompute_flops`` adds what the
    backward kernel as written also does: it recomputes the forward rotation and SO(2) map
    rather than reading them from memory.
    """
    lmax, mmax, channels = config.lmax, config.mmax, config.channels
    dim = (lmax + 1) ** 2
    degrees = [lmax - m + 1 for m in range(mmax + 1)]  # n, per order m
    rows = sum(degrees)  # radial rows, each `channels` wide
    kept = [(l, m) for m in range(mmax + 1) for l in range(m, lmax + 1) for _ in range(1 if m == 0 else 2)]
    wigner = sum((2 * l + 1) ** 2 for l in range(lmax + 1))
    rotation = sum(2 * l + 1 for l, _ in kept) * channels  # multiply-adds of one rotation
    so2 = sum((n * n if m == 0 else 4 * n * n) for m, n in enumerate(degrees)) * channels**2
    radial = len(kept) * channels  # multiplies by the radial weights
    forward_flops = 2 * (2 * rotation + so2) + radial
    backward_flops = 2 * (so2 + 2 * rotation + 2 * rotation + radial) + radial
    return {
        "forward_bytes": (2 * dim * channels + rows * channels + wigner) * itemsize,
        "backward_bytes": (3 * dim * channels + 2 * rows * channels + 2 * wigner) * itemsize,
        "forward_flops": forward_flops,
        "backward_flops": backward_flops,
        "backward_recompute_flops": backward_flops + 2 * (rotation + so2) + radial,
        # the message; the cotangents of x, of each Wigner block and of the radial weights
        "written_arrays": 3 + lmax + 1,
        "written_bytes": (2 * dim * channels + rows * channels + wigner) * itemsize,
    }


#: HLO ops of an entry computation that write no new buffer.
_VIEWS = {"parameter", "get-tuple-element", "bitcast", "tuple", "constant"}
_ITEMSIZE = {"f32": 4, "f64": 8, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "s64": 8, "pred": 1}


def per_edge_buffers(compiled, num_edges: int) -> tuple[int, int]:
    """(count, bytes) of the arrays with an edge axis that the compiled program's top-level ops
    write (fusions, dots, gathers, copies...): the per-edge tensors it materialises in memory."""
    count = total = 0
    entry = compiled.as_text().split("\nENTRY ", 1)[1].split("\n}", 1)[0]
    for line in entry.splitlines()[1:]:
        # "%name = SHAPE op(operands), ..." where SHAPE is "f32[E,9,64]{2,1,0}" or a tuple
        # "(f32[...]{...}, ...)" of a multi-output fusion; the op is the word before its "(".
        rest = line.split(" = ", 1)[1]
        match = re.match(r"(\(.*?\)|\S+) ([\w-]+)\(", rest)
        shapes, op = match.groups()
        if op in _VIEWS:
            continue
        for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", shapes):
            sizes = [int(d) for d in dims.split(",") if d]
            if num_edges in sizes:
                count += 1
                total += int(np.prod(sizes)) * _ITEMSIZE.get(dtype, 4)
    return count, total


def _costs(compiled, num_edges: int) -> dict:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost  # a list of one dict on older JAX
    return {
        "flops": cost["flops"],
        "bytes": cost["bytes accessed"],
        "temp": compiled.memory_analysis().temp_size_in_bytes,
        "edge_buffers": per_edge_buffers(compiled, num_edges),
    }


def reference_chain_costs(config, num_edges: int, dtype: str) -> tuple[dict, dict]:
    """XLA's costs of the reference edge chain of one block on ``num_edges`` edges: (forward,
    forward + backward to its per-edge inputs)."""
    x, wigner, radial, weights = random_inputs(
        jax.random.PRNGKey(1), config.lmax, config.mmax, config.channels, config.channels, num_edges, 0, dtype
    )

    def forward(x, wigner, radial):
        return so2_message_reference(x, wigner, radial, weights, config.lmax, config.mmax)

    def forward_backward(x, wigner, radial):
        message, vjp = jax.vjp(forward, x, wigner, radial)
        return message, vjp(message)

    return tuple(_costs(jax.jit(f).lower(x, wigner, radial).compile(), num_edges) for f in (forward, forward_backward))


def profile(preset: str, num_atoms: int) -> None:
    """Prints the cost table of one preset (see the module docstring)."""
    potential = Potential.create(preset, species=["Si"], r_cut=CUTOFF, dtype="float32", seed=0)
    config = potential.config
    graph, batch = padded_batch(potential, silicon(num_atoms))
    edges = batch.senders.shape[0]
    whole = _costs(_jitted(config, Runtime(kernel="reference")).lower(potential.params, batch).compile(), edges)
    forward, both = reference_chain_costs(config, edges, potential.dtype)
    floor = chain_floor(config, np.dtype(potential.dtype).itemsize)
    blocks = config.num_layers - 1
    print(
        f"\n{preset} (lmax {config.lmax}, mmax {config.mmax}, {config.channels} channels, {config.num_layers} blocks): "
        f"Si {graph.n_node} atoms, {graph.n_edge:,} edges, padded to {batch.positions.shape[0]} nodes, {edges:,} edges; float32\n"
    )
    print("| part | GFLOP | GB accessed | temp buffer (MB) | kFLOP / edge | kB / edge | per-edge arrays written (count, kB / edge) |")
    print("|---|---:|---:|---:|---:|---:|---|")
    rows = [
        ("whole call, energy + forces + stress", whole, 1),
        ("reference chain, 1 block, forward", forward, 1),
        ("reference chain, 1 block, forward + backward", both, 1),
    ]
    if blocks > 1:
        rows.append((f"reference chain, {blocks} blocks, forward + backward", both, blocks))
    for label, cost, times in rows:
        print(
            f"| {label} | {times * cost['flops'] / 1e9:.2f} | {times * cost['bytes'] / 1e9:.3f} | {cost['temp'] / 1e6:.0f} "
            f"| {times * cost['flops'] / edges / 1e3:.0f} | {times * cost['bytes'] / edges / 1e3:.1f} "
            f"| {times * cost['edge_buffers'][0]}, {times * cost['edge_buffers'][1] / edges / 1e3:.1f} |"
        )
    fused = {"flops": floor["forward_flops"] + floor["backward_flops"], "bytes": floor["forward_bytes"] + floor["backward_bytes"]}
    print(
        f"| fused chain floor, 1 block, forward + backward | | | | {fused['flops'] / 1e3:.0f} "
        f"({(floor['forward_flops'] + floor['backward_recompute_flops']) / 1e3:.0f} as written) | {fused['bytes'] / 1e3:.1f} "
        f"| {floor['written_arrays']}, {floor['written_bytes'] / 1e3:.1f} |"
    )
    print(
        f"\nchain share of the whole call ({blocks} block{'s' * (blocks > 1)}, forward + backward): {blocks * both['flops'] / whole['flops']:.0%} of flops, "
        f"{blocks * both['bytes'] / whole['bytes']:.0%} of bytes accessed. Reference chain vs floor, per block: "
        f"forward {forward['bytes'] / edges / floor['forward_bytes']:.1f}x the bytes, "
        f"forward + backward {both['bytes'] / edges / fused['bytes']:.1f}x the bytes and "
        f"{both['flops'] / edges / fused['flops']:.2f}x the flops. "
        f"Floor arithmetic intensity: {fused['flops'] / fused['bytes']:.0f} flop/byte."
    )


# --- timing and memory on a device ---------------------------------------------------------


def measure(potential: Potential, atoms, rounds: int) -> dict:
    """Median seconds per call, temporary bytes of the compiled program, device peak bytes."""
    graph, batch = padded_batch(potential, atoms)
    compiled = _jitted(potential.config).lower(potential.params, batch).compile()
    jax.block_until_ready(compiled(potential.params, batch))
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        jax.block_until_ready(compiled(potential.params, batch))
        times.append(time.perf_counter() - start)
    stats = jax.devices()[0].memory_stats() or {}
    return {
        "atoms": graph.n_node,
        "edges": graph.n_edge,
        "seconds": statistics.median(times),
        "temp_bytes": compiled.memory_analysis().temp_size_in_bytes,
        "peak_bytes": stats.get("peak_bytes_in_use"),
    }


def largest(potential: Potential, start: int) -> int:
    """Atoms of the largest supercell (growing by 1.25x from ``start``) that runs."""
    fits, atoms = 0, start
    while True:
        try:
            result = measure(potential, silicon(atoms), rounds=1)
        except Exception as exc:  # XLA reports out-of-memory as a RuntimeError / XlaRuntimeError
            if "RESOURCE_EXHAUSTED" not in str(exc) and "out of memory" not in str(exc).lower():
                raise
            return fits
        fits, atoms = result["atoms"], int(result["atoms"] * 1.25)


def timings(presets: list[str], sizes: list[int], rounds: int, find_largest: bool) -> None:
    device = jax.devices()[0]
    kernels = ("reference", "pallas") if device.platform == "gpu" else ("reference",)
    print("| preset | atoms | edges | kernel | time (ms) | temp buffer (MB) | device peak (MB) |")
    print("|---|---:|---:|---|---:|---:|---:|")
    maxima = []
    for preset in presets:
        base = Potential.create(preset, species=["Si"], r_cut=CUTOFF, dtype="float32", seed=0)
        for kernel in kernels:
            potential = dataclasses.replace(base, kernel=kernel)
            with warnings.catch_warnings():
                warnings.simplefilter("error", KernelFallbackWarning)  # never time the fallback
                for n in sizes:
                    try:
                        r = measure(potential, silicon(n), rounds)
                    except Exception as exc:
                        print(f"| {preset} | {n} | | {kernel} | failed: {type(exc).__name__}: {str(exc)[:120]} | | |")
                        continue
                    peak = f"{r['peak_bytes'] / 1e6:.0f}" if r["peak_bytes"] else "n/a"
                    print(
                        f"| {preset} | {r['atoms']:,} | {r['edges']:,} | {kernel} | {r['seconds'] * 1e3:.1f} "
                        f"| {r['temp_bytes'] / 1e6:.0f} | {peak} |",
                        flush=True,
                    )
                if find_largest:
                    maxima.append((preset, kernel, largest(potential, sizes[-1])))
    for preset, kernel, atoms in maxima:
        print(f"largest system that fits, {preset}, {kernel}: {atoms:,} atoms")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="small,medium")
    parser.add_argument("--atoms", default="1000,10000,100000", help="comma-separated sizes")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--largest", action="store_true", help="also find the largest system that fits")
    parser.add_argument("--profile", action="store_true", help="cost analysis and floor instead of timings")
    args = parser.parse_args()
    jax.config.update("jax_default_matmul_precision", "highest")
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform}); jax {jax.__version__}; float32, precision highest")
    presets, sizes = args.presets.split(","), [int(n) for n in args.atoms.split(",")]
    if args.profile:
        for preset in presets:
            profile(preset, sizes[0])
    else:
        print()
        timings(presets, sizes, args.rounds, args.largest)


if __name__ == "__main__":
    main()
