"""A run's starting model: a fresh one sized from the data, or a saved potential to fine-tune
(extended to elements it has not seen, and optionally grown by interaction blocks that start as
the identity)."""

from __future__ import annotations

import dataclasses
import logging

import flax
import jax.numpy as jnp
import numpy as np
from ase.data import atomic_numbers, chemical_symbols

from mlip.data.loader import FrameDataset
from mlip.errors import MlipError
from mlip.models.config import FacetConfig, preset
from mlip.potential import Potential, init_params
from mlip.train.config import TrainConfig
from mlip.train.statistics import DataStatistics, compute_statistics

log = logging.getLogger("mlip.train")


def initial_model(config: TrainConfig, train_set: FrameDataset, progress: bool = True) -> tuple[FacetConfig, dict]:
    """(model config, parameters) to start training from, with E0, neighbour count, scale and
    shift filled in from ``train_set`` where the config asks for it."""
    dtype = config.training.precision
    if config.finetune is not None:
        return _finetune_model(config, train_set, progress)
    m = config.model
    fixed = {} if m.atomic_energies == "fit" else _by_number(m.atomic_energies, "model.atomic_energies")
    stats = compute_statistics(train_set, m.r_cut, fixed_atomic_energies=fixed,
                               sample_frames=config.data.statistics_frames, seed=config.seed, progress=progress)
    log.info("training data: %s", stats.summary())
    species = stats.species if m.species is None else tuple(_by_number(dict.fromkeys(m.species, 0), "model.species"))
    missing = sorted(set(stats.species) - set(species))
    if missing:
        raise MlipError(f"training data has element(s) {', '.join(chemical_symbols[z] for z in missing)} "
                        f"not in model.species")
    e0 = dict(zip(stats.species, stats.atomic_energies)) | fixed
    model = preset(
        m.preset, species=species, r_cut=m.r_cut,
        atomic_energies=tuple(e0.get(z, 0.0) for z in species),
        avg_num_neighbors=_auto(m.avg_num_neighbors, stats.avg_num_neighbors),
        scale=_auto(m.scale, _scale(stats)),
        shift=_auto(m.shift, stats.shift),
        **m.overrides,
    )
    return model, init_params(model, config.seed, dtype)


def _finetune_model(config: TrainConfig, train_set: FrameDataset, progress: bool) -> tuple[FacetConfig, dict]:
    base = Potential.load(config.finetune.from_).astype(config.training.precision)
    old = base.config
    add = config.finetune.add_layers
    if add and old.mixing != "s2":
        raise MlipError(f"finetune.add_layers needs a model with mixing 's2'; {config.finetune.from_} uses "
                        f"{old.mixing!r}, whose blocks cannot start as the identity")
    known = dict(zip(old.species, old.atomic_energies or (0.0,) * len(old.species)))
    fixed = {} if config.finetune.refit_atomic_energies else known
    stats = compute_statistics(train_set, old.r_cut, fixed_atomic_energies=fixed,
                               sample_frames=config.data.statistics_frames, seed=config.seed, progress=progress)
    new = [z for z in stats.species if z not in old.species]
    if new:
        log.info("fine-tuning adds element(s) %s", ", ".join(chemical_symbols[z] for z in new))
    if add:
        log.info("fine-tuning grows the model from %d to %d interaction blocks (the new ones start as the identity)",
                 old.num_layers, old.num_layers + add)
    species = old.species + tuple(new)
    e0 = known | dict(zip(stats.species, stats.atomic_energies))
    model = dataclasses.replace(old, species=species, atomic_energies=tuple(e0[z] for z in species),
                                num_layers=old.num_layers + add)
    return model, _carry_params(base.params, model, old.num_layers, config.seed, config.training.precision)


#: Parameters of an appended block set to zero so that the block is the identity:
#: h + 0 (no message) and then h + linear_out(...) = h + 0 (FacetModel's residual updates).
_IDENTITY_ZEROS = ("/SO2Convolution_0/", "/S2Mixing_0/linear_out/")


def _carry_params(params, model: FacetConfig, saved_layers: int, seed: int, dtype: str):
    """Parameters of ``model`` from a saved model's ``params``: the species embedding grown to
    ``model.species`` (new rows freshly initialised), interaction blocks from ``saved_layers``
    on appended as the identity (`_IDENTITY_ZEROS` zero, the rest freshly initialised); every
    other parameter must already have its new shape."""
    fresh = flax.traverse_util.flatten_dict(init_params(model, seed, dtype), sep="/")
    old = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
    appended = tuple(f"params/interaction_{k}/" for k in range(saved_layers, model.num_layers))
    merged = {}
    for key, value in fresh.items():
        if key.startswith(appended):
            merged[key] = jnp.zeros_like(value) if any(part in key for part in _IDENTITY_ZEROS) else value
            continue
        if key not in old:
            raise MlipError(f"cannot fine-tune: the saved model has no parameter {key}")
        value_old = old[key]
        if value_old.shape == value.shape:
            merged[key] = value_old
        elif "species_embedding" in key and value_old.shape[1:] == value.shape[1:]:
            merged[key] = jnp.concatenate([value_old, value[len(value_old):]])
        else:
            raise MlipError(f"cannot fine-tune: parameter {key} changes shape {value_old.shape} -> {value.shape}")
    return flax.traverse_util.unflatten_dict(merged, sep="/")


def _scale(stats: DataStatistics) -> float:
    if stats.force_rms is None or stats.force_rms == 0.0:
        log.warning("no force labels: model scale set to 1 eV")
        return 1.0
    return stats.force_rms


def _auto(value, computed: float) -> float:
    return float(computed) if value == "auto" else float(value)


def _by_number(mapping: dict, where: str) -> dict[int, float]:
    out = {}
    for symbol, value in mapping.items():
        if symbol not in atomic_numbers:
            raise MlipError(f"config: {where}: unknown element {symbol!r}")
        out[atomic_numbers[symbol]] = float(value)
    return out


def describe_params(params) -> str:
    """Parameter paths and shapes, one per line (names for finetune.freeze)."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
    return "\n".join(f"{key.removeprefix('params/')}: {list(np.shape(v))}" for key, v in flat.items())
