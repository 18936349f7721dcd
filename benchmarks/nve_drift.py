"""NVE energy conservation over 1 ps: the long version of the CI test
tests/test_calculator.py::test_nve_conserves_energy_and_compiles_a_bounded_number_of_times.

64-atom diamond Si, Maxwell-Boltzmann velocities at 300 K, velocity Verlet at 1 fs for 1000
steps through the ASE calculator, float64, the CI test's random-init model (small architecture
at width 16, scale 0.1, seed 0). Prints the total-energy drift (max |E(t) - E(0)|, and the
linear-fit slope) in meV/atom, and the final temperature.

    python benchmarks/nve_drift.py [--steps 1000] [--scale 0.1]
"""

import argparse

import jax
import numpy as np
from ase import units
from ase.build import bulk
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument("--timestep", type=float, default=1.0, help="fs")
    args = parser.parse_args()
    jax.config.update("jax_enable_x64", True)
    from mlip.calculator import Calculator
    from mlip.potential import Potential

    potential = Potential.create("small", species=["H", "C", "O", "Si"], r_cut=4.5, seed=0, dtype="float64",
                                 channels=16, mixing_hidden=16, readout_hidden=16, scale=args.scale)
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(2)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(1))
    atoms.calc = Calculator(potential, compilation_cache=None)
    times, energies = [], []
    dynamics = VelocityVerlet(atoms, args.timestep * units.fs)
    dynamics.attach(lambda: (times.append(dynamics.get_time() / (1000 * units.fs)), energies.append(atoms.get_total_energy())), interval=10)
    dynamics.run(args.steps)
    per_atom = (np.array(energies) - energies[0]) / len(atoms) * 1e3  # meV/atom
    slope = np.polyfit(times, per_atom, 1)[0]
    print(f"{args.steps} steps of {args.timestep} fs ({times[-1]:.3f} ps), 64 atoms, float64, scale {args.scale}")
    print(f"max |E(t) - E(0)| = {np.abs(per_atom).max():.4f} meV/atom; linear drift {slope:.4f} meV/atom/ps; "
          f"final T = {atoms.get_temperature():.0f} K; neighbour-list builds {atoms.calc.neighbors.builds}")


if __name__ == "__main__":
    main()
