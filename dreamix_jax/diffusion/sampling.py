"""Stochastic DDIM sampling with classifier-free guidance, in one `lax.scan`.

One step from time t to s < t (Imagen Video's "noise correction" form of DDIM):
  x̂, ε̂ = denoiser(z_t)                      (guided, optionally dynamically thresholded)
  c² = η² σ_s² (1 − e^{λ_t − λ_s})             (η = 0: deterministic DDIM; η = 1: ancestral)
  z_s = α_s x̂ + sqrt(σ_s² − c²) ε̂ + c ε'
Steps are uniform in t on `[0, t_start]`, so editing can start from any noise level `s = t_start`
(`t_start` is a traced scalar: one compiled sampler serves every `s`). `t_start = 0` returns the input.
A `time_shift` k > 1 warps that grid towards the noisy end, u ↦ k u / (1 + (k − 1) u) on the
fractions u of `t_start` (Esser et al. 2024's timestep shift; `t_start` and 0 stay the ends): more
of the steps fall where the layout — in the moving-shapes world, the direction of motion — is
decided.

Guidance follows Imagen: ε̃ = w ε_c + (1 − w) ε_u (w = 1 is off). Since x̂ and ε̂ are affine in v̂ with
weights that sum to one, the same combination is applied to v̂. Oscillating guidance (Imagen Video)
uses `w_high` for the first `oscillate_after` steps, then alternates `w_high`, `w_low`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dreamix_jax.diffusion import schedules

THRESHOLDING = ("dynamic", "static", "none")

# v_fn(z, logsnr) -> (v_cond, v_uncond or None). `logsnr` has shape (B,).
VFn = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array | None]]


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Settings of one stage's sampler (see the module docstring)."""

  num_steps: int = 64
  eta: float = 0.0
  guidance: float = 1.0
  guidance_low: float | None = None
  oscillate_after: int = 0
  time_shift: float = 1.0
  thresholding: str = "dynamic"
  threshold_percentile: float = 99.5

  def __post_init__(self):
    if self.num_steps < 1:
      raise ValueError(f"num_steps must be ≥ 1, got {self.num_steps}.")
    if not 0.0 <= self.eta <= 1.0:
      raise ValueError(f"eta must be in [0, 1], got {self.eta}.")
    if self.time_shift <= 0.0:
      raise ValueError(f"time_shift must be > 0 (1: uniform steps), got {self.time_shift}.")
    if self.thresholding not in THRESHOLDING:
      raise ValueError(f"thresholding {self.thresholding!r} is not one of {THRESHOLDING}.")

  @property
  def guided(self) -> bool:
    """Whether any step needs the unconditional branch."""
    return bool(np.any(self.guidance_weights() != 1.0))

  def guidance_weights(self) -> np.ndarray:
    """Per-step guidance weights, shape (num_steps,)."""
    w = np.full((self.num_steps,), self.guidance, np.float32)
    if self.guidance_low is not None:
      late = np.arange(self.num_steps) >= self.oscillate_after
      odd = (np.arange(self.num_steps) - self.oscillate_after) % 2 == 1
      w[late & odd] = self.guidance_low
    return w


def threshold(x, mode: str, percentile: float = 99.5):
  """Imagen's thresholding of x̂: (B, ...) -> (B, ...).

  dynamic: s = max(1, percentile of |x̂| per example); x̂ ← clip(x̂, −s, s) / s. static: clip to [−1, 1].
  """
  if mode == "none":
    return x
  if mode == "static":
    return jnp.clip(x, -1.0, 1.0)
  s = jnp.maximum(row_percentile(jnp.abs(x.reshape(x.shape[0], -1)), percentile), 1.0)
  s = s.reshape((-1,) + (1,) * (x.ndim - 1))
  return jnp.clip(x, -s, s) / s


def row_percentile(flat, percentile: float):
  """`jnp.percentile(flat, percentile, axis=1)` (linear interpolation) for (B, N) -> (B,), computed
  from the `N − floor(q)` largest values (`lax.top_k`, q = percentile/100 · (N − 1)) instead of a
  full sort (for the 99.5th percentile of a 16×24×40×3 video, 232 values): the sampler step's
  thresholding becomes a negligible share of a small denoiser call (benchmarks/README.md)."""
  if not 0.0 <= percentile <= 100.0:
    raise ValueError(f"percentile must be in [0, 100], got {percentile}.")
  n = flat.shape[1]
  q = percentile / 100.0 * (n - 1)
  lo = int(np.floor(q))
  frac = q - lo
  top = jax.lax.top_k(flat, n - lo)[0]  # descending; top[:, -1] is the ascending lo-th value
  below = top[:, -1]
  above = top[:, -2] if n - lo >= 2 else below
  return below + frac * (above - below)


def step_times(num_steps: int, t_start=1.0, time_shift: float = 1.0):
  """The sampler's time grid, (num_steps + 1,) from `t_start` down to 0 (uniform in t, warped
  towards `t_start` by `time_shift` > 1); step k denoises at time `[k]` and lands at `[k + 1]`."""
  t_start = jnp.asarray(t_start, jnp.float32)
  u = 1.0 - jnp.arange(num_steps + 1, dtype=jnp.float32) / num_steps
  return t_start * (time_shift * u / (1.0 + (time_shift - 1.0) * u))


def ddim_sample(v_fn: VFn, z_start, rng, *, schedule: schedules.CosineLogSNR,
                config: SamplerConfig, t_start=1.0, trajectory: bool = False):
  """Runs the sampler from `z_start` at time `t_start` down to 0 and returns x̂_0 (B, ...).

  v_fn returns the conditional and (when `config.guided`) unconditional v̂ for a batch; build it
  with `guided_v_fn` so both branches run as one batched call.
  With `trajectory=True` (static) it returns `(x̂_0, xs)`: xs (num_steps, B, ...) is the guided,
  thresholded x̂ the denoiser predicted at every step, from the noisiest on (the last equals x̂_0
  when `t_start > 0`), which shows at which noise level a sample's content was decided.
  """
  n = config.num_steps
  grid = step_times(n, t_start, config.time_shift)
  weights = jnp.asarray(config.guidance_weights())
  keys = jax.random.split(rng, n)
  batch = z_start.shape[0]

  def step(z, xs):
    t, s, w, key = xs
    lam_t = jnp.full((batch,), schedule.logsnr(t))
    lam_s = schedule.logsnr(s)
    v_c, v_u = v_fn(z, lam_t)
    v = v_c if v_u is None else w * v_c + (1.0 - w) * v_u
    x = threshold(schedules.x_from_v(z, v, lam_t), config.thresholding,
                  config.threshold_percentile)
    alpha_t, sigma_t = schedules.alpha_sigma(lam_t[0])
    eps = (z - alpha_t * x) / sigma_t
    alpha_s, sigma_s = schedules.alpha_sigma(lam_s)
    if config.eta == 0.0:  # deterministic DDIM: no fresh noise to draw
      return alpha_s * x + sigma_s * eps, x
    c2 = config.eta ** 2 * sigma_s ** 2 * -jnp.expm1(lam_t[0] - lam_s)
    c2 = jnp.clip(c2, 0.0, sigma_s ** 2)
    noise = jax.random.normal(key, z.shape, z.dtype)
    z_next = alpha_s * x + jnp.sqrt(sigma_s ** 2 - c2) * eps + jnp.sqrt(c2) * noise
    return z_next, x

  _, xs = jax.lax.scan(step, z_start, (grid[:-1], grid[1:], weights, keys))
  x = jnp.where(t_start > 0, xs[-1], z_start)
  return (x, xs) if trajectory else x


def guided_v_fn(apply_fn, params, text, text_mask, *, guided: bool, null=None,
                **model_kwargs) -> VFn:
  """Wraps a stage denoiser `apply_fn(params, z, logsnr, text, text_mask, **kw)` as a `VFn`.

  With guidance the conditional and unconditional branches are concatenated on the batch axis and
  evaluated in **one** call. The unconditional text is `null` = (embeddings (B, L, D), mask
  (B, L)), by default zeros and an all-False mask (an encoder's own null, e.g. CLIP's encoding of
  "", is passed in). `model_kwargs` (cond, cond_logsnr, temporal_mask) are duplicated along the
  batch to match.
  """
  if not guided:
    return lambda z, lam: (apply_fn(params, z, lam, text, text_mask, **model_kwargs), None)

  null_text, null_mask = null if null is not None else (jnp.zeros_like(text),
                                                        jnp.zeros_like(text_mask))
  text2 = jnp.concatenate([text, null_text])
  mask2 = jnp.concatenate([text_mask, null_mask])
  kwargs2 = {k: (None if v is None else jnp.concatenate([v, v])) for k, v in model_kwargs.items()}

  def fn(z, lam):
    v = apply_fn(params, jnp.concatenate([z, z]), jnp.concatenate([lam, lam]), text2, mask2,
                 **kwargs2)
    return jnp.split(v, 2)

  return fn
