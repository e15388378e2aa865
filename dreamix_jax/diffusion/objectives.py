"""Training objectives: the v-prediction denoising loss and noise-conditioning augmentation.

Loss weighting. With `e = v̂ − v`, the three usual parametrisations differ by a λ-dependent factor:
  ‖x̂ − x‖² = σ² ‖e‖²,   ‖ε̂ − ε‖² = α² ‖e‖²,   ‖v̂ − v‖² = ‖e‖²  (= (1 + e^λ) ‖x̂ − x‖²).
`weighting` picks which of them the loss is ("v", the default of Imagen Video; "eps"; "x").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dreamix_jax.diffusion import schedules

WEIGHTINGS = ("v", "eps", "x")


def loss_weight(logsnr, weighting: str):
  """Per-element factor turning the v-MSE into the chosen objective; `logsnr` of any shape."""
  if weighting == "v":
    return jnp.ones_like(logsnr)
  if weighting == "eps":
    return jax.nn.sigmoid(logsnr)
  if weighting == "x":
    return jax.nn.sigmoid(-logsnr)
  raise ValueError(f"Unknown loss weighting {weighting!r}; choose one of {WEIGHTINGS}.")


def sample_logsnr(rng, shape, schedule: schedules.CosineLogSNR, *, t_max: float = 1.0,
                  shift: float = 0.0, mixture: tuple[float, float, float] = (0.0, 0.0, 0.0)):
  """λ(t) + shift with t ~ U(0, t_max), of the given shape ((B,) per example, (B, T) per frame),
  kept inside the schedule's [logsnr_min, logsnr_max].

  A negative `shift` is the "shifted cosine" of simple diffusion (Hoogeboom et al., 2023): it moves
  training towards noisier inputs, where redundant pixels (many frames showing one object, or a
  high resolution) no longer give the content away (measured on the moving-shapes base:
  docs/motion_direction.md). `mixture` = (share, low, high): that share of the draws is instead
  uniform in [low, high], e.g. to weight the levels where a sample's motion is decided.
  """
  lam = schedule.logsnr(jax.random.uniform(rng, shape, maxval=t_max))
  if shift:
    lam = jnp.clip(lam + shift, schedule.logsnr_min, schedule.logsnr_max)
  share, low, high = mixture
  if share > 0:  # its own keys: the schedule's draws are unchanged
    k_pick, k_level = jax.random.split(jax.random.fold_in(rng, 1))
    level = jax.random.uniform(k_level, shape, minval=low, maxval=high)
    lam = jnp.where(jax.random.bernoulli(k_pick, share, shape), level, lam)
  return lam


def v_loss_per_example(v_pred, x, noise, logsnr, *, weighting: str = "v", frame_weight=None):
  """Mean squared error of the v-prediction per example: (B, T, H, W, C) -> (B,).

  logsnr: (B,) or (B, T). frame_weight: optional (B, T) weights (e.g. to ignore padding frames).
  """
  err = jnp.square(v_pred.astype(jnp.float32) - schedules.v_target(x, noise, logsnr))
  per_frame = err.mean(axis=(2, 3, 4))  # (B, T)
  w = loss_weight(logsnr, weighting)
  per_frame = per_frame * (w[:, None] if w.ndim == 1 else w)
  if frame_weight is None:
    return per_frame.mean(axis=1)
  return (per_frame * frame_weight).sum(axis=1) / jnp.maximum(frame_weight.sum(axis=1), 1e-8)


def augment_condition(rng, cond, schedule: schedules.CosineLogSNR, *, max_t: float,
                      fixed_t: float | None = None):
  """Noise-conditioning augmentation of an SR stage's low-resolution input.

  Training: t' ~ U(0, max_t) per example; sampling: pass `fixed_t`. Returns (z_cond, cond_logsnr)
  with z_cond = α(t') cond + σ(t') ε of cond's shape (B, T, H, W, 3) and cond_logsnr of shape (B,).
  """
  b = cond.shape[0]
  k_t, k_n = jax.random.split(rng)
  if fixed_t is None:
    t = jax.random.uniform(k_t, (b,), maxval=max_t)
  else:
    t = jnp.full((b,), fixed_t, jnp.float32)
  logsnr = schedule.logsnr(t)
  noise = jax.random.normal(k_n, cond.shape, cond.dtype)
  return schedules.diffuse(cond, noise, logsnr), logsnr
