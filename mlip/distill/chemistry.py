"""The chemistry that seed generation draws from: MPtrj's 89 elements, their common oxidation
states (for charge-balanced substitutions) and drawing weights from real data."""

from __future__ import annotations

import collections
from typing import Iterable

import ase
import numpy as np
from ase.data import chemical_symbols, covalent_radii
from ase.neighborlist import neighbor_list

#: Atomic numbers of the 89 elements of MPtrj (and of SevenNet-0 / MACE-MP-0): H..Bi, Ac..Pu.
MPTRJ_NUMBERS: tuple[int, ...] = tuple(range(1, 84)) + tuple(range(89, 95))
MPTRJ_ELEMENTS: tuple[str, ...] = tuple(chemical_symbols[z] for z in MPTRJ_NUMBERS)

#: Common oxidation states (pymatgen's ``Element.common_oxidation_states``, MIT), for the
#: charge balance of prototype substitutions. Noble gases He, Ne, Ar have none.
OXIDATION_STATES: dict[str, tuple[int, ...]] = {
    "H": (-1, 1), "He": (), "Li": (1,), "Be": (2,), "B": (3,), "C": (-4, 4), "N": (-3, 3, 5),
    "O": (-2,), "F": (-1,), "Ne": (), "Na": (1,), "Mg": (2,), "Al": (3,), "Si": (-4, 4),
    "P": (-3, 3, 5), "S": (-2, 2, 4, 6), "Cl": (-1, 1, 3, 5, 7), "Ar": (), "K": (1,),
    "Ca": (2,), "Sc": (3,), "Ti": (4,), "V": (5,), "Cr": (3, 6), "Mn": (2, 4, 7),
    "Fe": (2, 3), "Co": (2, 3), "Ni": (2,), "Cu": (2,), "Zn": (2,), "Ga": (3,),
    "Ge": (-4, 2, 4), "As": (-3, 3, 5), "Se": (-2, 2, 4, 6), "Br": (-1, 1, 3, 5), "Kr": (2,),
    "Rb": (1,), "Sr": (2,), "Y": (3,), "Zr": (4,), "Nb": (5,), "Mo": (4, 6), "Tc": (4, 7),
    "Ru": (3, 4), "Rh": (3,), "Pd": (2, 4), "Ag": (1,), "Cd": (2,), "In": (3,),
    "Sn": (-4, 2, 4), "Sb": (-3, 3, 5), "Te": (-2, 2, 4, 6), "I": (-1, 1, 3, 5, 7),
    "Xe": (2, 4, 6), "Cs": (1,), "Ba": (2,), "La": (3,), "Ce": (3, 4), "Pr": (3,), "Nd": (3,),
    "Pm": (3,), "Sm": (3,), "Eu": (2, 3), "Gd": (3,), "Tb": (3,), "Dy": (3,), "Ho": (3,),
    "Er": (3,), "Tm": (3,), "Yb": (3,), "Lu": (3,), "Hf": (4,), "Ta": (5,), "W": (4, 6),
    "Re": (4, 7), "Os": (4,), "Ir": (3, 4), "Pt": (2, 4), "Au": (3,), "Hg": (1, 2),
    "Tl": (1, 3), "Pb": (2, 4), "Bi": (3,), "Ac": (3,), "Th": (4,), "Pa": (5,), "U": (6,),
    "Np": (5,), "Pu": (4,),
}

#: Common anion states worth substituting (halides, chalcogenides, pnictides, hydride, ...).
ANION_STATES: dict[str, int] = {
    "F": -1, "Cl": -1, "Br": -1, "I": -1, "H": -1, "O": -2, "S": -2, "Se": -2, "Te": -2,
    "N": -3, "P": -3, "As": -3, "Sb": -3, "C": -4, "Si": -4, "Ge": -4,
}


def cations_with_charge(charge: int) -> list[str]:
    """Elements with ``+charge`` among their common oxidation states."""
    return [symbol for symbol in MPTRJ_ELEMENTS if charge in OXIDATION_STATES[symbol]]


def element_weights(
    frames_elements: Iterable[Iterable[int]], *, floor: float = 0.2
) -> np.ndarray:
    """Drawing weights over `MPTRJ_ELEMENTS` from real data, with a floor so every element is
    drawn.

    Args:
        frames_elements: the atomic numbers of each real frame (e.g. MPtrj samples); an
            element's count is the number of frames it appears in, as for MPtrj's statistics.
        floor: every element gets at least ``floor`` times the mean count.

    Returns:
        float64 [89], summing to one, in the order of `MPTRJ_ELEMENTS`.
    """
    counts = collections.Counter()
    for numbers in frames_elements:
        counts.update(set(int(z) for z in numbers))
    raw = np.array([counts.get(z, 0) for z in MPTRJ_NUMBERS], np.float64)
    mean = raw.mean() if raw.sum() > 0 else 1.0
    weights = np.maximum(raw, floor * mean)
    return weights / weights.sum()


def min_bond_ratio(atoms: ase.Atoms, within: float = 1.0) -> float:
    """The smallest pair distance of ``atoms`` divided by that pair's covalent bond length
    (sum of ASE's covalent radii), over pairs closer than ``within`` bond lengths; inf if none."""
    radii = covalent_radii[atoms.numbers]
    i, j, d = neighbor_list("ijd", atoms, within * 2 * radii.max())
    ratios = d / (radii[i] + radii[j])
    return float(ratios.min()) if len(ratios) else float("inf")
