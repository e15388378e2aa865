"""Text-to-video with the cascade (the paper's "Unconditional" baseline).

  python -m dreamix_jax.main --config=configs/text2video.py --workdir=/tmp/t2v
  python -m dreamix_jax.main --config=configs/text2video.py:runlocal --workdir=/tmp/t2v  # tiny, random

Arguments: runlocal, prompt=<text> (replaces the default prompts).
"""

from configs import common
from dreamix_jax import config_utils as cu


def get_config(arg=None):
  arg = cu.parse_arg(arg, runlocal=False, cascade="", prompt="")
  config = common.base_config("text2video", arg.runlocal, arg.cascade)
  config.prompts = ((arg.prompt,) if arg.prompt else
                    ("a red circle moving right on a black background",
                     "a yellow square moving up on a purple background"))
  return config
