"""mlip: machine-learned interatomic potentials in JAX.

    mlip.Potential    a model's config + parameters; energy, forces and stress (mlip.potential)
    mlip.Calculator   the ASE calculator (mlip.calculator)
    mlip.runtime      runtime choices: matmul precision, kernel, compilation cache
    mlip.data         readers, neighbour lists, padded graph batches, loader, shards
    mlip.sim          relaxation and MD: batched on the device, or one structure through ASE
"""

__version__ = "0.1.0"

from mlip.calculator import Calculator  # noqa: E402
from mlip.potential import Potential  # noqa: E402
from mlip import runtime, sim  # noqa: E402  (after Potential: mlip.sim builds on it)

__all__ = ["Calculator", "Potential", "runtime", "sim", "__version__"]
