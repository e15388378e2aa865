"""Subject-driven generation (paper §5): finetune on a folder of images of one subject (α = 0), then
text-to-video from noise with prompts containing the subject token t* ("sks").

  python -m dreamix_jax.main --config=configs/subject.py:images=<folder>,prompt="a sks moving left on a black background"
  python -m dreamix_jax.main --config=configs/subject.py:runlocal --workdir=/tmp/subject  # tiny, random
"""

from configs import common
from dreamix_jax import config_utils as cu
from dreamix_jax.dreamix import finetune


def get_config(arg=None):
  arg = cu.parse_arg(arg, runlocal=False, cascade="", images="", prompt="")
  config = common.base_config("subject", arg.runlocal, arg.cascade)
  config.input = arg.images or str(common.REPO / "assets" / "shapes_subject")
  config.prompts = (arg.prompt,) if arg.prompt else (
      "a sks moving left on a black background",)
  config.finetune = finetune.finetune_config(
      alpha=0.0, steps=4 if arg.runlocal else 150, batch_size=1 if arg.runlocal else 4,
      stages=("base", "tsr", "ssr"), log_every=2 if arg.runlocal else 10)
  config.finetune.optimizer.lr = 1e-4
  common.diffusers_finetune(config, arg.runlocal)
  return config
