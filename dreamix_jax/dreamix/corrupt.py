"""Dreamix's input corruption (paper §4.1): downsample to the base resolution, then noise to level s.

The edit keeps the corrupted video's coarse information (motion, layout, colors) and lets the base
model re-synthesise everything the noise destroyed. `s = 0` adds no noise, `s = 1` is pure noise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dreamix_jax import cascade as cascade_lib
from dreamix_jax.diffusion import schedules


def to_stage(cascade: cascade_lib.Cascade, video, from_stage: str, to_stage: str):
  """Downsamples a video at `from_stage`'s resolution to `to_stage`'s (an earlier stage) by applying
  every intermediate stage's `downsample` (frame skipping for TSR, area resize for SSR).

  video: (B, T, H, W, 3) -> (B, T', H', W', 3).
  """
  names = cascade.names
  hi, lo = names.index(from_stage), names.index(to_stage)
  if lo > hi:
    raise ValueError(f"Cannot downsample from {from_stage!r} to the later stage {to_stage!r}.")
  for stage in reversed(cascade.stages[lo + 1:hi + 1]):
    video = stage.downsample(video)
  return video


def corrupt(video_low, s, rng, schedule: schedules.CosineLogSNR):
  """z_s = α_s v + σ_s ε at time `s` ∈ [0, 1] (exactly `video_low` at s = 0). (B, ...) -> (B, ...)."""
  s = jnp.asarray(s, jnp.float32)
  lam = jnp.full((video_low.shape[0],), schedule.logsnr(s))
  noise = jax.random.normal(rng, video_low.shape, video_low.dtype)
  return jnp.where(s > 0, schedules.diffuse(video_low, noise, lam), video_low)


def check_noise_level(s: float) -> float:
  if not 0.0 <= s <= 1.0:
    raise ValueError(f"The noise level s must be in [0, 1] (0 = no noise, 1 = pure noise), got {s}.")
  return float(s)
