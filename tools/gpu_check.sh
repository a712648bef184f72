#!/usr/bin/env bash
# The GPU check, one command (docs/performance.md#the-gpu-check): on a CUDA machine,
#   1. installs what the GPU image lacks (hydra-core, omegaconf, antlr4-python3-runtime, datasets and their
#      dependencies) from the wheel folder carried with the checkout, offline (pip --no-index --find-links);
#   2. runs the CUDA-only tests (pytest -m cuda: bf16 autocast, fused AdamW, channels-last, train.compile,
#      deterministic kernels, probes and teacher cache on the device);
#   3. runs `rtlab bench --preset gpu` (fp32 and bf16: img/s, GFLOP/s against the measured matmul peak, AdamW);
#   4. runs experiment=paper_cifar10_resnet18 and experiment=paper_cifar10_vgg11 on the shared CIFAR-10 copy for as
#      many epochs as fit RTLAB_GPU_BUDGET_S, and writes their results as JSON and a Markdown table.
# Everything lands in $RTLAB_GPU_OUT (default: $OUT when set, else runs/gpu_check): pytest.txt, bench.json,
# bench.txt, paper_runs.json, paper_runs.md, summary.md, the run folders and logs.
#
# Environment:
#   RTLAB_GPU_BUDGET_S  seconds for the two paper runs together (default 600)
#   RTLAB_GPU_WHEELS    the wheel folder (default .gpuwheels; how to fill it: docs/performance.md)
#   RTLAB_CIFAR10       the CIFAR-10 parquet folder (default: shared/data/cifar10 in or above the checkout)
#   RTLAB_GPU_STEPS     which steps to run (default "deps tests bench paper")
#   PYTHON              the interpreter (default python3)
# `tools/gpu_check.sh --dry-run` prints the plan and the commands without running them.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
PY=${PYTHON:-python3}
OUTDIR=${RTLAB_GPU_OUT:-${OUT:-runs/gpu_check}}
BUDGET=${RTLAB_GPU_BUDGET_S:-600}
WHEELS=${RTLAB_GPU_WHEELS:-.gpuwheels}
STEPS=${RTLAB_GPU_STEPS:-deps tests bench paper}
if [ -z "${RTLAB_CIFAR10:-}" ]; then
  d=$ROOT
  while [ "$d" != / ]; do
    if [ -f "$d/shared/data/cifar10/train.parquet" ]; then RTLAB_CIFAR10=$d/shared/data/cifar10; break; fi
    d=$(dirname "$d")
  done
fi
export RTLAB_CIFAR10=${RTLAB_CIFAR10:-}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}

case "$BUDGET" in ''|*[!0-9.]*) echo "gpu_check: RTLAB_GPU_BUDGET_S must be a number of seconds, got '$BUDGET'" >&2; exit 2;; esac
if [[ " $STEPS " == *" paper "* ]] && [ ! -f "$RTLAB_CIFAR10/train.parquet" ]; then
  echo "gpu_check: no CIFAR-10 parquet files found; set RTLAB_CIFAR10=DIR (a folder with train.parquet and test.parquet)" >&2
  exit 2
fi
mkdir -p "$OUTDIR"
status=0
summary=$OUTDIR/summary.md
echo "# rtlab GPU check ($(date -u +%Y-%m-%dT%H:%MZ))" > "$summary"

if [[ " $STEPS " == *" deps "* ]]; then
  missing=$($PY - <<'EOF'
import importlib.util
need = {"hydra": "hydra-core", "omegaconf": "omegaconf", "antlr4": "antlr4-python3-runtime", "datasets": "datasets"}
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None))
EOF
)
  if [ -n "$missing" ]; then
    if [ ! -d "$WHEELS" ]; then
      echo "gpu_check: $missing missing and no wheel folder $WHEELS; fill it with the pip download line of docs/performance.md (or set RTLAB_GPU_WHEELS)" >&2
      exit 2
    fi
    echo "+ $PY -m pip install -q --no-index --find-links $WHEELS $missing"
    if [ $DRY = 0 ] && ! $PY -m pip install -q --no-index --find-links "$WHEELS" $missing; then
      echo "gpu_check: pip could not install $missing from $WHEELS; a wheel is missing there or the image's packages are older than these wheels need (datasets 5.2 needs pyarrow>=24): see docs/performance.md#the-gpu-check" >&2
      exit 2
    fi
  fi
  echo "- dependencies: ${missing:-all present}" >> "$summary"
fi

if [[ " $STEPS " == *" tests "* ]]; then
  echo "+ $PY -m pytest -q -m cuda -rs tests/test_cuda.py"
  if [ $DRY = 0 ]; then
    if $PY -m pytest -q -m cuda -rs -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUTDIR/pytest.txt"; then
      echo "- CUDA tests: passed ($(tail -1 "$OUTDIR/pytest.txt"))" >> "$summary"
    else
      status=1
      echo "- CUDA tests: FAILED ($(tail -1 "$OUTDIR/pytest.txt")); see pytest.txt" >> "$summary"
    fi
  fi
fi

if [[ " $STEPS " == *" bench "* ]]; then
  probes=()
  $PY -c "import sklearn" 2>/dev/null || probes=(--no-probes)  # the probe comparison needs scikit-learn
  echo "+ $PY -m framework.cli bench --preset gpu ${probes[*]} --out $OUTDIR/bench.json"
  if [ $DRY = 0 ]; then
    if $PY -m framework.cli bench --preset gpu "${probes[@]}" --out "$OUTDIR/bench.json" 2>&1 | tee "$OUTDIR/bench.txt"; then
      echo "- rtlab bench --preset gpu: bench.json, bench.txt" >> "$summary"
    else
      status=1
      echo "- rtlab bench --preset gpu: FAILED; see bench.txt" >> "$summary"
    fi
  fi
fi

if [[ " $STEPS " == *" paper "* ]]; then
  dry=()
  [ $DRY = 1 ] && dry=(--dry-run)
  if $PY tools/gpu_paper_runs.py --cifar10 "$RTLAB_CIFAR10" --budget-s "$BUDGET" --out "$OUTDIR" "${dry[@]}"; then
    [ $DRY = 1 ] || { echo; cat "$OUTDIR/paper_runs.md"; } >> "$summary"
  else
    status=1
    echo "- paper runs: FAILED; see $OUTDIR/*.log" >> "$summary"
  fi
fi
echo "gpu_check: results in $OUTDIR (summary.md), exit $status"
exit $status
