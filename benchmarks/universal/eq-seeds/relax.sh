#!/usr/bin/env bash
# Step 1 of the near-equilibrium labels (benchmarks/universal/universal-eq.yaml): the student
# relaxes the seeds (positions and cell, FIRE + FrechetCellFilter to 0.05 eV/Å) in chunks of
# 300, each written (atomically) to its own file, so an interrupted run keeps the chunks done;
# rerun to continue. The student of record is student.mlip here (the first run's best.mlip
# after epoch 12: validation E 75 meV/atom, F 205 meV/Å). Seeds: `mlip generate ../shared/data/mptrj/mptrj-highest-stress-1k.xyz
# ../shared/data/mattersim/mpf-TP.xyz -o seeds.extxyz --elemental 0 --compounds 600 --random 0
# --real 2069 --min-per-element 0 --max-atoms 32 --seed 2` (2,540 seeds: 600 prototypes, 1,940 real).
#   bash benchmarks/universal/eq-seeds/relax.sh
# The seeds and the relaxed chunks are stored xz-compressed (mlip and ASE read them as they are).
# Step 2: mlip label benchmarks/universal/eq-seeds/relaxed-*.extxyz.xz -o benchmarks/universal/labels-eq \
#   --relax-steps 12 --perturbations 3 --rattle 0.01 0.05 --strain 0.02 --md-steps 12 \
#   --md-temperature 300 700 --seed 2 --workers 2
set -euo pipefail
here="$(dirname "$0")"
model=${MODEL:-$here/student.mlip}
total=$(xz -dc "$here/seeds.extxyz.xz" | grep -c "seed_id=")
for ((start = 0; start < total; start += 300)); do
    out=$(printf "%s/relaxed-%04d.extxyz" "$here" "$start")
    [[ -f $out.xz ]] && continue
    # mlip relax exits with 1 when some structure has not converged in 300 steps; those are
    # still good seeds (the teacher relaxes on from them), and their status is in the file.
    mlip relax "$here/seeds.extxyz.xz" --index "$start:$((start + 300))" --model "$model" --cell --fmax 0.05 \
        --steps 300 --batch-atoms 1024 --on-error skip -q -o "$out" || [[ -f $out ]]
    xz -9 "$out"
done
