"""The subject-driven generation job (paper §5): finetune with α = 0 on a folder of images of one
subject, then text-to-video from noise with prompts containing t* (`dreamix.subject`).

  python -m dreamix_jax.main --config=configs/subject.py --workdir=/tmp/dreamix
"""

from __future__ import annotations

from absl import logging

from dreamix_jax.data import video as video_io
from dreamix_jax.dreamix import subject
from dreamix_jax.jobs import common, edit, text2video


def run(config, workdir: str) -> list[str]:
  timer = edit.validate(config)
  if not subject.mentions_subject(config.prompts, config.finetune.prompt):
    logging.warning("No prompt contains the subject token %r; the finetuned subject will not be "
                    "asked for.", config.finetune.prompt)
  cascade, params, embedder, top = edit.load(config, timer)
  with timer("read_input"):
    images = video_io.read_image_collection(config.input, top.height, top.width)
    frames = subject.pack_images(images, top.frames)
  embedder(list(config.prompts))  # unusable prompts fail (long ones warn) before any output exists
  with common.output_run(workdir, "subject", config) as out_root:
    params = edit.maybe_finetune(config, out_root, cascade, params, embedder, timer, frames[None])
    return text2video.sample_prompts(
        cascade, params, embedder, list(config.prompts), list(config.seeds), out_root, timer,
        extra_meta={"subject_images": len(images), "input": config.input,
                    "finetune": config.finetune.to_dict()})
