"""Training: ``train(load_config("config.yaml"))`` or ``mlip train config.yaml``.

config.py (the YAML schema), data.py (datasets and splits), statistics.py (E0, neighbour count,
scale, shift), model.py (fresh or fine-tuned starting model), batches.py (stacked micro-batches),
loss.py, step.py (the jitted data-parallel step), checkpoint.py, loop.py (the run).
"""

from mlip.train.config import TrainConfig, load_config
from mlip.train.loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "load_config", "train"]
