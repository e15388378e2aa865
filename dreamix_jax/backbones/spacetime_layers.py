"""Layers behind the U-Net's direction-of-motion options (`unet.UNetConfig`, all off by default).

Why: in the separable space-time U-Net the temporal layers (`layers.TemporalConv`,
`layers.TemporalAttention`) work per pixel and see no text, the spatial layers see the text one
frame at a time, and no layer sees absolute coordinates. A caption such as "moving left" can then set
colour, shape and background but has no path to the direction of motion, which is a joint
property of text, space and time. Each layer here adds one such path:

- `CoordinateStem` (`coord_channels`, `coord_time`): x, y (and t) ramps in [−1, 1] as extra
  stem input channels.
- `PositionEmbedding` (`pos_embedding`): a learned 2-D position table per level, added before
  spatial attention.
- `SpaceTimeConv` (`spacetime_conv_levels`): a residual 3×3×3 convolution, space and time at once.
- `JointAttention` (`joint_attn_levels`): self-attention over all T·H·W positions of a level, with
  3-D positions and the text tokens among its keys and values.
- `TemporalFiLM` (`text_temporal`): a scale and shift for the temporal layers from the
  conditioning embedding (log-SNR + pooled text + frame index).

Continuing old weights: every term these layers add starts at exactly zero (zero-initialised
output projections, kernels or tables; FiLM scale and shift zero), so a model with an option on
and its new parameters freshly initialised computes what the model without it computed. Each
option's parameters live under one top-level name (`coord_stem`, `pos_emb`, `spacetime_conv`,
`joint_attn`, `text_temporal`; one sub-module per U-Net block inside, named after the block),
which is what `checkpoints.load_params_over` / `init_from_new_modules` expects.

Frame sets (`frame_mask` flags, an identity `(B, T, T)` mask, or the static `frames_only`): every
layer computes each frame exactly as if it were alone (see each class for its rule), and the
`frames_only` form skips the work the mask would discard.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dreamix_jax.backbones import layers

Dtype = Any


def _ramp(n):
  """n evenly spaced values from −1 to 1 (a single 0 for n = 1), float32."""
  return jnp.linspace(-1.0, 1.0, n) if n > 1 else jnp.zeros((1,), jnp.float32)


def _keep_time(frame_mask):
  """(B,) float32: 1 for an ordered clip, 0 for a frame set (flags or an identity mask)."""
  return 1.0 - layers.frame_flags(frame_mask).astype(jnp.float32)


class PerBlock(nn.Module):
  """One top-level parameter scope for an option's per-block layers: `bank(key, *args)` runs
  `layer(**options)` named `key` (the block's name) on `args`, so the parameters of all blocks
  sit under the bank's one name (`spacetime_conv/down_2_0/...`)."""

  layer: Any
  options: tuple = ()

  @nn.compact
  def __call__(self, key, *args):
    return self.layer(**dict(self.options), name=key)(*args)


class CoordinateStem(nn.Module):
  """The stem's contribution from coordinate channels: a zero-initialised 3×3 conv of the
  x, y ramps (and with `time`, the t ramp) in [−1, 1], added to the stem's output. That equals a
  stem convolving `concat([z, coordinates])` whose coordinate kernel slice starts at zero, while
  the stem keeps its parameter shape.

  Frame sets get t = 0 in every frame (like the frame-index embedding, off for image sets), so a
  frame's value does not depend on its position in the set.
  frame_mask: (B,) flags or (B, T, T); returns (B·T, H, W, features) in `dtype`.
  """

  features: int
  time: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, frame_mask, frames, height, width):
    b = frame_mask.shape[0]
    yy, xx = jnp.meshgrid(_ramp(height), _ramp(width), indexing="ij")
    coords = jnp.broadcast_to(jnp.stack([xx, yy], -1), (b * frames, height, width, 2))
    if self.time:
      t = _keep_time(frame_mask)[:, None] * _ramp(frames)[None]  # (B, T)
      t = jnp.broadcast_to(t.reshape(b * frames, 1, 1, 1), (b * frames, height, width, 1))
      coords = jnp.concatenate([coords, t], axis=-1)
    return layers.conv(self.features, (3, 3), zero_init=True, dtype=self.dtype, name="conv")(
        coords.astype(self.dtype))


class PositionEmbedding(nn.Module):
  """Learned absolute 2-D positions: one zero-initialised (H_l, W_l, C_l) table per level listed
  in `shapes` ((level, H_l, W_l, C_l), ...); returns {level: table}. The U-Net adds a level's
  table to the activations right before each spatial attention at that level (the same for every
  frame, so frame sets are unaffected)."""

  shapes: tuple

  @nn.compact
  def __call__(self):
    init = nn.with_logical_partitioning(nn.initializers.zeros_init(), (None, None, "embed"))
    return {level: self.param(f"level_{level}", init, (h, w, c)) for level, h, w, c in self.shapes}


def conv2d(x, kernel, dtype):
  """'SAME' 2-D convolution, x: (N, H, W, C_in), kernel: (kh, kw, C_in, C_out)."""
  return jax.lax.conv_general_dilated(x.astype(dtype), kernel.astype(dtype), (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


class SpaceTimeConv(nn.Module):
  """Residual space-time convolution: x + conv3d(swish(norm(x))), 3×3×3, kernel zero-initialised.

  The kernel is `nn.Conv`'s 3-D layout, (3, 3, 3, C, C) (time, height, width, in, out), with zero
  padding in time; the compute is one 2-D conv to the three time taps' outputs (C → 3C per frame),
  shifted by −1, 0, +1 frame and summed, so output frame t reads frames t−1, t, t+1.
  Frame sets: tap t' → t contributes only where the mask lets frame t attend to frame t'
  (`layers.temporal_allowed`), so a frame set, as an identity mask, keeps only the centre time
  slice, a 3×3 spatial conv run on each frame alone; `frames_only` computes just that slice.
  Normalisation statistics are per frame. x: (B, T, H, W, C) -> same, in `dtype`.
  """

  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, frame_mask, frames_only=False):
    b, t, h, w, c = x.shape
    zeros = nn.initializers.zeros_init()
    kernel = self.param("kernel", nn.with_logical_partitioning(
        zeros, (None, None, None, "embed", "mlp")), (3, 3, 3, c, c))
    bias = self.param("bias", nn.with_logical_partitioning(zeros, ("mlp",)), (c,))
    y = nn.swish(layers.group_norm(layers.fold_frames(x), dtype=self.dtype, name="norm"))
    if frames_only:
      out = conv2d(y, kernel[1], self.dtype).reshape(x.shape)
    else:
      taps = conv2d(y, kernel.transpose(1, 2, 3, 0, 4).reshape(3, 3, c, 3 * c), self.dtype)
      taps = taps.reshape(b, t, h, w, 3, c)
      allowed = layers.temporal_allowed(frame_mask, t)  # (B, T, T): frame t may read frame t'
      prev_ok = jnp.diagonal(allowed, offset=-1, axis1=1, axis2=2)  # (B, T−1): t+1 reads t
      next_ok = jnp.diagonal(allowed, offset=1, axis1=1, axis2=2)  # (B, T−1): t reads t+1
      gate = lambda ok: ok.astype(self.dtype)[:, :, None, None, None]
      from_prev = jnp.pad(taps[:, :-1, ..., 0, :] * gate(prev_ok),
                          ((0, 0), (1, 0), (0, 0), (0, 0), (0, 0)))
      from_next = jnp.pad(taps[:, 1:, ..., 2, :] * gate(next_ok),
                          ((0, 0), (0, 1), (0, 0), (0, 0), (0, 0)))
      out = taps[..., 1, :] + from_prev + from_next
    return x + (out + bias.astype(self.dtype)).astype(x.dtype)


class JointAttention(nn.Module):
  """Self-attention over all T·H·W positions of a clip, the text tokens appended to its keys and
  values, with 3-D positions; residual, output projection zero-initialised, softmax in float32
  (`layers.attention`). Meant for the lowest level (16 frames of 6×10: 960 tokens); its cost
  grows with (T·H·W)².

  Positions: sinusoidal features of the row, column and frame index, each through a learned
  projection, added to the (per-frame group-normalised) input of the queries and keys, not the
  values. Frame sets: token (t, p) may attend to (t', p') only where the mask lets frame t attend
  to frame t' (`layers.temporal_allowed`) and the frame-index term is dropped, so a frame set is
  per-frame attention; `frames_only` computes that directly, frame by frame.
  x: (B, T, H, W, C); text: (B, L, D); text_mask: (B, L) bool; frame_mask: (B,) or (B, T, T).
  """

  head_dim: int
  pos_features: int = 64
  max_period: float = 100.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, text, text_mask, frame_mask, frames_only=False):
    b, t, h, w, c = x.shape
    heads, hd, n = c // self.head_dim, self.head_dim, h * w
    y = layers.group_norm(layers.fold_frames(x), dtype=self.dtype, name="norm").reshape(b, t, n, c)
    sin = lambda m: layers.sinusoidal_embedding(jnp.arange(m), self.pos_features, self.max_period)
    space = jnp.concatenate([jnp.repeat(sin(h), w, axis=0), jnp.tile(sin(w), (h, 1))], -1)
    qk_in = y + layers.dense(c, dtype=self.dtype, name="pos_space")(space)  # (B, T, H·W, C)
    time = layers.dense(c, dtype=self.dtype, name="pos_time")(sin(t))  # (T, C)
    if not frames_only:
      keep = _keep_time(frame_mask).astype(self.dtype)
      qk_in = qk_in + keep[:, None, None, None] * time[None, :, None]
    proj = lambda name: layers.dense(c, dtype=self.dtype, use_bias=False, name=name)
    q, k, v = proj("q")(qk_in), proj("k")(qk_in), proj("v")(y)  # (B, T, H·W, C)
    txt = layers.dense(2 * c, dtype=self.dtype, use_bias=False, name="kv_text")(text)
    num_tokens = text_mask.shape[1]
    if frames_only:  # every frame alone: (B·T, H·W) queries and keys
      rows, seq = b * t, n
      txt = jnp.broadcast_to(txt[:, None], (b, t) + txt.shape[1:]).reshape(rows, num_tokens, 2 * c)
      text_ok = jnp.broadcast_to(text_mask[:, None], (b, t, num_tokens)).reshape(rows, num_tokens)
      mask = jnp.concatenate([jnp.ones((rows, n), bool), text_ok], 1)[:, None, None]
    else:  # one sequence of T·H·W tokens per clip
      rows, seq = b, t * n
      allowed = layers.temporal_allowed(frame_mask, t)[:, :, None, :, None]  # (B, T, 1, T, 1)
      allowed = jnp.broadcast_to(allowed, (b, t, n, t, n)).reshape(b, seq, seq)
      text_ok = jnp.broadcast_to(text_mask[:, None], (b, seq, num_tokens))
      mask = jnp.concatenate([allowed, text_ok], axis=-1)[:, None]  # (B, 1, T·H·W, T·H·W + L)
    heads_of = lambda a: a.reshape(rows, -1, heads, hd)
    k_txt, v_txt = jnp.split(txt, 2, axis=-1)
    k = jnp.concatenate([heads_of(k), heads_of(k_txt).astype(k.dtype)], axis=1)
    v = jnp.concatenate([heads_of(v), heads_of(v_txt).astype(v.dtype)], axis=1)
    out = layers.attention(heads_of(q), k, v, mask=mask).reshape(rows, seq, c)
    out = layers.dense(c, names=("mlp", "embed"), zero_init=True, dtype=self.dtype, name="out")(out)
    return x + out.reshape(x.shape).astype(x.dtype)


class TemporalFiLM(nn.Module):
  """Per-frame scale and shift for a block's temporal layers from its conditioning embedding
  (log-SNR + pooled text + frame index), through a zero-initialised dense layer: emb (B·T, E) ->
  (B·T, features), features = 2C for the temporal conv ([scale | shift] of its normalised input)
  followed by 4C for temporal attention ([scale | shift] of q, then of k). It only acts through
  the temporal layers, which frame sets bypass, so it is a no-op for them; the U-Net does not
  compute it under `frames_only`."""

  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, emb, features):
    return layers.dense(features, zero_init=True, dtype=self.dtype, name="dense")(nn.swish(emb))
