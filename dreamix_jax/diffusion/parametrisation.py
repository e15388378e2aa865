"""The parametrisation seam: any backbone's prediction as the sampler's v̂ on a log-SNR.

The samplers and losses of this project speak one interface: `apply(params, z, logsnr, ...) -> v̂`
with z = α x + σ ε and v = α ε − σ x (`schedules`). A backbone says what it was trained for
(`Backbone.prediction` ∈ {'v', 'eps'}, `Backbone.time_input` ∈ {'logsnr', 'timestep'}); `v_on_logsnr`
wraps its `apply` accordingly:

- time_input 'timestep': the log-SNR is turned into the fractional timestep of the schedule's
  discrete grid (`schedules.DiscreteDDPM.timestep`), which is what such a network is fed;
- prediction 'eps': v̂ = (ε̂ − σ z) / α, the v whose implied (x̂, ε̂) is exactly (
  (z − σ ε̂)/α, ε̂): DDIM steps, guidance and thresholding then act on the same x̂ and ε̂ as an
  ε-sampler would.

A v-prediction, log-SNR backbone (the space-time U-Net) is returned unwrapped.
"""

from __future__ import annotations

import functools

from dreamix_jax.diffusion import schedules


def v_on_logsnr(backbone, schedule):
  """`backbone.apply` adapted to `apply(params, z, logsnr, text, text_mask, **kw) -> v̂`."""
  apply = backbone.apply
  if backbone.time_input == "logsnr" and backbone.prediction == "v":
    return apply
  if backbone.time_input == "timestep" and not hasattr(schedule, "timestep"):
    raise ValueError(f"{type(backbone).__name__} takes discrete timesteps but the cascade's "
                     f"schedule ({type(schedule).__name__}) has no timestep grid; set "
                     "cascade.schedule.kind='ddpm' with the model's betas.")
  return functools.partial(_adapted, apply, backbone.time_input, backbone.prediction, schedule)


def _adapted(apply, time_input, prediction, schedule, params, z, logsnr, *args, **kwargs):
  level = schedule.timestep(logsnr) if time_input == "timestep" else logsnr
  out = apply(params, z, level, *args, **kwargs)
  if prediction == "v":
    return out
  alpha, sigma = schedules.alpha_sigma(logsnr)
  alpha, sigma = schedules.bcast(alpha, z), schedules.bcast(sigma, z)
  return (out - sigma * z) / alpha
