"""The bucket ladder: which padded shapes a batch may take.

XLA compiles one program per input shape, so a stream of structures of varying size must map
onto few shapes. Each of the three sizes (nodes, edges, graphs) is rounded up to the next rung
of a geometric ladder

    rung_k = round_up(minimum * growth**k, multiple),   k = 0, 1, 2, ...

optionally capped by ``maximum`` (the top rung is then exactly ``maximum``). With the default
growth of 1.5, at most a third of a padded batch is padding, and sizes spanning a factor F use
about log(F)/log(1.5) rungs: 16 -> 10,000 nodes is 17 rungs, while one MD or relaxation run of a
fixed atom count uses one or two (its edge count drifts across at most one rung boundary).

The padded node and graph counts always exceed the real ones by at least one: that spare
node and graph hold the padding (see mlip.data.graph).
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Ladder:
    """Geometric ladder of sizes for one dimension.

    Attributes:
        minimum: smallest rung.
        growth: ratio between consecutive rungs (> 1).
        multiple: every rung is a multiple of this (friendly to vector units).
        maximum: optional cap; sizes above it are an error, and the top rung is ``maximum``.
    """

    minimum: int = 16
    growth: float = 1.5
    multiple: int = 8
    maximum: int | None = None

    def __post_init__(self):
        if self.minimum < 1 or self.multiple < 1 or not self.growth > 1:
            raise ValueError(f"invalid ladder {self}: need minimum >= 1, multiple >= 1, growth > 1")

    def rungs(self, up_to: int) -> list[int]:
        """All rungs <= up_to (plus the first rung above it)."""
        out = []
        k = 0
        while not out or out[-1] < up_to:
            out.append(self._rung(k))
            k += 1
        return out

    def fit(self, size: int) -> int:
        """Smallest rung >= size."""
        if self.maximum is not None and size > self.maximum:
            raise ValueError(f"size {size} exceeds the ladder's maximum {self.maximum}")
        k = 0 if size <= self.minimum else max(0, int(math.log(size / self.minimum, self.growth)) - 1)
        while self._rung(k) < size:
            k += 1
        return self._rung(k)

    def _rung(self, k: int) -> int:
        value = self.multiple * math.ceil(self.minimum * self.growth**k / self.multiple - 1e-9)
        return value if self.maximum is None else min(value, self.maximum)


@dataclasses.dataclass(frozen=True)
class BucketLadder:
    """Ladders for (nodes, edges, graphs); ``shape_for`` picks the padded batch shape."""

    nodes: Ladder = Ladder(minimum=16)
    edges: Ladder = Ladder(minimum=128)
    graphs: Ladder = Ladder(minimum=2, growth=2.0, multiple=1)

    def shape_for(self, n_nodes: int, n_edges: int, n_graphs: int) -> tuple[int, int, int]:
        """Padded (nodes, edges, graphs) for a batch with these real counts.

        Nodes and graphs get one spare slot each for the padding (see mlip.data.graph).
        """
        return (
            self.nodes.fit(n_nodes + 1),
            self.edges.fit(max(n_edges, 1)),
            self.graphs.fit(n_graphs + 1),
        )

    @classmethod
    def for_budget(cls, max_nodes: int, max_edges: int, max_graphs: int, growth: float = 1.5):
        """A ladder capped at a batch budget: full batches all land on the top rung."""
        return cls(
            nodes=Ladder(minimum=min(16, max_nodes + 1), growth=growth, maximum=max_nodes + 1),
            edges=Ladder(minimum=min(128, max_edges), growth=growth, maximum=max(max_edges, 1)),
            graphs=Ladder(minimum=2, growth=2.0, multiple=1, maximum=max_graphs + 1),
        )
