"""Time and peak memory of the autodiff Hessian (`Potential.hessian`) of diamond Si with the
bundled model: 64 atoms (2x2x2 cubic) or 216 (3x3x3), rattled, one size per process so that the
peak resident memory (ru_maxrss) is that size's alone.

    XLA_FLAGS=--xla_cpu_multi_thread_eigen=false taskset -c 1 python benchmarks/bench_hessian.py 2 [--block 24] [--edge-chunk 0]
"""

import argparse
import resource
import time

import numpy as np
from ase.build import bulk


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("repeat", type=int, help="cubic supercell of the 8-atom cell (2: 64 atoms, 3: 216)")
    parser.add_argument("--block", type=int, default=None, help="Hessian rows per vmapped block (default: the library's)")
    parser.add_argument("--edge-chunk", type=int, default=None, help="edges per chunk (0: unchunked; default: the library's)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args()
    if args.dtype == "float64":
        import jax

        jax.config.update("jax_enable_x64", True)
    from mlip.potential import Potential

    potential = Potential.load("mlearn-si")
    if args.dtype != potential.dtype:
        potential = potential.astype(args.dtype)
    atoms = bulk("Si", "diamond", a=5.46, cubic=True) * ((args.repeat,) * 3)
    atoms.rattle(0.02, seed=0)
    kwargs = {} if args.block is None else {"block": args.block}
    if args.edge_chunk is not None:
        kwargs["edge_chunk"] = args.edge_chunk or None
    start, cpu = time.perf_counter(), time.process_time()
    hessian = potential.hessian(atoms, **kwargs)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    scale = np.abs(hessian).max()
    asymmetry = np.abs(hessian - hessian.T).max() / scale
    row_sums = np.abs(hessian.reshape(-1, len(atoms), 3).sum(axis=1)).max() / scale
    print(f"{len(atoms)} atoms, {args.dtype}, block {kwargs.get('block', 'default')}, edge chunk {kwargs.get('edge_chunk', 'default')}: [{hessian.shape[0]}, {hessian.shape[1]}] "
          f"in {wall:.1f} s wall, {cpu:.1f} s CPU (compilation included), peak memory {peak:.2f} GB; "
          f"asymmetry {asymmetry:.1e}, row sums {row_sums:.1e} of the largest entry", flush=True)


if __name__ == "__main__":
    main()
