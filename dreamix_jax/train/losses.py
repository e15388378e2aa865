"""The denoising loss of one cascade stage (Dreamix's mixed objective builds on it:
`dreamix_jax.dreamix.objective`).

A training batch for a stage is a dict of arrays:
  video:         (B, T, H, W, 3) in [−1, 1] at the stage's resolution
  text, text_mask: (B, L, D), (B, L)
  temporal_mask: (B,) 1 where the example is a set of independent images (frame variant / images
                 packed as frames), 0 for a real video
  low:           (B, T', H', W', 3) the previous stage's view of the video (SR stages only)

Examples flagged by `temporal_mask` get one noise level per frame; videos get one per example
(optionally with one context frame less noisy than the rest, see `StageLoss`).
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
  (`denoise`). `logsnr_shift` moves the training log-SNRs (see `objectives.sample_logsnr`).

  `context_share` > 0: that share of the videos (not frame sets) gets one *context frame*, drawn
  uniformly among the T, whose log-SNR is raised to at least u ~ U[context_logsnr] (e.g. 2..8:
  nearly clean), the other frames keeping the example's level — per-frame noise levels as in
  diffusion forcing (Chen et al. 2024). The denoiser then sees the object plainly in one frame and
  must place it in the others, where only the caption says which way it went: a direct gradient
  for the motion words at the noise levels where a sample's motion is decided.
  """

  apply_fn: Callable
  stage: cascade_lib.Stage
  schedule: schedules.CosineLogSNR
  weighting: str = "v"
  train: bool = True
  logsnr_shift: float = 0.0
  context_share: float = 0.0
  context_logsnr: tuple[float, float] = (2.0, 8.0)

  def __post_init__(self):
    lo, hi = self.context_logsnr
    if not 0.0 <= self.context_share <= 1.0 or lo > hi:
      raise ValueError(f"context_share {self.context_share} must be in [0, 1] and context_logsnr "
                       f"{self.context_logsnr} a (low, high) range with low <= high.")

  def noise(self, batch: dict, rng, logsnr_range=None) -> dict:
    """{z, logsnr, video, eps, text, text_mask, temporal_mask[, cond, cond_logsnr]}: the batch
    noised to per-example (videos) or per-frame (frame sets) log-SNRs drawn from the schedule, or,
    with `logsnr_range` (low, high), to one log-SNR per example drawn uniformly from it."""
    video = batch["video"]
    b, t = video.shape[:2]
    k_lam, k_noise, k_aug, _ = jax.random.split(rng, 4)
    if logsnr_range is None:
      lam = objectives.sample_logsnr(k_lam, (b, t), self.schedule, shift=self.logsnr_shift)
      per_frame = batch["temporal_mask"].astype(bool)[:, None]
      lam = jnp.where(per_frame, lam, lam[:, :1])
      if self.context_share > 0:
        lam = self._with_context_frames(lam, per_frame[:, 0], k_lam)
    else:
      lam = jax.random.uniform(k_lam, (b, 1), minval=logsnr_range[0], maxval=logsnr_range[1])
      lam = jnp.broadcast_to(lam, (b, t))
    eps = jax.random.normal(k_noise, video.shape, video.dtype)
    out = dict(z=schedules.diffuse(video, eps, lam), logsnr=lam, video=video, eps=eps,
               text=batch["text"], text_mask=batch["text_mask"],
               temporal_mask=batch["temporal_mask"])
    if self.stage.conditional:
      out["cond"], out["cond_logsnr"] = objectives.augment_condition(
          k_aug, upsampled_condition(self.stage, batch), self.schedule,
          max_t=self.stage.cond_aug_max_t)
    return out

  def _with_context_frames(self, lam, frame_set, rng):
    """`lam` (B, T) with one frame of a `context_share` of the videos (`frame_set` (B,) False)
    raised to at least a log-SNR drawn from `context_logsnr`."""
    b, t = lam.shape
    k_pick, k_frame, k_level = jax.random.split(jax.random.fold_in(rng, 1), 3)
    chosen = jax.random.bernoulli(k_pick, self.context_share, (b,)) & ~frame_set
    frame = jax.random.randint(k_frame, (b,), 0, t)
    level = jax.random.uniform(k_level, (b,), minval=self.context_logsnr[0],
                               maxval=self.context_logsnr[1])
    context = chosen[:, None] & (jnp.arange(t)[None] == frame[:, None])
    return jnp.where(context, jnp.maximum(lam, level[:, None]), lam)

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
                    logsnr_shift: float = 0.0, context_share: float = 0.0,
                    context_logsnr: tuple[float, float] = (2.0, 8.0)) -> StageLoss:
  """The per-example denoising loss of `stage` (v-prediction, configurable weighting, training
  log-SNR shift and context frames; see `StageLoss`)."""
  return StageLoss(apply_fn, stage, schedule, weighting, train, logsnr_shift, context_share,
                   tuple(context_logsnr))


def upsampled_condition(stage: cascade_lib.Stage, batch: dict):
  """The SR conditioning at the stage's resolution: `batch['cond']` if present (already upsampled,
  e.g. frames shuffled together with the video), else `stage.upsample(batch['low'])`."""
  if "cond" in batch:
    return batch["cond"]
  return stage.upsample(batch["low"])


@dataclasses.dataclass(frozen=True)
class CaptionContrast:
  """The denoising loss plus a caption-contrast hinge: on the same noisy input, the error under a
  counterfactual caption (one attribute changed) must exceed the true caption's by `margin`.

  Why: a denoiser can fit its data while ignoring a word whenever the noisy frames already show what
  the word says, and at the noise levels where they do not (where a sampler settles that attribute)
  the word lowers the error by only a few percent, so the plain loss teaches it slowly. The hinge
  asks for that gap directly, as discriminative tuning of text-to-image models does (Qu et al.,
  CVPR 2024, "Discriminative Probing and Tuning for Text-to-Image Generation"). The contrast
  examples are the batch's videos noised again (own noise) at a log-SNR drawn uniformly from
  [logsnr_min, logsnr_max] — the levels where the attribute is settled, a small share of the
  schedule's — and with e, e' their per-example v-errors (`StageLoss.score`) under the true and the
  counterfactual caption,

    contrast = mean over covered examples of max(0, (1 + margin)·e − e'),

  covered: `contrast_weight` 1 (videos with their caption: not images, not dropped captions). The
  hinge is in the loss's own units, so `weight` = 1 makes it as strong as the denoising loss, and
  it stops pushing once the gap is reached (over-commitment to the word is capped at `margin`).
  Cost: two more U-Net calls on the batch (true and counterfactual caption).

  Batch keys beyond `StageLoss`'s: contrast_text (B, L, D), contrast_text_mask (B, L),
  contrast_weight (B,). Returns fn(params, batch, rng) -> (scalar, {'loss_denoise',
  'loss_contrast', 'contrast_gap' (mean of (e' − e)/e over covered examples), 'contrast_share'
  (fraction of the batch covered)}).
  """

  loss: StageLoss
  weight: float = 1.0
  margin: float = 0.05
  logsnr_min: float = -7.0
  logsnr_max: float = -2.0

  def __post_init__(self):
    if self.weight < 0 or self.margin < 0:
      raise ValueError(f"Caption contrast needs weight >= 0 and margin >= 0, got weight="
                       f"{self.weight}, margin={self.margin}.")
    if self.logsnr_min >= self.logsnr_max:
      raise ValueError(f"Caption contrast log-SNR range [{self.logsnr_min}, {self.logsnr_max}] "
                       "is empty.")

  def __call__(self, params, batch: dict, rng):
    k_denoise, k_contrast = jax.random.split(rng)
    denoise = self.loss(params, batch, k_denoise).mean()
    noised = self.loss.noise(batch, k_contrast, (self.logsnr_min, self.logsnr_max))
    err = self.loss.score(self.loss.denoise(params, noised, k_contrast), noised)
    counter = dict(noised, text=batch["contrast_text"], text_mask=batch["contrast_text_mask"])
    err_counter = self.loss.score(self.loss.denoise(params, counter, k_contrast), noised)
    covered = batch["contrast_weight"].astype(jnp.float32)
    count = jnp.maximum(covered.sum(), 1.0)
    hinge = jax.nn.relu((1.0 + self.margin) * err - err_counter)
    contrast = (hinge * covered).sum() / count
    gap = (jax.lax.stop_gradient((err_counter - err) / jnp.maximum(err, 1e-12)) * covered).sum()
    terms = dict(loss_denoise=denoise, loss_contrast=contrast, contrast_gap=gap / count,
                 contrast_share=covered.mean())
    return denoise + self.weight * contrast, terms
