"""The cascade: stages, the resize ops between them, and cascade sampling.

A cascade is a base stage (text → low-resolution video) followed by super-resolution stages, each
either temporal (TSR: ×k frames, same size) or spatial (SSR: ×k height and width, same frames). An SR
stage is conditioned on the previous stage's output upsampled to its own resolution (frame repetition
in time, bilinear in space) and noise-augmented at a fixed level at sampling time. What differs
between kinds is data (`KINDS`: the resize ops, whether a stage is conditioned), not branches.

Each stage's denoiser is a backbone (`dreamix_jax.backbones`, chosen by `stage.backbone.name`)
adapted to the sampler's v-on-log-SNR interface by `diffusion.parametrisation`. The cascade owns
an autoencoder (`dreamix_jax.autoencoders`): the identity for pixel cascades; for latent ones the
stages denoise `autoencoder.encode(video)` and sampling ends with `decode`. Sizes in the config are
pixels; `Cascade.latent_shape(stage)` is what the backbone sees.

Config layout (an `ml_collections.ConfigDict`, see `configs/cascades/`):
  cascade.name, cascade.order = ('base', 'tsr1', ...), cascade.schedule.{kind, ...} (see
  `schedules.from_config`), cascade.text.{max_length, dim}, cascade.autoencoder.name (optional:
  identity), cascade.stages.<name>.{kind, frames, height, width, fps, factor, backbone.{name, ...},
  sampler, cond_aug_t, cond_aug_max_t, chunk_frames, finetune}.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections

from dreamix_jax import autoencoders, backbones, parallel
from dreamix_jax.backbones import base as backbone_base
from dreamix_jax.diffusion import objectives, parametrisation, sampling, schedules


# --------------------------------------------------------------------------------------------------
# Resize ops. Videos are (B, T, H, W, C).

def area_downsample(video, factor: int):
  """Mean over factor×factor pixel blocks (exact area resize for integer factors)."""
  b, t, h, w, c = video.shape
  if h % factor or w % factor:
    raise ValueError(f"Cannot area-downsample {h}×{w} by {factor}: not divisible.")
  return video.reshape(b, t, h // factor, factor, w // factor, factor, c).mean(axis=(3, 5))


def bilinear_upsample(video, factor: int):
  """Bilinear spatial upsampling by an integer factor."""
  b, t, h, w, c = video.shape
  return jax.image.resize(video, (b, t, h * factor, w * factor, c), "bilinear")


def repeat_frames(video, factor: int):
  """Temporal upsampling by frame repetition: frame i appears `factor` times."""
  return jnp.repeat(video, factor, axis=1)


def skip_frames(video, factor: int):
  """Temporal downsampling: keep every `factor`-th frame, starting at frame 0."""
  return video[:, ::factor]


@dataclasses.dataclass(frozen=True)
class Kind:
  """What a kind of stage does. `conditional`: it takes the previous stage's output;
  `input_shape(shape, factor)`: that output's (frames, height, width); `upsample` / `downsample`
  (video, factor): between the previous stage's resolution and this one's; `frames_per_input`:
  output frames per input frame (chunked sampling); `takes_images`: can train on frame sets."""

  conditional: bool
  input_shape: Callable[[tuple[int, int, int], int], tuple[int, int, int]]
  upsample: Callable | None = None
  downsample: Callable | None = None
  temporal: bool = False
  takes_images: bool = True

  def frames_per_input(self, factor: int) -> int:
    return factor if self.temporal else 1


KINDS = {
    "base": Kind(conditional=False, input_shape=lambda shape, f: shape),
    "tsr": Kind(conditional=True, input_shape=lambda s, f: (s[0] // f, s[1], s[2]),
                upsample=repeat_frames, downsample=skip_frames, temporal=True, takes_images=False),
    "ssr": Kind(conditional=True, input_shape=lambda s, f: (s[0], s[1] // f, s[2] // f),
                upsample=bilinear_upsample, downsample=area_downsample),
}


# --------------------------------------------------------------------------------------------------
# Stages.

@dataclasses.dataclass(frozen=True)
class Stage:
  """One model of the cascade. `frames, height, width` are its output size; `factor` its upscaling
  factor over the previous stage (1 for the base). `chunk_frames`: sample in chunks of this many
  *input* frames (the paper's last SSR uses 32), or 0 for all at once."""

  name: str
  kind: str
  frames: int
  height: int
  width: int
  fps: float
  factor: int
  backbone: backbone_base.Backbone
  sampler: sampling.SamplerConfig
  cond_aug_t: float = 0.0
  cond_aug_max_t: float = 0.0
  chunk_frames: int = 0
  finetune: bool = True

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"Stage {self.name!r}: kind {self.kind!r} is not one of {sorted(KINDS)}.")

  @property
  def conditional(self) -> bool:
    """Whether the stage takes the previous stage's output (SR stages)."""
    return KINDS[self.kind].conditional

  @property
  def takes_images(self) -> bool:
    """Whether the stage can train on frame sets (images packed as frames)."""
    return KINDS[self.kind].takes_images

  @property
  def shape(self) -> tuple[int, int, int]:
    return (self.frames, self.height, self.width)

  def input_shape(self) -> tuple[int, int, int]:
    """(frames, height, width) of the previous stage's output."""
    return KINDS[self.kind].input_shape(self.shape, self.factor)

  def frames_per_input(self) -> int:
    """Output frames per frame of the previous stage's output."""
    return KINDS[self.kind].frames_per_input(self.factor)

  def upsample(self, low):
    """Previous stage's output (B, *input_shape, C) -> this stage's resolution."""
    op = KINDS[self.kind].upsample
    if op is None:
      raise ValueError(f"Stage {self.name!r} ({self.kind}) has no conditioning input.")
    return op(low, self.factor)

  def downsample(self, video):
    """This stage's resolution -> the previous stage's (frame skipping / area resize)."""
    op = KINDS[self.kind].downsample
    if op is None:
      raise ValueError(f"Stage {self.name!r} ({self.kind}) has no lower-resolution input.")
    return op(video, self.factor)


def stage_from_config(name: str, cfg: ml_collections.ConfigDict) -> Stage:
  return Stage(
      name=name, kind=cfg.kind, frames=cfg.frames, height=cfg.height, width=cfg.width, fps=cfg.fps,
      factor=cfg.factor, backbone=backbones.make(cfg.backbone),
      sampler=sampling.SamplerConfig(**dict(cfg.sampler)), cond_aug_t=cfg.cond_aug_t,
      cond_aug_max_t=cfg.cond_aug_max_t, chunk_frames=cfg.chunk_frames, finetune=cfg.finetune)


# --------------------------------------------------------------------------------------------------
# The cascade.

class Cascade:
  """Stages in order, the shared noise schedule, the autoencoder and the text-embedding size.

  `layout` (a `parallel.Layout`, or None for one device) is where its computations run: sampling
  and finetuning jit their steps with shardings on its mesh.
  """

  def __init__(self, stages: list[Stage], schedule, text_len: int, text_dim: int,
               layout: parallel.Layout | None = None, autoencoder=None):
    if not stages or stages[0].conditional or any(not s.conditional for s in stages[1:]):
      raise ValueError("A cascade is one base stage followed by SR stages.")
    autoencoder = autoencoder or autoencoders.Identity()
    for stage in stages:
      f = stage.backbone.spatial_factor * autoencoder.spatial_factor
      if stage.height % f or stage.width % f:
        raise ValueError(f"Stage {stage.name!r}: {stage.height}×{stage.width} is not divisible by the "
                         f"downsampling factor {f} (the backbone's × the autoencoder's); change "
                         "the resolution or the backbone's levels.")
    for prev, cur in zip(stages, stages[1:]):
      if cur.input_shape() != prev.shape:
        raise ValueError(f"Stage {cur.name!r} expects input {cur.input_shape()} but {prev.name!r} "
                         f"produces {prev.shape}.")
    self.stages = list(stages)
    self.schedule = schedule
    self.text_len = text_len
    self.text_dim = text_dim
    self.layout = layout
    self.autoencoder = autoencoder
    # Guidance's unconditional text, ((1, L, D), (1, L)): zeros and an all-False mask (the T5
    # convention) unless the embedder says otherwise (`jobs.common.make_embedder`).
    self.null_condition = (jnp.zeros((1, text_len, text_dim)), jnp.zeros((1, text_len), bool))

  @classmethod
  def from_config(cls, cfg: ml_collections.ConfigDict, layout: parallel.Layout | None = None,
                  autoencoder=None) -> "Cascade":
    """The cascade `cfg` describes; `autoencoder` (one with weights, built by its loader) replaces
    the one `cfg.autoencoder` names."""
    missing = [n for n in cfg.order if n not in cfg.stages]
    if missing:
      raise ValueError(f"cascade.order names stages {missing} that cascade.stages does not define "
                       f"(defined: {sorted(cfg.stages.keys())}).")
    return cls([stage_from_config(n, cfg.stages[n]) for n in cfg.order],
               schedules.from_config(cfg.schedule), cfg.text.max_length, cfg.text.dim, layout,
               autoencoder or autoencoders.make(cfg.get("autoencoder")))

  @property
  def names(self) -> list[str]:
    return [s.name for s in self.stages]

  def stage(self, name: str) -> Stage:
    for s in self.stages:
      if s.name == name:
        return s
    raise KeyError(f"No stage {name!r} in this cascade; stages: {self.names}.")

  def previous(self, stage: Stage) -> Stage:
    """The stage whose output `stage` (an SR stage) is conditioned on."""
    return self.stages[self.names.index(stage.name) - 1]

  def latent_shape(self, stage: Stage) -> tuple[int, int, int, int]:
    """(frames, height, width, channels) of what `stage`'s backbone denoises."""
    f = self.autoencoder.spatial_factor
    return (stage.frames, stage.height // f, stage.width // f, self.autoencoder.channels)

  def input_spec(self, stage: Stage) -> backbone_base.InputSpec:
    t, h, w, c = self.latent_shape(stage)
    return backbone_base.InputSpec(t, h, w, c, self.text_len, self.text_dim,
                                   cond_channels=c if stage.conditional else 0)

  def denoiser(self, stage: Stage):
    """`stage`'s pure denoiser as v̂ on a log-SNR: `apply(params, z, logsnr, text, text_mask, *,
    cond=None, cond_logsnr=None, temporal_mask=None, train=False, rng=None, frames_only=False)`
    (see `backbones.base` and `diffusion.parametrisation`)."""
    return parametrisation.v_on_logsnr(stage.backbone, self.schedule)

  def encode(self, video, rng=None):
    """Pixels (B, T, H, W, 3) in [−1, 1] -> what the stages denoise (identity for pixel cascades)."""
    return self.autoencoder.encode(video, rng)

  def decode(self, latents):
    """The inverse of `encode`; pixel outputs are clipped to [−1, 1]."""
    return jnp.clip(self.autoencoder.decode(latents), -1.0, 1.0)

  def init_params(self, rng, stage: Stage):
    return stage.backbone.init(rng, self.input_spec(stage))

  def abstract_params(self, stage: Stage):
    return stage.backbone.abstract_params(self.input_spec(stage))

  def param_shardings(self, stage: Stage):
    """Shardings of `stage`'s parameters on `self.layout` (from logical axis names)."""
    if self.layout is None:
      raise ValueError("This cascade has no layout (mesh); set `cascade.layout` first.")
    return _param_shardings(stage.backbone, self.input_spec(stage), self.layout)

  def init_params_sharded(self, rng, stage: Stage):
    """`init_params` under `jit` with output shardings on `self.layout` (same values): each device
    materialises only its slice."""
    return parallel.init_sharded(lambda: self.init_params(rng, stage), self.param_shardings(stage))

  def place_params(self, stage: Stage, params):
    """`params` laid out on `self.layout` (unchanged without one)."""
    if self.layout is None:
      return params
    return parallel.put(params, self.param_shardings(stage))

  # ------------------------------------------------------------------------------------------------
  # Sampling.

  def sample_stage(self, stage: Stage, params, text, text_mask, rng, *, low=None, z_start=None,
                   t_start=1.0, trajectory=False):
    """Samples one stage in the backbone's space (pixels, or latents of a latent cascade).
    text: (B, L, D); text_mask: (B, L).

    Base stage: from pure noise, or from `z_start` (B, *latent_shape) at time `t_start` (editing).
    SR stage: conditioned on the previous stage's output `low`, in chunks of `stage.chunk_frames`
    input frames when set. Returns (B, *latent_shape), clipped to [−1, 1] in pixel space.
    With `trajectory=True` (base stage only) returns `(video, xs)`, xs (num_steps, B, ...) the x̂0
    of every sampler step (`sampling.ddim_sample`).
    """
    if trajectory and stage.conditional:
      raise ValueError(f"trajectory=True is for the base stage; {stage.name!r} is {stage.kind}.")
    raw = _compiled_stage_sampler(stage, self.schedule, self.layout, trajectory,
                                  self.autoencoder.pixel_space)
    params = self.place_params(stage, params)
    if self.layout is None:
      fn = raw
    else:
      layout = self.layout

      def fn(params, text, text_mask, rng, z, t, low, null):
        text, text_mask, z, low, null = parallel.put(
            (text, text_mask, z, low, null), layout.batch_shardings((text, text_mask, z, low, null)))
        rng, t = parallel.put((rng, t), layout.replicated)
        return raw(params, text, text_mask, rng, z, t, low, null)
    _, h, w, c = self.latent_shape(stage)
    b = text.shape[0]
    null = tuple(jnp.repeat(jnp.asarray(x), b, axis=0) for x in self.null_condition)
    if not stage.conditional:
      k_noise, k_sample = jax.random.split(rng)
      if z_start is None:
        z_start = jax.random.normal(k_noise, (b,) + self.latent_shape(stage))
      return fn(params, text, text_mask, k_sample, z_start, jnp.float32(t_start), None, null)
    if low is None:
      raise ValueError(f"SR stage {stage.name!r} needs the previous stage's output `low`.")
    # The starting noise is drawn once for the whole output and sliced, so chunking changes only
    # what the temporal layers see, never the noise a frame starts from.
    k_noise, k_sample = jax.random.split(rng)
    per_input = stage.frames_per_input()
    z_all = jax.random.normal(k_noise, (b, low.shape[1] * per_input, h, w, c))
    chunk = stage.chunk_frames or low.shape[1]
    outs = []
    for i, start in enumerate(range(0, low.shape[1], chunk)):
      piece = low[:, start:start + chunk]
      z = z_all[:, start * per_input:(start + piece.shape[1]) * per_input]
      outs.append(fn(params, text, text_mask, jax.random.fold_in(k_sample, i), z, jnp.float32(1.0),
                     piece, null))
    return jnp.concatenate(outs, axis=1)

  def sample(self, params: Mapping, text, text_mask, rng, *, base_start=None, t_start=1.0,
             upto: str | None = None, timer=None):
    """Text-to-video through the cascade (or, with `base_start` — the base stage's latents at
    time `t_start`, see `dreamix.corrupt` — an edit).

    Returns {stage name: video (B, T, H, W, 3) in pixels} for every stage up to `upto` (default:
    all). With a `timer` (`jobs.common.Timer`) each stage's sampling is timed as phase
    `sample_<stage>` (waiting for its result, so the phases add up to the wall time).
    """
    outputs = {}
    low = None
    for i, stage in enumerate(self.stages):
      key = jax.random.fold_in(rng, i)
      with timer(f"sample_{stage.name}") if timer else contextlib.nullcontext():
        if stage.conditional:
          low = self.sample_stage(stage, params[stage.name], text, text_mask, key, low=low)
        else:
          low = self.sample_stage(stage, params[stage.name], text, text_mask, key,
                                  z_start=base_start, t_start=t_start)
        outputs[stage.name] = self.decode(low)
        if timer:
          outputs[stage.name] = jax.block_until_ready(outputs[stage.name])
      if stage.name == upto:
        break
    return outputs


@functools.lru_cache(maxsize=None)
def _param_shardings(backbone, spec: backbone_base.InputSpec, layout: parallel.Layout):
  return backbone_base.param_shardings(backbone, spec, layout)


@functools.lru_cache(maxsize=None)
def _compiled_stage_sampler(stage: Stage, schedule, layout: parallel.Layout | None,
                            trajectory: bool = False, pixel_space: bool = True):
  """One jitted sampler per (stage, schedule, layout, trajectory, space) — all hashable, so equal
  configs share it.
  Params, text, seeds and `t_start` are arguments: new prompts, seeds, noise levels and finetuned
  weights reuse the compiled program. With a layout the inputs arrive laid out on its mesh (params
  by their logical axes, videos and text over the batch axes) and the backbone's activation
  constraints apply. In latent space there is no thresholding and no clipping."""
  apply = parametrisation.v_on_logsnr(stage.backbone, schedule)
  config = stage.sampler if pixel_space else dataclasses.replace(stage.sampler,
                                                                 thresholding="none")

  def run(params, text, text_mask, rng, z_start, t_start, low, null):
    kwargs = {}
    if low is not None:
      k_aug, rng = jax.random.split(rng)
      cond, cond_logsnr = objectives.augment_condition(
          k_aug, stage.upsample(low), schedule, max_t=stage.cond_aug_t, fixed_t=stage.cond_aug_t)
      kwargs = dict(cond=cond, cond_logsnr=cond_logsnr)
    v_fn = sampling.guided_v_fn(apply, params, text, text_mask, guided=config.guided, null=null,
                                **kwargs)
    out = sampling.ddim_sample(v_fn, z_start, rng, schedule=schedule, config=config,
                               t_start=t_start, trajectory=trajectory)
    return jax.tree.map(lambda x: jnp.clip(x, -1.0, 1.0), out) if pixel_space else out

  return jax.jit(run if layout is None else layout.wrap(run))
