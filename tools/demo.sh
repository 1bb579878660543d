#!/usr/bin/env bash
# The main job (`make demo`): SSF on a tiny Swin Mask R-CNN over generated COCO-format data,
# then the merged checkpoint evaluated by the *stock* mmdet config in a process without mmssf.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
EPOCHS=${DEMO_EPOCHS:-30}
WD=${DEMO_WORK_DIR:-work_dirs/demo_ssf_mask-rcnn}
TUNED=configs/demo/ssf_mask-rcnn_swin-tiny_demo-coco.py
STOCK=configs/demo/mask-rcnn_swin-tiny_demo-coco.py
START=$(date +%s)
step() { printf '\n[demo %4ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }

step "generate COCO-format data in data/demo_coco (reused if present)"
$PY -m mmssf.datasets.generate coco data/demo_coco --num-train 16 --num-val 8

step "train SSF for $EPOCHS epochs: $TUNED"
rm -rf "$WD"; mkdir -p "$(dirname "$WD")"
$PY tools/train.py $TUNED --work-dir "$WD" --cfg-options train_cfg.max_epochs=$EPOCHS \
  train_cfg.val_interval=$EPOCHS default_hooks.checkpoint.interval=$EPOCHS > "$WD.train.log" 2>&1 \
  || { tail -n 40 "$WD.train.log"; exit 1; }
sed -n '/  trainable  /,/^trainable params:/p' "$WD.train.log" | sed 's/^.* - INFO - $//' || true

CKPT="$WD/epoch_$EPOCHS.pth"
step "evaluate the tuned model (resumable checkpoint $CKPT) with tools/test.py"
$PY tools/test.py $TUNED "$CKPT" --work-dir "$WD/test_tuned" --out "$WD/tuned.json" > "$WD.test.log" 2>&1 \
  || { tail -n 40 "$WD.test.log"; exit 1; }

step "evaluate the merged stock checkpoint with the stock config (no mmssf in the process)"
$PY tools/misc/eval_stock.py $STOCK "${CKPT%.pth}_merged.pth" --work-dir "$WD/test_stock" \
  --out "$WD/stock.json" > "$WD.stock.log" 2>&1 || { tail -n 40 "$WD.stock.log"; exit 1; }

step "result"
$PY - "$WD" "$CKPT" <<'PY'
import json, sys, torch
wd, ckpt = sys.argv[1], sys.argv[2]
tuned, stock = (json.load(open(f'{wd}/{n}.json')) for n in ('tuned', 'stock'))
meta = torch.load(ckpt.replace('.pth', '_merged.pth'), weights_only=True)['meta']['mmssf']
print(f"trainable params (SSF in the backbone + neck + heads): {meta['trainable_params']:,} "
      f"of {meta['total_params']:,} ({100 * meta['trainable_params'] / meta['total_params']:.2f}%)")
print(f"{'metric (pycocotools)':<22}{'tuned (SSF)':>14}{'merged, stock mmdet':>22}")
for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50'):
    print(f'{key:<22}{tuned[key]:>14.4f}{stock[key]:>22.4f}')
same = all(abs(tuned[k] - stock[k]) < 1e-9 for k in tuned if k.startswith('coco/'))
print('merged stock checkpoint reproduces the tuned metrics:', 'yes' if same else 'NO')
sys.exit(0 if same else 1)
PY
step "done (logs in $WD.*.log)"
