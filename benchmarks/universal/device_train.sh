#!/usr/bin/env bash
# Continue the universal model's training run on the GPU device machine for a fixed time, then
# bring the run directory back: the newest checkpoint, best.mlip, the logs and metrics.
#
# Why: on one CPU core the run makes 0.4-1 steps/s (RESULTS.md, "Universal model"); a lent GPU
# makes hundreds of times that, so whatever device minutes are left after the device check go
# here. The run resumes exactly where the committed checkpoint stopped, and the CPU run resumes
# from the GPU's checkpoint the same way (`mlip train CONFIG --resume`).
#
# Three steps, from the repository root with the project's virtual environment active:
#
#   1. here:    bash benchmarks/device_wheels.sh                    # mlip and the missing wheels -> .whl/
#               bash benchmarks/universal/device_train.sh prepare   # the DFT files the config names -> .devdata/
#   2. device:  `run` with carry [".whl", ".devdata"], timeout_s = SECONDS + 120, command:
#               bash benchmarks/universal/device_train.sh run SECONDS
#   3. here:    bash benchmarks/universal/device_train.sh collect FILES_AT   # files_at of that call
#
# CONFIG (default benchmarks/universal/universal-8.yaml, the newest stage) and KERNEL (default "reference": the
# Pallas kernel is used only once the device check has shown it equal to the reference on that
# GPU) are environment variables. `prepare` and `run` also work on a CPU machine, for a dry run:
#   OUT=/tmp/out bash benchmarks/universal/device_train.sh run 60
# .devdata/ is git-ignored: the DFT files are read from ../shared/data, never committed.
set -euo pipefail
cd "$(dirname "$0")/../.."
CONFIG=${CONFIG:-benchmarks/universal/universal-8.yaml}
KERNEL=${KERNEL:-reference}
SHARED=../shared/data/   # how the config names the DFT files
CARRIED=.devdata/        # where they travel (the device gets the repository only)
RUN_DIR=$(python3 -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['output_dir'])" "$CONFIG")

case "${1:-}" in
prepare)
    rm -rf "$CARRIED"
    for path in $(grep -o "$SHARED[^ ]*" "$CONFIG" | sort -u); do
        mkdir -p "$(dirname "$CARRIED${path#"$SHARED"}")"
        cp "$path" "$CARRIED${path#"$SHARED"}"
    done
    du -sh "$CARRIED"
    ;;
run)
    seconds=${2:?usage: device_train.sh run SECONDS}
    : "${OUT:?OUT must name the folder that comes back}"
    if [ -d .whl ]; then   # the device image lacks mlip and some of its dependencies
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH=/tmp/site
    fi
    export PYTHONUNBUFFERED=1
    (nvidia-smi -L || true) | tee "$OUT/device.txt"
    # The copy here reads the DFT files from .devdata/: the config and the run's saved config
    # say so alike, or a resume would refuse the changed data paths.
    sed "s#$SHARED#$CARRIED#g" "$CONFIG" > /tmp/device-config.yaml
    resume=()
    if ls "$RUN_DIR"/checkpoints/ckpt-*.npz >/dev/null 2>&1; then
        sed -i "s#$SHARED#$CARRIED#g" "$RUN_DIR/config.yaml"
        resume=(--resume)
    fi
    # SIGTERM at the deadline: the run stops after its current step and writes a checkpoint.
    status=0
    timeout -s TERM -k 120 "$seconds" python3 -c "import sys; from mlip.cli import main; sys.exit(main(sys.argv[1:]))" \
        train /tmp/device-config.yaml "${resume[@]}" -q --set "training.kernel=$KERNEL" 2>&1 | tail -n 200 | tee "$OUT/train-console.txt" || status=$?
    mkdir -p "$OUT/run"
    cp -r "$RUN_DIR"/. "$OUT/run/"
    sed "s#$CARRIED#$SHARED#g" "$RUN_DIR/config.yaml" > "$OUT/run/config.yaml"   # the paths as here
    echo "train exit status $status; run directory in \$OUT/run"
    ;;
collect)
    from=${2:?usage: device_train.sh collect FILES_AT}/run
    [ -d "$from/checkpoints" ] || { echo "no run directory with checkpoints in $from" >&2; exit 1; }
    mkdir -p "$RUN_DIR"
    rm -rf "$RUN_DIR/checkpoints"
    cp -r "$from"/. "$RUN_DIR/"
    chmod -R u+w "$RUN_DIR"
    ls "$RUN_DIR/checkpoints"
    ;;
*)
    echo "usage: device_train.sh prepare | run SECONDS | collect FILES_AT" >&2
    exit 2
    ;;
esac
