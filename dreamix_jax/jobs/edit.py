"""The edit job: read a video, (mixed) finetune the cascade on it with t*, then edit it for each
prompt × seed × noise level s (`dreamix.edit`).

  python -m dreamix_jax.main --config=configs/edit.py --workdir=/tmp/dreamix

Outputs: `<workdir>/edit/<name>/<k>_<prompt>_seed<n>_s<s>/` with input.mp4, output.mp4,
output.gif, comparison.png and meta.json. Every input and setting is checked before anything is
created, so a bad one leaves nothing behind. While it runs, `<workdir>/edit/<name>.lock` keeps a
second run out of the folder. Re-running a job that was preempted (or crashed) resumes it
(`common.open_output_dir`) if its settings and the content of its input and weights are unchanged:
its finetune continues from `finetune/<stage>/`.
The image-to-video job (`jobs.image2video`) reuses `finetune_and_edit` on a video made from an
image.
"""

from __future__ import annotations

import os

import jax.numpy as jnp
from absl import logging

from dreamix_jax import cascade as cascade_lib
from dreamix_jax.data import video as video_io
from dreamix_jax.dreamix import corrupt, edit, finetune
from dreamix_jax.jobs import common


def run(config, workdir: str) -> list[str]:
  timer = validate(config)
  video_io.probe_video(config.input)  # a missing or unreadable input fails before the slow load
  cascade, params, embedder, top = load(config, timer)
  with timer("read_input"):
    video = video_io.read_video(config.input, top.frames, top.height, top.width, fps=top.fps)
  return finetune_and_edit(config, workdir, "edit", cascade, params, embedder, timer, video[None],
                           top.name, source=config.input)


def validate(config):
  """Checks the settings (name, noise levels, prompts, seeds, finetune ranges and stages, the
  cascade's resolutions) before anything is loaded or written; returns a Timer."""
  common.check_config(config)
  if config.cascade.get("source", "project") == "project":  # (a diffusers cascade is read whole)
    cascade_lib.Cascade.from_config(config.cascade)  # resolutions the backbones take; no weights
  for s in config.noise_levels if "noise_levels" in config else ():
    corrupt.check_noise_level(s)
  finetune.check_config(config.finetune)
  finetune.top_finetune_stage(list(config.cascade.order), config.finetune)  # known stages
  return common.Timer()


def load(config, timer):
  """(cascade, params, prompt embedder, the highest finetuned stage), timed as phase `load`;
  nothing is written yet, so a bad cascade or checkpoint leaves nothing behind."""
  with timer("load"):
    cascade, params = common.load_cascade(config)
    embedder = common.make_embedder(config, cascade)
  return cascade, params, embedder, cascade.stage(
      finetune.top_finetune_stage(cascade.names, config.finetune))


def maybe_finetune(config, out_root, cascade, params, embedder, timer, video):
  """The cascade's params after `config.finetune` on `video` (1, T, H, W, 3) (unchanged when
  finetuning is off)."""
  if not config.finetune.enabled:
    return params
  text, mask = embedder([config.finetune.prompt])
  params, _ = finetune.finetune_cascade(cascade, params, jnp.asarray(video), jnp.asarray(text),
                                        jnp.asarray(mask), config.finetune, out_root,
                                        config.cascade, timer=timer)
  return params


def finetune_and_edit(config, workdir, job, cascade, params, embedder, timer, video, top_name, *,
                      source, extra_meta=None) -> list[str]:
  """Finetunes on `video` (1, T, H, W, 3) at stage `top_name`'s resolution and writes one edit per
  prompt × seed × s; returns the result folders."""
  text, mask = embedder(list(config.prompts))  # before any output: long prompts warn, bad ones fail
  with common.output_run(workdir, job, config) as out_root:
    params = maybe_finetune(config, out_root, cascade, params, embedder, timer, video)
    base_pixels = edit.base_view(cascade, video, top_name)
    last = cascade.stages[-1]
    input_at_output = edit.input_at_output_resolution(cascade, video, top_name)
    folders = []
    for i, prompt in enumerate(config.prompts):
      for seed in config.seeds:
        for s in config.noise_levels:
          final = edit.edit_video(cascade, params, base_pixels, text[i:i + 1], mask[i:i + 1], s,
                                  seed, timer=timer)
          folder = os.path.join(out_root, f"{i:03d}_{common.slug(prompt)}_seed{seed}_s{s:g}")
          meta = dict(extra_meta or {}, job=job, input=source, prompt=prompt, seed=seed, s=s,
                      checkpoint=config.checkpoint, finetune=config.finetune.to_dict(),
                      output_shape=list(final.shape), fps=last.fps, timings=dict(timer.phases),
                      peak_device_bytes=common.peak_device_bytes())
          common.write_result(folder, final, last.fps, meta, input_video=input_at_output)
          folders.append(folder)
          logging.info("edit written to %s", folder)
  return folders
