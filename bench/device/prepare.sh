#!/usr/bin/env bash
# Prepare the wheels that the lent GPU machine lacks for bench/gpu_serving.py (issue 21) and
# bench/gpu_radialog.py (issue 20). Run HERE (the development machine, which reaches PyPI),
# from the repository root:
#
#     bash bench/device/prepare.sh
#
# The device has no network and nothing can be pip-installed there from an index, so what it
# lacks travels in .whl/ (ignored by git, named in the run tool's `carry`) and
# bench/device/run.sh installs it with `pip install --no-index --target /tmp/site`. The working
# tree plus carried folders may not exceed 64 MiB per call; this script fails above 40 MiB so
# the repository itself keeps its share.
#
# How the list is made (bench/device/deps.py says more):
#  1. both scripts run their tiny CPU smoke mode under a tracer in a fresh python; it records
#     the distributions behind sys.modules and the "roots" (those the repository's own code
#     imports). A run, not an import: the node imports pydicom, onnxruntime, onnxscript... on
#     demand;
#  2. roots + their Requires-Dist closure, less bench/device/device-packages.txt (the device's
#     list, from the workplace's notes), less the node itself (it travels as source and runs
#     from PYTHONPATH=repo root), pinned to deploy/locks/cpu-dev.txt;
#  3. cp312 manylinux x86_64 wheels of exactly those, one version each;
#  4. the sample study RG1_UNCR.dcm (pydicom-data's, 7 MB) instead of the 34 MB pydicom-data
#     wheel: run.sh puts it in pydicom's download cache, where get_testdata_file finds it.
#
# Environment: PYTHON (default python3, the one with the project's dependencies installed;
# its pip downloads for the device's Python 3.12 whatever version it is itself).
set -euo pipefail

PYTHON=${PYTHON:-python3}
LIMIT_MIB=40
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

# .whl/ must never be committed (wheels are build outputs, and 'git add -A' elsewhere would
# take them); the run tool carries ignored folders only when named in `carry`.
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# 1. Trace. Modest on this 2-core machine: one thread, lowest priority, tiny sizes, few tokens.
echo "== tracing the smoke runs (tiny sizes, CPU; about a minute)"
export PYTHONPATH="$root" OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
nice -n 10 "$PYTHON" bench/device/deps.py trace "$scratch/serving.json" bench/gpu_serving.py \
    --out "$scratch/serving" --size tiny --device cpu --tokens 4 --batches 1 \
    >"$scratch/serving.log" 2>&1 || { cat "$scratch/serving.log"; exit 1; }
nice -n 10 "$PYTHON" bench/device/deps.py trace "$scratch/radialog.json" bench/gpu_radialog.py \
    --work "$scratch/radialog-work" --out "$scratch/radialog" --size tiny --device cpu \
    --tokens 4 >"$scratch/radialog.log" 2>&1 || { cat "$scratch/radialog.log"; exit 1; }
grep -h '^\[deps\]' "$scratch/serving.log" "$scratch/radialog.log"

# 2. Plan.
echo "== what the device has, and what travels"
"$PYTHON" bench/device/deps.py plan --device-list bench/device/device-packages.txt \
    --lock deploy/locks/cpu-dev.txt --out "$scratch/requirements.txt" \
    "$scratch/serving.json" "$scratch/radialog.json"

# 3. Download. The set is rebuilt whole each time so no stale second version survives.
rm -rf .whl
mkdir -p .whl/data
mapfile -t pins < <(grep -v '^$' "$scratch/requirements.txt" || true)
if ((${#pins[@]})); then
    echo "== downloading ${#pins[@]} wheels for CPython 3.12, manylinux x86_64"
    # pip matches manylinux_2_N exactly, so name each N up to the device's glibc (Ubuntu 24.04,
    # the home of its Python 3.12.3: 2.39).
    platforms=()
    for n in 39 38 37 36 35 34 33 32 31 30 29 28 27 26 25 24 17; do
        platforms+=(--platform "manylinux_2_${n}_x86_64")
    done
    platforms+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${platforms[@]}" -d .whl "${pins[@]}"
fi

# 4. The sample study, from the pinned pydicom-data wheel, checked against pydicom's hash.
echo "== the sample study RG1_UNCR.dcm"
data_pin=$(grep -E '^pydicom-data==' deploy/locks/cpu-dev.txt | head -1)
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$scratch/data" "$data_pin"
"$PYTHON" - "$scratch/data" <<'EOF'
import gzip, hashlib, sys, zipfile
from pathlib import Path

from pydicom.data.download import get_cached_filehash

wheel = next(Path(sys.argv[1]).glob("pydicom_data-*.whl"))
with zipfile.ZipFile(wheel) as archive:
    data = archive.read("data_store/data/RG1_UNCR.dcm")
if hashlib.sha256(data).hexdigest() != get_cached_filehash("RG1_UNCR.dcm"):
    sys.exit("RG1_UNCR.dcm does not match pydicom's recorded hash")
Path(".whl/data/RG1_UNCR.dcm.gz").write_bytes(gzip.compress(data, 9, mtime=0))
EOF

# The list, kept beside the wheels: what was carried and from which lock.
cp "$scratch/requirements.txt" .whl/requirements.txt

# 5. Consistency: one version each, every requirement carried or on the device.
"$PYTHON" bench/device/deps.py check .whl --device-list bench/device/device-packages.txt

echo "== .whl/"
find .whl -type f -printf '%s %p\n' | sort -k2 | awk '{printf "%9.2f MiB  %s\n", $1/1048576, $2}'
total=$(du -sb .whl | cut -f1)
awk -v t="$total" -v l="$LIMIT_MIB" \
    'BEGIN { printf "total %.2f MiB (limit %d MiB; the tool takes 64 MiB with the tree)\n", t / 1048576, l }'
if ((total > LIMIT_MIB * 1048576)); then
    echo "prepare.sh: .whl is over ${LIMIT_MIB} MiB" >&2
    exit 1
fi
tree_kib=$(git ls-files -co --exclude-standard -z | du -c --files0-from=- -k 2>/dev/null \
    | tail -1 | cut -f1)
echo "working tree that travels (tracked + untracked, not ignored): $((tree_kib / 1024)) MiB"
