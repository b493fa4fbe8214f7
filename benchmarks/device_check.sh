#!/usr/bin/env bash
# The GPU check: one run on a GPU machine, under 8 minutes, one report file.
#
#   bash benchmarks/device_check.sh [--dry_run] [--out=FILE] [--wheels=DIR] [--cuda=13|12]
#                                   [--budget=SECONDS] [--peak_bf16=TFLOPS] [--peak_fp32=TFLOPS]
#
# Stages, each under a time limit, all inside --budget (default 450 s; a stage that would
# start with under 5 s left is skipped): the environment (python, jax, devices, nvidia-smi);
# `pip install -e ".[cudaN]"` (offline with --wheels=DIR: then dependencies the machine lacks
# come from DIR, and if the full install cannot resolve, hashjax is installed without its
# dependencies and the imports are checked); the default train.py and gan.py for 500 steps;
# the device's ceilings (bf16/f32 matrix product, elementwise pass: benchmarks/ceilings.py);
# the HashNet train steps in float32 and bfloat16 (examples/s, FLOPs per step from XLA's cost
# analysis, MFU against the peak); the DCGAN step; the retrieval benchmark (mAP@1000 and
# Hamming top-k over a million codes).
#
# Peaks (one device, dense): NVIDIA's H200 SXM datasheet, bf16 tensor 989.5 TFLOP/s and
# TF32 tensor 494.7 TFLOP/s (XLA runs float32 convolutions and products on TF32 at default
# precision; the ceilings stage shows which it got). Other GPUs: pass --peak_bf16 and
# --peak_fp32, else no MFU is printed.
#
# --dry_run runs every stage on the CPU at the tiniest sizes (JAX_PLATFORMS=cpu, no install),
# with a nominal peak of 1 TFLOP/s, so that the script is known to work before a GPU is at
# hand (tests/benchmarks/test_device_check.py). The report (markdown; default runs/device_check.md) gets
# one section per stage (command, last lines of output, exit code, seconds) and a summary
# table; the exit code is 0 when every stage exited 0.
# shellcheck disable=SC2317  # the stage functions run through `bash -c` (export -f)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

DRY=0 OUT=runs/device_check.md WHEELS='' CUDA=13 BUDGET=450 PEAK_BF16='' PEAK_FP32=''
usage_error() { echo "device_check.sh: error: $1 (see --help)" >&2; exit 2; }
for arg in "$@"; do
  case $arg in
    --dry_run) DRY=1 ;;
    --out=*) OUT=${arg#*=} ;;
    --wheels=*) WHEELS=$(cd "${arg#*=}" 2>/dev/null && pwd) ||
      usage_error "--wheels: no folder ${arg#*=}" ;;
    --cuda=12 | --cuda=13) CUDA=${arg#*=} ;;
    --budget=*) BUDGET=${arg#*=} ;;
    --peak_bf16=*) PEAK_BF16=${arg#*=} ;;
    --peak_fp32=*) PEAK_FP32=${arg#*=} ;;
    -h | --help) awk 'NR > 1 && !/^#/ {exit} NR > 1 && !/shellcheck/ {sub(/^# ?/, ""); print}' "$0"
      exit 0 ;;
    *) usage_error "unknown argument '$arg'" ;;
  esac
done
[[ $BUDGET =~ ^[0-9]+$ ]] || usage_error "--budget=$BUDGET is not a number of seconds"

PY=${PYTHON:-python3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$(dirname "$OUT")"
export PYTHONUNBUFFERED=1 PY WHEELS CUDA WORK
((DRY)) && export JAX_PLATFORMS=cpu
START=$SECONDS FAILED=0 SUMMARY=()

# run_stage NAME LIMIT_S COMMAND: runs COMMAND (a bash command line) under the smaller of
# LIMIT_S and the budget left, and appends its section to the report.
run_stage() {
  local name=$1 cap=$2 command=$3 left rc t0
  left=$((BUDGET - (SECONDS - START)))
  printf '\n## %s\n\n```\n$ %s\n' "$name" "$command" >>"$OUT"
  if ((left < 5)); then
    printf 'skipped: the %d s budget is spent\n```\n' "$BUDGET" >>"$OUT"
    SUMMARY+=("| $name | skipped | 0 |") FAILED=1
    return
  fi
  ((cap > left)) && cap=$left
  echo "[$((SECONDS - START)) s] $name (limit $cap s)"
  t0=$SECONDS
  timeout --kill-after=10 "$cap" bash -c "$command" >"$WORK/log" 2>&1
  rc=$?
  # a progress bar redraws with \r: of each run of its states, keep the last
  tr '\r' '\n' <"$WORK/log" | grep -v '^[[:space:]]*$' |
    awk '/[0-9]+\/[0-9]+ \[/ {bar = $0; next} bar != "" {print bar; bar = ""} {print}
         END {if (bar != "") print bar}' | tail -n 25 >>"$OUT"
  printf '```\n\nexit %d after %d s%s\n' "$rc" $((SECONDS - t0)) \
    "$( ((rc == 124)) && echo " (stopped at its $cap s limit)")" >>"$OUT"
  SUMMARY+=("| $name | $rc | $((SECONDS - t0)) |")
  ((rc == 0)) || FAILED=1
}

# pip install -e ".[cudaN]". Offline (--wheels=DIR), what the full install cannot resolve is
# left to the machine's own packages: DIR's wheels are installed alone, then hashjax alone
# (the jobs also run without it, from the repository root); then the imports are checked.
install_deps() {
  local pip=("$PY" -m pip install --disable-pip-version-check --retries 0 --timeout 15)
  [[ -n $WHEELS ]] && pip+=(--no-index --find-links "$WHEELS" --no-build-isolation)
  if ! "${pip[@]}" -e ".[cuda$CUDA]"; then
    echo "the full install failed: ${WHEELS:+the wheels in $WHEELS, then }hashjax alone"
    if compgen -G "$WHEELS/*.whl" >/dev/null; then
      "${pip[@]}" --no-deps "$WHEELS"/*.whl || return 1
    fi
    "${pip[@]}" --no-deps -e . || echo 'hashjax not installed: the jobs run from the repository'
  fi
  "$PY" - <<'PYTHON'
import absl, flax, matplotlib, ml_collections, optax, orbax.checkpoint, PIL, scipy, sklearn, tqdm
import jax
print('jax', jax.__version__, 'backend', jax.default_backend())
assert jax.default_backend() == 'gpu', 'JAX sees no GPU'
PYTHON
}

describe_env() {
  date -u +'%Y-%m-%d %H:%M:%S UTC'
  if git rev-parse --git-dir >/dev/null 2>&1; then
    echo "commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' + changes')"
  else
    echo 'commit unknown (no git repository here)'
  fi
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  fi
  "$PY" - "$WORK/device_kind" <<'PYTHON'
import sys, jax
print('python', sys.version.split()[0])
print('jax', jax.__version__, jax.default_backend(), jax.devices())
open(sys.argv[1], 'w').write(jax.devices()[0].device_kind)
PYTHON
}
export -f install_deps describe_env

if ((DRY)); then
  MODE='Dry run on the CPU at the tiniest sizes (--dry_run): the figures mean nothing.'
else
  MODE='GPU run.'
fi
printf '# hashjax device check\n\n%s Budget %d s.\n' "$MODE" "$BUDGET" >"$OUT"
run_stage environment 60 describe_env
KIND=$(cat "$WORK/device_kind" 2>/dev/null)
if ((DRY)); then
  PEAK_BF16=${PEAK_BF16:-1} PEAK_FP32=${PEAK_FP32:-1} PEAK_SOURCE='nominal, dry run'
elif [[ $KIND == *H200* ]]; then
  PEAK_BF16=${PEAK_BF16:-989.5} PEAK_FP32=${PEAK_FP32:-494.7}
  PEAK_SOURCE='NVIDIA H200 SXM datasheet, dense: bf16 tensor 989.5, TF32 tensor 494.7'
elif [[ -n $PEAK_BF16$PEAK_FP32 ]]; then
  PEAK_SOURCE='--peak_bf16, --peak_fp32'
else
  PEAK_SOURCE="no peak known for '$KIND': pass --peak_bf16 and --peak_fp32 for MFU"
fi
printf '\nDevice: %s. Peaks for MFU: bf16 %s, float32 %s TFLOP/s (%s).\n' "$KIND" \
  "${PEAK_BF16:-n/a}" "${PEAK_FP32:-n/a}" "$PEAK_SOURCE" >>"$OUT"

if ((DRY)); then
  run_stage install 10 "echo 'skipped (--dry_run): would run pip install -e \".[cuda$CUDA]\"'"
  TRAIN=(--config.{num_steps=4,log_every=2,eval_every=4,checkpoint_every=4,bits=8,batch_size=16}
    --config.split.{query_per_class=3,train_per_class=5})
  GAN=(--config.{nz=16,ngf=8,ndf=8,batch_size=16,num_steps=4,log_every=2,sample_every=4}
    --config.{checkpoint_every=4,num_samples=8,eval_holdout=0})
  CEIL=(--n=128 --gbytes=0.004 --reps=2)
  STEP=(--models=small_cnn --batch=8 --steps=1 --rounds=1)
  DCGAN=(--image_size=32 --batch=4 --steps=1 --rounds=1)
  MAP=(--queries=32 --database=1000 --topk=100 --baseline_queries=4)
  TOPK=(--queries=32 --database=1000 --topk=10)
else
  run_stage install 120 install_deps
  TRAIN=(--config.num_steps=500) GAN=(--config.num_steps=500)
  CEIL=(--n=8192 --gbytes=4 --reps=10)
  STEP=('--models=small_cnn,alexnet,resnet50' --batch=256 --steps=10 --rounds=3)
  DCGAN=(--image_size=64 --batch=64 --steps=10 --rounds=3)
  MAP=(--queries=10000 --database=1000000 --topk=1000 --baseline_queries=20)
  TOPK=(--queries=10000 --database=1000000 --topk=100)
fi
F32=${PEAK_FP32:+--peak_tflops=$PEAK_FP32} BF16=${PEAK_BF16:+--peak_tflops=$PEAK_BF16}
B=benchmarks
run_stage 'train.py (default config)' 90 "$PY train.py --workdir=$WORK/train ${TRAIN[*]}"
run_stage 'gan.py (default config)' 120 "$PY gan.py --workdir=$WORK/gan ${GAN[*]}"
run_stage ceilings 60 "$PY $B/ceilings.py ${CEIL[*]}"
run_stage 'train step float32' 120 "$PY $B/train_step.py ${STEP[*]} --no_torch $F32"
run_stage 'train step bfloat16' 120 \
  "$PY $B/train_step.py ${STEP[*]} --dtype=bfloat16 --no_torch $BF16"
run_stage 'DCGAN step' 60 "$PY $B/gan_step.py ${DCGAN[*]} --skip_conv_transpose --no_torch $F32"
run_stage retrieval 90 "$PY $B/retrieval.py --mode=map --bits=64 ${MAP[*]} &&
  $PY $B/retrieval.py --mode=topk --bits=64 ${TOPK[*]}"

VERDICT='every stage passed'
((FAILED)) && VERDICT='some stages FAILED or were skipped'
{
  printf '\n## summary\n\n| stage | exit | seconds |\n| --- | --- | --- |\n'
  printf '%s\n' "${SUMMARY[@]}"
  printf '\nTotal %d s; %s.\n' $((SECONDS - START)) "$VERDICT"
} >>"$OUT"
echo "[$((SECONDS - START)) s] report: $OUT ($VERDICT)"
exit $FAILED
