"""The MACE model the benchmarks compare with (shared by mace_timing.py and mace_md.py).

Random weights, architecture of MACE-MP-0 "small", the 2023-12-10-mace-128-L0_energy run of
the mace-mp repository (or of "medium": hidden irreps 128x0e+128x1o, the rest alike): ScaleShiftMACE, hidden irreps 128x0e, max_ell 3, correlation 3,
2 interactions, RealAgnosticResidualInteractionBlock first and after, radial MLP [64, 64, 64],
MLP_irreps 16x0e, SiLU gate, polynomial cutoff 5; cutoff and Bessel count as given.

Import this after setting the thread environment variables (it imports torch). It also lets
e3nn 0.4.4 load its packaged constants: e3nn reads them with ``torch.load``, whose
weights_only default (torch >= 2.6) rejects the ``slice`` objects in that file.
"""

from __future__ import annotations

import numpy as np
import torch

torch.serialization.add_safe_globals([slice])

from e3nn import o3  # noqa: E402
from mace import modules  # noqa: E402

MP0_ELEMENTS = list(range(1, 90))  # H..Ac, the z table of MACE-MP-0
TWO_ELEMENTS = [14, 29]  # Si, Cu
AVG_NUM_NEIGHBORS = 30.0  # a constant normaliser; it does not change the cost


#: hidden irreps of MACE-MP-0 "small" and "medium" (2023-12-03-mace-128-L1_epoch-199); the
#: rest of the architecture is the same in both.
HIDDEN_IRREPS = {"small": "128x0e", "medium": "128x0e+128x1o"}


def build_model(elements: list[int], r_max: float, num_bessel: int, size: str = "small") -> torch.nn.Module:
    """A MACE-MP-0-small-like (``size`` "small") or -medium-like ScaleShiftMACE over
    ``elements`` (atomic numbers), in eval mode, with torch's current default dtype and random
    generator."""
    interaction = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    model = modules.ScaleShiftMACE(
        r_max=r_max,
        num_bessel=num_bessel,
        num_polynomial_cutoff=5,
        max_ell=3,
        interaction_cls=interaction,
        interaction_cls_first=interaction,
        num_interactions=2,
        num_elements=len(elements),
        hidden_irreps=o3.Irreps(HIDDEN_IRREPS[size]),
        MLP_irreps=o3.Irreps("16x0e"),
        atomic_energies=np.zeros(len(elements)),
        avg_num_neighbors=AVG_NUM_NEIGHBORS,
        atomic_numbers=elements,
        correlation=3,
        gate=torch.nn.functional.silu,
        radial_MLP=[64, 64, 64],
        radial_type="bessel",
        atomic_inter_scale=1.0,
        atomic_inter_shift=0.0,
    )
    return model.eval()
