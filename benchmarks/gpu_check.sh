#!/usr/bin/env bash
# The one script to run on a lent GPU machine (see benchmarks/README.md, "On a lent GPU").
#
# It installs tritp from this checkout, installs the peer wheels carried in .whl/ (if any),
# puts an unpacked OpenEquivariance source folder on PYTHONPATH (if any), prints the card and
# the versions, then runs the STAGES asked for, each under a time limit cut to what is left of
# the whole run's BUDGET, and copies the results JSON, the autotune export and the log into
# $OUT. It reports; it never fails on a time. Nothing is downloaded: the machine reaches no
# network.
#
#   bash benchmarks/gpu_check.sh                         # every stage, 500 s in all
#   STAGES=harness bash benchmarks/gpu_check.sh --preset mace-medium   # arguments go to the harness
#
# STAGES (comma list, default harness,conv,gaunt,autotune):
#   harness   benchmarks/harness.py on every preset vs e3nn, cuEquivariance, OpenEquivariance (issue 3)
#   conv      benchmarks/conv_bench.py: mace-large on the diamond and random graphs, fp32 (issue 7;
#             tritp-det-segwalk times the deterministic kernels' former one-walk-per-segment form)
#   gaunt     benchmarks/gaunt_bench.py: L = 8, 6, 4, 2, C = 32 first; separable, tf32x3 and fp32 dots, e3nn (issue 6)
#   autotune  tritp autotune --preset all --strategy staged --direction fwd,bwd --export autotune_cache/
#             (issue 5; the exported files come back under $OUT/autotune_cache)
#   forms     benchmarks/kernel_forms.py: mul_ir with row-on-warp (default), plain 3D or strided tiles,
#             unshared channel loops, the unfused backward, every gradient and the unfused double backward (dbl), ir_mul; on mace-large, mace-medium, nequip-benzene, uvu-128x3e unless FORMS_ARGS
#             says otherwise (e.g. "--preset mace-large"; not in the default STAGES)
# CONV_ARGS and GAUNT_ARGS replace those stages' problem options (e.g. CONV_ARGS="--variants
# tritp-atomic oeq-atomic", GAUNT_ARGS="--L 1-8 --channels 32 --impls grid,fft,e3nn").
# Environment: BUDGET (seconds for the whole script, default 500), HARNESS_S, CONV_S, GAUNT_S,
# TUNE_S, FORMS_S (each stage's hard stop before the cut, defaults 220, 90, 90, 80, 240; a stage measures for
# three quarters of it and is then interrupted, keeping what it measured), OUT (where results
# go; default a new temporary folder).
set -uo pipefail
export FORMS_ARGS="${FORMS_ARGS:-}"
export CONV_ARGS="${CONV_ARGS:-}"
export GAUNT_ARGS="${GAUNT_ARGS:---L 8,6,4,2 --channels 32,128 --impls separable,separable-p1,grid-tf32x3,e3nn,grid,fft-tf32x3,sparse}"
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
PY="${PYTHON:-python3}"
: > "$LOG"
STAMP=$(mktemp)  # results newer than this are this run's
say() { echo "== $*" | tee -a "$LOG"; }

say "card"
nvidia-smi 2>&1 | tee -a "$LOG"

say "install tritp (editable, no dependencies: the image has torch, triton, sympy, numpy, rich, e3nn)"
"$PY" -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -3 | tee -a "$LOG"

shopt -s nullglob
wheels=(.whl/*.whl)
if (( ${#wheels[@]} )); then
    say "install carried wheels: ${wheels[*]}"
    "$PY" -m pip install -q --no-index --no-deps --no-compile "${wheels[@]}" 2>&1 | tail -5 | tee -a "$LOG"
else
    say "no wheels in .whl/: cuEquivariance will be reported as not importable"
fi

# An unpacked OpenEquivariance source tree (e.g. .whl/openequivariance-0.7.0/): the folder that
# holds the package folder goes on PYTHONPATH. Its C++ extension is JIT-built on first import
# (a minute or two); that build runs in the background while the harness compiles tritp's
# kernels, and the harness's first OEQ import waits on torch's build lock. The build is stopped
# with SIGINT, never SIGTERM: torch then releases its lock (a killed build leaves a stale one
# that makes every later import wait 300 s), and a stale lock is removed first anyway.
oeq_init=$(find .whl .oeq -maxdepth 5 -path '*openequivariance/__init__.py' 2>/dev/null | head -n 1)
if [[ -n "$oeq_init" ]]; then
    oeq_root=$(cd "$(dirname "$oeq_init")/.." && pwd)
    export PYTHONPATH="$oeq_root${PYTHONPATH:+:$PYTHONPATH}"
    say "OpenEquivariance source on PYTHONPATH: $oeq_root; building its extension in the background"
    find "${TORCH_EXTENSIONS_DIR:-$HOME/.cache/torch_extensions}" -path '*libtorch_tp_jit*' -name lock -delete 2>/dev/null
    ( timeout --signal=INT --kill-after=20 "${OEQ_BUILD_S:-300}" "$PY" -c '
import signal, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job starts with it ignored
t = time.perf_counter()
import openequivariance as oeq
built, error = getattr(oeq, "BUILT_EXTENSION", None), getattr(oeq, "BUILT_EXTENSION_ERROR", None)
print(f"OpenEquivariance {oeq.__version__}: import and extension build {time.perf_counter() - t:.1f} s, "
      f"built: {built} {error or str()}")
' 2>&1 | tail -n 5 | sed 's/^/[oeq build] /' | tee -a "$LOG" ) &
    # a benchmark that needs OEQ while it still builds waits this long per problem, then goes on
    export TRITP_BENCH_IMPORT_WAIT_S="${TRITP_BENCH_IMPORT_WAIT_S:-20}"
else
    say "no OpenEquivariance source folder: it will be reported as not importable"
fi

say "versions (OpenEquivariance's are printed by its background build)"
timeout --signal=INT --kill-after=10 150 "$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import importlib, time
for name in ("torch", "triton", "e3nn", "cuequivariance", "cuequivariance_torch", "cuequivariance_ops_torch", "tritp"):
    t = time.perf_counter()
    try:
        mod = importlib.import_module(name)
        print(f"{name:24s} {getattr(mod, '__version__', '?')!s:14s} import {time.perf_counter() - t:6.1f} s")
    except Exception as e:  # report, do not stop: the harness records the same reason
        print(f"{name:24s} NOT IMPORTABLE: {type(e).__name__}: {e}")
import torch
print("device:", torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device",
      "| torch CUDA", torch.version.cuda)
EOF

STAGES="${STAGES:-harness,conv,gaunt,autotune}"
BUDGET="${BUDGET:-500}"
# hard stop for a stage that wants $1 seconds: that, or what is left of the budget less a margin
limit_for() { local left=$(( BUDGET - SECONDS - 15 )); (( left < $1 )) && echo "$left" || echo "$1"; }
has() { [[ ",$STAGES," == *",$1,"* ]]; }
run_stage() {  # name, wanted seconds, command...
    local name=$1 want=$2; shift 2
    local hard; hard=$(limit_for "$want")
    if (( hard < 30 )); then say "stage $name skipped: $hard s left of the ${BUDGET} s budget"; return; fi
    local soft=$(( hard * 3 / 4 ))
    say "stage $name: measuring for $soft s, hard stop $hard s"
    STAGE_SOFT=$soft timeout --signal=INT --kill-after=20 "$hard" "$@" 2>&1 | tee -a "$LOG"
    say "stage $name exit status: ${PIPESTATUS[0]}"
}
args=("$@")
(( ${#args[@]} )) || args=(--preset all)
has harness && run_stage harness "${HARNESS_S:-220}" \
    bash -c 'exec "$0" benchmarks/harness.py "$@" --time-limit "$STAGE_SOFT" --out benchmarks/results' "$PY" "${args[@]}"
has conv && run_stage conv "${CONV_S:-90}" \
    bash -c 'exec "$0" benchmarks/conv_bench.py --dtypes float32 $CONV_ARGS --time-limit "$STAGE_SOFT" --out benchmarks/results' "$PY"
has gaunt && run_stage gaunt "${GAUNT_S:-90}" \
    bash -c 'exec "$0" benchmarks/gaunt_bench.py $GAUNT_ARGS --time-limit "$STAGE_SOFT" --out benchmarks/results' "$PY"
if has autotune; then
    run_stage autotune "${TUNE_S:-80}" bash -c 'exec "$0" -m tritp.cli autotune --preset all --strategy staged \
        --direction fwd,bwd --time-limit "$STAGE_SOFT" --export autotune_cache' "$PY"
    mkdir -p "$OUT/autotune_cache"
    cp autotune_cache/*.json "$OUT/autotune_cache/" 2>/dev/null && say "copied autotune_cache/*.json to $OUT/autotune_cache"
fi
has forms && run_stage forms "${FORMS_S:-240}" \
    bash -c 'exec "$0" benchmarks/kernel_forms.py $FORMS_ARGS --time-limit "$STAGE_SOFT" --out benchmarks/results' "$PY"

# The newest JSON files this run wrote (at most 5, so that $OUT stays small).
find benchmarks/results -name '*.json' -newer "$STAMP" -print0 2>/dev/null | xargs -0 -r ls -t | head -n 5 |
    while read -r f; do cp "$f" "$OUT/" && say "copied $f to $OUT"; done
rm -f "$STAMP"
wait  # an OEQ build still running (it has its own limit)
exit 0
