"""The universal model's card, measured in one run against its teacher (issue 12).

    taskset -c 0 .venv/bin/python benchmarks/universal/card.py MODEL [--teacher sevenn-0] \
        [-o benchmarks/universal/card.json]

Needs the teacher installed (``pip install torch==2.13.0 && pip install -e ".[teacher]"``) and
the reference data in ../shared/data. Four parts, each on frames never trained on
(../shared/data/mptrj/mptrj-random-1k.xyz, MPtrj DFT with uncorrected energies):

1. errors against DFT (energy meV/atom, forces meV/Å per component, stress GPa per component),
   overall and per element, for the model and for the teacher on the same frames;
2. relaxation agreement: ``--relax`` structures relaxed (positions and cell, FIRE +
   FrechetCellFilter, fmax 0.05 eV/Å, 300 steps) by the teacher through ASE and by the model
   with mlip.sim.relax: final energy per atom and volume, model vs teacher;
3. stability: ``--md`` structures, 1 ps of Langevin NVT at 1000 K (1 fs steps) with mlip.sim.md:
   a structure fails if anything is non-finite, an atom ends with no neighbour within 4 Å, or
   the mean temperature exceeds 2000 K (the thermostat lost to a blow-up);
4. speed: energy + forces + stress through each ASE calculator, on this process's CPU affinity
   with one thread (pin it with taskset), steady state, median of ``--repeats`` calls.

Prints markdown tables and writes every number to ``-o`` (JSON). The teacher's half of parts
1 and 2 does not depend on the model: it is kept in ``--teacher-cache`` (JSON, keyed by
teacher, data and frame count) so measuring a later model skips it (about an hour of CPU).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/machine.py
from machine import cpu_model, set_single_thread_env  # noqa: E402

set_single_thread_env()

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

TEST = Path("../shared/data/mptrj/mptrj-random-1k.xyz")
FLY_OFF = 4.0  # Å: an atom with no neighbour this close has left its structure
HOT = 2.0  # a run whose mean temperature exceeds HOT x the thermostat's has blown up


def load(args):
    from mlip.data.readers import read_frames
    from mlip.distill.teachers import get_teacher
    from mlip.potential import Potential

    potential = Potential.load(args.model)
    teacher = get_teacher(args.teacher)
    frames = list(read_frames(args.data, index=f":{args.frames}" if args.frames else ":"))
    known = set(potential.config.species)
    frames = [f for f in frames if set(f.numbers.tolist()) <= known]
    return potential, teacher, teacher.build(), frames


def errors(potential, teacher_calc, frames, progress, cache: dict) -> dict:
    """Model and teacher metrics on the same frames (mlip.evaluate units)."""
    from tqdm.auto import tqdm

    from mlip.evaluate import Metrics, evaluate

    student = evaluate(potential, iter(frames), max_nodes=512, progress=progress).to_dict()
    if "errors" in cache:
        return {"model": student, "teacher": cache["errors"]}
    teacher = Metrics()
    for frame in tqdm(frames, desc="teacher", disable=not progress):
        atoms = frame.to_atoms()
        atoms.calc = teacher_calc
        stress = atoms.get_stress(voigt=False) if atoms.pbc.all() else None
        teacher.add_frame(frame, atoms.get_potential_energy(), atoms.get_forces(), stress)
    cache["errors"] = teacher.to_dict()
    return {"model": student, "teacher": cache["errors"]}


def _pick(frames, n, max_atoms, seed):
    small = [f for f in frames if f.n_atoms <= max_atoms and f.pbc.all()]
    order = np.random.default_rng(seed).permutation(len(small))[:n]
    return [small[k].to_atoms() for k in sorted(order)]


def relaxation(potential, teacher_calc, frames, n, progress, cache: dict, save) -> dict:
    """Final energy/atom and volume of the model's relaxations vs the teacher's."""
    import warnings

    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE
    from tqdm.auto import tqdm

    from mlip import sim

    structures = _pick(frames, n, 48, seed=1)
    for atoms in structures:
        atoms.calc = None
    ours = sim.relax(potential, structures, fmax=0.05, relax_cell=True, max_steps=300, progress=progress)
    done = cache.setdefault("relaxation", {})  # formula#index -> teacher's [energy/atom, volume]
    rows = []
    for k, (atoms, result) in enumerate(tqdm(list(zip(structures, ours)), desc="teacher relax",
                                             disable=not progress)):
        key = f"{atoms.get_chemical_formula()}#{k}"
        if key not in done:
            reference = atoms.copy()
            reference.calc = teacher_calc
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # scipy's logm inside the cell filter
                FIRE(FrechetCellFilter(reference), logfile=None).run(fmax=0.05, steps=300)
            done[key] = [reference.get_potential_energy() / len(atoms), reference.get_volume()]
            save()  # each teacher relaxation is kept as soon as it is done
        n_atoms = len(atoms)
        rows.append({
            "formula": atoms.get_chemical_formula(),
            "status": result.status,
            "energy_per_atom": (result.energy / n_atoms, done[key][0]),
            "volume": (result.atoms.get_volume(), done[key][1]),
        })
    finite = [r for r in rows if np.isfinite(r["energy_per_atom"][0])]
    dv = np.array([abs(v[0] / v[1] - 1) for v in (r["volume"] for r in finite)])
    de = np.array([abs(e[0] - e[1]) for e in (r["energy_per_atom"] for r in finite)])
    return {"structures": len(rows), "converged": sum(r["status"] == "converged" for r in rows),
            "median_volume_error": float(np.median(dv)), "mean_volume_error": float(dv.mean()),
            "within_3pct": int((dv <= 0.03).sum()),
            "energy_mae_mev_per_atom": float(1e3 * de.mean()), "rows": rows}


def stability(potential, frames, n, progress) -> dict:
    """1 ps of 1000 K Langevin NVT: non-finite values or an isolated atom fail a structure."""
    from ase.neighborlist import neighbor_list

    from mlip import sim

    structures = _pick(frames, n, 64, seed=2)
    runs = sim.md(potential, structures, ensemble="nvt-langevin", temperature=1000.0,
                  init_temperature=1000.0, steps=1000, timestep=1.0, interval=100, progress=progress)
    rows = []
    for atoms, run in zip(structures, runs):
        final = run.atoms
        finite = bool(np.isfinite(final.positions).all() and np.isfinite(run.energy))
        isolated = finite and len(set(neighbor_list("i", final, FLY_OFF))) < len(final)
        temperatures = [entry["temperature"] for entry in run.log] if run.log else []
        rows.append({"formula": atoms.get_chemical_formula(), "status": run.status,
                     "finite": finite, "isolated_atom": bool(isolated),
                     "mean_temperature": float(np.mean(temperatures)) if temperatures else None})
    ok = [r for r in rows if r["finite"] and not r["isolated_atom"] and r["status"] == "completed"
          and r["mean_temperature"] is not None and r["mean_temperature"] < HOT * 1000.0]
    return {"structures": len(rows), "stable": len(ok), "rows": rows}


def speed(potential, teacher_calc, frames, repeats) -> dict:
    """Seconds per E+F+S call through ASE for the model and the teacher, same structures."""
    from mlip.calculator import Calculator

    ours = Calculator(potential)
    structures = [a for a in _pick(frames, 200, 192, seed=3) if len(a) >= 24][:4]
    rows = []
    for atoms in structures:
        row = {"formula": atoms.get_chemical_formula(), "atoms": len(atoms)}
        for name, calc in (("model", ours), ("teacher", teacher_calc)):
            atoms = atoms.copy()
            atoms.calc = calc
            times = []
            for k in range(repeats + 2):  # two warm-up calls (compilation, caches)
                atoms.positions[0, 0] += 1e-3
                start = time.perf_counter()
                atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
                times.append(time.perf_counter() - start)
            row[name] = float(np.median(times[2:]))
        row["ratio"] = row["teacher"] / row["model"]
        rows.append(row)
    return {"rows": rows, "median_ratio": float(np.median([r["ratio"] for r in rows]))}


def markdown(card: dict) -> str:
    lines = ["| on mptrj-random-1k (DFT) | model | teacher |", "|---|---:|---:|"]
    for name, unit in (("energy", "meV/atom"), ("forces", "meV/Å"), ("stress", "GPa")):
        m, t = card["errors"]["model"][name]["mae"], card["errors"]["teacher"][name]["mae"]
        lines.append(f"| {name} MAE ({unit}) | {m:.3g} | {t:.3g} |")
    lines += ["", "| element | atoms | F MAE model | F MAE teacher | E frames | E MAE model | E MAE teacher |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    model, teacher = card["errors"]["model"]["elements"], card["errors"]["teacher"]["elements"]

    def cell(value):
        return "-" if value is None else f"{value:.0f}"

    for symbol, row in sorted(model.items(), key=lambda item: -item[1]["atoms"]):
        other = teacher.get(symbol, {})
        lines.append(f"| {symbol} | {row['atoms']} | {cell(row['forces_mae'])} | {cell(other.get('forces_mae'))} | "
                     f"{row['energy_frames']} | {cell(row['energy_mae'])} | {cell(other.get('energy_mae'))} |")
    if "relaxation" in card:
        r = card["relaxation"]
        lines.append(f"\nRelaxation vs teacher ({r['structures']} structures): median |ΔV|/V "
                     f"{100 * r['median_volume_error']:.2f} %, {r['within_3pct']} within 3 %, "
                     f"energy MAE {r['energy_mae_mev_per_atom']:.1f} meV/atom, {r['converged']} converged")
    if "stability" in card:
        s = card["stability"]
        lines.append(f"1 ps NVT at 1000 K: {s['stable']}/{s['structures']} stable")
    if "speed" in card:
        lines.append("\n| structure | atoms | model s | teacher s | teacher/model |\n|---|---:|---:|---:|---:|")
        for row in card["speed"]["rows"]:
            lines.append(f"| {row['formula']} | {row['atoms']} | {row['model']:.3f} | "
                         f"{row['teacher']:.3f} | {row['ratio']:.2f}x |")
    return "\n".join(lines)


def _save(path: Path, data: dict) -> None:
    from mlip.fileio import atomic_write_bytes

    atomic_write_bytes(path, json.dumps(data, indent=1).encode())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="potential file or bundled model name")
    parser.add_argument("--teacher", default="sevenn-0")
    parser.add_argument("--data", type=Path, default=TEST)
    parser.add_argument("--frames", type=int, default=None, help="first N test frames only")
    parser.add_argument("--relax", type=int, default=100)
    parser.add_argument("--md", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("-o", "--output", type=Path)
    parser.add_argument("--teacher-cache", type=Path, default=Path(__file__).with_name("teacher-card.json"),
                        help="JSON of the teacher's results, reused when teacher, data and frames match")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    potential, teacher, teacher_calc, frames = load(args)
    progress = not args.quiet
    teacher_label = f"{teacher.name}, {teacher.version}"
    key = {"teacher": teacher_label, "data": str(args.data), "frames": len(frames)}
    cache = json.loads(args.teacher_cache.read_text()) if args.teacher_cache.exists() else {}
    if cache.get("key") != key:
        cache = {"key": key}
    card = {"model": str(args.model), "teacher": teacher_label,
            "data": str(args.data), "frames": len(frames), "cpu": cpu_model(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes")}
    card["errors"] = errors(potential, teacher_calc, frames, progress, cache)
    _save(args.teacher_cache, cache)
    if args.relax:
        card["relaxation"] = relaxation(potential, teacher_calc, frames, args.relax, progress, cache,
                                        lambda: _save(args.teacher_cache, cache))
    if args.md:
        card["stability"] = stability(potential, frames, args.md, progress)
    if args.repeats:
        card["speed"] = speed(potential, teacher_calc, frames, args.repeats)
    print(markdown(card))
    if args.output:
        _save(args.output, card)


if __name__ == "__main__":
    main()
