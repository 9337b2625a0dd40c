#!/usr/bin/env bash
# Regenerates the committed outputs under docs/analysis/ on this machine (CPU, 1 thread, random weights except
# the digits-trained efficientvit_m0). Usage: bash docs/analysis/reproduce.sh [OUT] (default docs/analysis).
set -euo pipefail
OUT=${1:-docs/analysis}
export OMP_NUM_THREADS=1
LV="python -m leanvit"
TRAINED=${TRAINED:-/tmp/leanvit_digits_m0}
# A small trained model for the weight-dependent tools: the default quick recipe (efficientvit_m0, 64 px, digits).
[ -f "$TRAINED/best.ckpt" ] || $LV train --data digits --epochs 3 --output "$TRAINED" --set log.progress=false --set log.tensorboard=false
DIGITS="--data digits --num-classes 10 --img-size 64 --checkpoint $TRAINED/best.ckpt"

$LV analyze block-complexity --out "$OUT/block_complexity" --time 1 --rounds 3 --batch 4
$LV analyze op-breakdown efficientvit_m4 shvit_s1 sepvit_t timm:deit_tiny_patch16_224 timm:swin_tiny_patch4_window7_224 \
    --backend eager --iters 3 --warmup 2 --out "$OUT/op_breakdown"
$LV analyze op-breakdown efficientvit_m4 shvit_s1 timm:deit_tiny_patch16_224 --backend jit --iters 3 --warmup 2 \
    --out "$OUT/op_breakdown"
$LV analyze op-breakdown efficientvit_m4 shvit_s1 timm:deit_tiny_patch16_224 --backend openvino --iters 10 \
    --out "$OUT/op_breakdown"
$LV analyze head-similarity efficientvit_m0 --definition shvit $DIGITS --images 128 --out "$OUT/heads"
$LV analyze head-similarity efficientvit_m0 --definition efficientvit $DIGITS --images 128 --out "$OUT/heads"
$LV analyze head-ablation efficientvit_m0 $DIGITS --images 360 --out "$OUT/heads"
$LV analyze taylor efficientvit_m0 --keep 0.5 $DIGITS --images 512 --out "$OUT/taylor"
$LV analyze design-space shvit-macro shvit-tab6 evit-tab6 evit-fig7 --batch 16 --duration 1 --rounds 3 \
    --out "$OUT/design_space"
