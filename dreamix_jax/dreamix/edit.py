"""The Dreamix edit (paper §4.1): corrupt the input, then let the finetuned cascade re-synthesise it.

Downsample the input to the base stage's resolution, encode it (identity for pixel cascades), noise
it to level `s`, denoise with the base stage from `s` under the edit prompt, and upscale through the
cascade's SR stages. `s` trades fidelity to the input (low `s`) for freedom to follow the prompt.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dreamix_jax import cascade as cascade_lib
from dreamix_jax.dreamix import corrupt


def base_view(cascade: cascade_lib.Cascade, video, top_name: str):
  """The input at the base stage's resolution, in pixels: (1, T, H, W, 3) at stage `top_name`'s
  resolution -> (1, T_base, H_base, W_base, 3)."""
  return corrupt.to_stage(cascade, jnp.asarray(video), top_name, cascade.names[0])


def edit_video(cascade: cascade_lib.Cascade, params, base_pixels, text, text_mask, s: float,
               seed: int, *, upto: str | None = None, timer=None) -> np.ndarray:
  """One Dreamix edit of an in-memory video.

  base_pixels: (1, T, H, W, 3) in [-1, 1] at the base stage's resolution (`base_view`); text,
  text_mask: (1, L, D), (1, L) of the edit prompt. Returns the output (T', H', W', 3) of stage
  `upto` (default: the last) as numpy. A `timer` records each stage's sampling
  (`sample_<stage>`).
  """
  key_noise, key_sample = jax.random.split(jax.random.PRNGKey(seed))
  z_s = corrupt.corrupt(cascade.encode(jnp.asarray(base_pixels)), s, key_noise, cascade.schedule)
  upto = upto or cascade.names[-1]
  outs = cascade.sample(params, jnp.asarray(text), jnp.asarray(text_mask), key_sample,
                        base_start=z_s, t_start=s, upto=upto, timer=timer)
  return np.asarray(jax.device_get(outs[upto][0]))


def input_at_output_resolution(cascade: cascade_lib.Cascade, video, top_name: str) -> np.ndarray:
  """The input shown beside the output, brought to the last stage's size by frame/pixel
  repetition (it is only for viewing: input.mp4 and comparison.png). (1, T, H, W, 3) ->
  (T', H', W', 3)."""
  last = cascade.stages[-1]
  if top_name == last.name:
    return np.asarray(video[0])
  t, h, w = video.shape[1:4]
  return np.asarray(video[0]).repeat(last.frames // t, 0).repeat(last.height // h, 1).repeat(
      last.width // w, 2)
