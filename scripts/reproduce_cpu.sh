#!/usr/bin/env bash
# The full reproduction (issue 13) on this machine's CPU, in the background at low priority,
# into reproduction/ (committed with its tables, figures and REPRODUCTION.md when done).
#
#   bash scripts/reproduce_cpu.sh              # start, or resume after a stop or a crash
#   bash scripts/reproduce_cpu.sh --only degradation gradnorm   # some steps (any reproduce flags)
#   bash scripts/reproduce_cpu.sh status       # running or not, the last lines of the log
#   bash scripts/reproduce_cpu.sh stop         # stop it; every finished row is kept
#
# Resuming: every step appends its rows to reproduction/results/<step>/results.csv as they are
# measured (a group of conditions at a time) and a rerun measures only the missing keys (same
# model, checkpoint and data fingerprint), so a stopped run loses at most one group per step;
# run.json sums each step's wall time over the invocations. Checkpoints bundled later
# (resnet110, resnet110-sd) join the plan on the next start: their rows are added, the others
# reused. The report is regenerated at the end of every invocation.
#
# The command it runs:
#   nice -n 10 python -m ablate.reproduce --device cpu --out reproduction
#
# Estimated CPU time (pieces measured at nice 19 on the 2 cores shared with a training job
# and other work, load 5-8, extrapolated linearly; expect less on an idle machine):
#   degradation     8 nets x 10,000 images                              ~ 12 min
#   gradnorm        resnet56 + plain56, init + trained, 1,000 images    ~  6 min
#   delete_block    resnet56 (27) + plain56 (52 units), 10,000 images   ~ 75 min
#                   + resnet110 (54 blocks)                             ~ 95 min
#                   + resnet110-sd (54 blocks, when bundled)            ~ 95 min
#   paths           resnet56: 28 lengths x 128 images x 8 sets          ~ 25 min
#                   (resnet110 instead: 19 lengths, twice the cost)     ~ 35 min
#   drop_blocks     201 sets x 1,000 images: resnet56 ~ 40, resnet110   ~ 80 min
#   reorder_blocks  201 orders x 1,000 images: resnet56 ~ 40, resnet110 ~ 80 min
#   attribution     conductance, 16 steps x 128 images: resnet56 ~ 25, resnet110 ~ 100 min
#   total today (zoo only)                                              ~ 4 h
#   total with resnet110 (and resnet110-sd)                             ~ 9 h (10.5 h)
# (see the helper report of issue 13 for the measured pieces)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${REPRO_OUT:-reproduction}
LOG=runs/reproduce_cpu.log
PID=runs/reproduce_cpu.pid
mkdir -p runs
running() { [ -f "$PID" ] && kill -0 "$(cat "$PID")" 2>/dev/null; }
case "${1:-start}" in
  status)
    if running; then echo "running (pid $(cat "$PID"))"; else echo "not running"; fi
    tail -c 2000 "$LOG" 2>/dev/null | tr '\r' '\n' | tail -n 5 ;;
  stop)
    running && kill -- "-$(cat "$PID")" && echo "stopped; rerun to resume" || echo "not running"
    rm -f "$PID" ;;
  *)
    [ "${1:-start}" = start ] && shift $(( $# > 0 ? 1 : 0 ))
    if running; then echo "already running (pid $(cat "$PID"))"; exit 0; fi
    export PYTHONUNBUFFERED=1
    setsid nohup nice -n 10 "$PY" -m ablate.reproduce --device cpu --out "$OUT" "$@" \
      >> "$LOG" 2>&1 < /dev/null &
    echo $! > "$PID"
    echo "started (pid $!): log $LOG, results $OUT/" ;;
esac
