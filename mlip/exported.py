"""Load and run a potential exported by `mlip export` (a NAME.mlipx file), with jax and numpy only.

This file imports nothing from mlip and no model code: copy it next to the artifact and
``from exported import load``. The artifact is a zip of ``metadata.json`` (species, r_cut,
units, padding rules; see mlip/export.py) and a serialized `jax.export` program of the
potential's edge-level function with symbolic shapes.

    potential = load("model.mlipx")
    out = potential.predict(numbers, positions, cell, pbc, senders, receivers, shifts)
    out.energy, out.energies, out.forces, out.stress    # eV, eV, eV/Å, eV/Å^3 (ASE sign)

``predict`` takes the neighbour list from any library (ase.neighborlist.neighbor_list("ijS")
gives i = receivers, j = senders, S = shifts; vesin and matscipy give the same) and pads it to
a geometric ladder of shapes (growth 1.5), so a run of varying size compiles a few programs.
``graph_outputs`` is the raw padded call.
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

FORMAT = "mlip-exported"
FORMAT_VERSION = 1
PROGRAM = "edge_outputs.stablehlo"
METADATA = "metadata.json"


class GraphOutputs(NamedTuple):
    """Outputs of the exported program for one padded graph (numpy): energy [] eV, energies [N]
    eV, forces [N, 3] eV/Å, virial [3, 3] eV (LAMMPS sign), edge_grad [E, 3] dE/dr eV/Å."""

    energy: np.ndarray
    energies: np.ndarray
    forces: np.ndarray
    virial: np.ndarray
    edge_grad: np.ndarray


class Prediction(NamedTuple):
    """One structure: energy (eV), energies [n] (eV), forces [n, 3] (eV/Å), stress [3, 3]
    (eV/Å^3, ASE sign: -virial/V) or None unless periodic in all three directions."""

    energy: float
    energies: np.ndarray
    forces: np.ndarray
    stress: np.ndarray | None


def ladder_size(size: int, minimum: int) -> int:
    """Smallest rung >= size of the ladder minimum * 1.5**k, rounded up to a multiple of 8."""
    k = 0
    while True:
        rung = 8 * math.ceil(minimum * 1.5**k / 8 - 1e-9)
        if rung >= size:
            return rung
        k += 1


def pad_graph(vectors, species, senders, receivers, node_mask):
    """Arguments of `ExportedPotential.graph_outputs` for a real graph (N nodes, E edges,
    receivers sorted) padded to the ladder: at least one spare padding node at the end, padding
    edges (masked, zero vectors) from the last node to itself."""
    n, e = len(species), len(senders)
    n_pad, e_pad = ladder_size(n + 1, 16), ladder_size(max(e, 1), 128)
    last = n_pad - 1
    v = np.zeros((e_pad, 3), np.float64)
    v[:e] = vectors
    s = np.full(e_pad, last, np.int32)
    s[:e] = senders
    r = np.full(e_pad, last, np.int32)
    r[:e] = receivers
    sp = np.zeros(n_pad, np.int32)
    sp[:n] = species
    nm = np.zeros(n_pad, bool)
    nm[:n] = node_mask
    return v, sp, s, r, np.arange(e_pad) < e, nm


class ExportedPotential:
    """A loaded artifact. ``metadata``: its metadata.json; ``species_numbers``: atomic numbers
    in species-index order; ``r_cut`` (Å); ``num_layers`` (the receptive field is num_layers *
    r_cut); ``dtype``."""

    def __init__(self, metadata: dict, program):
        self.metadata = metadata
        self.species_numbers = tuple(metadata["species_numbers"])
        self.r_cut = float(metadata["r_cut"])
        self.num_layers = int(metadata["num_layers"])
        self.dtype = np.dtype(metadata["dtype"])
        self._program = program
        self._call = jax.jit(program.call)
        self._table = np.full(119, -1, np.int32)
        self._table[list(self.species_numbers)] = np.arange(len(self.species_numbers), dtype=np.int32)

    def species_index(self, numbers) -> np.ndarray:
        """int32 [n]: atomic numbers -> species indices; ValueError naming unknown elements."""
        numbers = np.asarray(numbers)
        index = np.where((numbers > 0) & (numbers < 119), self._table[np.clip(numbers, 0, 118)], -1)
        if np.any(index < 0):
            raise ValueError(f"element(s) {sorted(set(numbers[index < 0].tolist()))} not in this potential's "
                             f"species {list(self.species_numbers)}")
        return index.astype(np.int32)

    def graph_outputs(self, vectors, species, senders, receivers, edge_mask, node_mask) -> GraphOutputs:
        """The exported program on one padded graph (the padding rules are in ``metadata``)."""
        if self.dtype == np.float64 and not jax.config.jax_enable_x64:
            raise ValueError("this artifact is float64: call jax.config.update('jax_enable_x64', True) first")
        out = self._call(np.asarray(vectors, self.dtype), np.asarray(species, np.int32), np.asarray(senders, np.int32),
                         np.asarray(receivers, np.int32), np.asarray(edge_mask, bool), np.asarray(node_mask, bool))
        return GraphOutputs(*(np.asarray(x, np.float64) for x in out))

    def predict(self, numbers, positions, cell, pbc, senders, receivers, shifts) -> Prediction:
        """Energy, per-atom energies, forces and stress of one structure from its neighbour list
        (r_ij = positions[senders] - positions[receivers] + shifts @ cell, within r_cut)."""
        positions = np.asarray(positions, np.float64)
        cell = np.asarray(cell, np.float64).reshape(3, 3)
        senders, receivers = np.asarray(senders, np.int64), np.asarray(receivers, np.int64)
        order = np.argsort(receivers, kind="stable")
        senders, receivers = senders[order], receivers[order]
        vectors = positions[senders] - positions[receivers] + np.asarray(shifts, np.float64)[order] @ cell
        n = len(positions)
        out = self.graph_outputs(*pad_graph(vectors, self.species_index(numbers), senders, receivers, np.ones(n, bool)))
        periodic = bool(np.all(pbc))
        stress = -out.virial / abs(np.linalg.det(cell)) if periodic else None
        return Prediction(float(out.energy), out.energies[:n], out.forces[:n], stress)


def load(path) -> ExportedPotential:
    """Read an artifact written by `mlip export`; ValueError for anything else."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not an exported mlip potential (not a zip file)")
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        if not {METADATA, PROGRAM} <= names:
            raise ValueError(f"{path}: not an exported mlip potential (has {sorted(names)})")
        metadata = json.loads(archive.read(METADATA))
        blob = archive.read(PROGRAM)
    if metadata.get("format") != FORMAT or metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format {metadata.get('format')!r} version {metadata.get('format_version')!r}, "
                         f"this loader reads {FORMAT!r} version {FORMAT_VERSION}")
    return ExportedPotential(metadata, jax.export.deserialize(bytearray(blob)))
