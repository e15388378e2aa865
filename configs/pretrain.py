"""Pretrain one stage of the moving-shapes cascade (or any cascade) from scratch.

  python -m dreamix_jax.main --config=configs/pretrain.py:stage=base --workdir=runs/shapes
  python -m dreamix_jax.main --config=configs/pretrain.py:stage=tsr --workdir=runs/shapes
  python -m dreamix_jax.main --config=configs/pretrain.py:stage=ssr --workdir=runs/shapes
  python -m dreamix_jax.main --config=configs/pretrain.py:stage=base,runlocal --workdir=/tmp/pt

Each stage trains independently (SR stages on ground-truth low-resolution views), so the three can run
one after the other or on different machines; all write into `<workdir>/cascade/`. Re-running the
same command resumes from the latest checkpoint.
"""

from configs import common
from dreamix_jax import config_utils as cu
from dreamix_jax.train import state as state_lib


def get_config(arg=None):
  arg = cu.parse_arg(arg, runlocal=False, cascade="", stage="base", steps=0, batch=0, world="")
  config = common.base_config("pretrain", arg.runlocal, arg.cascade)
  config.stage = arg.stage
  config.steps = arg.steps or (6 if arg.runlocal else 20_000)
  config.batch_size = arg.batch or (2 if arg.runlocal else 8)
  # Constant after warm-up; optionally a linear/cosine cool-down
  # (`train.state.learning_rate_schedule`). Its steps count the optimizer's updates, not `step`:
  # equal for a run from scratch, but a run continued with `init_from` restarts the optimizer at 0
  # (a cool-down over the last 700 of 2 000 updates after init_from: decay_start=1300,
  # decay_steps=700). Every log row has `learning_rate`.
  config.optimizer = state_lib.optimizer_config(name="adamw", lr=1e-3, warmup_steps=200,
                                                weight_decay=0.0, grad_clip=1.0)
  config.ema_decay = 0.995
  config.init_from = ""  # a cascade directory to continue from (e.g. checkpoints/shapes)
  # Top-level modules the init_from stage lacks, added to the stage's config since (e.g.
  # '("frame_emb",)' after turning on unet.frame_embedding): they start from their initialisation.
  config.init_from_new_modules = ()
  config.weighting = "v"
  # Added to every training log-SNR (clipped to the schedule's range); < 0 trains on noisier inputs
  # (`diffusion.objectives.sample_logsnr`).
  config.logsnr_shift = 0.0
  config.text_dropout = 0.1
  config.on_nonfinite = "stop"
  # Batches rendered ahead on worker threads, overlapping the step (an accelerator's step is far
  # shorter than rendering a batch of clips on one core).
  config.prefetch = 4
  config.log_every = 2 if arg.runlocal else 50
  config.checkpoint_every = 3 if arg.runlocal else 500
  config.checkpoint_every_minutes = 0.0 if arg.runlocal else 10.0  # also on SIGTERM/SIGINT
  config.sample_every = 3 if arg.runlocal else 2000
  config.sample_prompts = ("a red circle moving right on a black background",
                           "a blue square moving up on a gray background")
  # Training log-SNR mixture: a `share` of the draws uniform in [low, high] instead of the
  # schedule's (0: off; `diffusion.objectives.sample_logsnr`).
  config.logsnr_mixture = dict(share=0.0, low=-8.0, high=-3.0)
  # `vocabulary` restricts the moving-shapes world (empty: every value); `:world=motion` is the
  # motion-only world of the direction-of-motion A/B (docs/motion_direction.md).
  motion_only = dict(color=("white",), shape=("square",), background=("black",), motion=())
  config.data = dict(source="moving_shapes", size=1_000_000, seed=0,
                     image_fraction=0.0 if arg.stage == "tsr" else 0.25, tfds_name="moving_shapes/ssr",
                     tfds_dir="",
                     vocabulary=motion_only if arg.world == "motion" else dict(
                         color=(), shape=(), motion=(), background=()))
  return config
