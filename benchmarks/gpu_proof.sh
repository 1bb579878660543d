#!/usr/bin/env bash
# What only a GPU can prove, in one run on a fresh GPU machine with this repo checked out:
#   1. set-up (tools/install_env.sh: the README's; mmcv's CUDA ops are compiled when nvcc exists)
#   2. the CUDA test subset: merge equivalence, SPT, AMP matrix (pytest --device cuda), and two
#      Runner flows (Mask R-CNN SSF, SETR SPT-LoRA) through tools/train.py / tools/test.py on CUDA
#   3. tools/dist_train.sh CONFIG 1 with NCCL and --amp on the tiny SSF Mask R-CNN demo config
#   4. benchmarks/peft_cost.py --device cuda for ViT-B/16 and Swin-T at batch 32: step time, peak
#      torch.cuda.max_memory_allocated, merged / stock inference, per method
# Everything lands in one folder (OUT, default work_dirs/gpu_proof_<UTC time>): each step's log,
# the tables (peft_cost.md), summary.txt with each step's exit status and seconds.
#
# Sized for under 8 minutes on one H100 / H200 after set-up (set-up itself: a few minutes with
# the mmcv wheel cached, much longer the first time nvcc compiles mmcv's CUDA ops). Cut to fit:
# the slow Runner-flow tier runs 2 of its 7 flows; the AMP matrix runs its default tier; peft_cost
# times 3 steps per method (not 5) and skips the per-method RSS children (CPU memory); no
# torch.compile sweep (run `peft_cost.py --compile --device cuda` separately).
#
# Usage: benchmarks/gpu_proof.sh [--device cuda|cpu] [--out DIR] [--skip-install] [--dry-run]
#   --dry-run  check that every command, file and option exists (cheap; CI runs it with
#              --device cpu) and write the plan, without installing, testing or training
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DEVICE=cuda
OUT=""
DRY=0
INSTALL=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) DEVICE="${2:-}"; shift 2 ;;
    --out) OUT="${2:-}"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --skip-install) INSTALL=0; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "gpu_proof.sh: unknown argument '$1' (valid: --device cuda|cpu, --out DIR, --skip-install, --dry-run)" >&2; exit 2 ;;
  esac
done
if [[ "$DEVICE" != cuda && "$DEVICE" != cpu ]]; then
  echo "gpu_proof.sh: --device '$DEVICE': choose cuda or cpu" >&2; exit 2
fi
OUT="${OUT:-work_dirs/gpu_proof_$(date -u +%Y%m%d_%H%M%S)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
START=$(date +%s)
FAILED=()
: > "$OUT/summary.txt"
: > "$OUT/plan.txt"

log() { printf '[gpu_proof %4ss] %s\n' "$(( $(date +%s) - START ))" "$*" | tee -a "$OUT/summary.txt"; }

# step NAME LOGFILE CMD...: record the command; run it (output to OUT/LOGFILE) unless --dry-run
step() {
  local name=$1 logfile=$2 t0 rc; shift 2
  printf '%s: %s > %s\n' "$name" "$*" "$logfile" >> "$OUT/plan.txt"
  if [[ $DRY -eq 1 ]]; then log "plan  $name: $*"; return 0; fi
  log "start $name"
  t0=$(date +%s)
  "$@" > "$OUT/$logfile" 2>&1
  rc=$?
  log "done  $name: exit $rc in $(( $(date +%s) - t0 )) s (log: $logfile)"
  [[ $rc -eq 0 ]] || FAILED+=("$name")
}

need() {  # need PATH...: a file the run uses must exist (what --dry-run checks)
  local p
  for p in "$@"; do
    [[ -e "$p" ]] || { log "missing: $p"; FAILED+=("missing $p"); }
  done
}

# -- 1. set-up -----------------------------------------------------------------------------
need tools/install_env.sh
if [[ $INSTALL -eq 1 ]]; then
  step setup install.log env MAX_JOBS="${MAX_JOBS:-$(nproc)}" bash tools/install_env.sh
fi
if [[ $DRY -eq 0 ]]; then
  { nvidia-smi 2>&1 || echo "(no nvidia-smi)"; command -v nvcc && nvcc --version; } > "$OUT/env.txt" 2>&1
  "$PY" -c "import torch, mmcv; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else ''); \
print('mmcv', mmcv.__version__)" >> "$OUT/env.txt" 2>&1
  if [[ $DEVICE == cuda ]]; then
    "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" \
      || { log "torch sees no CUDA device (see env.txt); use --device cpu"; exit 1; }
    "$PY" -c "from mmcv.ops import nms; import torch; b = torch.rand(8, 4).cuda(); b[:, 2:] += b[:, :2]; \
nms(b, torch.rand(8).cuda(), 0.5); print('mmcv CUDA ops: ok')" >> "$OUT/env.txt" 2>&1 \
      || log "note: mmcv's ops have no CUDA kernels here (built without nvcc?); see env.txt"
  fi
fi

# -- 2. the CUDA test subset ---------------------------------------------------------------
TESTS=(tests/test_peft_merge.py tests/test_spt.py tests/test_amp.py)
need "${TESTS[@]}" tests/test_runner_flows.py
grep -q "addoption('--device'" tests/conftest.py || { log "tests/conftest.py has no --device option"; FAILED+=("--device option"); }
step tests pytest.log "$PY" -m pytest "${TESTS[@]}" -q -m "not slow and not long" --device "$DEVICE" \
  --junitxml "$OUT/pytest.xml" -p no:cacheprovider
step runner_flows pytest_flows.log "$PY" -m pytest tests/test_runner_flows.py -q --device "$DEVICE" \
  -k "mask-rcnn_ssf or setr_spt-lora" --junitxml "$OUT/pytest_flows.xml" -p no:cacheprovider

# -- 3. distributed training with NCCL (1 process) and AMP ----------------------------------
CONFIG=configs/demo/ssf_mask-rcnn_swin-tiny_demo-coco.py
need "$CONFIG" tools/dist_train.sh
bash -n tools/dist_train.sh || FAILED+=("tools/dist_train.sh syntax")
step data data.log "$PY" -m mmssf.datasets.generate coco "$OUT/data/coco" --num-train 16 --num-val 8
DATA="$OUT/data/coco/"
step dist_train dist_train.log env PYTHON="$PY" PORT="${PORT:-29511}" bash tools/dist_train.sh "$CONFIG" 1 \
  --amp --work-dir "$OUT/dist_train" --cfg-options \
  train_dataloader.dataset.data_root="$DATA" val_dataloader.dataset.data_root="$DATA" \
  test_dataloader.dataset.data_root="$DATA" \
  val_evaluator.ann_file="${DATA}annotations/instances_val2017.json" \
  test_evaluator.ann_file="${DATA}annotations/instances_val2017.json" \
  train_cfg.max_epochs=2 train_cfg.val_interval=2 default_hooks.checkpoint.interval=2
if [[ $DRY -eq 0 && $DEVICE == cuda ]]; then  # the log must show NCCL and the AMP wrapper
  grep -q "nccl" "$OUT/dist_train.log" || { log "dist_train.log does not mention nccl"; FAILED+=("nccl"); }
  grep -q "AmpOptimWrapper" "$OUT/dist_train.log" || { log "dist_train.log: no AmpOptimWrapper"; FAILED+=("amp"); }
  [[ -f "$OUT/dist_train/epoch_2_merged.pth" ]] || { log "no epoch_2_merged.pth"; FAILED+=("merged checkpoint"); }
fi

# -- 4. cost per method at batch 32 ----------------------------------------------------------
need benchmarks/peft_cost.py
COST=(benchmarks/peft_cost.py --device "$DEVICE" --batch 32 --models vit,swin --steps 3 --no-rss
      --json "$OUT/peft_cost.json")
[[ $DRY -eq 1 ]] && { "$PY" "${COST[@]}" --dry-run >> "$OUT/plan.txt" 2>&1 || FAILED+=("peft_cost.py arguments"); }
step peft_cost peft_cost.md "$PY" "${COST[@]}"

log "output folder: $OUT"
if [[ ${#FAILED[@]} -gt 0 ]]; then
  log "FAILED: ${FAILED[*]}"
  exit 1
fi
log "all steps passed$([[ $DRY -eq 1 ]] && echo ' (dry run: planned and checked only)')"
