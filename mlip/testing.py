"""Test helpers as library code: random structures that exercise the awkward cases
(triclinic and very skewed cells, cells smaller than the cutoff, mixed pbc, molecules).
Used by mlip's own tests and benchmarks; usable by anyone testing a model built on mlip."""

from __future__ import annotations

import numpy as np

from mlip.data.frame import Frame, make_frame

#: A few elements across the periodic table, for random species.
DEFAULT_ELEMENTS = (1, 6, 8, 14, 26, 29, 79)


def random_cell(rng: np.random.Generator, size: float, skew: float = 0.3) -> np.ndarray:
    """A random triclinic cell [3, 3] (rows = lattice vectors, Å) of linear size ~``size``.

    ``skew`` scales the off-diagonal parts relative to ``size``; values near 1 give very
    skewed cells. The cell is right-handed and never singular.
    """
    while True:
        cell = np.diag(rng.uniform(0.7, 1.3, 3) * size) + skew * size * rng.uniform(-1, 1, (3, 3))
        det = np.linalg.det(cell)
        if abs(det) > 0.05 * size**3:
            return cell if det > 0 else cell[[1, 0, 2]]


def random_frame(
    rng: np.random.Generator,
    n_atoms: int,
    *,
    size: float | None = None,
    skew: float = 0.3,
    pbc=True,
    elements=DEFAULT_ELEMENTS,
    min_distance: float = 0.0,
    labels: bool = True,
    wrap: bool = False,
) -> Frame:
    """A random structure with random labels.

    Positions are uniform in the cell (or scattered up to one cell outside it when ``wrap`` is
    False and pbc is on, so code must not assume wrapped positions). With ``min_distance`` > 0,
    atoms are placed by rejection so that no two (including periodic images) are closer.
    ``size`` defaults to a density of about 0.05 atoms/Å^3.
    """
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    size = size if size is not None else (n_atoms / 0.05) ** (1 / 3)
    cell = random_cell(rng, size, skew)
    positions = _place(rng, n_atoms, cell, pbc, min_distance)
    if pbc.any() and not wrap:
        positions = positions + rng.integers(-1, 2, (n_atoms, 3)) * pbc @ cell
    numbers = rng.choice(np.asarray(elements), n_atoms)
    energy = forces = stress = None
    if labels:
        energy = float(rng.normal(-4.0, 1.0) * n_atoms)
        forces = rng.normal(0, 0.5, (n_atoms, 3))
        stress = rng.normal(0, 0.01, (3, 3))
        stress = 0.5 * (stress + stress.T)
    return make_frame(
        numbers, positions, cell * pbc[:, None] if not pbc.all() else cell, pbc,
        energy, forces, stress,
    )


def _place(rng, n_atoms, cell, pbc, min_distance):
    if min_distance <= 0:
        return rng.uniform(0, 1, (n_atoms, 3)) @ cell
    from mlip.data.neighbors import neighbor_list

    positions = np.zeros((0, 3))
    for _ in range(100 * n_atoms):
        if len(positions) == n_atoms:
            return positions
        trial = np.vstack([positions, rng.uniform(0, 1, (1, 3)) @ cell])
        edges = neighbor_list(trial, cell, pbc, min_distance)
        if not np.any(edges.receivers == len(trial) - 1):
            positions = trial
    raise ValueError(f"could not place {n_atoms} atoms {min_distance} Å apart in the cell")


def lennard_jones_frames(
    rng: np.random.Generator,
    n_frames: int,
    n_atoms: int,
    *,
    elements=(14,),
    size: float = 6.0,
    epsilon: float = 0.1,
    sigma: float = 2.3,
    rattle: float = 0.15,
) -> list[Frame]:
    """Periodic structures labelled by a smooth Lennard-Jones potential (ASE's, cutoff 3 sigma):
    real, consistent energy (eV), forces (eV/Å) and stress (eV/Å^3) for training tests.

    Atoms sit near a jittered simple-cubic grid of ``n_atoms`` sites in a cube of side ``size``
    Å (so they never overlap), displaced by N(0, ``rattle``) Å.
    """
    import ase
    from ase.calculators.lj import LennardJones

    side = int(np.ceil(n_atoms ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n_atoms]
    frames = []
    for _ in range(n_frames):
        cell = np.diag(rng.uniform(0.95, 1.05, 3) * size)
        positions = (grid + 0.5) / side @ cell + rng.normal(0, rattle, (n_atoms, 3))
        atoms = ase.Atoms(numbers=rng.choice(np.asarray(elements), n_atoms), positions=positions, cell=cell, pbc=True)
        atoms.calc = LennardJones(epsilon=epsilon, sigma=sigma, rc=3 * sigma, smooth=True)
        frames.append(make_frame(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc,
                                 atoms.get_potential_energy(), atoms.get_forces(),
                                 atoms.get_stress(voigt=False)))
    return frames
