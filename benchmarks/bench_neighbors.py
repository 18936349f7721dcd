"""Host neighbour-list construction time on one CPU core: mlip vs vesin, matscipy and ASE.

Run pinned to a single core, from the repository root:

    taskset -c 0 .venv/bin/python benchmarks/bench_neighbors.py

Structures are dense and realistic for a 5 Å cutoff: fcc Cu and diamond Si supercells with
0.05 Å Gaussian displacements, and uniformly random atoms at 0.08 atoms/Å^3 (an amorphous
density), at about 1k, 10k and 100k atoms. Each entry is the best of several wall-clock runs,
with mlip, vesin and matscipy interleaved round by round.
``mlip`` is ``mlip.data.neighbors.neighbor_list`` (vesin plus sorting by receiver and int32
casts); ``vesin`` is the raw vesin call it wraps. Peers are reported as (peer time / mlip
time), so > 1 means mlip is faster. ASE is skipped when its extrapolated time exceeds 60 s.
Prints a markdown table.
"""

from __future__ import annotations

import os

# Before numpy/vesin load: one thread everywhere (vesin reads OMP_NUM_THREADS when its
# n_threads is 0, which is what mlip passes), so the numbers are single-core numbers.
for _name in (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
):
    os.environ[_name] = "1"

import time  # noqa: E402

import numpy as np  # noqa: E402
import vesin  # noqa: E402
from ase.build import bulk  # noqa: E402
from ase.neighborlist import primitive_neighbor_list  # noqa: E402
from matscipy.neighbours import neighbour_list as matscipy_neighbour_list  # noqa: E402

from mlip.data.neighbors import neighbor_list  # noqa: E402
from machine import cpu_model  # noqa: E402  (benchmarks/machine.py)

CUTOFF = 5.0  # Å
SIZES = (1_000, 10_000, 100_000)
AMORPHOUS_DENSITY = 0.08  # atoms / Å^3
ASE_LIMIT_S = 60.0
#: Timed rounds for (<= 10k atoms, > 10k atoms); ASE is 10-50x slower so gets fewer.
REPEATS = (15, 7)
ASE_REPEATS = (3, 1)


def crystal(symbol: str, structure: str, a: float, n_atoms: int, rng) -> tuple:
    """Cubic-cell supercell of about n_atoms atoms, displaced by N(0, 0.05 Å) per component.

    Returns (positions [n, 3] Å, cell [3, 3] Å, pbc [3]).
    """
    unit = bulk(symbol, structure, a=a, cubic=True)
    k = round((n_atoms / len(unit)) ** (1 / 3))
    m = max(1, round(n_atoms / (len(unit) * k * k)))
    atoms = unit.repeat((k, k, m))
    positions = atoms.positions + rng.normal(0.0, 0.05, atoms.positions.shape)
    return positions, atoms.cell.array.copy(), np.array([True] * 3)


def amorphous(n_atoms: int, rng) -> tuple:
    """n_atoms uniformly random in a cube at AMORPHOUS_DENSITY; same return as crystal()."""
    length = (n_atoms / AMORPHOUS_DENSITY) ** (1 / 3)
    cell = np.eye(3) * length
    return rng.uniform(0.0, length, (n_atoms, 3)), cell, np.array([True] * 3)


def run_mlip(positions, cell, pbc):
    return len(neighbor_list(positions, cell, pbc, CUTOFF).senders)


def run_vesin(positions, cell, pbc):
    calculator = vesin.NeighborList(cutoff=CUTOFF, full_list=True)
    return len(calculator.compute(positions, cell, [bool(p) for p in pbc], "ijS")[0])


def run_matscipy(positions, cell, pbc):
    quantities = matscipy_neighbour_list(
        "ijS", positions=positions, cell=cell, pbc=pbc, cutoff=CUTOFF
    )
    return len(quantities[0])


def run_ase(positions, cell, pbc):
    return len(
        primitive_neighbor_list("ijS", pbc, cell, positions, CUTOFF, self_interaction=False)[0]
    )


def timed(function, args) -> tuple[float, int]:
    """(wall time in s of one call, number of edges found)."""
    start = time.perf_counter()
    n_edges = function(*args)
    return time.perf_counter() - start, n_edges


def structures(rng):
    """(name, builder(n_atoms) -> (positions, cell, pbc)) for each structure family."""
    return [
        ("fcc Cu", lambda n: crystal("Cu", "fcc", 3.615, n, rng)),
        ("diamond Si", lambda n: crystal("Si", "diamond", 5.431, n, rng)),
        (f"random, {AMORPHOUS_DENSITY} Å⁻³", lambda n: amorphous(n, rng)),
    ]


def benchmark_row(name, system, ase_estimate_s: float) -> tuple[str, float | None]:
    """Times every implementation on one system; returns (table row, ASE time in s or None).

    The fast implementations run interleaved, round after round, so that load from other
    processes hits them alike and their ratios stay meaningful; each keeps its best round.
    """
    n_atoms = len(system[0])
    fast = {"mlip": run_mlip, "vesin": run_vesin, "matscipy": run_matscipy}
    best = dict.fromkeys(fast, np.inf)
    edges = set()
    for _ in range(REPEATS[n_atoms > 10_000]):
        for implementation, function in fast.items():
            seconds, n_edges = timed(function, system)
            best[implementation] = min(best[implementation], seconds)
            edges.add(n_edges)
    if ase_estimate_s <= ASE_LIMIT_S:
        rounds = ASE_REPEATS[n_atoms > 10_000]
        ase_times, ase_edges = zip(*(timed(run_ase, system) for _ in range(rounds)))
        best["ase"] = min(ase_times)
        edges.update(ase_edges)
    assert len(edges) == 1, f"implementations disagree on the number of edges: {edges}"

    ours = best["mlip"]
    cells = [name, f"{n_atoms:,}", f"{edges.pop():,}", f"{ours * 1e3:.1f}"]
    cells.append(f"{100 * (ours - best['vesin']) / ours:.0f}%")
    cells += [f"{best[p] * 1e3:.1f} ({best[p] / ours:.2f}×)" for p in ("vesin", "matscipy")]
    if "ase" in best:
        cells.append(f"{best['ase'] * 1e3:.0f} ({best['ase'] / ours:.0f}×)")
    else:
        cells.append(f"skipped (est. {ase_estimate_s:.0f} s > {ASE_LIMIT_S:.0f} s)")
    return "| " + " | ".join(cells) + " |", best.get("ase")


def main():
    affinity = sorted(os.sched_getaffinity(0))
    if len(affinity) != 1:
        print(f"WARNING: not pinned to one core (affinity {affinity}); use taskset -c 0\n")
    print(f"cutoff {CUTOFF} Å; CPU {cpu_model()}; affinity {affinity}")
    print(
        f"times in ms, best of {REPEATS[0]} (<= 10k atoms) or {REPEATS[1]} rounds "
        f"(ASE: {ASE_REPEATS[0]} or {ASE_REPEATS[1]}); (×) = peer time / mlip time\n"
    )
    print(
        "| structure | atoms | edges | mlip (ms) | mlip overhead over vesin "
        "| vesin raw | matscipy | ase |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for name, build in structures(rng):
        ase_seconds_per_atom = 0.0  # ASE's cost grows about linearly with atoms
        for size in SIZES:
            system = build(size)
            estimate = ase_seconds_per_atom * len(system[0])
            row, ase_time = benchmark_row(name, system, estimate)
            print(row, flush=True)
            if ase_time is not None:
                ase_seconds_per_atom = ase_time / len(system[0])


if __name__ == "__main__":
    main()
