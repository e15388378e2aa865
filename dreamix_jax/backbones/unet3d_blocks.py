"""Building blocks of the ModelScope / Zeroscope text-to-video U-Net (diffusers
`UNet3DConditionModel`) in Flax Linen, channels-last.

Every module here reproduces one diffusers module exactly (same arithmetic, same epsilons, same
order of residual additions) so that imported weights give the PyTorch model's outputs; parameter
names mirror diffusers' (`resnets_0`, `temp_convs_0`, `attn1/to_q`, ...) and
`diffusers_import.unet_name_map` lists the correspondence tensor by tensor.

Layouts: frames are folded into the batch, x: (N, H, W, C) with N = B·T (b-major), as diffusers
does; the temporal layers unfold them to (B, T, H, W, C). Parameters are float32 and carry logical axis
names (`dreamix_jax.parallel.DEFAULT_RULES`): a kernel's input channels 'embed' (fsdp), its output
channels 'mlp' or attention's 'heads' (tensor); output projections are named ('heads'/'mlp',
'embed'), Megatron style. Computation runs in `dtype` (bf16 on accelerators); normalisation
statistics and attention softmax are float32.

Temporal layers (`TemporalConvLayer`, `TransformerTemporal`) return their residual *delta* d, and
the caller adds it: `x + d`, or `x + keep·d` with keep = 1 − temporal_mask per example, which is the
identity for frame sets (their GroupNorms normalise over all frames, so masking attention alone
would still mix frames).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
_F32 = jnp.float32


def _init(init_fn, names):
  return nn.with_logical_partitioning(init_fn, names)


def dense(features, *, names=("embed", "mlp"), use_bias=True, zero_init=False, dtype=_F32,
          name=None):
  """`nn.Dense` (torch `nn.Linear`) with logical names on its (in, out) kernel and bias."""
  kinit = nn.initializers.zeros_init() if zero_init else nn.initializers.lecun_normal()
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=_F32,
                  kernel_init=_init(kinit, names),
                  bias_init=_init(nn.initializers.zeros_init(), (names[-1],)), name=name)


def conv(features, kernel_size, *, strides=1, padding=1, zero_init=False, dtype=_F32, name=None):
  """`nn.Conv` with PyTorch's symmetric integer padding (per spatial axis) — not 'SAME', which pads
  a stride-2 convolution (0, 1) — and kernel names (..., 'embed', 'mlp')."""
  kinit = nn.initializers.zeros_init() if zero_init else nn.initializers.lecun_normal()
  k = len(kernel_size)
  pads = (padding,) * k if isinstance(padding, int) else tuple(padding)
  return nn.Conv(features, kernel_size, strides=(strides,) * k if isinstance(strides, int)
                 else strides, padding=tuple((p, p) for p in pads), dtype=dtype, param_dtype=_F32,
                 kernel_init=_init(kinit, (None,) * k + ("embed", "mlp")),
                 bias_init=_init(nn.initializers.zeros_init(), ("mlp",)), name=name)


class GroupNorm(nn.Module):
  """torch `nn.GroupNorm` on channels-last input: x (N, ..., C), statistics per example and group
  over every axis but the first and last, two-pass (mean, then centred variance) in float32.
  Parameters 'scale' and 'bias' (C,). Returns `dtype`."""

  num_groups: int
  epsilon: float
  dtype: Dtype = _F32

  @nn.compact
  def __call__(self, x):
    n, c = x.shape[0], x.shape[-1]
    if c % self.num_groups:
      raise ValueError(f"GroupNorm: {c} channels are not divisible into {self.num_groups} groups.")
    scale = self.param("scale", _init(nn.initializers.ones_init(), ("mlp",)), (c,))
    bias = self.param("bias", _init(nn.initializers.zeros_init(), ("mlp",)), (c,))
    g = x.astype(_F32).reshape(n, -1, self.num_groups, c // self.num_groups)
    mean = g.mean(axis=(1, 3), keepdims=True)
    centred = g - mean
    var = jnp.square(centred).mean(axis=(1, 3), keepdims=True)
    y = (centred * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
    return (y * scale + bias).astype(self.dtype)


def layer_norm(*, epsilon=1e-5, dtype=_F32, name=None):
  return nn.LayerNorm(epsilon=epsilon, dtype=dtype, param_dtype=_F32,
                      scale_init=_init(nn.initializers.ones_init(), ("embed",)),
                      bias_init=_init(nn.initializers.zeros_init(), ("embed",)), name=name)


def timestep_embedding(t, dim, max_period=10_000.0):
  """diffusers `Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)`: (N,) float
  timesteps (fractional ones allowed) -> (N, dim) float32 features [cos, sin]."""
  half = dim // 2
  freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half, dtype=_F32) / half)
  args = t.astype(_F32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  return jnp.pad(emb, ((0, 0), (0, dim % 2)))


class Attention(nn.Module):
  """diffusers `Attention` (bias-free q/k/v, biased `to_out.0`), softmax in float32.

  x: (N, L, D). context: None (self-attention) or (B, S, D_ctx) with N = B·frames: its keys and
  values are projected once per example and shared by that example's frames (cross-attention to
  the text, which diffusers repeats per frame). Returns (N, L, D).
  """

  heads: int
  head_dim: int
  dtype: Dtype = _F32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x, context=None):
    n, length, d = x.shape
    inner = self.heads * self.head_dim
    src = x if context is None else context
    proj = lambda nm: dense(inner, names=("embed", "heads"), use_bias=False, dtype=self.dtype,
                            name=nm)
    q = proj("to_q")(x).reshape(n, length, self.heads, self.head_dim)
    k, v = proj("to_k")(src), proj("to_v")(src)
    if context is not None and context.shape[0] != n:
      frames = n // context.shape[0]
      k, v = (jnp.repeat(a, frames, axis=0) for a in (k, v))
    k = k.reshape(n, -1, self.heads, self.head_dim)
    v = v.reshape(n, -1, self.heads, self.head_dim)
    out = jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype),
                                       implementation=self.attention_impl).astype(self.dtype)
    return dense(d, names=("heads", "embed"), dtype=self.dtype, name="to_out")(
        out.reshape(n, length, inner))


class FeedForward(nn.Module):
  """GEGLU feed-forward: `proj` (D -> 2·4D; value | gate halves), value·gelu(gate), `out`."""

  dtype: Dtype = _F32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    h, gate = jnp.split(dense(8 * d, dtype=self.dtype, name="proj")(x), 2, axis=-1)
    h = h * jax.nn.gelu(gate, approximate=False)
    return dense(d, names=("mlp", "embed"), dtype=self.dtype, name="out")(h)


class BasicTransformerBlock(nn.Module):
  """Pre-LN block: x + attn1(norm1 x); + attn2(norm2 x, context); + ff(norm3 x). With
  `context=None` attn2 is a second self-attention (the temporal transformers'
  `double_self_attention`). x: (N, L, D)."""

  heads: int
  head_dim: int
  dtype: Dtype = _F32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x, context=None):
    attn = lambda nm: Attention(self.heads, self.head_dim, self.dtype, self.attention_impl, name=nm)
    x = x + attn("attn1")(layer_norm(dtype=self.dtype, name="norm1")(x))
    x = x + attn("attn2")(layer_norm(dtype=self.dtype, name="norm2")(x), context)
    return x + FeedForward(self.dtype, name="ff")(layer_norm(dtype=self.dtype, name="norm3")(x))


class Transformer2D(nn.Module):
  """Spatial transformer (`Transformer2DModel`, linear projections): per frame, GroupNorm (eps
  1e-6) -> proj_in -> block with cross-attention to `text` -> proj_out, plus the input.
  x: (N, H, W, C); text: (B, S, D_text). Returns (N, H, W, C)."""

  heads: int
  head_dim: int
  groups: int
  dtype: Dtype = _F32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x, text):
    n, h, w, c = x.shape
    y = GroupNorm(self.groups, 1e-6, self.dtype, name="norm")(x).reshape(n, h * w, c)
    y = dense(self.heads * self.head_dim, dtype=self.dtype, name="proj_in")(y)
    y = BasicTransformerBlock(self.heads, self.head_dim, self.dtype, self.attention_impl,
                              name="transformer_blocks_0")(y, text)
    y = dense(c, names=("mlp", "embed"), dtype=self.dtype, name="proj_out")(y)
    return x + y.reshape(n, h, w, c)


class TransformerTemporal(nn.Module):
  """Temporal transformer (`TransformerTemporalModel`): GroupNorm (eps 1e-6) over all frames of an
  example, then at every position a sequence over frames: proj_in -> block of two self-attentions
  -> proj_out. x: (B·T, H, W, C) -> the residual delta (B·T, H, W, C)."""

  heads: int
  head_dim: int
  groups: int
  frames: int
  dtype: Dtype = _F32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x):
    n, h, w, c = x.shape
    b, t = n // self.frames, self.frames
    y = GroupNorm(self.groups, 1e-6, self.dtype, name="norm")(x.reshape(b, t, h, w, c))
    y = y.transpose(0, 2, 3, 1, 4).reshape(b * h * w, t, c)
    y = dense(self.heads * self.head_dim, dtype=self.dtype, name="proj_in")(y)
    y = BasicTransformerBlock(self.heads, self.head_dim, self.dtype, self.attention_impl,
                              name="transformer_blocks_0")(y)
    y = dense(c, names=("mlp", "embed"), dtype=self.dtype, name="proj_out")(y)
    return y.reshape(b, h, w, t, c).transpose(0, 3, 1, 2, 4).reshape(n, h, w, c)


class TemporalConvLayer(nn.Module):
  """ModelScope's temporal convolutions: four (GroupNorm over all frames -> SiLU -> [dropout] ->
  conv of kernel (3, 1, 1) over (T, H, W)), the last zero-initialised. x: (B·T, H, W, C) -> the
  residual delta (B·T, H, W, C). Dropout (diffusers: 0.1) only with `train`."""

  groups: int
  frames: int
  dropout: float = 0.1
  dtype: Dtype = _F32

  @nn.compact
  def __call__(self, x, train=False):
    n, h, w, c = x.shape
    y = x.reshape(n // self.frames, self.frames, h, w, c)
    for i in range(1, 5):
      y = nn.silu(GroupNorm(self.groups, 1e-5, self.dtype, name=f"conv{i}_norm")(y))
      if i > 1:
        y = nn.Dropout(self.dropout, deterministic=not train)(y)
      y = conv(c, (3, 1, 1), padding=(1, 0, 0), zero_init=i == 4, dtype=self.dtype,
               name=f"conv{i}")(y)
    return y.reshape(n, h, w, c)


class ResnetBlock2D(nn.Module):
  """diffusers `ResnetBlock2D` ('default' time embedding: added after conv1), per frame:
  (x' + conv2(drop(silu(norm2(conv1(silu(norm1 x)) + proj(silu emb)))))) / output_scale, x' the
  input or its 1×1 `conv_shortcut`. x: (N, H, W, C_in); emb: (N, E) or None -> (N, H, W, out)."""

  out_channels: int
  groups: int
  eps: float
  output_scale: float = 1.0
  dropout: float = 0.0
  dtype: Dtype = _F32

  @nn.compact
  def __call__(self, x, emb=None, train=False):
    h = nn.silu(GroupNorm(self.groups, self.eps, self.dtype, name="norm1")(x))
    h = conv(self.out_channels, (3, 3), dtype=self.dtype, name="conv1")(h)
    if emb is not None:
      h = h + dense(self.out_channels, dtype=self.dtype, name="time_emb_proj")(
          nn.silu(emb))[:, None, None, :]
    h = nn.silu(GroupNorm(self.groups, self.eps, self.dtype, name="norm2")(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = conv(self.out_channels, (3, 3), dtype=self.dtype, name="conv2")(h)
    if x.shape[-1] != self.out_channels:
      x = conv(self.out_channels, (1, 1), padding=0, dtype=self.dtype, name="conv_shortcut")(x)
    out = x.astype(h.dtype) + h
    return out if self.output_scale == 1.0 else out / self.output_scale


def downsample(x, *, padding, dtype, name):
  """`Downsample2D(use_conv=True)`: 3×3 conv of stride 2 with symmetric `padding`; padding 0 pads
  (0, 1) on the bottom and right first, as the autoencoder's does. x: (N, H, W, C)."""
  if padding == 0:
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
  return conv(x.shape[-1], (3, 3), strides=2, padding=padding, dtype=dtype, name=name)(x)


def upsample(x, *, dtype, name):
  """`Upsample2D(use_conv=True)`: nearest-neighbour 2× then a 3×3 conv. x: (N, H, W, C)."""
  n, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None], (n, h, 2, w, 2, c)).reshape(n, 2 * h, 2 * w, c)
  return conv(c, (3, 3), dtype=dtype, name=name)(x)
