#!/usr/bin/env bash
# Scores one arm of the direction-of-motion A/B (launch/cpu/motion_ab.sh) at its latest EMA
# weights: the caption classifier on 64 motion-only test clips (motion row: is the true motion's
# denoising error the lowest?), the caption-mean drift from pure noise (does the prediction already
# move the caption's way?) and 32 text-to-video samples of the base stage read by the probe.
#
#   bash launch/cpu/motion_ab_eval.sh ARM [WORKROOT=runs/motion_ab]
set -euo pipefail
arm=${1:?usage: motion_ab_eval.sh ARM [WORKROOT]}
root=${2:-runs/motion_ab}
b=--config.cascade.stages.base.backbone
flags=("$b.channels=16" "$b.head_dim=16")
case "$arm" in
  control|S) ;;
  a) flags+=("$b.coord_channels=True" "$b.coord_time=True") ;;
  ab|abS) flags+=("$b.coord_channels=True" "$b.coord_time=True" "$b.spacetime_conv_levels=(0,1)") ;;
  *) echo "error: unknown arm '$arm'; use control, S, a, ab or abS." >&2; exit 2 ;;
esac
out="$root/$arm/eval"
common=(--config.checkpoint="$root/$arm/cascade" --config.overwrite=True "${flags[@]}")
python -m dreamix_jax.main --config=configs/eval.py:benchmark=classifier,world=motion \
  --workdir="$out/classifier" --config.classifier.num_clips=64 "${common[@]}"
python -m dreamix_jax.main --config=configs/eval.py:benchmark=drift,world=motion \
  --workdir="$out/drift" "${common[@]}"
python -m dreamix_jax.main --config=configs/eval.py:benchmark=text2video,upto=base,world=motion \
  --workdir="$out/text2video" --config.text2video.num_captions=32 "${common[@]}"
cat "$out/classifier/classifier.md" "$out/drift/drift.md" "$out/text2video/text2video.md"
