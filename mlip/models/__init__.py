"""Full potentials assembled from mlip.nn: a frozen config dataclass -> a flax module."""

from mlip.models.config import PRESETS, FacetConfig, preset
from mlip.models.facet import FacetModel

__all__ = ["FacetConfig", "FacetModel", "PRESETS", "preset"]
