"""Stable Diffusion's `AutoencoderKL` (the latent space of ModelScope / Zeroscope text-to-video) in
Flax Linen, applied per frame, and `SDVAE`, the `autoencoders.Autoencoder` carrying its weights.

Encoder: conv_in -> DownEncoderBlock2D × n (ResNets, then a stride-2 conv after padding the bottom
and right by one, except the last) -> mid block (ResNet, single-head self-attention, ResNet) ->
GroupNorm, SiLU, conv_out -> quant_conv: the mean and log-variance of the latent distribution.
Decoder: post_quant_conv -> conv_in -> mid block -> UpDecoderBlock2D × n (ResNets, nearest 2×
upsampling + conv except the last) -> GroupNorm, SiLU, conv_out. A frame of H×W pixels has
(H/f)×(W/f) latents, f = 2^(n−1) (8 for SD's four blocks). Latents handed to the diffusion are
scaled, (mean − shift_factor)·scaling_factor, as diffusers' pipelines do (SD: no shift, 0.18215).
Weights: `backbones.diffusers_import.load_vae`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from dreamix_jax.backbones import unet3d_blocks as blocks

_IGNORED_KEYS = ("_class_name", "_diffusers_version", "_name_or_path", "_use_default_values",
                 "sample_size", "force_upcast")
_FIXED_KEYS = {"act_fn": "silu", "latents_mean": None, "latents_std": None}


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """The fields of diffusers' `vae/config.json`, plus the compute `dtype` (params are float32)."""

  in_channels: int = 3
  out_channels: int = 3
  down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",) * 4
  up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",) * 4
  block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
  layers_per_block: int = 2
  latent_channels: int = 4
  norm_num_groups: int = 32
  scaling_factor: float = 0.18215
  shift_factor: float | None = None
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  mid_block_add_attention: bool = True
  dtype: str = "float32"

  def __post_init__(self):
    n = len(self.block_out_channels)
    if (tuple(self.down_block_types) != ("DownEncoderBlock2D",) * n or
        tuple(self.up_block_types) != ("UpDecoderBlock2D",) * n):
      raise ValueError(f"Only DownEncoderBlock2D / UpDecoderBlock2D autoencoders with one block "
                       f"per block_out_channels ({n}) are supported; got {self.down_block_types}, "
                       f"{self.up_block_types}.")

  @classmethod
  def from_diffusers(cls, config: Mapping[str, Any], **overrides) -> "VAEConfig":
    d = {k: v for k, v in config.items() if k not in _IGNORED_KEYS}
    for key, value in _FIXED_KEYS.items():
      if d.pop(key, value) != value:
        raise ValueError(f"vae/config.json: {key}={config[key]!r} is not supported (only "
                         f"{value!r}).")
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
      raise ValueError(f"vae/config.json has keys {unknown} that VAEConfig does not support.")
    d.update(overrides)
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

  @property
  def spatial_factor(self) -> int:
    return 2 ** (len(self.block_out_channels) - 1)


def _resnet(cfg, channels, name):
  return blocks.ResnetBlock2D(channels, cfg.norm_num_groups, 1e-6, dtype=jnp.dtype(cfg.dtype),
                              name=name)


class _SelfAttention(nn.Module):
  """The mid block's attention: GroupNorm (eps 1e-6) -> one head over all H·W positions with
  biased q/k/v/out projections -> + input. x: (N, H, W, C)."""

  config: VAEConfig

  @nn.compact
  def __call__(self, x):
    n, h, w, c = x.shape
    dt = jnp.dtype(self.config.dtype)
    y = blocks.GroupNorm(self.config.norm_num_groups, 1e-6, dt, name="group_norm")(x)
    y = y.reshape(n, h * w, 1, c)
    q, k, v = (blocks.dense(c, dtype=dt, name=nm)(y) for nm in ("to_q", "to_k", "to_v"))
    out = jax.nn.dot_product_attention(q, k, v).astype(dt).reshape(n, h * w, c)
    return x + blocks.dense(c, dtype=dt, name="to_out")(out).reshape(n, h, w, c)


class _MidBlock(nn.Module):
  config: VAEConfig

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    x = _resnet(self.config, c, "resnets_0")(x)
    if self.config.mid_block_add_attention:
      x = _SelfAttention(self.config, name="attentions_0")(x)
    return _resnet(self.config, c, "resnets_1")(x)


class _Block(nn.Module):
  """DownEncoderBlock2D (`up=False`) or UpDecoderBlock2D (`up=True`); x: (N, H, W, C)."""

  config: VAEConfig
  channels: int
  layers: int
  resample: bool
  up: bool

  @nn.compact
  def __call__(self, x):
    dt = jnp.dtype(self.config.dtype)
    for i in range(self.layers):
      x = _resnet(self.config, self.channels, f"resnets_{i}")(x)
    if self.resample and self.up:
      x = blocks.upsample(x, dtype=dt, name="upsamplers_0")
    elif self.resample:
      x = blocks.downsample(x, padding=0, dtype=dt, name="downsamplers_0")
    return x


class Encoder(nn.Module):
  """Frames (N, H, W, in_channels) -> (N, H/f, W/f, 2·latent_channels) (before quant_conv)."""

  config: VAEConfig

  @nn.compact
  def __call__(self, x):
    cfg, dt = self.config, jnp.dtype(self.config.dtype)
    n = len(cfg.block_out_channels)
    x = blocks.conv(cfg.block_out_channels[0], (3, 3), dtype=dt, name="conv_in")(x.astype(dt))
    for i, c in enumerate(cfg.block_out_channels):
      x = _Block(cfg, c, cfg.layers_per_block, i < n - 1, False, name=f"down_blocks_{i}")(x)
    x = _MidBlock(cfg, name="mid_block")(x)
    x = nn.silu(blocks.GroupNorm(cfg.norm_num_groups, 1e-6, dt, name="conv_norm_out")(x))
    return blocks.conv(2 * cfg.latent_channels, (3, 3), dtype=dt, name="conv_out")(x)


class Decoder(nn.Module):
  """Latents (N, h, w, latent_channels) (after post_quant_conv) -> frames (N, h·f, w·f, out)."""

  config: VAEConfig

  @nn.compact
  def __call__(self, z):
    cfg, dt = self.config, jnp.dtype(self.config.dtype)
    n = len(cfg.block_out_channels)
    x = blocks.conv(cfg.block_out_channels[-1], (3, 3), dtype=dt, name="conv_in")(z.astype(dt))
    x = _MidBlock(cfg, name="mid_block")(x)
    for i, c in enumerate(reversed(cfg.block_out_channels)):
      x = _Block(cfg, c, cfg.layers_per_block + 1, i < n - 1, True, name=f"up_blocks_{i}")(x)
    x = nn.silu(blocks.GroupNorm(cfg.norm_num_groups, 1e-6, dt, name="conv_norm_out")(x))
    return blocks.conv(cfg.out_channels, (3, 3), dtype=dt, name="conv_out")(x)


class AutoencoderKL(nn.Module):
  """diffusers `AutoencoderKL` on channels-last frames. `moments(x)`: (N, H, W, 3) ->
  (mean, logvar) each (N, H/f, W/f, C), float32, logvar clipped to [−30, 20];
  `decode(z)`: unscaled latents -> (N, H, W, 3) float32. `__call__` (for init) decodes the mean."""

  config: VAEConfig

  def setup(self):
    cfg, dt = self.config, jnp.dtype(self.config.dtype)
    self.encoder = Encoder(cfg)
    self.decoder = Decoder(cfg)
    c = cfg.latent_channels
    if cfg.use_quant_conv:
      self.quant_conv = blocks.conv(2 * c, (1, 1), padding=0, dtype=dt)
    if cfg.use_post_quant_conv:
      self.post_quant_conv = blocks.conv(c, (1, 1), padding=0, dtype=dt)

  def moments(self, x):
    h = self.encoder(x)
    if self.config.use_quant_conv:
      h = self.quant_conv(h)
    mean, logvar = jnp.split(h.astype(jnp.float32), 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)

  def decode(self, z):
    if self.config.use_post_quant_conv:
      z = self.post_quant_conv(z.astype(jnp.dtype(self.config.dtype)))
    return self.decoder(z).astype(jnp.float32)

  def __call__(self, x):
    return self.decode(self.moments(x)[0])


class SDVAE:
  """`autoencoders.Autoencoder` over an `AutoencoderKL` and its parameters, per frame.

  encode(video (B, T, H, W, 3) in [−1, 1], rng=None) -> scaled latents (B, T, H/f, W/f, C): the
  posterior mean, or a sample of it given `rng`; decode(latents) -> (B, T, H, W, 3) float32 (not
  clipped). Frames go through the network `frames_per_call` at a time (`lax.map`), bounding
  activation memory; both methods can be called inside `jax.jit`.
  """

  pixel_space = False

  def __init__(self, config: VAEConfig, params, *, frames_per_call: int = 8):
    self.config, self.params = config, params
    self.channels = config.latent_channels
    self.spatial_factor = config.spatial_factor
    self.frames_per_call = frames_per_call
    self._model = AutoencoderKL(config)
    self._shift = config.shift_factor or 0.0

  def _per_frame(self, fn, x):
    """Applies fn to (N, ...) frames in chunks of `frames_per_call` (padding the last)."""
    n = x.shape[0]
    k = max(1, min(self.frames_per_call, n))
    pad = -n % k
    x = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1))
    out = jax.lax.map(fn, x.reshape((-1, k) + x.shape[1:]))
    return jax.tree_util.tree_map(lambda a: a.reshape((-1,) + a.shape[2:])[:n], out)

  def encode(self, video, rng=None):
    b, t, h, w, _ = video.shape
    f = self.spatial_factor
    if h % f or w % f:
      raise ValueError(f"Frames of {h}×{w} pixels are not divisible by the autoencoder's "
                       f"factor {f}.")
    frames = jnp.asarray(video, jnp.float32).reshape((b * t, h, w, video.shape[-1]))
    mean, logvar = self._per_frame(
        lambda x: self._model.apply({"params": self.params}, x, method=AutoencoderKL.moments),
        frames)
    z = mean
    if rng is not None:
      z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)
    z = (z - self._shift) * self.config.scaling_factor
    return z.reshape((b, t) + z.shape[1:])

  def decode(self, latents):
    b, t = latents.shape[:2]
    z = jnp.asarray(latents, jnp.float32) / self.config.scaling_factor + self._shift
    x = self._per_frame(
        lambda zz: self._model.apply({"params": self.params}, zz, method=AutoencoderKL.decode),
        z.reshape((b * t,) + z.shape[2:]))
    return x.reshape((b, t) + x.shape[1:])
