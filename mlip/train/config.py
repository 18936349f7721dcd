"""`TrainConfig`: every choice of a training run, read from YAML, validated, saved with the run.

A config file has the sections below (every key optional except ``data.train``; unknown keys
are errors, so a typo never silently falls back to a default)::

    seed: 0
    output_dir: runs/si
    data:     {train, valid, valid_fraction, test, format, energy_key, ..., max_nodes, ...}
    model:    {preset, r_cut, species, overrides, atomic_energies, avg_num_neighbors, ...}
    finetune: {from, freeze, refit_atomic_energies, add_layers}  (optional)
    loss:     {kind, huber_delta, energy_weight, forces_weight, stress_weight, stages}
    optimizer: {learning_rate, schedule, warmup_steps, weight_decay, clip_norm, ema_decay, ...}
    training: {epochs, max_steps, precision, accumulate, devices, keep_checkpoints, ...}

`load_config` reads a file; `TrainConfig.from_dict` / `to_dict` convert, and the resolved
config (with every default filled in) is written to ``output_dir/config.yaml``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from mlip.errors import MlipError


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the data is and how it is read and batched.

    Attributes:
        train: training data: a file any mlip reader accepts, or a directory written by
            ``mlip convert`` (streamed with constant memory); or a list of them.
        valid: validation data; None splits ``valid_fraction`` off ``train`` at random
            (seeded by ``split_seed``, so a resumed run sees the same split).
        valid_group: a ``Frame.info`` key ("seed_id" for `mlip label` output) whose frames
            stay together on one side of that split (None: frame by frame).
        weight_group, group_weights: loss weights by group, like MACE's
            ``config_type_weights``: a training frame whose ``info[weight_group]`` is a key of
            ``group_weights`` has its energy, force and stress terms multiplied by that weight
            (others: 1). E.g. ``weight_group: group``, ``group_weights: {Surface: 4.0}`` for
            the mlearn files. Validation and test errors stay unweighted.
        test: optional test data, evaluated with the best model at the end.
        format, energy_key, forces_key, stress_key, virials_key, mptrj_energy, on_error,
            min_distance, close_atoms: reader options (see mlip.data.readers.read_frames).
        max_nodes, max_edges, max_graphs: per-batch budgets (real atoms, directed edges,
            structures) of one micro-batch on one device; batches are padded to a small ladder
            of shapes below these, so they bound both memory and the number of compilations.
        statistics_frames: training frames sampled for the average neighbour count and the
            force RMS (E0 and the energy shift always use every training frame).
        workers: processes that build neighbour lists and batches ahead of the step (0: one
            background thread). The steps do not depend on it.
    """

    train: Union[str, list[str]] = ""
    valid: Union[str, list[str], None] = None
    valid_fraction: float = 0.1
    split_seed: int = 0
    valid_group: Union[str, None] = None
    weight_group: Union[str, None] = None
    group_weights: dict = dataclasses.field(default_factory=dict)
    test: Union[str, list[str], None] = None
    format: Union[str, None] = None
    energy_key: Union[str, None] = "energy"
    forces_key: Union[str, None] = "forces"
    stress_key: Union[str, None] = "stress"
    virials_key: Union[str, None] = None
    mptrj_energy: Union[str, None] = None
    on_error: str = "raise"
    min_distance: float = 0.5
    close_atoms: str = "error"
    max_nodes: int = 512
    max_edges: int = 16384
    max_graphs: int = 32
    statistics_frames: int = 5000
    workers: int = 0

    def __post_init__(self):
        if not self.train:
            raise MlipError("config: data.train is required (a data file or converted directory)")
        if self.valid is None and not 0.0 < self.valid_fraction < 1.0:
            raise MlipError(f"config: data.valid_fraction must be in (0, 1), got {self.valid_fraction}")
        if min(self.max_nodes, self.max_edges, self.max_graphs) < 1:
            raise MlipError("config: data.max_nodes, max_edges and max_graphs must be positive")
        _require(self.workers >= 0, f"data.workers must be >= 0, got {self.workers}")
        _require(self.statistics_frames >= 1, f"data.statistics_frames must be >= 1, got {self.statistics_frames}")
        _require(self.split_seed >= 0, f"data.split_seed must be >= 0, got {self.split_seed}")
        _require(self.min_distance >= 0, f"data.min_distance must be >= 0 Å, got {self.min_distance}")
        _require((self.weight_group is None) == (not self.group_weights),
                 "data.weight_group (a Frame.info key) and data.group_weights ({value: weight}) go together")
        for group, weight in self.group_weights.items():
            number = _float(weight)
            _require(number is not None and math.isfinite(number) and number >= 0,
                     f"data.group_weights.{group} must be a finite number >= 0, got {weight!r}")
        _choice("data.on_error", self.on_error, ("raise", "skip"))
        _choice("data.close_atoms", self.close_atoms, ("error", "warn", "ignore"))

    def read_options(self) -> dict[str, Any]:
        """Keyword arguments for mlip.data.readers.read_frames."""
        names = ("format", "energy_key", "forces_key", "stress_key", "virials_key", "mptrj_energy",
                 "on_error", "min_distance", "close_atoms")
        return {name: getattr(self, name) for name in names}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The model to train from scratch (ignored by fine-tuning, which keeps its model's config).

    Attributes:
        preset: "small" or "medium" (mlip.models.config.PRESETS).
        r_cut: cutoff, Å.
        species: element symbols the model knows; None takes every element in the training data.
        overrides: FacetConfig fields that replace the preset's (e.g. {channels: 32}).
        atomic_energies: "fit" (least squares on the training set) or {symbol: E0 in eV}.
        avg_num_neighbors, scale, shift: "auto" (from the training data: mean edges per atom,
            RMS force component in eV/Å, mean per-atom energy after E0 in eV) or a number.
    """

    preset: str = "small"
    r_cut: float = 5.0
    species: Union[list[str], None] = None
    overrides: dict = dataclasses.field(default_factory=dict)
    atomic_energies: Union[str, dict] = "fit"
    avg_num_neighbors: Union[str, float] = "auto"
    scale: Union[str, float] = "auto"
    shift: Union[str, float] = "auto"

    def __post_init__(self):
        from mlip.models.config import PRESETS

        _choice("model.preset", self.preset, tuple(PRESETS))
        _require(self.r_cut > 0, f"model.r_cut must be positive (Å), got {self.r_cut}")
        _check_overrides(self.overrides, self.preset)
        if isinstance(self.atomic_energies, str) and self.atomic_energies != "fit":
            raise MlipError(f"config: model.atomic_energies must be 'fit' or a mapping, got {self.atomic_energies!r}")
        for name in ("avg_num_neighbors", "scale", "shift"):
            value = getattr(self, name)
            if isinstance(value, str) and value != "auto":
                raise MlipError(f"config: model.{name} must be 'auto' or a number, got {value!r}")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Start from a saved potential.

    Attributes:
        from_: path of a Potential file (key ``from`` in YAML).
        freeze: parameter path prefixes kept fixed, e.g. ["species_embedding", "interaction_0"]
            (see ``mlip create`` output or Potential.params for names).
        refit_atomic_energies: refit every E0 by least squares on the new data (e.g. after a
            change of DFT settings); otherwise only elements new to the model get a fitted E0.
        add_layers: interaction blocks appended after the saved model's last one. Each starts
            as the identity (its convolution weights and mixing output are zero), so the grown
            model computes exactly the saved model's energies at step 0 and training adds
            depth without losing what the saved model learned. Needs ``mixing: s2``.
    """

    from_: str = ""
    freeze: list[str] = dataclasses.field(default_factory=list)
    refit_atomic_energies: bool = False
    add_layers: int = 0

    def __post_init__(self):
        if not self.from_:
            raise MlipError("config: finetune.from is required (a saved potential file)")
        _require(self.add_layers >= 0, f"finetune.add_layers must be >= 0, got {self.add_layers}")


@dataclasses.dataclass(frozen=True)
class LossStage:
    """From ``epoch`` on (0-based), the loss weights become these (None keeps the previous)."""

    epoch: int = 0
    energy_weight: Union[float, None] = None
    forces_weight: Union[float, None] = None
    stress_weight: Union[float, None] = None


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Weighted sum of per-atom energy, force and stress errors.

    energy: ((E - E_ref) / n_atoms)^2 averaged over labelled structures, (eV/atom)^2;
    forces: (F - F_ref)^2 averaged over components of labelled atoms, (eV/Å)^2;
    stress: (σ - σ_ref)^2 averaged over components of labelled periodic structures, (eV/Å^3)^2.
    ``kind`` "huber" replaces x^2 by optax's Huber loss with ``huber_delta`` (in each term's
    unit). ``stages`` change the weights at given epochs (e.g. raise energy late, as MACE does);
    validation loss always uses the last stage's weights, so epochs compare, and once the last
    stage has begun the best model is chosen among its epochs only (as MACE does for its stage
    two): the run ends with the balance the user asked for.
    """

    kind: str = "mse"
    huber_delta: float = 0.01
    energy_weight: float = 1.0
    forces_weight: float = 10.0
    stress_weight: float = 0.0
    stages: list[LossStage] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        if self.kind not in ("mse", "huber"):
            raise MlipError(f"config: loss.kind must be 'mse' or 'huber', got {self.kind!r}")
        if min(self.energy_weight, self.forces_weight, self.stress_weight) < 0:
            raise MlipError("config: loss weights must be non-negative")

    @property
    def last_stage_epoch(self) -> int:
        """0-based epoch from which the last weights apply (0 without stages)."""
        return max((stage.epoch for stage in self.stages), default=0)

    def weights_at(self, epoch: int) -> tuple[float, float, float]:
        """(energy, forces, stress) weights in effect at ``epoch``."""
        weights = [self.energy_weight, self.forces_weight, self.stress_weight]
        for stage in sorted(self.stages, key=lambda s: s.epoch):
            if stage.epoch <= epoch:
                for k, value in enumerate((stage.energy_weight, stage.forces_weight, stage.stress_weight)):
                    if value is not None:
                        weights[k] = float(value)
        return tuple(weights)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with gradient clipping, a learning-rate schedule and an EMA of the parameters.

    Attributes:
        learning_rate: peak learning rate.
        schedule: "cosine" (linear warmup, then cosine decay to min_lr_ratio x peak at the
            last step), "plateau" (warmup, then x plateau_factor whenever the validation loss
            has not improved for plateau_patience epochs) or "constant" (after warmup).
        weight_decay: decoupled weight decay of AdamW (not applied to biases and embeddings).
        clip_norm: global gradient norm clip (None: off).
        ema_decay: decay of the parameter EMA used for validation and the saved model
            (None: no EMA); early steps use min(ema_decay, (1 + t) / (10 + t)).
    """

    learning_rate: float = 0.005
    schedule: str = "cosine"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.01
    plateau_patience: int = 5
    plateau_factor: float = 0.5
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    clip_norm: Union[float, None] = 10.0
    ema_decay: Union[float, None] = 0.99

    def __post_init__(self):
        if self.schedule not in ("cosine", "plateau", "constant"):
            raise MlipError(f"config: optimizer.schedule must be cosine, plateau or constant, got {self.schedule!r}")
        if self.learning_rate <= 0:
            raise MlipError("config: optimizer.learning_rate must be positive")
        _require(self.warmup_steps >= 0, f"optimizer.warmup_steps must be >= 0, got {self.warmup_steps}")
        _require(self.plateau_patience >= 1, f"optimizer.plateau_patience must be >= 1, got {self.plateau_patience}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise MlipError(f"config: optimizer.ema_decay must be in (0, 1) or null, got {self.ema_decay}")


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """How long and where to train.

    Attributes:
        epochs: passes over the training data.
        max_steps: stop after this many optimiser steps (None: run all epochs); the cosine
            schedule spans min(epochs x steps per epoch, max_steps).
        precision: "float32" or "float64" (parameters and arithmetic).
        matmul_precision: of float32 matmuls, as everywhere else (mlip.runtime): "highest"
            (full float32, default), "high" or "default" (TF32 on GPUs: faster, less exact).
        kernel: the edge chain (mlip.runtime): "auto" (the fused Pallas kernel when the
            training devices are GPUs), "reference" or "pallas". Not saved with the model.
        devices: local devices for data parallelism ("all" or a count).
        accumulate: micro-batches per device per step (gradient accumulation).
        keep_checkpoints: how many recent checkpoints to keep.
        checkpoint_every: also checkpoint every this many steps (None: at epoch ends only).
        eval_every: validate every this many epochs.
        log_every: steps between progress-bar/log updates of the training loss.
    """

    epochs: int = 100
    max_steps: Union[int, None] = None
    precision: str = "float32"
    matmul_precision: str = "highest"
    kernel: str = "auto"
    devices: Union[str, int] = "all"
    accumulate: int = 1
    keep_checkpoints: int = 3
    checkpoint_every: Union[int, None] = None
    eval_every: int = 1
    log_every: int = 10

    def __post_init__(self):
        if self.precision not in ("float32", "float64"):
            raise MlipError(f"config: training.precision must be float32 or float64, got {self.precision!r}")
        from kernels.selection import CHOICES
        from mlip.runtime import MATMUL_PRECISIONS

        _choice("training.matmul_precision", self.matmul_precision, MATMUL_PRECISIONS)
        _choice("training.kernel", self.kernel, CHOICES)
        if self.epochs < 1 or self.accumulate < 1 or self.keep_checkpoints < 1 or self.eval_every < 1:
            raise MlipError("config: training.epochs, accumulate, keep_checkpoints, eval_every must be >= 1")
        if not (self.devices == "all" or (isinstance(self.devices, int) and self.devices >= 1)):
            raise MlipError(f"config: training.devices must be 'all' or a positive count, got {self.devices!r}")
        _require(self.log_every >= 1, f"training.log_every must be >= 1, got {self.log_every}")
        for name in ("max_steps", "checkpoint_every"):
            value = getattr(self, name)
            _require(value is None or value >= 1, f"training.{name} must be >= 1 or null (no limit), got {value}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A whole training run (see the module docstring for the YAML layout)."""

    data: DataConfig
    output_dir: str = "runs/mlip"
    seed: int = 0
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    finetune: Union[FinetuneConfig, None] = None
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    training: LoopConfig = dataclasses.field(default_factory=LoopConfig)

    def __post_init__(self):
        _require(self.seed >= 0, f"seed must be >= 0, got {self.seed}")

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> "TrainConfig":
        """Build from plain values (as read from YAML); unknown keys and wrong types raise
        MlipError naming the key."""
        return _build(cls, values, source)

    def to_dict(self) -> dict:
        return _plain(self)

    def save(self, path) -> None:
        from mlip.fileio import atomic_write_bytes

        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        atomic_write_bytes(Path(path), text.encode())


def load_config(path, overrides: dict | None = None) -> TrainConfig:
    """Read a YAML training config (``overrides``: nested values that replace the file's)."""
    path = Path(path)
    if not path.is_file():
        raise MlipError(f"{path}: no such config file")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise MlipError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(values, dict):
        raise MlipError(f"{path}: a training config must be a mapping of sections")
    values = _merge(values, overrides or {})
    return TrainConfig.from_dict(values, source=str(path))


def _merge(base: dict, overrides: dict) -> dict:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _require(condition: bool, problem: str) -> None:
    if not condition:
        raise MlipError(f"config: {problem}")


def _choice(key: str, value, choices: tuple) -> None:
    _require(value in choices, f"{key} must be one of {', '.join(map(str, choices))}, got {value!r}")


#: FacetConfig fields that model.overrides may not set: the model section sets them, or the data.
_NOT_OVERRIDES = ("species", "r_cut", "atomic_energies", "avg_num_neighbors", "scale", "shift")


def _check_overrides(overrides: dict, preset: str) -> None:
    """model.overrides against FacetConfig: each key must be one of its fields (a typo is named,
    with the closest field and every valid one), each value of the field's type, and together
    with the preset they must make a valid FacetConfig (its own checks, e.g. mmax <= lmax),
    all before any data is read. Runtime choices (the kernel) belong to the training section."""
    import difflib

    from mlip.models.config import RUNTIME_KEYS, FacetConfig, preset as build

    hints = typing.get_type_hints(FacetConfig)
    known = sorted(set(hints) - set(_NOT_OVERRIDES))
    for key, value in overrides.items():
        _require(key not in _NOT_OVERRIDES, f"model.overrides.{key}: set model.{key} instead")
        _require(key not in RUNTIME_KEYS, f"model.overrides.{key}: a runtime choice, not architecture: "
                                          f"set training.{key} instead")
        if key not in hints:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise MlipError(f"config: model.overrides: unknown FacetConfig field {key!r} ({hint}valid: "
                            f"{', '.join(known)})")
        overrides[key] = _convert(hints[key], value, f"config: model.overrides.{key}")
    try:
        build(preset, species=[1], **overrides)
    except MlipError as exc:
        raise MlipError(f"config: model.overrides: {exc}") from None


# YAML names that are Python keywords.
_RENAMED = {"from": "from_"}


def _build(cls, values, where: str):
    if not isinstance(values, dict):
        raise MlipError(f"{where}: expected a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        name = _RENAMED.get(key, key)
        if name not in fields:
            known = sorted(k for k in (f.rstrip("_") for f in fields))
            raise MlipError(f"{where}: unknown key {key!r} (known: {', '.join(known)})")
        kwargs[name] = _convert(hints[name], value, f"{where}.{key}")
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise MlipError(f"{where}: {exc}") from None


def _convert(hint, value, where: str):
    """Check ``value`` against the type ``hint`` (recursing into dataclasses and lists)."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = [o for o in typing.get_args(hint) if o is not type(None)]
        if value is None and len(options) < len(typing.get_args(hint)):
            return None
        if len(options) == 1:  # Optional[X]: X's own, more specific, error
            return _convert(options[0], value, where)
        for option in options:
            try:
                return _convert(option, value, where)
            except MlipError:
                pass
        raise MlipError(f"{where}: {value!r} is none of the accepted types ({_describe(hint)})")
    if hint is type(None):
        if value is None:
            return None
    elif dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    elif origin is list:
        if isinstance(value, list):
            (item,) = typing.get_args(hint)
            return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    elif hint is dict:
        if isinstance(value, dict):
            return dict(value)
    elif hint is float:
        number = _float(value)
        if number is not None:
            if not math.isfinite(number):
                raise MlipError(f"{where}: expected a finite number, got {value!r}")
            return number
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, hint):
        return value
    raise MlipError(f"{where}: expected {_describe(hint)}, got {value!r}")


def _float(value) -> float | None:
    """``value`` as a float: a number, or a string that spells one (YAML 1.1 reads 1e-3,
    without a dot, as the string "1e-3"); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _describe(hint) -> str:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


def _plain(value):
    if dataclasses.is_dataclass(value):
        return {
            {v: k for k, v in _RENAMED.items()}.get(f.name, f.name): _plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
        }
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
