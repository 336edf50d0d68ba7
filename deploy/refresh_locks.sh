#!/usr/bin/env bash
# Refreshes the committed lock files from pyproject.toml: every package pinned to the newest
# version the ranges allow. Run it on purpose (`bash deploy/refresh_locks.sh`), run the tests
# on the result, and commit the locks with the reason in the message.
#
# torch is left out of every lock: users install it first (the CPU wheel here, a CUDA build on
# GPU hosts, see README). Its own dependencies are locked as the CPU wheel declares them, so
# no CUDA packages end up in a lock.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q "uv>=0.5"

torch_version=2.13.0
overrides=$(mktemp)
trap 'rm -f "$overrides"' EXIT
echo "torch==${torch_version}+cpu" > "$overrides"
if ls /opt/wheels/torch-"${torch_version}"+cpu-*.whl >/dev/null 2>&1; then
    source_args=(--find-links /opt/wheels)          # the machines' local CPU wheel
else
    source_args=(--extra-index-url https://download.pytorch.org/whl/cpu)
fi

compile() {  # compile OUTPUT EXTRA...
    local out=$1; shift
    local extras=()
    for e in "$@"; do extras+=(--extra "$e"); done
    uv pip compile pyproject.toml "${extras[@]}" --python-version 3.11 \
        "${source_args[@]}" --override "$overrides" --no-emit-package torch \
        --no-header --upgrade --quiet -o "$out"
    sed -i "1i # Locked by deploy/refresh_locks.sh from pyproject.toml (extras: $*); torch excluded.\n# Install: pip install torch==${torch_version} && pip install -r $out && pip install --no-deps -e ." "$out"
}
compile deploy/locks/cpu.txt cpu
compile deploy/locks/cpu-dev.txt cpu dev
compile deploy/locks/gpu.txt gpu
echo "locks refreshed: deploy/locks/{cpu,cpu-dev,gpu}.txt"
