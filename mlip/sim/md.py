"""`md`: batched molecular dynamics of many structures on the device (NVE, NVT, NPT), each
structure with its own seeded initial velocities, thermostat and random stream."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Sequence

import ase
import jax
import numpy as np
from ase import units
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

from mlip.errors import MlipError
from mlip.potential import Potential
from mlip.sim import integrators
from mlip.sim.batcher import COMPLETED, DRIFT, Budget, Result, run
from mlip.sim.system import ATOM, GRAPH
from mlip.units import EV_PER_A3_TO_GPA

ENSEMBLES = ("nve", "nvt", "nvt-langevin", "npt", "npt-aniso")


@dataclasses.dataclass(frozen=True)
class MDEngine:
    """MD as an engine of mlip.sim.batcher (hashable: jit cache key). Times in fs, temperature
    K, pressure eV/Å^3, friction 1/fs, compressibility Å^3/eV. Temperature, pressure, seed
    and initial temperature reach the device as per-structure arrays (or not at all), so they
    are left out of the cache key (no recompilation)."""

    ensemble: str
    steps: int
    timestep: float
    temperature: float = dataclasses.field(compare=False)
    pressure: float = dataclasses.field(compare=False)
    friction: float
    tau: float
    tau_p: float
    compressibility: float
    seed: int = dataclasses.field(compare=False)
    init_temperature: float | None = dataclasses.field(compare=False)
    interval: int = 100  # steps between log entries
    max_drift: float | None = dataclasses.field(default=1.0, compare=False)  # eV/atom, of the conserved energy

    state_type: ClassVar = integrators.MDState
    OPTIONS: ClassVar = {"velocities": ATOM, "temperature": GRAPH, "pressure": GRAPH, "key": GRAPH}
    success_status: ClassVar = COMPLETED

    def build(self, energy_fn, spec):
        if self.ensemble == "nve":
            return integrators.nve(energy_fn, spec, timestep=self.timestep)
        if self.ensemble == "nvt":
            return integrators.nose_hoover_chain(energy_fn, spec, timestep=self.timestep, tau=self.tau)
        if self.ensemble == "nvt-langevin":
            return integrators.langevin(energy_fn, spec, timestep=self.timestep, friction=self.friction)
        return integrators.npt_langevin(energy_fn, spec, timestep=self.timestep, friction=self.friction,
                                        tau_p=self.tau_p, compressibility=self.compressibility,
                                        anisotropic=self.ensemble == "npt-aniso")

    def options(self, atoms: ase.Atoms, index: int) -> dict:
        return {
            "velocities": self._velocities(atoms, index),
            "temperature": np.array(self.temperature),
            "pressure": np.array(self.pressure),
            "key": np.asarray(jax.random.key_data(jax.random.PRNGKey(self.seed + index)), np.uint32),
        }

    def _velocities(self, atoms: ase.Atoms, index: int) -> np.ndarray:
        """Å/fs: Maxwell-Boltzmann at init_temperature (seed + index, no net momentum), or
        the structure's own velocities when init_temperature is None."""
        if self.init_temperature is None:
            return atoms.get_velocities() * units.fs
        atoms = atoms.copy()
        MaxwellBoltzmannDistribution(atoms, temperature_K=self.init_temperature, rng=np.random.default_rng(self.seed + index))
        Stationary(atoms)
        return atoms.get_velocities() * units.fs

    def finished(self, state):
        return state.steps >= self.steps

    def succeeded(self, record: dict) -> bool:
        return bool(record["steps"] >= self.steps)

    def finalize(self, atoms: ase.Atoms, record: dict) -> None:
        atoms.set_velocities(record["velocities"] / units.fs)

    def problem(self, log: list[dict], record: dict) -> tuple[str, str] | None:
        """(status, message) when the conserved energy (potential + kinetic + what the
        thermostat and barostat exchanged) of a finished run, logged every ``interval`` steps,
        drifted from its start by more than ``max_drift`` eV/atom: a blown-up run (too long
        a timestep, or the potential breaking down) is not "completed"."""
        if self.max_drift is None or len(log) < 2:
            return None
        conserved = np.array([entry["conserved"] for entry in log])
        drift = float(np.max(np.abs(conserved - conserved[0]))) / max(len(record["numbers"]), 1)
        if drift <= self.max_drift:
            return None
        return DRIFT, (f"the conserved energy drifted by {drift:.3g} eV/atom (more than max_drift {self.max_drift} "
                       f"eV/atom): the timestep is too long or the potential broke down")

    def observe(self, record: dict) -> dict:
        """What is logged for a structure every ``interval`` steps and at its end."""
        dof = max(3 * len(record["numbers"]), 1)
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
    tau: float = 100.0,
    tau_p: float = 1000.0,
    bulk_modulus: float = 100.0,
    seed: int = 0,
    interval: int = 100,
    max_drift: float | None = 1.0,
    skin: float = 0.5,
    budget: Budget | None = None,
    progress: bool = False,
) -> list[Result]:
    """Run ``steps`` of MD on every structure, batched on the device; results in input order.

    Args:
        ensemble: "nve" (velocity Verlet), "nvt" (Nose-Hoover chain, ``tau`` fs),
            "nvt-langevin" (BAOAB, ``friction`` 1/fs), "npt" (Langevin + isotropic stochastic
            cell rescaling, ``tau_p`` fs, coupling from ``bulk_modulus`` GPa), "npt-aniso" (the
            same, and the cell shape relaxes towards zero deviatoric stress).
        timestep: fs. temperature: target, K. pressure: target, GPa (npt).
        init_temperature: K, draw Maxwell-Boltzmann velocities (seed + structure index, zero
            total momentum); None keeps each structure's own velocities.
        interval: steps between log entries (Result.log: energies, temperature, volume), from
            step 0.
        max_drift: eV/atom: a structure whose conserved energy (potential + kinetic + the
            thermostat's and barostat's exchange), sampled every ``interval`` steps, strays
            further than this from its start fails with status "failed: energy drift" instead
            of "completed" (None: no check). A healthy run drifts by far less (~1e-4).
        budget: batch sizes (default mlip.sim.batcher.Budget); its chunk is set to ``interval``.

    Returns:
        one Result per structure: final atoms with velocities and a SinglePointCalculator,
        energy (potential, eV), forces, stress, steps, status "completed" and the log.
    """
    if ensemble not in ENSEMBLES:
        raise MlipError(f"unknown ensemble {ensemble!r}; choose one of {ENSEMBLES}")
    if steps < 0 or not timestep > 0 or interval < 1:
        raise MlipError(f"md needs steps >= 0, timestep > 0 and interval >= 1 (got {steps}, {timestep}, {interval})")
    if ensemble.startswith("npt") and not all(a.pbc.all() for a in structures):
        raise MlipError("NPT needs structures periodic in all three directions")
    engine = MDEngine(
        ensemble, int(steps), float(timestep), float(temperature), float(pressure) / EV_PER_A3_TO_GPA,
        float(friction), float(tau), float(tau_p), EV_PER_A3_TO_GPA / float(bulk_modulus), int(seed),
        None if init_temperature is None else float(init_temperature), int(interval),
        None if max_drift is None else float(max_drift),
    )
    budget = dataclasses.replace(budget or Budget(), chunk=interval)
    return run(potential, structures, engine, skin=skin, budget=budget, progress=progress)
