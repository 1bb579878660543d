#!/usr/bin/env bash
# Builds .venv/ at the repo root with the pinned OpenMMLab stack (requirements/stack.txt),
# mmcv compiled from source with its ops, and mmssf in editable mode.
# Idempotent: a venv whose stamp matches the requirements is left alone, and the
# compiled mmcv wheel is cached per torch version in $MMSSF_CACHE (default ~/.cache/mmssf).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${MMSSF_VENV:-$ROOT/.venv}"
PY="${MMSSF_PYTHON:-python3.11}"
CACHE="${MMSSF_CACHE:-$HOME/.cache/mmssf}"
PIP_FLAGS=(--no-input)  # pip's own progress bars stay on (the torch download is GBs)
START=$(date +%s)
STEP="start"

log()  { printf '[install %4ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }
fail() { printf '[install] FAILED at step: %s (see the output above)\n' "$STEP" >&2; exit 1; }
trap fail ERR
step() { STEP="$1"; log "step: $1"; }
pin()  { grep -E "^$1(==|<|>)" requirements/stack.txt | head -n1; }

STAMP_SRC="$(cat requirements/*.txt setup.py tools/install_env.sh | sha256sum | cut -c1-16)"
STAMP="$VENV/.mmssf-stack-$STAMP_SRC"
if [[ -f "$STAMP" ]] && "$VENV/bin/python" -c "import mmcv.ops, mmdet, mmseg, mmpretrain, timm, mmssf" 2>/dev/null; then
  log "environment up to date ($VENV), skipping install"
  exit 0
fi

step "create venv $VENV"
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install "${PIP_FLAGS[@]}" -q --upgrade pip "$(pin setuptools)" wheel ninja

step "torch + torchvision ($(pin torch), $(pin torchvision))"
# Pin both explicitly: the machine's local CPU-only torch wheel cannot import torchvision.
"${PIP[@]}" install "${PIP_FLAGS[@]}" "$(pin torch)" "$(pin torchvision)"
TORCH_VER=$("$VENV/bin/python" -c "import torch; print(torch.__version__.split('+')[0])")

step "mmengine ($(pin mmengine))"
"${PIP[@]}" install "${PIP_FLAGS[@]}" "$(pin mmengine)" "$(pin setuptools)"

MMCV_PIN="$(pin mmcv)"; MMCV_VER="${MMCV_PIN#mmcv==}"
step "mmcv $MMCV_VER with compiled ops (torch $TORCH_VER)"
if "$VENV/bin/python" -c "import mmcv, mmcv.ops, sys; sys.exit(mmcv.__version__ != '$MMCV_VER')" 2>/dev/null; then
  log "mmcv $MMCV_VER with ops already installed"
else
  CUDA_TAG=cpu
  if command -v nvcc >/dev/null && "$VENV/bin/python" -c "import torch,sys; sys.exit(not torch.cuda.is_available())"; then CUDA_TAG=cuda; fi
  WHEEL_DIR="$CACHE/wheels/mmcv-$MMCV_VER-torch$TORCH_VER-$CUDA_TAG"
  if ! ls "$WHEEL_DIR"/mmcv-*.whl >/dev/null 2>&1; then
    BUILD="$(mktemp -d)"
    log "no cached wheel in $WHEEL_DIR: building from the sdist (~10 min on 2 cores)"
    "${PIP[@]}" download "${PIP_FLAGS[@]}" --no-deps --no-binary :all: --no-build-isolation "$MMCV_PIN" -d "$BUILD"
    tar -xzf "$BUILD"/mmcv-*.tar.gz -C "$BUILD"
    SRC="$(ls -d "$BUILD"/mmcv-*/)"
    # torch >= 2.14 headers need C++20; mmcv's setup.py hard-codes -std=c++17.
    CXX_STD=$("$VENV/bin/python" - <<'PY'
import torch
major, minor = (int(v) for v in torch.__version__.split('+')[0].split('.')[:2])
print('c++20' if (major, minor) >= (2, 14) else 'c++17')
PY
)
    log "compiling with -std=$CXX_STD"
    sed -i "s/-std=c++17/-std=$CXX_STD/g" "$SRC/setup.py"
    mkdir -p "$WHEEL_DIR"
    # pip -v indents the build output: keep ninja's [k/N] lines (shortened to the source file
    # compiled), errors and the result, so the 10-minute build shows its progress
    ( cd "$SRC" && MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-2}" "${PIP[@]}" wheel "${PIP_FLAGS[@]}" -v \
        --no-build-isolation --no-deps . -w "$WHEEL_DIR" 2>&1 \
        | grep -E --line-buffered '^\s*\[[0-9]+/[0-9]+\]|error:|Error|Successfully|Building wheel' \
        | sed -u -E 's#^\s*(\[[0-9]+/[0-9]+\]) .* -c (\S*/)?(\S+) -o .*#\1 compiling \3#' || true )
    ls "$WHEEL_DIR"/mmcv-*.whl >/dev/null
    rm -rf "$BUILD"
  else
    log "using cached wheel $(ls "$WHEEL_DIR"/mmcv-*.whl)"
  fi
  "${PIP[@]}" install "${PIP_FLAGS[@]}" --no-deps --force-reinstall "$WHEEL_DIR"/mmcv-*.whl
  "${PIP[@]}" install "${PIP_FLAGS[@]}" addict numpy packaging Pillow pyyaml yapf opencv-python
  "$VENV/bin/python" -c "import mmcv.ops; from mmcv.ops import nms, RoIAlign"
fi

step "mmdet, mmsegmentation, mmpretrain, timm and runtime packages"
"${PIP[@]}" install "${PIP_FLAGS[@]}" "$(pin mmdet)" "$(pin mmsegmentation)" "$(pin mmpretrain)" \
  "$(pin timm)" "$(pin setuptools)" "$(pin torch)" "$(pin torchvision)" "$MMCV_PIN" \
  -r requirements/runtime.txt -r requirements/tests.txt

step "mmssf (editable)"
"${PIP[@]}" install "${PIP_FLAGS[@]}" --no-deps -e .

step "check"
if "$VENV/bin/python" -c "import transformers" 2>/dev/null; then
  echo "transformers is installed in $VENV: mmpretrain then imports multimodal models that break; uninstall it" >&2
  false
fi
"$VENV/bin/python" -c "import mmcv.ops, mmdet, mmseg, mmpretrain, timm, mmssf; print('stack ok: torch', __import__('torch').__version__, 'mmcv', mmcv.__version__)"
rm -f "$VENV"/.mmssf-stack-*
touch "$STAMP"
log "install done in $(( $(date +%s) - START ))s"
