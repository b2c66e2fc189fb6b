#!/usr/bin/env bash
# The GPU work (issues 12, 13), for the device machine (H100/H200, torch 2.11, no captum, no
# internet). Every reported number uses pristine CIFAR-10, whose archive (135 MB) is larger than
# one call may carry (64 MiB): send it in three parts over successive calls of one warm machine.
# Prepare here once:
#   mkdir -p .whl .data && split -b 45M -d ../shared/data/cifar10-png.tar.gz .data/part.
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl captum==0.9.0
# then, carrying one part at a time in .data (move the other parts aside between calls):
#   bash scripts/gpu.sh receive    # keeps the carried part in /tmp; joins and checks all three
# and call the device with carry [".whl", "runs"] and a command such as
#   bash scripts/gpu.sh train      # resnet110 and resnet110-sd, full recipe, in the background
#   bash scripts/gpu.sh status     # one line per run: the last epoch logged
#   bash scripts/gpu.sh bench      # trainer vs DataLoader baseline; batched vs naive lesion sweep
#   bash scripts/gpu.sh reproduce  # the full reproduction on the checkpoints in runs/gpu
# Logs and JSON go under $OUT (the device tool's output folder) when it is set.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site"
[ -d /tmp/site ] || { [ -d .whl ] && python3 -m pip install -q --no-index --no-deps \
  --no-compile --target /tmp/site .whl/*.whl; }
DATA=/tmp/cifar10-png.tar.gz
SHA=f417c1a81cd26a023e7b4d1bb409bedf34c87c8d92944ddac42aaf7e363c6f21
RUNS=runs/gpu
LOG=${OUT:-$RUNS}
mkdir -p "$RUNS" "$LOG"
case "${1:?receive|train|status|bench|reproduce}" in
  receive)
    mkdir -p /tmp/cifar10-parts && cp .data/part.* /tmp/cifar10-parts/
    ls /tmp/cifar10-parts
    if [ "$(ls /tmp/cifar10-parts | wc -l)" -ge 3 ]; then
      cat /tmp/cifar10-parts/part.* > "$DATA"
      echo "$SHA  $DATA" | sha256sum -c -
    fi ;;
  train)
    # Several runs share one GPU; resnet110 and its stochastic-depth twin come first.
    for spec in "resnet110" "resnet110 --stochastic-depth linear:0.5"; do
      set -- $spec
      name=$1; [ $# -gt 1 ] && name="$1-sd"
      setsid nohup python3 -m ablate.train --model $spec --data $DATA --device cuda \
        --out "$RUNS/$name" --no-progress $( [ -f "$RUNS/$name/last.pt" ] && echo --resume ) \
        > "$RUNS/$name.log" 2>&1 < /dev/null &
    done
    sleep 120; tail -n 2 "$RUNS"/*.log | tee "$LOG/train-start.txt" ;;
  status)
    for f in "$RUNS"/*.log; do echo "$f: $(grep '^epoch' "$f" | tail -n 1)"; done \
      | tee "$LOG/status.txt" ;;
  bench)
    nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv | tee "$LOG/gpu.txt"
    python3 benchmarks/train_speed.py --model resnet110 --data $DATA --device cuda \
      --out "$LOG/train_speed.json" 2>&1 | tee "$LOG/train_speed.log"
    python3 benchmarks/lesion_sweep.py --model resnet110 --device cuda --n-images 10000 \
      --out "$LOG/lesion_sweep.json" 2>&1 | tee "$LOG/lesion_sweep.log"
    # Does bf16 autocast (opt-in, never used for reported numbers) change any error count?
    python3 benchmarks/lesion_sweep.py --model resnet56 --checkpoint \
      ablate/checkpoints/resnet56.safetensors --device cuda --n-images 10000 --amp bf16 \
      --skip-naive --out "$LOG/lesion_sweep_bf16.json" 2>&1 | tee "$LOG/lesion_sweep_bf16.log" ;;
  reproduce)
    mkdir -p "$RUNS/zoo"
    for d in "$RUNS"/*/; do
      for f in "$d"*.safetensors; do [ -e "$f" ] && cp "$f" "${f%.safetensors}.json" \
        "${f%.safetensors}.log.csv" "$RUNS/zoo/" 2>/dev/null || true; done
    done
    ABLATE_CHECKPOINTS="$RUNS/zoo" python3 -m ablate.reproduce --device cuda \
      --out "$RUNS/reproduction" 2>&1 | tee "$LOG/reproduce.log"
    cp "$RUNS/reproduction/REPRODUCTION.md" "$LOG/" ;;
esac
