#!/usr/bin/env bash
# Prepare .whl/ (git-ignored): the Python 3.12 manylinux x86-64 wheels of mlip's dependencies
# that the GPU device image lacks, so that a session that is lent a GPU spends none of its
# device minutes on set-up (the device machine has no network).
#
# The device image (/work/.library/device/KINDS.md, "Python packages already there") holds
# Python 3.12, jax/jaxlib 0.11 with the CUDA 13 plugin, flax, optax, numpy, scipy, pyyaml,
# tqdm, matplotlib, sympy, attrs and typing-extensions. Of mlip's dependencies it lacks
# e3nn-jax, ase, vesin and ijson: this script downloads those, at the versions installed in
# the environment that runs it (the versions the test suite passed with), builds mlip's own
# wheel from the working tree (the image's setuptools may be too old to build it there: 65.5
# fails on pyproject.toml's SPDX license string), checks that every requirement of every wheel
# is either in .whl/ or in the image, and that the folder is small enough to travel (the device
# tool carries at most 64 MiB with the working tree). mlip's wheel is a snapshot: run this
# again after any change to mlip/ or kernels/, right before the device call.
#
# Run here, from the repository root, with the project's virtual environment active:
#
#     bash benchmarks/device_wheels.sh
#
# Then the device check, one call of the device tool's `run` (benchmarks/RESULTS.md, "GPU
# device check", gives the same call):
#
#     command:   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 && python3 benchmarks/device_check.py --out $OUT --budget 420 2>&1 | tee $OUT/log.txt
#     carry:     [".whl"]
#     timeout_s: 540
set -euo pipefail
cd "$(dirname "$0")/.."

# What mlip needs that the image lacks (everything else of pyproject.toml's dependencies is there).
MISSING=(e3nn-jax ase vesin ijson)
# The image's packages that these wheels may require (KINDS.md's list, lower-case, '-' for '_').
IMAGE="numpy scipy jax jaxlib flax optax pyyaml tqdm matplotlib sympy attrs typing-extensions"

rm -rf .whl
mkdir -p .whl
for name in "${MISSING[@]}"; do
    version=$(python -c "import importlib.metadata as m; print(m.version('$name'))")
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$name==$version"
done

# mlip itself, installed there with --no-deps like the others.
python -m pip wheel -q --no-deps -w .whl .
echo "$(git describe --always --dirty 2>/dev/null || echo unknown) $(date -u '+%Y-%m-%d %H:%M UTC')" > .whl/BUILT_FROM

# Every requirement (without an "extra" marker) of every wheel must be in .whl/ or the image.
python - "$IMAGE" <<'EOF'
import re, sys, zipfile
from pathlib import Path

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

image = set(sys.argv[1].split())
wheels = sorted(Path(".whl").glob("*.whl"))
have = {norm(w.name.split("-")[0]) for w in wheels}
missing = []
for wheel in wheels:
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        for line in archive.read(metadata).decode().splitlines():
            if line.startswith("Requires-Dist:") and "extra ==" not in line:
                requirement = norm(re.match(r"Requires-Dist:\s*([A-Za-z0-9_.\-]+)", line).group(1))
                if requirement not in have | image:
                    missing.append(f"{wheel.name} needs {requirement}")
size = sum(w.stat().st_size for w in wheels)
print("\n".join(f"  {w.name} ({w.stat().st_size / 2**20:.1f} MiB)" for w in wheels))
print(f".whl/: {len(wheels)} wheels, {size / 2**20:.1f} MiB")
if missing:
    sys.exit("incomplete wheel set:\n  " + "\n  ".join(missing))
if size > 32 * 2**20:
    sys.exit(f".whl/ is {size / 2**20:.1f} MiB: leave room in the device tool's 64 MiB")
print("complete: every requirement is in .whl/ or in the device image")
EOF
