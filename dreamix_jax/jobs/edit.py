"""The Dreamix jobs: video editing, image-to-video and subject-driven generation (paper §4–§5).

edit:        read a video → (mixed) finetune on it with t* → for each prompt × seed × s: downsample to
             the base resolution, noise to level s, denoise with the base from s, upscale through the
             cascade.
image2video: one image → a static or camera-moved 16-frame video → finetune with α = 0 → edit as above.
subject:     a folder of images → finetune with α = 0 → text-to-video from noise with prompts
             containing t*.
Outputs: `<workdir>/<job>/<name>/<k>_<prompt>_seed<n>_s<s>/` with input.mp4, output.mp4, output.gif,
comparison.png and meta.json.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from dreamix_jax.data import video as video_io
from dreamix_jax.dreamix import corrupt, finetune, image2video
from dreamix_jax.jobs import common, sample


def run_edit(config, workdir: str) -> list[str]:
  cascade, params, embedder, timer = _setup(config)
  top = cascade.stage(finetune.top_finetune_stage(cascade, config.finetune))
  with timer("read_input"):
    video = video_io.read_video(config.input, top.frames, top.height, top.width, fps=top.fps)
  return _finetune_and_edit(config, workdir, "edit", cascade, params, embedder, timer,
                            video[None], top.name, source=config.input)


def run_image2video(config, workdir: str) -> list[str]:
  cascade, params, embedder, timer = _setup(config)
  top = cascade.stage(finetune.top_finetune_stage(cascade, config.finetune))
  with timer("read_input"):
    image = video_io.read_image(config.input, top.height, top.width)
    video = image2video.image_to_video(image, config.transform, top.frames, seed=config.seed)
  return _finetune_and_edit(config, workdir, "image2video", cascade, params, embedder, timer,
                            video[None], top.name, source=config.input,
                            extra_meta={"transform": config.transform})


def run_subject(config, workdir: str) -> list[str]:
  cascade, params, embedder, timer = _setup(config)
  if not any(config.finetune.prompt in p for p in config.prompts):
    logging.warning("No prompt contains the subject token %r; the finetuned subject will not be "
                    "asked for.", config.finetune.prompt)
  top = cascade.stage(finetune.top_finetune_stage(cascade, config.finetune))
  with timer("read_input"):
    images = video_io.read_image_collection(config.input, top.height, top.width)
    frames = images[np.arange(top.frames) % len(images)]  # the set of images, packed as frames
  out_root = common.output_dir(workdir, "subject", config.name, config.overwrite)
  params = _maybe_finetune(config, out_root, cascade, params, embedder, timer, frames[None],
                           top.name)
  return sample.sample_prompts(cascade, params, embedder, list(config.prompts),
                               list(config.seeds), out_root, timer,
                               extra_meta={"subject_images": len(images), "input": config.input,
                                           "finetune": config.finetune.to_dict()})


def _setup(config):
  for s in config.noise_levels if "noise_levels" in config else ():
    corrupt.check_noise_level(s)
  timer = common.Timer()
  with timer("load"):
    cascade, params = common.load_cascade(config)
    embedder = common.make_embedder(config, cascade)
  return cascade, params, embedder, timer


def _maybe_finetune(config, out_root, cascade, params, embedder, timer, video, top_name):
  if not config.finetune.enabled:
    return params
  text, mask = embedder([config.finetune.prompt])
  with timer("finetune"):
    params, _ = finetune.finetune_cascade(cascade, params, jnp.asarray(video), jnp.asarray(text),
                                          jnp.asarray(mask), config.finetune, out_root,
                                          config.cascade)
  return params


def _finetune_and_edit(config, workdir, job, cascade, params, embedder, timer, video, top_name,
                       *, source, extra_meta=None):
  """video: (1, T, H, W, 3) at stage `top_name`'s resolution."""
  out_root = common.output_dir(workdir, job, config.name, config.overwrite)
  params = _maybe_finetune(config, out_root, cascade, params, embedder, timer, video, top_name)
  base_view = corrupt.to_stage(cascade, jnp.asarray(video), top_name, cascade.names[0])
  last = cascade.stages[-1]
  input_at_output = input_at_output_resolution(cascade, video, top_name)
  text, mask = embedder(list(config.prompts))
  folders = []
  for i, prompt in enumerate(config.prompts):
    for seed in config.seeds:
      for s in config.noise_levels:
        with timer("sample"):
          final = edit_video(cascade, params, base_view, text[i:i + 1], mask[i:i + 1], s, seed)
        folder = os.path.join(out_root, f"{i:03d}_{common.slug(prompt)}_seed{seed}_s{s:g}")
        meta = dict(extra_meta or {}, job=job, input=source, prompt=prompt, seed=seed, s=s,
                    checkpoint=config.checkpoint, finetune=config.finetune.to_dict(),
                    output_shape=list(final.shape), fps=last.fps, timings=dict(timer.phases))
        common.write_result(folder, final, last.fps, meta, input_video=input_at_output)
        folders.append(folder)
        logging.info("edit written to %s", folder)
  return folders


def edit_video(cascade, params, base_view, text, text_mask, s: float, seed: int) -> np.ndarray:
  """One Dreamix edit of an in-memory video: noise the base view to level `s`, denoise with the
  base stage from `s` under the prompt, upscale through the cascade.

  base_view: (1, T, H, W, 3) in [-1, 1] at the base stage's resolution; text, text_mask: (1, L, D),
  (1, L) of the edit prompt. Returns the last stage's output (T', H', W', 3) as numpy.
  """
  key_noise, key_sample = jax.random.split(jax.random.PRNGKey(seed))
  z_s = corrupt.corrupt(jnp.asarray(base_view), s, key_noise, cascade.schedule)
  outs = cascade.sample(params, jnp.asarray(text), jnp.asarray(text_mask), key_sample,
                        base_start=z_s, t_start=s)
  return np.asarray(jax.device_get(outs[cascade.names[-1]][0]))


def input_at_output_resolution(cascade, video, top_name):
  """The input shown beside the output, brought to the last stage's size by frame/pixel repetition
  (it is only for viewing: input.mp4 and comparison.png)."""
  last = cascade.stages[-1]
  if top_name == last.name:
    return np.asarray(video[0])
  t, h, w = video.shape[1:4]
  return np.asarray(video[0]).repeat(last.frames // t, 0).repeat(last.height // h, 1).repeat(
      last.width // w, 2)
