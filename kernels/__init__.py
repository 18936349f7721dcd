"""Fused accelerator kernels (Pallas) for the model's hot path, each next to a pure-JAX
reference of exactly the same function (see README.md for the contract).

- `so2_message`: the edge chain of an interaction block, rotate into the edge frame -> SO(2)
  linear map -> rotate back (`so2_message_pallas`, `so2_message_reference`);
- `selection`: which of the two a model runs on a device, checked on first use.
"""

from kernels.selection import Implementation, KernelFallbackWarning, select
from kernels.so2_message import so2_message_pallas, so2_message_reference

__all__ = ["Implementation", "KernelFallbackWarning", "select", "so2_message_pallas", "so2_message_reference"]
