"""Noise schedules in log-SNR form and the variance-preserving identities built on them.

Time `t ∈ [0, 1]` runs from data (t = 0) to noise (t = 1). A schedule maps `t` to the log
signal-to-noise ratio `λ(t) = log(α_t² / σ_t²)`; with a variance-preserving process
`α_t² = sigmoid(λ)` and `σ_t² = sigmoid(−λ)`, so `α_t² + σ_t² = 1`.

The v-parametrisation (Salimans & Ho, 2022) used by every model in the cascade:
  z = α x + σ ε,   v = α ε − σ x,   x = α z − σ v,   ε = σ z + α v.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class CosineLogSNR:
  """Cosine schedule shifted to span `[logsnr_min, logsnr_max]` exactly.

  `λ(t) = −2 log tan(a t + b)` with `b = arctan(exp(−λ_max / 2))` and
  `a = arctan(exp(−λ_min / 2)) − b`, so `λ(0) = λ_max` and `λ(1) = λ_min`.
  """

  logsnr_min: float = -20.0
  logsnr_max: float = 20.0

  def __post_init__(self):
    if not self.logsnr_min < self.logsnr_max:
      raise ValueError(f"logsnr_min ({self.logsnr_min}) must be below logsnr_max "
                       f"({self.logsnr_max}).")

  @property
  def _b(self):
    return jnp.arctan(jnp.exp(-0.5 * self.logsnr_max))

  @property
  def _a(self):
    return jnp.arctan(jnp.exp(-0.5 * self.logsnr_min)) - self._b

  def logsnr(self, t):
    """λ(t) for `t` of any shape, float32."""
    t = jnp.asarray(t, jnp.float32)
    return -2.0 * jnp.log(jnp.tan(self._a * t + self._b))

  def t_from_logsnr(self, logsnr):
    """Inverse of `logsnr`: the time at which the schedule reaches `logsnr`."""
    logsnr = jnp.asarray(logsnr, jnp.float32)
    return (jnp.arctan(jnp.exp(-0.5 * logsnr)) - self._b) / self._a


@dataclasses.dataclass(frozen=True)
class DiscreteDDPM:
  """A discrete DDPM noise schedule (`num_steps` betas, as a diffusers scheduler config gives it)
  seen as a continuous log-SNR schedule, so the project's samplers and losses run on it unchanged.

  Timestep k ∈ [0, num_steps − 1] has ᾱ_k = Π_{i ≤ k} (1 − β_i) and λ_k = log(ᾱ_k / (1 − ᾱ_k)),
  decreasing in k. Time t ∈ [0, 1] maps to the fractional timestep k = t·(num_steps − 1) and λ is
  interpolated linearly between grid points, so `logsnr(t)` spans [λ_{N−1}, λ_0] and
  `timestep(logsnr)` — what a network trained on the grid is fed — inverts it.
  beta_schedule: 'linear' (β linear in [beta_start, beta_end]) or 'scaled_linear' (√β linear).
  """

  num_steps: int = 1000
  beta_start: float = 0.00085
  beta_end: float = 0.012
  beta_schedule: str = "scaled_linear"

  def __post_init__(self):
    if self.beta_schedule not in ("linear", "scaled_linear"):
      raise ValueError(f"beta_schedule {self.beta_schedule!r} is not supported; use 'linear' or "
                       "'scaled_linear'.")
    if self.num_steps < 2 or not 0 < self.beta_start < self.beta_end < 1:
      raise ValueError(f"A DDPM schedule needs num_steps >= 2 and 0 < beta_start < beta_end < 1, "
                       f"got {self.num_steps}, {self.beta_start}, {self.beta_end}.")

  @property
  def grid(self):
    """λ_k for k = 0 .. num_steps − 1, float32, decreasing."""
    import numpy as np
    if self.beta_schedule == "linear":
      betas = np.linspace(self.beta_start, self.beta_end, self.num_steps, dtype=np.float64)
    else:
      betas = np.linspace(self.beta_start ** 0.5, self.beta_end ** 0.5, self.num_steps,
                          dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas)
    return jnp.asarray(np.log(alphas_cumprod) - np.log1p(-alphas_cumprod), jnp.float32)

  @property
  def logsnr_min(self) -> float:
    return float(self.grid[-1])

  @property
  def logsnr_max(self) -> float:
    return float(self.grid[0])

  def logsnr(self, t):
    """λ at time `t` (any shape): linear interpolation of the grid at timestep t·(N − 1)."""
    k = jnp.clip(jnp.asarray(t, jnp.float32), 0.0, 1.0) * (self.num_steps - 1)
    return jnp.interp(k, jnp.arange(self.num_steps, dtype=jnp.float32), self.grid)

  def timestep(self, logsnr):
    """The fractional timestep k ∈ [0, N − 1] at which the grid reaches `logsnr` (clipped)."""
    ks = jnp.arange(self.num_steps, dtype=jnp.float32)
    return jnp.interp(jnp.asarray(logsnr, jnp.float32), self.grid[::-1], ks[::-1])

  def t_from_logsnr(self, logsnr):
    """Inverse of `logsnr`."""
    return self.timestep(logsnr) / (self.num_steps - 1)


def from_config(cfg) -> "CosineLogSNR | DiscreteDDPM":
  """A cascade's schedule from its `schedule` dict: {kind: 'cosine', logsnr_min, logsnr_max}
  (the default kind) or {kind: 'ddpm', num_steps, beta_start, beta_end, beta_schedule}."""
  fields = dict(cfg)
  kind = fields.pop("kind", "cosine")
  kinds = {"cosine": CosineLogSNR, "ddpm": DiscreteDDPM}
  if kind not in kinds:
    raise ValueError(f"Unknown schedule kind {kind!r}; cascade.schedule.kind must be one of "
                     f"{sorted(kinds)}.")
  try:
    return kinds[kind](**fields)
  except TypeError as e:
    raise ValueError(f"Bad cascade.schedule fields for kind {kind!r}: {e}.") from None


def alpha_sigma(logsnr):
  """(α, σ) of a variance-preserving process at log-SNR `logsnr`."""
  logsnr = jnp.asarray(logsnr, jnp.float32)
  return jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))



def diffuse(x, noise, logsnr):
  """z = α x + σ ε, with `logsnr` broadcast from the left over `x`'s trailing axes."""
  alpha, sigma = alpha_sigma(logsnr)
  alpha, sigma = bcast(alpha, x), bcast(sigma, x)
  return alpha * x + sigma * noise


def v_target(x, noise, logsnr):
  """v = α ε − σ x."""
  alpha, sigma = alpha_sigma(logsnr)
  return bcast(alpha, x) * noise - bcast(sigma, x) * x


def x_from_v(z, v, logsnr):
  """x̂ = α z − σ v̂."""
  alpha, sigma = alpha_sigma(logsnr)
  return bcast(alpha, z) * z - bcast(sigma, z) * v


def eps_from_v(z, v, logsnr):
  """ε̂ = σ z + α v̂."""
  alpha, sigma = alpha_sigma(logsnr)
  return bcast(sigma, z) * z + bcast(alpha, z) * v


def v_from_x_eps(x, eps, logsnr):
  """v from a pair (x̂, ε̂): the inverse of (x_from_v, eps_from_v)."""
  alpha, sigma = alpha_sigma(logsnr)
  return bcast(alpha, x) * eps - bcast(sigma, x) * x


def bcast(a, like):
  """Appends singleton axes to `a` (shape `(B,)` or `(B, T)`) so it broadcasts against `like`."""
  a = jnp.asarray(a)
  return a.reshape(a.shape + (1,) * (like.ndim - a.ndim))
