"""The MD ensembles, once: each name maps to its device integrator (mlip.sim.integrators, batched)
and its ASE counterpart (one structure, mlip.sim.ase) with the same thermostat, the same
parameters and the same units, so that `mlip md --ensemble X` samples the same ensemble on
either path (tests/test_sim_ensembles.py measures it).

| name         | device (mlip.sim.integrators)                 | ASE (mlip.sim.ase)                             |
|--------------|-----------------------------------------------|------------------------------------------------|
| nve          | `nve`: velocity Verlet                        | `VelocityVerlet`                               |
| nvt          | `nose_hoover_chain`: chain of 3, time `tau`   | `NoseHooverChainNVT(tdamp=tau, tchain=3)`      |
| nvt-langevin | `langevin`: BAOAB, `friction`                 | `LangevinBAOAB(T_tau=1/friction)`              |
| npt          | `npt_langevin`: BAOAB + isotropic stochastic  | `LangevinBAOAB(T_tau=1/friction, P_tau=tau_p,  |
|              | cell rescaling, time `tau_p`                  | hydrostatic=True)`: Langevin-Hoover piston     |
| npt-aniso    | the same, and the cell shape relaxes towards  | `LangevinBAOAB(..., hydrostatic=False)`: the   |
|              | zero deviatoric stress                        | whole cell as a Langevin-Hoover piston         |

The NPT thermostats are the same (BAOAB Langevin, same friction); the barostats share their
time ``tau_p`` and their target (the mean instantaneous pressure, kinetic part included) but
not their equations of motion: stochastic cell rescaling is first order in the volume, ASE's
Langevin-Hoover piston second order. Both sample the isothermal-isobaric ensemble; only the
cell's dynamics (how fast the volume decorrelates) differ.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Callable

import ase
import numpy as np
from ase import units
from ase.md.langevinbaoab import LangevinBAOAB
from ase.md.md import MolecularDynamics
from ase.md.nose_hoover_chain import NoseHooverChainNVT
from ase.md.verlet import VelocityVerlet

from mlip.errors import MlipError
from mlip.sim import integrators
from mlip.sim.engine import Dynamics
from mlip.units import EV_PER_A3_TO_GPA


@dataclasses.dataclass(frozen=True)
class Parameters:
    """The static parameters of an MD run, shared by both paths (hashable).

    timestep: fs. friction: 1/fs (Langevin thermostats). tau: fs, Nose-Hoover time (None:
    100 timesteps). tau_p: fs, barostat time (None: 1000 timesteps). bulk_modulus: GPa, an
    estimate of the material's: it sets the device barostat's coupling only.
    """

    timestep: float = 1.0
    friction: float = 0.01
    tau: float | None = None
    tau_p: float | None = None
    bulk_modulus: float = 100.0

    def __post_init__(self):
        if not self.timestep > 0 or not self.friction > 0 or not self.bulk_modulus > 0:
            raise MlipError(f"md needs timestep, friction and bulk_modulus > 0 (got {self.timestep}, "
                            f"{self.friction}, {self.bulk_modulus})")
        for name in ("tau", "tau_p"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise MlipError(f"md needs {name} > 0 fs (got {value})")

    @property
    def thermostat_time(self) -> float:
        """fs: the Nose-Hoover chain's relaxation time."""
        return 100 * self.timestep if self.tau is None else self.tau

    @property
    def barostat_time(self) -> float:
        """fs: the barostat's relaxation time."""
        return 1000 * self.timestep if self.tau_p is None else self.tau_p

    @property
    def compressibility(self) -> float:
        """Å^3/eV, from the bulk modulus."""
        return EV_PER_A3_TO_GPA / self.bulk_modulus


@dataclasses.dataclass(frozen=True)
class Ensemble:
    """One row of the table: ``device(energy_fn, spec, parameters) -> Dynamics``;
    ``ase(atoms, parameters, temperature K, pressure GPa, seed) -> MolecularDynamics``;
    ``cell``: the cell moves (needs a structure periodic in three directions)."""

    name: str
    description: str
    device: Callable[..., Dynamics]
    ase: Callable[..., MolecularDynamics]
    cell: bool = False


def _npt_device(anisotropic: bool):
    def device(energy_fn, spec, p: Parameters) -> Dynamics:
        return integrators.npt_langevin(energy_fn, spec, timestep=p.timestep, friction=p.friction,
                                        tau_p=p.barostat_time, compressibility=p.compressibility,
                                        anisotropic=anisotropic)
    return device


def _npt_ase(hydrostatic: bool):
    def make(atoms, p: Parameters, temperature, pressure, seed):
        stress = -pressure / EV_PER_A3_TO_GPA  # eV/Å^3; ASE's sign: negative compresses
        with warnings.catch_warnings():  # it announces its (documented) piston-mass heuristic every time
            warnings.filterwarnings("ignore", message="Using heuristic P_mass", category=UserWarning)
            return LangevinBAOAB(atoms, p.timestep * units.fs, temperature_K=temperature, externalstress=stress,
                                 hydrostatic=hydrostatic, T_tau=units.fs / p.friction,
                                 P_tau=p.barostat_time * units.fs, rng=np.random.default_rng(seed))
    return make


ENSEMBLES: dict[str, Ensemble] = {e.name: e for e in (
    Ensemble(
        "nve", "velocity Verlet",
        device=lambda energy_fn, spec, p: integrators.nve(energy_fn, spec, timestep=p.timestep),
        ase=lambda atoms, p, temperature, pressure, seed: VelocityVerlet(atoms, p.timestep * units.fs),
    ),
    Ensemble(
        "nvt", "Nose-Hoover chain",
        device=lambda energy_fn, spec, p: integrators.nose_hoover_chain(
            energy_fn, spec, timestep=p.timestep, tau=p.thermostat_time),
        ase=lambda atoms, p, temperature, pressure, seed: NoseHooverChainNVT(
            atoms, p.timestep * units.fs, temperature_K=temperature, tdamp=p.thermostat_time * units.fs,
            tchain=integrators.CHAIN),
    ),
    Ensemble(
        "nvt-langevin", "Langevin (BAOAB)",
        device=lambda energy_fn, spec, p: integrators.langevin(energy_fn, spec, timestep=p.timestep,
                                                               friction=p.friction),
        ase=lambda atoms, p, temperature, pressure, seed: LangevinBAOAB(
            atoms, p.timestep * units.fs, temperature_K=temperature, T_tau=units.fs / p.friction,
            rng=np.random.default_rng(seed)),
    ),
    Ensemble("npt", "Langevin + isotropic barostat", device=_npt_device(False), ase=_npt_ase(True), cell=True),
    Ensemble("npt-aniso", "Langevin + anisotropic barostat", device=_npt_device(True), ase=_npt_ase(False),
             cell=True),
)}


def ensemble(name: str) -> Ensemble:
    """The row of ``name``; MlipError naming the choices for an unknown one."""
    if name not in ENSEMBLES:
        raise MlipError(f"unknown ensemble {name!r}; choose one of {', '.join(ENSEMBLES)}")
    return ENSEMBLES[name]


def check_structures(name: str, structures: list[ase.Atoms]) -> None:
    """MlipError unless every structure can run in ensemble ``name`` (a moving cell needs 3-d
    periodicity)."""
    if ensemble(name).cell and not all(a.pbc.all() for a in structures):
        raise MlipError(f"{name} moves the cell: it needs structures periodic in all three directions")
