"""Cost of D3(BJ) dispersion (mlip.nn.dispersion) against the bundled model, per calculator call
and per step of the batched engine.

Diamond Si cells of 64 and 512 atoms (rattled), float32 (the calculator's default) and float64:

- calculator: the host pair list (vesin, 31.75 Å half list), the jitted D3 energy + forces +
  stress, and the model's own energy + forces + stress through the calculator; medians of
  --repeat calls after one warm-up (compilation excluded, reported apart);
- batched engine (mlip.sim.md, NVE from 300 K, one structure): seconds per step with and
  without ``dispersion="d3bj"`` (the device list then reaches 31.75 Å + skin and the D3 term is
  differentiated with the model's): warm runs of 2 x --steps minus --steps steps.

    XLA_FLAGS=--xla_cpu_multi_thread_eigen=false taskset -c 1 python benchmarks/bench_d3.py
"""

import argparse
import functools
import time

import jax
import numpy as np
from ase.build import bulk


def _median_seconds(function, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _model_call(calculator, atoms):
    calculator.reset()
    calculator.calculate(atoms, ["energy", "forces", "stress"])


def _batched_seconds_per_step(potential, atoms, steps, dispersion):
    """(seconds per MD step on the batched engine, seconds of a whole run of ``steps`` with
    compilation). Per step: the difference of warm runs of 2 * steps and of steps, over steps,
    so that the fixed cost of a run (host lists, packing, the first evaluation) cancels."""
    from mlip import sim

    def run(n):
        start = time.perf_counter()
        (result,) = sim.md(potential, [atoms], steps=n, init_temperature=300.0, interval=steps, dispersion=dispersion)
        assert result.status == "completed", result.message
        return time.perf_counter() - start

    first = run(steps)
    run(2 * steps)  # compiles the longer run's engine
    return (run(2 * steps) - run(steps)) / steps, first


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 4], help="cubic supercells of the 8-atom cell")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--steps", type=int, default=10, help="MD steps of the batched engine's timed run")
    parser.add_argument("--skip-calculator", action="store_true", help="only the batched engine")
    args = parser.parse_args()
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    from mlip.calculator import Calculator
    from mlip.nn.dispersion import PBE, D3Dispersion, pair_list
    from mlip.potential import Potential
    from mlip.registry import resolve_model

    potential = Potential.load(resolve_model("mlearn-si")).astype(args.dtype)
    model = Calculator(potential, compilation_cache=None)
    d3 = D3Dispersion(dtype=args.dtype)
    for size in args.sizes:
        atoms = bulk("Si", "diamond", a=5.46, cubic=True) * (size, size, size)
        atoms.rattle(0.02, seed=0)
        plain, plain_first = _batched_seconds_per_step(potential, atoms, args.steps, None)
        with_d3, d3_first = _batched_seconds_per_step(potential, atoms, args.steps, "d3bj")
        print(f"{len(atoms)} atoms, {args.dtype}, batched engine: {plain * 1e3:.0f} ms per step without D3, "
              f"{with_d3 * 1e3:.0f} ms with D3 ({with_d3 / plain:.2f}x; a first run of {args.steps} "
              f"steps with compilation: {plain_first:.1f} s and {d3_first:.1f} s)", flush=True)
        if args.skip_calculator:
            continue
        start = time.perf_counter()
        d3(atoms)
        d3_first = time.perf_counter() - start
        cutoffs = (PBE.cutoff + d3.skin, PBE.cn_cutoff + d3.skin)
        pairs = pair_list(atoms.positions, atoms.cell.array, atoms.pbc, *cutoffs)
        t_pairs = _median_seconds(functools.partial(pair_list, atoms.positions, atoms.cell.array, atoms.pbc, *cutoffs), args.repeat)
        t_d3 = _median_seconds(functools.partial(d3, atoms), args.repeat)  # same positions: the pair list is reused
        n_pairs = int(pairs.near.mask.sum() + pairs.far.mask.sum())
        n_padded = len(pairs.near.mask) + len(pairs.far.mask)
        model_call = functools.partial(_model_call, model, atoms)
        start = time.perf_counter()
        model_call()
        model_first = time.perf_counter() - start
        t_model = _median_seconds(model_call, args.repeat)
        print(f"{len(atoms)} atoms, {n_pairs} pairs within {cutoffs[0]:.2f} Å ({n_padded} padded), "
              f"{int(pairs.first.size)} distinct (padded), {args.dtype}: D3 {t_d3 * 1e3:.0f} ms per call "
              f"(+ {t_pairs * 1e3:.0f} ms when the pair list is rebuilt; first call {d3_first:.1f} s), "
              f"model {t_model * 1e3:.0f} ms (first call {model_first:.1f} s): D3/model = {t_d3 / t_model:.2f} "
              f"({(t_d3 + t_pairs) / t_model:.2f} with a rebuild)", flush=True)


if __name__ == "__main__":
    main()
