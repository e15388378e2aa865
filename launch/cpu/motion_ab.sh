#!/usr/bin/env bash
# The direction-of-motion A/B on the motion-only moving-shapes world (a white square on black, only
# the motion varies): one arm, a small base stage (channels 16, ~0.55M parameters) trained from
# scratch, batch 8, same seeds in every arm; resumable (run it again to continue), checkpointing
# every 250 steps. Then score it with launch/cpu/motion_ab_eval.sh.
#
#   bash launch/cpu/motion_ab.sh ARM STEPS [WORKROOT=runs/motion_ab] [INIT_FROM] [FLAG...]
#
# INIT_FROM: a cascade directory to continue from on a machine without the arm's orbax state, e.g.
# the committed checkpoints/motion_ab/ARM (EMA weights and their step; the optimizer restarts).
# FLAG...: more config flags, e.g. --config.init_from_new_modules='("coord_stem","spacetime_conv")'
# to continue another arm's weights with this arm's new modules added zero-initialised.
#
# Arms (docs/motion_direction.md):
#   control  the shipped architecture
#   S        control + a training log-SNR mixture (40% of draws uniform in [-8, -3]), no image sets
#   a        control + coordinate channels (x, y, t) at the stem
#   ab       a + a residual 3x3x3 space-time convolution after every block of the two top levels (0 and 1)
#   abS      ab + S
set -euo pipefail
usage="usage: motion_ab.sh ARM STEPS [WORKROOT] [INIT_FROM] [FLAG...]"
arm=${1:?$usage}
steps=${2:?$usage}
root=${3:-runs/motion_ab}
init_from=${4:-}
shift $(($# < 4 ? $# : 4))
b=--config.cascade.stages.base.backbone
flags=("$b.channels=16" "$b.head_dim=16")
signal=(--config.logsnr_mixture.share=0.4 --config.data.image_fraction=0.0)
coords=("$b.coord_channels=True" "$b.coord_time=True")
case "$arm" in
  control) ;;
  S) flags+=("${signal[@]}") ;;
  a) flags+=("${coords[@]}") ;;
  ab) flags+=("${coords[@]}" "$b.spacetime_conv_levels=(0,1)") ;;
  abS) flags+=("${coords[@]}" "$b.spacetime_conv_levels=(0,1)" "${signal[@]}") ;;
  *) echo "error: unknown arm '$arm'; use control, S, a, ab or abS." >&2; exit 2 ;;
esac
# XLA:CPU without its YNNPACK fusions: 7% (control) to 15% (ab) faster train steps on the 2-core
# CPU (benchmarks/README.md, "Where the shapes base step goes").
export XLA_FLAGS="${XLA_FLAGS:-} --xla_cpu_experimental_ynn_fusion_type="
exec python -m dreamix_jax.main --config=configs/pretrain.py:stage=base,batch=8,world=motion \
  --workdir="$root/$arm" --config.init_from="$init_from" --config.steps="$steps" \
  --config.checkpoint_every=250 --config.log_every=25 --config.sample_every=0 "${flags[@]}" "$@"
