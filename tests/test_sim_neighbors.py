"""The device neighbour list (mlip.sim.neighbors): exactly the host list's edges for awkward
cells, overflow and regrowth, and a skin that stays exact under motion and cell deformation."""

import dataclasses

import jax
import numpy as np
import pytest

from mlip.data.neighbors import neighbor_list
from mlip.sim import neighbors as nl
from mlip.sim.system import System, graph_batch, make_system, record, stack
from mlip.testing import random_frame

CUTOFF = 3.5


def batch_of(atoms_list, cutoff=CUTOFF, skin=0.0, capacity=None, images=None, active=None):
    records = [record(a) for a in atoms_list]
    sizes = [len(a) for a in atoms_list]
    arrays = stack(records, System.KINDS, sum(sizes) + 2, len(atoms_list) + 1)
    needed = np.max(nl.images_needed(arrays["cell"], arrays["pbc"], cutoff + skin), axis=0)
    spec = nl.NeighborSpec(cutoff, skin, capacity or 10_000, max(sizes), images or tuple(int(n) for n in needed), active)
    return make_system(arrays, sizes, spec, np.float64), spec


def edge_sets(system, sizes, active=False):
    """Per structure: the set of (receiver, sender, shift) in local atom indices, of the whole
    list or (``active``) of the edges the model sees."""
    edges = graph_batch(system) if active else system.neighbors
    senders, receivers, shifts, mask = (np.asarray(a) for a in (edges.senders, edges.receivers, edges.shifts, edges.edge_mask))
    assert np.all(np.diff(receivers) >= 0), "receivers must be sorted"
    out, start = [], 0
    for n in sizes:
        take = mask & (receivers >= start) & (receivers < start + n)
        out.append(set(zip(receivers[take] - start, senders[take] - start, map(tuple, shifts[take]))))
        start += n
    return out


def host_set(atoms, cutoff=CUTOFF):
    edges = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)
    return set(zip(edges.receivers, edges.senders, map(tuple, edges.shifts)))


def awkward_structures():
    rng = np.random.default_rng(0)
    frames = [
        random_frame(rng, 6, size=2.2, skew=0.9),  # skewed cell smaller than the cutoff
        random_frame(rng, 1, size=1.5, skew=0.4),  # one atom: many images of itself
        random_frame(rng, 10, skew=0.6),  # triclinic, positions up to a cell outside
        random_frame(rng, 7, size=3.0, pbc=[True, False, True]),  # slab
        random_frame(rng, 5, size=3.0, pbc=[False, False, True]),  # wire
        random_frame(rng, 6, pbc=False),  # molecule (zero cell)
    ]
    return [f.to_atoms() for f in frames]


def test_device_list_equals_host_list_on_awkward_cells():
    structures = awkward_structures()
    structures[2].positions[0] += 7.3 * structures[2].cell.array[1]  # far outside its cell
    system, _ = batch_of(structures)
    assert not bool(system.neighbors.overflow)
    for atoms, device in zip(structures, edge_sets(system, [len(a) for a in structures])):
        host = host_set(atoms)
        assert device == host and len(host) > 0


def test_overflow_is_flagged_and_regrowth_gives_the_exact_list():
    structures = awkward_structures()[:3]
    system, spec = batch_of(structures, capacity=64)
    edges = system.neighbors
    assert bool(edges.overflow) and int(edges.count) > 64
    assert int(np.sum(np.asarray(edges.graph_count))) == int(edges.count)
    bigger = nl.grown(spec, edges, 1.5)
    assert bigger.capacity == int(np.ceil(int(edges.count) * 1.5)) and bigger.images == spec.images
    system, _ = batch_of(structures, capacity=bigger.capacity)
    assert not bool(system.neighbors.overflow)
    assert edge_sets(system, [len(a) for a in structures]) == [host_set(a) for a in structures]


def test_too_few_images_overflow():
    structures = awkward_structures()[:1]
    system, spec = batch_of(structures, images=(1, 1, 1))
    assert bool(system.neighbors.overflow)
    assert nl.grown(spec, system.neighbors, 1.5).images == tuple(int(n) for n in system.neighbors.images)


def test_too_few_active_slots_overflow_and_regrow():
    structures = awkward_structures()[:3]
    system, spec = batch_of(structures, skin=0.5, active=16)
    edges = system.neighbors
    assert bool(edges.overflow) and int(edges.active_count) > 16 and int(edges.count) <= spec.capacity
    bigger = nl.grown(spec, edges, 1.5)
    assert bigger.active_capacity == int(np.ceil(int(edges.active_count) * 1.5)) and bigger.capacity == spec.capacity
    grown = jax.jit(nl.padded, static_argnums=0)(bigger, edges, system.positions, system.cell, system.topology)
    system = system._replace(neighbors=grown)
    assert not bool(grown.overflow)
    assert edge_sets(system, [len(a) for a in structures], active=True) == [host_set(a) for a in structures]


def test_skin_list_stays_exact_under_motion_and_cell_deformation():
    # The list holds every pair within the cutoff (and some of the skin); the model's active
    # edges are exactly the pairs within the cutoff.
    rng = np.random.default_rng(1)
    structures = [random_frame(rng, 8, size=4.0, skew=0.4, min_distance=1.0).to_atoms() for _ in range(2)]
    system, spec = batch_of(structures, skin=0.6, active=1000)
    update = jax.jit(nl.update, static_argnums=0)
    sizes = [len(a) for a in structures]
    for step in range(12):
        for atoms in structures:
            strain = np.eye(3) + rng.normal(0, 0.01, (3, 3))
            atoms.set_cell(atoms.cell.array @ strain, scale_atoms=True)
            atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
        moved, _ = batch_of(structures, skin=0.6)
        neighbors = update(spec, system.neighbors, moved.positions, moved.cell, system.topology)
        system = system._replace(positions=moved.positions, cell=moved.cell, neighbors=neighbors)
        for atoms, device in zip(structures, edge_sets(system, sizes)):
            exact = host_set(atoms, CUTOFF)
            assert exact <= device <= host_set(atoms, CUTOFF + 0.6 + 1.0)
        assert edge_sets(system, sizes, active=True) == [host_set(a, CUTOFF) for a in structures]
    assert 1 <= int(system.neighbors.builds) < 12


def test_spec_is_hashable_and_static():
    spec = nl.NeighborSpec(3.0, 0.5, 100, 4, (1, 1, 1))
    assert hash(spec) == hash(dataclasses.replace(spec))
    assert spec.shift_box().shape == (27, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.capacity = 3
