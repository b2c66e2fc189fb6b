#!/usr/bin/env bash
# Once vit_cifar has finished training: bundle it and add it to the full reproduction.
# Waits (checking once a minute) while the training in $OUT is still running, so it can be
# started in the background next to it:
#   setsid nohup bash scripts/finish_vit.sh >> runs/finish_vit.log 2>&1 &
# Then it copies vit_cifar.{safetensors,json,log.csv} into ablate/checkpoints/ (refusing a net
# under 85% test accuracy, the issue's bar) and resumes the reproduction, which adds the ViT to
# Figs. 3, 5a and 5b (and deletes each of its 14 attention and MLP branches alone, and measures
# its Block Influence and angular distance against deletion damage) and reuses every ResNet row
# (scripts/reproduce_cpu.sh; about 40-60 min on two threads: a 10k-image fp32 pass of the ViT
# takes about 55 s). When its run.json says complete: python scripts/update_readme.py, commit.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$HOME/ablate-runs/vit_cifar_gpu}
PYTHON=${PYTHON:-.venv/bin/python}
while pgrep -f "ablate.train --model vit_cifar .*--out $OUT" > /dev/null; do sleep 60; done
[ -f "$OUT/vit_cifar.safetensors" ] || {
  echo "error: $OUT has no vit_cifar.safetensors: the training has not finished; resume it" \
       "with OUT=$OUT bash scripts/train_vit_cpu.sh" >&2; exit 2; }
"$PYTHON" - "$OUT/vit_cifar.json" <<'EOF'
import json, sys
card = json.load(open(sys.argv[1]))
err = card["final_test_error"]
print(f"vit_cifar: final test error {err:.2%} after {card['epochs']} epochs")
if err > 0.15:
    sys.exit("error: below 85% test accuracy; not bundled")
EOF
cp "$OUT/vit_cifar.safetensors" "$OUT/vit_cifar.json" "$OUT/vit_cifar.log.csv" ablate/checkpoints/
echo "bundled into ablate/checkpoints/; resuming the reproduction"
NICE=${NICE:-10} PYTHON="$PYTHON" bash scripts/reproduce_cpu.sh
