"""Error metrics of a potential against labelled data: MAE and RMSE of energy, forces and stress,
overall (with the mean signed error, prediction - label: a bias) and per element, accumulated
in constant memory over a stream of structures.

Units of the reported metrics (the conventions of MACE and SevenNet tables):

    energy  meV/atom   per-structure error |E_pred - E_ref| / n_atoms
    forces  meV/Å      per Cartesian component of every atom
    stress  GPa        per component of the 3x3 tensor, structures with a stress label only

Per element: force errors over the atoms of that element, and energy errors over the
structures that contain it. A structure missing a label is left out of that label's metrics
only (the counts say how many were used). Per group (``by``, a ``Frame.info`` key such as
mlearn's "group" or MACE's "config_type"): the overall metrics of the structures with each
value of that key (structures without it: group "").
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from ase.data import chemical_symbols
from tqdm.auto import tqdm

from mlip.data.frame import Frame
from mlip.data.graph import Graph, GraphBatch, build_graph
from mlip.data.loader import padded_batches
from mlip.data.readers import read_frames
from mlip.data.shards import ShardedDataset
from mlip.errors import DataError, MlipError
from mlip.potential import Potential, PotentialOutput
from mlip.units import EV_PER_A3_TO_GPA

#: Size of per-element tables, indexed by atomic number.
_N_ELEMENTS = 119


class ErrorSums:
    """Running count, sum of errors, of |error| and of error^2 for each of ``n_groups`` groups."""

    def __init__(self, n_groups: int = 1):
        self.count = np.zeros(n_groups, np.int64)
        self.sum = np.zeros(n_groups)
        self.abs_sum = np.zeros(n_groups)
        self.sq_sum = np.zeros(n_groups)

    def add(self, errors, groups=None) -> None:
        """Add ``errors`` [rows, ...]: every value of row r counts toward group ``groups[r]``
        (group 0 for all rows when ``groups`` is None)."""
        errors = np.asarray(errors, np.float64)
        errors = errors.reshape(len(errors), math.prod(errors.shape[1:]))
        groups = np.zeros(len(errors), np.int64) if groups is None else np.asarray(groups)
        n = len(self.count)
        self.count += np.bincount(groups, minlength=n) * errors.shape[1]
        self.sum += np.bincount(groups, errors.sum(axis=1), minlength=n)
        self.abs_sum += np.bincount(groups, np.abs(errors).sum(axis=1), minlength=n)
        self.sq_sum += np.bincount(groups, np.square(errors).sum(axis=1), minlength=n)

    def mean(self, group: int = 0) -> float | None:
        """Mean signed error of ``group`` (a bias), None when it has no values."""
        count = self.count[group]
        return float(self.sum[group] / count) if count else None

    def mae(self, group: int = 0) -> float | None:
        """Mean absolute error of ``group``, None when it has no values."""
        count = self.count[group]
        return float(self.abs_sum[group] / count) if count else None

    def rmse(self, group: int = 0) -> float | None:
        """Root mean square error of ``group``, None when it has no values."""
        count = self.count[group]
        return float(np.sqrt(self.sq_sum[group] / count)) if count else None


class Metrics:
    """Streaming energy/force/stress error metrics (units in the module docstring).

    Attributes:
        frames, atoms: structures and atoms seen.
        energy: ErrorSums of per-atom energy errors, meV/atom, one value per labelled frame.
        forces: ErrorSums of force components, meV/Å.
        stress: ErrorSums of stress components, GPa.
        energy_by_element: per atomic number, energy errors (meV/atom) of the frames with it.
        forces_by_element: per atomic number, force components (meV/Å) of its atoms.
        atoms_by_element: int [119], atoms of each element seen.
        labelled: frames that carried each label ("energy", "forces", "stress").
        by: the ``Frame.info`` key whose values group the structures, or None.
        groups: {value of ``by``: Metrics of those structures}.
    """

    def __init__(self, by: str | None = None):
        self.by, self.groups = by, {}
        self.frames = self.atoms = 0
        self.energy, self.forces, self.stress = ErrorSums(), ErrorSums(), ErrorSums()
        self.energy_by_element = ErrorSums(_N_ELEMENTS)
        self.forces_by_element = ErrorSums(_N_ELEMENTS)
        self.atoms_by_element = np.zeros(_N_ELEMENTS, np.int64)
        self.labelled = {"energy": 0, "forces": 0, "stress": 0}

    def update(self, batch: GraphBatch, output: PotentialOutput, frames: Sequence[Frame] = ()) -> None:
        """Add the errors of one padded batch (with labels) given the potential's output on it;
        ``frames``, the batch's structures in order, are needed only to group them (``by``)."""
        if self.by is not None:
            names = np.array([self._group_name(frame) for frame in frames] + [""] * (len(batch.n_node) - len(frames)))
            for name in np.unique(names[batch.graph_mask]):
                graph_mask = batch.graph_mask & (names == name)
                self._group(name).update(batch._replace(graph_mask=graph_mask, node_mask=batch.node_mask & graph_mask[batch.node_graph]), output)
        numbers = batch.numbers[batch.node_mask]
        self.frames += batch.num_real_graphs
        self.atoms += len(numbers)
        self.atoms_by_element += np.bincount(numbers, minlength=_N_ELEMENTS)
        self._add_energy(batch, output)
        self._add_forces(batch, output)
        self._add_stress(batch, output)

    def add_frame(self, frame: Frame, energy: float, forces, stress=None) -> None:
        """Add one structure's errors, given predictions from any source (another calculator,
        a peer model): ``energy`` eV, ``forces`` [n_atoms, 3] eV/Å, ``stress`` [3, 3] eV/Å^3
        or None. Same units and conventions as `update`."""
        if self.by is not None:
            self._group(self._group_name(frame)).add_frame(frame, energy, forces, stress)
        numbers = frame.numbers
        self.frames += 1
        self.atoms += len(numbers)
        self.atoms_by_element += np.bincount(numbers, minlength=_N_ELEMENTS)
        if frame.energy is not None:
            error = 1e3 * (energy - frame.energy) / len(numbers)  # meV/atom
            self.energy.add([error])
            present = np.unique(numbers)
            self.energy_by_element.add(np.full(len(present), error), present)
            self.labelled["energy"] += 1
        if frame.forces is not None:
            errors = 1e3 * (np.asarray(forces) - frame.forces)  # meV/Å
            self.forces.add(errors)
            self.forces_by_element.add(errors, numbers)
            self.labelled["forces"] += 1
        if frame.stress is not None and stress is not None:
            self.stress.add([EV_PER_A3_TO_GPA * (np.asarray(stress) - frame.stress)])  # GPa
            self.labelled["stress"] += 1

    def _group_name(self, frame: Frame) -> str:
        return str((frame.info or {}).get(self.by, ""))

    def _group(self, name: str) -> "Metrics":
        if name not in self.groups:
            self.groups[name] = Metrics()
        return self.groups[name]

    def _add_energy(self, batch: GraphBatch, output: PotentialOutput) -> None:
        labels, nodes = batch.labels, batch.node_mask
        has_energy = batch.graph_mask & labels.has_energy
        per_atom = 1e3 * (output.energy - labels.energy) / np.maximum(batch.n_node, 1)  # meV/atom
        self.energy.add(per_atom[has_energy])
        present = np.unique(np.stack([batch.node_graph[nodes], batch.numbers[nodes]], axis=1), axis=0)
        present = present[has_energy[present[:, 0]]]  # (frame, element) pairs
        self.energy_by_element.add(per_atom[present[:, 0]], present[:, 1])
        self.labelled["energy"] += int(has_energy.sum())

    def _add_forces(self, batch: GraphBatch, output: PotentialOutput) -> None:
        labels = batch.labels
        has_forces = batch.node_mask & labels.has_forces[batch.node_graph]
        errors = 1e3 * (output.forces - labels.forces)[has_forces]  # meV/Å
        self.forces.add(errors)
        self.forces_by_element.add(errors, batch.numbers[has_forces])
        self.labelled["forces"] += int((batch.graph_mask & labels.has_forces).sum())

    def _add_stress(self, batch: GraphBatch, output: PotentialOutput) -> None:
        has_stress = batch.graph_mask & batch.labels.has_stress & output.stress_mask
        self.stress.add(EV_PER_A3_TO_GPA * (output.stress - batch.labels.stress)[has_stress])  # GPa
        self.labelled["stress"] += int(has_stress.sum())

    def to_dict(self) -> dict:
        """The metrics as plain JSON-ready values (None where no frame had the label)."""
        overall = {
            name: {"frames": self.labelled[name], "mae": sums.mae(), "rmse": sums.rmse(), "mean": sums.mean()}
            for name, sums in (("energy", self.energy), ("forces", self.forces), ("stress", self.stress))
        }
        elements = {
            chemical_symbols[z]: {
                "atoms": int(self.atoms_by_element[z]),
                "forces_mae": self.forces_by_element.mae(z),
                "forces_rmse": self.forces_by_element.rmse(z),
                "energy_frames": int(self.energy_by_element.count[z]),
                "energy_mae": self.energy_by_element.mae(z),
                "energy_rmse": self.energy_by_element.rmse(z),
            }
            for z in np.flatnonzero(self.atoms_by_element)
        }
        groups = {}
        if self.by is not None:
            groups = {"by": self.by, "groups": {name: {key: value for key, value in self.groups[name].to_dict().items()
                                                        if key not in ("units", "elements")}
                                                 for name in sorted(self.groups)}}
        return {
            "units": {"energy": "meV/atom", "forces": "meV/Å", "stress": "GPa"},
            "frames": self.frames,
            "atoms": self.atoms,
            **overall,
            "elements": elements,
            **groups,
        }

    def table(self) -> str:
        """A readable report: overall metrics, then force and energy errors per element."""
        data = self.to_dict()
        lines = [f"{'':8}{'unit':>10}{'frames':>9}{'MAE':>11}{'RMSE':>11}{'mean':>11}"]
        for name in ("energy", "forces", "stress"):
            row = data[name]
            lines.append(f"{name:8}{data['units'][name]:>10}{row['frames']:>9}"
                         f"{_fmt(row['mae'])}{_fmt(row['rmse'])}{_fmt(row['mean'])}")
        lines += ["", f"{'element':8}{'atoms':>9}{'F MAE':>11}{'F RMSE':>11}{'frames':>9}"
                      f"{'E MAE':>11}{'E RMSE':>11}", f"{'':8}{'':>9}{'meV/Å':>22}{'':>9}{'meV/atom':>22}"]
        for symbol, row in data["elements"].items():
            lines.append(f"{symbol:8}{row['atoms']:>9}{_fmt(row['forces_mae'])}{_fmt(row['forces_rmse'])}"
                         f"{row['energy_frames']:>9}{_fmt(row['energy_mae'])}{_fmt(row['energy_rmse'])}")
        if self.by is not None:
            lines += ["", f"{self.by:16}{'frames':>7}{'E MAE':>11}{'E mean':>11}{'F MAE':>11}{'S MAE':>11}",
                      f"{'':16}{'':>7}{'meV/atom':>22}{'meV/Å':>11}{'GPa':>11}"]
            for name, row in data["groups"].items():
                lines.append(f"{(name or '(none)')[:16]:16}{row['frames']:>7}{_fmt(row['energy']['mae'])}"
                             f"{_fmt(row['energy']['mean'])}{_fmt(row['forces']['mae'])}{_fmt(row['stress']['mae'])}")
        return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return f"{'-':>11}" if value is None else f"{value:>11.3f}"


def evaluate(
    potential: Potential,
    frames: Iterable[Frame],
    *,
    max_nodes: int = 1024,
    max_edges: int | None = None,
    max_graphs: int = 256,
    progress: bool = False,
    total: int | None = None,
    by: str | None = None,
) -> Metrics:
    """Error metrics of ``potential`` on labelled ``frames`` (any iterable, streamed once).

    Frames are packed greedily into batches of at most ``max_nodes`` atoms, ``max_edges``
    edges (default 48 per node) and ``max_graphs`` structures, and padded to a few shapes
    (full batches to one or two), so that few programs compile; a structure larger than the
    budget on its own is evaluated alone. Each frame's species are checked as it is read, so
    an element the potential does not know stops the run at once with an MlipError naming it
    and the frame.
    ``progress`` shows a progress bar (frames/s; ``total`` frames if known) once a run takes
    longer than a second. ``by``: also report metrics per value of this ``Frame.info`` key.
    """
    max_edges = 48 * max_nodes if max_edges is None else max_edges
    graphs = (_checked_graph(potential, frame) for frame in frames)
    metrics, previous = Metrics(by), None
    with tqdm(total=total, unit=" frames", desc="evaluating", disable=not progress, delay=1.0) as bar:
        for group, batch in padded_batches(graphs, max_nodes, max_edges, max_graphs):
            current = (group, batch, potential(batch._replace(labels=None)))  # dispatched asynchronously
            if previous is not None:  # the host reads the last batch while this one runs
                metrics.update(*_to_host(previous))
            previous = current
            bar.update(len(group))
    if previous is not None:
        metrics.update(*_to_host(previous))
    return metrics


def _checked_graph(potential: Potential, frame: Frame) -> Graph:
    try:
        potential.check_species(frame.numbers)
    except MlipError as exc:
        raise frame.error(str(exc)) from None
    return build_graph(frame, potential.config.r_cut)


def _to_host(pending: tuple[list[Graph], GraphBatch, PotentialOutput]) -> tuple[GraphBatch, PotentialOutput, list[Frame]]:
    """Wait for the output and copy it to numpy (errors against the float64 labels are float64).
    A non-finite prediction is a DataError naming its frame: it would poison every metric."""
    group, batch, output = pending
    output = PotentialOutput(*map(np.asarray, output))
    finite = np.isfinite(output.energy) & np.all(np.isfinite(output.stress), axis=(1, 2))
    finite &= np.bincount(batch.node_graph, ~np.all(np.isfinite(output.forces), axis=1), len(finite)) == 0
    for graph, ok in zip(group, finite):
        if not ok:
            raise graph.frame.error("the potential gave a non-finite energy, forces or stress (nan or inf)")
    return batch, output, [graph.frame for graph in group]


def open_data(path, potential: Potential, *, report=None, **read_options) -> tuple[Iterable[Frame], int | None]:
    """The frames of ``path`` and their number when known in advance (else None).

    ``path`` is any file `read_frames` reads (labels optional; ``read_options`` and ``report``
    go to it) or an ``mlip convert`` directory, whose index lists its elements so that an
    element ``potential`` does not know is reported before anything is evaluated.
    """
    path = Path(path)
    if path.is_dir():
        dataset = ShardedDataset(path)
        try:
            potential.check_species(dataset.elements)
        except MlipError as exc:
            raise DataError(str(exc), path) from None
        return dataset, len(dataset)
    return read_frames(path, report=report, require_labels=False, **read_options), None
