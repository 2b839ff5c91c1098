#!/usr/bin/env bash
# Every GPU measurement issue 11 asks for, in one run: kernel tests on CUDA, `bench kernels`,
# `bench step --json` eager with the Triton kernels and with the PyTorch block cache
# (ATTNRES_KERNEL=reference), and compiled with CUDA graphs (that run repeats the eager
# rows beside the compiled ones; no step compiles without CUDA graphs). Sized for the device
# time a development session is lent (15 minutes in all, start-up included): the steps'
# limits add up to 410 s, which with a machine's start leaves time for a second try.
#
#   OUT=/some/dir bash scripts/gpu_check.sh      # default OUT: results/gpu_check
#
# Each step writes NAME.txt (stdout) and NAME.err (stderr) under $OUT and one line to
# $OUT/log.txt (exit status, seconds); a failed or timed-out step does not stop the next.
# Runs from the working tree when the package is not installed (lent machines have no
# internet, so nothing is installed there): it links kernels/ and search_spaces/ where the
# installed layout puts them. Never part of CI.
#
# SHAPE (default: the issue's GPU shape) and QUICK=1 (tiny shapes, short limits: a dry run
# of the script itself on a CPU) change what is timed. STUDY=1 runs the `gpu_quick` study
# instead (about 8 minutes on one H100, so a loan of its own): its storage, status and
# report land under $OUT.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu_check}
PY=${PYTHON:-python3}
SHAPE=${SHAPE:---layers 8 --width 512 --heads 8 --seq-len 512 --batch-size 16}
REPEATS=${REPEATS:-10}
KERNEL_SHAPES="--shape 8192,512,2 --shape 16384,1024,5 --shape 65536,1024,9"
LIMIT_TESTS=120 LIMIT_KERNELS=60 LIMIT_STEP=50 LIMIT_COMPILE=120
if [ "${QUICK:-0}" = 1 ]; then
  SHAPE="--layers 2 --width 64 --heads 2 --seq-len 32 --batch-size 2"
  REPEATS=2
  KERNEL_SHAPES="--shape 256,64,2"
  LIMIT_TESTS=60 LIMIT_KERNELS=120 LIMIT_STEP=120 LIMIT_COMPILE=300
fi
mkdir -p "$OUT"
: >"$OUT/log.txt"

if ! "$PY" -c "import attnres_search.kernels, attnres_search.search_spaces" 2>/dev/null; then
  ln -sfn ../kernels attnres_search/kernels
  ln -sfn ../search_spaces attnres_search/search_spaces
fi

step() {  # step NAME LIMIT_SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.txt" 2>"$OUT/$name.err"
  local rc=$?
  echo "$name: rc $rc in $((SECONDS - start)) s (limit $limit s): $*" | tee -a "$OUT/log.txt"
}

if [ "${STUDY:-0}" = 1 ]; then
  # A study that does not finish in time keeps its completed trials; `study resume` continues it.
  step study 540 "$PY" -m attnres_search study start gpu_quick --storage "sqlite:///$OUT/studies.db"
  step study_report 60 "$PY" -m attnres_search report gpu_quick --format markdown \
    --storage "sqlite:///$OUT/studies.db"
  echo "results under $OUT" | tee -a "$OUT/log.txt"
  exit 0
fi

step env 10 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1; \
  $PY -c 'import torch, sys; print(sys.version); print(torch.__version__, torch.version.cuda); import triton; print(triton.__version__)'"
# Exactness on the real device: the kernels against the float64 reference, forward and backward;
# the compiled model for every preset.
step kernel_tests "$LIMIT_TESTS" "$PY" -m pytest -q -x -p no:cacheprovider tests/test_kernels.py \
  tests/test_kernel_two_phase_training.py tests/test_compile.py
# Fused kernel vs eager and torch.compile on the small shapes where it used to lose, and a large one.
# shellcheck disable=SC2086
step bench_kernels "$LIMIT_KERNELS" "$PY" -m attnres_search bench kernels --repeats 10 $KERNEL_SHAPES
# Training step ratios, eager: the Triton path (auto) and the PyTorch block cache on CUDA.
# shellcheck disable=SC2086
step bench_step_eager_kernels "$LIMIT_STEP" "$PY" -m attnres_search bench step --json --no-loops \
  --repeats "$REPEATS" $SHAPE
# shellcheck disable=SC2086
step bench_step_eager_block_cache "$LIMIT_STEP" env ATTNRES_KERNEL=reference "$PY" -m attnres_search bench step \
  --json --no-loops --repeats "$REPEATS" $SHAPE
# Compiled with CUDA graphs (static shapes): the issue's GPU targets are for compiled steps.
# shellcheck disable=SC2086
step bench_step_compiled_cudagraphs "$LIMIT_COMPILE" "$PY" -m attnres_search bench step --json --no-loops \
  --repeats "$REPEATS" --compile --compile-mode reduce-overhead $SHAPE
echo "results under $OUT" | tee -a "$OUT/log.txt"
