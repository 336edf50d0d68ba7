#!/usr/bin/env bash
# Check bench/device/run.sh HERE, without a GPU, in an interpreter that has only what the
# device has: run `SMOKE=1 bash bench/device/run.sh` (tiny sizes, CPU) in a virtual
# environment holding the distributions of bench/device/device-packages.txt and nothing else,
# with the carried wheels installed by run.sh itself and the node on PYTHONPATH only. It
# shows that the carried set plus the device's is enough, that dicom_node and inference
# import without an install, and that the sample study comes from pydicom's cache.
#
#     bash bench/device/prepare.sh && bash bench/device/simulate.sh
#
# What it cannot show: the device's Python is 3.12 and this one may not be, so the wheels
# are the same pins downloaded for this interpreter's version; torch is this machine's (the
# device has 2.11, a CUDA build); nothing runs on a GPU. Where the device's notes record a
# version and PyPI has a wheel for this interpreter (transformers 5.17.0, huggingface-hub,
# tokenizers, safetensors, onnx, onnxruntime, onnxscript, onnx-ir, numpy, sentencepiece,
# accelerate), that version is installed in the environment instead of this machine's, so the
# smoke run meets the device's transformers and ONNX stack. The rest of the device's list is
# linked from this machine's site-packages.
#
# Environment: PYTHON (default python3, the interpreter with the project's dependencies),
# SIM (default /tmp/device-sim; reused: downloads are kept there between runs).
set -euo pipefail

PYTHON=${PYTHON:-python3}
SIM=${SIM:-/tmp/device-sim}
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
[[ -f .whl/requirements.txt ]] || { echo "run bench/device/prepare.sh first" >&2; exit 2; }

pyver=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
venv=$SIM/venv
rm -rf "$venv" "$SIM/whl" "$SIM/site" "$SIM/work" "$SIM/out"
mkdir -p "$SIM/whl/data" "$SIM/pinned"

# The carried pins, for this interpreter (run.sh installs them as on the device).
mapfile -t pins < <(grep -v '^$' .whl/requirements.txt)
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$SIM/whl" "${pins[@]}"
cp .whl/data/* "$SIM/whl/data/"

# The device's recorded versions of the stack the node runs on.
device_pins=()
for name in transformers huggingface-hub tokenizers safetensors onnx onnxruntime onnxscript \
    onnx-ir numpy sentencepiece accelerate; do
    version=$(awk -v n="$name" '$1 == n { print $2 }' bench/device/device-packages.txt)
    [[ -n $version ]] && device_pins+=("$name==$version")
done
for pin in "${device_pins[@]}"; do  # one by one: a missing wheel for this Python is no error
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$SIM/pinned" "$pin" \
        2>/dev/null || echo "no $pin wheel for Python $pyver: this machine's version is used"
done

"$PYTHON" -m venv "$venv"
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$venv/bin/python" -m pip install --quiet --no-index --no-deps "$SIM"/pinned/*.whl
# Link the rest of the device's list from this machine (top-level entries of each
# distribution's RECORD); pip and setuptools are the venv's own.
"$PYTHON" - "$site" bench/device/device-packages.txt <<'EOF'
import importlib.metadata as md, os, re, sys
from pathlib import Path

site, listing = Path(sys.argv[1]), Path(sys.argv[2])
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
wanted = {norm(line.split()[0]) for line in listing.read_text().splitlines()
          if line.strip() and not line.startswith("#")}
present = {norm(d.metadata["Name"]) for d in md.distributions(path=[str(site)])}
linked, absent = [], []
for name in sorted(wanted - present - {"pip", "setuptools", "wheel"}):
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        absent.append(name)
        continue
    tops = {Path(str(f)).parts[0] for f in dist.files or () if not str(f).startswith("..")}
    for top in tops:
        source = Path(dist.locate_file(top))
        if source.exists() and not (site / top).exists():
            os.symlink(source, site / top)
    linked.append(name)
print(f"device-like venv: {len(present - {'pip', 'setuptools'})} installed at the device's versions, {len(linked)} "
      f"linked from here, {len(absent)} of the device's list not on this machine either")
EOF

echo "== SMOKE=1 bench/device/run.sh in the device-like venv"
OUT=$SIM/out SMOKE=1 PYTHON=$venv/bin/python WHEELS=$SIM/whl SITE=$SIM/site WORK=$SIM/work \
    BUDGET_S=${BUDGET_S:-400} bash bench/device/run.sh

echo "== what would come back"
ls -l "$SIM/out"
count=$(find "$SIM/out" -type f | wc -l)
((count <= 8)) || { echo "simulate.sh: $count files in OUT, at most 8 come back" >&2; exit 1; }
for file in env.txt steps.txt serving.log radialog.log radialog.json serving-generate.json \
    serving-static.json serving-cb.json; do
    [[ -s $SIM/out/$file ]] || { echo "simulate.sh: $file missing or empty" >&2; exit 1; }
done
if awk 'NR > 1 && $2 != 0 { bad = 1 } END { exit !bad }' "$SIM/out/steps.txt"; then
    echo "simulate.sh: a step failed or was skipped (steps.txt above)" >&2
    exit 1
fi
echo "simulate.sh: all steps ran; $count files would come back"
