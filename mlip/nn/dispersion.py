"""DFT-D3(BJ) dispersion in JAX: energy, forces and stress by the same autodiff as the model.

Grimme's D3 with Becke-Johnson (rational) damping (Grimme, Antony, Ehrlich, Krieg, J. Chem.
Phys. 132, 154104 (2010); Grimme, Ehrlich, Goerigk, J. Comput. Chem. 32, 1456 (2011)),
two-body terms only, as the reference implementation s-dftd3 (PyPI `dftd3`) computes them:

    E = -sum_{i<j, images} C6_ij(CN_i, CN_j) [s6 / (r^6 + R0^6) + s8 Q_ij / (r^8 + R0^8)],
    Q_ij = 3 q_i q_j,  R0 = a1 sqrt(Q_ij) + a2,  q = sqrt(<r4>/<r2> sqrt(Z) / 2),
    CN_i = sum_j 1 / (1 + exp(-16 ((Rcov_i + Rcov_j) / r_ij - 1))),   (r_ij < cn_cutoff)
    C6_ij = sum_ab w_ia w_jb C6ref(Z_i, a, Z_j, b),  w_ia ∝ exp(-4 (CN_i - CNref_ia)^2),

in atomic units inside (bohr, hartree), Å and eV outside. Cutoffs are s-dftd3's defaults: 60
bohr (31.75 Å) for the pairs, 40 bohr (21.17 Å) for the coordination numbers, both sharp as in
s-dftd3. The three-body Axilrod-Teller-Muto term is not included: two-body D3(BJ) is what the
original DFT-D3 program and VASP (IVDW=12) compute by default; s-dftd3 adds ATM unless s9=0.
The reference tables (elements 1-103) are in `mlip/assets/d3-reference.npz`, made by
`benchmarks/make_d3_tables.py` from tad-dftd3 and tad-mctc (Apache-2.0).

The energy is a pure function of (positions, cell) given a pair list, so it can be added to
any energy before differentiation: `d3_pair_energies` on a half list (`D3Dispersion`, the
host-side driver of the ASE calculator), `d3_atom_energies` on a full list (mlip.sim's batched
engine, whose device list then reaches the D3 cutoff).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import vesin

from mlip.errors import MlipError

#: CODATA 2018, as s-dftd3 (mctc-lib): Å per bohr, eV per hartree.
BOHR = 0.529177210903
HARTREE = 27.211386245988


@dataclasses.dataclass(frozen=True)
class D3Params:
    """Rational-damping parameters (a2 in bohr) and cutoffs (Å)."""

    s6: float
    s8: float
    a1: float
    a2: float
    cutoff: float = 60.0 * BOHR
    cn_cutoff: float = 40.0 * BOHR


#: D3(BJ) for PBE (Grimme, Ehrlich, Goerigk 2011; s-dftd3's parameters.toml).
PBE = D3Params(s6=1.0, s8=0.7875, a1=0.4289, a2=4.4407)

#: Names accepted by `Calculator(dispersion=...)`, `mlip.sim.relax` / `md` and `--d3`.
DISPERSION_MODELS = {"d3bj": PBE, "d3bj-pbe": PBE}


def dispersion_params(name: str) -> D3Params:
    """The parameters of dispersion model ``name`` (a key of `DISPERSION_MODELS`)."""
    if name not in DISPERSION_MODELS:
        raise MlipError(f"unknown dispersion {name!r}: choose one of {', '.join(DISPERSION_MODELS)}")
    return DISPERSION_MODELS[name]


class D3Tables(NamedTuple):
    """Reference data of the S species of one structure; R = most references of any of them.

    ref_cn: float [S, R], reference coordination numbers (padding: any value, masked).
    ref_mask: bool [S, R], which references exist.
    c6: float [S, S, R, R], reference C6 coefficients, hartree bohr^6.
    rcov: float [S], D3 covalent radii (4/3 Pyykkö 2009), bohr.
    q: float [S], sqrt(<r4>/<r2> sqrt(Z) / 2).
    """

    ref_cn: np.ndarray
    ref_mask: np.ndarray
    c6: np.ndarray
    rcov: np.ndarray
    q: np.ndarray


class PairSet(NamedTuple):
    """Atom pairs with their periodic images, padded to a bucket size P.

    i, j: int32 [P], atom indices; shifts: float [P, 3], integer cell translation of j's image;
    mask: bool [P], real pairs (padding: i = j = 0, shift 0); distinct: int32 [P], row of the
    pair's atoms (i, j) in `Pairs.first` / `Pairs.second`.
    """

    i: np.ndarray
    j: np.ndarray
    shifts: np.ndarray
    mask: np.ndarray
    distinct: np.ndarray


class Pairs(NamedTuple):
    """Half list (each pair and image once) split by distance at build time: ``near`` pairs
    (closer than the CN cutoff + skin) count in the coordination numbers, ``far`` ones do not.
    C6 depends on the two atoms, not on the image, so it is computed once per distinct atom
    pair, first [U] and second [U] (int32, padded with 0, 0): a 64-atom cell has 213k pairs
    within 31.75 Å but 2,080 distinct ones.
    """

    near: PairSet
    far: PairSet
    first: np.ndarray
    second: np.ndarray


def _bucket(n: int) -> int:
    """Padded size: a multiple of an eighth of the power of two below n (waste < 1/8; a run
    whose pair count drifts compiles a few shapes)."""
    step = max(256, 2 ** int(np.log2(max(n, 1))) // 8)
    return -(-max(n, 1) // step) * step


def _pad(array: np.ndarray, size: int) -> np.ndarray:
    return np.pad(array, [(0, size - len(array))] + [(0, 0)] * (array.ndim - 1))


def pair_list(positions, cell, pbc, cutoff: float, cn_cutoff: float) -> Pairs:
    """Every pair (and periodic image) closer than ``cutoff`` (Å) once (vesin half list), split
    at ``cn_cutoff`` (Å) into near and far pairs, each padded to a bucket."""
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    pbc = [bool(p) for p in np.broadcast_to(np.asarray(pbc, bool), (3,))]
    calculator = vesin.NeighborList(cutoff=float(cutoff), full_list=False, n_threads=1)
    i, j, shifts, distances = calculator.compute(positions, np.asarray(cell, np.float64).reshape(3, 3), pbc, "ijSd")
    i, j = i.astype(np.int32), j.astype(np.int32)
    n_atoms = len(positions)
    keys = np.minimum(i, j).astype(np.int64) * n_atoms + np.maximum(i, j)
    if n_atoms <= 4096:  # a dense table of atom pairs: linear time, where np.unique sorts
        present = np.zeros(n_atoms * n_atoms, bool)
        present[keys] = True
        distinct_keys = np.flatnonzero(present)
        distinct = (np.cumsum(present, dtype=np.int32) - 1)[keys]
    else:
        distinct_keys, distinct = np.unique(keys, return_inverse=True)
        distinct = distinct.astype(np.int32)

    def subset(select) -> PairSet:
        size = _bucket(int(select.sum()))
        return PairSet(
            i=_pad(i[select], size), j=_pad(j[select], size), shifts=_pad(shifts[select].astype(np.float64), size),
            mask=np.arange(size) < select.sum(), distinct=_pad(distinct[select], size),
        )

    near = distances < cn_cutoff
    size = _bucket(len(distinct_keys))
    return Pairs(
        near=subset(near), far=subset(~near),
        first=_pad((distinct_keys // n_atoms).astype(np.int32), size),
        second=_pad((distinct_keys % n_atoms).astype(np.int32), size),
    )


@functools.lru_cache(maxsize=1)
def _reference() -> dict:
    path = importlib.resources.files("mlip") / "assets" / "d3-reference.npz"
    with path.open("rb") as handle, np.load(handle) as data:
        table = {key: data[key] for key in data.files}
    n = len(table["ref_element"])
    c6 = np.zeros((n, n))
    c6[np.triu_indices(n)] = table["c6_upper"]
    table["c6"] = c6 + np.triu(c6, 1).T
    return table


def d3_tables(species) -> D3Tables:
    """Tables for the atomic numbers ``species`` [S] (distinct), in that order."""
    table = _reference()
    species = np.asarray(species, dtype=int)
    unknown = [int(z) for z in species if not 1 <= z <= table["ref_element"].max()]
    if unknown:
        raise MlipError(f"D3 dispersion has no reference data for atomic number(s) {unknown} (elements 1-103)")
    refs = [np.flatnonzero(table["ref_element"] == z) for z in species]
    n_ref = max(len(r) for r in refs)
    index = np.array([np.pad(r, (0, n_ref - len(r)), constant_values=r[0]) for r in refs])
    mask = np.array([np.arange(n_ref) < len(r) for r in refs])
    z = species.astype(np.float64)
    return D3Tables(
        ref_cn=table["ref_cn"][index],
        ref_mask=mask,
        c6=table["c6"][index[:, None, :, None], index[None, :, None, :]],
        rcov=table["covalent_radius_2009"][species] * 4.0 / 3.0 / BOHR,
        q=np.sqrt(0.5 * table["r4_over_r2"][species] * np.sqrt(z)),
    )


def _pair_geometry(params: D3Params, positions, cell, pairs: PairSet):
    """(r^2 in bohr^2 [P], inside the pair cutoff [P]); r^2 = 1 where outside (NaN-safe)."""
    vectors = positions[pairs.j] - positions[pairs.i] + pairs.shifts.astype(positions.dtype) @ cell
    r2 = jnp.sum(vectors**2, axis=-1) / BOHR**2
    inside = pairs.mask & (r2 <= (params.cutoff / BOHR) ** 2)
    # Double where: padding pairs have r = 0, and their gradient must stay finite.
    return jnp.where(inside, r2, 1.0), inside


def _counts(tables: D3Tables, params: D3Params, species_index, r2, inside, i, j):
    """Coordination count of each pair [P] (zero beyond the CN cutoff); r2 in bohr^2."""
    rcov = jnp.asarray(tables.rcov, r2.dtype)
    count = 1.0 / (1.0 + jnp.exp(-16.0 * ((rcov[species_index[i]] + rcov[species_index[j]]) / jnp.sqrt(r2) - 1.0)))
    return jnp.where(inside & (r2 <= (params.cn_cutoff / BOHR) ** 2), count, 0.0)


def _c6_factors(tables: D3Tables, species_index, cn):
    """(left [N, S, R], weights [N, R]): C6 of atoms a, b (hartree bohr^6) is
    ``sum(left[a, species_index[b]] * weights[b])``, given coordination numbers ``cn`` [N]."""
    # Gaussian weights over each atom's references: a softmax, so that an atom far from every
    # reference (all weights underflowing) falls on the nearest one instead of dividing by zero.
    ref_cn = jnp.asarray(tables.ref_cn, cn.dtype)[species_index]
    logits = jnp.where(jnp.asarray(tables.ref_mask)[species_index], -4.0 * (cn[:, None] - ref_cn) ** 2, -jnp.inf)
    weights = jax.nn.softmax(logits, axis=-1)  # [N, R]
    # Atom a's side per species first: w_a . C6ref(s_a, s) for every species s.
    left = jnp.einsum("na,nsab->nsb", weights, jnp.asarray(tables.c6, cn.dtype)[species_index])  # [N, S, R]
    return left, weights


def _damped(tables: D3Tables, params: D3Params, species_index, c6, r2, inside, i, j):
    """Two-body BJ-damped energy of each pair [P], eV (zero where not ``inside``)."""
    q = jnp.asarray(tables.q, r2.dtype)
    qq = 3.0 * q[species_index[i]] * q[species_index[j]]
    r0 = params.a1 * jnp.sqrt(qq) + params.a2
    r6 = r2**3
    energy = -c6 * (params.s6 / (r6 + r0**6) + params.s8 * qq / (r6 * r2 + r0**8))
    return jnp.where(inside, energy, 0.0) * HARTREE


def d3_pair_energies(tables: D3Tables, params: D3Params, species_index, positions, cell, pairs: Pairs) -> jax.Array:
    """Two-body D3(BJ) energy of every pair, [P_near + P_far] eV (near pairs first; zero for
    padding and beyond the cutoff).

    Args:
        species_index: int [N], row of each atom in ``tables``.
        positions: float [N, 3], Å; cell: float [3, 3], Å (rows are lattice vectors).
    """
    n_atoms = positions.shape[0]
    near_r2, near_inside = _pair_geometry(params, positions, cell, pairs.near)
    i, j = pairs.near.i, pairs.near.j
    count = _counts(tables, params, species_index, near_r2, near_inside, i, j)
    cn = jax.ops.segment_sum(count, i, n_atoms) + jax.ops.segment_sum(count, j, n_atoms)
    left, weights = _c6_factors(tables, species_index, cn)
    # C6 depends on the atoms only: once per distinct atom pair.
    c6_distinct = jnp.sum(left[pairs.first, species_index[pairs.second]] * weights[pairs.second], axis=-1)

    def energies(r2, inside, pairs: PairSet):
        return _damped(tables, params, species_index, c6_distinct[pairs.distinct], r2, inside, pairs.i, pairs.j)

    far_r2, far_inside = _pair_geometry(params, positions, cell, pairs.far)
    return jnp.concatenate([energies(near_r2, near_inside, pairs.near), energies(far_r2, far_inside, pairs.far)])


def d3_atom_energies(tables: D3Tables, params: D3Params, species_index, vectors, senders, receivers, edge_mask):
    """Two-body D3(BJ) energy of each atom, [N] eV, from a full list of ordered pairs (every
    pair and image in both directions, as mlip.sim's device list holds them): half of each
    pair's energy goes to each of its atoms. Traceable (the batched engine adds it to the
    model's per-atom energies before differentiating).

    Args:
        species_index: int [N], row of each atom in ``tables``.
        vectors: float [E, 3], Å, the pair vectors; senders, receivers: int [E];
            edge_mask: bool [E], real pairs. Pairs beyond the cutoffs contribute zero.
    """
    n_atoms = species_index.shape[0]
    r2 = jnp.sum(vectors**2, axis=-1) / BOHR**2
    inside = edge_mask & (r2 <= (params.cutoff / BOHR) ** 2)
    r2 = jnp.where(inside, r2, 1.0)  # double where: padding pairs have r = 0
    # Each pair is listed from both ends: the receivers' sums count it once per atom.
    cn = jax.ops.segment_sum(_counts(tables, params, species_index, r2, inside, receivers, senders), receivers,
                             n_atoms, indices_are_sorted=True)
    left, weights = _c6_factors(tables, species_index, cn)
    c6 = jnp.sum(left[receivers, species_index[senders]] * weights[senders], axis=-1)
    pair = _damped(tables, params, species_index, c6, r2, inside, receivers, senders)
    return 0.5 * jax.ops.segment_sum(pair, receivers, n_atoms, indices_are_sorted=True)


@functools.partial(jax.jit, static_argnums=(1,))
def _energy_forces_stress(tables, params, species_index, positions, cell, pairs):
    """(energy eV, per-atom energies [N] eV, forces [N, 3] eV/Å, dE/dε [3, 3] eV)."""

    def energy(positions, strain):
        strain = 0.5 * (strain + strain.T)
        pair_energies = d3_pair_energies(
            tables, params, species_index, positions + positions @ strain, cell + cell @ strain, pairs
        )
        return jnp.sum(pair_energies), pair_energies

    (total, pair_energies), (grad_positions, grad_strain) = jax.value_and_grad(energy, argnums=(0, 1), has_aux=True)(
        positions, jnp.zeros((3, 3), positions.dtype)
    )
    n_atoms = positions.shape[0]
    halves = 0.5 * pair_energies
    i = jnp.concatenate([pairs.near.i, pairs.far.i])
    j = jnp.concatenate([pairs.near.j, pairs.far.j])
    energies = jax.ops.segment_sum(halves, i, n_atoms) + jax.ops.segment_sum(halves, j, n_atoms)
    return total, energies, -grad_positions, grad_strain


class DispersionResult(NamedTuple):
    """energy eV; energies [N] eV; forces [N, 3] eV/Å; stress [3, 3] eV/Å^3 (ASE sign), None
    unless fully periodic."""

    energy: float
    energies: np.ndarray
    forces: np.ndarray
    stress: np.ndarray | None


class D3Dispersion:
    """D3(BJ) energy, forces and stress of ase.Atoms (host driver of `d3_pair_energies`).

    The pair list (vesin) is built with a Verlet ``skin`` (Å) on both cutoffs and kept on the
    device while no atom has moved more than skin/2 and the cell, species and periodicity are
    unchanged; pairs beyond the cutoffs contribute exactly zero, so results equal a fresh
    build. Padded to buckets, so an MD run or a relaxation compiles a few times at most.
    ``dtype``: float32 or float64 (float64 needs jax_enable_x64).
    """

    def __init__(self, params: D3Params = PBE, dtype: str = "float64", skin: float = 1.0):
        self.params = params
        self.dtype = np.dtype(dtype)
        self.skin = float(skin)
        self.builds = 0
        self._tables: dict[tuple, D3Tables] = {}
        self._reference = None  # (numbers, pbc, cell, positions) of the last build
        self._pairs = None

    @classmethod
    def from_name(cls, name: str, dtype: str = "float64") -> D3Dispersion:
        return cls(dispersion_params(name), dtype)

    def _device_pairs(self, atoms) -> Pairs:
        cell = np.asarray(atoms.cell.array, np.float64)
        if self._reference is not None:
            numbers, pbc, cell0, positions0 = self._reference
            same = len(numbers) == len(atoms) and np.all(numbers == atoms.numbers) and np.all(pbc == atoms.pbc)
            if same and np.array_equal(cell, cell0):
                moved = np.linalg.norm(atoms.positions - positions0, axis=1).max(initial=0.0)
                if 2 * moved < self.skin:
                    return self._pairs
        pairs = pair_list(atoms.positions, cell, atoms.pbc, self.params.cutoff + self.skin, self.params.cn_cutoff + self.skin)
        self._pairs = jax.tree.map(lambda a: jnp.asarray(a, self.dtype) if a.dtype.kind == "f" else jnp.asarray(a), pairs)
        self._reference = (atoms.numbers.copy(), atoms.pbc.copy(), cell, atoms.positions.copy())
        self.builds += 1
        return self._pairs

    def __call__(self, atoms) -> DispersionResult:
        species, species_index = np.unique(np.asarray(atoms.numbers), return_inverse=True)
        key = tuple(species)
        if key not in self._tables:
            tables = d3_tables(species)
            self._tables[key] = jax.tree.map(lambda a: jnp.asarray(a, self.dtype) if a.dtype.kind == "f" else jnp.asarray(a), tables)
        cell = np.asarray(atoms.cell.array, np.float64)
        energy, energies, forces, virial = _energy_forces_stress(
            self._tables[key], self.params, jnp.asarray(species_index, jnp.int32),
            jnp.asarray(atoms.positions, self.dtype), jnp.asarray(cell, self.dtype), self._device_pairs(atoms),
        )
        stress = None
        if np.all(atoms.pbc):
            stress = np.asarray(virial, np.float64) / abs(np.linalg.det(cell))
        return DispersionResult(float(energy), np.asarray(energies, np.float64), np.asarray(forces, np.float64), stress)


def add_dispersion(prediction, dispersion: DispersionResult):
    """``prediction`` (a `mlip.potential.Prediction`) plus ``dispersion``: the energy is additive,
    so are its derivatives (forces, stress) and the per-atom energies."""
    return prediction._replace(
        energy=prediction.energy + dispersion.energy,
        energies=prediction.energies + dispersion.energies,
        forces=prediction.forces + dispersion.forces,
        stress=None if prediction.stress is None else prediction.stress + dispersion.stress,
    )
