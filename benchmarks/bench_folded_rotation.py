"""The folded edge-frame rotation (issue 17) against the per-degree chain it replaced, in one
process, interleaved round by round so that load from other processes hits both alike.

    XLA_FLAGS=--xla_cpu_multi_thread_eigen=false taskset -c 1 python benchmarks/bench_folded_rotation.py

"Before" is the edge chain of commit ``--base`` (default 9e00b39, the parent of the change):
per-degree rotations (`mlip.nn.edge_frame.rotate_to_edge_frame`, unchanged) around that commit's
`so2_linear` (its source read with ``git show``; it imports no mlip module), which gathers the
edge-frame components and radial rows into the m-blocked layout and scatters the result back.
"After" is the model's chain now: `folded_wigner` + `so2_message_folded`.

1. One layer's message path, forward + backward (gradients w.r.t. features, Wigner blocks and
   radial weights, as forces need), on random inputs of ``--edges`` edges, per preset shape;
   "after" includes building the folded matrix from the blocks (small has one general block,
   which then pays it alone).
2. A whole model call (energy + forces + stress, `mlip.potential.compute` jitted) on rattled
   diamond Si of 216 atoms, random weights, float32: "before" is the same model traced with the
   base chain patched in (`base_chain`).
3. Saved models (``--models``): energies of before and after, float32 and float64.

Prints, for wall time and for the process's CPU time per call, the median over rounds of each
side and the median of the per-round ratios after/before.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import subprocess
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)

from kernels import so2_message  # noqa: E402
from mlip.models import facet  # noqa: E402
from mlip.models.config import PRESETS  # noqa: E402
from mlip.nn.edge_frame import folded_wigner, rotate_from_edge_frame, rotate_to_edge_frame  # noqa: E402


def base_so2_linear(base: str):
    """`so2_linear` as of commit ``base``."""
    source = subprocess.run(["git", "show", f"{base}:mlip/nn/so2_conv.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType("so2_conv_base")
    sys.modules[module.__name__] = module  # flax's dataclasses look their module up there
    exec(compile(source, f"{base}:mlip/nn/so2_conv.py", "exec"), module.__dict__)
    return module.so2_linear


def base_message(so2_linear):
    def message(x, wigner, radial, weights, lmax, mmax):
        return rotate_from_edge_frame(so2_linear(rotate_to_edge_frame(x, wigner), radial, weights, lmax, mmax), wigner)

    return message


def folded_message(x, wigner, radial, weights, lmax, mmax):
    return so2_message.so2_message_folded(x, folded_wigner(list(wigner), mmax), radial, weights, lmax, mmax)


@contextlib.contextmanager
def base_chain(message):
    """While tracing: the model passes the Wigner blocks where it passes the folded matrix, and
    its general blocks run ``message`` (the base chain) on them."""
    saved = facet.folded_wigner, so2_message.so2_message_folded
    facet.folded_wigner = lambda blocks, mmax: list(blocks)
    so2_message.so2_message_folded = message
    try:
        yield
    finally:
        facet.folded_wigner, so2_message.so2_message_folded = saved


def interleave(calls: dict, rounds: int) -> dict:
    """Per callable, the median over rounds of its wall time and of this process's CPU time per
    call (all threads; under heavy load from other processes, time spent waiting for a core
    counts in the wall time only), and per clock the median of the per-round ratios of the last
    callable to the first, with their range."""
    times = {name: {"wall": [], "cpu": []} for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            wall, cpu = time.perf_counter(), time.process_time()
            jax.block_until_ready(call())
            times[name]["cpu"].append(time.process_time() - cpu)
            times[name]["wall"].append(time.perf_counter() - wall)
    first, last = list(times)[0], list(times)[-1]
    result = {}
    for clock in ("wall", "cpu"):
        ratios = np.array(times[last][clock]) / np.array(times[first][clock])
        result[clock] = {**{name: float(np.median(t[clock])) for name, t in times.items()},
                         "ratio": float(np.median(ratios)), "range": (float(ratios.min()), float(ratios.max()))}
    return result


def describe(timing: dict) -> str:
    return "; ".join(
        f"{clock}: before {1e3 * t['before']:.0f}, after {1e3 * t['after']:.0f}, ratio {t['ratio']:.3f} "
        f"(rounds {t['range'][0]:.2f}-{t['range'][1]:.2f})" for clock, t in timing.items())


def message_path(preset: str, edges: int, rounds: int, before_message) -> dict:
    config = PRESETS[preset]
    lmax, mmax, channels = config["lmax"], config["mmax"], config["channels"]
    inputs = so2_message.random_inputs(jax.random.PRNGKey(0), lmax, mmax, channels, channels, edges, 0, jnp.float32)
    probe = jax.random.normal(jax.random.PRNGKey(1), inputs[0].shape, jnp.float32)

    def forward_backward(message):
        def loss(x, wigner, radial, weights):
            return jnp.sum(probe * message(x, wigner, radial, weights, lmax, mmax))

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(*inputs).compile()

    before, after = forward_backward(before_message), forward_backward(folded_message)
    expected, got = before(*inputs), after(*inputs)  # (loss, gradients)
    deviation = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
                    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)))
    timing = interleave({"before": lambda: before(*inputs), "after": lambda: after(*inputs)}, rounds)
    return {"timing": timing, "lmax": lmax, "mmax": mmax, "channels": channels, "gradient_deviation": deviation}


def silicon_batch(repeats: int, dtype: str):
    from ase.build import bulk

    from mlip.data.frame import frame_from_atoms
    from mlip.data.graph import build_graph, collate
    from mlip.data.padding import BucketLadder

    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(repeats)
    atoms.rattle(0.03, seed=0)
    graph = build_graph(frame_from_atoms(atoms), 5.0)
    shape = BucketLadder().shape_for(graph.n_node, graph.n_edge, 1)
    return collate([graph], *shape, dtype=np.dtype(dtype), labels=False)


def model_variants(potential, batch, before_message):
    """(before, after): compiled energy + forces + stress calls of ``potential`` on ``batch``."""
    from mlip.potential import compute

    batch = potential._cast(batch)

    # Two function objects, both alive until compiled: jit caches traces per function.
    functions = [lambda p, b: compute(potential.config, p, b, potential.runtime) for _ in range(2)]
    with base_chain(before_message):
        before = jax.jit(functions[0]).lower(potential.params, batch).compile()
    after = jax.jit(functions[1]).lower(potential.params, batch).compile()
    return (lambda: before(potential.params, batch)), (lambda: after(potential.params, batch))


def whole_call(preset: str, rounds: int, before_message) -> dict:
    from mlip.potential import Potential

    potential = Potential.create(preset, species=["Si"], r_cut=5.0, seed=0, dtype="float32")
    batch = silicon_batch(3, "float32")
    before, after = model_variants(potential, batch, before_message)
    out_b, out_a = before(), after()
    timing = interleave({"before": before, "after": after}, rounds)
    return {"timing": timing, "energy_rel": float(abs(out_a.energy[0] - out_b.energy[0]) / abs(out_b.energy[0])),
            "force_dev": float(jnp.max(jnp.abs(out_a.forces - out_b.forces)) / jnp.max(jnp.abs(out_b.forces))),
            "edges": int(batch.senders.shape[0])}


def saved_models(paths: list[str], before_message) -> list[tuple]:
    """(path, dtype, |E_after - E_before| / |E_before|, max force deviation / max |F|) on Si 64."""
    from mlip.potential import Potential

    rows = []
    for path in paths:
        loaded = Potential.load(path)
        for dtype in ("float32", "float64"):
            potential = loaded.astype(dtype)
            batch = silicon_batch(2, dtype)
            if 14 not in potential.config.species:
                continue
            before, after = model_variants(potential, batch, before_message)
            out_b, out_a = before(), after()
            rows.append((path, dtype, float(abs(out_a.energy[0] - out_b.energy[0]) / abs(out_b.energy[0])),
                         float(jnp.max(jnp.abs(out_a.forces - out_b.forces)) / jnp.max(jnp.abs(out_b.forces)))))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="9e00b39", help="commit whose so2_linear is 'before'")
    parser.add_argument("--edges", type=int, default=16384)
    parser.add_argument("--rounds", type=int, default=11, help="rounds of the message-path timing")
    parser.add_argument("--model-rounds", type=int, default=7, help="rounds of the whole-call timing")
    parser.add_argument("--presets", nargs="+", default=["small", "medium"])
    parser.add_argument("--models", nargs="*", default=[str(REPO / "mlip/assets/mlearn-Si.mlip")])
    parser.add_argument("--skip", nargs="*", default=[], choices=["message", "model", "saved"])
    args = parser.parse_args()
    before_message = base_message(base_so2_linear(args.base))
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, load {os.getloadavg()[0]:.1f}, "
          f"affinity {sorted(os.sched_getaffinity(0))}, jax {jax.__version__}, base {args.base}", flush=True)
    if "message" not in args.skip:
        print(f"\nOne layer's message path, forward + backward, E = {args.edges}, float32 (ms; ratio after/before)")
        for preset in args.presets:
            r = message_path(preset, args.edges, args.rounds, before_message)
            print(f"{preset} (lmax {r['lmax']}, mmax {r['mmax']}, C {r['channels']}): {describe(r['timing'])}; "
                  f"max deviation of loss and gradients {r['gradient_deviation']:.1e}", flush=True)
    if "model" not in args.skip:
        print("\nWhole call (energy + forces + stress), diamond Si 216 rattled, float32 (ms; ratio after/before)")
        for preset in args.presets:
            r = whole_call(preset, args.model_rounds, before_message)
            print(f"{preset} ({r['edges']} padded edges): {describe(r['timing'])}; energy rel. deviation {r['energy_rel']:.1e}, force deviation {r['force_dev']:.1e}", flush=True)
    if "saved" not in args.skip:
        print("\nSaved models on Si 64 (rattled): after vs before")
        for path, dtype, energy, force in saved_models(args.models, before_message):
            print(f"{path} {dtype}: energy rel. deviation {energy:.1e}, force deviation {force:.1e}", flush=True)


if __name__ == "__main__":
    main()
