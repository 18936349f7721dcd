"""Both simulation paths sample the same ensembles: mean temperature and volume of every
thermostatted ensemble of mlip.sim.ensembles, on the batched engine (mlip.sim.md, several
replicas) and through ASE (mlip.sim.ase.make_dynamics, one trajectory), with block-average
standard errors. The CI test (tests/test_sim_ensembles.py) is this at a few hundred steps;
this runs longer for tighter errors.

    python benchmarks/bench_ensembles.py                    # 2000 steps per path and ensemble
    python benchmarks/bench_ensembles.py --steps 400 --ensembles npt

Prints one table row per ensemble and quantity: device mean ± error, ASE mean ± error, and the
difference in units of the combined error.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")


def main() -> None:
    import jax

    jax.config.update("jax_enable_x64", True)
    import test_sim_ensembles as t  # the CI test's samplers, at other lengths
    from ase.build import bulk

    from mlip.potential import Potential
    from mlip.sim.ensembles import ENSEMBLES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="device steps per replica (ASE runs twice as many)")
    parser.add_argument("--ensembles", nargs="+", default=[n for n in ENSEMBLES if n != "nve"])
    args = parser.parse_args()
    t.STEPS = args.steps
    potential = Potential.load("mlearn-si").astype("float64")
    atoms = bulk("Si", "diamond", a=5.46, cubic=True)
    print(f"8-atom diamond Si, bundled mlearn-si model (float64), {t.TEMPERATURE} K, {t.PRESSURE} GPa, {t.PARAMETERS}")
    print("| ensemble | quantity | device | ASE | difference / error | seconds |\n|---|---|---:|---:|---:|---:|")
    for name in args.ensembles:
        start = time.perf_counter()
        device, reference = t.device_samples(potential, atoms, name), t.ase_samples(potential, atoms, name)
        seconds = time.perf_counter() - start
        for k, what in enumerate(("temperature (K)", "volume (Å^3)")):
            (md_, ed), (ma, ea) = t.block_mean(device[k]), t.block_mean(reference[k])
            sigma = (abs(md_ - ma) / max((ed**2 + ea**2) ** 0.5, 1e-12))
            print(f"| {name} | {what} | {md_:.2f} ± {ed:.2f} | {ma:.2f} ± {ea:.2f} | {sigma:.1f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
