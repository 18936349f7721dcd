"""Prototype crystals with charge-balanced element substitutions.

Each prototype is a builder ``(species, bond) -> ase.Atoms`` (primitive cell) together with its
formula, written as a cation count and an anion count (``AmXn``: charge balance is
``m * q_A = n * |q_X|``). Lattice parameters come from the sum of covalent radii (``bond``, Å,
the nearest cation-anion or atom-atom distance); the teacher's relaxation finds the real ones,
so the guess only has to be in the right basin.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import ase
import numpy as np
from ase.build import bulk
from ase.data import atomic_numbers, covalent_radii
from ase.spacegroup import crystal

from mlip.distill.chemistry import ANION_STATES, MPTRJ_ELEMENTS, cations_with_charge


@dataclasses.dataclass(frozen=True)
class Prototype:
    """A structure type.

    Attributes:
        name: e.g. "rocksalt".
        n_cation, n_anion: formula AmXn (n_anion = 0 for elemental prototypes).
        build: (species, bond length Å) -> primitive ase.Atoms; ``species`` is (A,) or (A, X).
    """

    name: str
    n_cation: int
    n_anion: int
    build: Callable[[tuple[str, ...], float], ase.Atoms]


def _rutile(species, d):
    a, c = 4.594 * d / 1.95, 2.959 * d / 1.95  # TiO2, d(Ti-O) = 1.95 Å
    return crystal(species, [(0, 0, 0), (0.305, 0.305, 0)], spacegroup=136,
                   cellpar=[a, a, c, 90, 90, 90])


def _perovskite(species, d):
    a_site, b_site, x = species
    return crystal([a_site, b_site, x], [(0.5, 0.5, 0.5), (0, 0, 0), (0.5, 0, 0)],
                   spacegroup=221, cellpar=[2 * d] * 3 + [90] * 3)


def _spinel(species, d):
    a_site, b_site, x = species
    a = 8.08 * d / 1.93  # MgAl2O4, d(Al-O) = 1.93 Å; origin choice 1
    return crystal([a_site, b_site, x], [(0, 0, 0), (0.625, 0.625, 0.625), (0.387, 0.387, 0.387)],
                   spacegroup=227, cellpar=[a] * 3 + [90] * 3, primitive_cell=True)


ELEMENTAL = (
    Prototype("fcc", 1, 0, lambda s, d: bulk(s[0], "fcc", a=d * np.sqrt(2))),
    Prototype("bcc", 1, 0, lambda s, d: bulk(s[0], "bcc", a=2 * d / np.sqrt(3))),
    Prototype("hcp", 1, 0, lambda s, d: bulk(s[0], "hcp", a=d, c=1.633 * d)),
    Prototype("diamond", 1, 0, lambda s, d: bulk(s[0], "diamond", a=4 * d / np.sqrt(3))),
    Prototype("sc", 1, 0, lambda s, d: bulk(s[0], "sc", a=d)),
)

BINARY = (
    Prototype("rocksalt", 1, 1, lambda s, d: bulk("".join(s), "rocksalt", a=2 * d)),
    Prototype("cesiumchloride", 1, 1, lambda s, d: bulk("".join(s), "cesiumchloride", a=2 * d / np.sqrt(3))),
    Prototype("zincblende", 1, 1, lambda s, d: bulk("".join(s), "zincblende", a=4 * d / np.sqrt(3))),
    Prototype("wurtzite", 1, 1, lambda s, d: bulk("".join(s), "wurtzite", a=d * np.sqrt(8 / 3), c=1.633 * d * np.sqrt(8 / 3))),
    Prototype("fluorite", 1, 2, lambda s, d: bulk("".join([s[0], s[1] + "2"]), "fluorite", a=4 * d / np.sqrt(3))),
    Prototype("antifluorite", 2, 1, lambda s, d: _antifluorite(s, d)),
    Prototype("rutile", 1, 2, _rutile),
)

#: Ternary oxides-and-friends: (name, A count, B count, X count, builder).
TERNARY = (
    ("perovskite", 1, 1, 3, _perovskite),
    ("spinel", 1, 2, 4, _spinel),
)


def _antifluorite(species, d):
    cation, anion = species
    atoms = bulk("".join([anion, cation + "2"]), "fluorite", a=4 * d / np.sqrt(3))
    return atoms


def bond_length(a: str, b: str) -> float:
    """Sum of covalent radii, Å (ASE's table)."""
    return float(covalent_radii[atomic_numbers[a]] + covalent_radii[atomic_numbers[b]])


def elemental(symbol: str, prototype: Prototype) -> ase.Atoms:
    """``prototype`` filled with one element."""
    return prototype.build((symbol,), bond_length(symbol, symbol))


def binary_choices(prototype: Prototype) -> list[tuple[str, str]]:
    """Every charge-balanced (cation, anion) pair for a binary prototype AmXn."""
    pairs = []
    for anion, q_x in ANION_STATES.items():
        total = -q_x * prototype.n_anion
        if total % prototype.n_cation:
            continue
        pairs += [(c, anion) for c in cations_with_charge(total // prototype.n_cation) if c != anion]
    return pairs


def ternary_choices(n_a: int, n_b: int, n_x: int) -> list[tuple[str, str, str]]:
    """Charge-balanced (A, B, X) triples for A_a B_b X_x with X an anion (O, S, F, N, Cl...)."""
    triples = []
    for anion, q_x in ANION_STATES.items():
        total = -q_x * n_x
        for q_a in range(1, 5):
            rest = total - n_a * q_a
            if rest <= 0 or rest % n_b:
                continue
            for a_site in cations_with_charge(q_a):
                triples += [(a_site, b_site, anion) for b_site in cations_with_charge(rest // n_b)
                            if len({a_site, b_site, anion}) == 3]
    return triples


def build_binary(prototype: Prototype, cation: str, anion: str) -> ase.Atoms:
    return prototype.build((cation, anion), bond_length(cation, anion))


def build_ternary(builder, species: tuple[str, str, str]) -> ase.Atoms:
    """A ternary prototype; the bond is the B-X distance (octahedral site)."""
    return builder(species, bond_length(species[1], species[2]))


__all__ = ["ELEMENTAL", "BINARY", "TERNARY", "MPTRJ_ELEMENTS", "Prototype", "binary_choices",
           "ternary_choices", "build_binary", "build_ternary", "elemental", "bond_length"]
