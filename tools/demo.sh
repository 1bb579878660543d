#!/usr/bin/env bash
# The main job (`make demo`): SSF on a tiny Swin Mask R-CNN over generated COCO-format data,
# then the merged checkpoint evaluated by the *stock* mmdet config in a process without mmssf.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
# one thread per process: the demo model is tiny, and on a shared or busy machine two OpenMP
# threads per process wait on each other (measured: 2x slower under load, no gain when idle)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
EPOCHS=${DEMO_EPOCHS:-30}
WD=${DEMO_WORK_DIR:-work_dirs/demo_ssf_mask-rcnn}
TUNED=configs/demo/ssf_mask-rcnn_swin-tiny_demo-coco.py
STOCK=configs/demo/mask-rcnn_swin-tiny_demo-coco.py
START=$(date +%s)
step() { printf '\n[demo %4ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }

step "generate COCO-format data in data/demo_coco (reused if present)"
$PY -m mmssf.datasets.generate coco data/demo_coco --num-train 16 --num-val 8

# Progress on the terminal: the Runner's iteration / evaluation lines as they come (the full
# log, with the config and the weight-init report, goes to $WD.<step>.log).
progress() {  # progress LOG CMD...: run CMD, full output to LOG, progress lines to the terminal
  local log=$1 rc; shift
  set +e
  "$@" 2>&1 | tee "$log" | grep --line-buffered -E 'Epoch\((train|val|test)\)|Saving checkpoint|saved to|Error' \
    | sed -u -E 's/^[0-9/]+ [0-9:]+ - mmengine - [A-Z]+ - /  /; s/  (base_lr|lr|eta|data_time|memory): [^ ]+//g' \
    | grep --line-buffered -v -E '^  Epoch\((val|test)\) \[[0-9/]+\]\s+time: [0-9.]+\s*$'
  rc=${PIPESTATUS[0]}
  set -e
  [[ $rc -eq 0 ]] || { echo "[demo] failed: $* (last lines of $log:)"; tail -n 40 "$log"; exit 1; }
}

step "train SSF for $EPOCHS epochs: $TUNED"
rm -rf "$WD"; mkdir -p "$(dirname "$WD")"
# (no validation inside training: the two evaluations below are the point of the demo)
progress "$WD.train.log" $PY tools/train.py $TUNED --work-dir "$WD" \
  --cfg-options train_cfg.max_epochs=$EPOCHS default_hooks.checkpoint.interval=$EPOCHS \
  default_hooks.logger.interval=4 val_cfg=None val_dataloader=None val_evaluator=None
sed -n '/  trainable  /,/^trainable params:/p' "$WD.train.log" | sed 's/^.* - INFO - $//' || true

CKPT="$WD/epoch_$EPOCHS.pth"
step "evaluate the tuned model (resumable checkpoint $CKPT) with tools/test.py"
progress "$WD.test.log" $PY tools/test.py $TUNED "$CKPT" --work-dir "$WD/test_tuned" \
  --out "$WD/tuned.json"

step "evaluate the merged stock checkpoint with the stock config (no mmssf in the process)"
progress "$WD.stock.log" $PY tools/misc/eval_stock.py $STOCK "${CKPT%.pth}_merged.pth" \
  --work-dir "$WD/test_stock" --out "$WD/stock.json"

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
