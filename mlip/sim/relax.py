"""`relax`: batched relaxation (positions, optionally cells) of many structures on the device.
With FIRE (the default) it is ASE's ``FIRE(FrechetCellFilter(atoms, scalar_pressure=p)).run(fmax)``
on each structure, step for step; "descent" is steepest descent with a backtracking line search
(mlip.sim.descent). Constraints (FixAtoms, FixCartesian) are honoured."""

from __future__ import annotations

from typing import Sequence

import ase
import numpy as np

from mlip.errors import MlipError
from mlip.potential import Potential
from mlip.sim import filters
from mlip.sim.batcher import CONVERGED, Budget, Result, run
from mlip.sim.descent import descent
from mlip.sim.engine import Engine
from mlip.sim.fire import fire
from mlip.sim.system import GRAPH
from mlip.units import EV_PER_A3_TO_GPA

#: Device optimisers: name -> (energy_fn, spec, cell_filter) -> Dynamics.
OPTIMIZERS = {"fire": fire, "descent": descent}


def relax_engine(*, fmax: float, max_steps: int, relax_cell: bool, pressure: float, optimizer: str = "fire") -> Engine:
    """The relaxation as an mlip.sim.engine.Engine.

    fmax: eV/Å, on every row of the generalised forces (atoms, and the cell's virial / n).
    max_steps: optimiser steps per structure. relax_cell: relax the cells of 3-d periodic
    structures (FrechetCellFilter; otherwise the atoms alone). pressure: eV/Å^3, the scalar
    pressure of the enthalpy E + pV (a per-structure array on the device: not in the key).
    """
    if optimizer not in OPTIMIZERS:
        raise MlipError(f"unknown optimizer {optimizer!r}; the batched engine has {', '.join(OPTIMIZERS)}")
    make, cell_filter = OPTIMIZERS[optimizer], filters.frechet_cell() if relax_cell else filters.atoms_only()

    def options(atoms: ase.Atoms, index: int) -> dict:
        return {"relax_cell": np.array(relax_cell and bool(atoms.pbc.all())), "pressure": np.array(pressure)}

    return Engine(
        key=("relax", optimizer, relax_cell, fmax, max_steps),
        dynamics=lambda energy_fn, spec: make(energy_fn, spec, cell_filter),
        option_kinds={"relax_cell": GRAPH, "pressure": GRAPH},
        options=options,
        done=lambda state: (state.fmax < fmax) | (state.steps >= max_steps),
        succeeded=lambda record: bool(record["fmax"] < fmax),
        success_status=CONVERGED,
    )


def relax(
    potential: Potential,
    structures: Sequence[ase.Atoms],
    *,
    fmax: float = 0.05,
    relax_cell: bool = False,
    max_steps: int = 500,
    pressure: float = 0.0,
    optimizer: str = "fire",
    skin: float = 0.5,
    budget: Budget = Budget(),
    progress: bool = False,
    compile_only: bool = False,
    dispersion: str | None = None,
) -> list[Result]:
    """Relax every structure on the device; results in input order.

    Args:
        potential: the potential (its dtype is the simulation's).
        structures: ase.Atoms of any sizes, pbc and cells (not modified); their FixAtoms and
            FixCartesian constraints hold (other constraints are an MlipError).
        fmax: convergence, eV/Å: max over atoms of |F|, and with ``relax_cell`` over the rows
            of FrechetCellFilter's cell force (virial / n_atoms, in eV) as in ASE.
        relax_cell: also relax the cells of structures periodic in three directions.
        max_steps: optimiser steps per structure.
        pressure: external scalar pressure, GPa (enthalpy E + pV).
        optimizer: "fire" (ASE's FIRE, step for step) or "descent" (steepest descent with a
            backtracking line search).
        skin: Verlet skin of the device neighbour list, Å.
        budget: batch sizes (mlip.sim.batcher.Budget).
        progress: show a progress bar (structures/s).
        compile_only: take no step: compile the programs the run would use (into the
            persistent compilation cache when it is on: `mlip warmup`) and return [].
        dispersion: None, or "d3bj": add D3(BJ) dispersion with PBE parameters (two-body,
            mlip.nn.dispersion) to the energy, forces and stress, as
            ``Calculator(dispersion="d3bj")`` does on the ASE path.

    Returns:
        one mlip.sim.batcher.Result per structure: final atoms (with a SinglePointCalculator),
        energy, forces (the potential's, before constraints), stress, steps taken, converged
        flag and status.
    """
    if not fmax > 0 or max_steps < 0:
        raise MlipError(f"relax needs fmax > 0 and max_steps >= 0 (got fmax={fmax}, max_steps={max_steps})")
    engine = relax_engine(fmax=float(fmax), max_steps=int(max_steps), relax_cell=bool(relax_cell),
                          pressure=float(pressure) / EV_PER_A3_TO_GPA, optimizer=optimizer)
    return run(potential, structures, engine, skin=skin, budget=budget, progress=progress,
               compile_only=compile_only, dispersion=dispersion)
