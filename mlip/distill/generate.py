"""Seed structures for distillation: prototypes, random symmetric crystals and real frames.

A seed is an ``ase.Atoms`` with two info keys: ``seed_id`` (unique, stable: labelling resumes
by it) and ``origin`` (how it was made, e.g. ``prototype:rocksalt``, ``pyxtal:sg=166``,
``real:mpf-TP.xyz#12``, ``substitution:mpf-TP.xyz#12:Sr>Ba``). The teacher then relaxes, perturbs and heats each seed
(`mlip.distill.label`); here only the starting points are made, cheaply and reproducibly.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import warnings
from pathlib import Path
from typing import Sequence

import ase
import numpy as np
from ase.data import atomic_numbers, covalent_radii

from mlip.distill import prototypes as protos
from mlip.distill.chemistry import (MPTRJ_ELEMENTS, MPTRJ_NUMBERS, OXIDATION_STATES,
                                    element_weights, min_bond_ratio)
from mlip.errors import MlipError

log = logging.getLogger(__name__)

#: Position of each MPtrj element in `MPTRJ_ELEMENTS` (and in the element weights).
_INDEX = {symbol: k for k, symbol in enumerate(MPTRJ_ELEMENTS)}


@dataclasses.dataclass(frozen=True)
class SeedPlan:
    """How many seeds of each kind `generate_seeds` makes.

    Attributes:
        elemental_per_element: elemental prototypes (fcc, bcc, hcp, diamond, sc) per element.
        compounds: charge-balanced binary/ternary prototypes (rocksalt ... spinel), species
            drawn with probability proportional to the product of their element weights.
        random: random symmetric crystals (pyxtal) with 1-4 species at the element weights.
        real: real frames drawn from ``real_files`` (at most ``max_atoms`` atoms each).
        substitutions: real frames of ``real_files`` (at most ``substitution_max_atoms``) with
            one or two of their elements swapped for a chemically similar one (see
            `substitute`): real structure types with new, often 4-5 element chemistries at the
            sizes of real materials, which made-up seeds of ``max_atoms`` never reach.
        min_per_element: top up with random crystals until every MPtrj element is in at
            least this many seeds.
        max_atoms: largest made-up or real seed (teacher cost grows with it).
        substitution_max_atoms: largest substituted seed.
        seed: random seed; the same plan and inputs give the same seeds.
        exclude: origins of substitution seeds made before (an earlier run's seeds file);
            when given, a draw whose origin is in it or was drawn before in this run is
            redrawn, so a new seed file adds only new structures (without it every draw is
            kept, as the seed files of earlier runs were made).
    """

    elemental_per_element: int = 2
    compounds: int = 600
    random: int = 600
    real: int = 400
    min_per_element: int = 12
    max_atoms: int = 16
    substitutions: int = 0
    substitution_max_atoms: int = 64
    seed: int = 0
    exclude: frozenset[str] = frozenset()


def generate_seeds(plan: SeedPlan, real_files: Sequence[Path] = ()) -> list[ase.Atoms]:
    """Seeds per ``plan``. Element weights come from the frames of ``real_files`` (MPtrj-like
    data; uniform if none), so common elements get more environments, and every element at
    least ``plan.min_per_element`` seeds."""
    rng = np.random.default_rng(plan.seed)
    real = [atoms for path in real_files for atoms in _read_real(Path(path))]
    weights = element_weights([atoms.numbers for atoms in real])
    seeds = _elemental_seeds(plan, rng)
    seeds += _compound_seeds(plan, weights, rng)
    seeds += _random_seeds(plan.random, plan.max_atoms, weights, rng)
    seeds += _real_seeds(real, plan, rng)
    seeds += _substitution_seeds(real, plan, weights, rng)
    seeds += _top_up(seeds, plan, weights, rng)
    for k, atoms in enumerate(seeds):
        atoms.info["seed_id"] = f"s{plan.seed}-{k:05d}"
    return seeds


def element_coverage(seeds: Sequence[ase.Atoms]) -> dict[str, int]:
    """Number of seeds each MPtrj element appears in (0 for missing ones)."""
    counts = collections.Counter(z for atoms in seeds for z in set(atoms.numbers.tolist()))
    return {symbol: counts.get(z, 0) for symbol, z in zip(MPTRJ_ELEMENTS, MPTRJ_NUMBERS)}


#: Made-up cells are first spread so no pair is closer than this fraction of its covalent
#: bond length and no cell is denser than MIN_VOLUME Å^3/atom: covalent radii underestimate
#: ionic bonds (H-F at 0.88 Å would give a 0.7 Å^3/atom rocksalt), and a teacher's cost grows
#: with the neighbours within its cutoff (hundreds per atom in such a cell).
MIN_BOND_FRACTION = 0.9
MIN_VOLUME = 7.0


def spread(atoms: ase.Atoms, min_bond_fraction: float = MIN_BOND_FRACTION) -> ase.Atoms:
    """``atoms`` with the cell scaled up (never down) so no pair is closer than
    ``min_bond_fraction`` of its covalent bond length and no cell denser than MIN_VOLUME."""
    scale = max(1.0, min_bond_fraction / min_bond_ratio(atoms),
                (MIN_VOLUME * len(atoms) / atoms.get_volume()) ** (1 / 3))
    atoms = atoms.copy()
    atoms.set_cell(atoms.cell.array * scale, scale_atoms=True)
    return atoms


def _tag(atoms: ase.Atoms, origin: str) -> ase.Atoms:
    atoms = atoms.copy()
    atoms.info.clear()
    atoms.calc = None
    atoms.info["origin"] = origin
    return atoms


def _elemental_seeds(plan: SeedPlan, rng) -> list[ase.Atoms]:
    seeds = []
    for symbol in MPTRJ_ELEMENTS:
        chosen = rng.choice(len(protos.ELEMENTAL), size=min(plan.elemental_per_element, len(protos.ELEMENTAL)), replace=False)
        for k in sorted(chosen):
            prototype = protos.ELEMENTAL[k]
            seeds.append(_tag(spread(protos.elemental(symbol, prototype)), f"prototype:{prototype.name}"))
    return seeds


def _weighted_pick(options: list[tuple[str, ...]], weights: np.ndarray, rng) -> tuple[str, ...]:
    """One option, with probability proportional to the product of its elements' weights."""
    p = np.array([np.prod([weights[_INDEX[s]] for s in option]) for option in options])
    return options[int(rng.choice(len(options), p=p / p.sum()))]


def _compound_seeds(plan: SeedPlan, weights, rng) -> list[ase.Atoms]:
    kinds = [(p.name, protos.binary_choices(p), lambda s, p=p: protos.build_binary(p, *s))
             for p in protos.BINARY]
    kinds += [(name, protos.ternary_choices(a, b, x), lambda s, f=f: protos.build_ternary(f, s))
              for name, a, b, x, f in protos.TERNARY]
    seeds = []
    for _ in range(plan.compounds):
        name, options, build = kinds[int(rng.integers(len(kinds)))]
        species = _weighted_pick(options, weights, rng)
        seeds.append(_tag(spread(build(species)), f"prototype:{name}"))
    return seeds


def _random_crystal(species: list[str], max_atoms: int, rng, tries: int = 40) -> ase.Atoms | None:
    """A random symmetric crystal (pyxtal) of these species with at most ``max_atoms`` atoms
    in the conventional cell, or None if no space group and composition fitted."""
    try:
        from pyxtal import pyxtal
    except ImportError:
        raise MlipError("random crystals need pyxtal: pip install 'mlip-facet[distill]'") from None
    for _ in range(tries):
        counts = rng.integers(1, 5, size=len(species))
        counts = counts * max(1, int(rng.integers(1, 3)))
        if counts.sum() > max_atoms:
            continue
        crystal = pyxtal()
        group = int(rng.integers(2, 231))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                crystal.from_random(3, group, list(species), counts.tolist(),
                                    random_state=int(rng.integers(1 << 31)))
            except Exception:  # pyxtal raises many kinds for incompatible Wyckoff sets
                continue
        if crystal.valid:
            atoms = crystal.to_ase()
            if 0 < len(atoms) <= max_atoms:
                return _tag(spread(atoms), f"pyxtal:sg={group}")
    return None


def _draw_species(weights, rng, n_species: int, must: str | None = None) -> list[str]:
    chosen = [] if must is None else [must]
    p = weights.copy()
    if must is not None:
        p[_INDEX[must]] = 0.0
    while len(chosen) < n_species:
        k = int(rng.choice(len(p), p=p / p.sum()))
        chosen.append(MPTRJ_ELEMENTS[k])
        p[k] = 0.0
    return chosen


def _random_seeds(n: int, max_atoms: int, weights, rng, must: str | None = None) -> list[ase.Atoms]:
    seeds = []
    while len(seeds) < n:
        n_species = int(rng.choice([1, 2, 3, 4], p=[0.15, 0.4, 0.3, 0.15]))
        atoms = _random_crystal(_draw_species(weights, rng, n_species, must), max_atoms, rng)
        if atoms is not None:
            seeds.append(atoms)
    return seeds


def _read_real(path: Path) -> list[ase.Atoms]:
    from mlip.data.readers import read_frames

    if not path.exists():
        raise MlipError(f"real frames {path}: no such file")
    return [_tag(frame.to_atoms(), f"real:{path.name}#{frame.index}")
            for frame in read_frames(path, require_labels=False)]


def _real_seeds(real: list[ase.Atoms], plan: SeedPlan, rng) -> list[ase.Atoms]:
    small = [atoms for atoms in real if len(atoms) <= plan.max_atoms and atoms.pbc.all()]
    if not small:
        return []
    chosen = rng.choice(len(small), size=min(plan.real, len(small)), replace=False)
    return [small[k] for k in sorted(chosen)]


#: Anions swap within their family regardless of size (O<->S, Cl<->I, N<->P), the cell
#: following the radii. H, C, Si and Ge are left to the cation rule: in real frames they are
#: mostly hydroxide H, carbonate C and silicate Si, not hydrides, carbides or silicides.
ANION_FAMILIES = (("F", "Cl", "Br", "I"), ("O", "S", "Se", "Te"), ("N", "P", "As", "Sb"))

#: Cations may swap when they share a positive common oxidation state and their covalent
#: radii differ by at most this factor (Sr<->Ba, Fe<->Co, La<->Nd, Si<->Ge; not Li<->Cs).
CATION_RADIUS_RATIO = 1.3

_NOBLE = ("He", "Ne", "Ar", "Kr", "Xe")
_ANIONS = {s: family for family in ANION_FAMILIES for s in family}


def substitutes(symbol: str) -> list[str]:
    """The elements that may replace ``symbol`` in a substitution seed (never itself, never a
    noble gas)."""
    if symbol in _ANIONS:
        return [s for s in _ANIONS[symbol] if s != symbol]
    if symbol not in OXIDATION_STATES:
        return []  # not one of MPtrj's elements (Po, Am...): left as it is
    states = {q for q in OXIDATION_STATES[symbol] if q > 0}
    r = covalent_radii[atomic_numbers[symbol]]
    return [s for s in MPTRJ_ELEMENTS
            if s != symbol and s not in _ANIONS and s not in _NOBLE and states & set(OXIDATION_STATES[s])
            and 1 / CATION_RADIUS_RATIO <= covalent_radii[atomic_numbers[s]] / r <= CATION_RADIUS_RATIO]


#: A substituted real frame is spread only to this bond fraction: one short pair (a compressed
#: high-stress frame, an O-H bond) must not inflate the whole cell, as MIN_BOND_FRACTION would.
SUBSTITUTION_BOND_FRACTION = 0.6


def substitute(atoms: ase.Atoms, swaps: dict[str, str]) -> ase.Atoms:
    """``atoms`` with every atom of each key of ``swaps`` replaced by its value, the cell scaled
    by the change in the sum of covalent-radius cubes (a first guess the teacher's relaxation
    corrects), then spread to SUBSTITUTION_BOND_FRACTION."""
    numbers = atoms.numbers.copy()
    for old, new in swaps.items():
        numbers[atoms.numbers == atomic_numbers[old]] = atomic_numbers[new]
    ratio = (covalent_radii[numbers] ** 3).sum() / (covalent_radii[atoms.numbers] ** 3).sum()
    atoms = atoms.copy()
    atoms.numbers = numbers
    atoms.set_cell(atoms.cell.array * ratio ** (1 / 3), scale_atoms=True)
    return spread(atoms, SUBSTITUTION_BOND_FRACTION)


def _has_substitute(atoms: ase.Atoms) -> bool:
    """Whether some element of ``atoms`` has a `substitutes` entry not already in it."""
    present = set(atoms.get_chemical_symbols())
    return any(set(substitutes(symbol)) - present for symbol in present)


def _substitution_seeds(real: list[ase.Atoms], plan: SeedPlan, weights, rng) -> list[ase.Atoms]:
    """``plan.substitutions`` seeds: a real frame drawn with probability proportional to its
    number of elements (the complex compounds made-up seeds lack), one or two of its elements
    swapped for `substitutes` not already in it, drawn at the element weights."""
    frames = [atoms for atoms in real if len(atoms) <= plan.substitution_max_atoms and atoms.pbc.all()]
    # Frames without a substitutable element are drawn and redrawn (as they always were, so a
    # seed gives the same seeds); with none at all the draw would never end.
    if plan.substitutions and not any(map(_has_substitute, frames)):
        raise MlipError(f"--substitutions needs periodic real frames of at most {plan.substitution_max_atoms} "
                        "atoms with an element that has a substitute (H, C, B and noble gases have none)")
    p = np.array([len(set(atoms.numbers)) for atoms in frames], np.float64)
    seeds, taken_origins = [], set(plan.exclude)
    draws = 0
    while len(seeds) < plan.substitutions:
        draws += 1
        if plan.exclude and draws > 100 * plan.substitutions:
            raise MlipError(f"--substitutions {plan.substitutions}: only {len(seeds)} new substitutions found in "
                            f"{draws - 1} draws (the rest are in the excluded seeds); ask for fewer or add real files")
        atoms = frames[int(rng.choice(len(frames), p=p / p.sum()))]
        present = sorted(set(atoms.get_chemical_symbols()))
        swaps = {}
        for old in rng.permutation(present)[: int(rng.choice([1, 2], p=[0.6, 0.4]))]:
            taken = set(present) | set(swaps.values())
            options = [s for s in substitutes(str(old)) if s not in taken]
            if options:
                w = np.array([weights[_INDEX[s]] for s in options])
                swaps[str(old)] = options[int(rng.choice(len(options), p=w / w.sum()))]
        if swaps:
            origin = atoms.info["origin"].replace("real:", "substitution:", 1)
            origin += ":" + ",".join(f"{a}>{b}" for a, b in swaps.items())
            if plan.exclude:
                if origin in taken_origins:
                    continue
                taken_origins.add(origin)
            seeds.append(_tag(substitute(atoms, swaps), origin))
    return seeds


def _top_up(seeds, plan: SeedPlan, weights, rng) -> list[ase.Atoms]:
    """Random crystals containing each element that is in fewer than min_per_element seeds."""
    extra = []
    for symbol, count in element_coverage(seeds).items():
        missing = plan.min_per_element - count
        if missing > 0:
            extra += _random_seeds(missing, plan.max_atoms, weights, rng, must=symbol)
    return extra
