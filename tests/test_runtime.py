"""mlip.runtime: one matmul precision at every call site, explicit process-wide settings (the
compilation cache, x64), the repair of truncated cache entries, and the guard that keeps a
long session clear of the memory-mapping limit at which XLA:CPU crashes."""

import dataclasses
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator

from mlip import runtime, sim
from mlip.calculator import Calculator
from mlip.data.frame import frame_from_atoms
from mlip.data.graph import build_graph, collate
from mlip.errors import MlipError
from mlip.evaluate import evaluate
from mlip.potential import Potential
from mlip.train.batches import stack_batches
from mlip.train.config import LossConfig, OptimizerConfig
from mlip.train.loss import Terms
from mlip.train.step import (
    init_state, learning_rate_fn, make_mesh, make_optimizer, make_train_step, make_validation_step,
)

TINY = dict(lmax=1, mmax=1, channels=4, num_layers=1, mixing="gate", mixing_hidden=4, readout_hidden=4)


def tiny(dtype="float32", **runtime_choices) -> Potential:
    return Potential.create("small", species=["Si"], r_cut=3.0, seed=2, dtype=dtype, **TINY, **runtime_choices)


def labelled_silicon():
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.rattle(0.05, seed=1)
    atoms.calc = SinglePointCalculator(atoms, energy=-10.0, forces=np.zeros((2, 3)), stress=np.zeros(6))
    return atoms


@pytest.fixture
def matmul_precisions(monkeypatch):
    """The matmul precision in force whenever a flax Dense layer (the model's readout) is traced."""
    seen = []
    dot_general = jax.lax.dot_general

    def spy(*args, **kwargs):
        seen.append(jax.config.jax_default_matmul_precision)
        return dot_general(*args, **kwargs)

    monkeypatch.setattr(jax.lax, "dot_general", spy)
    return seen


def _call_sites(potential: Potential):
    """Each way mlip computes with ``potential``: name -> a function that does it once."""
    atoms = labelled_silicon()
    frame = frame_from_atoms(atoms)

    def calculator():
        copy = atoms.copy()
        copy.calc = Calculator(potential)
        copy.get_forces()

    def training():  # traced only (eval_shape): tracing is what sets the precision
        batch = collate([build_graph(frame, potential.config.r_cut)], 3, 64, 2, dtype=np.dtype(potential.dtype))
        optimizer = make_optimizer(OptimizerConfig(), potential.params)
        mesh = make_mesh(jax.devices()[:1])
        step = make_train_step(potential.config, optimizer, LossConfig(), learning_rate_fn(OptimizerConfig(), 10),
                               None, mesh, potential.runtime)
        weights = Terms(*(jnp.asarray(w, potential.dtype) for w in (1.0, 1.0, 0.0)))
        state = init_state(potential.params, optimizer)
        jax.eval_shape(step, state, stack_batches([batch]), weights, jnp.asarray(1.0, potential.dtype))
        validation = make_validation_step(potential.config, LossConfig(), potential.runtime, "cpu")
        jax.eval_shape(validation, potential.params, batch)

    return {
        "predict": lambda: potential.predict([atoms]),
        "evaluate": lambda: evaluate(potential, [frame]),
        "calculator": calculator,
        "sim": lambda: sim.relax(potential, [atoms], max_steps=1),
        "training": training,
        "hessian": lambda: potential.hessian(atoms, block=6),
    }


def test_every_call_site_computes_at_the_potentials_matmul_precision(matmul_precisions):
    """predict, evaluate, the calculator, mlip.sim, the training and validation steps and the
    Hessian all trace the model at one precision: "highest" by default (not the backend's
    default, TF32 on GPUs), and whatever the potential says otherwise."""
    by_site = {}
    for precision, sites in (("highest", None), ("default", ("predict", "training"))):
        potential = tiny("float64", matmul_precision=precision)  # (float32 training wants x64 off)
        for name, run in _call_sites(potential).items():
            if sites is None or name in sites:
                jax.clear_caches()  # trace afresh: the spy sees tracing only
                matmul_precisions.clear()
                run()
                by_site[precision, name] = set(matmul_precisions)
    assert len(by_site) == 8 and all(seen == {precision} for (precision, _), seen in by_site.items()), by_site


def test_runtime_choices_are_validated_and_not_saved(tmp_path):
    assert runtime.Runtime().matmul_precision == runtime.DEFAULT_MATMUL_PRECISION == "highest"
    with pytest.raises(MlipError, match="matmul_precision must be one of highest, high, default, got 'tf32'"):
        tiny(matmul_precision="tf32")
    potential = dataclasses.replace(tiny(), matmul_precision="default", kernel="reference")
    potential.save(tmp_path / "m.mlip")
    loaded = Potential.load(tmp_path / "m.mlip")
    assert (loaded.matmul_precision, loaded.kernel) == ("highest", "auto")


def test_cache_directory_is_resolved_when_used(monkeypatch, tmp_path):
    monkeypatch.setenv("MLIP_CACHE_DIR", str(tmp_path / "a"))
    assert runtime.cache_dir() == tmp_path / "a"
    monkeypatch.setenv("MLIP_CACHE_DIR", str(tmp_path / "b"))  # after import: still honoured
    assert runtime.cache_dir() == tmp_path / "b"
    monkeypatch.delenv("MLIP_CACHE_DIR")
    assert runtime.cache_dir().parts[-3:] == (".cache", "mlip", "jax")


def test_constructing_a_calculator_changes_no_jax_setting(tmp_path):
    potential = tiny()
    previous = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", None)
    try:
        before = {k: getattr(jax.config, k) for k in ("jax_compilation_cache_dir", "jax_enable_x64",
                                                      "jax_default_matmul_precision")}
        Calculator(potential)
        assert {k: getattr(jax.config, k) for k in before} == before
        Calculator(potential, compilation_cache=tmp_path / "cache")  # asked for explicitly
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")
    finally:
        jax.config.update("jax_compilation_cache_dir", previous)


def test_float64_without_x64_is_an_explicit_error_not_a_silent_switch(tmp_path):
    tiny("float64").save(tmp_path / "f64.mlip")
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(MlipError, match="float64 needs JAX's x64 mode"):
            Calculator(tmp_path / "f64.mlip")
        assert not jax.config.jax_enable_x64
    finally:
        jax.config.update("jax_enable_x64", True)


def test_a_truncated_cache_entry_is_removed_and_written_afresh(tmp_path):
    """JAX skips an entry it cannot read but never rewrites it (its cache keeps the first file
    of a key); enabling the cache removes incomplete entries, so the next compilation writes
    the entry whole again."""
    previous = {k: getattr(jax.config, k) for k in ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")}
    from jax.experimental.compilation_cache import compilation_cache

    directory = tmp_path / "cache"
    jax.config.update("jax_compilation_cache_dir", None)
    compilation_cache.reset_cache()
    try:
        runtime.enable_compilation_cache(directory)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

        def cached_program(x):
            return jnp.sin(x) * 3.0 + jnp.cos(x) @ x.T

        program, x = jax.jit(cached_program), jnp.ones((5, 5))
        program(x).block_until_ready()
        (entry,) = directory.glob(f"jit_cached_program-*{runtime.CACHE_ENTRY_SUFFIX}")
        whole = entry.read_bytes()
        entry.write_bytes(whole[: len(whole) // 2])  # a process killed while writing it
        jax.clear_caches()
        with pytest.warns(UserWarning, match="Error reading persistent compilation cache entry"):
            program(x).block_until_ready()  # JAX compiles, warns, and leaves the entry truncated
        assert entry.stat().st_size == len(whole) // 2
        a_while_ago = time.time() - 1.5 * runtime.RECENT_WRITE_SECONDS  # younger: maybe being written
        os.utime(entry, (a_while_ago, a_while_ago))

        assert runtime.repair_compilation_cache(directory) == [entry]
        jax.clear_caches()
        program(x).block_until_ready()  # compiled again, and the entry written
        assert entry.is_file() and abs(entry.stat().st_size - len(whole)) < len(whole) // 4
        os.utime(entry, (a_while_ago, a_while_ago))
        assert runtime.repair_compilation_cache(directory) == []  # whole again (and complete entries stay)
    finally:
        for key, value in previous.items():
            jax.config.update(key, value)
        compilation_cache.reset_cache()


def test_compiled_programs_are_released_near_the_mapping_limit(monkeypatch, caplog):
    """XLA:CPU crashes (segfault) when the process runs out of memory mappings while it
    compiles or loads a program (benchmarks/map_limit.py); mlip drops compiled programs first."""
    program = jax.jit(lambda x: x * 2.0 + 1.0)
    program(jnp.ones(3))
    assert program._cache_size() == 1
    assert not runtime.release_compiled_programs_if_needed(force_check=True)  # far below the limit
    monkeypatch.setattr(runtime, "_map_limit", lambda: 2 * runtime._map_count() - 1)  # just over half
    with caplog.at_level(logging.WARNING, logger="mlip.runtime"):
        assert runtime.release_compiled_programs_if_needed(force_check=True)
    assert program._cache_size() == 0 and "vm.max_map_count" in caplog.text
    assert not runtime.release_compiled_programs_if_needed()  # within the interval: not even counted


def test_import_mlip_reaches_the_simulation_package():
    import mlip

    assert mlip.sim.relax is sim.relax and mlip.sim.md is sim.md and mlip.runtime is runtime
