"""`Calculator`: an ASE calculator backed by a `Potential`.

Per call it validates the structure, reuses a neighbour list built with a skin while it is
still valid, pads the graph to the bucket ladder (so an MD run or a relaxation of a fixed
number of atoms compiles a bounded number of times), and runs the potential's single jitted
value_and_grad. Results: energy and free_energy (eV), forces (eV/Å), stress (Voigt, eV/Å^3,
ASE sign; fully periodic structures only) and per-atom energies (eV). With
``dispersion="d3bj"`` each of them includes the D3(BJ) dispersion term (`mlip.nn.dispersion`).
"""

from __future__ import annotations

import os

import ase
import jax
import numpy as np
from ase.calculators.calculator import Calculator as AseCalculator
from ase.calculators.calculator import all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from mlip.data.frame import check_min_distance, completed_cell, frame_from_atoms, validate_frame
from mlip.data.graph import Graph, collate
from mlip.data.neighbors import Edges, edge_vectors, neighbor_list, rebuild_needed
from mlip.data.padding import BucketLadder
from mlip.errors import MlipError
from mlip.nn.dispersion import D3Dispersion, add_dispersion
from mlip.potential import Potential, Prediction, check_finite
from mlip.runtime import enable_compilation_cache

#: Fraction by which the edge count of an MD run or a relaxation may drift from its first
#: structure's; `Calculator.compile` compiles the edge rungs within it.
EDGE_DRIFT = 0.1


class SkinNeighborList:
    """A neighbour list with cutoff ``cutoff + skin``, rebuilt only when it may be stale.

    The list stays exact while every pair now closer than ``cutoff`` was closer than
    ``cutoff + skin`` when it was built: mlip.data.neighbors.rebuild_needed, the rule the
    device list (mlip.sim.neighbors) applies too. Edges between cutoff and cutoff + skin
    contribute exactly zero (the radial envelope), so results equal a fresh build.
    """

    def __init__(self, cutoff: float, skin: float):
        self.cutoff, self.skin = float(cutoff), float(skin)
        self.builds = 0
        self._reference = None  # (numbers, pbc, full cell H0, fractional positions f0)
        self._edges = None

    def edges(self, atoms: ase.Atoms):
        """(senders, receivers, shifts) valid for ``atoms`` now (see the class docstring)."""
        cell = completed_cell(atoms.cell.array, atoms.pbc)
        fractional = np.linalg.solve(cell.T, atoms.positions.T).T
        if self._stale(atoms, cell, fractional):
            self._edges = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, self.cutoff + self.skin)
            self._reference = (atoms.numbers.copy(), atoms.pbc.copy(), cell, fractional)
            self.builds += 1
        return self._edges

    def _stale(self, atoms, cell, fractional) -> bool:
        if self._reference is None:
            return True
        numbers, pbc, cell0, fractional0 = self._reference
        if len(numbers) != len(atoms) or np.any(numbers != atoms.numbers) or np.any(pbc != atoms.pbc):
            return True
        displacement = np.linalg.norm((fractional - fractional0) @ cell, axis=1).max(initial=0.0)
        return bool(rebuild_needed(self.cutoff, self.skin, cell0, cell, displacement))


class Calculator(AseCalculator):
    """ASE calculator for an mlip `Potential`.

    Args:
        potential: a Potential, or the path of a saved one.
        dtype: "float32" or "float64" to cast the potential's parameters (None: as saved).
            float64 needs JAX's x64 mode, which is process-wide: turn it on yourself
            (``jax.config.update("jax_enable_x64", True)`` at the start of the program; the
            `mlip` command does it for float64 models); otherwise an MlipError says so.
        compute_stress: compute stress for fully periodic structures.
        skin: Verlet skin of the neighbour list, Å (0 rebuilds every call).
        min_distance: atoms closer than this (Å) are an error (overlapping atoms).
        ladder: bucket ladder of padded shapes (default `BucketLadder()`).
        compilation_cache: a directory: turn on JAX's persistent compilation cache there
            (`mlip.runtime.enable_compilation_cache`, process-wide). None (default): leave
            ``jax.config`` alone: constructing a Calculator changes no global setting.
        dispersion: None, or "d3bj" to add Grimme's D3(BJ) dispersion with PBE parameters
            (two-body, `mlip.nn.dispersion`) to energy, forces, stress and per-atom energies;
            computed in float64 when JAX's x64 mode is on, else float32.

    The potential's runtime choices (matmul precision, kernel) hold: `Potential`.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]

    def __init__(
        self,
        potential: Potential | str | os.PathLike,
        *,
        dtype: str | None = None,
        compute_stress: bool = True,
        skin: float = 0.5,
        min_distance: float = 0.5,
        ladder: BucketLadder | None = None,
        compilation_cache: str | os.PathLike | None = None,
        dispersion: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(potential, Potential):
            potential = Potential.load(potential)
        if dtype is not None and dtype != potential.dtype:
            potential = potential.astype(dtype)
        if compilation_cache is not None:
            enable_compilation_cache(compilation_cache)  # asked for: process-wide
        self.potential = potential
        self.compute_stress = compute_stress
        self.min_distance = min_distance
        self.ladder = ladder or BucketLadder()
        self.neighbors = SkinNeighborList(potential.config.r_cut, skin)
        self.dispersion = None
        if dispersion is not None:
            dtype = "float64" if jax.config.jax_enable_x64 else "float32"
            self.dispersion = D3Dispersion.from_name(dispersion, dtype)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        graph = self._graph(atoms)
        frame = graph.frame
        shape = self.ladder.shape_for(graph.n_node, graph.n_edge, 1)
        out = self.potential(collate([graph], *shape, labels=False))
        n = len(atoms)
        result = check_finite(Prediction(
            energy=float(out.energy[0]),
            energies=np.asarray(out.energies[:n], dtype=np.float64),
            forces=np.asarray(out.forces[:n], dtype=np.float64),
            stress=np.asarray(out.stress[0], np.float64) if atoms.pbc.all() else None,
        ), frame)
        if self.dispersion is not None:
            result = add_dispersion(result, self.dispersion(atoms))
        self.results = {
            "energy": result.energy,
            "free_energy": result.energy,
            "forces": result.forces,
            "energies": result.energies,
        }
        if self.compute_stress and result.stress is not None:
            self.results["stress"] = full_3x3_to_voigt_6_stress(result.stress)

    def compile(self, atoms: ase.Atoms, edge_drift: float = EDGE_DRIFT) -> int:
        """Compile, without running, the programs a calculation on ``atoms`` uses: its padded
        shape and those of edge counts within ``edge_drift`` (a fraction) of its own, which an
        MD run or a relaxation of it may reach (`Potential.compile`; for `mlip warmup`).
        Returns how many distinct shapes."""
        graph = self._graph(atoms)
        shapes = {self.ladder.shape_for(graph.n_node, max(round(graph.n_edge * f), 1), 1)
                  for f in (1 - edge_drift, 1.0, 1 + edge_drift)}
        batch = collate([graph], *max(shapes), labels=False)
        for n_node, n_edge, n_graph in shapes:
            edges = slice(0, n_edge)  # values do not matter to the compiler, only shapes
            self.potential.compile(batch._replace(
                senders=batch.senders[edges], receivers=batch.receivers[edges], shifts=batch.shifts[edges],
                edge_mask=batch.edge_mask[edges]))
        return len(shapes)

    def _graph(self, atoms: ase.Atoms) -> Graph:
        """The radius graph of ``atoms`` (validated), from the skin neighbour list."""
        frame = validate_frame(frame_from_atoms(atoms), close_atoms="ignore")
        self.potential.check_species(frame.numbers)  # before the neighbour list: fail fast
        edges = self.neighbors.edges(atoms)
        # Edges between r_cut and r_cut + skin contribute exactly zero: drop them before
        # padding rather than pay for them (a 0.5 Å skin adds ~30% edges at 5 Å).
        lengths = np.linalg.norm(edge_vectors(frame.positions, frame.cell, edges), axis=1)
        inside = lengths < self.potential.config.r_cut
        edges = Edges(*(array[inside] for array in edges))
        check_min_distance(frame, edges, self.min_distance, lengths=lengths[inside])
        return Graph(frame, edges.senders, edges.receivers, edges.shifts)

    def get_hessian(self, atoms: ase.Atoms | None = None) -> np.ndarray:
        """Hessian d^2E/dR dR of ``atoms`` (default: the last structure calculated), [3N, 3N]
        eV/Å^2, by autodiff (`Potential.hessian`)."""
        atoms = self.atoms if atoms is None else atoms
        if atoms is None:
            raise MlipError("get_hessian needs atoms: pass them or calculate a structure first")
        return self.potential.hessian(atoms)
