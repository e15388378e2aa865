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


def alpha_sigma(logsnr):
  """(α, σ) of a variance-preserving process at log-SNR `logsnr`."""
  logsnr = jnp.asarray(logsnr, jnp.float32)
  return jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))



def diffuse(x, noise, logsnr):
  """z = α x + σ ε, with `logsnr` broadcast from the left over `x`'s trailing axes."""
  alpha, sigma = alpha_sigma(logsnr)
  alpha, sigma = _bcast(alpha, x), _bcast(sigma, x)
  return alpha * x + sigma * noise


def v_target(x, noise, logsnr):
  """v = α ε − σ x."""
  alpha, sigma = alpha_sigma(logsnr)
  return _bcast(alpha, x) * noise - _bcast(sigma, x) * x


def x_from_v(z, v, logsnr):
  """x̂ = α z − σ v̂."""
  alpha, sigma = alpha_sigma(logsnr)
  return _bcast(alpha, z) * z - _bcast(sigma, z) * v


def eps_from_v(z, v, logsnr):
  """ε̂ = σ z + α v̂."""
  alpha, sigma = alpha_sigma(logsnr)
  return _bcast(sigma, z) * z + _bcast(alpha, z) * v


def v_from_x_eps(x, eps, logsnr):
  """v from a pair (x̂, ε̂): the inverse of (x_from_v, eps_from_v)."""
  alpha, sigma = alpha_sigma(logsnr)
  return _bcast(alpha, x) * eps - _bcast(sigma, x) * x


def _bcast(a, like):
  """Appends singleton axes to `a` (shape `(B,)` or `(B, T)`) so it broadcasts against `like`."""
  a = jnp.asarray(a)
  return a.reshape(a.shape + (1,) * (like.ndim - a.ndim))
