#!/usr/bin/env bash
# The one script to run on a lent GPU machine (see benchmarks/README.md, "On a lent GPU").
#
# It installs tritp from this checkout, installs the peer wheels carried in .whl/ (if any),
# puts an unpacked OpenEquivariance source folder on PYTHONPATH (if any), prints the card and
# the versions, runs benchmarks/harness.py on every preset under a time limit, and copies the
# results JSON and the log into $OUT. It reports; it never fails on a time. Nothing is
# downloaded: the machine reaches no network.
#
#   bash benchmarks/gpu_check.sh                         # all presets, all peers
#   bash benchmarks/gpu_check.sh --preset mace-medium    # extra arguments go to the harness
#
# Environment: BENCH_TIME_LIMIT (seconds of measuring before the harness skips the rest,
# default 210), BENCH_HARD_LIMIT (seconds before the harness is interrupted, default 300;
# it still writes what it measured), OUT (where results go; default a new temporary folder).
set -uo pipefail
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
# holds the package folder goes on PYTHONPATH; its C++ extension is JIT-built on first import.
oeq_init=$(find .whl .oeq -maxdepth 5 -path '*openequivariance/__init__.py' 2>/dev/null | head -n 1)
if [[ -n "$oeq_init" ]]; then
    oeq_root=$(cd "$(dirname "$oeq_init")/.." && pwd)
    export PYTHONPATH="$oeq_root${PYTHONPATH:+:$PYTHONPATH}"
    say "OpenEquivariance source on PYTHONPATH: $oeq_root"
else
    say "no OpenEquivariance source folder: it will be reported as not importable"
fi

say "versions (importing each peer once, so that JIT builds happen here, not inside a timing)"
timeout 150 "$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import importlib, time
for name in ("torch", "triton", "e3nn", "cuequivariance", "cuequivariance_torch", "openequivariance", "tritp"):
    t = time.perf_counter()
    try:
        mod = importlib.import_module(name)
        print(f"{name:22s} {getattr(mod, '__version__', '?')!s:14s} import {time.perf_counter() - t:6.1f} s")
    except Exception as e:  # report, do not stop: the harness records the same reason
        print(f"{name:22s} NOT IMPORTABLE: {type(e).__name__}: {e}")
import torch
print("device:", torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device",
      "| torch CUDA", torch.version.cuda)
EOF

say "harness ${*:---preset all}: time limit ${BENCH_TIME_LIMIT:-210} s (hard stop ${BENCH_HARD_LIMIT:-300} s)"
args=("$@")
(( ${#args[@]} )) || args=(--preset all)
timeout --signal=INT --kill-after=30 "${BENCH_HARD_LIMIT:-300}" \
    "$PY" benchmarks/harness.py "${args[@]}" --time-limit "${BENCH_TIME_LIMIT:-210}" \
    --out benchmarks/results 2>&1 | tee -a "$LOG"
status=${PIPESTATUS[0]}
say "harness exit status: $status"

# The newest JSON files this run wrote (at most 6, so that $OUT stays under the tool's 8 files).
find benchmarks/results -name '*.json' -newer "$STAMP" -print0 2>/dev/null | xargs -0 -r ls -t | head -n 6 |
    while read -r f; do cp "$f" "$OUT/" && say "copied $f to $OUT"; done
rm -f "$STAMP"
exit 0
