"""The ASE path of mlip.sim: relaxation and molecular dynamics of one structure through ASE's
optimisers and integrators, with the mlip Calculator attached (what `mlip relax` and `mlip md`
run with --engine ase, an ASE optimiser or a trajectory file). Any ASE constraint holds. The MD
integrators are those of mlip.sim.ensembles, the same table the batched engine reads. Outputs
are written atomically; progress is shown and logged."""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from pathlib import Path

import ase
import ase.io
import numpy as np
from ase.filters import FrechetCellFilter
from ase.io.trajectory import Trajectory
from ase.md import MDLogger
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS, FIRE, LBFGS
from tqdm.auto import tqdm

from mlip.errors import MlipError
from mlip.fileio import atomic_write_bytes
from mlip.sim.ensembles import Parameters, check_structures, ensemble
from mlip.units import EV_PER_A3_TO_GPA

log = logging.getLogger("mlip.sim.ase")

#: ASE optimisers by name.
OPTIMIZERS = {"fire": FIRE, "bfgs": BFGS, "lbfgs": LBFGS}


def summary(atoms: ase.Atoms) -> str:
    """Energy, max force and (for periodic cells) pressure, as one line."""
    energy = atoms.get_potential_energy()
    fmax = np.linalg.norm(atoms.get_forces(), axis=1).max()
    line = f"energy {energy:.6f} eV ({energy / len(atoms):.6f} eV/atom), max |F| {fmax:.5f} eV/Å"
    if atoms.pbc.all():
        pressure = -np.trace(atoms.get_stress(voigt=False)) / 3 * EV_PER_A3_TO_GPA
        line += f", pressure {pressure:.4f} GPa, volume {atoms.get_volume():.3f} Å^3"
    return line


def write_structure(atoms: ase.Atoms | list[ase.Atoms], path: Path) -> None:
    """Write ``atoms`` (one structure or a list; extxyz unless the suffix says otherwise)
    atomically, with their results."""
    import io

    buffer = io.StringIO()
    fmt = "extxyz" if path.suffix in ("", ".xyz", ".extxyz") else None
    ase.io.write(buffer, atoms, format=fmt or ase.io.formats.filetype(path, read=False))
    atomic_write_bytes(path, buffer.getvalue().encode())


def relax(
    atoms: ase.Atoms,
    *,
    fmax: float = 0.05,
    steps: int = 500,
    relax_cell: bool = False,
    pressure: float = 0.0,
    optimizer: str = "fire",
    trajectory: Path | None = None,
    progress: bool = True,
) -> bool:
    """Relax ``atoms`` in place (calculator attached) until max |F| < fmax (eV/Å), and with
    ``relax_cell`` the cell too (FrechetCellFilter: generalised cell force = virial / N) under
    the external ``pressure`` (GPa). Returns whether it converged within ``steps``."""
    if optimizer not in OPTIMIZERS:
        raise MlipError(f"unknown optimizer {optimizer!r}; choose one of {sorted(OPTIMIZERS)}")
    if relax_cell:
        check_cell_relaxable(atoms)
    target = FrechetCellFilter(atoms, scalar_pressure=pressure / EV_PER_A3_TO_GPA) if relax_cell else atoms
    dynamics = OPTIMIZERS[optimizer](target, logfile=None, trajectory=None)
    writer = Trajectory(str(trajectory), "w", atoms) if trajectory else None
    bar = tqdm(total=steps, desc="relax", unit="step", disable=not progress, mininterval=1.0)
    try:
        with quiet_cell_filter():
            for converged in dynamics.irun(fmax=fmax, steps=steps):
                if writer is not None:
                    writer.write()
                forces = target.get_forces()
                bar.set_postfix_str(f"E={atoms.get_potential_energy():.4f} eV fmax={np.linalg.norm(forces, axis=1).max():.4f}", refresh=False)
                bar.update(1)
                if converged:
                    break
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    log.info("relaxation %s after %d steps", "converged" if converged else "did NOT converge", dynamics.nsteps)
    return bool(converged)


def check_cell_relaxable(atoms: ase.Atoms, name: str = "the structure") -> None:
    """MlipError unless ``atoms`` is periodic in all three directions: a cell relaxation needs
    the stress, which a slab, wire or molecule does not have (relax its atoms only)."""
    if not atoms.pbc.all():
        raise MlipError(f"{name} is not periodic in all three directions (pbc={''.join('FT'[int(p)] for p in atoms.pbc)}): "
                        "a cell relaxation needs a 3-d periodic structure; relax the atoms only (without --cell)")


@contextlib.contextmanager
def quiet_cell_filter():
    """Within: the cell filter's matrix logarithm (scipy.linalg.logm) does not warn that its
    result "may be inaccurate" at errors of ~1e-12 on every step (harmless; it buried the
    output of every cell relaxation)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="logm result may be inaccurate", category=RuntimeWarning)
        yield


def make_dynamics(atoms: ase.Atoms, name: str, parameters: Parameters, *, temperature: float, pressure: float,
                  seed: int):
    """The ASE integrator of ensemble ``name`` (mlip.sim.ensembles). temperature K, pressure GPa."""
    check_structures(name, [atoms])
    return ensemble(name).ase(atoms, parameters, temperature, pressure, seed)


def _conserved_energy(dynamics, atoms: ase.Atoms):
    """A function returning the conserved energy (eV) of ``dynamics``, or None (Langevin)."""
    if hasattr(dynamics, "get_conserved_energy"):
        return dynamics.get_conserved_energy
    if isinstance(dynamics, VelocityVerlet):
        return atoms.get_total_energy
    return None


def _check_drift(drift: float, n_atoms: int, max_drift: float, step: int) -> None:
    per_atom = abs(drift) / max(n_atoms, 1)
    if not per_atom <= max_drift:  # nan drifts too
        raise MlipError(f"md: the conserved energy drifted by {per_atom:.3g} eV/atom by step {step} (more than "
                        f"--max-drift {max_drift} eV/atom): the timestep is too long or the potential broke down")


def run_md(
    atoms: ase.Atoms,
    *,
    ensemble: str = "nve",
    temperature: float = 300.0,
    steps: int = 1000,
    pressure: float = 0.0,
    parameters: Parameters = Parameters(),
    seed: int = 0,
    interval: int = 10,
    trajectory: Path | None = None,
    logfile: Path | None = None,
    progress: bool = True,
    max_drift: float | None = 1.0,
) -> dict:
    """Molecular dynamics of ``atoms`` (calculator attached) in ``ensemble`` (a name of
    mlip.sim.ensembles.ENSEMBLES, with ``parameters``: timestep fs, friction, tau, tau_p),
    velocities drawn at ``temperature`` K, target ``pressure`` GPa. Logs every ``interval``
    steps (ASE MDLogger format) and writes the trajectory. Returns throughput figures: ns/day
    and atom-steps/s. Every ``interval`` steps the conserved energy (nve: potential + kinetic;
    nvt: ASE's extended energy; the Langevin ensembles have none) is compared with its start:
    a drift over ``max_drift`` eV/atom (a blown-up run) is an MlipError (None: no check)."""
    timestep = parameters.timestep
    dynamics = make_dynamics(atoms, ensemble, parameters, temperature=temperature, pressure=pressure, seed=seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=np.random.default_rng(seed))
    Stationary(atoms)
    if logfile is not None:
        dynamics.attach(MDLogger(dynamics, atoms, str(logfile), header=True, stress=atoms.pbc.all(), mode="w"), interval=interval)
    writer = Trajectory(str(trajectory), "w", atoms) if trajectory else None
    if writer is not None:
        dynamics.attach(writer.write, interval=interval)
    bar = tqdm(total=steps, desc=f"md {ensemble}", unit="step", disable=not progress, mininterval=1.0)
    conserved = _conserved_energy(dynamics, atoms)
    start_energy = conserved() if conserved and max_drift is not None else None
    start = time.perf_counter()
    try:
        for done in range(0, steps, interval):
            chunk = min(interval, steps - done)
            dynamics.run(chunk)
            if start_energy is not None:
                _check_drift(conserved() - start_energy, len(atoms), max_drift, done + chunk)
            elapsed = time.perf_counter() - start
            ns_per_day = (done + chunk) * timestep * 1e-6 / elapsed * 86400
            bar.set_postfix_str(f"T={atoms.get_temperature():.0f} K, {ns_per_day:.3f} ns/day", refresh=False)
            bar.update(chunk)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    elapsed = time.perf_counter() - start
    stats = {
        "steps": steps,
        "seconds": elapsed,
        "ns_per_day": steps * timestep * 1e-6 / elapsed * 86400,
        "atom_steps_per_second": steps * len(atoms) / elapsed,
    }
    log.info("md %s: %d steps in %.1f s, %.3f ns/day, %.3g atom-steps/s", ensemble, steps, elapsed, stats["ns_per_day"], stats["atom_steps_per_second"])
    return stats
