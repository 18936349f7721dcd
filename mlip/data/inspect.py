"""Radius-graph statistics of structures: what `mlip inspect` prints.

Streams frames, so it summarises files of any size with constant memory.
"""

from __future__ import annotations

import collections
from typing import Iterable

import numpy as np
from ase.data import chemical_symbols

from mlip.data.frame import Frame
from mlip.data.graph import build_graph
from mlip.data.neighbors import edge_vectors
from mlip.data.padding import BucketLadder


def describe_frames(frames: Iterable[Frame], source, *, cutoff: float) -> str:
    """A human-readable report: details for a single structure, totals for many."""
    ladder = BucketLadder()
    first = None
    atoms, edges, closest = [], 0, np.inf
    elements, labels, shapes = collections.Counter(), collections.Counter(), collections.Counter()
    for frame in frames:
        graph = build_graph(frame, cutoff)
        lengths = np.linalg.norm(edge_vectors(frame.positions, frame.cell, graph), axis=1)
        first = frame if first is None else first
        atoms.append(frame.n_atoms)
        edges += graph.n_edge
        closest = min(closest, lengths.min(initial=np.inf))
        elements.update(frame.numbers.tolist())
        labels.update(k for k in ("energy", "forces", "stress") if getattr(frame, k) is not None)
        shapes[ladder.shape_for(frame.n_atoms, graph.n_edge, 1)] += 1
    if first is None:
        return f"{source}: no frames"
    if len(atoms) == 1:
        return _describe_one(first, edges, closest, source=source, cutoff=cutoff, shape=next(iter(shapes)))
    return _describe_many(np.asarray(atoms), edges, closest, elements, labels, shapes, source, cutoff)


def _describe_one(frame: Frame, n_edge: int, closest: float, *, source, cutoff, shape) -> str:
    formula = _formula(collections.Counter(frame.numbers.tolist()))
    lines = [
        f"{source}: {formula}, {frame.n_atoms} atoms, pbc={''.join('T' if p else 'F' for p in frame.pbc)}",
    ]
    if frame.pbc.any():
        lengths = np.linalg.norm(frame.cell, axis=1)
        lines.append("  cell lengths (Å):   " + "  ".join(f"{x:.4f}" for x in lengths))
    if frame.pbc.all():
        volume = abs(np.linalg.det(frame.cell))
        lines.append(f"  volume:             {volume:.3f} Å^3 ({volume / frame.n_atoms:.3f} Å^3/atom)")
    lines += [
        f"  cutoff:             {cutoff} Å",
        f"  edges:              {n_edge} ({n_edge / frame.n_atoms:.2f} neighbours per atom)",
        f"  closest pair:       {closest:.4f} Å",
        f"  padded shape:       nodes={shape[0]} edges={shape[1]} graphs={shape[2]}",
        "  labels:             " + (", ".join(k for k in ("energy", "forces", "stress") if getattr(frame, k) is not None) or "none"),
    ]
    return "\n".join(lines)


def _describe_many(atoms, edges, closest, elements, labels, shapes, source, cutoff) -> str:
    n_frames = len(atoms)
    return "\n".join(
        [
            f"{source}: {n_frames} frames, {atoms.sum()} atoms ({atoms.min()}-{atoms.max()} per frame), {len(elements)} elements",
            f"  elements:           {_formula(elements, separator=' ')}",
            f"  cutoff:             {cutoff} Å",
            f"  edges:              {edges} ({edges / atoms.sum():.2f} neighbours per atom)",
            f"  closest pair:       {closest:.4f} Å",
            "  labels:             " + ", ".join(f"{k} {labels[k]}/{n_frames}" for k in ("energy", "forces", "stress")),
            f"  padded shapes one frame at a time: {len(shapes)} distinct",
        ]
    )


def _formula(counts: collections.Counter, separator: str = "") -> str:
    return separator.join(
        f"{chemical_symbols[z]}{n if n > 1 or separator else ''}" for z, n in sorted(counts.items())
    )
