#!/usr/bin/env bash
# Train vit_cifar (ViT-Lite-7/4, Hassani et al. 2021) on pristine CIFAR-10 on the CPU, in the
# background, with Lee et al. 2021's recipe (training.config.vit_recipe: 100 epochs of AdamW,
# linear warm-up then cosine, label smoothing, RandAugment, Mixup/CutMix). Every epoch ends with
# an atomic last.pt: run this script again (after a reboot, a kill, a new session) and it resumes
# from the last finished epoch, bitwise as if uninterrupted.
#   bash scripts/train_vit_cpu.sh            # start or resume; prints the log's path
#   OUT=~/ablate-runs/vit_cifar_gpu bash scripts/train_vit_cpu.sh --change-device
#                                            # finish a run begun on a GPU (scripts/gpu_vit.py)
#   tail -n 3 ~/ablate-runs/vit_cifar.log    # progress, one line per epoch
#   bash scripts/finish_vit.sh               # once finished: bundle it, add it to reproduction/
# bf16 autocast (native on AVX512-BF16/AMX CPUs; 2.5x fp32 here), NCHW (the trainer's default for
# ViTs: channels-last only slows the patch embedding), the math attention kernel (the trainer's
# choice for transformers on a CPU: 1.3x CPU flash attention at 65 tokens, 48 -> 63-67 img/s on one
# thread of an AMD EPYC), THREADS intra-op threads (default 1: on a
# 2-core host shared with another training, two threads wait on each other).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
DATA=${DATA:-../shared/data/cifar10-png.tar.gz}
OUT=${OUT:-$HOME/ablate-runs/vit_cifar}
THREADS=${THREADS:-1}
mkdir -p "$(dirname "$OUT")"
RESUME=$([ -f "$OUT/last.pt" ] && echo --resume || true)
OMP_NUM_THREADS=$THREADS PYTHONUNBUFFERED=1 setsid nohup bash scripts/lowprio.sh 10 \
  "$PYTHON" -m ablate.train --model vit_cifar --data "$DATA" --amp bf16 --no-channels-last \
  --seed 0 --out "$OUT" --no-progress $RESUME "$@" >> "$OUT.log" 2>&1 < /dev/null &
echo "vit_cifar training in the background (pid $!), log $OUT.log"
