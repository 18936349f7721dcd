"""Teachers: any ASE calculator that gives energy, forces and stress, named by a spec string.

    sevenn-0         SevenNet-0 (11Jul2024), MIT; weights ship in the ``sevenn`` wheel
                     (``pip install torch==2.13.0`` first, then ``pip install 'mlip-facet[teacher]'``).
                     Trained on MPtrj's uncorrected energies, like mlip's universal model.
    emt              ASE's EMT (Al, Cu, Ag, Au, Ni, Pd, Pt, H, C, N, O): a toy, for tests.
    lj               ASE's Lennard-Jones with one parameter set for every element: a toy, for tests.
    MODULE:FUNCTION  any importable factory returning an ASE calculator.

A teacher is rebuilt in each labelling process from its spec (calculators are not picklable).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
from typing import Callable

from ase.calculators.calculator import Calculator

from mlip.errors import MlipError

#: The energy convention of distilled labels: SevenNet-0 (and MACE-MP-0) learned MPtrj's raw
#: DFT energies; mixing in MP2020-corrected energies (CHGNet) would be silently wrong.
ENERGY_CONVENTION = "mptrj-uncorrected"


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A teacher's identity and how to build it.

    Attributes:
        spec: the string it was named by (rebuilds it in another process).
        name: e.g. "SevenNet-0 (11Jul2024)"; recorded in every frame it labels.
        version: the package version of the code that ran it.
        build: () -> ASE calculator.
    """

    spec: str
    name: str
    version: str
    build: Callable[[], Calculator]


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _sevenn() -> Calculator:
    try:
        import torch
        from sevenn.calculator import SevenNetCalculator
    except ImportError:
        raise MlipError("the sevenn-0 teacher needs SevenNet: pip install torch==2.13.0 && "
                        "pip install 'mlip-facet[teacher]'") from None
    # One labelling process per core: torch's own threads would fight over the same cores.
    torch.set_num_threads(1)
    return SevenNetCalculator("7net-0", device="cpu")


def _emt() -> Calculator:
    from ase.calculators.emt import EMT

    return EMT()


def _lj() -> Calculator:
    from ase.calculators.lj import LennardJones

    # Smooth at the cutoff, so forces stay the derivative of the energy.
    return LennardJones(sigma=2.0, epsilon=0.1, rc=5.0, smooth=True)


def get_teacher(spec: str) -> Teacher:
    """The teacher named by ``spec`` (see the module docstring); MlipError if unknown."""
    if spec == "sevenn-0":
        return Teacher(spec, "SevenNet-0 (11Jul2024)", f"sevenn {_version('sevenn')}", _sevenn)
    if spec == "emt":
        return Teacher(spec, "ASE EMT", f"ase {_version('ase')}", _emt)
    if spec == "lj":
        return Teacher(spec, "ASE Lennard-Jones (sigma 2, epsilon 0.1, rc 5)", f"ase {_version('ase')}", _lj)
    if ":" in spec:
        module_name, _, function = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), function)
        except (ImportError, AttributeError) as exc:
            raise MlipError(f"teacher {spec!r}: cannot import ({exc})") from None
        version = getattr(importlib.import_module(module_name.split(".")[0]), "__version__", "unknown")
        return Teacher(spec, spec, str(version), factory)
    raise MlipError(f"unknown teacher {spec!r}: use sevenn-0, emt, lj or MODULE:FUNCTION")
