"""The Dreamix jobs: video editing, image-to-video and subject-driven generation (paper §4–§5).

edit:        read a video → (mixed) finetune on it with t* → for each prompt × seed × s: downsample to
             the base resolution, noise to level s, denoise with the base from s, upscale through the
             cascade.
image2video: one image → a static or camera-moved 16-frame video → finetune with α = 0 → edit as above.
subject:     a folder of images → finetune with α = 0 → text-to-video from noise with prompts
             containing t*.
Outputs: `<workdir>/<job>/<name>/<k>_<prompt>_seed<n>_s<s>/` with input.mp4, output.mp4, output.gif,
comparison.png and meta.json.

Every input and setting is checked before anything is created, so a bad one leaves nothing behind.
Re-running a job that was preempted (or crashed) resumes it: the output folder holds a marker
(`RUN_MARKER`, the run's settings) until the job has finished, and a folder whose marker matches the
config is reused, its finetune continuing from `finetune/<stage>/` (see `open_output_dir`).
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from dreamix_jax import cascade as cascade_lib
from dreamix_jax.data import outputs, video as video_io
from dreamix_jax.dreamix import corrupt, finetune, image2video
from dreamix_jax.jobs import common, sample


RUN_MARKER = ".unfinished.json"
# Left out of the settings a resumed run must share with the one it continues.
_NOT_SETTINGS = ("overwrite", "distributed")


def run_edit(config, workdir: str) -> list[str]:
  top, timer = _validate(config)
  with timer("read_input"):
    video = video_io.read_video(config.input, top.frames, top.height, top.width, fps=top.fps)
  cascade, params, embedder = _load(config, timer)
  return _finetune_and_edit(config, workdir, "edit", cascade, params, embedder, timer,
                            video[None], top.name, source=config.input)


def run_image2video(config, workdir: str) -> list[str]:
  top, timer = _validate(config)
  with timer("read_input"):
    image = video_io.read_image(config.input, top.height, top.width)
    video = image2video.image_to_video(image, config.transform, top.frames, seed=config.seed)
  cascade, params, embedder = _load(config, timer)
  return _finetune_and_edit(config, workdir, "image2video", cascade, params, embedder, timer,
                            video[None], top.name, source=config.input,
                            extra_meta={"transform": config.transform})


def run_subject(config, workdir: str) -> list[str]:
  top, timer = _validate(config)
  if not any(config.finetune.prompt in p for p in config.prompts):
    logging.warning("No prompt contains the subject token %r; the finetuned subject will not be "
                    "asked for.", config.finetune.prompt)
  with timer("read_input"):
    images = video_io.read_image_collection(config.input, top.height, top.width)
    frames = images[np.arange(top.frames) % len(images)]  # the set of images, packed as frames
  cascade, params, embedder = _load(config, timer)
  embedder(list(config.prompts))  # unusable prompts fail (long ones warn) before any output exists
  out_root = open_output_dir(workdir, "subject", config)
  params = _maybe_finetune(config, out_root, cascade, params, embedder, timer, frames[None],
                           top.name)
  folders = sample.sample_prompts(cascade, params, embedder, list(config.prompts),
                                  list(config.seeds), out_root, timer,
                                  extra_meta={"subject_images": len(images), "input": config.input,
                                              "finetune": config.finetune.to_dict()})
  _mark_finished(out_root)
  return folders


def _validate(config):
  """Checks the settings (noise levels, finetune ranges, the cascade's shapes) before anything is
  loaded or written; returns (the highest finetuned stage, a Timer)."""
  for s in config.noise_levels if "noise_levels" in config else ():
    corrupt.check_noise_level(s)
  finetune.check_config(config.finetune)
  cascade = cascade_lib.Cascade.from_config(config.cascade)  # shapes only: no parameters yet
  return cascade.stage(finetune.top_finetune_stage(cascade, config.finetune)), common.Timer()


def _load(config, timer):
  with timer("load"):
    cascade, params = common.load_cascade(config)
    embedder = common.make_embedder(config, cascade)
  return cascade, params, embedder


def open_output_dir(workdir: str, job: str, config) -> str:
  """`<workdir>/<job>/<config.name>/` for a run of `config`, resuming an unfinished one.

  - missing or empty: created, with a `RUN_MARKER` holding the run's settings;
  - holding an unfinished run (a marker) with the same settings: reused as is, so its finetune
    resumes from `finetune/<stage>/` and its results are (re)written;
  - holding a finished run, or an unfinished one with other settings: refused, unless
    `config.overwrite`, which discards its finetune state (`finetune/`, `finetuned_cascade/`) so
    that none of it leaks into the new run, and keeps other files until they are rewritten.
  """
  path = os.path.join(workdir, job, config.name)
  marker = os.path.join(path, RUN_MARKER)
  settings = _settings(config)
  if os.path.isfile(marker):
    with open(marker) as f:
      started = json.load(f)
    if started == settings:
      logging.info("Resuming the unfinished run in %s.", path)
      return path
    changed = sorted(k for k in set(started) | set(settings) if started.get(k) != settings.get(k))
    if not config.overwrite:
      raise FileExistsError(
          f"{path} holds an unfinished run started with other settings (differing: {changed}). "
          "Re-run with the same config to resume it, choose another --config.name or --workdir, "
          "or pass --config.overwrite=True to start afresh.")
  elif os.path.isdir(path) and os.listdir(path) and not config.overwrite:
    raise FileExistsError(f"Output directory {path} already holds a finished run; choose another "
                          "--config.name or --workdir, or pass --config.overwrite=True.")
  for stale in ("finetune", "finetuned_cascade"):
    shutil.rmtree(os.path.join(path, stale), ignore_errors=True)
  os.makedirs(path, exist_ok=True)
  outputs.write_json(marker, settings)
  return path


def _settings(config) -> dict:
  """The config as JSON values, without the fields a resumed run may change."""
  settings = {k: v for k, v in config.to_dict().items() if k not in _NOT_SETTINGS}
  return json.loads(json.dumps(settings, default=list))


def _mark_finished(out_root: str) -> None:
  os.remove(os.path.join(out_root, RUN_MARKER))


def _maybe_finetune(config, out_root, cascade, params, embedder, timer, video, top_name):
  if not config.finetune.enabled:
    return params
  text, mask = embedder([config.finetune.prompt])
  params, _ = finetune.finetune_cascade(cascade, params, jnp.asarray(video), jnp.asarray(text),
                                        jnp.asarray(mask), config.finetune, out_root,
                                        config.cascade, timer=timer)
  return params


def _finetune_and_edit(config, workdir, job, cascade, params, embedder, timer, video, top_name,
                       *, source, extra_meta=None):
  """video: (1, T, H, W, 3) at stage `top_name`'s resolution."""
  text, mask = embedder(list(config.prompts))  # before any output: long prompts warn, bad ones fail
  out_root = open_output_dir(workdir, job, config)
  params = _maybe_finetune(config, out_root, cascade, params, embedder, timer, video, top_name)
  base_view = corrupt.to_stage(cascade, jnp.asarray(video), top_name, cascade.names[0])
  last = cascade.stages[-1]
  input_at_output = input_at_output_resolution(cascade, video, top_name)
  folders = []
  for i, prompt in enumerate(config.prompts):
    for seed in config.seeds:
      for s in config.noise_levels:
        final = edit_video(cascade, params, base_view, text[i:i + 1], mask[i:i + 1], s, seed,
                           timer=timer)
        folder = os.path.join(out_root, f"{i:03d}_{common.slug(prompt)}_seed{seed}_s{s:g}")
        meta = dict(extra_meta or {}, job=job, input=source, prompt=prompt, seed=seed, s=s,
                    checkpoint=config.checkpoint, finetune=config.finetune.to_dict(),
                    output_shape=list(final.shape), fps=last.fps, timings=dict(timer.phases))
        common.write_result(folder, final, last.fps, meta, input_video=input_at_output)
        folders.append(folder)
        logging.info("edit written to %s", folder)
  _mark_finished(out_root)
  return folders


def edit_video(cascade, params, base_view, text, text_mask, s: float, seed: int, *,
               upto: str | None = None, timer=None) -> np.ndarray:
  """One Dreamix edit of an in-memory video: noise the base view to level `s`, denoise with the
  base stage from `s` under the prompt, upscale through the cascade.

  base_view: (1, T, H, W, 3) in [-1, 1] at the base stage's resolution; text, text_mask: (1, L, D),
  (1, L) of the edit prompt. Returns the output (T', H', W', 3) of stage `upto` (default: the last)
  as numpy. A `timer` records each stage's sampling (`sample_<stage>`).
  """
  key_noise, key_sample = jax.random.split(jax.random.PRNGKey(seed))
  z_s = corrupt.corrupt(jnp.asarray(base_view), s, key_noise, cascade.schedule)
  upto = upto or cascade.names[-1]
  outs = cascade.sample(params, jnp.asarray(text), jnp.asarray(text_mask), key_sample,
                        base_start=z_s, t_start=s, upto=upto, timer=timer)
  return np.asarray(jax.device_get(outs[upto][0]))


def input_at_output_resolution(cascade, video, top_name):
  """The input shown beside the output, brought to the last stage's size by frame/pixel repetition
  (it is only for viewing: input.mp4 and comparison.png)."""
  last = cascade.stages[-1]
  if top_name == last.name:
    return np.asarray(video[0])
  t, h, w = video.shape[1:4]
  return np.asarray(video[0]).repeat(last.frames // t, 0).repeat(last.height // h, 1).repeat(
      last.width // w, 2)
