"""What every job shares: loading the cascade and text encoder, output folders (resumable ones for
the finetuning jobs), writing results."""

from __future__ import annotations

import json
import os
import re
import shutil
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from dreamix_jax import cascade as cascade_lib, parallel
from dreamix_jax.data import outputs
from dreamix_jax.text import text_encoder
from dreamix_jax.train import checkpoints

RUN_MARKER = ".unfinished.json"
# Left out of the settings a resumed run must share with the one it continues.
_NOT_SETTINGS = ("overwrite", "distributed")


def load_cascade(config: ml_collections.ConfigDict, upto: str = ""):
  """(cascade, {stage: params}) from `config.cascade` and `config.checkpoint`.

  With `upto` (a stage name) only the stages up to and including it are loaded (e.g. to sample the
  base stage of a cascade whose later stages are not trained yet).

  With `config.checkpoint = ""` the stages are randomly initialised (seeded by `config.seed`): useful
  for smoke runs (`:runlocal`), and said loudly in the log.

  With `config.mesh` the cascade carries a `parallel.Layout` (sampling and finetuning run sharded on
  it) and the parameters are laid out on it: loaded ones slice by slice, random ones initialised
  under `jit` with output shardings. `config.distributed.enabled` starts `jax.distributed` first.

  A cascade with `source = "diffusers"` (`configs/cascades/modelscope.py`) reads
  `config.checkpoint` as a diffusers pipeline folder instead (`_load_diffusers`).
  """
  parallel.initialize(config.get("distributed"))
  layout = parallel.layout_from_config(config)
  if config.cascade.get("source", "project") == "diffusers":
    return _load_diffusers(config, layout)
  cascade = cascade_lib.Cascade.from_config(config.cascade, layout)
  if upto and upto not in cascade.names:
    raise ValueError(f"Stage {upto!r} is not in cascade {config.cascade.name!r}; it has "
                     f"{cascade.names}.")
  stages = cascade.stages[:cascade.names.index(upto) + 1] if upto else cascade.stages
  if config.checkpoint:
    params = checkpoints.load_cascade(config.checkpoint, cascade, [s.name for s in stages])
    params = {s.name: cascade.place_params(s, params[s.name]) for s in stages}
    logging.info("Loaded cascade %r from %s.", config.cascade.name, config.checkpoint)
  else:
    logging.warning("config.checkpoint is empty: using RANDOMLY INITIALISED stages (%s). Outputs "
                    "are noise-like; pass --config.checkpoint=<cascade dir> for real results.",
                    cascade.names)
    init = cascade.init_params if cascade.layout is None else cascade.init_params_sharded
    params = {s.name: init(jax.random.PRNGKey(config.seed + i), s) for i, s in enumerate(stages)}
  return cascade, params


def _load_diffusers(config: ml_collections.ConfigDict, layout):
  """(cascade, {base: params}) of a one-stage latent cascade whose weights are the diffusers
  pipeline folder `config.checkpoint`: the UNet3D's architecture, the DDPM schedule and the text
  width come from the folder's configs, the autoencoder is its SD VAE; the cascade config gives
  the clip size, the sampler and how to run the backbone (dtype, remat)."""
  from dreamix_jax.backbones import diffusers_import  # pylint: disable=g-import-not-at-top
  folder = config.checkpoint
  if not folder:
    raise ValueError(f"Cascade {config.cascade.name!r} runs a diffusers text-to-video model: pass "
                     "--config.checkpoint=<its pipeline folder> (e.g. a local copy of "
                     "damo-vilab/text-to-video-ms-1.7b; not a diffusers pipeline folder: '').")
  cfg = config.cascade.copy_and_resolve_references()
  cfg.unlock()
  if len(cfg.order) != 1:
    raise ValueError(f"A diffusers cascade is one base stage; {cfg.name!r} has {list(cfg.order)}.")
  backbone_cfg = cfg.stages[cfg.order[0]].backbone
  backbone_cfg.pipeline_dir = folder
  run_fields = {k: v for k, v in backbone_cfg.items() if k not in ("name", "pipeline_dir")}
  backbone, params = diffusers_import.load_unet(folder, sharding=layout, **run_fields)
  scheduler = diffusers_import.load_scheduler_config(folder)
  cfg.schedule = dict(kind="ddpm", num_steps=scheduler.num_train_timesteps,
                      beta_start=scheduler.beta_start, beta_end=scheduler.beta_end,
                      beta_schedule=scheduler.beta_schedule)
  cfg.text.dim = backbone.config.cross_attention_dim
  autoencoder = diffusers_import.load_vae(folder, dtype=run_fields.get("dtype", "float32"))
  cascade = cascade_lib.Cascade.from_config(cfg, layout, autoencoder=autoencoder)
  logging.info("Loaded the diffusers pipeline %s (%s prediction).", folder, backbone.prediction)
  return cascade, {cascade.names[0]: params}


def make_embedder(config: ml_collections.ConfigDict, cascade: cascade_lib.Cascade):
  """The prompt embedder the cascade was trained with (`cascade.text.encoder`: the T5 of
  `config.text`, or the CLIP text tower of a diffusers pipeline folder); its null condition
  becomes the cascade's unconditional branch for guidance."""
  if config.cascade.text.get("encoder", "t5") == "clip":
    from dreamix_jax.backbones import diffusers_import  # pylint: disable=g-import-not-at-top
    embedder = diffusers_import.clip_text_embedder(config.checkpoint)
  else:
    embedder = text_encoder.make_embedder(config.text.t5_dir or None,
                                          config.text.cache_dir or None, cascade.text_len)
  if embedder.dim != cascade.text_dim:
    raise ValueError(f"The text encoder gives {embedder.dim}-d embeddings but cascade "
                     f"{config.cascade.name!r} expects {cascade.text_dim}-d; use the encoder the "
                     "cascade was trained with.")
  cascade.null_condition = embedder.null(1)
  return embedder


def output_dir(workdir: str, job: str, name: str, overwrite: bool) -> str:
  """`<workdir>/<job>/<name>/`, refusing to reuse a non-empty one unless `overwrite`."""
  path = os.path.join(workdir, job, name)
  if os.path.isdir(path) and os.listdir(path) and not overwrite:
    raise FileExistsError(f"Output directory {path} already exists and is not empty; choose another "
                          "--config.name or --workdir, or pass --config.overwrite=True.")
  os.makedirs(path, exist_ok=True)
  return path


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
  settings = run_settings(config)
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


def run_settings(config) -> dict:
  """The config as JSON values, without the fields a resumed run may change."""
  settings = {k: v for k, v in config.to_dict().items() if k not in _NOT_SETTINGS}
  return json.loads(json.dumps(settings, default=list))


def mark_finished(out_root: str) -> None:
  os.remove(os.path.join(out_root, RUN_MARKER))


def peak_device_bytes() -> int | None:
  """Peak bytes in use on the first local device so far (GPU/TPU memory statistics), or None
  where the backend keeps none (CPU)."""
  stats = jax.local_devices()[0].memory_stats()
  return stats.get("peak_bytes_in_use") if stats else None


def slug(text: str, max_len: int = 48) -> str:
  return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:max_len] or "prompt"


def write_result(directory: str, output, fps: float, meta: dict, *, input_video=None,
                 stage_outputs: dict | None = None) -> None:
  """Writes output.mp4/.gif, input.mp4 (if any), comparison.png (input over output, or each stage's
  output for text-to-video) and meta.json into `directory`. Videos: (T, H, W, 3) in [−1, 1]."""
  os.makedirs(directory, exist_ok=True)
  output = np.asarray(output)
  outputs.write_mp4(os.path.join(directory, "output.mp4"), output, fps)
  outputs.write_gif(os.path.join(directory, "output.gif"), output, fps)
  if input_video is not None:
    outputs.write_mp4(os.path.join(directory, "input.mp4"), np.asarray(input_video), fps)
    rows, labels = [np.asarray(input_video), output], ["input", "output"]
  else:
    rows = [np.asarray(v) for v in (stage_outputs or {"output": output}).values()]
    labels = list((stage_outputs or {"output": output}).keys())
  outputs.write_comparison_png(os.path.join(directory, "comparison.png"), rows, labels)
  outputs.write_json(os.path.join(directory, "meta.json"), meta)


class Timer:
  """Wall-time of named phases, for meta.json and the progress log."""

  def __init__(self):
    self.phases: dict[str, float] = {}

  def __call__(self, name: str):
    timer = self

    class _Phase:
      def __enter__(self):
        self.t0 = time.time()
        logging.info("[%s] ...", name)

      def __exit__(self, *exc):
        timer.phases[name] = timer.phases.get(name, 0.0) + time.time() - self.t0
        logging.info("[%s] %.1fs", name, timer.phases[name])

    return _Phase()
