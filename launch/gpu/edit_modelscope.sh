#!/usr/bin/env bash
# Dreamix on the public ModelScope / Zeroscope text-to-video model on one GPU (or a TPU VM):
# mixed finetuning on a video, then the edit, printing each phase's seconds and the peak device
# memory.
#
#   bash launch/gpu/edit_modelscope.sh PIPELINE_DIR VIDEO "PROMPT" [STEPS=750] [WORKDIR]
#
# PIPELINE_DIR: a local diffusers pipeline folder (model_index.json, unet/, vae/, text_encoder/,
# tokenizer/, scheduler/), e.g. made where the hub is reachable with
#   huggingface-cli download damo-vilab/text-to-video-ms-1.7b --local-dir PIPELINE_DIR
# (or cerspense/zeroscope_v2_576w; then add EDIT_FLAGS="--config.cascade.stages.base.frames=24
# --config.cascade.stages.base.height=320 --config.cascade.stages.base.width=576").
# Defaults are the paper's (App. C.5): α = 0.5, s = 0.85, 750 steps at learning rate 1e-5,
# 16 frames of 192×320, bf16 compute with full remat. EDIT_FLAGS carries extra overrides, e.g.
# EDIT_FLAGS="--config.finetune.alpha=0.35 --config.noise_levels=(0.8,0.9)".
# Run from the repository root with JAX (CUDA or TPU) and the project's requirements installed.
set -euo pipefail
if [[ $# -lt 3 ]]; then
  echo "usage: bash launch/gpu/edit_modelscope.sh PIPELINE_DIR VIDEO \"PROMPT\" [STEPS] [WORKDIR]" >&2
  exit 2
fi
pipeline=$1
video=$2
prompt=$3
steps=${4:-750}
workdir=${5:-/tmp/dreamix_modelscope}
read -r -a edit_flags <<< "${EDIT_FLAGS:-}"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python3 -c "import jax; print('devices:', jax.devices())"

python3 -m dreamix_jax.main --config=configs/edit.py:cascade=modelscope \
  --config.checkpoint="$pipeline" --config.input="$video" --config.prompts="('$prompt',)" \
  --config.finetune.steps="$steps" --workdir="$workdir" "${edit_flags[@]}"

# Phase timings and peak device memory of the newest result (meta.json).
python3 - "$workdir" <<'EOF'
import glob, json, os, sys
metas = sorted(glob.glob(os.path.join(sys.argv[1], "edit", "*", "*", "meta.json")),
               key=os.path.getmtime)
meta = json.load(open(metas[-1]))
print("result:", os.path.dirname(metas[-1]))
for phase, seconds in meta["timings"].items():
  print(f"  {phase:<16} {seconds:8.1f} s")
peak = meta.get("peak_device_bytes")
print("  peak device memory:", "n/a" if peak is None else f"{peak / 2**30:.2f} GiB")
EOF
