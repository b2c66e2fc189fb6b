#!/usr/bin/env bash
# The full reproduction (issue 13) on this machine's CPU, in the background at low priority,
# into reproduction/ (committed with its tables, figures and REPRODUCTION.md when done).
#
#   bash scripts/reproduce_cpu.sh              # start, or resume after a stop or a crash
#   bash scripts/reproduce_cpu.sh --only degradation gradnorm   # some steps (any reproduce flags)
#   bash scripts/reproduce_cpu.sh status       # running or not, the last lines of the log
#   bash scripts/reproduce_cpu.sh stop         # stop it; every finished row is kept
#   NICE=19 OMP_NUM_THREADS=1 bash scripts/reproduce_cpu.sh   # beside a training: take what it leaves
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
# Estimated wall time, from small pieces of each step measured at nice 19 on these 2 cores and
# extrapolated linearly (minutes; "busy": load 5-8, the resnet110 training job and other work
# beside it; "load 4": the training job alone). Rows resume, so the run may span sessions.
#   step            work                                              busy   load 4
#   degradation     8 nets x 10,000 images                               9        6
#   gradnorm        resnet56 + plain56, init + trained, 1,000 images     5        3
#   delete_block    resnet56 (27 blocks), 10,000 images                 24       14
#                   plain56 (52 units), 10,000 images                   47       28
#   paths           resnet56: 28 lengths x 128 images x 8 sets          28       17
#   drop_blocks     resnet56: 161 sets x 1,000 images                   26       16
#   reorder_blocks  resnet56: 161 orders x 1,000 images                 33       20
#   attribution     resnet56: conductance, 16 steps x 128 images        19       12
#   today (the zoo)                                                 ~3.2 h   ~1.9 h
#   + resnet110: delete_block 75, paths 38 (19 lengths), drop 51,
#     reorder 66, attribution 77                                    ~5.1 h   ~3.1 h
#   + resnet110-sd: delete_block (Fig. 8)                           ~1.3 h   ~0.9 h
#   all of it                                                       ~9.5 h   ~5.9 h
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
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
    setsid nohup bash scripts/lowprio.sh "${NICE:-10}" \
      "$PY" -m ablate.reproduce --device cpu --out "$OUT" "$@" \
      >> "$LOG" 2>&1 < /dev/null &
    echo $! > "$PID"
    echo "started (pid $!): log $LOG, results $OUT/" ;;
esac
