"""All simulation: relaxation and molecular dynamics, batched on the device or one structure
through ASE.

    mlip.sim.relax(potential, structures, fmax=..., relax_cell=..., optimizer="fire" | "descent")
    mlip.sim.md(potential, structures, ensemble="nve" | "nvt" | "nvt-langevin" | "npt" | "npt-aniso", ...)

take lists of ase.Atoms and run them together on the device, returning one mlip.sim.Result per
structure in input order. mlip.sim.ase.relax / run_md run one structure through ASE's
optimisers and integrators with the mlip Calculator. Both paths read one table of ensembles
(mlip.sim.ensembles.ENSEMBLES: each name's device integrator and its ASE counterpart).

Modules: engine (the protocol: Dynamics and Engine NamedTuples, state helpers), ensembles
(the table), ase (the ASE path), neighbors (device neighbour list), system (padded batch,
constraints), filters (relaxation state; atoms-only and Fréchet cell filters), frechet (its
matrix functions), fire and descent (optimisers), integrators (NVE/NVT/NPT), batcher (in-flight
batching of any Engine), relax, md.
"""

from mlip.sim.batcher import Budget, Result
from mlip.sim.engine import Dynamics, Engine
from mlip.sim.ensembles import ENSEMBLES
from mlip.sim.md import md
from mlip.sim.relax import OPTIMIZERS, relax

__all__ = ["Budget", "Dynamics", "ENSEMBLES", "Engine", "OPTIMIZERS", "Result", "md", "relax"]
