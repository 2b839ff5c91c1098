#!/usr/bin/env bash
# One GPU window (issue 20), sized for a lent device: 15 minutes in all with the machine's
# start, so at most TOTAL (default 540 s) of command time, every step time-limited.
#
#   OUT=/some/dir bash scripts/gpu_check.sh                 # the checks (about 6 minutes)
#   STUDY=1 OUT=/some/dir bash scripts/gpu_check.sh         # the checks, then the GPU study with what is left
#   STUDY=only TIME_LIMIT=420 OUT=/some/dir bash scripts/gpu_check.sh   # the GPU study alone
#   QUICK=1 [STUDY=1] bash scripts/gpu_check.sh             # a dry run of the script on a CPU (tiny shapes)
#
# The checks:
#   env            nvidia-smi, Python, torch, CUDA, Triton, Lightning versions
#   kernel_tests   the Triton kernels against the float64 reference on CUDA (pytest -x)
#   bench_eager    `bench step --json --path fused --path block-cache`: the two eager CUDA
#                  training paths side by side (interleaved rounds), each row with its
#                  TFLOP/s and MFU, ratios against the baseline on the same path
#   profile        `bench profile --json --path fused --path block-cache --trace`: one profiled step
#                  per rule and path: kernel launches per step and the rule's extra per sublayer,
#                  device busy time and the idle share of the step (host overhead), the host's op
#                  time, the residual stream's bytes and their time floor at the measured copy
#                  bandwidth, the top kernels; gzipped Chrome traces under $OUT/traces
#   bench_cudagraphs  `bench step --json --path cudagraphs`: compiled with CUDA graphs
#                  (torch.compile reduce-overhead), its own process so a slow compile
#                  cannot cost the eager figures; baseline, block-s4 and full only (four
#                  presets did not finish compiling in 170 s on the H200 of 2026-12-04)
#   two_workers    two `worker` processes sharing GPU 0 on a small study (launch gives one
#                  worker per GPU and refuses --gpus 0,0), then which process ran which trial
#   ddp_gloo       one study trial with two DDP ranks (`worker --devices-per-trial 2`) on
#                  the CPU with gloo: Lightning puts each rank on its own device, so two
#                  ranks cannot share one GPU; ddp_one_gpu shows that refusal (`train --devices 2`)
#   multi_summary  every trial of those two studies: state, variant, seed, process, device
# The study (STUDY=1 or STUDY=only): copies the committed storage (COMMITTED, default
# results/gpu_study/studies.db) to $OUT/studies.db unless one is there, and the run folders
# beside it (results/gpu_study/runs/, git-ignored: carry it to the device) to $OUT/runs,
# creates the study if it is new, grows it by its sequential design with the time left
# (`study extend --until-decided --time-limit`, TIME_LIMIT overrides: it finishes the look
# in progress, takes it, queues the next; a run cut by the limit is checkpointed and
# re-queued), then writes the study's status and report (markdown, JSON, figures) and
# deletes the checkpoints of finished runs: what is left under $OUT/runs is the checkpoint
# a re-queued run continues from next window if it is carried back (without it that run
# starts over; nothing else is lost).
#
# Each step writes NAME.txt (stdout) and NAME.err (stderr) under $OUT and one line to
# $OUT/log.txt (exit status, seconds, limit); a failed or timed-out step does not stop the
# next. Runs from the working tree when the package is not installed (lent machines have
# no internet): it links kernels/ and search_spaces/ where the installed layout puts them.
# Never part of CI.
# On a lent device whose image lacks the study packages (the H200 image of 2026-12 has torch,
# Triton, Lightning, scipy, rich, click, matplotlib and tensorboard, but not these), carry them as
# wheels made here, in the repo root (`.whl/` is ignored via .git/info/exclude):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl optuna optuna-dashboard sqlalchemy alembic colorlog mako plotly bottle greenlet
# and start the device command with
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
# Only 8 files come back from a device's $OUT: run with OUT=/tmp/gw and tar it into $OUT.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu_check}
PY=${PYTHON:-python3}
TOTAL=${TOTAL:-540}
STUDY=${STUDY:-0}
STUDY_SPACE=${STUDY_SPACE:-gpu_study}  # a built-in space or a .yaml file, with a sequential design
STUDY_NAME=${STUDY_NAME:-gpu_study}
COMMITTED=${COMMITTED:-results/gpu_study/studies.db}
SHAPE=${SHAPE:---layers 8 --width 512 --heads 8 --seq-len 512 --batch-size 16}
REPEATS=${REPEATS:-10}
SMALL_STUDY=smoke_ablation
KERNEL_TESTS="tests/test_kernels.py"
# Step limits in seconds (each may be set in the environment). The checks' limits add up to 680 s,
# their expected run time to about 370 s; no step runs past TOTAL seconds of the script.
LIMIT_TESTS=${LIMIT_TESTS:-90} LIMIT_EAGER=${LIMIT_EAGER:-60} LIMIT_PROFILE=${LIMIT_PROFILE:-60} LIMIT_COMPILE=${LIMIT_COMPILE:-170}
LIMIT_WORKERS=${LIMIT_WORKERS:-90} WORKER_TIME=${WORKER_TIME:-60s} LIMIT_DDP=${LIMIT_DDP:-60}
LIMIT_ONE_GPU=${LIMIT_ONE_GPU:-40} STUDY_MIN=${STUDY_MIN:-90} REPORT_RESERVE=${REPORT_RESERVE:-75}
if [ "${QUICK:-0}" = 1 ]; then
  SHAPE="--layers 2 --width 64 --heads 2 --seq-len 32 --batch-size 2"
  REPEATS=2
  STUDY_NAME=quick_design  # its space is written below: smoke-sized, with a design
  COMMITTED=/nonexistent
  LIMIT_TESTS=${LIMIT_TESTS_QUICK:-60} LIMIT_EAGER=120 LIMIT_PROFILE=120 LIMIT_COMPILE=${LIMIT_COMPILE_QUICK:-300} WORKER_TIME=20s STUDY_MIN=30
  export TRITON_INTERPRET=1  # the fused path runs in Triton's interpreter on a CPU
fi
mkdir -p "$OUT"
: >"$OUT/log.txt"
DB="$OUT/studies.db"
MULTI="sqlite:///$OUT/multi.db"

if ! "$PY" -c "import attnres_search.kernels, attnres_search.search_spaces" 2>/dev/null; then
  ln -sfn ../kernels attnres_search/kernels
  ln -sfn ../search_spaces attnres_search/search_spaces
fi

step() {  # step NAME LIMIT_SECONDS COMMAND...: runs COMMAND for at most LIMIT s, never past TOTAL
  local name=$1 limit=$2 cap=$((TOTAL - SECONDS))
  shift 2
  if [ "$cap" -lt 5 ]; then
    echo "$name: skipped: the window's $TOTAL s are spent" | tee -a "$OUT/log.txt"
    return 124
  fi
  [ "$limit" -gt "$cap" ] && limit=$cap
  local start=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.txt" 2>"$OUT/$name.err"
  local rc=$? command="$*"
  command=${command//$'\n'/ }
  echo "$name: rc $rc in $((SECONDS - start)) s (limit $limit s): ${command:0:300}" | tee -a "$OUT/log.txt"
  return $rc
}

{ date -u +"window started %Y-%m-%dT%H:%M:%SZ"; echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)"; } \
  >"$OUT/window.txt"
step env 20 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1; \
  $PY -c 'import sys, torch, lightning; print(sys.version); print(torch.__version__, torch.version.cuda, lightning.__version__); import triton; print(triton.__version__)'"

if [ "$STUDY" != only ]; then
  # Exactness on the real device: the kernels against the float64 reference, forward and backward.
  # shellcheck disable=SC2086
  step kernel_tests "$LIMIT_TESTS" "$PY" -m pytest -q -x -p no:cacheprovider $KERNEL_TESTS
  # The training paths: targets (issue 20, L_b 8, d 512, T 512, B 16, bf16) block-s4 <= 1.10x,
  # full <= 1.20x, mhc <= 1.50x the baseline step on the default path.
  # shellcheck disable=SC2086
  step bench_eager "$LIMIT_EAGER" "$PY" -m attnres_search bench step --json --no-loops --repeats "$REPEATS" \
    --path fused --path block-cache $SHAPE
  # Why a target is missed: launches, host overhead and bytes, per rule and path (before the
  # compile, whose time is the least predictable).
  # shellcheck disable=SC2086
  step profile "$LIMIT_PROFILE" "$PY" -m attnres_search bench profile --json --steps 3 --path fused \
    --path block-cache --trace "$OUT/traces" $SHAPE
  # shellcheck disable=SC2086
  step bench_cudagraphs "$LIMIT_COMPILE" "$PY" -m attnres_search bench step --json --no-loops --repeats "$REPEATS" \
    --path cudagraphs --preset block-s4 --preset full $SHAPE
  # Two workers sharing GPU 0 on one small study (each claims trials atomically from the storage).
  step two_workers_study 30 "$PY" -m attnres_search study start "$SMALL_STUDY" --name two_workers --storage "$MULTI" \
    --n-trials 0
  step two_workers "$LIMIT_WORKERS" bash -c "\
    CUDA_VISIBLE_DEVICES=0 $PY -m attnres_search worker two_workers --storage $MULTI --quiet --time-limit $WORKER_TIME \
      >$OUT/worker_a.txt 2>&1 & \
    CUDA_VISIBLE_DEVICES=0 $PY -m attnres_search worker two_workers --storage $MULTI --quiet --time-limit $WORKER_TIME \
      >$OUT/worker_b.txt 2>&1 & \
    wait"
  # One trial, two DDP ranks (gloo on the CPU: the code gives every rank its own device).
  cat >"$OUT/ddp_gloo.yaml" <<'YAML'
description: one trial of two DDP ranks (gloo, CPU) run by a study worker
kind: ablation
model: {n_layers: 1, d_model: 32, n_heads: 2, seq_len: 32}
train: {steps: 20, tokens: null, batch_size: 4, val_every: 10, val_windows: 4, diagnostics_every: 1000, accelerator: cpu}
variants: [block-s2]
seeds: 1
YAML
  step ddp_gloo_study 30 "$PY" -m attnres_search study start "$OUT/ddp_gloo.yaml" --name ddp_gloo --storage "$MULTI" \
    --n-trials 0
  step ddp_gloo "$LIMIT_DDP" "$PY" -m attnres_search worker ddp_gloo --storage "$MULTI" --devices-per-trial 2 \
    --time-limit "$WORKER_TIME"
  # Two ranks on the one GPU: expected to be refused (each rank wants a device of its own).
  step ddp_one_gpu "$LIMIT_ONE_GPU" env CUDA_VISIBLE_DEVICES=0 "$PY" -m attnres_search train --devices 2 --steps 10 \
    --layers 1 --width 32 --heads 2 --seq-len 32 --batch-size 4 --val-every 10 --val-windows 4 --json
  step multi_summary 30 "$PY" -c "
import optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
for summary in optuna.get_all_study_summaries('$MULTI'):
    study = optuna.load_study(study_name=summary.study_name, storage='$MULTI')
    for t in study.trials:
        cfg = t.user_attrs.get('config') or {}
        print(summary.study_name, t.number, t.state.name, t.params, 'process', t.user_attrs.get('host'),
              'device', t.user_attrs.get('device_name'), 'devices', cfg.get('devices'),
              'tokens/s', round(t.user_attrs.get('tokens_per_s') or 0), 'error', t.user_attrs.get('error'))
"
fi

if [ "$STUDY" = 1 ] || [ "$STUDY" = only ]; then
  URL="sqlite:///$DB"
  if [ ! -f "$DB" ] && [ -f "$COMMITTED" ]; then
    cp "$COMMITTED" "$DB" && echo "study: continuing the storage committed at $COMMITTED" | tee -a "$OUT/log.txt"
    RUNS_KEPT="$(dirname "$COMMITTED")/runs"
    if [ -d "$RUNS_KEPT" ] && [ ! -d "$OUT/runs" ]; then
      cp -r "$RUNS_KEPT" "$OUT/runs" && echo "study: run folders (checkpoints) from $RUNS_KEPT" | tee -a "$OUT/log.txt"
    fi
  fi
  if [ "${QUICK:-0}" = 1 ]; then
    STUDY_SPACE="$OUT/quick_design.yaml"
    cat >"$STUDY_SPACE" <<'YAML'
description: a dry run of a sequential study (QUICK=1)
kind: ablation
model: {n_layers: 1, d_model: 32, n_heads: 2, seq_len: 32}
train: {steps: 30, tokens: null, batch_size: 4, val_every: 10, val_windows: 4, diagnostics_every: 1000}
variants: [baseline, full]
seeds: [0, 1]
design: {primary: [full], alpha: 0.05, max_seeds: 4, step: 2, spending: obrien-fleming, futility: 0.1}
YAML
  fi
  if [ ! -f "$DB" ]; then
    step study_start 60 "$PY" -m attnres_search study start "$STUDY_SPACE" --name "$STUDY_NAME" --storage "$URL" \
      --n-trials 0
  fi
  left=${TIME_LIMIT:-$((TOTAL - SECONDS - REPORT_RESERVE))}
  if [ "$left" -lt "$STUDY_MIN" ]; then
    echo "study: $left s left, under the $STUDY_MIN s a run needs: no study runs in this window" | tee -a "$OUT/log.txt"
  else
    step study_grow $((left + 45)) "$PY" -m attnres_search study extend "$STUDY_NAME" --until-decided \
      --time-limit "${left}s" --storage "$URL" --quiet
  fi
  step study_status 30 "$PY" -m attnres_search study status "$STUDY_NAME" --storage "$URL"
  step report 60 "$PY" -m attnres_search report "$STUDY_NAME" --format markdown --plots "$OUT/figures" --storage "$URL"
  cp "$OUT/report.txt" "$OUT/report.md" 2>/dev/null
  step report_json 30 "$PY" -m attnres_search report "$STUDY_NAME" --format json --storage "$URL"
  cp "$OUT/report_json.txt" "$OUT/report.json" 2>/dev/null
  # A finished run's checkpoints are never read again (tens of MB each): keep only those of
  # runs a time limit or a signal cut short.
  for attempt in "$OUT"/runs/*/*/attempt-*; do
    if [ -d "$attempt/checkpoints" ] && grep -qs '"interrupted": false' "$attempt/run.json"; then
      rm -rf "$attempt/checkpoints"
    fi
  done
  echo "study: checkpoints kept for the next window: $(find "$OUT/runs" -name '*.ckpt' 2>/dev/null | wc -l)" \
    | tee -a "$OUT/log.txt"
fi
echo "results under $OUT after $SECONDS s" | tee -a "$OUT/log.txt"
exit 0
