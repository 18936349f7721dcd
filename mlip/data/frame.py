"""`Frame`: the one in-memory record every reader produces, and its validation.

A frame is one structure with optional DFT labels, in mlip's units (Å, eV, eV/Å, eV/Å^3 with
ASE's stress sign). Readers convert at the edge, so nothing downstream knows where a frame
came from except through ``source``/``index`` (used in error messages).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Literal

import ase
import numpy as np
from ase.geometry import complete_cell

from mlip.data.neighbors import Edges, edge_vectors, neighbor_list
from mlip.errors import DataError

#: Largest atomic number ASE knows (Og).
MAX_ATOMIC_NUMBER = 118


@dataclasses.dataclass
class Frame:
    """One structure and its labels.

    Attributes:
        numbers: int [n_atoms], atomic numbers.
        positions: float64 [n_atoms, 3], Å.
        cell: float64 [3, 3], Å, rows are lattice vectors (zero rows allowed along open
            directions).
        pbc: bool [3].
        energy: total energy in eV, or None when unlabelled.
        forces: float64 [n_atoms, 3] in eV/Å, or None.
        stress: float64 [3, 3] in eV/Å^3, ASE sign (positive = tensile), or None.
        atom_extras: optional per-atom arrays, each [n_atoms, ...] (e.g. "magmoms").
        info: scalar metadata (ids, band gap, ...), carried along but never used as a label.
        source: where the frame came from (file path), for error messages.
        index: position (or id) of the frame in ``source``.
    """

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    atom_extras: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    source: str | None = None
    index: Any = None

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)

    def error(self, message: str) -> DataError:
        """A DataError naming this frame's source and index."""
        return DataError(message, self.source, self.index)

    def to_atoms(self) -> ase.Atoms:
        """An ase.Atoms with the labels attached as a SinglePointCalculator."""
        from ase.calculators.singlepoint import SinglePointCalculator

        atoms = ase.Atoms(
            numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=self.pbc
        )
        for name, values in self.atom_extras.items():
            atoms.arrays[name] = np.asarray(values)
        atoms.info.update(self.info)
        results = {}
        if self.energy is not None:
            results["energy"] = self.energy
        if self.forces is not None:
            results["forces"] = self.forces
        if self.stress is not None:
            results["stress"] = self.stress
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        return atoms


def make_frame(
    numbers,
    positions,
    cell=None,
    pbc=False,
    energy=None,
    forces=None,
    stress=None,
    *,
    atom_extras=None,
    info=None,
    source=None,
    index=None,
) -> Frame:
    """Build a Frame, coercing dtypes and shapes and checking that they are consistent.

    ``stress`` may be [3, 3], Voigt [6] (xx yy zz yz xz xy, ASE order) or flat [9].
    Raises DataError (naming source and index) for inconsistent shapes.
    """

    def fail(message):
        return DataError(message, source, index)

    numbers = np.asarray(numbers)
    if numbers.ndim != 1 or not np.issubdtype(numbers.dtype, np.integer):
        raise fail(f"atomic numbers must be a 1-d integer array, got {numbers.dtype} {numbers.shape}")
    n = len(numbers)
    positions = _float_array(positions, (n, 3), "positions", fail)
    cell = np.zeros((3, 3)) if cell is None else _float_array(cell, (3, 3), "cell", fail)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
    if energy is not None:
        energy_array = np.asarray(energy, dtype=np.float64)
        if energy_array.size != 1:
            raise fail(f"energy must be a scalar, got shape {energy_array.shape}")
        energy = float(energy_array.reshape(()))
    if forces is not None:
        forces = _float_array(forces, (n, 3), "forces", fail)
    if stress is not None:
        stress = stress_to_matrix(stress, fail)
    extras = {}
    for name, values in (atom_extras or {}).items():
        values = np.asarray(values)
        if values.shape[:1] != (n,):
            raise fail(f"per-atom array {name!r} has shape {values.shape}, expected ({n}, ...)")
        extras[name] = values
    return Frame(
        numbers=numbers.astype(np.int32),
        positions=positions,
        cell=cell,
        pbc=pbc,
        energy=energy,
        forces=forces,
        stress=stress,
        atom_extras=extras,
        info=dict(info or {}),
        source=None if source is None else str(source),
        index=index,
    )


def frame_from_atoms(atoms: ase.Atoms, *, source=None, index=None) -> Frame:
    """The geometry of an ase.Atoms as an unlabelled Frame (labels are the readers' job)."""
    return make_frame(
        atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, source=source, index=index
    )


def completed_cell(cell, pbc) -> np.ndarray:
    """float64 [3, 3]: ``cell`` with its rows along open (non-periodic) directions replaced by
    unit vectors orthogonal to the periodic rows (ase.geometry.complete_cell). Invertible
    whenever the periodic rows are independent (what validation checks), whatever the open
    rows hold; energies never depend on those."""
    rows = np.where(np.asarray(pbc, bool)[:, None], np.asarray(cell, np.float64).reshape(3, 3), 0.0)
    return complete_cell(rows)


def _float_array(values, shape, name, fail):
    try:
        array = np.array(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise fail(f"{name} is not numeric ({exc})") from None
    if array.shape != shape:
        if array.size == np.prod(shape) and name == "cell":
            return array.reshape(shape)
        raise fail(f"{name} has shape {array.shape}, expected {shape}")
    return array


def stress_to_matrix(stress, fail=DataError) -> np.ndarray:
    """[3, 3], Voigt [6] (xx yy zz yz xz xy) or flat [9] -> float64 [3, 3]."""
    try:
        stress = np.array(stress, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise fail(f"stress is not numeric ({exc})") from None
    if stress.shape == (3, 3):
        return stress
    if stress.size == 9:
        return stress.reshape(3, 3)
    if stress.size == 6:
        xx, yy, zz, yz, xz, xy = stress.reshape(6)
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    raise fail(f"stress has shape {stress.shape}; expected 3x3, 9 or 6 (Voigt) values")


CloseAtomsPolicy = Literal["error", "warn", "ignore"]


def validate_frame(
    frame: Frame,
    *,
    min_distance: float = 0.5,
    close_atoms: CloseAtomsPolicy = "error",
) -> Frame:
    """Check a frame for input that would give silently wrong numbers; return it unchanged.

    Raises DataError (naming source and frame) for: no atoms, atomic numbers outside 1..118,
    NaN/inf in positions, cell or any label, a periodic cell whose lattice vectors span zero
    volume (or zero area/length for slabs/wires), and, when ``close_atoms == "error"``, two
    atoms (or an atom and its own periodic image) closer than ``min_distance`` Å
    (``"warn"`` emits a warning instead; ``"ignore"`` skips the check).
    """
    if frame.n_atoms == 0:
        raise frame.error("structure has no atoms")
    bad = (frame.numbers < 1) | (frame.numbers > MAX_ATOMIC_NUMBER)
    if bad.any():
        raise frame.error(f"unknown element: atomic number {int(frame.numbers[bad][0])}")
    for name, values in (
        ("positions", frame.positions),
        ("cell", frame.cell),
        ("energy", frame.energy),
        ("forces", frame.forces),
        ("stress", frame.stress),
    ):
        if values is not None and not np.all(np.isfinite(values)):
            raise frame.error(f"{name} contain NaN or inf")
    _check_cell(frame)
    if close_atoms != "ignore":
        _check_distances(frame, min_distance, close_atoms)
    return frame


def _check_cell(frame: Frame) -> None:
    periodic = frame.cell[frame.pbc]
    if len(periodic) == 0:
        return
    # Gram determinant: squared volume (3 periodic dims), area (2) or length (1), relative to
    # the product of the vector lengths, so that round-off in a degenerate cell still counts
    # as degenerate.
    lengths = np.linalg.norm(periodic, axis=1)
    measure = np.sqrt(max(np.linalg.det(periodic @ periodic.T), 0.0))
    if lengths.min() < 1e-6 or measure < 1e-6 * np.prod(lengths):
        kind = {3: "zero-volume", 2: "zero-area", 1: "zero-length"}[len(periodic)]
        raise frame.error(
            f"{kind} cell along the periodic directions (pbc={frame.pbc.tolist()}, "
            f"cell={frame.cell.tolist()})"
        )


def _check_distances(frame: Frame, min_distance: float, policy: CloseAtomsPolicy) -> None:
    edges = neighbor_list(frame.positions, frame.cell, frame.pbc, min_distance)
    check_min_distance(frame, edges, min_distance, policy)


def check_min_distance(
    frame: Frame, edges: Edges, min_distance: float, policy: CloseAtomsPolicy = "error",
    lengths: np.ndarray | None = None,
) -> None:
    """Raise (or warn) if any edge of ``edges`` (a neighbour list of ``frame`` with a cutoff
    of at least ``min_distance``) is shorter than ``min_distance`` Å. ``lengths``: the edge
    lengths [n_edges] in Å when the caller already has them."""
    if len(edges.senders) == 0 or policy == "ignore":
        return
    if lengths is None:
        lengths = np.linalg.norm(edge_vectors(frame.positions, frame.cell, edges), axis=1)
    e = int(np.argmin(lengths))
    if lengths[e] >= min_distance:
        return
    i, j = int(edges.receivers[e]), int(edges.senders[e])
    what = f"atom {i} and its own periodic image" if i == j else f"atoms {i} and {j}"
    message = f"{what} are {lengths[e]:.4g} Å apart (minimum distance {min_distance} Å)"
    if policy == "error":
        raise frame.error(message)
    warnings.warn(str(frame.error(message)), stacklevel=3)
