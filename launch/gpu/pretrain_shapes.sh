#!/usr/bin/env bash
# Pretrain one stage of the moving-shapes cascade on a GPU machine for a fixed wall-clock budget,
# continuing from the shipped EMA weights (checkpoints/shapes), then score the base stage.
#
#   bash launch/gpu/pretrain_shapes.sh [MINUTES=7] [STAGE=base] [BATCH=64] [CLIPS=32] [CAPTIONS=100]
#
# Run from the repository root. Needs JAX (with CUDA), flax, optax, orbax, transformers, safetensors,
# scipy and pillow, plus ml_collections and clu; TensorFlow, TFDS and ffmpeg are not needed (the
# pretrain job then writes its scalars to the log and its sample strips as PNG files). Wheels found
# in .whl/ are installed first (to /tmp/site), for a machine that cannot reach a package index;
# for a Python 3.12 image that has the rest, fetch them where pip works with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl ml_collections==1.1.0 clu==0.0.12
#
# Extra flags: CASCADE_FLAGS go to every command (an architecture change, e.g.
# CASCADE_FLAGS="--config.cascade.stages.base.backbone.frame_embedding=False"), PRETRAIN_FLAGS to the
# pretrain job alone (e.g. PRETRAIN_FLAGS="--config.init_from=" to train from scratch, or
# PRETRAIN_FLAGS="--config.init_from_new_modules=('frame_emb',)" to add that module to weights
# that predate it).
# The flags that continue the direction-of-motion base (shapes_abS) are in checkpoints/motion_ab/README.md.
#
# At the end of the budget the job gets SIGTERM, saves its state and exits 75. Outputs, in $OUT
# (default /tmp/shapes_out; seven files): <stage>.safetensors + cascade.json (the EMA parameters:
# copy them into checkpoints/shapes/), pretrain_<stage>.log, and for the base stage the caption-mean
# drift table with 8 samples per motion from the mean start (drift.md), the caption-classifier
# table on CLIPS test clips (classifier.md) and the text-to-video table and grid of the base stage
# alone on CAPTIONS test captions (text2video.md, text2video_grid.png).
set -euo pipefail
minutes=${1:-7}
stage=${2:-base}
batch=${3:-64}
clips=${4:-32}
captions=${5:-100}
out=${OUT:-/tmp/shapes_out}
workdir=/tmp/shapes_gpu
read -r -a cascade_flags <<< "${CASCADE_FLAGS:-}"
read -r -a pretrain_flags <<< "${PRETRAIN_FLAGS:-}"
rm -rf "$workdir/drift" "$workdir/classifier" "$workdir/text2video"
mkdir -p "$out"

if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python3 -c "import jax; print('devices:', jax.devices())"

rc=0
timeout --preserve-status -s TERM "$((minutes * 60))" python3 -m dreamix_jax.main \
  --config="configs/pretrain.py:stage=$stage,batch=$batch" --workdir="$workdir" \
  --config.init_from=checkpoints/shapes --config.checkpoint_every=1000 \
  --config.checkpoint_every_minutes=2 --config.log_every=100 --config.sample_every=0 \
  "${cascade_flags[@]}" "${pretrain_flags[@]}" > "$out/pretrain_$stage.log" 2>&1 || rc=$?
if [[ $rc -ne 0 && $rc -ne 75 ]]; then
  tail -40 "$out/pretrain_$stage.log"
  exit "$rc"
fi
# (no such line in a run shorter than one log interval)
grep "steps/s" "$out/pretrain_$stage.log" | tail -3 || true
cp "$workdir/cascade/$stage.safetensors" "$workdir/cascade/cascade.json" "$out/"

if [[ $stage == base ]]; then
  python3 -m dreamix_jax.main --config=configs/eval.py:benchmark=drift \
    --workdir="$workdir/drift" --config.checkpoint="$workdir/cascade" "${cascade_flags[@]}" \
    --config.drift.num_samples=8 > "$workdir/drift.log" 2>&1 \
    || { tail -40 "$workdir/drift.log"; exit 1; }
  python3 -m dreamix_jax.main --config=configs/eval.py:benchmark=classifier \
    --workdir="$workdir/classifier" --config.checkpoint="$workdir/cascade" "${cascade_flags[@]}" \
    --config.classifier.num_clips="$clips" > "$workdir/classifier.log" 2>&1 \
    || { tail -40 "$workdir/classifier.log"; exit 1; }
  python3 -m dreamix_jax.main --config=configs/eval.py:benchmark=text2video,upto=base \
    --workdir="$workdir/text2video" --config.checkpoint="$workdir/cascade" "${cascade_flags[@]}" \
    --config.text2video.num_captions="$captions" \
    --config.text2video.batch_size="$((captions < 25 ? captions : 25))" \
    > "$workdir/text2video.log" 2>&1 || { tail -40 "$workdir/text2video.log"; exit 1; }
  cp "$workdir/drift/drift.md" "$workdir/classifier/classifier.md" \
    "$workdir/text2video/text2video.md" "$workdir/text2video/text2video_grid.png" "$out/"
  cat "$out/drift.md" "$out/classifier.md" "$out/text2video.md"
fi
