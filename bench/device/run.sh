#!/usr/bin/env bash
# The GPU benchmarks of issues 20 and 21 in one device call. Run THERE (the lent GPU machine),
# from the repository root, with $OUT set by the run tool, after bench/device/prepare.sh has
# filled .whl/ HERE:
#
#     run tool: command "bash bench/device/run.sh", carry [".whl"], timeout_s 560
#
# A session gets 15 minutes of device time in all (the machine's start, 1-2 min, included) and
# a machine is not started with under 4 minutes left, so this is one shot: the whole script
# keeps to BUDGET_S (default 530 s) and every step writes what it has to $OUT as soon as it
# ends, so a step cut short loses only itself.
#
# What comes back (at most 8 files, <= 16 MiB each, flat in $OUT):
#   env.txt                versions, ONNX Runtime's providers, GPU, carried wheels' needs
#   steps.txt              each step: exit code (124: its timeout), seconds, timeout, args
#   serving.log            gpu_serving.py's three runs, one row of JSON per (path, batch)
#                          as it is measured: a run stopped by its timeout keeps its rows here
#   serving-generate.json  figures.json of the plain generate() run (issue 21)
#   serving-static.json    ... of the static-cache (torch.compile, CUDA graphs) run
#   serving-cb.json        ... of transformers' continuous batching (generate_batch)
#   radialog.log           gpu_radialog.py's output
#   radialog.json          its figures.json (issue 20)
#
# Order and time caps, from estimates (none measured on a GPU yet; the 7B model is
# Vicuna-7B's shape, 6.7e9 parameters, 13.5 GB in 16-bit):
#   setup      ~20 s  wheels to /tmp/site, env.txt (imports torch, onnxruntime; nvidia-smi).
#   1 serving-generate, cap 170 s, estimate ~115 s: process + imports ~10 s; the model built
#              on the GPU (fp32 init, then bf16) ~15 s; then per batch size a warm-up and a
#              timed generate() of 300 tokens: eager decoding is launch-bound at ~25-35 ms a
#              step at batch 1 and ~40-50 ms at 64, so 2 x 300 x ~35 ms ~ 20 s per size,
#              4 sizes. Batches ordered 1 64 8 32: batch 1 is every row's baseline, 64 carries
#              the >= 20x goal, 8 and 32 fill in.
#   2 radialog, cap 300 s, estimate ~210 s: imports ~15 s; writing the full-size random
#              checkpoint ~60-90 s (LlamaForCausalLM built in fp16 on the CPU: 6.7e9 normal
#              draws at ~0.17e9/s on one thread here, then 13.5 GB of safetensors into the page
#              cache; BioViL/Q-Former/classifier are small); import ~45-75 s (ONNX export of
#              ResNet-50 + the 12-layer Q-Former, 13 s for the tiny one here, and a SHA-256 of
#              the 13.5 GB LLM at ~1.5 GB/s); load ~25-40 s (the same SHA-256 again, 13.5 GB
#              to the GPU, LoRA merge, ONNX Runtime session); vision < 2 s (ONNX Runtime on the
#              CPU: the device's onnxruntime is most likely the CPU build); the draft ~10-15 s
#              and the forced 300 tokens ~10 s (eager, batch 1). Its figures are written only
#              at its end, hence the generous cap, and it runs before the static-cache run,
#              whose compile time is the least known.
#   3 serving-static, the time left (~185 s expected): process + model ~25 s; per batch size
#              torch.compile of the decoding step (transformers compiles it by itself with a
#              static cache on CUDA, mode reduce-overhead: CUDA graphs) ~60-90 s for the first
#              shape, ~45-60 s for the next (each batch size is a new shape), then 2 x 300
#              steps at ~5-10 ms. Batches 1 and 64 only: batch 1 carries the >= 70 % of the
#              bandwidth bound goal; 64 comes second so a cut keeps batch 1's row in the log.
#   4 serving-cb, only if >= 90 s are left: generate_batch at batches 1 and 64 (not a path
#              the node can use: token-id prompts only; recorded for comparison).
# Total expected ~530 s with step 4, ~470 s without: step 4 is the one expected to be
# squeezed out, then step 3's batch 64.
#
# Environment:
#   SMOKE=1     the same steps with --size tiny --device cpu, 8 tokens, batches 1 2: a check
#               of this script on a machine without a GPU (bench/device/simulate.sh).
#   BUDGET_S    whole-script budget in seconds (default 530; keep the run tool's timeout_s
#               ~30 s above it).
#   WHEELS      folder of the carried wheels (default .whl), SITE where they go (/tmp/site),
#               WORK scratch folder for checkpoints, bundle and HOME (/tmp/gpu-bench).
#   PYTHON      interpreter (default python3: on the device the one that holds PyTorch).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
: "${OUT:?set OUT to the folder whose files come back (the run tool sets it)}"
SMOKE=${SMOKE:-0}
BUDGET_S=${BUDGET_S:-530}
WHEELS=${WHEELS:-.whl}
SITE=${SITE:-/tmp/site}
WORK=${WORK:-/tmp/gpu-bench}
PYTHON=${PYTHON:-python3}
start=$SECONDS
left() { echo $((BUDGET_S - (SECONDS - start))); }
mkdir -p "$OUT" "$WORK"

# Nothing may reach for the network (there is none there: a lookup could hang until a step's
# timeout), and progress bars would fill the logs that come back.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export HF_HUB_DISABLE_PROGRESS_BARS=1 TQDM_DISABLE=1 PYTHONUNBUFFERED=1
# A HOME of our own: pydicom's data cache (below) and Triton's, nothing left in root's.
export HOME="$WORK/home"
mkdir -p "$HOME"

if [[ $SMOKE == 1 ]]; then
    size=(--size tiny --device cpu --tokens 8)
    batches_all=(1 2) batches_two=(1 2)
    # This machine's CPUs are shared (2 cores here): keep the smoke run light.
    export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
    nice_cmd=(nice -n 10)
else
    size=(--tokens 300)
    batches_all=(1 64 8 32) batches_two=(1 64)
    nice_cmd=()
fi

# --- setup: the carried wheels (README's recipe: --no-deps, --no-index, one version each) --
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
shopt -u nullglob
if ((${#wheels[@]} == 0)); then
    echo "run.sh: no wheels in $WHEELS: run bench/device/prepare.sh here first and carry .whl" >&2
    exit 2
fi
timeout 120 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target "$SITE" "${wheels[@]}"
# The node's own packages are not installed there: they run from the working tree.
export PYTHONPATH="$root:$SITE"
# dicom_node's sample study (pydicom-data's RG1_UNCR.dcm) where pydicom's get_testdata_file
# looks after the installed data packages: its download cache, checked against its hash.
mkdir -p "$HOME/.pydicom/data"
gzip -dc "$WHEELS/data/RG1_UNCR.dcm.gz" >"$HOME/.pydicom/data/RG1_UNCR.dcm"

{
    echo "# bench/device/run.sh, $(date -u +%FT%TZ), SMOKE=$SMOKE, BUDGET_S=$BUDGET_S"
    echo "git: $(git rev-parse HEAD 2>/dev/null || echo '?') $(git status --porcelain 2>/dev/null \
        | grep -qv '^??' && echo '(with local changes)')"
    uname -srm
    echo "cpus: $(getconf _NPROCESSORS_ONLN)"
    free -g | head -2
    df -h /tmp | tail -1
    echo "## nvidia-smi"
    nvidia-smi 2>&1 || echo "(no nvidia-smi)"
    echo "## python"
    # Capped: a CUDA initialisation that hangs must not eat the benchmarks' time.
    timeout 90 "$PYTHON" - <<'EOF' 2>&1
import importlib, importlib.metadata as md, sys

print(sys.version.replace("\n", " "), sys.executable)
for name in ("torch", "transformers", "tokenizers", "safetensors", "peft", "accelerate",
             "huggingface-hub", "onnx", "onnxscript", "onnx-ir", "onnxruntime",
             "onnxruntime-gpu", "numpy", "sentencepiece", "pillow", "typing-extensions",
             "pydantic", "pydicom", "highdicom", "pynetdicom", "sqlalchemy", "triton"):
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name} -")
import torch

print("torch.cuda:", torch.version.cuda, "available:", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
import onnxruntime

print("onnxruntime providers:", onnxruntime.get_available_providers())
for module in ("dicom_node", "inference", "dicom_node.pipeline.drafting"):
    print(f"import {module}: {importlib.import_module(module).__file__}")
EOF
    echo "## carried wheels' requirements against what is installed there"
    timeout 30 "$PYTHON" bench/device/deps.py installed "$SITE" 2>&1
} >"$OUT/env.txt" 2>&1 || echo "run.sh: env.txt is incomplete (see its end)" >&2
cat "$OUT/env.txt"

printf '%-17s %4s %8s %8s  %s\n' step rc seconds timeout args >"$OUT/steps.txt"

# step NAME CAP LOG -- COMMAND...: runs COMMAND under a timeout of min(CAP, time left - 15 s),
# tee'ing to $OUT/LOG (appended), and records it in steps.txt. Never fails the script: one
# step's failure must not lose the others' figures.
step() {
    local name=$1 cap=$2 log=$3
    shift 4
    local limit rc=0 began=$SECONDS
    limit=$(left)
    limit=$((limit - 15 < cap ? limit - 15 : cap))
    if ((limit < 30)); then
        printf '%-17s %4s %8s %8s  %s\n' "$name" - 0 "$limit" "skipped: no time left" \
            >>"$OUT/steps.txt"
        echo "== $name: skipped, $(left) s left" | tee -a "$OUT/$log"
        return 0
    fi
    echo "== $name (timeout ${limit} s, $(left) s left): $*" | tee -a "$OUT/$log"
    timeout --kill-after=10 "$limit" "${nice_cmd[@]}" "$@" 2>&1 | tee -a "$OUT/$log" || rc=$?
    printf '%-17s %4s %8s %8s  %s\n' "$name" "$rc" $((SECONDS - began)) "$limit" "${*:2}" \
        >>"$OUT/steps.txt"
    echo "== $name: exit $rc after $((SECONDS - began)) s" | tee -a "$OUT/$log"
}

# keep FROM TO: copy a figures file into $OUT if the step wrote one.
keep() { if [[ -f $1 ]]; then cp "$1" "$OUT/$2"; fi; }

rm -rf "$WORK/serving-generate" "$WORK/serving-static" "$WORK/serving-cb" "$WORK/radialog-out"

step serving-generate 170 serving.log -- "$PYTHON" bench/gpu_serving.py \
    --out "$WORK/serving-generate" "${size[@]}" --paths generate --batches "${batches_all[@]}"
keep "$WORK/serving-generate/figures.json" serving-generate.json

# --work keeps the written checkpoint and bundle between calls on the same warm machine; a
# fresh machine starts bare. A half-written one (a step cut short) would be reused as it is,
# so it goes unless this step finished it.
step radialog 300 radialog.log -- "$PYTHON" bench/gpu_radialog.py \
    --work "$WORK/radialog-work" --out "$WORK/radialog-out" "${size[@]}"
keep "$WORK/radialog-out/figures.json" radialog.json
[[ -f $OUT/radialog.json ]] || rm -rf "$WORK/radialog-work"

step serving-static 600 serving.log -- "$PYTHON" bench/gpu_serving.py \
    --out "$WORK/serving-static" "${size[@]}" --paths static --batches "${batches_two[@]}"
keep "$WORK/serving-static/figures.json" serving-static.json

if (($(left) >= 90)); then
    step serving-cb 600 serving.log -- "$PYTHON" bench/gpu_serving.py \
        --out "$WORK/serving-cb" "${size[@]}" --paths generate_batch \
        --batches "${batches_two[@]}"
    keep "$WORK/serving-cb/figures.json" serving-cb.json
else
    printf '%-17s %4s %8s %8s  %s\n' serving-cb - 0 - "skipped: under 90 s left" \
        >>"$OUT/steps.txt"
fi

echo "== done in $((SECONDS - start)) s of ${BUDGET_S} s"
cat "$OUT/steps.txt"
ls -l "$OUT"
