"""What every job shares: checking the config, loading the cascade and text encoder, output folders
(locked, and resumable), writing results."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from dreamix_jax import cascade as cascade_lib, config_utils, parallel
from dreamix_jax.data import fingerprint, outputs
from dreamix_jax.jobs import lock
from dreamix_jax.text import text_encoder
from dreamix_jax.train import checkpoints

RUN_MARKER = ".unfinished.json"
# Left out of the settings a resumed run must share with the one it continues.
_NOT_SETTINGS = ("overwrite", "distributed")


def check_config(config: ml_collections.ConfigDict) -> None:
  """Checks what every sampling job's config may hold, before anything is loaded or written:
  `name` is one folder name, the lists the job iterates over (`prompts`, `seeds`,
  `noise_levels`) are not empty, and an enabled finetune names at least one stage (which stages
  the cascade has is checked when it is known). Raises a ValueError naming the field."""
  config_utils.check_path_component("name", config.name)
  for field in ("prompts", "seeds", "noise_levels"):
    if field in config:
      config_utils.check_not_empty(field, config[field])
  tune = config.get("finetune")
  if tune is not None and tune.get("enabled", True) and "stages" in tune:
    config_utils.check_not_empty("finetune.stages", tune.stages)


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
    embedder = diffusers_import.clip_text_embedder(config.checkpoint,
                                                  config.text.cache_dir or None)
  else:
    embedder = text_encoder.make_embedder(config.text.t5_dir or None,
                                          config.text.cache_dir or None, cascade.text_len)
  if embedder.dim != cascade.text_dim:
    raise ValueError(f"The text encoder gives {embedder.dim}-d embeddings but cascade "
                     f"{config.cascade.name!r} expects {cascade.text_dim}-d; use the encoder the "
                     "cascade was trained with.")
  cascade.null_condition = embedder.null(1)
  return embedder


def job_dir(workdir: str, job: str, name: str) -> str:
  """`<workdir>/<job>/<name>`, `name` checked to be one folder name (so the path stays inside the
  workdir)."""
  return os.path.join(workdir, job, config_utils.check_path_component("name", name))


@contextlib.contextmanager
def output_run(workdir: str, job: str, config):
  """Holds the lock of the job's output folder (`lock.hold`: no second run writes it meanwhile),
  opens it (`open_output_dir`: fresh, or resuming an unfinished run) and yields it; the run is
  marked finished when the block completes. On an error or preemption the marker stays, so the
  same command resumes."""
  with lock.hold(job_dir(workdir, job, config.name)):
    out_root = open_output_dir(workdir, job, config)
    yield out_root
    mark_finished(out_root)


def open_output_dir(workdir: str, job: str, config) -> str:
  """`<workdir>/<job>/<config.name>/` for a run of `config`, resuming an unfinished one.

  - missing or empty: created, with a `RUN_MARKER` holding the run's settings and the content
    fingerprints of its inputs (`content_fingerprints`);
  - holding an unfinished run (a marker) with the same settings and inputs of the same content:
    reused as is, so its finetune resumes from `finetune/` and its results are (re)written;
  - holding a finished run, or an unfinished one with other settings, or whose input video,
    checkpoint or T5 folder has other bytes now (a file replaced at the same path): refused,
    unless `config.overwrite`, which discards its finetune state (`finetune/`,
    `finetuned_cascade/`) so that none of it leaks into the new run, and keeps other files until
    they are rewritten.
  """
  path = job_dir(workdir, job, config.name)
  marker = os.path.join(path, RUN_MARKER)
  current = {"settings": run_settings(config), "fingerprints": content_fingerprints(config)}
  if os.path.isfile(marker):
    with open(marker) as f:
      started = json.load(f)
    if started == current:
      logging.info("Resuming the unfinished run in %s.", path)
      return path
    if not config.overwrite:
      raise FileExistsError(_why_not_resumed(path, config, started, current))
  elif os.path.isdir(path) and os.listdir(path) and not config.overwrite:
    raise FileExistsError(f"Output directory {path} already holds a finished run; choose another "
                          "--config.name or --workdir, or pass --config.overwrite=True.")
  for stale in ("finetune", "finetuned_cascade"):
    shutil.rmtree(os.path.join(path, stale), ignore_errors=True)
  os.makedirs(path, exist_ok=True)
  outputs.write_json(marker, current)
  return path


def _why_not_resumed(path: str, config, started: dict, current: dict) -> str:
  """The refusal to resume the unfinished run in `path`: which settings differ, which inputs have
  other content, and what to do."""
  differ = lambda a, b: sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
  settings = differ(started.get("settings", {}), current["settings"])
  content = differ(started.get("fingerprints", {}), current["fingerprints"])
  reasons = []
  if settings:
    reasons.append(f"started with other settings (differing: {settings})")
  if content:
    named = ", ".join(f"config.{k} ({config_utils.field(config, k)})" for k in content)
    reasons.append(f"whose inputs have other content now: {named} (same path, other bytes)")
  return (f"{path} holds an unfinished run {' and '.join(reasons)}. Re-run with the same config "
          "and files to resume it, choose another --config.name or --workdir, or pass "
          "--config.overwrite=True to start afresh.")


def run_settings(config) -> dict:
  """The config as JSON values, without the fields a resumed run may change."""
  settings = {k: v for k, v in config.to_dict().items() if k not in _NOT_SETTINGS}
  return json.loads(json.dumps(settings, default=list))


def mark_finished(out_root: str) -> None:
  os.remove(os.path.join(out_root, RUN_MARKER))


def content_fingerprints(config) -> dict[str, str]:
  """{config field: sha256 of the bytes it names} for the files a run is made from: the input (a
  video, an image, or a folder of frames or images), the cascade checkpoint folder and the T5
  folder (every file below them but hidden ones: weights, configs, tokenizer). Settings name
  paths; these say whether the same paths still hold the same data (`data.fingerprint`, remembered
  per process, so the weights are read once)."""
  prints = {}
  if config.get("input"):
    prints["input"] = _path_sha256(config.input)
  if config.get("checkpoint"):
    prints["checkpoint"] = _path_sha256(config.checkpoint)
  if config.cascade.text.get("encoder", "t5") == "t5" and config.text.t5_dir:
    prints["text.t5_dir"] = _path_sha256(config.text.t5_dir)
  return prints


def _path_sha256(path: str) -> str:
  """The content fingerprint of a file, or of a folder's (non-hidden) files by relative path."""
  if not os.path.isdir(path):
    return fingerprint.file_sha256(path)
  names = []
  for folder, subfolders, files in os.walk(path):
    subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
    names += [os.path.relpath(os.path.join(folder, f), path) for f in files
              if not f.startswith(".")]
  return fingerprint.files_sha256(path, names)


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
  output for text-to-video) and meta.json as the folder `directory`. Videos: (T, H, W, 3) in
  [−1, 1].

  The folder appears whole or not at all: the files are written into a hidden temporary folder
  beside it, which then replaces any earlier `directory` (a resumed run rewriting it); an error or
  a preemption part-way removes the temporary folder."""
  parent, name = os.path.split(os.path.normpath(directory))
  os.makedirs(parent, exist_ok=True)
  staging = os.path.join(parent, f".{name}.tmp-{secrets.token_hex(4)}")
  os.mkdir(staging)  # (not mkdtemp: its 0700 mode would stay with the results)
  try:
    output = np.asarray(output)
    outputs.write_mp4(os.path.join(staging, "output.mp4"), output, fps)
    outputs.write_gif(os.path.join(staging, "output.gif"), output, fps)
    if input_video is not None:
      outputs.write_mp4(os.path.join(staging, "input.mp4"), np.asarray(input_video), fps)
      rows, labels = [np.asarray(input_video), output], ["input", "output"]
    else:
      rows = [np.asarray(v) for v in (stage_outputs or {"output": output}).values()]
      labels = list((stage_outputs or {"output": output}).keys())
    outputs.write_comparison_png(os.path.join(staging, "comparison.png"), rows, labels)
    outputs.write_json(os.path.join(staging, "meta.json"), meta)
    shutil.rmtree(directory, ignore_errors=True)
    os.rename(staging, directory)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise


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
