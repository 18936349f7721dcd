"""`train(config)`: the training run, from data files to a saved `Potential`.

Output directory layout:
    config.yaml        the resolved config (every default filled in)
    train.log          what the run did (also on the console)
    metrics.jsonl/csv  one row per validation: epoch, step, lr, train loss, validation errors
    checkpoints/       ckpt-<step>.npz, the newest training.keep_checkpoints of them
    best.mlip          EMA parameters of the epoch with the lowest validation loss (within the
                       last loss stage, once it has begun)
    last.mlip          EMA parameters at the end
    test_metrics.json  errors of best.mlip on data.test (when given)

Resuming (``resume=True``, ``mlip train CONFIG --resume``) restores the newest checkpoint and
continues at the exact step it stopped: the data order of an epoch depends only on the seed
and the epoch, so the interrupted epoch is regenerated and its finished steps skipped. Ctrl-C
(SIGINT) finishes the current step, writes a checkpoint and stops.

Several processes (``jax.distributed``, one per host) run the same loop on one output_dir
that they all see (a shared filesystem). Process 0 alone writes into it (config, log,
metrics, checkpoints, models); the others only read, and check at start-up that they see
the same checkpoints as process 0. Every process computes the same losses and parameters
(replicated), so each takes the same decisions (best model, plateau, stop) without talking.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from ase.data import chemical_symbols
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from kernels.selection import resolve
from mlip.data.loader import FrameDataset
from mlip.errors import MlipError
from mlip.evaluate import Metrics, evaluate
from mlip.fileio import TEMP_PREFIX, atomic_write_bytes
from mlip.models.config import FacetConfig
from mlip.potential import Potential, check_dtype, init_params
from mlip.runtime import Runtime, release_compiled_programs_if_needed
from mlip.train.batches import StepBatches, prefetch
from mlip.train.checkpoint import (
    LoopState, latest_checkpoint, list_checkpoints, load_checkpoint, read_checkpoint_header, save_checkpoint,
)
from mlip.train.config import TrainConfig
from mlip.train.data import elements, group_weights, label_counts, open_frames, split
from mlip.train.loss import Terms
from mlip.train.model import describe_params, initial_model
from mlip.train.step import (
    batch_sharding, init_state, learning_rate_fn, make_mesh, make_optimizer, make_train_step,
    make_validation_step, replicate, trainable_labels,
)

log = logging.getLogger("mlip.train")

METRIC_COLUMNS = ("epoch", "step", "time_s", "lr", "train_loss", "valid_loss", "energy_mae", "energy_rmse",
                  "forces_mae", "forces_rmse", "stress_mae", "stress_rmse")


@dataclasses.dataclass
class TrainResult:
    """What `train` returns: the best potential, where it was written, its validation metrics
    (meV/atom, meV/Å, GPa) and the number of optimiser steps taken."""

    potential: Potential
    best_path: Path
    valid_metrics: dict
    steps: int


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    devices: Sequence | None = None,
    callbacks: Sequence[Callable[[int, dict], None]] = (),
) -> TrainResult:
    """Train a potential as ``config`` says (see the module docstring).

    ``devices``: the devices to train on (default: ``training.devices`` of the local ones).
    ``callbacks``: called as ``callback(step, {"loss", "lr", "epoch"})`` after every step;
    a callback raising KeyboardInterrupt stops the run like Ctrl-C (with a checkpoint).
    """
    check_dtype(config.training.precision)
    release_compiled_programs_if_needed()
    out = Path(config.output_dir)
    _check_processes_share(out)
    writer = jax.process_index() == 0
    _prepare_output(config, out, resume, writer)
    handler = _log_to_file(out / "train.log") if writer else None
    try:
        return _Run(config, out, resume, progress, devices, callbacks).run()
    finally:
        if handler is not None:
            logging.getLogger("mlip").removeHandler(handler)
            handler.close()


def _check_processes_share(out: Path) -> None:
    """With several processes: MlipError on every process unless all of them see the same
    newest checkpoint in ``out`` (none counts), so that all resume from one state, or all start
    afresh. Each process raises the same error, so none is left waiting for the others."""
    if jax.process_count() == 1:
        return
    newest = list_checkpoints(out / "checkpoints")[-1:]
    step = int(newest[0].stem.removeprefix("ckpt-")) if newest else -1
    steps = np.asarray(multihost_utils.process_allgather(np.int64(step))).ravel().tolist()
    if len(set(steps)) > 1:
        seen = ", ".join(f"process {i}: {'none' if s < 0 else f'step {s}'}" for i, s in enumerate(steps))
        raise MlipError(f"{out}: the processes see different newest checkpoints ({seen}); output_dir must be "
                        "one directory on a filesystem that every host shares")


def _prepare_output(config: TrainConfig, out: Path, resume: bool, writer: bool = True) -> None:
    """Check that ``out`` can take the run (fresh or resumed) and, if ``writer``, prepare it;
    other processes of a multi-process run only check."""
    saved = out / "config.yaml"
    if resume:
        if not list_checkpoints(out / "checkpoints"):
            raise MlipError(f"{out}: no checkpoint to resume from (the run stopped before its first one); "
                            "start it afresh without --resume")
        previous = TrainConfig.from_dict(yaml.safe_load(saved.read_text()), source=str(saved)).to_dict()
        current = config.to_dict()
        ignored = {"keep_checkpoints", "log_every", "kernel"}  # the same function either way
        changed = [f"{section}.{key}" for section, values in current.items() if isinstance(values, dict)
                   for key in values if key not in ignored and values[key] != (previous.get(section) or {}).get(key)]
        changed += [k for k, v in current.items() if not isinstance(v, dict) and v != previous.get(k)]
        if changed:
            raise MlipError(f"cannot resume {out}: the config differs from the run's in {', '.join(changed)}")
        return
    if list_checkpoints(out / "checkpoints"):
        raise MlipError(f"{out} already holds a run; resume it with --resume or choose another output_dir")
    _clear_unstarted_run(out, writer)
    if writer:
        out.mkdir(parents=True, exist_ok=True)
        config.save(saved)


#: What a run writes into its output_dir (see the module docstring).
RUN_FILES = ("config.yaml", "train.log", "metrics.jsonl", "metrics.csv", "checkpoints", "best.mlip",
             "best_metrics.json", "last.mlip", "test_metrics.json")


def _clear_unstarted_run(out: Path, writer: bool) -> None:
    """Remove what a run that never reached its first checkpoint (it failed or was stopped
    during start-up) left in ``out``, so that it can be started afresh. Anything that is not
    a run's file is left alone, and the directory refused: it is not an output_dir. Only the
    ``writer`` removes; every process checks (the writer's own files do not change the answer)."""
    if not out.exists():
        return
    foreign = sorted(p.name for p in out.iterdir() if p.name not in RUN_FILES and not p.name.startswith(TEMP_PREFIX))
    if foreign:
        raise MlipError(f"{out} holds files that are not a training run's ({', '.join(foreign[:3])}); "
                        "choose another output_dir")
    if not writer:
        return
    for path in out.iterdir():
        if path.name == "checkpoints":
            shutil.rmtree(path)
        else:
            path.unlink()
    log.info("%s: no checkpoint from an earlier start; starting afresh", out)


def _log_to_file(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("mlip")
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    return handler


class _Run:
    """One training run; the loop state lives here and in the checkpoints."""

    def __init__(self, config: TrainConfig, out: Path, resume: bool, progress: bool, devices, callbacks):
        self.config, self.out, self.progress, self.callbacks = config, out, progress, list(callbacks)
        self.writer = jax.process_index() == 0  # the one process that writes into ``out``
        t = config.training
        self.dtype = np.dtype(t.precision)
        self.devices = list(devices) if devices is not None else _pick_devices(t.devices)
        self.train_set, self.valid_set = self._datasets()
        d = config.data
        self.test_set = None if d.test is None else open_frames(d.test, d.read_options(), what="test")
        self.loop = LoopState()
        self.unchecked: list = []  # (step, loss on the device) not yet checked to be finite
        checkpoint = latest_checkpoint(out / "checkpoints") if resume else None
        if resume and checkpoint is None:
            raise MlipError(f"{out}: no readable checkpoint to resume from")
        if checkpoint is not None:
            self.model = FacetConfig.from_dict(read_checkpoint_header(checkpoint)[1])
            params = init_params(self.model, config.seed, t.precision)  # a template; restored below
        else:
            self.model, params = initial_model(config, self.train_set, progress)
        self._check_elements()
        self._check_labels()
        freeze = config.finetune.freeze if config.finetune else []
        self._check_freeze(params, freeze)
        mesh = make_mesh(self.devices)
        self.sharding = batch_sharding(mesh)
        # The kernel is decided for the devices the run trains on (kernels.selection.resolve).
        platform = self.devices[0].platform
        self.runtime = Runtime(kernel=resolve(t.kernel, platform), matmul_precision=t.matmul_precision)
        self.batches = StepBatches(
            self.train_set, self.model.r_cut, micro_batches=len(self.devices) * t.accumulate,
            max_nodes=config.data.max_nodes, max_edges=config.data.max_edges, max_graphs=config.data.max_graphs,
            shuffle=True, seed=config.seed, dtype=self.dtype, workers=config.data.workers,
            local=_local_micro_batches(self.devices, t.accumulate), weights=self._frame_weights(),
        )
        self.valid_batches = StepBatches(
            self.valid_set, self.model.r_cut, micro_batches=1, max_nodes=config.data.max_nodes,
            max_edges=config.data.max_edges, max_graphs=config.data.max_graphs, shuffle=False, seed=0, dtype=self.dtype,
            workers=config.data.workers,
        )
        # Schedule length; epochs may differ by a step or two (packing depends on the order),
        # so without max_steps the run ends by epochs and the schedule holds its final value.
        self.total_steps = t.max_steps or t.epochs * self.batches.steps_per_epoch(0)
        self.max_steps = t.max_steps or math.inf
        optimizer = make_optimizer(config.optimizer, params, freeze)
        self.train_step = make_train_step(self.model, optimizer, config.loss, learning_rate_fn(config.optimizer, self.total_steps),
                                          config.optimizer.ema_decay, mesh, self.runtime)
        self.validation_step = make_validation_step(self.model, config.loss, self.runtime, platform)
        self.state = init_state(params, optimizer)
        if checkpoint is not None:
            self.state, self.loop = load_checkpoint(checkpoint, self.state)
            log.info("resumed from %s at epoch %d, step %d", checkpoint, self.loop.epoch, self.loop.step)
        self.state = replicate(self.state, mesh)
        log.info("model: %d parameters, %s; %d device(s) x %d micro-batch(es) per step; %d steps per epoch",
                 sum(np.size(p) for p in jax.tree.leaves(params)), _model_line(self.model), len(self.devices),
                 t.accumulate, self.batches.steps_per_epoch(0))

    def _datasets(self) -> tuple[FrameDataset, FrameDataset]:
        d = self.config.data
        train_set = open_frames(d.train, d.read_options(), what="training")
        if d.valid is not None:
            return train_set, open_frames(d.valid, d.read_options(), what="validation")
        return split(train_set, d.valid_fraction, d.split_seed, d.valid_group)

    def _frame_weights(self) -> np.ndarray | None:
        """Each training frame's loss weight from data.group_weights (None: no weighting)."""
        d = self.config.data
        if d.weight_group is None:
            return None
        return group_weights(self.train_set, d.weight_group, d.group_weights)

    def _check_elements(self) -> None:
        """Every split's elements are the model's: the model would score an element it lacks
        as another one, silently (and steer the choice of best.mlip with it)."""
        d, known = self.config.data, set(self.model.species)
        for name, dataset in (("data.train", self.train_set), ("data.valid" if d.valid else "data.train", self.valid_set),
                              ("data.test", self.test_set)):
            unknown = sorted(elements(dataset) - known) if dataset is not None else []
            if unknown:
                raise MlipError(f"{name} has element(s) {', '.join(chemical_symbols[z] for z in unknown)} that the "
                                f"model does not have ({', '.join(self.model.species_symbols)}): add them to "
                                "model.species or leave those frames out")

    def _check_labels(self) -> None:
        """Frames may lack labels (no loss for them), but a label the loss weighs must be in
        some training frame: none means a wrong key, which would silently train on nothing."""
        counts, d = label_counts(self.train_set), self.config.data
        keys = {"energy": d.energy_key, "forces": d.forces_key, "stress": d.virials_key or d.stress_key}
        # A split's counts are its whole file's (read from the index, not the frames).
        log.info("training labels: %s in the training files (before any validation split)",
                 ", ".join(f"{n} {name}" for name, n in counts.items()))
        loss = self.config.loss
        for k, name in enumerate(("energy", "forces", "stress")):
            weighted = max(loss.weights_at(epoch)[k] for epoch in {0, *(s.epoch for s in loss.stages)}) > 0
            if weighted and keys[name] is not None and counts[name] == 0:
                raise MlipError(f"no training frame has a {name} label (key {keys[name]!r}): name the right "
                                f"data.{name}_key, or set loss.{name}_weight to 0")

    @staticmethod
    def _check_freeze(params, freeze: list[str]) -> None:
        labels = jax.tree.leaves(trainable_labels(params, freeze))
        unused = [p for p in freeze if not jax.tree.leaves(trainable_labels(params, [p])).count("frozen")]
        if unused:
            raise MlipError(f"finetune.freeze: no parameter starts with {unused}; parameters are:\n"
                            + describe_params(params))
        if freeze:
            log.info("freezing %d of %d parameter arrays", labels.count("frozen"), len(labels))

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> TrainResult:
        t = self.config.training
        interrupted = _SigintFlag()
        started = time.perf_counter() - self.loop.seconds
        try:
            with interrupted:
                while self.loop.epoch < t.epochs and self.loop.step < self.max_steps:
                    finished = self._epoch(interrupted)
                    if finished:
                        self._update(epoch=self.loop.epoch + 1, epoch_step=0)
                    self._update(seconds=time.perf_counter() - started)
                    last = self.loop.epoch >= t.epochs or self.loop.step >= self.max_steps
                    if last or (finished and self.loop.epoch % t.eval_every == 0):
                        self._validate()
                    if finished:
                        self._update(epoch_loss_sum=0.0, epoch_loss_steps=0)
                    self._checkpoint()
        except KeyboardInterrupt:
            self._update(seconds=time.perf_counter() - started)
            path = self._checkpoint() or "written by process 0"
            log.warning("interrupted at step %d; checkpoint %s; continue with --resume", self.loop.step, path)
            raise
        return self._finish()

    def _update(self, **changes) -> None:
        self.loop = self.loop._replace(**changes)

    def _epoch(self, interrupted: "_SigintFlag") -> bool:
        """Train from the current step of the current epoch; True if the epoch ran to its end
        (False: stopped at training.max_steps)."""
        t, epoch = self.config.training, self.loop.epoch
        weights = Terms(*(jnp.asarray(w, self.dtype) for w in self.config.loss.weights_at(epoch)))
        lr_factor = jnp.asarray(self.loop.lr_factor, self.dtype)
        steps = self.batches.steps_per_epoch(epoch)
        stream = prefetch(self.batches.epoch(epoch, self.loop.epoch_step), self._to_devices)
        bar = tqdm(total=steps, initial=self.loop.epoch_step, desc=f"epoch {epoch + 1}/{t.epochs}",
                   unit=" steps", disable=not self.progress, leave=False)
        with bar:
            for batch in stream:
                self.state, metrics = self.train_step(self.state, batch, weights, lr_factor)
                self._update(step=self.loop.step + 1, epoch_step=self.loop.epoch_step + 1)
                self.unchecked.append((self.loop.step, metrics["loss"]))
                bar.update()
                if self.loop.step % t.log_every == 0 or self.callbacks:
                    self._report(metrics, bar)
                if t.checkpoint_every and self.loop.step % t.checkpoint_every == 0:
                    self._checkpoint()
                if self._stop_requested(interrupted):
                    raise KeyboardInterrupt
                if self.loop.step >= self.max_steps:
                    break
        self._check_losses()
        loop = self.loop
        self.train_loss = loop.epoch_loss_sum / loop.epoch_loss_steps if loop.epoch_loss_steps else float("nan")
        return loop.epoch_step >= steps

    def _stop_requested(self, interrupted: "_SigintFlag") -> bool:
        """Whether to stop after this step. Several processes agree every training.log_every
        steps: a scheduler's signal reaches them at different steps, and one stopping alone
        would leave the others waiting in the next step's collectives."""
        if jax.process_count() == 1:
            return interrupted.is_set()
        if self.loop.step % self.config.training.log_every:
            return False
        return bool(np.any(multihost_utils.process_allgather(np.bool_(interrupted.is_set()))))

    def _check_losses(self) -> None:
        """Add the losses of the steps since the last check to the epoch's sum, or stop the run
        (MlipError) at the first step whose loss is not finite. Run before every checkpoint,
        log line and validation, so that no checkpoint or model holds parameters that a
        non-finite loss has updated: the last checkpoint is the last good state. (Once per
        step would make the host wait for every step.)"""
        steps, losses = zip(*self.unchecked) if self.unchecked else ((), ())
        losses = np.asarray(jax.device_get(list(losses)), np.float64)
        self.unchecked = []
        bad = np.flatnonzero(~np.isfinite(losses))
        if len(bad):
            last = list_checkpoints(self.out / "checkpoints")
            kept = f"; the last good checkpoint is {last[-1]}" if last else ""
            raise MlipError(f"training loss is {losses[bad[0]]} at step {steps[bad[0]]}: stopped{kept}; lower "
                            "optimizer.learning_rate or check the data")
        self._update(epoch_loss_sum=self.loop.epoch_loss_sum + float(losses.sum()),
                     epoch_loss_steps=self.loop.epoch_loss_steps + len(losses))

    def _to_devices(self, batch):
        """The stacked host batch as one global array per field, split over the devices (each
        process supplies the parts its own devices hold, so this also works across hosts)."""
        return jax.tree.map(
            lambda a: jax.make_array_from_callback(a.shape, self.sharding, lambda index: a[index]), batch
        )

    def _report(self, metrics: dict, bar) -> None:
        self._check_losses()
        loss, lr = float(metrics["loss"]), float(metrics["lr"])
        bar.set_postfix(loss=f"{loss:.4g}", lr=f"{lr:.2e}")
        for callback in self.callbacks:
            callback(self.loop.step, {"loss": loss, "lr": lr, "epoch": self.loop.epoch})

    def _validate(self) -> None:
        metrics, loss = self._validation_metrics(self.valid_batches)
        row = _metric_row(self.loop, self.train_loss, loss, metrics,
                          float(learning_rate_fn(self.config.optimizer, self.total_steps)(self.loop.step)) * self.loop.lr_factor)
        if self.writer:
            self._write_row(row)
        log.info("epoch %d step %d: train loss %.4g, valid loss %.4g, E MAE %s meV/atom, F MAE %s meV/Å, S MAE %s GPa",
                 row["epoch"], row["step"], row["train_loss"], loss, _f(row["energy_mae"]), _f(row["forces_mae"]), _f(row["stress_mae"]))
        if is_new_best(self.loop.epoch, loss, self.loop.best_epoch, self.loop.best_loss,
                       self.config.loss.last_stage_epoch):
            self._update(best_loss=loss, best_epoch=self.loop.epoch)
            if self.writer:
                self._potential().save(self.out / "best.mlip")
                best = {"epoch": self.loop.epoch, "step": self.loop.step, **metrics}
                atomic_write_bytes(self.out / "best_metrics.json", json.dumps(best, indent=1).encode())
        self._plateau(loss)

    def _plateau(self, loss: float) -> None:
        o = self.config.optimizer
        if o.schedule != "plateau" or self.loop.step < o.warmup_steps:
            return
        if self.loop.plateau_best is None or loss < self.loop.plateau_best:
            self._update(plateau_best=loss, plateau_epochs=0)
            return
        self._update(plateau_epochs=self.loop.plateau_epochs + 1)
        if self.loop.plateau_epochs >= o.plateau_patience:
            self._update(lr_factor=self.loop.lr_factor * o.plateau_factor, plateau_epochs=0)
            log.info("validation loss has not improved for %d epochs: learning rate x %g", o.plateau_patience, o.plateau_factor)

    def _validation_metrics(self, batches: StepBatches) -> tuple[dict, float]:
        """Metrics (meV/atom, meV/Å, GPa) and loss of the EMA model on ``batches``.

        The loss takes the weights of the last stage at every epoch: epochs stay comparable, and
        the best model is judged by the balance the run ends with (raising the energy weight
        late says that energy matters more than the early weights let on).
        """
        metrics, sums, counts = Metrics(), np.zeros(3), np.zeros(3)
        params = self.state.ema_params
        for stacked in batches.epoch(0):
            batch = jax.tree.map(lambda a: a[0], stacked)
            output, penalty, count = jax.device_get(self.validation_step(params, batch))
            metrics.update(batch, output)
            sums += np.asarray(penalty)
            counts += np.asarray(count)
        weights = np.asarray(self.config.loss.weights_at(self.config.training.epochs))
        loss = float(np.sum(weights * sums / np.maximum(counts, 1.0)))
        return metrics.to_dict(), loss

    def _write_row(self, row: dict) -> None:
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        csv_path = self.out / "metrics.csv"
        new = not csv_path.exists()
        with open(csv_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow(row)

    def _checkpoint(self) -> Path | None:
        """Write a checkpoint (process 0 only; None on the others). The others need not wait
        for it: they resume only from what process 0 wrote whole (an atomic rename), and
        `_check_processes_share` makes every process resume from the same one."""
        self._check_losses()
        if not self.writer:
            return None
        return save_checkpoint(self.out / "checkpoints", self.state, self.loop, self.model.to_dict(),
                               self.config.training.keep_checkpoints)

    def _potential(self) -> Potential:
        t = self.config.training
        return Potential(self.model, jax.device_get(self.state.ema_params), t.precision, kernel=t.kernel,
                         matmul_precision=t.matmul_precision)

    def _finish(self) -> TrainResult:
        best_path = self.out / "best.mlip"
        if self.writer:
            last = self._potential()
            last.save(self.out / "last.mlip")
            if not best_path.exists():
                last.save(best_path)
        if jax.process_count() > 1:  # the others read best.mlip once process 0 has written it
            multihost_utils.sync_global_devices("mlip train: final models written")
        best = Potential.load(best_path)
        valid = json.loads((self.out / "best_metrics.json").read_text()) if (self.out / "best_metrics.json").exists() else {}
        log.info("done: %d steps in %.0f s; best epoch %s -> %s", self.loop.step, self.loop.seconds,
                 self.loop.best_epoch, best_path)
        if self.test_set is not None and self.writer:
            test = self.test_set
            metrics = evaluate(best, (test[i] for i in range(len(test))), total=len(test), progress=self.progress)
            atomic_write_bytes(self.out / "test_metrics.json", json.dumps(metrics.to_dict(), indent=1).encode())
            log.info("test set (best model):\n%s", metrics.table())
        return TrainResult(best, best_path, valid, self.loop.step)


class _SigintFlag:
    """Within ``with``: Ctrl-C (SIGINT) or SIGTERM sets a flag (checked after each step) instead
    of raising at an arbitrary point, so the checkpoint holds a consistent state. A second
    signal raises. SIGTERM counts because batch schedulers and ``kill`` send it, and a shell's
    background jobs ignore SIGINT."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self._set = False
        self._previous = {}

    def is_set(self) -> bool:
        return self._set

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def _handle(self, signum, frame):
        if self._set:
            raise KeyboardInterrupt
        self._set = True
        log.warning(f"{signal.Signals(signum).name}: stopping after this step (press again to stop now, without a checkpoint)")


def is_new_best(epoch: int, loss: float, best_epoch: int | None, best_loss: float | None, last_stage: int) -> bool:
    """Whether the model after ``epoch`` finished epochs (validation ``loss``) replaces the best.

    Epochs > ``last_stage`` trained with the last stage's weights: a best found before the last
    stage began gives way to the first model after it, then the lowest loss wins.
    """
    if best_loss is None or (epoch > last_stage and best_epoch <= last_stage):
        return True
    return loss < best_loss


def _pick_devices(devices) -> list:
    if jax.process_count() > 1:  # multi-host (jax.distributed): every device of every host
        return jax.devices()
    local = jax.local_devices()
    if devices == "all":
        return local
    if devices > len(local):
        raise MlipError(f"training.devices = {devices} but only {len(local)} local device(s) are available")
    return local[:devices]


def _local_micro_batches(devices, accumulate: int) -> list[int]:
    """Positions of a step's micro-batches that land on this process's devices: the step's
    leading axis (devices x accumulate) is split over the devices in contiguous blocks
    (mlip.train.step.batch_sharding), and each process supplies only its own blocks."""
    me = jax.process_index()
    return [k for k in range(len(devices) * accumulate) if devices[k // accumulate].process_index == me]


def _metric_row(loop: LoopState, train_loss: float, valid_loss: float, metrics: dict, lr: float) -> dict:
    return {
        "epoch": loop.epoch, "step": loop.step, "time_s": round(loop.seconds, 1), "lr": lr,
        "train_loss": train_loss, "valid_loss": valid_loss,
        **{f"{name}_{kind}": metrics[name][kind] for name in ("energy", "forces", "stress") for kind in ("mae", "rmse")},
    }


def _model_line(model: FacetConfig) -> str:
    return (f"lmax {model.lmax}, {model.channels} channels, {model.num_layers} layers, r_cut {model.r_cut} Å, "
            f"{len(model.species)} species, avg neighbours {model.avg_num_neighbors:.2f}, scale {model.scale:.4f} eV")


def _f(value) -> str:
    return "-" if value is None else f"{value:.2f}"
