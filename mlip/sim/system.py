"""`System`: a padded batch of structures on the device, and the host-side packing that lets
structures enter and leave a batch without changing its shape.

Layout (that of mlip.data.graph): real atoms first, structure after structure, then padding
atoms, which belong to the last structure slot, always a padding slot. Padding slots have an
identity cell and pbc False; padding atoms have mass 1 and atomic number 0.

Every state of mlip.sim says which of its fields are per-atom (first axis N) and which
per-structure (first axis G) in a class attribute ``KINDS``; `stack` and `unstack` use it to
cut a batch into per-structure records and to pack records into a batch, written once for all
integrators and optimisers.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import ase
import jax
import jax.numpy as jnp
import numpy as np
from ase.geometry.minkowski_reduction import minkowski_reduce

from mlip.data.frame import completed_cell
from mlip.data.graph import GraphBatch
from mlip.data.neighbors import edge_vectors
from mlip.errors import MlipError
from mlip.nn.dispersion import D3Params, d3_atom_energies, d3_tables
from mlip.potential import PotentialOutput, compute, species_table
from mlip.runtime import Runtime
from mlip.sim import neighbors as nl

ATOM, GRAPH = "atom", "graph"

#: Padding values other than zero, by field name (finite cells, non-zero masses).
PADDING = {"cell": np.eye(3), "reference_cell": np.eye(3), "masses": 1.0}


class System(NamedTuple):
    """Structures packed into N atom slots and G structure slots.

    positions: [N, 3], Å (not wrapped).
    cell: [G, 3, 3], Å, rows are lattice vectors; completed (mlip.data.frame.completed_cell) along
        open directions, where it has no effect on energies.
    numbers: int32 [N], atomic numbers (0 for padding).
    masses: [N], amu (1 for padding).
    pbc: bool [G, 3].
    free: [N, 3], 1 where a Cartesian component may move, 0 where a constraint fixes it
        (`free_components`: ASE's FixAtoms and FixCartesian); 0 for padding.
    node_graph: int32 [N]; node_mask: bool [N]; graph_mask: bool [G].
    graph_start: int32 [G], first atom of each structure; n_node: int32 [G], its atom count.
    neighbors: mlip.sim.neighbors.NeighborList.
    """

    positions: jax.Array
    cell: jax.Array
    numbers: jax.Array
    masses: jax.Array
    pbc: jax.Array
    free: jax.Array
    node_graph: jax.Array
    node_mask: jax.Array
    graph_mask: jax.Array
    graph_start: jax.Array
    n_node: jax.Array
    neighbors: nl.NeighborList

    KINDS = {"positions": ATOM, "cell": GRAPH, "numbers": ATOM, "masses": ATOM, "pbc": GRAPH, "free": ATOM}

    @property
    def topology(self) -> nl.Topology:
        return nl.Topology(self.node_graph, self.node_mask, self.graph_start, self.n_node, self.pbc)


def record(atoms: ase.Atoms) -> dict:
    """The per-structure record of ``atoms`` (System fields; see `stack`)."""
    return {
        "positions": np.asarray(atoms.positions, np.float64),
        "cell": completed_cell(atoms.cell.array, atoms.pbc),
        "numbers": np.asarray(atoms.numbers, np.int32),
        "masses": np.asarray(atoms.get_masses(), np.float64),
        "pbc": np.asarray(atoms.pbc, bool),
        "free": free_components(atoms),
    }


def free_components(atoms: ase.Atoms) -> np.ndarray:
    """float64 [n, 3]: 0 for each Cartesian component that ``atoms``' constraints fix (ASE's
    FixAtoms, and FixCartesian with its mask), 1 elsewhere. Other constraints are an MlipError
    naming them (the ASE path, `mlip.sim.ase`, honours every ASE constraint)."""
    from ase.constraints import FixAtoms, FixCartesian

    free = np.ones((len(atoms), 3))
    for constraint in atoms.constraints:
        if isinstance(constraint, FixAtoms):
            free[constraint.index] = 0.0
        elif isinstance(constraint, FixCartesian):
            free[constraint.index] = np.where(constraint.mask, 0.0, free[constraint.index])
        else:
            raise MlipError(f"constraint {type(constraint).__name__} is not supported by the batched engine "
                            "(FixAtoms and FixCartesian are); run this structure through ASE (--engine ase)")
    return free


class Placement(NamedTuple):
    """How a structure in the batch relates to the user's (see `place`).

    op: int [3, 3], unimodular: the batch's cell is ``op @ cell`` of the user's.
    cell: float64 [3, 3], Å, the batch's cell at the start, before any cast to float32.
    images: int [n, 3], lattice translations (in the batch's cell) taken off each atom.
    offset: float64 [3], Å, the translation taken off every atom.
    """

    op: np.ndarray
    cell: np.ndarray
    images: np.ndarray
    offset: np.ndarray


def place(atoms: ase.Atoms) -> tuple[dict, Placement]:
    """The record of ``atoms`` (`record`) as the batch holds it: the same structure with its
    cell Minkowski-reduced along periodic directions, atoms wrapped into it, and (unless
    periodic in 3-d, where the cell may deform about the origin) centred at the origin. Every
    cell in a batch is then compact (the device neighbour search sizes its image box for the
    most skewed cell) and coordinates small (float32 keeps their precision far from the
    origin). `restore` maps the batch's positions and cell back."""
    rec = record(atoms)
    pbc = rec["pbc"]
    op = minkowski_reduce(rec["cell"], pbc)[1] if pbc.any() else np.eye(3, dtype=int)
    cell = op @ rec["cell"]
    images = (np.floor(np.linalg.solve(cell.T, rec["positions"].T).T) * pbc).astype(np.int64)
    positions = rec["positions"] - images @ cell
    offset = np.zeros(3) if pbc.all() or len(atoms) == 0 else positions.mean(axis=0)
    return {**rec, "positions": positions - offset, "cell": cell}, Placement(op, cell, images, offset)


def restore(positions: np.ndarray, cell: np.ndarray, placement: Placement) -> tuple[np.ndarray, np.ndarray]:
    """The user's positions [n, 3] and cell [3, 3] (Å), float64, of a structure the batch holds
    at ``positions`` in ``cell``: each atom back in its own image (the images follow the cell
    as it deforms) and the cell in the user's lattice basis. The cell is the float64 start
    cell times the deformation since, so that a float32 cell's rounding is not multiplied by
    the image counts of atoms far from the origin."""
    start = placement.cell.astype(cell.dtype)  # as the batch held it
    cell = placement.cell @ np.linalg.solve(start.astype(np.float64), np.asarray(cell, np.float64))
    positions = np.asarray(positions, np.float64) + placement.offset + placement.images @ cell
    return positions, np.rint(np.linalg.inv(placement.op)) @ cell


def stack(records: Sequence[dict], kinds: dict, n_node: int, n_graph: int) -> dict:
    """Pack per-structure ``records`` (field -> array) into padded [N, ...] / [G, ...] arrays.

    Per-atom fields are concatenated, per-structure fields stacked; padding takes the values
    of `PADDING` (zero otherwise). Needs n_node > total atoms and n_graph > len(records).
    """
    if len(records) >= n_graph:
        raise ValueError(f"{len(records)} structures do not fit in {n_graph} slots (one is padding)")
    out = {}
    for name, kind in kinds.items():
        parts = [np.asarray(r[name]) for r in records]
        joined = np.concatenate(parts) if kind == ATOM else np.stack(parts)
        rows = n_node if kind == ATOM else n_graph
        if len(joined) >= rows and kind == ATOM:
            raise ValueError(f"{len(joined)} atoms do not fit in {n_node} slots (one is padding)")
        array = np.empty((rows,) + joined.shape[1:], joined.dtype)
        array[...] = PADDING.get(name, 0)
        array[: len(joined)] = joined
        out[name] = array
    return out


def unstack(arrays: dict, kinds: dict, sizes: Sequence[int]) -> list[dict]:
    """Inverse of `stack`: per-structure records of the first ``len(sizes)`` structures."""
    arrays = {name: np.asarray(arrays[name]) for name in kinds}
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    return [
        {
            name: array[starts[g] : starts[g + 1]] if kinds[name] == ATOM else array[g]
            for name, array in arrays.items()
        }
        for g in range(len(sizes))
    ]


def layout(sizes: Sequence[int], n_node: int, n_graph: int) -> dict:
    """Layout fields of a System holding structures of ``sizes`` atoms (host numpy)."""
    sizes = np.asarray(sizes, np.int32)
    real = int(sizes.sum())
    node_graph = np.full(n_node, n_graph - 1, np.int32)
    node_graph[:real] = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
    graph_start = np.full(n_graph, real, np.int32)
    graph_start[: len(sizes)] = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    n_node_per_graph = np.zeros(n_graph, np.int32)
    n_node_per_graph[: len(sizes)] = sizes
    return {
        "node_graph": node_graph,
        "node_mask": np.arange(n_node) < real,
        "graph_mask": np.arange(n_graph) < len(sizes),
        "graph_start": graph_start,
        "n_node": n_node_per_graph,
    }


def make_system(arrays: dict, sizes: Sequence[int], spec: nl.NeighborSpec, dtype) -> System:
    """A System from stacked fields (`stack`) with a freshly built neighbour list (device)."""
    n_node, n_graph = len(arrays["numbers"]), len(arrays["cell"])
    fields = {**{k: arrays[k] for k in System.KINDS}, **layout(sizes, n_node, n_graph)}
    fields["positions"] = jnp.asarray(fields["positions"], dtype)
    fields["cell"] = jnp.asarray(fields["cell"], dtype)
    fields["masses"] = jnp.asarray(fields["masses"], dtype)
    fields["free"] = jnp.asarray(fields["free"], dtype)
    fields = {k: jnp.asarray(v) for k, v in fields.items()}
    topology = nl.Topology(*(fields[k] for k in ("node_graph", "node_mask", "graph_start", "n_node", "pbc")))
    neighbors = _build(spec, fields["positions"], fields["cell"], topology)
    return System(**fields, neighbors=neighbors)


_build = jax.jit(nl.build, static_argnums=0)


def graph_batch(system: System) -> GraphBatch:
    """The GraphBatch that mlip.potential.compute reads: the device list's edges, only those
    within the cutoff when the list has active edges (see mlip.sim.neighbors.activate)."""
    edges = system.neighbors
    senders, receivers, shifts, edge_mask = edges.senders, edges.receivers, edges.shifts, edges.edge_mask
    if edges.active is not None:
        pad = system.positions.shape[0] - 1
        edge_mask = edges.active_mask
        senders = jnp.where(edge_mask, senders[edges.active], pad)
        receivers = jnp.where(edge_mask, receivers[edges.active], pad)
        shifts = jnp.where(edge_mask[:, None], shifts[edges.active], 0)
    return GraphBatch(
        positions=system.positions,
        numbers=system.numbers,
        node_graph=system.node_graph,
        node_mask=system.node_mask,
        senders=senders,
        receivers=receivers,
        shifts=shifts,
        edge_mask=edge_mask,
        cell=system.cell,
        pbc=system.pbc,
        graph_mask=system.graph_mask,
        n_node=system.n_node,
    )


def compute_system(config, params, system: System, runtime: Runtime | None = None,
                   dispersion: D3Params | None = None) -> PotentialOutput:
    """Energy [G] (eV), forces [N, 3] (eV/Å) and stress [G, 3, 3] (eV/Å^3) of ``system``
    (``runtime``: mlip.potential.compute), with D3(BJ) ``dispersion`` added to the energy
    before differentiation when given: the system's list must then reach the dispersion
    cutoff (mlip.sim.batcher builds it so), and the model reads its active edges."""
    extra = None if dispersion is None else functools.partial(_dispersion_energies, config, dispersion, system)
    return compute(config, params, graph_batch(system), runtime, extra_energies=extra)


def _dispersion_energies(config, dispersion: D3Params, system: System, positions, cell):
    """D3(BJ) energy of each atom [N], eV, at ``positions`` [N, 3] and ``cell`` [G, 3, 3] (Å),
    over the whole list of ``system`` (every pair within the D3 cutoff + skin)."""
    tables = d3_tables(config.species)  # numpy, at trace time: constants of the program
    species_index = jnp.maximum(jnp.asarray(species_table(config))[system.numbers], 0)
    edges = system.neighbors
    vectors = edge_vectors(positions, cell, edges, system.node_graph)
    return d3_atom_energies(tables, dispersion, species_index, vectors, edges.senders, edges.receivers, edges.edge_mask)


def moved(system: System, positions, cell, spec: nl.NeighborSpec) -> System:
    """``system`` at new ``positions`` and ``cell``, its neighbour list updated if stale."""
    neighbors = nl.update(spec, system.neighbors, positions, cell, system.topology)
    return system._replace(positions=positions, cell=cell, neighbors=neighbors)
