"""Space-time building blocks of the video U-Net (Flax Linen).

Videos are `(B, T, H, W, C)`. Spatial operations run on every frame with shared weights: frames are
folded into the batch (`fold_frames`) and ordinary 2-D ops are used. Temporal operations mix frames at
each spatial position: positions are folded into the batch (`fold_positions`) and 1-D ops run over T.

Frame masking (Dreamix's "frame" variant) is an *array* argument, `frame_mask: (B,)` float/bool, 1 where
the example is a set of independent images: temporal attention becomes identity attention (each frame
attends only to itself; value and output projections still apply) and every temporal-convolution
residual is multiplied by 0. Because it is data, one compiled function serves both variants and
`jax.vmap` can batch over it. When a whole batch is frame sets and that is known at trace time
(Dreamix's frame variant in its own U-Net call), the static `frames_only` form computes the same
values without the discarded work: `TemporalAttention(..., frames_only=True)` is the per-frame map
out(v(norm(x))) (no queries, keys or softmax) and the U-Net skips the temporal convolutions.

Parameters carry logical axis names (`nn.with_logical_partitioning`) that `dreamix_jax.parallel` maps to
mesh axes: 'embed' (a layer's input channels), 'mlp' (its output channels), 'heads' (attention heads).

Just over 400 lines: every block the U-Net is assembled from, which share the fold helpers and the
frame-mask conventions above, stays in one module; the optional direction-of-motion layers are in
`spacetime_layers.py`.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dreamix_jax.text import t5

Dtype = Any


# --------------------------------------------------------------------------------------------------
# Folding helpers.

def fold_frames(x):
  """(B, T, H, W, C) -> (B·T, H, W, C): frames become independent images."""
  b, t = x.shape[:2]
  return x.reshape((b * t,) + x.shape[2:])


def unfold_frames(x, batch):
  """(B·T, H, W, C) -> (B, T, H, W, C)."""
  return x.reshape((batch, x.shape[0] // batch) + x.shape[1:])


def fold_positions(x):
  """(B, T, H, W, C) -> (B·H·W, T, C): each spatial position becomes a sequence over frames."""
  b, t, h, w, c = x.shape
  return x.transpose(0, 2, 3, 1, 4).reshape(b * h * w, t, c)


def unfold_positions(x, batch, height, width):
  """(B·H·W, T, C) -> (B, T, H, W, C)."""
  t, c = x.shape[1:]
  return x.reshape(batch, height, width, t, c).transpose(0, 3, 1, 2, 4)


# --------------------------------------------------------------------------------------------------
# Parameterised primitives with logical axis names.

def _init(init_fn, names):
  return nn.with_logical_partitioning(init_fn, names)


def dense(features, *, names=("embed", "mlp"), zero_init=False, use_bias=True, dtype=jnp.float32,
          name=None):
  """`nn.Dense` with logical axis names on its kernel."""
  kinit = nn.initializers.zeros_init() if zero_init else nn.initializers.lecun_normal()
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=_init(kinit, names), bias_init=_init(nn.initializers.zeros_init(),
                                                                   (names[-1],)),
                  name=name)


def conv(features, kernel_size, *, strides=1, zero_init=False, dtype=jnp.float32, name=None):
  """`nn.Conv` ('SAME' padding) whose kernel's last two axes are named ('embed', 'mlp')."""
  kinit = nn.initializers.zeros_init() if zero_init else nn.initializers.lecun_normal()
  spatial = (None,) * len(kernel_size)
  if isinstance(strides, int):
    strides = (strides,) * len(kernel_size)
  return nn.Conv(features, kernel_size, strides=strides, padding="SAME", dtype=dtype,
                 param_dtype=jnp.float32, kernel_init=_init(kinit, spatial + ("embed", "mlp")),
                 bias_init=_init(nn.initializers.zeros_init(), ("mlp",)), name=name)


class GroupNorm(nn.Module):
  """GroupNorm over all axes but the first (batch) and last (channels), statistics in float32.

  Same parameters ('scale', 'bias': (C,)) and numerics as `nn.GroupNorm` (up to float rounding). The
  per-channel sums are matrix-vector products over the flattened positions rather than reductions
  over a (N, positions, groups, C/groups) view: on CPU that reduction (and its gradient) is several
  times slower than the U-Net's convolutions around it; on accelerators both are cheap.
  x: (N, ..., C) -> same shape, in `dtype`.
  """

  num_groups: int
  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    n, c = x.shape[0], x.shape[-1]
    per_group = c // self.num_groups
    scale = self.param("scale", _init(nn.initializers.ones_init(), ("mlp",)), (c,))
    bias = self.param("bias", _init(nn.initializers.zeros_init(), ("mlp",)), (c,))
    flat = x.reshape(n, -1, c).astype(jnp.float32)
    average = jnp.full((flat.shape[1],), 1.0 / flat.shape[1], jnp.float32)
    mean_c = jnp.einsum("nlc,l->nc", flat, average)  # (N, C) per-channel means
    sq_c = jnp.einsum("nlc,l->nc", jnp.square(flat), average)
    mean = mean_c.reshape(n, self.num_groups, per_group).mean(-1)  # (N, G)
    var = jnp.maximum(sq_c.reshape(n, self.num_groups, per_group).mean(-1) - jnp.square(mean), 0.0)
    inv = jnp.repeat(jax.lax.rsqrt(var + self.epsilon), per_group, axis=1) * scale  # (N, C)
    shift = bias - jnp.repeat(mean, per_group, axis=1) * inv
    return (flat * inv[:, None] + shift[:, None]).astype(self.dtype).reshape(x.shape)


def group_norm(x, *, groups=32, dtype, name=None):
  """GroupNorm with `min(groups, C)` groups (dividing C), statistics in float32."""
  return GroupNorm(num_groups=math.gcd(groups, x.shape[-1]), dtype=dtype, name=name)(x)


def layer_norm(x, *, dtype, name=None):
  return nn.LayerNorm(dtype=dtype, param_dtype=jnp.float32,
                      scale_init=_init(nn.initializers.ones_init(), ("embed",)),
                      bias_init=_init(nn.initializers.zeros_init(), ("embed",)), name=name)(x)


# --------------------------------------------------------------------------------------------------
# Conditioning embeddings.

def sinusoidal_embedding(x, dim, max_period=10_000.0):
  """Sinusoidal features of a scalar `x` of any shape: (...,) -> (..., dim), float32."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = x.astype(jnp.float32)[..., None] * freqs
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class LogSNREmbedding(nn.Module):
  """Embeds a log-SNR given per example `(B,)` or per frame `(B, T)` into `(B, T, dim)`.

  λ ∈ [−20, 20] is mapped linearly to [0, 1000] before the sinusoidal features, the range the
  features resolve well.
  """

  dim: int
  frames: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, logsnr):
    if logsnr.ndim == 1:
      logsnr = jnp.broadcast_to(logsnr[:, None], (logsnr.shape[0], self.frames))
    scaled = (jnp.clip(logsnr, -20.0, 20.0) + 20.0) * 25.0
    h = sinusoidal_embedding(scaled, self.dim)
    h = dense(self.dim * 4, dtype=self.dtype, name="dense_0")(h)
    h = nn.swish(h)
    return dense(self.dim * 4, dtype=self.dtype, name="dense_1")(h)


class FrameIndexEmbedding(nn.Module):
  """Embeds each frame's absolute index, `(T,)` -> `(T, dim)`, through a zero-initialised output
  layer (a new embedding leaves a trained model's output unchanged until it is trained).

  Temporal attention (relative bias) and temporal convolutions are translation-equivariant over
  frames, so from stationary inputs — pure noise and one caption for every frame — they cannot make
  a frame's output depend on where the frame sits in the clip, except through padding at the clip's
  ends. Where the data's mean video drifts with time (an object moving right starts on the left and
  ends on the right), the denoiser needs that dependence at high noise.
  """

  dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, frames: int):
    h = sinusoidal_embedding(jnp.arange(frames, dtype=jnp.float32), self.dim, max_period=100.0)
    h = nn.swish(dense(self.dim, dtype=self.dtype, name="dense_0")(h))
    return dense(self.dim, zero_init=True, dtype=self.dtype, name="dense_1")(h)


class TextPooling(nn.Module):
  """Attention pooling of text tokens: a learned query attends over unmasked tokens.

  text: (B, L, D) (already layer-normed), mask: (B, L) bool -> (B, out_dim). An all-masked row (the
  null text of classifier-free guidance) pools to exactly zero.
  """

  out_dim: int
  num_heads: int = 4
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, text, mask):
    d = text.shape[-1]
    query = self.param("query", _init(nn.initializers.normal(0.02), (None, "embed")), (1, d))
    q = jnp.broadcast_to(query[None].astype(self.dtype), (text.shape[0], 1, d))
    pooled = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype, param_dtype=jnp.float32,
        kernel_init=nn.initializers.lecun_normal(), name="attn")(
            q, text, mask=mask[:, None, None, :])[:, 0]
    pooled = jnp.where(jnp.any(mask, axis=-1, keepdims=True), pooled, 0.0)
    return dense(self.out_dim, dtype=self.dtype, name="proj")(pooled)


# --------------------------------------------------------------------------------------------------
# Attention.

def attention(q, k, v, *, bias=None, mask=None):
  """Multi-head attention through `jax.nn.dot_product_attention` (fused kernels on accelerators).

  q: (N, Lq, heads, d); k, v: (N, Lk, heads, d); bias/mask broadcastable to (N, heads, Lq, Lk).
  Logits and softmax are computed in float32; the result has q's dtype.
  """
  out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask)
  return out.astype(q.dtype)


class SpatialAttention(nn.Module):
  """Per-frame self-attention whose keys/values also include the text tokens (Imagen style).

  With `self_attention=False` it is pure cross-attention to the text (used at levels too large for
  spatial self-attention). x: (B·T, H, W, C); text: (B, L, C_text); text_mask: (B, L) bool. The text
  keys/values are projected once per example and shared by its T frames. The output projection is
  zero-initialised inside the residual.
  """

  num_heads: int
  self_attention: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, text, text_mask):
    n, h, w, c = x.shape
    heads = self.num_heads
    hd = c // heads
    y = group_norm(x, dtype=self.dtype, name="norm").reshape(n, h * w, c)
    q = dense(c, dtype=self.dtype, use_bias=False, name="q")(y).reshape(n, h * w, heads, hd)
    b, num_tokens = text_mask.shape
    frames = n // b
    txt = dense(2 * c, dtype=self.dtype, use_bias=False, name="kv_text")(text)  # (B, L, 2C)
    txt = jnp.broadcast_to(txt[:, None], (b, frames, num_tokens, 2 * c)).reshape(n, num_tokens, 2 * c)
    text_mask = jnp.broadcast_to(text_mask[:, None], (b, frames, num_tokens)).reshape(n, num_tokens)
    k_txt, v_txt = jnp.split(txt.reshape(n, num_tokens, 2 * heads, hd), 2, axis=2)
    if self.self_attention:
      kv = dense(2 * c, dtype=self.dtype, use_bias=False, name="kv")(y)
      k_img, v_img = jnp.split(kv.reshape(n, h * w, 2 * heads, hd), 2, axis=2)
      k = jnp.concatenate([k_img, k_txt], axis=1)
      v = jnp.concatenate([v_img, v_txt], axis=1)
      mask = jnp.concatenate([jnp.ones((n, h * w), bool), text_mask], axis=1)
    else:
      # Null text (all masked) would leave nothing to attend to: add one learned zero-value slot.
      null_k = self.param("null_k", _init(nn.initializers.normal(0.02), (None, "heads", None)),
                          (1, heads, hd))
      k = jnp.concatenate([jnp.broadcast_to(null_k.astype(self.dtype), (n, 1, heads, hd)),
                           k_txt], axis=1)
      v = jnp.concatenate([jnp.zeros((n, 1, heads, hd), self.dtype), v_txt], axis=1)
      mask = jnp.concatenate([jnp.ones((n, 1), bool), text_mask], axis=1)
    out = attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask[:, None, None, :])
    out = dense(c, names=("mlp", "embed"), zero_init=True, dtype=self.dtype, name="out")(
        out.reshape(n, h * w, c))
    return x + out.reshape(n, h, w, c)


def temporal_allowed(frame_mask, frames):
  """Which frames may attend to which: (B,) flags -> (B, T, T) bool (identity where masked).

  A `(B, T, T)` mask is passed through unchanged (True = may attend).
  """
  frame_mask = jnp.asarray(frame_mask)
  if frame_mask.ndim == 3:
    return frame_mask.astype(bool)
  eye = jnp.eye(frames, dtype=bool)
  masked = frame_mask.astype(bool)[:, None, None]
  return jnp.where(masked, eye[None], True)


class ProjectionKernel(nn.Module):
  """The (C_in, features) kernel of a bias-free `dense` layer, returned rather than applied, so a
  caller can use a slice of it (its parameter is `nn.Dense`'s: same name, shape, init and logical
  axis names ('embed', 'mlp'))."""

  features: int

  @nn.compact
  def __call__(self, in_features):
    return self.param("kernel", _init(nn.initializers.lecun_normal(), ("embed", "mlp")),
                      (in_features, self.features))


class TemporalAttention(nn.Module):
  """Bidirectional self-attention over frames at every spatial position, T5-style relative bias.

  x: (B, T, H, W, C); frame_mask: (B,) or (B, T, T). Zero-initialised output projection inside a
  residual, so a freshly initialised layer is the identity map.
  With `frames_only=True` (static) every example is taken as a frame set, `frame_mask` is ignored,
  and the layer computes identity attention's value directly: each frame's output is its own value
  vector, x + out(v(norm(x))), with no queries, keys, bias or softmax.
  film: optional (B·T, 4C) per-frame [q scale | q shift | k scale | k shift] (`UNetConfig.
  text_temporal`): q ← q·(1 + scale) + shift, likewise k, so the caption can steer which frames
  each frame reads. Zeros leave the layer bit-identical; it only moves the attention weights, so a
  frame set (identity attention, or `frames_only`, where it is not read) is unaffected.
  """

  num_heads: int
  num_buckets: int = 32
  max_distance: int = 64
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, frame_mask, frames_only=False, film=None):
    b, t, h, w, c = x.shape
    heads = self.num_heads
    hd = c // heads
    y = group_norm(fold_frames(x), dtype=self.dtype, name="norm")  # (B·T, H, W, C)
    qkv_kernel = ProjectionKernel(3 * c, name="qkv")(c).astype(self.dtype)  # columns: q | k | v
    out_proj = dense(c, names=("mlp", "embed"), zero_init=True, dtype=self.dtype, name="out")
    table = self.param("rel_bias", _init(nn.initializers.normal(0.02), (None, "heads")),
                       (self.num_buckets, heads))
    if frames_only:
      return x + out_proj(jnp.dot(y, qkv_kernel[:, 2 * c:])).reshape(x.shape)
    qkv = jnp.dot(fold_positions(y.reshape(x.shape)), qkv_kernel)  # (B·H·W, T, 3C)
    if film is not None:
      film = film.astype(self.dtype).reshape(b, 1, t, 4 * c)
      qkv = qkv.reshape(b, h * w, t, 3 * c)
      qk = qkv[..., :2 * c] * (1.0 + film[..., :2 * c]) + film[..., 2 * c:]
      qkv = jnp.concatenate([qk, qkv[..., 2 * c:]], axis=-1).reshape(b * h * w, t, 3 * c)
    q, k, v = jnp.split(qkv.reshape(b * h * w, t, 3 * heads, hd), 3, axis=2)
    bias = table[t5.relative_position_buckets(t, t, self.num_buckets, self.max_distance)]  # (T, T, h)
    bias = bias.transpose(2, 0, 1)[None].astype(jnp.float32)  # (1, heads, T, T)
    allowed = temporal_allowed(frame_mask, t)  # (B, T, T)
    allowed = jnp.broadcast_to(allowed[:, None, None], (b, h * w, 1, t, t)).reshape(b * h * w, 1, t, t)
    out = attention(q, k, v, bias=bias, mask=allowed).reshape(b * h * w, t, c)
    return x + unfold_positions(out_proj(out), b, h, w)


class FrameConv(nn.Module):
  """'SAME' convolution over the frame axis of a (B, T, H, W, C) video, in place (no transposes).

  The kernel is `nn.Conv`'s 1-D layout, (kernel, C_in, features) with bias (features,), so the
  parameters are those of a 1-D `conv` over `fold_positions(x)`; the compute is one matmul of the
  frame-shifted copies concatenated on channels, (B·T·H·W, kernel·C_in) @ (kernel·C_in, features),
  which avoids moving every activation twice to fold and unfold positions.
  x: (B, T, H, W, C_in) -> (B, T, H, W, features) in `dtype`.
  """

  features: int
  kernel: int = 3
  zero_init: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    t, c = x.shape[1], x.shape[-1]
    kinit = nn.initializers.zeros_init() if self.zero_init else nn.initializers.lecun_normal()
    kernel = self.param("kernel", _init(kinit, (None, "embed", "mlp")),
                        (self.kernel, c, self.features))
    bias = self.param("bias", _init(nn.initializers.zeros_init(), ("mlp",)), (self.features,))
    before = (self.kernel - 1) // 2  # lax 'SAME': the extra pad of an even kernel goes after.
    padded = jnp.pad(x.astype(self.dtype),
                     ((0, 0), (before, self.kernel - 1 - before), (0, 0), (0, 0), (0, 0)))
    shifted = jnp.concatenate([padded[:, i:i + t] for i in range(self.kernel)], axis=-1)
    y = jnp.dot(shifted, kernel.reshape(self.kernel * c, self.features).astype(self.dtype))
    return y + bias.astype(self.dtype)


class TemporalConv(nn.Module):
  """Residual temporal convolution: norm -> swish -> conv over frames (kernel 3), zero-initialised.

  x: (B, T, H, W, C); frame_mask: (B,) flags; the residual is multiplied by (1 − flag), so a masked
  example passes through unchanged and the conv's parameters get no gradient from it.
  film: optional (B·T, 2C) per-frame [scale | shift] applied to the normalised input,
  y ← y·(1 + scale) + shift (`UNetConfig.text_temporal`); zeros leave the layer bit-identical.
  """

  kernel: int = 3
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, frame_mask, film=None):
    c = x.shape[-1]
    y = group_norm(fold_frames(x), dtype=self.dtype, name="norm")
    if film is not None:
      scale, shift = jnp.split(film.astype(self.dtype)[:, None, None], 2, axis=-1)
      y = y * (1.0 + scale) + shift
    y = nn.swish(y).reshape(x.shape)
    y = FrameConv(c, self.kernel, zero_init=True, dtype=self.dtype, name="conv")(y)
    keep = 1.0 - frame_flags(frame_mask).astype(y.dtype)
    return x + y * keep[:, None, None, None, None]


def frame_flags(frame_mask):
  """(B,) flags from a (B,) flag array or a (B, T, T) attention mask (identity = masked)."""
  frame_mask = jnp.asarray(frame_mask)
  if frame_mask.ndim == 3:
    t = frame_mask.shape[-1]
    return jnp.all(frame_mask.astype(bool) == jnp.eye(t, dtype=bool), axis=(1, 2))
  return frame_mask


# --------------------------------------------------------------------------------------------------
# Residual block.

class ResBlock(nn.Module):
  """GroupNorm → swish → 3×3 conv → scale-shift by the (per-frame) embedding → GroupNorm → swish →
  dropout → 3×3 conv (zero-init), plus a 1×1 shortcut when channels change. Runs per frame.

  x: (B·T, H, W, C_in); emb: (B·T, E) -> (B·T, H, W, out_channels).
  """

  out_channels: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, emb, *, train):
    h = nn.swish(group_norm(x, dtype=self.dtype, name="norm_0"))
    h = conv(self.out_channels, (3, 3), dtype=self.dtype, name="conv_0")(h)
    scale, shift = jnp.split(dense(2 * self.out_channels, dtype=self.dtype, name="emb")(
        nn.swish(emb)), 2, axis=-1)
    h = group_norm(h, dtype=self.dtype, name="norm_1")
    h = h * (1.0 + scale[:, None, None, :]) + shift[:, None, None, :]
    h = nn.Dropout(self.dropout, deterministic=not train)(nn.swish(h))
    h = conv(self.out_channels, (3, 3), zero_init=True, dtype=self.dtype, name="conv_1")(h)
    if x.shape[-1] != self.out_channels:
      x = conv(self.out_channels, (1, 1), dtype=self.dtype, name="shortcut")(x)
    return x + h
