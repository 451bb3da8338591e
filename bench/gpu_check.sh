#!/usr/bin/env bash
# Every GPU check and benchmark of the model path in one run, one JSON file per part under $OUT, sized to
# finish in under 8 minutes on one H100/H200 (the device tool's machine):
#   bf16_agreement.json  bf16 (and fp16) labels against float32 on the parity images (bench/bf16_agreement.py)
#   model_b16.json       SAN-B/16 640x640: fp32 and bf16, batch 1 to 128, same and mixed vocabularies, and
#                        the bare per-image fp32 loop (the official code's way) in the same run
#   model_1080p.json     1080p frames compacted by the decoder, class areas at 1080p, bf16
#   model_mixed.json     four frame sizes in one batch, one forward per size vs shared canvases
#   model_l14.json       SAN-L/14 640x640 bf16
#   model_compile.json   SAN-B/16 640x640 bf16 batch 64: eager against torch.compile modes (last: compiling
#                        takes minutes, and everything before it is already written)
#   before.json          B/16 rows at 640x640 and 1080p on the code before the frames/s work (.before/)
#   log.txt              what every step printed, nvidia-smi first
#
#   OUT=/tmp/gpu bench/gpu_check.sh            # on the GPU machine
#   OUT=/tmp/cpu bench/gpu_check.sh --tiny     # smoke run on a CPU in a minute or two: tiny model, small frames
#
# The GPU machine has torch but not open_clip: carry its wheels in .whl/ (the device tool's README) and they
# are installed to /tmp/site first. The code before the change is a copy of its `pipeline/` in .before/
# (`git archive $BEFORE_REV pipeline | tar -x -C .before`, made here when git is at hand; carry it to the GPU
# machine). Exit status: 1 when a check failed or a benchmark row reported an error.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench-out}"
BEFORE_REV="${BEFORE_REV:-4bac228}"  # the last commit before compact frames and shared canvases
TINY=0
[ "${1:-}" = "--tiny" ] && TINY=1
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
mkdir -p "$OUT"
LOG="$OUT/log.txt"
: >"$LOG"
export PYTHONUNBUFFERED=1

if ! "$PY" -c "import open_clip" 2>/dev/null; then
    if [ -d .whl ]; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl >>"$LOG" 2>&1 && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "open_clip is missing and there is no .whl/ to install it from" | tee -a "$LOG"
        exit 1
    fi
fi
if [ ! -d .before/pipeline ] && git rev-parse --verify -q "$BEFORE_REV^{commit}" >/dev/null 2>&1; then
    mkdir -p .before && git archive "$BEFORE_REV" pipeline | tar -x -C .before
fi
{ nvidia-smi 2>&1 || echo "no nvidia-smi"; "$PY" -c "import torch; print('torch', torch.__version__)"; } >>"$LOG"

status=0
step() {  # step NAME ARGS...: one benchmark or check, its JSON in $OUT/NAME.json, its output in the log
    local name="$1"
    shift
    local started=$SECONDS
    echo "== $name: $*" | tee -a "$LOG"
    if ! "$PY" "$@" --out "$OUT/$name.json" >/dev/null 2>>"$LOG"; then
        status=1
        echo "!! $name failed" | tee -a "$LOG"
    fi
    echo "   $name took $((SECONDS - started)) s" | tee -a "$LOG"
}
before() {  # before NAME ARGS...: a bench/model.py step on the code in .before/
    if [ -d .before/pipeline ]; then
        SANSTREAM_CODE=.before step "$@"
    else
        echo "== $1: skipped, no .before/ (the code before the change)" | tee -a "$LOG"
    fi
}

if [ "$TINY" = 1 ]; then
    tiny=(--models san_tiny_test --device cpu --iters 1 --warmup 1)
    step bf16_agreement bench/bf16_agreement.py --device cpu --cases open_512x512_upscale --dtypes bf16
    step model_b16 bench/model.py "${tiny[@]}" --dtypes fp32,bf16 --batch-sizes 1,4 --size 96x128 \
        --vocab-mode same,mixed --bare-frames 2
    step model_1080p bench/model.py "${tiny[@]}" --dtypes fp32 --batch-sizes 2 --size 1080x1920 --compact \
        --bare-frames 1
    step model_mixed bench/model.py "${tiny[@]}" --dtypes fp32 --batch-sizes 4 --sizes mixed \
        --mixed-sizes 96x128,64x64,72x160,160x96 --max-padding 0,1 --bare-frames 0
    step model_l14 bench/model.py "${tiny[@]}" --dtypes fp32 --batch-sizes 2 --size 96x128 --bare-frames 0
    before before bench/model.py "${tiny[@]}" --dtypes fp32 --batch-sizes 4 --size 96x128,1080x1920 \
        --bare-frames 0
    step model_compile bench/model.py "${tiny[@]}" --dtypes fp32 --batch-sizes 3 --size 96x128 \
        --compile none,trace --bare-frames 0
else
    gpu=(--device cuda --warmup 2)
    step bf16_agreement bench/bf16_agreement.py --device cuda --dtypes bf16,fp16
    step model_b16 bench/model.py "${gpu[@]}" --models san_vit_b_16 --dtypes fp32,bf16 \
        --batch-sizes 1,32,64,128 --size 640x640 --vocab-mode same,mixed --iters 8 --bare-frames 40
    step model_1080p bench/model.py "${gpu[@]}" --models san_vit_b_16 --dtypes bf16 --batch-sizes 1,32,64 \
        --size 1080x1920 --compact --iters 6 --bare-frames 20
    step model_mixed bench/model.py "${gpu[@]}" --models san_vit_b_16 --dtypes bf16 --batch-sizes 64 \
        --sizes mixed --mixed-sizes 1080x1920,480x640,640x640,720x1280 --max-padding 0,0.5,1 --iters 6 \
        --bare-frames 0
    step model_l14 bench/model.py "${gpu[@]}" --models san_vit_large_14 --dtypes bf16 --batch-sizes 1,32,64 \
        --size 640x640 --iters 6 --bare-frames 20
    before before bench/model.py "${gpu[@]}" --models san_vit_b_16 --dtypes bf16 --batch-sizes 1,32 \
        --size 640x640,1080x1920 --iters 6 --bare-frames 0
    step model_compile bench/model.py "${gpu[@]}" --models san_vit_b_16 --dtypes bf16 --batch-sizes 64 \
        --size 640x640 --compile none,default,reduce-overhead --iters 8 --bare-frames 0
fi
echo "== done in $SECONDS s, status $status" | tee -a "$LOG"
exit "$status"
