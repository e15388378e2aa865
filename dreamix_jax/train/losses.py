"""Denoising losses of one cascade stage, and Dreamix's mixed video/frames objective.

A training batch for a stage is a dict of arrays:
  video:         (B, T, H, W, 3) in [−1, 1] at the stage's resolution
  text, text_mask: (B, L, D), (B, L)
  temporal_mask: (B,) 1 where the example is a set of independent images (frame variant / images
                 packed as frames), 0 for a real video
  low:           (B, T', H', W', 3) the previous stage's view of the video (SR stages only)

Examples flagged by `temporal_mask` get one noise level per frame; videos get one per example.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from dreamix_jax import cascade as cascade_lib
from dreamix_jax.diffusion import objectives, schedules

# loss_fn(params, batch, rng) -> per-example loss (B,)
LossFn = Callable[[dict, dict, jax.Array], jax.Array]


def make_stage_loss(apply_fn, stage: cascade_lib.Stage, schedule: schedules.CosineLogSNR, *,
                    weighting: str = "v", train: bool = True) -> LossFn:
  """The per-example denoising loss of `stage` (v-prediction, configurable weighting)."""

  def loss_fn(params, batch, rng):
    video = batch["video"]
    b, t = video.shape[:2]
    k_lam, k_noise, k_aug, k_drop = jax.random.split(rng, 4)
    lam = objectives.sample_logsnr(k_lam, (b, t), schedule)
    per_frame = batch["temporal_mask"].astype(bool)[:, None]
    lam = jnp.where(per_frame, lam, lam[:, :1])
    noise = jax.random.normal(k_noise, video.shape, video.dtype)
    z = schedules.diffuse(video, noise, lam)
    kwargs = {}
    if stage.kind != "base":
      cond, cond_lam = objectives.augment_condition(k_aug, upsampled_condition(stage, batch),
                                                    schedule, max_t=stage.cond_aug_max_t)
      kwargs = dict(cond=cond, cond_logsnr=cond_lam)
    v = apply_fn(params, z, lam, batch["text"], batch["text_mask"],
                 temporal_mask=batch["temporal_mask"], train=train, rng=k_drop, **kwargs)
    return objectives.v_loss_per_example(v, video, noise, lam, weighting=weighting)

  return loss_fn


def upsampled_condition(stage: cascade_lib.Stage, batch: dict):
  """The SR conditioning at the stage's resolution: `batch['cond']` if present (already upsampled,
  e.g. frames shuffled together with the video), else `stage.upsample(batch['low'])`."""
  if "cond" in batch:
    return batch["cond"]
  return stage.upsample(batch["low"])


def frames_variant(stage: cascade_lib.Stage, batch: dict, rng) -> dict:
  """The frame variant of a video batch: frames shuffled (per example), temporal mask on.

  For SR stages the upsampled conditioning is shuffled with the same permutation, so each frame keeps
  its own low-resolution counterpart.
  """
  video = batch["video"]
  b, t = video.shape[:2]
  perms = jax.vmap(lambda k: jax.random.permutation(k, t))(jax.random.split(rng, b))
  take = lambda x: jnp.take_along_axis(x, perms.reshape((b, t) + (1,) * (x.ndim - 2)), axis=1)
  out = dict(batch, video=take(video), temporal_mask=jnp.ones((b,), jnp.float32))
  if stage.kind != "base":
    out.pop("low", None)
    out["cond"] = take(upsampled_condition(stage, batch))
  return out


def video_variant(stage: cascade_lib.Stage, batch: dict) -> dict:
  """The full-video variant: temporal layers on; SR conditioning upsampled like the frame variant's."""
  out = dict(batch, temporal_mask=jnp.zeros((batch["video"].shape[0],), jnp.float32))
  if stage.kind != "base":
    out.pop("low", None)
    out["cond"] = upsampled_condition(stage, batch)
  return out


def make_mixed_loss(loss_fn: LossFn, stage: cascade_lib.Stage, alpha: float):
  """Dreamix's objective α·L_vid + (1 − α)·L_frame in one call (paper §4.2).

  The two variants are stacked on a leading axis and the loss is `jax.vmap`-ped over it, so both run
  as one batched computation. With α = 1 or α = 0 only the variant that counts is computed.
  Returns fn(params, batch, rng) -> (scalar loss, {'loss_video', 'loss_frames'}).
  """
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"alpha must be in [0, 1] (the weight of the full-video loss), got {alpha}.")

  def mixed(params, batch, rng):
    k_perm, k_vid, k_frm = jax.random.split(rng, 3)
    if alpha == 1.0:
      loss = loss_fn(params, video_variant(stage, batch), k_vid).mean()
      return loss, {"loss_video": loss}
    if alpha == 0.0:
      loss = loss_fn(params, frames_variant(stage, batch, k_perm), k_frm).mean()
      return loss, {"loss_frames": loss}
    both = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), video_variant(stage, batch),
                                  frames_variant(stage, batch, k_perm))
    losses = jax.vmap(loss_fn, in_axes=(None, 0, 0))(params, both, jnp.stack([k_vid, k_frm]))
    per_variant = losses.mean(axis=1)
    loss = alpha * per_variant[0] + (1.0 - alpha) * per_variant[1]
    return loss, {"loss_video": per_variant[0], "loss_frames": per_variant[1]}

  return mixed
