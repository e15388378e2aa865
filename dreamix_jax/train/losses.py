"""The denoising loss of one cascade stage (Dreamix's mixed objective builds on it:
`dreamix_jax.dreamix.objective`).

A training batch for a stage is a dict of arrays:
  video:         (B, T, H, W, 3) in [−1, 1] at the stage's resolution
  text, text_mask: (B, L, D), (B, L)
  temporal_mask: (B,) 1 where the example is a set of independent images (frame variant / images
                 packed as frames), 0 for a real video
  low:           (B, T', H', W', 3) the previous stage's view of the video (SR stages only)

Examples flagged by `temporal_mask` get one noise level per frame; videos get one per example.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from dreamix_jax import cascade as cascade_lib
from dreamix_jax.diffusion import objectives, schedules


@dataclasses.dataclass(frozen=True)
class StageLoss:
  """The per-example denoising loss of one stage: `loss(params, batch, rng) -> (B,)`.

  It is three steps, exposed so that `dreamix.objective.make_mixed_loss` can give the frame variant a
  frames-only
  U-Net call: `noise` (batch, rng -> the noised inputs and the
  targets; no parameters), `denoise` (params, noised, rng -> v̂ (B, T, H, W, 3), the U-Net call)
  and `score` (v̂, noised -> (B,)).
  `rng` is split in four: log-SNR, noise and conditioning augmentation (`noise`), dropout
  (`denoise`). `logsnr_shift` moves the training log-SNRs and `logsnr_mixture` (share, low, high)
  draws a share of them uniformly in [low, high] (see `objectives.sample_logsnr`).
  """

  apply_fn: Callable
  stage: cascade_lib.Stage
  schedule: schedules.CosineLogSNR
  weighting: str = "v"
  train: bool = True
  logsnr_shift: float = 0.0
  logsnr_mixture: tuple[float, float, float] = (0.0, 0.0, 0.0)

  def noise(self, batch: dict, rng) -> dict:
    """{z, logsnr, video, eps, text, text_mask, temporal_mask[, cond, cond_logsnr]}: the batch
    noised to per-example (videos) or per-frame (frame sets) log-SNRs drawn from the schedule."""
    video = batch["video"]
    b, t = video.shape[:2]
    k_lam, k_noise, k_aug, _ = jax.random.split(rng, 4)
    lam = objectives.sample_logsnr(k_lam, (b, t), self.schedule, shift=self.logsnr_shift,
                                   mixture=self.logsnr_mixture)
    per_frame = batch["temporal_mask"].astype(bool)[:, None]
    lam = jnp.where(per_frame, lam, lam[:, :1])
    eps = jax.random.normal(k_noise, video.shape, video.dtype)
    out = dict(z=schedules.diffuse(video, eps, lam), logsnr=lam, video=video, eps=eps,
               text=batch["text"], text_mask=batch["text_mask"],
               temporal_mask=batch["temporal_mask"])
    if self.stage.conditional:
      out["cond"], out["cond_logsnr"] = objectives.augment_condition(
          k_aug, upsampled_condition(self.stage, batch), self.schedule,
          max_t=self.stage.cond_aug_max_t)
    return out

  def denoise(self, params, noised: dict, rng, *, frames_only: bool = False):
    """v̂ of the U-Net for `noised` (dropout keyed by `rng`'s fourth split). `frames_only`
    (static): every example is a frame set, so the U-Net skips the work its temporal mask would
    discard (`backbones.unet.SpaceTimeUNet`); `noised['temporal_mask']` is then not read."""
    kwargs = {}
    if self.stage.conditional:
      kwargs = dict(cond=noised["cond"], cond_logsnr=noised["cond_logsnr"])
    if frames_only:
      kwargs["frames_only"] = True
    else:
      kwargs["temporal_mask"] = noised["temporal_mask"]
    return self.apply_fn(params, noised["z"], noised["logsnr"], noised["text"],
                         noised["text_mask"], train=self.train, rng=jax.random.split(rng, 4)[3],
                         **kwargs)

  def score(self, v, noised: dict):
    """(B,) loss of v̂ against the targets in `noised`."""
    return objectives.v_loss_per_example(v, noised["video"], noised["eps"], noised["logsnr"],
                                         weighting=self.weighting)

  def __call__(self, params, batch: dict, rng):
    noised = self.noise(batch, rng)
    return self.score(self.denoise(params, noised, rng), noised)


def make_stage_loss(apply_fn, stage: cascade_lib.Stage, schedule: schedules.CosineLogSNR, *,
                    weighting: str = "v", train: bool = True,
                    logsnr_shift: float = 0.0,
                    logsnr_mixture: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> StageLoss:
  """The per-example denoising loss of `stage` (v-prediction, configurable weighting and training
  log-SNR shift; see `StageLoss`)."""
  share, low, high = logsnr_mixture
  if not 0.0 <= share <= 1.0 or (share > 0 and low >= high):
    raise ValueError(f"logsnr_mixture (share, low, high) = {tuple(logsnr_mixture)} needs a share in "
                     "[0, 1] and low < high.")
  return StageLoss(apply_fn, stage, schedule, weighting, train, logsnr_shift,
                   (float(share), float(low), float(high)))


def upsampled_condition(stage: cascade_lib.Stage, batch: dict):
  """The SR conditioning at the stage's resolution: `batch['cond']` if present (already upsampled,
  e.g. frames shuffled together with the video), else `stage.upsample(batch['low'])`."""
  if "cond" in batch:
    return batch["cond"]
  return stage.upsample(batch["low"])
