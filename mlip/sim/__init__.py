"""On-device batched relaxation and molecular dynamics.

    mlip.sim.relax(potential, structures, fmax=..., relax_cell=..., max_steps=...)
    mlip.sim.md(potential, structures, ensemble="nve" | "nvt" | "nvt-langevin" | "npt" | "npt-aniso", ...)

Both take lists of ase.Atoms and return one mlip.sim.Result per structure, in input order.
Modules: neighbors (device neighbour list), system (padded batch), frechet + fire (variable-
cell FIRE), integrators (NVE/NVT/NPT), batcher (in-flight batching), relax, md.
"""

from mlip.sim.batcher import Budget, Result
from mlip.sim.md import md
from mlip.sim.relax import relax

__all__ = ["Budget", "Result", "md", "relax"]
