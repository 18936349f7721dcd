"""Does a universal model generalise to new structures, or has it learned its training seeds?

    python benchmarks/universal/unseen.py MODEL --data DIR --trained-frames N [--frames 300]
    python benchmarks/universal/unseen.py MODEL --data DIR --new NEW_DIR [--new-frames M]

DIR is a labelled directory (`mlip label` output) whose first N frames (all, with --new) the
model trained on and whose later frames (appended by a resumed labelling run) it never saw; or
the new frames are NEW_DIR, the rest of the same seeds file labelled into another directory
(`mlip label SEEDS --index START:`): new seeds, made by the same recipe and labelled by the
same teacher. Prints the mean signed energy error and MAE
(model - teacher, meV/atom) on ``--frames`` random frames of each part. A gap between the two
is what a frame-by-frame validation split cannot show (a seed's other frames are in training);
`data.valid_group: seed_id` measures it during training. ``--new-frames M`` draws from the
first M frames of NEW_DIR only, so that models compared at different times, while a labelling
run appends to NEW_DIR, are scored on the same frames.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bias import signed_errors  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--trained-frames", type=int, help="frames of DIR the model trained on (default: all)")
    parser.add_argument("--new", type=Path, help="a directory of new seeds (default: DIR after --trained-frames)")
    parser.add_argument("--new-frames", type=int, help="draw from the first M frames of NEW_DIR only")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from mlip.calculator import Calculator
    from mlip.data.shards import ShardedDataset

    data = ShardedDataset(args.data)
    if args.new is None and args.trained_frames is None:
        parser.error("give --trained-frames, --new or both")
    n_seen = len(data) if args.trained_frames is None else args.trained_frames
    new, start = (ShardedDataset(args.new), 0) if args.new else (data, n_seen)
    n_new = len(new) - start
    if args.new_frames is not None:
        if args.new is None or args.new_frames > n_new:
            parser.error(f"--new-frames needs --new with at least that many frames ({n_new})")
        n_new = args.new_frames
    calc = Calculator(args.model)
    rng = np.random.default_rng(args.seed)
    parts = {"trained-on seeds": (data, rng.choice(n_seen, min(args.frames, n_seen), replace=False)),
             "new seeds": (new, start + rng.choice(n_new, min(args.frames, n_new), replace=False))}
    for name, (frames, index) in parts.items():
        errors = signed_errors(calc, (frames[int(i)] for i in np.sort(index)))
        print(f"{name}: n {len(errors)}, mean signed {errors.mean():+.1f}, MAE {np.abs(errors).mean():.1f}, "
              f"median |e| {np.median(np.abs(errors)):.1f} meV/atom", flush=True)


if __name__ == "__main__":
    main()
