#!/usr/bin/env bash
# Train the bundled ResNet-110 pair (issue 12) on the CPU in the background, at low priority:
#   bash scripts/train_resnet110_cpu.sh          # resnet110: 40 cosine epochs, seed 0
#   bash scripts/train_resnet110_cpu.sh sd       # resnet110-sd: the same + linear:0.5 SD
#   tail -n 2 ~/ablate-runs/resnet110-sd.out     # progress, one line per epoch
# Every epoch ends with an atomic last.pt in ~/ablate-runs/NAME: run this again (new session,
# reboot, kill) and it resumes from the last finished epoch. Without that folder it starts from
# ../shared/training/NAME when one is there, else from scratch. Precision is the trainer's
# choice by CPU feature (bf16 + channels-last with native bf16, else fp32 + channels-last).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DATA=${DATA:-../shared/data/cifar10-png.tar.gz}
NAME=resnet110 SD=()
if [ "${1:-}" = sd ]; then NAME=resnet110-sd SD=(--stochastic-depth linear:0.5); fi
OUT=${OUT:-$HOME/ablate-runs/$NAME}
if [ ! -f "$OUT/last.pt" ] && [ -f "../shared/training/$NAME/last.pt" ]; then
  mkdir -p "$OUT" && cp "../shared/training/$NAME/"{last.pt,log.csv} "$OUT/" && chmod u+w "$OUT"/*
  echo "seeded $OUT from ../shared/training/$NAME"
fi
RESUME=$([ -f "$OUT/last.pt" ] && echo --resume || true)
mkdir -p "$OUT"
PYTHONUNBUFFERED=1 setsid nohup bash scripts/lowprio.sh 10 \
  "$PYTHON" -m ablate.train --model resnet110 "${SD[@]}" --data "$DATA" --schedule cosine \
  --epochs 40 --seed 0 --channels-last --out "$OUT" --no-progress $RESUME >> "$OUT.out" 2>&1 < /dev/null &
echo "$NAME training in the background (pid $!), log $OUT.out"
