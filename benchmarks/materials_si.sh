#!/usr/bin/env bash
# Si materials properties with a model (default: the bundled mlearn-si), for the DFT comparison in
# benchmarks/RESULTS.md ("Materials properties of Si ... against DFT"): EOS, elastic constants,
# phonons (finite displacements and the autodiff Hessian), each timed (wall, user+sys CPU, peak
# memory), then the PBE elastic constants fitted from the mlearn DFT data next to the model's on
# the same cells (benchmarks/si_dft_reference.py). Outputs land in OUT (default
# /tmp/mlip-materials-si) and a summary is printed.
#
#   [MODEL=name-or-file] bash benchmarks/materials_si.sh [OUT]
#
# The structure is the bundled 64-atom diamond Si (mlip/assets/Si64-diamond.extxyz), relaxed
# by each command first.
#
# On the project's shared 2-core VM run it on one core:
#   XLA_FLAGS=--xla_cpu_multi_thread_eigen=false taskset -c 1 nice -n 2 bash benchmarks/materials_si.sh
set -euo pipefail
out=${1:-/tmp/mlip-materials-si}
model=${MODEL:-mlearn-si}
si="$(dirname "$0")/../mlip/assets/Si64-diamond.extxyz"
mkdir -p "$out"
run() {  # run NAME COMMAND...: time one workflow into $out/NAME.{log,time}
    local name=$1; shift
    /usr/bin/time -f "%e s wall, %U+%S s CPU, %M kB peak" -o "$out/$name.time" "$@" > "$out/$name.log" 2>&1
    echo "$name: $(cat "$out/$name.time")"
}
run eos mlip eos "$si" --model "$model" -o "$out/eos"
run elastic mlip elastic "$si" --model "$model" -o "$out/elastic"
run phonons mlip phonons "$si" --model "$model" --supercell 3 3 3 -o "$out/phonons"
run phonons-hessian mlip phonons "$si" --model "$model" --supercell 3 3 3 --force-constants hessian -o "$out/phonons-hessian"
python - "$out" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
eos = json.loads((out / "eos.json").read_text())
elastic = json.loads((out / "elastic.json").read_text())
print(json.dumps({"eos": eos, "elastic": elastic}, indent=1)[:3000])
for name in ("phonons", "phonons-hessian"):
    freqs = json.loads((out / f"{name}.json").read_text())["frequencies_THz"]
    print(name, {k: freqs[k] for k in ("Gamma", "X") if k in freqs})
EOF
run dft-reference python "$(dirname "$0")/si_dft_reference.py" --model "$model"
cat "$out/dft-reference.log"
