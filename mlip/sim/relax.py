"""`relax`: batched FIRE relaxation (positions, optionally cells) of many structures on the
device, equivalent to ASE's ``FIRE(FrechetCellFilter(atoms, scalar_pressure=p)).run(fmax)``
on each structure."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Sequence

import ase
import numpy as np

from mlip.errors import MlipError
from mlip.potential import Potential
from mlip.sim.batcher import CONVERGED, Budget, Result, run
from mlip.sim.fire import FireState, fire
from mlip.sim.system import GRAPH
from mlip.units import EV_PER_A3_TO_GPA


@dataclasses.dataclass(frozen=True)
class RelaxEngine:
    """FIRE (+ FrechetCellFilter) as an engine of mlip.sim.batcher (hashable: jit cache key).

    fmax: eV/Å, on every row of the generalised forces (atoms, and the cell's virial / n).
    max_steps: FIRE steps per structure. relax_cell: relax cells of 3-d periodic structures.
    pressure: eV/Å^3, the scalar pressure of the enthalpy E + pV. The last two reach the
    device as per-structure arrays, so they are left out of the cache key (no recompilation).
    """

    fmax: float
    max_steps: int
    relax_cell: bool = dataclasses.field(compare=False)
    pressure: float = dataclasses.field(compare=False)

    state_type: ClassVar = FireState
    OPTIONS: ClassVar = {"relax_cell": GRAPH, "pressure": GRAPH}  # init_fn arguments
    success_status: ClassVar = CONVERGED

    def build(self, energy_fn, spec):
        return fire(energy_fn, spec)

    def options(self, atoms: ase.Atoms, index: int) -> dict:
        return {"relax_cell": np.array(self.relax_cell and bool(atoms.pbc.all())), "pressure": np.array(self.pressure)}

    def finished(self, state: FireState):
        return (state.fmax < self.fmax) | (state.steps >= self.max_steps)

    def succeeded(self, record: dict) -> bool:
        return bool(record["fmax"] < self.fmax)

    def finalize(self, atoms: ase.Atoms, record: dict) -> None:
        """Nothing beyond positions and cell to set on a relaxed structure."""


def relax(
    potential: Potential,
    structures: Sequence[ase.Atoms],
    *,
    fmax: float = 0.05,
    relax_cell: bool = False,
    max_steps: int = 500,
    pressure: float = 0.0,
    skin: float = 0.5,
    budget: Budget = Budget(),
    progress: bool = False,
) -> list[Result]:
    """Relax every structure with batched FIRE; results in input order.

    Args:
        potential: the potential (its dtype is the simulation's).
        structures: ase.Atoms of any sizes, pbc and cells (not modified).
        fmax: convergence, eV/Å: max over atoms of |F|, and with ``relax_cell`` over the rows
            of FrechetCellFilter's cell force (virial / n_atoms, in eV) as in ASE.
        relax_cell: also relax the cells of structures periodic in three directions.
        max_steps: FIRE steps per structure.
        pressure: external scalar pressure, GPa (enthalpy E + pV).
        skin: Verlet skin of the device neighbour list, Å.
        budget: batch sizes (mlip.sim.batcher.Budget).
        progress: show a progress bar (structures/s).

    Returns:
        one mlip.sim.batcher.Result per structure: final atoms (with a SinglePointCalculator),
        energy, forces, stress, steps taken, converged flag and status.
    """
    if not fmax > 0 or max_steps < 0:
        raise MlipError(f"relax needs fmax > 0 and max_steps >= 0 (got fmax={fmax}, max_steps={max_steps})")
    engine = RelaxEngine(float(fmax), int(max_steps), bool(relax_cell), float(pressure) / EV_PER_A3_TO_GPA)
    return run(potential, structures, engine, skin=skin, budget=budget, progress=progress)
