"""`FacetConfig`: every choice that defines a Facet-style model, frozen and saved with its weights."""

from __future__ import annotations

import dataclasses
from typing import Any

from ase.data import chemical_symbols

from mlip.errors import MlipError


@dataclasses.dataclass(frozen=True)
class FacetConfig:
    """Architecture and physical constants of a Facet-style potential.

    Attributes:
        species: atomic numbers the model knows, in embedding order.
        r_cut: radius-graph cutoff, Å.
        lmax: highest angular momentum of node features.
        mmax: highest |m| kept in the SO(2) convolution (<= lmax).
        channels: channels per (l, m) component.
        num_layers: interaction blocks.
        num_radial: size of the radial basis.
        radial_basis: "bspline" or "bessel".
        mixing: node nonlinearity, "s2" (spherical-grid MLP) or "gate".
        mixing_hidden: hidden width of the spherical-grid MLP.
        grid: spherical grid of the S2 mixing, "lebedev" or "gausslegendre".
        grid_order: Lebedev order; grid_res_beta, grid_res_alpha: Gauss-Legendre resolution.
            None: the layer's default for lmax, chosen for a rotation error far below model
            accuracy (measured in mlip/nn/s2_mixing.py).
        readout_hidden: hidden width of the per-atom energy MLP.
        avg_num_neighbors: constant that normalises neighbour sums (from the training data).
        atomic_energies: E0 per species (same order as ``species``), eV.
        scale: per-atom energy scale, eV (learned energies are scale * output + shift + E0).
        shift: per-atom energy shift, eV.
        zbl: add the ZBL screened-nuclear repulsion to the pair energy (mlip/nn/zbl.py), so
            atoms cannot collapse onto each other even where the learned part is wrong.
        zbl_range: where the ZBL term ends: "covalent" (at the sum of covalent radii, as MACE)
            or "cutoff" (at r_cut, which leaves ~1 eV per bond at equilibrium distances for the
            network to cancel); files saved before this field existed load as "cutoff".

    How the model is computed (the edge-chain kernel, matmul precision, edge chunks) is not
    architecture: it is a runtime choice, `mlip.runtime.Runtime`.
    """

    species: tuple[int, ...]
    r_cut: float = 5.0
    lmax: int = 2
    mmax: int = 2
    channels: int = 32
    num_layers: int = 2
    num_radial: int = 8
    radial_basis: str = "bspline"
    mixing: str = "s2"
    mixing_hidden: int = 64
    grid: str = "lebedev"
    grid_order: int | None = None
    grid_res_beta: int | None = None
    grid_res_alpha: int | None = None
    readout_hidden: int = 32
    avg_num_neighbors: float = 20.0
    atomic_energies: tuple[float, ...] | None = None
    scale: float = 1.0
    shift: float = 0.0
    zbl: bool = True
    zbl_range: str = "covalent"

    def __post_init__(self):
        species = tuple(int(z) for z in self.species)
        object.__setattr__(self, "species", species)
        if not species or len(set(species)) != len(species) or not all(1 <= z <= 118 for z in species):
            raise MlipError(f"species must be distinct atomic numbers in 1..118, got {species}")
        if self.atomic_energies is not None:
            energies = tuple(float(e) for e in self.atomic_energies)
            if len(energies) != len(species):
                raise MlipError(f"{len(energies)} atomic energies for {len(species)} species")
            object.__setattr__(self, "atomic_energies", energies)
        if not 0 <= self.mmax <= self.lmax:
            raise MlipError(f"need 0 <= mmax <= lmax, got mmax={self.mmax}, lmax={self.lmax}")
        if self.r_cut <= 0 or self.channels < 1 or self.num_layers < 1 or self.num_radial < 2:
            raise MlipError(f"invalid model size in {self}")
        if self.radial_basis not in ("bspline", "bessel"):
            raise MlipError(f"radial_basis must be 'bspline' or 'bessel', got {self.radial_basis!r}")
        if self.zbl_range not in ("covalent", "cutoff"):
            raise MlipError(f"zbl_range must be 'covalent' or 'cutoff', got {self.zbl_range!r}")
        if self.mixing not in ("s2", "gate"):
            raise MlipError(f"mixing must be 's2' or 'gate', got {self.mixing!r}")
        from mlip.nn.s2_mixing import grid_resolution

        try:
            grid_resolution(self.lmax, self.grid, self.grid_res_beta, self.grid_res_alpha, self.grid_order)
        except ValueError as exc:
            raise MlipError(f"invalid spherical grid: {exc}") from None

    @property
    def species_symbols(self) -> tuple[str, ...]:
        return tuple(chemical_symbols[z] for z in self.species)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "FacetConfig":
        """Inverse of to_dict; unknown keys are an error (a file from an incompatible version).
        Files written while the kernel choice was saved as architecture carry a ``kernel`` key:
        it is dropped (a runtime choice now, `mlip.runtime.Runtime.kernel`)."""
        values = {k: v for k, v in values.items() if k not in RUNTIME_KEYS}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise MlipError(f"unknown model config keys {unknown} (file from a newer mlip?)")
        values.setdefault("zbl_range", "cutoff")  # the only ZBL of files written before the field
        values["species"] = tuple(values["species"])
        if values.get("atomic_energies") is not None:
            values["atomic_energies"] = tuple(values["atomic_energies"])
        return cls(**values)


#: Keys that older files saved in the model config but that are runtime choices.
RUNTIME_KEYS = ("kernel",)

#: Architecture presets; species and cutoff are given when the model is created.
PRESETS: dict[str, dict[str, Any]] = {
    # Well under 1 M parameters: the fast default for MD and fine-tuning.
    "small": dict(lmax=2, mmax=2, channels=64, num_layers=2, num_radial=8, mixing_hidden=64, readout_hidden=32),
    # lmax 3: more accurate, for pretraining on large data.
    "medium": dict(lmax=3, mmax=2, channels=128, num_layers=3, num_radial=10, mixing_hidden=128, readout_hidden=64),
}


def preset(name: str, *, species, r_cut: float = 5.0, **overrides) -> FacetConfig:
    """A FacetConfig from a named preset ("small", "medium"), with species (atomic numbers or
    symbols) and any field overridden."""
    if name not in PRESETS:
        raise MlipError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    from ase.data import atomic_numbers

    numbers = []
    for s in species:
        if isinstance(s, str):
            if s not in atomic_numbers:
                raise MlipError(f"unknown element symbol {s!r}")
            numbers.append(atomic_numbers[s])
        else:
            numbers.append(int(s))
    return FacetConfig(species=tuple(numbers), r_cut=r_cut, **{**PRESETS[name], **overrides})
