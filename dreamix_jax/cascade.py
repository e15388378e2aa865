"""The cascade: stages, the resize ops between them, and cascade sampling.

A cascade is a base stage (text → low-resolution video) followed by super-resolution stages, each
either temporal (TSR: ×k frames, same size) or spatial (SSR: ×k height and width, same frames). An SR
stage is conditioned on the previous stage's output upsampled to its own resolution (frame repetition
in time, bilinear in space) and noise-augmented at a fixed level at sampling time.

Config layout (an `ml_collections.ConfigDict`, see `configs/cascades/`):
  cascade.name, cascade.order = ('base', 'tsr1', ...), cascade.schedule.{logsnr_min, logsnr_max},
  cascade.text.{max_length, dim}, cascade.stages.<name>.{kind, frames, height, width, fps, factor,
  unet, sampler, cond_aug_t, cond_aug_max_t, chunk_frames, finetune}.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import ml_collections

from dreamix_jax import parallel
from dreamix_jax.diffusion import objectives, sampling, schedules
from dreamix_jax.backbones import unet

KINDS = ("base", "tsr", "ssr")


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
  unet: unet.UNetConfig
  sampler: sampling.SamplerConfig
  cond_aug_t: float = 0.0
  cond_aug_max_t: float = 0.0
  chunk_frames: int = 0
  finetune: bool = True

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"Stage {self.name!r}: kind {self.kind!r} is not one of {KINDS}.")
    if (self.kind == "base") == self.unet.conditional:
      raise ValueError(f"Stage {self.name!r}: unet.conditional must be True exactly for SR stages.")
    f = self.unet.downsample_factor
    if self.height % f or self.width % f:
      raise ValueError(f"Stage {self.name!r}: {self.height}×{self.width} is not divisible by the "
                       f"U-Net's downsampling factor {f}; change the resolution or channel_mult.")

  @property
  def shape(self) -> tuple[int, int, int]:
    return (self.frames, self.height, self.width)

  def input_shape(self) -> tuple[int, int, int]:
    """(frames, height, width) of the previous stage's output."""
    if self.kind == "tsr":
      return (self.frames // self.factor, self.height, self.width)
    if self.kind == "ssr":
      return (self.frames, self.height // self.factor, self.width // self.factor)
    return self.shape

  def upsample(self, low):
    """Previous stage's output (B, *input_shape, 3) -> this stage's resolution."""
    if self.kind == "tsr":
      return repeat_frames(low, self.factor)
    if self.kind == "ssr":
      return bilinear_upsample(low, self.factor)
    raise ValueError("The base stage has no conditioning input.")

  def downsample(self, video):
    """This stage's resolution -> the previous stage's (frame skipping / area resize)."""
    if self.kind == "tsr":
      return skip_frames(video, self.factor)
    if self.kind == "ssr":
      return area_downsample(video, self.factor)
    raise ValueError("The base stage has no lower-resolution input.")


def stage_from_config(name: str, cfg: ml_collections.ConfigDict) -> Stage:
  return Stage(
      name=name, kind=cfg.kind, frames=cfg.frames, height=cfg.height, width=cfg.width, fps=cfg.fps,
      factor=cfg.factor, unet=unet.UNetConfig.from_config(cfg.unet),
      sampler=sampling.SamplerConfig(**dict(cfg.sampler)), cond_aug_t=cfg.cond_aug_t,
      cond_aug_max_t=cfg.cond_aug_max_t, chunk_frames=cfg.chunk_frames, finetune=cfg.finetune)


# --------------------------------------------------------------------------------------------------
# The cascade.

class Cascade:
  """Stages in order, the shared noise schedule and the text-embedding size they all take.

  `layout` (a `parallel.Layout`, or None for one device) is where its computations run: sampling
  and finetuning jit their steps with shardings on its mesh.
  """

  def __init__(self, stages: list[Stage], schedule: schedules.CosineLogSNR, text_len: int,
               text_dim: int, layout: parallel.Layout | None = None):
    if not stages or stages[0].kind != "base" or any(s.kind == "base" for s in stages[1:]):
      raise ValueError("A cascade is one base stage followed by SR stages.")
    for prev, cur in zip(stages, stages[1:]):
      if cur.input_shape() != prev.shape:
        raise ValueError(f"Stage {cur.name!r} expects input {cur.input_shape()} but {prev.name!r} "
                         f"produces {prev.shape}.")
    self.stages = list(stages)
    self.schedule = schedule
    self.text_len = text_len
    self.text_dim = text_dim
    self.layout = layout

  @classmethod
  def from_config(cls, cfg: ml_collections.ConfigDict,
                  layout: parallel.Layout | None = None) -> "Cascade":
    missing = [n for n in cfg.order if n not in cfg.stages]
    if missing:
      raise ValueError(f"cascade.order names stages {missing} that cascade.stages does not define "
                       f"(defined: {sorted(cfg.stages.keys())}).")
    return cls([stage_from_config(n, cfg.stages[n]) for n in cfg.order],
               schedules.CosineLogSNR(cfg.schedule.logsnr_min, cfg.schedule.logsnr_max),
               cfg.text.max_length, cfg.text.dim, layout)

  @property
  def names(self) -> list[str]:
    return [s.name for s in self.stages]

  def stage(self, name: str) -> Stage:
    for s in self.stages:
      if s.name == name:
        return s
    raise KeyError(f"No stage {name!r} in this cascade; stages: {self.names}.")

  def init_params(self, rng, stage: Stage):
    f, h, w = stage.shape
    return unet.init_params(stage.unet, rng, frames=f, height=h, width=w, text_len=self.text_len,
                            text_dim=self.text_dim)

  def abstract_params(self, stage: Stage):
    f, h, w = stage.shape
    return unet.abstract_params(stage.unet, frames=f, height=h, width=w, text_len=self.text_len,
                                text_dim=self.text_dim)

  def param_shardings(self, stage: Stage):
    """Shardings of `stage`'s parameters on `self.layout` (from logical axis names)."""
    if self.layout is None:
      raise ValueError("This cascade has no layout (mesh); set `cascade.layout` first.")
    return _param_shardings(stage, self.text_len, self.text_dim, self.layout)

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
    """Samples one stage. text: (B, L, D); text_mask: (B, L).

    Base stage: from pure noise, or from `z_start` (B, T, H, W, 3) at time `t_start` (editing).
    SR stage: conditioned on the previous stage's output `low`, in chunks of `stage.chunk_frames`
    input frames when set. Returns (B, T, H, W, 3) clipped to [−1, 1].
    With `trajectory=True` (base stage only) returns `(video, xs)`, xs (num_steps, B, T, H, W, 3)
    the x̂0 of every sampler step clipped to [−1, 1] (`sampling.ddim_sample`).
    """
    if trajectory and stage.kind != "base":
      raise ValueError(f"trajectory=True is for the base stage; {stage.name!r} is {stage.kind}.")
    raw = _compiled_stage_sampler(stage, self.schedule, self.layout, trajectory)
    params = self.place_params(stage, params)
    if self.layout is None:
      fn = raw
    else:
      layout = self.layout

      def fn(params, text, text_mask, rng, z, t, low):
        text, text_mask, z, low = parallel.put((text, text_mask, z, low),
                                               layout.batch_shardings((text, text_mask, z, low)))
        rng, t = parallel.put((rng, t), layout.replicated)
        return raw(params, text, text_mask, rng, z, t, low)
    if stage.kind == "base":
      b = text.shape[0]
      k_noise, k_sample = jax.random.split(rng)
      if z_start is None:
        z_start = jax.random.normal(k_noise, (b,) + stage.shape + (3,))
      return fn(params, text, text_mask, k_sample, z_start, jnp.float32(t_start), None)
    if low is None:
      raise ValueError(f"SR stage {stage.name!r} needs the previous stage's output `low`.")
    chunk = stage.chunk_frames or low.shape[1]
    outs = []
    for i, start in enumerate(range(0, low.shape[1], chunk)):
      piece = low[:, start:start + chunk]
      k_noise, k_sample = jax.random.split(jax.random.fold_in(rng, i))
      out_frames = piece.shape[1] * (stage.factor if stage.kind == "tsr" else 1)
      z = jax.random.normal(k_noise, (piece.shape[0], out_frames, stage.height, stage.width, 3))
      outs.append(fn(params, text, text_mask, k_sample, z, jnp.float32(1.0), piece))
    return jnp.concatenate(outs, axis=1)

  def sample(self, params: Mapping, text, text_mask, rng, *, base_start=None, t_start=1.0,
             upto: str | None = None, timer=None):
    """Text-to-video through the cascade (or, with `base_start` at time `t_start`, an edit).

    Returns {stage name: video} for every stage up to `upto` (default: all). With a `timer`
    (`jobs.common.Timer`) each stage's sampling is timed as phase `sample_<stage>` (waiting for
    its result, so the phases add up to the wall time).
    """
    outputs = {}
    low = None
    for i, stage in enumerate(self.stages):
      key = jax.random.fold_in(rng, i)
      with timer(f"sample_{stage.name}") if timer else contextlib.nullcontext():
        if stage.kind == "base":
          low = self.sample_stage(stage, params[stage.name], text, text_mask, key,
                                  z_start=base_start, t_start=t_start)
        else:
          low = self.sample_stage(stage, params[stage.name], text, text_mask, key, low=low)
        if timer:
          low = jax.block_until_ready(low)
      outputs[stage.name] = low
      if stage.name == upto:
        break
    return outputs


@functools.lru_cache(maxsize=None)
def _param_shardings(stage: Stage, text_len: int, text_dim: int, layout: parallel.Layout):
  f, h, w = stage.shape
  return layout.param_shardings(unet.abstract_params(
      stage.unet, frames=f, height=h, width=w, text_len=text_len, text_dim=text_dim))


@functools.lru_cache(maxsize=None)
def _compiled_stage_sampler(stage: Stage, schedule: schedules.CosineLogSNR,
                            layout: parallel.Layout | None, trajectory: bool = False):
  """One jitted sampler per (stage, schedule, layout, trajectory) — all hashable, so equal configs
  share it.
  Params, text, seeds and `t_start` are arguments: new prompts, seeds, noise levels and finetuned
  weights reuse the compiled program. With a layout the inputs arrive laid out on its mesh (params
  by their logical axes, videos and text over the batch axes) and the U-Net's activation
  constraints apply."""
  _, apply = unet.make_denoiser(stage.unet)

  def run(params, text, text_mask, rng, z_start, t_start, low):
    kwargs = {}
    if low is not None:
      k_aug, rng = jax.random.split(rng)
      cond, cond_logsnr = objectives.augment_condition(
          k_aug, stage.upsample(low), schedule, max_t=stage.cond_aug_t, fixed_t=stage.cond_aug_t)
      kwargs = dict(cond=cond, cond_logsnr=cond_logsnr)
    v_fn = sampling.guided_v_fn(apply, params, text, text_mask, guided=stage.sampler.guided,
                                **kwargs)
    out = sampling.ddim_sample(v_fn, z_start, rng, schedule=schedule, config=stage.sampler,
                               t_start=t_start, trajectory=trajectory)
    return jax.tree.map(lambda x: jnp.clip(x, -1.0, 1.0), out)

  return jax.jit(run if layout is None else layout.wrap(run))
