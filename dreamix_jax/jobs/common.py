"""What every job shares: loading the cascade and text encoder, output folders, writing results."""

from __future__ import annotations

import os
import re
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from dreamix_jax import cascade as cascade_lib, parallel
from dreamix_jax.data import outputs
from dreamix_jax.text import text_encoder
from dreamix_jax.train import checkpoints


def text_config(t5_dir: str = "", cache_dir: str = "") -> ml_collections.ConfigDict:
  """`t5_dir`: a local Hugging Face T5 directory; `cache_dir`: an embedding cache (written when a
  T5 directory is given, read alone otherwise)."""
  return ml_collections.ConfigDict(dict(t5_dir=t5_dir, cache_dir=cache_dir))


def load_cascade(config: ml_collections.ConfigDict, upto: str = ""):
  """(cascade, {stage: params}) from `config.cascade` and `config.checkpoint`.

  With `upto` (a stage name) only the stages up to and including it are loaded (e.g. to sample the
  base stage of a cascade whose later stages are not trained yet).

  With `config.checkpoint = ""` the stages are randomly initialised (seeded by `config.seed`): useful
  for smoke runs (`:runlocal`), and said loudly in the log.

  With `config.mesh` the cascade carries a `parallel.Layout` (sampling and finetuning run sharded on
  it) and the parameters are laid out on it: loaded ones slice by slice, random ones initialised
  under `jit` with output shardings. `config.distributed.enabled` starts `jax.distributed` first.
  """
  parallel.initialize(config.get("distributed"))
  cascade = cascade_lib.Cascade.from_config(config.cascade, parallel.layout_from_config(config))
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


def make_embedder(config: ml_collections.ConfigDict, cascade: cascade_lib.Cascade):
  embedder = text_encoder.make_embedder(config.text.t5_dir or None, config.text.cache_dir or None,
                                        cascade.text_len)
  if embedder.dim != cascade.text_dim:
    raise ValueError(f"The text encoder gives {embedder.dim}-d embeddings but cascade "
                     f"{config.cascade.name!r} expects {cascade.text_dim}-d; use the encoder the "
                     "cascade was trained with.")
  return embedder


def output_dir(workdir: str, job: str, name: str, overwrite: bool) -> str:
  """`<workdir>/<job>/<name>/`, refusing to reuse a non-empty one unless `overwrite`."""
  path = os.path.join(workdir, job, name)
  if os.path.isdir(path) and os.listdir(path) and not overwrite:
    raise FileExistsError(f"Output directory {path} already exists and is not empty; choose another "
                          "--config.name or --workdir, or pass --config.overwrite=True.")
  os.makedirs(path, exist_ok=True)
  return path


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
