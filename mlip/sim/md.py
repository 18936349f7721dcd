"""`md`: batched molecular dynamics of many structures on the device (the ensembles of
mlip.sim.ensembles), each structure with its own seeded initial velocities, thermostat and
random stream."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import ase
import jax
import numpy as np
from ase import units
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

from mlip.errors import MlipError
from mlip.potential import Potential
from mlip.sim.batcher import COMPLETED, DRIFT, Budget, Result, run
from mlip.sim.engine import Engine
from mlip.sim.ensembles import Parameters, check_structures
from mlip.sim.ensembles import ensemble as ensemble_row
from mlip.sim.system import ATOM, GRAPH
from mlip.units import EV_PER_A3_TO_GPA


def md_engine(name: str, parameters: Parameters, *, steps: int, temperature: float, pressure: float, seed: int,
              init_temperature: float | None, interval: int = 100, max_drift: float | None = 1.0) -> Engine:
    """MD in ensemble ``name`` as an mlip.sim.engine.Engine. temperature K, pressure eV/Å^3,
    max_drift eV/atom. Temperature, pressure, seed and initial temperature reach the device as
    per-structure arrays, so they are not part of the key (no recompilation)."""
    row = ensemble_row(name)

    def velocities(atoms: ase.Atoms, index: int) -> np.ndarray:
        """Å/fs: Maxwell-Boltzmann at init_temperature (seed + index, no net momentum), or
        the structure's own velocities when init_temperature is None."""
        if init_temperature is None:
            return atoms.get_velocities() * units.fs
        atoms = atoms.copy()
        MaxwellBoltzmannDistribution(atoms, temperature_K=init_temperature, rng=np.random.default_rng(seed + index))
        Stationary(atoms)
        return atoms.get_velocities() * units.fs

    def options(atoms: ase.Atoms, index: int) -> dict:
        return {
            "velocities": velocities(atoms, index),
            "temperature": np.array(temperature),
            "pressure": np.array(pressure),
            "key": np.asarray(jax.random.key_data(jax.random.PRNGKey(seed + index)), np.uint32),
        }

    def finalize(atoms: ase.Atoms, record: dict) -> None:
        atoms.set_velocities(record["velocities"] / units.fs)

    def problem(log: list[dict], record: dict) -> tuple[str, str] | None:
        """(status, message) when the conserved energy (potential + kinetic + what the
        thermostat and barostat exchanged) of a finished run, logged every ``interval`` steps,
        drifted from its start by more than ``max_drift`` eV/atom: a blown-up run (too long
        a timestep, or the potential breaking down) is not "completed"."""
        if max_drift is None or len(log) < 2:
            return None
        conserved = np.array([entry["conserved"] for entry in log])
        drift = float(np.max(np.abs(conserved - conserved[0]))) / max(len(record["numbers"]), 1)
        if drift <= max_drift:
            return None
        return DRIFT, (f"the conserved energy drifted by {drift:.3g} eV/atom (more than max_drift {max_drift} "
                       f"eV/atom): the timestep is too long or the potential broke down")

    return Engine(
        key=("md", name, parameters, steps, interval),
        dynamics=lambda energy_fn, spec: row.device(energy_fn, spec, parameters),
        option_kinds={"velocities": ATOM, "temperature": GRAPH, "pressure": GRAPH, "key": GRAPH},
        options=options,
        done=lambda state: state.steps >= steps,
        succeeded=lambda record: bool(record["steps"] >= steps),
        success_status=COMPLETED,
        finalize=finalize,
        interval=interval,
        observe=observe,
        problem=problem,
    )


def observe(record: dict) -> dict:
    """What is logged for a structure every ``interval`` steps and at its end: step, energies
    (eV), temperature (K, over the free components), volume (Å^3)."""
    dof = max(float(np.sum(record["free"])), 1.0)
    return {
        "steps": int(record["steps"]),
        "potential_energy": float(record["energy"]),
        "kinetic_energy": float(record["kinetic_energy"]),
        "conserved": float(record["energy"] + record["kinetic_energy"] + record["bath_energy"]),
        "temperature": float(2 * record["kinetic_energy"] / (dof * units.kB)),
        "volume": float(abs(np.linalg.det(record["cell"]))),
    }


def md(
    potential: Potential,
    structures: Sequence[ase.Atoms],
    *,
    ensemble: str = "nve",
    steps: int = 1000,
    timestep: float = 1.0,
    temperature: float = 300.0,
    init_temperature: float | None = None,
    pressure: float = 0.0,
    friction: float = 0.01,
    tau: float | None = None,
    tau_p: float | None = None,
    bulk_modulus: float = 100.0,
    seed: int = 0,
    interval: int = 100,
    max_drift: float | None = 1.0,
    skin: float = 0.5,
    budget: Budget | None = None,
    progress: bool = False,
    compile_only: bool = False,
    dispersion: str | None = None,
) -> list[Result]:
    """Run ``steps`` of MD on every structure, batched on the device; results in input order.

    Args:
        ensemble: a name of mlip.sim.ensembles.ENSEMBLES: "nve" (velocity Verlet), "nvt"
            (Nose-Hoover chain, ``tau`` fs), "nvt-langevin" (BAOAB, ``friction`` 1/fs), "npt"
            (Langevin + isotropic stochastic cell rescaling, ``tau_p`` fs, coupling from
            ``bulk_modulus`` GPa), "npt-aniso" (the same, and the cell shape relaxes towards
            zero deviatoric stress).
        timestep: fs. temperature: target, K. pressure: target, GPa (npt).
        tau, tau_p: fs; None: 100 and 1000 timesteps (mlip.sim.ensembles.Parameters), as on
            the ASE path.
        init_temperature: K, draw Maxwell-Boltzmann velocities (seed + structure index, zero
            total momentum); None keeps each structure's own velocities.
        interval: steps between log entries (Result.log: energies, temperature, volume), from
            step 0.
        max_drift: eV/atom: a structure whose conserved energy (potential + kinetic + the
            thermostat's and barostat's exchange), sampled every ``interval`` steps, strays
            further than this from its start fails with status "failed: energy drift" instead
            of "completed" (None: no check). A healthy run drifts by far less (~1e-4).
        budget: batch sizes (default mlip.sim.batcher.Budget); its chunk is set to ``interval``.
        compile_only: take no step: compile the programs the run would use (into the
            persistent compilation cache when it is on: `mlip warmup`) and return [].
        dispersion: None, or "d3bj": add D3(BJ) dispersion with PBE parameters (two-body,
            mlip.nn.dispersion) to the energy, forces and stress, as
            ``Calculator(dispersion="d3bj")`` does on the ASE path.

    FixAtoms and FixCartesian constraints hold (not in the NPT ensembles, whose barostat moves
    every atom).

    Returns:
        one Result per structure: final atoms with velocities and a SinglePointCalculator,
        energy (potential, eV), forces, stress, steps, status "completed" and the log.
    """
    if steps < 0 or not timestep > 0 or interval < 1:
        raise MlipError(f"md needs steps >= 0, timestep > 0 and interval >= 1 (got {steps}, {timestep}, {interval})")
    structures = list(structures)
    check_structures(ensemble, structures)
    if ensemble_row(ensemble).cell and any(a.constraints for a in structures):
        raise MlipError(f"{ensemble}: the barostat moves every atom, so constraints cannot hold; "
                        "use nve, nvt or nvt-langevin")
    parameters = Parameters(float(timestep), float(friction), None if tau is None else float(tau),
                            None if tau_p is None else float(tau_p), float(bulk_modulus))
    engine = md_engine(ensemble, parameters, steps=int(steps), temperature=float(temperature),
                       pressure=float(pressure) / EV_PER_A3_TO_GPA, seed=int(seed),
                       init_temperature=None if init_temperature is None else float(init_temperature),
                       interval=int(interval), max_drift=None if max_drift is None else float(max_drift))
    budget = dataclasses.replace(budget or Budget(), chunk=interval)
    return run(potential, structures, engine, skin=skin, budget=budget, progress=progress,
               compile_only=compile_only, dispersion=dispersion)
