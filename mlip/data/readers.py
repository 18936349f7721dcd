"""Read structures and DFT labels from files into validated :class:`Frame` records.

One entry point, :func:`read_frames`, for extxyz (and every other ase.io format), ASE
databases, MPtrj's JSON and mlearn's JSON. Units are converted here, at the edge; everything
downstream sees Å, eV, eV/Å and eV/Å^3 with ASE's stress sign.

Every source yields ``(label, build)`` pairs, where ``build()`` turns one raw record into a
Frame. Errors in a single record therefore surface per frame (and can be skipped), while a
file that cannot be parsed any further always stops the read with a DataError.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import itertools
import logging
from collections.abc import Iterator
from pathlib import Path

import ase
import ase.io
import numpy as np
from ase.data import atomic_numbers
from ase.io.extxyz import per_atom_properties

from mlip.data.frame import CloseAtomsPolicy, Frame, make_frame, stress_to_matrix, validate_frame
from mlip.data.pymatgen_json import FrameSource, iter_mlearn, iter_mptrj
from mlip.errors import DataError, MlipError
from mlip.fileio import compression, open_text, read_atoms, uncompressed_name

logger = logging.getLogger("mlip.data")


@dataclasses.dataclass
class ReadReport:
    """What a :func:`read_frames` call did; pass one in to inspect it afterwards.

    Attributes:
        read: frames yielded.
        skipped: bad frames skipped (``on_error="skip"``).
        reasons: one line per skipped frame, the DataError message (names file and frame).
    """

    read: int = 0
    skipped: int = 0
    reasons: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        """One line, e.g. "read 998 frames, skipped 2 (see warnings)"."""
        text = f"read {self.read} frame{'' if self.read == 1 else 's'}"
        return text + (f", skipped {self.skipped} (see warnings)" if self.skipped else "")


@dataclasses.dataclass(frozen=True)
class _LabelKeys:
    """Where ASE-based formats keep the labels; None means "do not read this label"."""

    energy: str | None
    forces: str | None
    stress: str | None
    virials: str | None
    required: bool = True


def read_frames(
    path,
    *,
    format: str | None = None,
    energy_key: str | None = "energy",
    forces_key: str | None = "forces",
    stress_key: str | None = "stress",
    virials_key: str | None = None,
    mptrj_energy: str | None = None,
    index=":",
    on_error: str = "raise",
    min_distance: float = 0.5,
    close_atoms: CloseAtomsPolicy = "error",
    report: ReadReport | None = None,
    require_labels: bool = True,
) -> Iterator[Frame]:
    """Yield the frames of a structure file, converted to mlip's units and validated.

    Args:
        path: the file.
        format: None detects it: ``.json`` is sniffed (a top-level object is MPtrj's
            ``{mp_id: {frame_id: frame}}``, a top-level list is mlearn's), ``.db`` is an ASE
            database, ``.xyz``/``.extxyz`` is extxyz, anything else goes to ase.io. Explicit
            values: "mptrj", "mlearn", "ase-db", "extxyz", or any other ase.io format name.
            extxyz is split into frames here and each parsed by ase, so a broken frame is a
            per-frame error; other ase.io formats stop at the first frame ase cannot parse.
        energy_key, forces_key, stress_key: names of the labels in ASE formats (extxyz, ASE db,
            ...), e.g. MACE's "REF_energy", "REF_forces", "REF_stress". Each is looked up in
            the attached calculator's results (ase's extxyz reader moves keys literally named
            energy/forces/stress there), then in ``atoms.info``/``atoms.arrays`` (and for a
            database row in its key-value pairs and data). Stress may be [3, 3], 9 values or
            Voigt 6 (xx yy zz yz xz xy), in eV/Å^3 with ASE's sign. The JSON layouts have fixed
            field names and ignore these keys.
        virials_key: name of virials (eV, [3, 3]/9/6) to use for the stress when present:
            stress = -virials / volume. MACE's "REF_virials".
        mptrj_energy: required for MPtrj: "uncorrected_total_energy" (raw DFT, consistent
            with forces and stresses; MACE/SevenNet-style pretraining) or
            "corrected_total_energy" (MP2020 corrections).
        index: which frames, by 0-based position in the file: an int, a slice, or an ASE
            style string ("2", "10:20", "::5"). Negative values need the whole file read first.
        on_error: "raise" stops at the first bad frame; "skip" skips it with a warning on
            the "mlip.data" logger and counts it in ``report``. A file that cannot be parsed
            beyond some point (truncated JSON, a broken frame count line) raises either way.
        min_distance, close_atoms: passed to :func:`validate_frame` (atoms closer than
            ``min_distance`` Å are an "error", a "warn"ing, or "ignore"d).
        report: filled with counts of frames read and skipped.
        require_labels: with False, a label missing from a frame is read as None instead of
            raising (for structures to simulate or inspect rather than to train on).

    Missing labels: a label whose key is not None must be present in every frame, else a
    DataError "missing label 'REF_energy'" (pass the key as None to read unlabelled data).
    The exception is stress (or virials) on a frame that is not periodic in all three
    directions, where stress is undefined: it is read as None.

    Per-atom arrays other than positions and the forces (e.g. "magmoms") go into
    ``frame.atom_extras``; other metadata into ``frame.info``. ``frame.index`` is the frame's
    position in the file (MPtrj: its frame id, e.g. "mp-1005792-0-2"); ``frame.source`` the
    path. Raises DataError naming the file and, where known, the frame.
    """
    if on_error not in ("raise", "skip"):
        raise MlipError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    report = report if report is not None else ReadReport()
    keys = _LabelKeys(energy_key, forces_key, stress_key, virials_key, require_labels)
    path = Path(path)
    items = _guard_file(_open_source(path, format, keys, mptrj_energy), str(path))
    for label, build in _select(items, index):
        try:
            frame = _build(build, str(path), label)
            validate_frame(frame, min_distance=min_distance, close_atoms=close_atoms)
        except DataError as error:
            if on_error == "raise":
                raise
            report.skipped += 1
            report.reasons.append(str(error))
            logger.warning("skipped: %s", error)
            continue
        report.read += 1
        yield frame


def _open_source(path: Path, format: str | None, keys: _LabelKeys, mptrj_energy) -> FrameSource:
    # A generator, so that even sniffing the format runs inside _guard_file.
    if not path.is_file():
        raise DataError("no such file", path)
    format = format or _detect_format(path)
    if format == "mptrj":
        yield from iter_mptrj(path, mptrj_energy)
    elif format == "mlearn":
        yield from iter_mlearn(path)
    elif format == "ase-db":
        yield from _iter_db(path, keys)
    elif format == "extxyz":
        yield from _iter_extxyz(path, keys)
    else:
        yield from _iter_ase(path, format, keys)


def _detect_format(path: Path) -> str | None:
    suffix = Path(uncompressed_name(path)).suffix.lower()
    if compression(path) and suffix in (".json", ".db"):
        raise DataError(f"a compressed {suffix} file is not read as it is; decompress it first", path)
    if suffix == ".json":
        return _sniff_json(path)
    if suffix == ".db":
        return "ase-db"
    if suffix in (".xyz", ".extxyz"):
        return "extxyz"
    return None  # let ase.io guess from the name and contents


def _sniff_json(path: Path) -> str:
    """MPtrj is one big object, mlearn a list: the first non-blank character tells."""
    with open(path, "rb") as file:
        while (char := file.read(1)) and char.isspace():
            pass
    layouts = {b"{": "mptrj", b"[": "mlearn"}
    if char not in layouts:
        raise DataError(
            "JSON file is neither MPtrj ({mp_id: {frame_id: frame}}) nor mlearn ([...])", path
        )
    return layouts[char]


def _guard_file(items: FrameSource, source: str) -> FrameSource:
    """Turn any exception from a file-level parser (ijson, json, sqlite, ase.io) into a
    DataError naming the file and the last good frame."""
    label = None
    try:
        for label, build in items:
            yield label, build
    except DataError:
        raise
    except Exception as exc:  # third-party parsers raise anything; none may escape raw
        where = "" if label is None else f" after frame {label}"
        problem = f"cannot read the file{where}: {type(exc).__name__}: {exc}"
        raise DataError(problem, source) from exc


def _build(build, source: str, label) -> Frame:
    """Run one frame's conversion, reporting malformed records as DataErrors."""
    try:
        return build()
    except DataError:
        raise
    except KeyError as exc:
        raise DataError(f"malformed frame: missing field {exc}", source, label) from exc
    except (TypeError, ValueError, IndexError, AttributeError) as exc:
        raise DataError(f"malformed frame: {type(exc).__name__}: {exc}", source, label) from exc


def _select(items: FrameSource, index) -> FrameSource:
    selection = _parse_index(index)
    if any(v is not None and v < 0 for v in (selection.start, selection.stop, selection.step)):
        return iter(list(items)[selection])
    # Stops reading as soon as the selection is complete (matters for streamed files).
    return itertools.islice(items, selection.start, selection.stop, selection.step)


def _parse_index(index) -> slice:
    if isinstance(index, slice):
        return index
    if isinstance(index, int):
        return slice(index, index + 1 or None)
    if isinstance(index, str):
        try:
            parts = [int(part) if part.strip() else None for part in index.split(":")]
        except ValueError:
            parts = []
        if len(parts) == 1 and parts[0] is not None:
            return _parse_index(parts[0])
        if 2 <= len(parts) <= 3:
            return slice(*parts)
    raise MlipError(f"index must be an int, a slice or a string like '10:20', got {index!r}")


# --- ASE formats ---------------------------------------------------------------------------


def _iter_extxyz(path: Path, keys: _LabelKeys) -> FrameSource:
    """Split an extxyz file into frames by their atom-count lines and parse each separately,
    so one broken frame (bad number, unknown element) is a per-frame error, not the end of
    the file as with ``ase.io.iread``."""
    with open_text(path) as file:
        for position in itertools.count():
            line = next(file, "")
            while line and not line.strip():  # blank lines between frames
                line = next(file, "")
            if not line:
                return
            try:
                n_atoms = int(line)
            except ValueError:
                got = line.strip()[:60]
                if position > 0 and _is_atom_line(line):  # the previous frame's count was too low
                    raise DataError(f"more atom lines than its atom count says (the next line is {got!r})",
                                    path, position - 1) from None
                raise DataError(f"expected an atom count, got {got!r}", path, position) from None
            body = list(itertools.islice(file, n_atoms + 1))
            if len(body) < n_atoms + 1:
                raise DataError("file ends inside this frame (truncated?)", path, position)
            text = line + "".join(body)
            yield position, functools.partial(_extxyz_frame, text, keys, str(path), position)


def _is_atom_line(line: str) -> bool:
    """Whether ``line`` reads as an extxyz atom line: a symbol, then three coordinates."""
    fields = line.split()
    try:
        [float(x) for x in fields[1:4]]
    except ValueError:
        return False
    return len(fields) >= 4 and fields[0].isalpha()


def _extxyz_frame(text: str, keys: _LabelKeys, source: str, index: int) -> Frame:
    try:
        atoms = ase.io.read(io.StringIO(text), format="extxyz")
    except KeyError as exc:  # ase looks species symbols up in a dict
        symbol = exc.args[0]
        problem = f"unknown element {symbol!r}" if symbol not in atomic_numbers else repr(exc)
        raise DataError(f"cannot parse extxyz frame: {problem}", source, index) from exc
    except Exception as exc:  # ase's parser raises anything on bad text; it is a data problem
        problem = f"{type(exc).__name__}: {exc}"
        raise DataError(f"cannot parse extxyz frame: {problem}", source, index) from exc
    return _atoms_to_frame(atoms, keys, source, index)


def _iter_ase(path: Path, format: str | None, keys: _LabelKeys) -> FrameSource:
    # A plain file streams (iread); a compressed one is decompressed into memory once, since
    # ase's readers seek and each seek would decompress it again (mlip.fileio.open_text).
    frames = read_atoms(path, ":", format) if compression(path) else ase.io.iread(path, index=":", format=format)
    for position, atoms in enumerate(frames):
        yield position, functools.partial(_atoms_to_frame, atoms, keys, str(path), position)


def _iter_db(path: Path, keys: _LabelKeys) -> FrameSource:
    """Rows of an ASE database in id order; labels from the row's calculator results, its
    key-value pairs or its data. The row id is kept as ``info["db_id"]``."""
    import ase.db

    for position, row in enumerate(ase.db.connect(path, type="db").select()):
        yield position, functools.partial(_row_frame, row, keys, str(path), position)


def _row_frame(row, keys: _LabelKeys, source: str, index: int) -> Frame:
    atoms = row.toatoms()
    atoms.info.update(row.key_value_pairs, db_id=row.id)
    for name, value in row.data.items():
        per_atom = np.ndim(value) >= 1 and len(value) == len(atoms)
        (atoms.arrays if per_atom else atoms.info)[name] = value
    return _atoms_to_frame(atoms, keys, source, index)


def _atoms_to_frame(atoms: ase.Atoms, keys: _LabelKeys, source: str, index) -> Frame:
    """Convert ase.Atoms with labels under ``keys`` (calculator results, info or arrays)."""
    results = dict(atoms.calc.results) if atoms.calc is not None else {}
    per_atom = {name: v for name, v in results.items() if name in per_atom_properties}
    per_atom.update((k, v) for k, v in atoms.arrays.items() if k not in ("numbers", "positions"))
    scalars = {name: v for name, v in results.items() if name not in per_atom_properties}
    scalars.update(atoms.info)
    found = {**scalars, **per_atom}

    def missing(*names):
        wanted = " or ".join(repr(name) for name in names if name is not None)
        return DataError(
            f"missing label {wanted} (this frame has {sorted(found)}); name the right key "
            "(energy_key, forces_key, stress_key, virials_key), or pass None for unlabelled data",
            source,
            index,
        )

    for key in (keys.energy, keys.forces):
        if key is not None and key not in found and keys.required:
            raise missing(key)
    stress = _stress(atoms, found.get(keys.stress), found.get(keys.virials), source, index)
    if stress is None and atoms.pbc.all() and (keys.stress or keys.virials) and keys.required:
        raise missing(keys.virials, keys.stress)
    used = {keys.energy, keys.forces, keys.stress, keys.virials}
    return make_frame(
        atoms.numbers,
        atoms.positions,
        atoms.cell.array,
        atoms.pbc,
        energy=found.get(keys.energy),
        forces=found.get(keys.forces),
        stress=stress,
        atom_extras={k: v for k, v in per_atom.items() if k not in used},
        info={k: _plain(v) for k, v in scalars.items() if k not in used},
        source=source,
        index=index,
    )


def _stress(atoms: ase.Atoms, stress, virials, source, index):
    """Stress [3, 3] in eV/Å^3: -virials / volume when virials are given, else the stress."""
    if virials is None:
        return stress
    volume = abs(atoms.cell.volume)
    if not atoms.pbc.all() or volume < 1e-9:
        raise DataError("virials need a cell periodic in 3-d with non-zero volume", source, index)
    return -stress_to_matrix(virials, lambda message: DataError(message, source, index)) / volume


def _plain(value):
    """numpy scalars -> Python scalars, so metadata prints and serialises cleanly."""
    return value.item() if isinstance(value, np.generic) else value
