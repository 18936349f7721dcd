"""mlip: machine-learned interatomic potentials in JAX.

Public entry points grow with the project; today they are the data layer in :mod:`mlip.data`
(readers, neighbour lists, padded graph batches, the packing loader and sharded datasets).
"""

__version__ = "0.1.0"
