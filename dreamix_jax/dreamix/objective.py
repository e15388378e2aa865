"""Dreamix's mixed finetuning objective (paper §4.2): α·L_vid + (1 − α)·L_frame in one jitted step.

L_vid is the stage's denoising loss on the input video with its temporal layers on; L_frame the same
loss on the video's frames shuffled into a set of independent images, computed by the backbone's
frames-only variant (each frame as if alone: the paper's identity temporal attention and masked
temporal convolution). α = 1 is plain video finetuning, α = 0 frames only (image-to-video and
subject-driven generation). The per-variant loss is `train.losses.StageLoss`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dreamix_jax import cascade as cascade_lib
from dreamix_jax.train import losses


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
  if stage.conditional:
    out.pop("low", None)
    out["cond"] = take(losses.upsampled_condition(stage, batch))
  return out


def video_variant(stage: cascade_lib.Stage, batch: dict) -> dict:
  """The full-video variant: temporal layers on; SR conditioning upsampled like the frame variant's."""
  out = dict(batch, temporal_mask=jnp.zeros((batch["video"].shape[0],), jnp.float32))
  if stage.conditional:
    out.pop("low", None)
    out["cond"] = losses.upsampled_condition(stage, batch)
  return out


def make_mixed_loss(loss: losses.StageLoss, stage: cascade_lib.Stage, alpha: float):
  """Dreamix's objective α·L_vid + (1 − α)·L_frame in one call (paper §4.2).

  Each variant has its own key (noise levels, noise, dropout) and its own backbone call: on the
  videos with temporal layers on, and on the shuffled frames in the backbone's static frames-only
  form (`StageLoss.denoise(frames_only=True)`), which computes the frame-masked values without the
  temporal work the mask discards — faster than vmapping the backbone over the two variants or
  folding them into one 2B batch (benchmarks/README.md has the measurements).
  With α = 1 or α = 0 only the variant that counts is computed.
  Returns fn(params, batch, rng) -> (scalar loss, {'loss_video', 'loss_frames'}).
  """
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"alpha must be in [0, 1] (the weight of the full-video loss), got {alpha}.")

  def frames_loss(params, batch, rng):
    noised = loss.noise(batch, rng)
    return loss.score(loss.denoise(params, noised, rng, frames_only=True), noised)

  def mixed(params, batch, rng):
    k_perm, k_vid, k_frm = jax.random.split(rng, 3)
    terms, value = {}, 0.0
    if alpha > 0.0:
      terms["loss_video"] = loss(params, video_variant(stage, batch), k_vid).mean()
      value += alpha * terms["loss_video"]
    if alpha < 1.0:
      terms["loss_frames"] = frames_loss(params, frames_variant(stage, batch, k_perm), k_frm).mean()
      value += (1.0 - alpha) * terms["loss_frames"]
    return value, terms

  return mixed
