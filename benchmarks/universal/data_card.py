"""The data half of the universal model's card: what the labels directory holds.

    python benchmarks/universal/data_card.py [benchmarks/universal/labels] [--real FILE ...]

Prints (markdown) frames and atoms by method and by seed origin, the drop counts by reason,
the teacher and recipe from the directory's index, and frames per element (teacher frames,
and real DFT frames of the given files), flagging elements in fewer than --rare frames.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import numpy as np
from ase.data import chemical_symbols

from mlip.data.readers import read_frames
from mlip.data.shards import ShardedDataset
from mlip.distill.chemistry import MPTRJ_ELEMENTS


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("labels", type=Path, nargs="?", default=Path("benchmarks/universal/labels"))
    parser.add_argument("--real", type=Path, nargs="*", default=[
        Path("../shared/data/mptrj/mptrj-highest-stress-1k.xyz"), Path("../shared/data/mattersim/mpf-TP.xyz")])
    parser.add_argument("--rare", type=int, default=100, help="flag elements in fewer frames")
    args = parser.parse_args(argv)
    data = ShardedDataset(args.labels)
    meta = data.meta
    by_method, by_origin, per_element = collections.Counter(), collections.Counter(), collections.Counter()
    for i in range(len(data)):
        frame = data[i]
        by_method[frame.info["method"].split(":")[0]] += 1
        by_origin[frame.info["origin"].split(":")[0]] += 1
        per_element.update(set(frame.numbers.tolist()))
    real = collections.Counter()
    n_real = 0
    for path in args.real:
        for frame in read_frames(path):
            real.update(set(frame.numbers.tolist()))
            n_real += 1
    print(f"teacher: {meta['teacher']['name']} ({meta['teacher']['version']}), energies {meta['energy']}")
    print(f"{len(data)} teacher frames, {int(data.n_atoms.sum())} atoms, from {len(meta['seeds_done'])} seeds; "
          f"{n_real} real DFT frames")
    print("by method: " + ", ".join(f"{k} {v}" for k, v in by_method.most_common()))
    print("by seed origin: " + ", ".join(f"{k} {v}" for k, v in by_origin.most_common()))
    print("dropped: " + (", ".join(f"{reason} {n}" for reason, n in sorted(meta["dropped"].items(), key=lambda x: -x[1])) or "none"))
    print(f"recipe: {meta['recipe']}\nfilters: {meta['filters']}\n")
    print("| element | teacher frames | real frames |\n|---|---:|---:|")
    for symbol in MPTRJ_ELEMENTS:
        z = chemical_symbols.index(symbol)
        flag = " (rare)" if per_element[z] + real[z] < args.rare else ""
        print(f"| {symbol}{flag} | {per_element[z]} | {real[z]} |")
    counts = np.array([per_element[chemical_symbols.index(s)] for s in MPTRJ_ELEMENTS])
    print(f"\nteacher frames per element: min {counts.min()}, median {int(np.median(counts))}, max {counts.max()}")


if __name__ == "__main__":
    main()
