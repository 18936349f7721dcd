"""The Hessian d^2E/dR dR of one structure by automatic differentiation.

Forward-over-reverse: each block of rows is the JVP of the force function (itself one reverse
pass, `mlip.potential.compute`) along a block of unit displacement vectors, vmapped. The
forces run with the edges in chunks (`edge_chunk`, the chunked message sum of
`mlip.nn.message_passing`, rematerialised per chunk), so a block holds the per-edge
intermediates of one chunk per row, not of every edge: the memory of a block stops growing with
the number of atoms beyond the per-edge inputs (a 64-atom cell: 1.5 GB peak instead of 2.7 GB
at 24 rows, for 4% more time per row; benchmarks/RESULTS.md). ``block`` rows cost about
``block`` chunked force evaluations of memory. The fused Pallas kernel has no forward mode, so
the Hessian always runs the pure-JAX reference edge chain (``kernel="reference"``): the same
parameters and the same function, only unfused.
"""

from __future__ import annotations

import dataclasses
import functools

import ase
import jax
import jax.numpy as jnp
import numpy as np

from mlip.data.frame import Frame, frame_from_atoms
from mlip.data.graph import GraphBatch, build_graph, collate
from mlip.data.padding import BucketLadder
from mlip.models.config import FacetConfig
from mlip.potential import Potential, compute
from mlip.runtime import Runtime, release_compiled_programs_if_needed

#: Rows per vmapped JVP: bounds memory at about this many chunked force evaluations.
DEFAULT_BLOCK = 24
#: Edges per chunk of the force evaluations inside the Hessian.
DEFAULT_EDGE_CHUNK = 512


def hessian(
    potential: Potential, structure: Frame | ase.Atoms, *, block: int = DEFAULT_BLOCK,
    edge_chunk: int | None = DEFAULT_EDGE_CHUNK,
) -> np.ndarray:
    """Hessian H[3i+a, 3j+b] = d^2E / dR_ia dR_jb of ``structure``, [3N, 3N] float64 in eV/Å^2.

    ``block`` rows are computed together (vmapped), with the edges in chunks of ``edge_chunk``
    (None: unchunked, fastest for small cells, memory growing with block x edges).

    Symmetric up to rounding; rows sum to ~0 over atoms (translation invariance). Periodic
    images move with their atoms, so for a crystal this is the Gamma-point force-constant
    matrix of the cell as given.
    """
    frame = structure if isinstance(structure, Frame) else frame_from_atoms(structure)
    potential.check_species(frame.numbers)
    release_compiled_programs_if_needed()
    graph = build_graph(frame, potential.config.r_cut)
    shape = BucketLadder().shape_for(graph.n_node, graph.n_edge, 1)
    batch = collate([graph], *shape, dtype=np.dtype(potential.dtype), labels=False)
    # No forward mode in the fused kernel; the Hessian's own edge chunk bounds its memory.
    runtime = dataclasses.replace(potential.runtime, kernel="reference", edge_chunk=edge_chunk)
    n_rows = 3 * frame.n_atoms
    rows = []
    for start in range(0, n_rows, block):
        tangents = _unit_tangents(start, block, n_rows, batch.positions.shape, potential.dtype)
        out = _hessian_rows(potential.config, runtime, potential.params, batch, tangents)
        rows.append(np.asarray(out, np.float64)[: n_rows - start, : frame.n_atoms].reshape(-1, n_rows))
    return np.concatenate(rows)[:n_rows]


def _unit_tangents(start: int, block: int, n_rows: int, shape, dtype) -> np.ndarray:
    """[block, N_pad, 3]: unit displacements of coordinates start.. start+block-1 (zero past
    the last real coordinate, so every block has one shape and compiles once)."""
    tangents = np.zeros((block, *shape), dtype)
    for k, row in enumerate(range(start, min(start + block, n_rows))):
        tangents[k, row // 3, row % 3] = 1.0
    return tangents


@functools.partial(jax.jit, static_argnums=(0, 1))
def _hessian_rows(config: FacetConfig, runtime: Runtime, params, batch: GraphBatch, tangents: jax.Array) -> jax.Array:
    """[B, N_pad, 3]: row t of the Hessian is -dF/dR along tangent t (eV/Å^2)."""

    def forces(positions):
        return compute(config, params, batch._replace(positions=positions), runtime).forces

    _, forces_jvp = jax.linearize(forces, batch.positions)
    return -jax.vmap(forces_jvp)(jnp.asarray(tangents))
