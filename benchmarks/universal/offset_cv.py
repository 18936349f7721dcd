"""How much of a universal model's test energy error is a per-element offset?

    python benchmarks/universal/offset_cv.py MODEL [--repeats 3]

A diagnostic, never a correction to ship: it fits one energy per element (meV/atom, weighted by
each element's fraction of the frame's atoms; ridge 1e-2) to the model's signed energy errors on
half of mptrj-random-1k and scores the other half, for ``--repeats`` random halves. Prints the
held-out MAE before, after the per-element fit, and after subtracting only the fitted half's
mean. If the fit removed most of the error, E0-like offsets would be the problem; if it removes
about as much as the mean, the error is frame by frame.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bias import DATA  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from mlip.data.readers import read_frames
    from mlip.potential import Potential

    frames = list(read_frames(DATA / "mptrj/mptrj-random-1k.xyz"))
    predictions = Potential.load(args.model).predict(frames)
    errors = np.array([1e3 * (p.energy - f.energy) / f.n_atoms for p, f in zip(predictions, frames)])
    elements = sorted({int(z) for f in frames for z in f.numbers})
    fractions = np.zeros((len(frames), len(elements)))
    for i, frame in enumerate(frames):
        np.add.at(fractions[i], np.searchsorted(elements, frame.numbers), 1.0 / frame.n_atoms)
    rng = np.random.default_rng(0)
    for repeat in range(args.repeats):
        order = rng.permutation(len(frames))
        fit, held = order[: len(frames) // 2], order[len(frames) // 2:]
        a = fractions[fit]
        offsets = np.linalg.solve(a.T @ a + 1e-2 * np.eye(len(elements)), a.T @ errors[fit])
        print(f"half {repeat}: held-out MAE {np.abs(errors[held]).mean():.1f}, after a per-element fit "
              f"{np.abs(errors[held] - fractions[held] @ offsets).mean():.1f}, after the mean only "
              f"{np.abs(errors[held] - errors[fit].mean()).mean():.1f} meV/atom", flush=True)


if __name__ == "__main__":
    main()
