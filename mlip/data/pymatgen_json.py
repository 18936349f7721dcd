"""Readers for the two JSON layouts built on pymatgen ``Structure`` dicts: MPtrj and mlearn.

Both yield ``(label, build)`` pairs: ``label`` names the frame in error messages (MPtrj's
frame id, mlearn's list index) and ``build()`` converts the raw record into a :class:`Frame`
in mlip's units, raising :class:`DataError` for bad records. Conversion is deferred so that
the caller (``mlip.data.readers.read_frames``) decides whether a bad frame stops the read or
is skipped. Neither function validates physics; ``read_frames`` does that.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import ijson
import numpy as np
from ase.data import atomic_numbers

from mlip.data.frame import Frame, make_frame
from mlip.errors import DataError
from mlip.units import vasp_kbar_to_ase_stress

#: The two total energies an MPtrj frame carries; the reader never picks one silently.
MPTRJ_ENERGIES = ("uncorrected_total_energy", "corrected_total_energy")

_MPTRJ_ARRAYS = ("structure", "force", "stress", "magmom")

FrameSource = Iterator[tuple[object, Callable[[], Frame]]]


def iter_mptrj(path: Path, energy: str | None) -> FrameSource:
    """Stream MPtrj's ``{mp_id: {frame_id: frame}}`` JSON one material at a time.

    The full file is several GB, so it is parsed with ijson and only one material's frames
    are held in memory. ``energy`` picks the label: "uncorrected_total_energy" (raw DFT,
    consistent with forces and stresses; what MACE-MP and SevenNet pretrain on) or
    "corrected_total_energy" (with MP2020 corrections). Labels are frame ids such as
    "mp-1005792-0-2".
    """
    if energy not in MPTRJ_ENERGIES:
        raise DataError(
            f"MPtrj frames carry two total energies; choose one explicitly with "
            f"mptrj_energy='uncorrected_total_energy' (raw DFT, consistent with forces and "
            f"stresses, used for MACE/SevenNet-style pretraining) or "
            f"mptrj_energy='corrected_total_energy' (MP2020 corrections); got {energy!r}",
            path,
        )
    materials = 0
    with open(path, "rb") as file:
        for mp_id, material in ijson.kvitems(file, "", use_float=True):
            if not isinstance(material, dict):
                raise DataError(f"material {mp_id!r} is not an object of frames", path)
            materials += 1
            for frame_id, raw in material.items():
                yield frame_id, functools.partial(
                    _mptrj_frame, raw, mp_id, frame_id, energy, str(path)
                )
    if materials == 0:  # e.g. a top-level list: ijson would silently find no items
        raise DataError("no materials found; MPtrj is an object {mp_id: {frame_id: frame}}", path)


def _mptrj_frame(raw: dict, mp_id: str, frame_id: str, energy: str, source: str) -> Frame:
    def fail(message):
        return DataError(message, source, frame_id)

    numbers, positions, cell, pbc = structure_arrays(raw["structure"], fail)
    magmom = raw.get("magmom")
    info = _scalars(raw, exclude=_MPTRJ_ARRAYS)
    info.setdefault("mp_id", mp_id)
    info["frame_id"] = frame_id
    return make_frame(
        numbers,
        positions,
        cell,
        pbc,
        energy=_required(raw, energy, fail),
        forces=_required(raw, "force", fail),
        stress=vasp_kbar_to_ase_stress(np.asarray(_required(raw, "stress", fail), float)),
        atom_extras=None if magmom is None else {"magmoms": np.asarray(magmom, float)},
        info=info,
        source=source,
        index=frame_id,
    )


def iter_mlearn(path: Path) -> FrameSource:
    """Read an mlearn JSON file: a list of ``{structure, outputs, group, description, ...}``.

    The files are small (at most a few MB), so they are loaded whole. Labels are list indices.
    ``outputs`` holds ``energy`` (eV, total), ``forces`` (eV/Å) and ``virial_stress`` (kBar,
    VASP sign, VASP component order xx yy zz xy yz zx).
    """
    with open(path) as file:
        records = json.load(file)
    if not isinstance(records, list):
        raise DataError("an mlearn file must hold a JSON list of structures", path)
    for i, raw in enumerate(records):
        yield i, functools.partial(_mlearn_frame, raw, i, str(path))


def _mlearn_frame(raw: dict, index: int, source: str) -> Frame:
    def fail(message):
        return DataError(message, source, index)

    numbers, positions, cell, pbc = structure_arrays(raw["structure"], fail)
    outputs = raw["outputs"]
    virial = vasp_voigt_to_matrix(_required(outputs, "virial_stress", fail), fail)
    return make_frame(
        numbers,
        positions,
        cell,
        pbc,
        energy=_required(outputs, "energy", fail),
        forces=_required(outputs, "forces", fail),
        stress=vasp_kbar_to_ase_stress(virial),
        info=_scalars(raw, exclude=("structure", "outputs")),
        source=source,
        index=index,
    )


def vasp_voigt_to_matrix(values, fail=DataError) -> np.ndarray:
    """Six stress components in VASP's order (xx yy zz xy yz zx) -> symmetric [3, 3].

    VASP's order differs from ASE's Voigt order (xx yy zz yz xz xy), so
    ``mlip.data.frame.stress_to_matrix`` must not be used for it. Units are unchanged.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (6,):
        raise fail(f"virial_stress has shape {values.shape}, expected 6 values")
    xx, yy, zz, xy, yz, zx = values
    return np.array([[xx, xy, zx], [xy, yy, yz], [zx, yz, zz]])


def structure_arrays(structure: dict, fail=DataError):
    """A pymatgen ``Structure.as_dict()`` -> (numbers [n], positions [n, 3] Å, cell [3, 3] Å
    with rows = lattice vectors, pbc [3]).

    Positions come from each site's cartesian ``xyz`` (or fractional ``abc`` when ``xyz`` is
    absent); pbc from ``lattice.pbc`` when present, else periodic in all directions (pymatgen's
    default). Disordered sites (several species or partial occupancy) and unknown element
    symbols raise ``fail(message)``.
    """
    lattice = structure["lattice"]
    cell = np.asarray(lattice["matrix"], dtype=np.float64)
    pbc = lattice.get("pbc", (True, True, True))
    sites = structure["sites"]
    numbers = np.array([_site_number(site, fail) for site in sites], dtype=np.int64)
    positions = np.array(
        [site["xyz"] if "xyz" in site else np.dot(site["abc"], cell) for site in sites],
        dtype=np.float64,
    ).reshape(len(sites), 3)
    return numbers, positions, cell, pbc


def _site_number(site: dict, fail) -> int:
    species = site["species"]
    if len(species) != 1 or abs(species[0].get("occu", 1) - 1) > 1e-6:
        raise fail(f"disordered site (species {species}); only ordered structures are supported")
    symbol = species[0]["element"]
    number = atomic_numbers.get(symbol)
    if number is None:
        raise fail(f"unknown element {symbol!r}")
    return number


def _required(record: dict, key: str, fail):
    value = record.get(key)
    if value is None:
        raise fail(f"missing field {key!r}")
    return value


def _scalars(record: dict, exclude) -> dict:
    """Scalar metadata of a record (ids, band gap, energies), leaving out nulls."""
    return {
        key: value
        for key, value in record.items()
        if key not in exclude and isinstance(value, (str, int, float, bool))
    }
