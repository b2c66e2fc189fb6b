#!/usr/bin/env bash
# lowprio.sh N COMMAND...: run COMMAND at niceness N, also where the kernel groups by session.
# With sched_autogroup (most desktop and cloud kernels), nice ranks a process only against others
# of its own session, and a job started with setsid is a new session that competes with the
# shell's as an equal: nice -n 10 alone then gives it half the CPU, not what is left. Lowering the
# session's group as well (from inside it, after setsid) lets the tests and interactive work win.
#   setsid nohup bash scripts/lowprio.sh 10 python -m ablate.train ... &
set -euo pipefail
n=$1; shift
echo "$n" > /proc/self/autogroup 2>/dev/null || true
exec nice -n "$n" "$@"
