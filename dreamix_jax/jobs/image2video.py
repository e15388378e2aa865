"""The image-to-video job (paper §5): one image → a static or camera-moved video
(`dreamix.image2video`) → finetune with α = 0 → edit as the edit job does.

  python -m dreamix_jax.main --config=configs/image2video.py --workdir=/tmp/dreamix
"""

from __future__ import annotations

from dreamix_jax.data import video as video_io
from dreamix_jax.dreamix import image2video
from dreamix_jax.jobs import edit


def run(config, workdir: str) -> list[str]:
  timer = edit.validate(config)
  cascade, params, embedder, top = edit.load(config, timer)
  with timer("read_input"):
    image = video_io.read_image(config.input, top.height, top.width)
    video = image2video.image_to_video(image, config.transform, top.frames, seed=config.seed)
  return edit.finetune_and_edit(config, workdir, "image2video", cascade, params, embedder, timer,
                                video[None], top.name, source=config.input,
                                extra_meta={"transform": config.transform})
