"""Pretraining job: trains one stage of a cascade on a captioned video dataset.

  python -m dreamix_jax.main --config=configs/pretrain.py:stage=base --workdir=/tmp/shapes_pretrain

Batches are joint image-video (VDM / Imagen Video): a fraction `data.image_fraction` of each batch is
a *set of images* — the frames of one clip in random order, with the identity temporal mask and one
noise level per frame — the rest are ordinary videos. Captions are dropped (null embedding) with
probability `text_dropout` so the stage supports classifier-free guidance.

Data: `data.source = "moving_shapes"` renders clips on the fly (deterministic by seed; clip i of the
train split is the same as in the TFDS `moving_shapes` builder), `"tfds"` reads a prepared TFDS
array_record dataset (`data.tfds_name`, `data.tfds_dir`; e.g. `video_folder` for your own videos).
Batch k is a function of (seed, k) only, so resuming repeats exactly the same data.

Writes `<workdir>/checkpoints/<stage>/` (orbax, resumable; `<stage>.lock` beside it keeps a second
run of the stage out while this one runs; saved every `checkpoint_every` steps and
`checkpoint_every_minutes`, and on SIGTERM/SIGINT, which end the run with exit code 75),
`<workdir>/cascade/<stage>.safetensors` (EMA params, refreshed at every checkpoint: the cascade
directory sampling jobs read), TensorBoard scalars and sample strips in
`<workdir>/tensorboard/<stage>/`. clu's TensorBoard writer needs TensorFlow; where it is not
installed (a bare JAX GPU image, say) the scalars go to the log and the strips to PNG files in that
folder instead, so the job needs no TensorFlow and no TFDS for `data.source = "moving_shapes"`.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from dreamix_jax import cascade as cascade_lib, config_utils, parallel
from dreamix_jax.data import outputs, pipeline
from dreamix_jax.shapes import world as shapes
from dreamix_jax.jobs import common, lock
from dreamix_jax.backbones import base as backbone_base
from dreamix_jax.train import checkpoints, loop as loop_lib, losses, state as state_lib


class ShapesSource:
  """The moving-shapes train split rendered on demand at the top resolution of the toy world:
  `source[i]` = {'video': (32, 48, 80, 3) float32, 'caption': str}."""

  def __init__(self, seed: int, size: int, split: str = "train", vocabulary=None):
    self.seed, self.size, self.split = seed, size, split
    self.vocabulary = shapes.restricted(vocabulary)  # checked here, before anything is written

  def __len__(self):
    return self.size

  def __getitem__(self, index):
    attrs = shapes.clip_attributes(self.seed, self.split, int(index), self.vocabulary)
    return {"attrs": attrs, "caption": shapes.caption(attrs)}

  @staticmethod
  def render(examples, frames, height, width):
    return shapes.render_batch([e["attrs"] for e in examples], frames, height, width)


class TfdsSource:
  """A prepared TFDS dataset (array_record) with `video` uint8 and `caption` features."""

  def __init__(self, name: str, data_dir: str, split: str = "train"):
    import tensorflow_datasets as tfds  # only this source needs TFDS (and its tfds_builders)
    self._source = tfds.data_source(name, split=split, data_dir=data_dir or None)

  def __len__(self):
    return len(self._source)

  def __getitem__(self, index):
    ex = self._source[int(index)]
    caption = ex["caption"]
    return {"video": outputs.from_uint8(ex["video"]),
            "caption": caption.decode() if isinstance(caption, bytes) else str(caption)}

  @staticmethod
  def render(examples, frames, height, width):
    videos = np.stack([e["video"] for e in examples])
    return shapes.derive(videos, frames, height, width)


def make_source(config):
  if config.data.source == "moving_shapes":
    return ShapesSource(config.data.seed, config.data.size,
                        vocabulary=dict(config.data.get("vocabulary", {})))
  if config.data.source == "tfds":
    return TfdsSource(config.data.tfds_name, config.data.tfds_dir)
  raise ValueError(f"data.source {config.data.source!r} must be 'moving_shapes' or 'tfds'.")


class BatchMaker:
  """batch(step) -> this process's share of the stage's training batch `step` (see
  `dreamix_jax.train.losses`): the examples at global positions `[p·B/P, (p+1)·B/P)` of the global
  batch of `config.batch_size` for process p of P.

  Everything random about an example (image or video, frame order, caption dropped) is a function
  of (data seed, step, global position), so the global batch is the same for any process count and
  a resumed run sees the same data. Caption embeddings are computed once per caption and kept.
  """

  def __init__(self, config, cascade: cascade_lib.Cascade, stage: cascade_lib.Stage, embedder, *,
               process_index: int = 0, process_count: int = 1):
    self.config, self.cascade, self.stage, self.embedder = config, cascade, stage, embedder
    self.process_index, self.process_count = process_index, process_count
    self.source = make_source(config)
    self._emb: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    self._null = embedder.null(1)

  def _embed(self, captions):
    missing = [c for c in dict.fromkeys(captions) if c not in self._emb]
    if missing:
      emb, mask = self.embedder(missing)
      for c, e, m in zip(missing, emb, mask):
        self._emb[c] = (e, m)
    return (np.stack([self._emb[c][0] for c in captions]),
            np.stack([self._emb[c][1] for c in captions]))

  def __call__(self, step: int) -> dict:
    cfg = self.config
    b = cfg.batch_size
    idx = pipeline.batch_indices(step, batch_size=b, size=len(self.source), seed=cfg.data.seed,
                                 process_index=self.process_index,
                                 process_count=self.process_count)
    positions = self.process_index * len(idx) + np.arange(len(idx))  # in the global batch
    examples = [self.source[i] for i in idx]
    stage = self.stage
    names = self.cascade.names
    i = names.index(stage.name)
    top = self.cascade.stages[-1]
    videos = self.source.render(examples, *top.shape)  # (B/P, T, H, W, 3) at the top stage
    view = lambda name: corrupt_view(self.cascade, videos, top.name, name)
    video = view(stage.name)
    low = view(names[i - 1]) if stage.conditional else None
    # Joint image-video: the first n examples of the global batch are sets of images (frames
    # shuffled, temporal mask on); captions are dropped with probability text_dropout.
    n_img = int(round(cfg.data.image_fraction * b))
    temporal_mask = (positions < n_img).astype(np.float32)
    drop = np.zeros(len(idx), bool)
    for j, position in enumerate(positions):
      rng = np.random.default_rng((cfg.data.seed, 1, step, int(position)))
      drop[j] = rng.random() < cfg.text_dropout
      if temporal_mask[j]:
        perm = rng.permutation(video.shape[1])
        video[j] = video[j][perm]
        if low is not None:  # SSR: each frame keeps its own low-resolution counterpart
          low[j] = low[j][perm]
    text, mask = self._embed([e["caption"] for e in examples])
    text = np.where(drop[:, None, None], self._null[0], text)
    mask = np.where(drop[:, None], self._null[1], mask)
    batch = dict(video=video, text=text.astype(np.float32), text_mask=mask.astype(bool),
                 temporal_mask=temporal_mask)
    if low is not None:
      batch["low"] = low
    return batch


def corrupt_view(cascade, videos, top_name, name):
  """numpy version of `dreamix.corrupt.to_stage` (data preparation stays on the host)."""
  out = videos
  names = cascade.names
  for stage in reversed(cascade.stages[names.index(name) + 1:names.index(top_name) + 1]):
    out = np.asarray(stage.downsample(jnp.asarray(out)))
  return np.array(out)


def run(config, workdir: str):
  """Trains `config.stage`; returns (final TrainState, logged metrics). Everything is validated
  before anything is written to `workdir`.

  With `config.mesh` the state is laid out on the mesh (parameters initialised under `jit` with
  output shardings) and the step runs sharded; with several processes (`config.distributed`) each
  builds only its share of every batch, assembled into global arrays with
  `jax.make_array_from_process_local_data`, and only process 0 writes the cascade directory,
  samples and logs.
  """
  parallel.initialize(config.get("distributed"))
  layout = parallel.layout_from_config(config)
  cascade = cascade_lib.Cascade.from_config(config.cascade, layout)
  if config.stage not in cascade.names:
    raise ValueError(f"config.stage {config.stage!r} is not a stage of cascade "
                     f"{config.cascade.name!r}; choose one of {cascade.names}.")
  if config.sample_every:
    config_utils.check_not_empty("sample_prompts", config.sample_prompts)
  stage = cascade.stage(config.stage)
  loop_cfg = loop_lib.LoopConfig(steps=config.steps, seed=config.seed, log_every=config.log_every,
                                 checkpoint_every=config.checkpoint_every,
                                 checkpoint_every_minutes=config.checkpoint_every_minutes,
                                 on_nonfinite=config.on_nonfinite, name=f"pretrain/{stage.name}",
                                 prefetch=config.prefetch)
  if not stage.takes_images and config.data.image_fraction > 0:
    raise ValueError("Image examples (shuffled frames) are not defined for a temporal SR stage: "
                     "its target frames interleave its input frames. Set data.image_fraction=0.")
  embedder = common.make_embedder(config, cascade)
  apply = cascade.denoiser(stage)
  loss_fn = losses.make_stage_loss(apply, stage, cascade.schedule, weighting=config.weighting,
                                   logsnr_shift=config.logsnr_shift,
                                   logsnr_mixture=(config.logsnr_mixture.share,
                                                   config.logsnr_mixture.low,
                                                   config.logsnr_mixture.high))

  def train_loss(params, batch, rng):
    return loss_fn(params, batch, rng).mean(), {}

  optimizer = state_lib.make_optimizer(config.optimizer)
  step_fn = state_lib.make_train_step(
      train_loss, optimizer, ema_decay=config.ema_decay,
      learning_rate=state_lib.learning_rate_schedule(config.optimizer))
  step, params = 0, None
  if config.init_from:
    step, params = _init_from(config.init_from, cascade, stage, config.init_from_new_modules,
                              jax.random.PRNGKey(config.seed))
  elif layout is None:
    params = cascade.init_params(jax.random.PRNGKey(config.seed), stage)
  else:
    params = cascade.init_params_sharded(jax.random.PRNGKey(config.seed), stage)
  logging.info("[pretrain/%s] %s parameters", stage.name, f"{backbone_base.count_params(params):,}")
  ema = config.ema_decay > 0
  state_shardings = None
  if layout is None:
    train_state = state_lib.init_state(params, optimizer, ema=ema)
  else:
    train_state, state_shardings = state_lib.init_state_on(
        layout, cascade.abstract_params(stage), params, optimizer, ema=ema)
  train_state = train_state.replace(step=jnp.asarray(step, jnp.int32))

  batch_maker = BatchMaker(config, cascade, stage, embedder,
                           process_index=jax.process_index(), process_count=jax.process_count())
  batch_fn = batch_maker if layout is None else _global_batches(batch_maker, layout)
  sample_text, sample_mask = embedder(list(config.sample_prompts))
  checkpoint_dir = os.path.join(workdir, "checkpoints", stage.name)
  with lock.hold(checkpoint_dir):
    writer = metric_writer(os.path.join(workdir, "tensorboard", stage.name),
                           primary=parallel.is_primary())
    cascade_dir = os.path.join(workdir, "cascade")

    def on_checkpoint(step, state):
      ema_params = parallel.to_host(state.eval_params)  # every process takes part in the gather
      if parallel.is_primary():
        checkpoints.save_cascade_stage(cascade_dir, stage.name, ema_params, config.cascade,
                                       metadata={"step": str(step), "stage": stage.name})
      if config.sample_every and step % config.sample_every == 0:
        _write_samples(writer, step, cascade, stage, ema_params, sample_text, sample_mask,
                       batch_maker)

    try:
      return loop_lib.run(loop_cfg, train_state, step_fn, batch_fn, checkpoint_dir=checkpoint_dir,
                          meta={"stage": stage.name}, writer=writer, on_checkpoint=on_checkpoint,
                          layout=layout, state_shardings=state_shardings)
    finally:
      writer.flush()  # also when preempted or stopped: the summaries so far are kept


class LogAndPngWriter:
  """The writer `metric_writer` falls back to without TensorFlow: scalars to the log, images
  (N, H, W, 3) in [0, 1] to `<logdir>/<key>_<step>_<i>.png`."""

  def __init__(self, logdir: str, primary: bool):
    self.logdir, self.primary = logdir, primary

  def write_scalars(self, step: int, scalars: dict):
    logging.info("[%d] %s", step, ", ".join(f"{k}={v:.6g}" for k, v in sorted(scalars.items())))

  def write_images(self, step: int, images: dict):
    if not self.primary:
      return
    os.makedirs(self.logdir, exist_ok=True)
    for key, batch in images.items():
      for i, image in enumerate(np.asarray(batch)):
        outputs.write_png(os.path.join(self.logdir, f"{key}_{step}_{i}.png"), image * 2.0 - 1.0)

  def flush(self):
    pass


def metric_writer(logdir: str, *, primary: bool):
  """clu's default writer (TensorBoard summaries on the primary process, the log elsewhere), or
  `LogAndPngWriter` where clu cannot import TensorFlow."""
  try:
    from clu import metric_writers  # imports TensorFlow
  except ImportError as e:
    logging.warning("No TensorBoard summaries (%s): metrics go to the log, sample strips to PNG "
                    "files in %s.", e, logdir)
    return LogAndPngWriter(logdir, primary)
  return metric_writers.create_default_writer(logdir, just_logging=not primary)


def _global_batches(batch_maker: BatchMaker, layout: parallel.Layout):
  """batch_fn(step) -> global arrays over the layout's batch axes, each process contributing the
  share `batch_maker` builds for it."""
  shardings = None

  def batch_fn(step):
    nonlocal shardings
    local = batch_maker(step)
    if shardings is None:
      global_shapes = {k: (v.shape[0] * batch_maker.process_count,) + v.shape[1:]
                       for k, v in local.items()}
      shardings = {k: layout.sharding(("batch",) + (None,) * (len(shape) - 1), shape)
                   for k, shape in global_shapes.items()}
    return parallel.put_process_local(local, shardings)

  return batch_fn


def _init_from(directory, cascade, stage, new_modules=(), rng=None):
  """(step, params): the (EMA) parameters of a cascade directory, e.g. a committed demo cascade,
  and the step recorded in its metadata, to continue pretraining from (the optimizer moments start
  afresh). `new_modules`: top-level modules the directory's stage lacks (added to the config
  since), which start from their initialisation (`rng`). An orbax checkpoint in the workdir, when
  present, still takes precedence (`loop.run` restores it)."""
  import safetensors
  path = os.path.join(directory, f"{stage.name}.safetensors")
  if new_modules:
    params = checkpoints.load_params_over(path, cascade.init_params(rng, stage), new_modules)
    logging.info("[pretrain/%s] new modules %s start from their initialisation.", stage.name,
                 list(new_modules))
  else:
    params = checkpoints.load_cascade(directory, cascade, [stage.name])[stage.name]
  with safetensors.safe_open(path, "np") as f:
    step = int((f.metadata() or {}).get("step", 0))
  logging.info("[pretrain/%s] initialised from %s at step %d.", stage.name, path, step)
  return step, cascade.place_params(stage, jax.tree_util.tree_map(jnp.asarray, params))


def _write_samples(writer, step, cascade, stage, params, text, mask, batch_maker):
  """A strip of sampled frames per prompt in TensorBoard (SR stages: from the real low view)."""
  n = text.shape[0]
  low = None
  if stage.conditional:
    low = jnp.asarray(batch_maker(10_000_000 + step)["low"][:1]).repeat(n, axis=0)
  video = cascade.sample_stage(stage, params, jnp.asarray(text), jnp.asarray(mask),
                               jax.random.PRNGKey(step), low=low)
  video = parallel.to_host(video)
  frames = (video[:, ::max(1, video.shape[1] // 8)] + 1) / 2  # (n, 8, H, W, 3)
  strips = np.concatenate(list(frames.transpose(1, 0, 2, 3, 4)), axis=2)  # (n, H, 8W, 3)
  writer.write_images(step, {"samples": strips})
