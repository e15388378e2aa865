"""Image-to-video (paper §5, App. D): one image → a static or camera-moved video → finetune on its
frames (α = 0) → edit with text.

  python -m dreamix_jax.main --config=configs/image2video.py:image=photo.png,transform=zoom_in,prompt="..."
  python -m dreamix_jax.main --config=configs/image2video.py:runlocal --workdir=/tmp/i2v  # tiny, random

transform ∈ none (replicated frames), translate (pan), random_translate (shake), perspective (pan),
zoom_in, zoom_out.
"""

from configs import common
from dreamix_jax import config_utils as cu
from dreamix_jax.dreamix import finetune


def get_config(arg=None):
  arg = cu.parse_arg(arg, runlocal=False, cascade="", image="", prompt="", transform="translate")
  config = common.base_config("image2video", arg.runlocal, arg.cascade)
  config.input = arg.image or str(common.REPO / "assets" / "shapes_frame.png")
  config.transform = arg.transform
  config.prompts = (arg.prompt,) if arg.prompt else (
      "a red circle moving right on a black background",)
  config.noise_levels = (0.9,)
  config.finetune = finetune.finetune_config(
      alpha=0.0, steps=4 if arg.runlocal else 150, batch_size=1 if arg.runlocal else 4,
      stages=("base", "tsr", "ssr"), log_every=2 if arg.runlocal else 10)
  config.finetune.optimizer.lr = 1e-4
  common.diffusers_finetune(config, arg.runlocal)
  return config
