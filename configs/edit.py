"""Dreamix video editing: mixed finetuning on the input video, then edit it with text.

  python -m dreamix_jax.main --config=configs/edit.py --workdir=/tmp/dreamix
  python -m dreamix_jax.main --config=configs/edit.py:video=my.mp4,prompt="a blue square moving up on a gray background"
  python -m dreamix_jax.main --config=configs/edit.py:runlocal --workdir=/tmp/edit   # tiny, random

Defaults: the shipped moving-shapes clip (a red circle moving right) and demo cascade; the edit
prompt stops the circle ("... standing still ..."): a change of motion the demo cascade has learnt
(moving vs still), unlike the direction of motion, which it has not yet (docs/status.md:
`:prompt="a red circle moving left on a black background"` keeps the input's motion);
the paper's α = 0.35; noise level s = 0.9 (at 0.8 the input's motion survives);
150 mixed finetuning steps of the base stage alone, batch 1 (the paper also finetunes its first two
SSR stages; on the toy cascade that would triple the ~5-minute CPU budget of the demo — add them with
--config.finetune.stages='("base","tsr","ssr")').
Useful overrides: --config.finetune.steps, --config.finetune.alpha, --config.noise_levels='(0.7,0.9)',
--config.finetune.enabled=False, --config.seeds='(0,1,2)'.
"""

from configs import common
from dreamix_jax import config_utils as cu
from dreamix_jax.dreamix import finetune


def get_config(arg=None):
  arg = cu.parse_arg(arg, runlocal=False, cascade="", video="", prompt="")
  config = common.base_config("edit", arg.runlocal, arg.cascade)
  config.input = arg.video or common.SHAPES_CLIP
  config.prompts = (arg.prompt,) if arg.prompt else (
      "a red circle standing still on a black background",)
  config.noise_levels = (0.9,)
  config.finetune = finetune.finetune_config(
      alpha=0.35, steps=4 if arg.runlocal else 150, batch_size=1,
      stages=("base", "tsr", "ssr") if arg.runlocal else ("base",),
      log_every=2 if arg.runlocal else 10,
      checkpoint_every=100)
  config.finetune.optimizer.lr = 1e-4  # the toy cascade is tiny: a larger step than the paper
  if config.cascade.get("source", "project") == "diffusers":  # App. C.5: α = 0.5, s = 0.85
    config.finetune.alpha = 0.5
    config.noise_levels = (0.85,)
  common.diffusers_finetune(config, arg.runlocal)
  return config
