"""kernels/: every Pallas kernel, run by the Pallas interpreter on the CPU, against its pure-JAX
reference (values, gradients of every input, second derivatives), alone and inside the model;
and the selection of kernel or reference, with its loud fallback.

Shapes are drawn at random from fixed seeds, with edge counts that are not a multiple of the
kernel's tile (padding edges of the kernel) and zero-length padding edges (of the model)."""

import dataclasses
import functools
import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk

import kernels.selection as selection
from kernels.so2_message import random_inputs, so2_message_pallas, so2_message_reference
from mlip.data.frame import frame_from_atoms
from mlip.data.graph import build_graph, collate
from mlip.models.config import FacetConfig
from mlip.errors import MlipError
from mlip.fileio import npz_bytes
from mlip.potential import Potential, compute
from mlip.runtime import Runtime


def _random_case(seed: int, lmax: int):
    """(lmax, mmax, channels_in, channels_out, edges, padding edges, tile) from ``seed``.
    The degree is given: interpreting a kernel compiles its unrolled body, which grows fast
    with lmax, so each test picks the smallest that covers what it tests."""
    rng = np.random.default_rng(seed)
    mmax = int(rng.integers(0, lmax + 1))
    c_in, c_out = (int(c) for c in rng.integers(2, 9, size=2))
    tile = int(rng.choice([8, 16]))
    edges = int(rng.integers(tile + 1, 3 * tile))  # never a multiple of the tile
    return lmax, mmax, c_in, c_out, edges, int(rng.integers(1, 4)), tile


def _assert_trees_close(got, expected, rtol):
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=rtol * max(float(np.abs(b).max()), 1e-30))


@pytest.mark.parametrize("seed, lmax", [(0, 2), (1, 3)])  # the small and medium presets' degrees
def test_kernel_matches_reference_values_and_gradients(seed, lmax):
    lmax, mmax, c_in, c_out, edges, padding, tile = _random_case(seed, lmax)
    inputs = random_inputs(jax.random.PRNGKey(seed), lmax, mmax, c_in, c_out, edges, padding, jnp.float64)
    probe = jax.random.normal(jax.random.PRNGKey(99), (edges, (lmax + 1) ** 2, c_out), jnp.float64)

    def value_and_gradients(message):
        def loss(*args):
            return jnp.sum(probe * message(*args))

        return jax.jit(lambda *a: (message(*a), jax.grad(loss, argnums=(0, 1, 2, 3))(*a)))(*inputs)

    kernel = functools.partial(so2_message_pallas, lmax=lmax, mmax=mmax, interpret=True, tile=tile)
    reference = functools.partial(so2_message_reference, lmax=lmax, mmax=mmax)
    got, expected = value_and_gradients(kernel), value_and_gradients(reference)
    _assert_trees_close(got, expected, 1e-12)
    # Zero-length padding edges carry zero messages (their radial weights are zero).
    np.testing.assert_array_equal(got[0][-padding:], 0.0)


def test_second_derivatives_match_reference():
    """Force training differentiates a gradient: d/d(weights, radial) of |d E / d x|^2."""
    lmax, mmax, c_in, c_out, edges, padding, tile = _random_case(2, lmax=1)
    inputs = random_inputs(jax.random.PRNGKey(5), lmax, mmax, c_in, c_out, edges, padding, jnp.float64)
    probe = jax.random.normal(jax.random.PRNGKey(6), (edges, (lmax + 1) ** 2, c_out), jnp.float64)

    def force_loss_gradients(message):
        def energy(x, wigner, radial, weights):
            return jnp.sum(probe * message(x, wigner, radial, weights) ** 2)

        def loss(wigner, radial, weights):
            return jnp.sum(jax.grad(energy)(inputs[0], wigner, radial, weights) ** 2)

        return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*inputs[1:])

    got = force_loss_gradients(functools.partial(so2_message_pallas, lmax=lmax, mmax=mmax, interpret=True, tile=tile))
    expected = force_loss_gradients(functools.partial(so2_message_reference, lmax=lmax, mmax=mmax))
    _assert_trees_close(got, expected, 1e-11)


CONFIG = FacetConfig(species=(14, 29), lmax=1, mmax=1, channels=4, num_layers=2, mixing="gate", readout_hidden=4)


def test_model_with_kernel_matches_reference():
    """A tiny 2-species model with the Pallas edge chain (interpreted, checked on first use)
    against the reference: energy, forces, stress, and the parameter gradients of a force loss
    (second order, as in training), on a rattled Si/Cu cell padded with extra edges."""
    atoms = bulk("Si", "diamond", a=5.43) * (2, 1, 1)
    atoms.numbers[1] = 29
    atoms.rattle(0.1, seed=4)
    graph = build_graph(frame_from_atoms(atoms), CONFIG.r_cut)
    batch = collate([graph], graph.n_node + 1, graph.n_edge + 5, 2, dtype=np.dtype("float64"), labels=False)
    params = Potential.create(CONFIG, dtype="float64", seed=3).params

    def outputs_and_force_loss_gradients(kernel):
        runtime = Runtime(kernel=kernel)

        def force_loss(params):
            return jnp.sum(compute(CONFIG, params, batch, runtime).forces ** 2)

        return jax.jit(lambda p: (compute(CONFIG, p, batch, runtime), jax.grad(force_loss)(p)))(params)

    (got, got_gradients), (expected, expected_gradients) = map(outputs_and_force_loss_gradients, ("pallas", "reference"))
    np.testing.assert_allclose(got.energy, expected.energy, rtol=1e-12)
    np.testing.assert_allclose(got.forces, expected.forces, atol=1e-10)
    np.testing.assert_allclose(got.stress, expected.stress, atol=1e-12)
    _assert_trees_close(got_gradients, expected_gradients, 1e-10)


def test_the_kernel_rule_is_explicit_per_platform():
    assert [selection.resolve("auto", p) for p in ("cpu", "gpu", "tpu")] == ["reference", "pallas", "reference"]
    assert selection.resolve("pallas", "cpu") == "pallas" and selection.resolve("reference", "gpu") == "reference"
    assert selection.select("auto", 1, 1, 4, jnp.float64, "cpu") == selection.Implementation("reference")
    # The model's first use checked the kernel on this CPU (interpreted), and it passed.
    assert selection.select("pallas", 1, 1, 4, jnp.float64, "cpu") == selection.Implementation("pallas", interpret=True)
    with pytest.raises(MlipError, match="kernel must be one of auto, reference, pallas, got 'triton'"):
        Runtime(kernel="triton")


def test_kernel_is_a_runtime_choice_and_files_that_saved_it_still_load(tmp_path):
    """Files written while the kernel was saved in the architecture config carry "kernel": they
    load, the key is dropped, and the potential takes the runtime default."""
    potential = dataclasses.replace(Potential.create(CONFIG, dtype="float64", seed=3), kernel="reference")
    potential.save(tmp_path / "new.mlip")
    with np.load(tmp_path / "new.mlip") as archive:
        arrays = {k: archive[k] for k in archive.files}
    header = json.loads(str(arrays["__header__"]))
    assert "kernel" not in header["config"]  # a runtime choice is not saved
    header["config"]["kernel"] = "pallas"  # as files were written before
    arrays["__header__"] = np.array(json.dumps(header))
    (tmp_path / "old.mlip").write_bytes(npz_bytes(arrays))
    old = Potential.load(tmp_path / "old.mlip")
    assert old.config == potential.config and old.kernel == "auto"
    atoms = bulk("Si", "diamond", a=5.43)
    assert old.predict([atoms])[0].energy == potential.predict([atoms])[0].energy


def test_auto_picks_the_checked_kernel_on_gpu(monkeypatch):
    """On a GPU "auto" runs the compiled kernel (no interpreter) once it passes its check; here
    the platform is named "gpu", its device is this CPU and the "kernel" is the reference, so
    the check passes on a CPU."""
    cpu_devices = jax.devices
    monkeypatch.setattr(selection.jax, "devices", lambda platform=None: cpu_devices())
    monkeypatch.setattr(selection, "so2_message_pallas", lambda *a, lmax, mmax, interpret: so2_message_reference(*a, lmax, mmax))
    selection._check.cache_clear()
    try:
        assert selection.select("auto", 1, 1, 4, jnp.float64, "gpu") == selection.Implementation("pallas", interpret=False)
        assert selection.select("reference", 1, 1, 4, jnp.float64, "gpu") == selection.Implementation("reference")
    finally:
        selection._check.cache_clear()


def _wrong_kernel(*args, **kwargs):
    return 1.001 * so2_message_reference(*args[:4], kwargs["lmax"], kwargs["mmax"])


def _broken_kernel(*args, **kwargs):
    raise RuntimeError("no lowering for this platform")


@pytest.mark.parametrize("kernel, reason", [(_wrong_kernel, "relative error"), (_broken_kernel, "RuntimeError")])
def test_kernel_that_fails_its_check_falls_back_loudly(monkeypatch, kernel, reason):
    monkeypatch.setattr(selection, "so2_message_pallas", kernel)
    selection._check.cache_clear()
    try:
        with pytest.warns(selection.KernelFallbackWarning, match=reason):
            assert selection.select("pallas", 1, 0, 4, jnp.float64, "cpu") == selection.Implementation("reference")
        with warnings.catch_warnings():  # decided once per device: later calls reuse the verdict
            warnings.simplefilter("ignore")
            assert selection.select("pallas", 1, 0, 4, jnp.float64, "cpu").name == "reference"
    finally:
        selection._check.cache_clear()
