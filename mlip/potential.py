"""`Potential`: a model's config and parameters, and the one conservative path from energy to
forces and stress.

    energy  E = sum of per-atom energies of real atoms        (eV)
    forces  F = -dE/dR                                        (eV/Å)
    stress  σ = (1/V) dE/dε at ε = 0                          (eV/Å^3, ASE sign)

where the symmetric strain ε deforms positions and cell together (R -> R (1 + ε),
cell -> cell (1 + ε)). Forces and stress come from a single jitted value_and_grad over
(positions, strain). Stress exists only for fully periodic structures; it is zero (and
``stress_mask`` False) for molecules, slabs and wires.

How it is computed (matmul precision, edge-chain kernel, edge chunks) is a runtime choice,
`mlip.runtime.Runtime`, applied here in `compute`, which every caller goes through: predict,
evaluate, the calculator, mlip.sim, training and the Hessian.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import zipfile
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple

import ase

import flax
import jax
import jax.numpy as jnp
import numpy as np

import mlip
from kernels import selection
from mlip.data.frame import Frame, frame_from_atoms, validate_frame
from mlip.data.graph import Graph, GraphBatch, build_graph
from mlip.data.neighbors import edge_vectors
from mlip.data.loader import padded_batches
from mlip.errors import MlipError
from mlip.fileio import atomic_write_bytes, npz_bytes
from mlip.models.config import FacetConfig, preset
from mlip.models.facet import FacetModel
from mlip.nn.message_passing import DEFAULT_EDGE_CHUNK
from mlip.runtime import DEFAULT_MATMUL_PRECISION, Runtime, release_compiled_programs_if_needed

FORMAT = "mlip-potential"
FORMAT_VERSION = 1


class PotentialOutput(NamedTuple):
    """Results for a padded batch; entries of padding atoms/graphs are zero.

    energy: [G] total energy, eV.
    energies: [N] per-atom energies, eV.
    forces: [N, 3] eV/Å.
    stress: [G, 3, 3] eV/Å^3, ASE sign; zero where ``stress_mask`` is False.
    stress_mask: bool [G], True for real, fully periodic graphs.
    """

    energy: jax.Array
    energies: jax.Array
    forces: jax.Array
    stress: jax.Array
    stress_mask: jax.Array


class Prediction(NamedTuple):
    """Results for one structure: energy (eV), energies [n] (eV), forces [n, 3] (eV/Å),
    stress [3, 3] (eV/Å^3, ASE sign) or None when the structure is not fully periodic."""

    energy: float
    energies: np.ndarray
    forces: np.ndarray
    stress: np.ndarray | None


def species_table(config: FacetConfig) -> np.ndarray:
    """int [119]: atomic number -> species index (-1 for elements the model does not know)."""
    table = np.full(119, -1, np.int32)
    table[list(config.species)] = np.arange(len(config.species), dtype=np.int32)
    return table


def compute(config: FacetConfig, params, batch: GraphBatch, runtime: Runtime | None = None,
            platform: str | None = None, extra_energies=None) -> PotentialOutput:
    """Energy, forces and stress of ``batch`` (traceable; `Potential.__call__` jits it).

    ``runtime``: how (mlip.runtime.Runtime; None: the defaults): its matmul precision holds
    for everything traced here, whatever the caller's own setting. ``platform``: where the
    call runs, which decides ``runtime.kernel == "auto"`` (kernels.selection.resolve); None:
    ``jax.default_backend()``, the platform of computations whose inputs are not placed
    elsewhere (Potential, Calculator, mlip.sim). ``extra_energies``: None, or a function
    (positions [N, 3] Å, cell [G, 3, 3] Å) -> [N] eV of per-atom energies added to the
    model's before differentiating, so that forces and stress include their derivatives
    (mlip.sim's D3 dispersion).
    """
    runtime = runtime or Runtime()
    platform = platform or jax.default_backend()
    with jax.default_matmul_precision(runtime.matmul_precision):
        return _compute(config, params, batch, runtime, platform, extra_energies)


def _compute(config: FacetConfig, params, batch: GraphBatch, runtime: Runtime, platform: str,
             extra_energies=None) -> PotentialOutput:
    edge_chain = None
    if config.num_layers > 1:  # the first block has no general edge chain
        edge_chain = selection.select(runtime.kernel, config.lmax, config.mmax, config.channels,
                                      batch.positions.dtype, platform)
    model = FacetModel(config, runtime.edge_chunk, edge_chain)
    species = jnp.maximum(jnp.asarray(species_table(config))[batch.numbers], 0)
    dtype = batch.positions.dtype
    n_graphs = batch.cell.shape[0]

    def total_energy(positions, strain):
        strain = 0.5 * (strain + jnp.swapaxes(strain, 1, 2))
        positions = positions + jnp.einsum("ni,nij->nj", positions, strain[batch.node_graph])
        cell = batch.cell + jnp.einsum("gij,gjk->gik", batch.cell, strain)
        vectors = edge_vectors(positions, cell, batch, batch.node_graph)
        per_atom = model.apply(params, vectors, species, batch.senders, batch.receivers, batch.edge_mask)
        if extra_energies is not None:
            per_atom = per_atom + extra_energies(positions, cell)
        per_atom = jnp.where(batch.node_mask, per_atom, 0.0)
        return jnp.sum(per_atom), per_atom

    strain = jnp.zeros((n_graphs, 3, 3), dtype)
    (_, energies), (grad_positions, grad_strain) = jax.value_and_grad(
        total_energy, argnums=(0, 1), has_aux=True
    )(batch.positions, strain)
    energy = jax.ops.segment_sum(energies, batch.node_graph, num_segments=n_graphs)
    stress_mask = batch.graph_mask & jnp.all(batch.pbc, axis=-1)
    volume = jnp.abs(jnp.linalg.det(batch.cell))
    volume = jnp.where(stress_mask, volume, 1.0)
    stress = jnp.where(stress_mask[:, None, None], grad_strain / volume[:, None, None], 0.0)
    return PotentialOutput(energy, energies, -grad_positions, stress, stress_mask)


@functools.lru_cache(maxsize=16)
def _jitted(config: FacetConfig, runtime: Runtime):
    return jax.jit(functools.partial(compute, config, runtime=runtime))


@dataclasses.dataclass(frozen=True)
class Potential:
    """A trained (or freshly initialised) potential: config + parameters + float dtype.

    Runtime choices, not saved with the potential (mlip.runtime; change them with
    ``dataclasses.replace(potential, kernel="reference")``), the same at every call site:
    ``edge_chunk``: graphs with more padded edges than this sum their messages over chunks of
    that many edges, so that memory grows by a few hundred bytes per edge instead of tens of
    kB (mlip.nn.message_passing; the same results up to the order of additions); None: never.
    ``kernel``: "auto" (the fused Pallas edge chain on a GPU, the reference elsewhere),
    "reference" or "pallas" (kernels/selection.py).
    ``matmul_precision``: of float32 matmuls, "highest" (full float32, default), "high" or
    "default" (TF32 on GPUs: faster, less accurate).
    """

    config: FacetConfig
    params: Any
    dtype: str = "float32"
    edge_chunk: int | None = DEFAULT_EDGE_CHUNK
    kernel: str = "auto"
    matmul_precision: str = DEFAULT_MATMUL_PRECISION

    def __post_init__(self):
        self.runtime  # validates the runtime choices

    @property
    def runtime(self) -> Runtime:
        """The runtime choices as one `mlip.runtime.Runtime`."""
        return Runtime(self.edge_chunk, self.kernel, self.matmul_precision)

    @classmethod
    def create(
        cls,
        preset_or_config: str | FacetConfig = "small",
        *,
        species=None,
        r_cut: float = 5.0,
        seed: int = 0,
        dtype: str = "float32",
        kernel: str = "auto",
        matmul_precision: str = DEFAULT_MATMUL_PRECISION,
        **overrides,
    ) -> "Potential":
        """A randomly initialised potential from a preset name (with ``species``, ``r_cut``
        and FacetConfig field ``overrides``) or from a FacetConfig; ``kernel`` and
        ``matmul_precision``: runtime choices (see the class docstring)."""
        if isinstance(preset_or_config, FacetConfig):
            config = dataclasses.replace(preset_or_config, **overrides)
        else:
            if species is None:
                raise MlipError("Potential.create from a preset needs species=[...]")
            config = preset(preset_or_config, species=species, r_cut=r_cut, **overrides)
        check_dtype(dtype)
        params = init_params(config, seed, dtype)
        return cls(config, params, dtype, kernel=kernel, matmul_precision=matmul_precision)

    def astype(self, dtype: str) -> "Potential":
        """The same potential with parameters cast to ``dtype`` ("float32" or "float64")."""
        check_dtype(dtype)
        params = jax.tree.map(lambda p: jnp.asarray(p, dtype), self.params)
        return dataclasses.replace(self, params=params, dtype=dtype)

    @property
    def num_params(self) -> int:
        return int(sum(np.size(p) for p in jax.tree.leaves(self.params)))

    def __call__(self, batch: GraphBatch) -> PotentialOutput:
        """Energy, forces, stress for a padded batch (see mlip.data.graph.collate)."""
        release_compiled_programs_if_needed()  # between calls: no trace is under way
        self.check_species(np.asarray(batch.numbers)[np.asarray(batch.node_mask)])
        return _jitted(self.config, self.runtime)(self.params, self._cast(batch))

    def compile(self, batch: GraphBatch) -> None:
        """Compile the program of ``batch``'s padded shape (`GraphBatch.shape`) without running
        it. With JAX's persistent compilation cache on (`mlip.runtime.enable_compilation_cache`)
        the program is written there, so that a later process calling this potential on a batch
        of that shape reads it instead of compiling (`mlip warmup`)."""
        _jitted(self.config, self.runtime).lower(self.params, self._cast(batch)).compile()

    def _cast(self, batch: GraphBatch) -> GraphBatch:
        dtype = jnp.dtype(self.dtype)
        return batch._replace(positions=jnp.asarray(batch.positions, dtype), cell=jnp.asarray(batch.cell, dtype))

    def predict(self, structures: Iterable[Frame | ase.Atoms], **budget) -> list[Prediction]:
        """Energy, per-atom energies, forces and stress of each structure, in input order.

        Stress is None for structures that are not periodic in all three directions. Batched
        with bounded memory as `predict_frames` (``budget``: its max_nodes, max_edges,
        max_graphs).
        """
        return [prediction for _, prediction in self.predict_frames(structures, **budget)]

    def predict_frames(
        self, structures: Iterable[Frame | ase.Atoms], *, max_nodes: int = 1024, max_edges: int | None = None,
        max_graphs: int = 256,
    ) -> Iterator[tuple[Frame, Prediction]]:
        """Stream (frame, prediction) for each structure (any iterable, read once), in order.

        Structures are validated (DataError naming the frame for NaN positions, a singular
        cell, ...) and packed into batches of at most ``max_nodes`` atoms, ``max_edges`` edges
        (default 48 per atom) and ``max_graphs`` structures (mlip.data.loader.padded_batches),
        so memory stays bounded whatever the number of structures. A non-finite energy, force
        or stress is a DataError naming the frame, never a silent nan.
        """
        for group, batch in self._batches(structures, max_nodes, max_edges, max_graphs):
            out = jax.tree.map(np.asarray, self(batch))
            start = 0
            for g, graph in enumerate(group):
                atoms = slice(start, start + graph.n_node)
                start += graph.n_node
                prediction = Prediction(
                    energy=float(out.energy[g]),
                    energies=out.energies[atoms],
                    forces=out.forces[atoms],
                    stress=out.stress[g] if out.stress_mask[g] else None,
                )
                yield graph.frame, check_finite(prediction, graph.frame)

    def compile_frames(self, structures: Iterable[Frame | ase.Atoms], *, max_nodes: int = 1024,
                       max_edges: int | None = None, max_graphs: int = 256) -> int:
        """Compile, without running, the programs `predict_frames` would run on ``structures``
        with this budget (`compile`; for `mlip warmup`); returns how many distinct shapes."""
        shapes = set()
        for _, batch in self._batches(structures, max_nodes, max_edges, max_graphs):
            if batch.shape not in shapes:
                shapes.add(batch.shape)
                self.compile(batch)
        return len(shapes)

    def _batches(self, structures, max_nodes, max_edges, max_graphs):
        """(graphs, padded batch) pairs of `predict_frames`."""
        max_edges = 48 * max_nodes if max_edges is None else max_edges
        graphs = (self._graph(s, k) for k, s in enumerate(structures))
        return padded_batches(graphs, max_nodes, max_edges, max_graphs, labels=False)

    def _graph(self, structure: Frame | ase.Atoms, index: int) -> Graph:
        frame = structure if isinstance(structure, Frame) else frame_from_atoms(structure, index=index)
        validate_frame(frame, close_atoms="ignore")
        try:
            self.check_species(frame.numbers)
        except MlipError as exc:
            raise frame.error(str(exc)) from None
        return build_graph(frame, self.config.r_cut)

    def hessian(self, structure: Frame | ase.Atoms, **options) -> np.ndarray:
        """Hessian d^2E/dR dR of one structure, [3N, 3N] eV/Å^2, by autodiff in this potential's
        dtype (forward-over-reverse; ``options``: ``block`` rows at a time, edges in chunks of
        ``edge_chunk``; see mlip.materials.hessian.hessian)."""
        from mlip.materials.hessian import hessian

        return hessian(self, structure, **options)

    def check_species(self, numbers) -> None:
        """Raise MlipError naming any element the potential was not trained on."""
        numbers = np.asarray(numbers)
        valid = (numbers >= 1) & (numbers <= 118)
        known = np.zeros_like(valid)
        known[valid] = species_table(self.config)[numbers[valid]] >= 0
        unknown = sorted(set(numbers[~known].tolist()))
        if unknown:
            from ase.data import chemical_symbols

            names = [chemical_symbols[z] if 0 < z < 119 else str(z) for z in unknown]
            raise MlipError(
                f"element(s) {', '.join(names)} not in this potential's species "
                f"({', '.join(self.config.species_symbols)})"
            )

    def save(self, path) -> None:
        """Write a self-describing file (format version, config, dtype, parameters), atomically."""
        save_potential(self, path)

    @classmethod
    def load(cls, name_or_path) -> "Potential":
        """A potential file, or a bundled model by name (`mlip.registry`, `mlip models`)."""
        from mlip.registry import resolve_model

        return load_potential(resolve_model(name_or_path))


def check_finite(prediction: Prediction, frame: Frame) -> Prediction:
    """``prediction`` unchanged, or a DataError naming ``frame`` if any value is nan or inf
    (a potential pushed far outside its training data, or corrupt parameters)."""
    for name in ("energy", "forces", "stress"):
        value = getattr(prediction, name)
        if value is not None and not np.all(np.isfinite(value)):
            raise frame.error(f"the potential gave a non-finite {name} (nan or inf)")
    return prediction


def check_dtype(dtype: str) -> None:
    """MlipError unless ``dtype`` is "float32", or "float64" with JAX's x64 mode on. mlip never
    turns x64 on behind the caller's back (it is process-wide): programs do, explicitly (the
    `mlip` command does for float64 models)."""
    if dtype not in ("float32", "float64"):
        raise MlipError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if dtype == "float64" and not jax.config.jax_enable_x64:
        raise MlipError(
            "float64 needs JAX's x64 mode: call jax.config.update('jax_enable_x64', True) "
            "at the start of the program"
        )


def init_params(config: FacetConfig, seed: int, dtype: str, *, shapes_only: bool = False):
    """Parameters of a FacetModel for ``config``, initialised from ``seed``, cast to ``dtype``.

    With ``shapes_only``, returns jax.ShapeDtypeStructs without computing anything.
    """
    vectors = jnp.array([[0.0, 1.0, 0.5], [0.0, -1.0, -0.5]], dtype)
    args = (vectors, jnp.zeros(2, jnp.int32), jnp.array([1, 0]), jnp.array([0, 1]), jnp.ones(2, bool))

    def init(key):
        params = FacetModel(config).init(key, *args)
        return jax.tree.map(lambda p: p.astype(dtype), params)

    key = jax.random.PRNGKey(seed)
    # One compiled program: op-by-op initialisation dispatches hundreds of tiny kernels.
    return jax.eval_shape(init, key) if shapes_only else jax.jit(init)(key)


def save_potential(potential: Potential, path) -> None:
    path = Path(path)
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "mlip_version": mlip.__version__,
        "dtype": potential.dtype,
        "config": potential.config.to_dict(),
        "num_params": potential.num_params,
    }
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(potential.params), sep="/")
    arrays = {f"params/{k}": np.asarray(v) for k, v in flat.items()}
    atomic_write_bytes(path, npz_bytes({"__header__": np.array(json.dumps(header)), **arrays}))


def saved_dtype(name_or_path) -> str:
    """The dtype ("float32" or "float64") a potential file (or bundled model) was saved in, from
    its header alone (so that a program can switch JAX's x64 mode on before loading a float64
    model)."""
    from mlip.registry import resolve_model

    header, _ = _read_potential_file(resolve_model(name_or_path), arrays=False)
    return header.get("dtype", "float32")


def _read_potential_file(path: Path, *, arrays: bool) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, parameter arrays by npz key) of a potential file; MlipError for anything else."""
    if path.is_dir():
        raise MlipError(f"{path}: is a directory, not a potential file")
    if not path.is_file():
        raise MlipError(f"{path}: no such potential file")
    if not zipfile.is_zipfile(path):  # np.load would try to unpickle it (and mention allow_pickle)
        raise MlipError(f"{path}: not a readable mlip potential file (corrupt, truncated or another format)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "__header__" not in archive.files:
                raise MlipError(f"{path}: not an mlip potential file (no header)")
            text = str(archive["__header__"])
            contents = {k: archive[k] for k in archive.files if k != "__header__"} if arrays else {}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise MlipError(f"{path}: not a readable mlip potential file (corrupt or truncated: {exc})") from None
    try:
        header = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MlipError(f"{path}: corrupt header ({exc})") from None
    return header, contents


def load_potential(path) -> Potential:
    """Read a file written by `Potential.save`; clear MlipError for anything else (including
    parameters that are nan or inf, as a diverged training run would leave)."""
    path = Path(path)
    header, contents = _read_potential_file(path, arrays=True)
    if header.get("format") != FORMAT:
        raise MlipError(f"{path}: not an mlip potential file (format {header.get('format')!r})")
    if header.get("format_version") != FORMAT_VERSION:
        raise MlipError(
            f"{path}: potential file format version {header.get('format_version')} is not "
            f"supported by mlip {mlip.__version__} (reads version {FORMAT_VERSION})"
        )
    try:
        config = FacetConfig.from_dict(header["config"])
    except (MlipError, KeyError, TypeError) as exc:
        raise MlipError(f"{path}: incompatible model config ({exc})") from None
    dtype = header.get("dtype", "float32")
    check_dtype(dtype)
    template = flax.traverse_util.flatten_dict(init_params(config, 0, dtype, shapes_only=True), sep="/")
    loaded = {k[len("params/") :]: v for k, v in contents.items() if k.startswith("params/")}
    if set(loaded) != set(template):
        missing, extra = sorted(set(template) - set(loaded)), sorted(set(loaded) - set(template))
        raise MlipError(f"{path}: parameters do not match the config (missing {missing[:3]}, unexpected {extra[:3]})")
    for key, value in template.items():
        if loaded[key].shape != value.shape:
            raise MlipError(f"{path}: parameter {key} has shape {loaded[key].shape}, config expects {value.shape}")
        if not np.all(np.isfinite(loaded[key])):
            raise MlipError(f"{path}: parameter {key} contains nan or inf (saved from a diverged run?)")
    params = flax.traverse_util.unflatten_dict({k: jnp.asarray(v, dtype) for k, v in loaded.items()}, sep="/")
    return Potential(config, params, dtype)
