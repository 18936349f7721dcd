"""Deployment artifacts: a potential as a serialized `jax.export` (StableHLO) program.

The exported program is the potential's *edge-level* function (`edge_outputs`): it takes a
radius graph as edge vectors (not positions and cell) and returns the energy of the marked
atoms, per-atom energies, forces on every node, the virial and dE/dr per edge:

    inputs   vectors    float [E, 3]  r_ij = x_sender - x_receiver (+ image shift), Å
             species    int32 [N]     index into the artifact's species list
             senders    int32 [E]     j of each edge
             receivers  int32 [E]     i of each edge, sorted ascending
             edge_mask  bool [E]      real edges
             node_mask  bool [N]      atoms whose energy counts (all real atoms, or the atoms
                                      a LAMMPS rank owns, its ghosts left out)
    outputs  energy     float []      sum of per-atom energies of node_mask atoms, eV
             energies   float [N]     per-atom energies (zero outside node_mask), eV
             forces     float [N, 3]  -dE/dx on every node, ghosts included, eV/Å
             virial     float [3, 3]  W = -sym(sum_e r_e ⊗ dE/dr_e), eV (LAMMPS' sign:
                                      stress = -W / V with ASE's sign)
             edge_grad  float [E, 3]  dE/dr_e, eV/Å

so one program serves a periodic structure (edges carry image shifts), a molecule, and a
LAMMPS subdomain with its ghost atoms. Shapes are symbolic (N nodes, E edges): one artifact
runs any size; XLA compiles it once per concrete shape, and the loader (mlip.exported) pads to
a geometric ladder so that few shapes occur. Parameters are constants inside the program.

The exported program runs the pure-JAX reference edge chain (``kernel="reference"``), lowered
for CPU and CUDA: the fused Pallas kernel is chosen per device at trace time after a numerical
check (kernels/selection.py), which an ahead-of-time artifact cannot do; it would also tie the
artifact to a Triton version. Messages are not chunked (``edge_chunk`` needs concrete sizes),
so memory grows with the edges of one call.

Loading needs jax and numpy only: `mlip/exported.py` imports nothing from mlip (copy the one
file next to the artifact).
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp

import mlip
from mlip.errors import MlipError
from mlip.fileio import atomic_write_bytes
from mlip.models.config import FacetConfig
from mlip.models.facet import FacetModel
from mlip.potential import Potential

#: Artifact format; mlip/exported.py checks these (it cannot import them: it imports no mlip).
FORMAT = "mlip-exported"
FORMAT_VERSION = 1
PROGRAM = "edge_outputs.stablehlo"
METADATA = "metadata.json"
PLATFORMS = ("cpu", "cuda")


class EdgeOutputs(NamedTuple):
    """See the module docstring: energy [] eV, energies [N] eV, forces [N, 3] eV/Å, virial
    [3, 3] eV, edge_grad [E, 3] eV/Å."""

    energy: jax.Array
    energies: jax.Array
    forces: jax.Array
    virial: jax.Array
    edge_grad: jax.Array


def edge_outputs(config: FacetConfig, params, vectors, species, senders, receivers, edge_mask, node_mask,
                 edge_chunk: int | None = None) -> EdgeOutputs:
    """Energy of the ``node_mask`` atoms and its derivatives from a radius graph given as edge
    vectors (shapes in the module docstring). Traceable; one value_and_grad over the vectors.

    Padding follows mlip.data.graph: padding edges are masked, zero vectors from the last node
    to itself; padding nodes are outside ``node_mask``.
    """
    model = FacetModel(config, edge_chunk)

    def energy_of(vectors):
        per_atom = model.apply(params, vectors, species, senders, receivers, edge_mask)
        per_atom = jnp.where(node_mask, per_atom, 0.0)
        return jnp.sum(per_atom), per_atom

    (energy, energies), grad = jax.value_and_grad(energy_of, has_aux=True)(vectors)
    grad = jnp.where(edge_mask[:, None], grad, 0.0)
    n = species.shape[0]
    # r_e = x_sender - x_receiver: dE/dx_sender = +g_e, dE/dx_receiver = -g_e, and F = -dE/dx.
    forces = jax.ops.segment_sum(grad, receivers, num_segments=n, indices_are_sorted=True) - jax.ops.segment_sum(
        grad, senders, num_segments=n
    )
    outer = jnp.einsum("ei,ej->ij", vectors, grad)
    # Symmetrised as Potential's strain derivative is (they agree to rounding: E is rotation invariant).
    virial = -0.5 * (outer + outer.T)
    return EdgeOutputs(energy, energies, forces, virial, grad)


def metadata(potential: Potential) -> dict:
    """What a user of the artifact needs besides the program: species, cutoff, units,
    receptive field and padding rules (JSON-ready)."""
    c = potential.config
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "mlip_version": mlip.__version__,
        "jax_version": jax.__version__,
        "platforms": list(PLATFORMS),
        "dtype": potential.dtype,
        "species_numbers": list(c.species),
        "species_symbols": list(c.species_symbols),
        "r_cut": c.r_cut,
        "num_layers": c.num_layers,
        # An atom's energy depends on atoms up to num_layers * r_cut away: the ghost shell a
        # spatial decomposition needs.
        "receptive_field": c.num_layers * c.r_cut,
        "units": {"length": "Å", "energy": "eV", "forces": "eV/Å", "virial": "eV", "stress": "eV/Å^3 (ASE sign) = -virial/V"},
        "kernel": "reference",
        "inputs": ["vectors [E,3]", "species int32 [N]", "senders int32 [E]", "receivers int32 [E] sorted",
                   "edge_mask bool [E]", "node_mask bool [N]"],
        "outputs": ["energy []", "energies [N]", "forces [N,3]", "virial [3,3]", "edge_grad [E,3]"],
        "padding": "padding edges: edge_mask False, zero vector, sender = receiver = N-1 (the last node, "
                   "a padding node outside node_mask); receivers sorted ascending; species of padding nodes 0",
        "config": c.to_dict(),
    }


def export_potential(potential: Potential, path) -> dict:
    """Write ``potential`` as an exported program with symbolic shapes plus its metadata (a zip:
    metadata.json, edge_outputs.stablehlo), atomically. Returns the metadata."""
    config = potential.config  # FacetModel without an edge_chain runs the reference path
    dtype = jnp.dtype(potential.dtype)
    params = potential.params

    def program(vectors, species, senders, receivers, edge_mask, node_mask):
        return tuple(edge_outputs(config, params, vectors, species, senders, receivers, edge_mask, node_mask))

    n, e = jax.export.symbolic_shape("n, e")
    args = (
        jax.ShapeDtypeStruct((e, 3), dtype),
        jax.ShapeDtypeStruct((n,), jnp.int32),
        jax.ShapeDtypeStruct((e,), jnp.int32),
        jax.ShapeDtypeStruct((e,), jnp.int32),
        jax.ShapeDtypeStruct((e,), jnp.bool_),
        jax.ShapeDtypeStruct((n,), jnp.bool_),
    )
    # Full-precision matmuls in the artifact (GPUs would otherwise use TF32 for float32).
    with jax.default_matmul_precision("highest"):
        exported = jax.export.export(jax.jit(program), platforms=PLATFORMS)(*args)
    meta = metadata(potential)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(METADATA, json.dumps(meta, indent=1))
        archive.writestr(PROGRAM, bytes(exported.serialize()))
    atomic_write_bytes(Path(path), buffer.getvalue())
    return meta


def export_command(model: str, output: Path, dtype: str | None) -> dict:
    """`mlip export`: load ``model`` (file or bundled name), cast to ``dtype``, export."""
    from mlip.cli import load_model

    if output.suffix != ".mlipx":
        raise MlipError(f"{output}: an exported potential is written as NAME.mlipx")
    return export_potential(load_model(model, dtype), output)
