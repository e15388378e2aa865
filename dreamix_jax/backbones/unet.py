"""The space-time U-Net of every cascade stage (base, temporal SR, spatial SR), config-driven.

Layout: Imagen's Efficient U-Net (Saharia et al. 2022, App. B.1) made space-time separable as in
Imagen Video. A down block *first* downsamples (strided 3×3 conv, except at the top level) and then
runs its residual blocks; an up block runs its residual blocks and *then* upsamples. Each level keeps
one long skip connection from its down block to its up block, and — our reading of Efficient U-Net's
"skip connections scaled by 1/√2" — those long skips are multiplied by 1/√2 before concatenation.

After every residual block an SR stage (or any stage with `temporal_conv`) applies a residual temporal
convolution; levels in `temporal_attn_levels` add temporal self-attention (the base stage). Levels in
`attn_levels` have spatial self-attention with the text tokens appended to its keys/values; levels in
`cross_attn_levels` attend to the text only.

Conditioning: the log-SNR (per example `(B,)` or per frame `(B, T)`) is embedded per frame; the
attention-pooled text embedding is added to it, and with `frame_embedding` an embedding of the
frame's index in the clip; SR stages concatenate the (already upsampled, already
noise-augmented) low-resolution video to `z` and add an embedding of its augmentation log-SNR.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from dreamix_jax.backbones import layers

_SKIP_SCALE = 2.0 ** -0.5
ACTIVATION_AXES = ("activation_batch", "activation_height", "activation_width", "activation_embed")
# Rematerialisation policies per block: what the backward pass may keep instead of recomputing.
REMAT_POLICIES = {
    "none": None,
    "full": None,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _remat_policy_name(remat: str | bool) -> str:
  if isinstance(remat, bool):
    return "full" if remat else "none"
  return remat


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """Architecture of one stage's denoiser.

  channels: width of the top level; level i has `channels * channel_mult[i]` channels.
  num_res_blocks: residual blocks per level (Efficient U-Net: more at low resolution).
  attn_levels / cross_attn_levels / temporal_attn_levels: level indices (0 = full resolution).
  temporal_conv: a residual temporal convolution after every residual block.
  frame_embedding: add an embedding of each frame's absolute index to its conditioning embedding
    (`layers.FrameIndexEmbedding`; off for frame-masked examples, which are sets of images).
  conditional: an SR stage (concatenates the low-resolution video, conditions on its noise level).
  remat: rematerialisation of every block (`jax.checkpoint` policy, see `REMAT_POLICIES`): 'none',
    'full' (keep only block inputs), 'dots_saveable' (keep matmul/conv outputs),
    'dots_no_batch' (keep those without batch dimensions); True means 'full', False 'none'. The
    parameter tree is the same for every choice.
  """

  channels: int = 32
  channel_mult: tuple[int, ...] = (1, 2, 3)
  num_res_blocks: tuple[int, ...] = (1, 1, 1)
  attn_levels: tuple[int, ...] = (2,)
  cross_attn_levels: tuple[int, ...] = ()
  temporal_attn_levels: tuple[int, ...] = (2,)
  temporal_conv: bool = True
  frame_embedding: bool = False
  head_dim: int = 32
  dropout: float = 0.0
  conditional: bool = False
  out_channels: int = 3
  dtype: str = "float32"
  remat: str | bool = "none"

  def __post_init__(self):
    if _remat_policy_name(self.remat) not in REMAT_POLICIES:
      raise ValueError(f"remat {self.remat!r} is not one of {sorted(REMAT_POLICIES)} (or a bool).")
    if len(self.channel_mult) != len(self.num_res_blocks):
      raise ValueError(f"channel_mult {self.channel_mult} and num_res_blocks {self.num_res_blocks} "
                       "must have one entry per level.")
    levels = len(self.channel_mult)
    for field in ("attn_levels", "cross_attn_levels", "temporal_attn_levels"):
      bad = [lvl for lvl in getattr(self, field) if not 0 <= lvl < levels]
      if bad:
        raise ValueError(f"{field} {bad} out of range: the U-Net has levels 0..{levels - 1}.")
    for mult in self.channel_mult:
      if (self.channels * mult) % self.head_dim:
        raise ValueError(f"channels×mult = {self.channels * mult} is not divisible by head_dim "
                         f"{self.head_dim}.")

  @classmethod
  def from_config(cls, cfg: ml_collections.ConfigDict | dict) -> "UNetConfig":
    d = dict(cfg)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"Unknown U-Net config fields {unknown}; valid fields: {sorted(names)}.")
    for k, v in d.items():
      if isinstance(v, list):
        d[k] = tuple(v)
    return cls(**d)

  @property
  def downsample_factor(self) -> int:
    return 2 ** (len(self.channel_mult) - 1)


class SpaceTimeUNet(nn.Module):
  """Denoiser `v̂ = f(z, λ, text)`; see the module docstring. Shapes:

  z: (B, T, H, W, C_in); logsnr: (B,) or (B, T); text: (B, L, D); text_mask: (B, L) bool;
  cond: (B, T, H, W, 3) upsampled low-res video (SR stages); cond_logsnr: (B,) or (B, T);
  temporal_mask: (B,) flags (1 = frames are independent images) or (B, T, T) bool.
  frames_only (static): every example is a set of independent images, as with `temporal_mask` all
  ones, computed without the work that mask discards (no temporal convolutions; temporal attention
  as its per-frame value map); for Dreamix's frame variant in its own call. Excludes
  `temporal_mask`.
  Returns v̂: (B, T, H, W, out_channels) in float32.
  """

  config: UNetConfig

  @nn.compact
  def __call__(self, z, logsnr, text, text_mask, *, cond=None, cond_logsnr=None,
               temporal_mask=None, train=False, frames_only=False):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    b, t, h, w, _ = z.shape
    if h % cfg.downsample_factor or w % cfg.downsample_factor:
      raise ValueError(f"Frame size {h}×{w} is not divisible by the U-Net's downsampling factor "
                       f"{cfg.downsample_factor} ({len(cfg.channel_mult)} levels).")
    if cfg.conditional != (cond is not None):
      raise ValueError("An SR stage (conditional=True) needs `cond` and `cond_logsnr`; a base "
                       "stage takes neither.")
    if frames_only and temporal_mask is not None:
      raise ValueError("frames_only=True already masks every example; pass no temporal_mask.")
    if temporal_mask is None:
      temporal_mask = jnp.full((b,), 1.0 if frames_only else 0.0, jnp.float32)

    emb_dim = cfg.channels * 4
    emb = layers.LogSNREmbedding(cfg.channels, t, dtype=dtype, name="time_emb")(logsnr)
    text = layers.layer_norm(text.astype(dtype), dtype=dtype, name="text_norm")
    emb = emb + layers.TextPooling(emb_dim, dtype=dtype, name="text_pool")(text, text_mask)[:, None]
    if cfg.frame_embedding and not frames_only:
      ordered = 1.0 - layers.frame_flags(temporal_mask).astype(dtype)  # (B,) 0 for image sets
      frame_emb = layers.FrameIndexEmbedding(emb_dim, dtype=dtype, name="frame_emb")(t)  # (T, E)
      emb = emb + ordered[:, None, None] * frame_emb[None]
    x = z
    if cfg.conditional:
      if cond.shape[:4] != z.shape[:4]:
        raise ValueError(f"cond {cond.shape} must be upsampled to z's frames and size {z.shape[:4]}.")
      x = jnp.concatenate([z, cond], axis=-1)
      emb = emb + layers.LogSNREmbedding(cfg.channels, t, dtype=dtype, name="cond_emb")(cond_logsnr)
    emb = emb.reshape(b * t, emb_dim)

    x = layers.conv(cfg.channels, (3, 3), dtype=dtype, name="stem")(
        layers.fold_frames(x.astype(dtype)))
    policy = _remat_policy_name(cfg.remat)
    block = _Block if policy == "none" else nn.remat(_Block, static_argnums=(6, 7),
                                                     policy=REMAT_POLICIES[policy])

    skips = []
    for level, mult in enumerate(cfg.channel_mult):
      if level > 0:
        x = layers.conv(x.shape[-1], (3, 3), strides=2, dtype=dtype, name=f"down_{level}")(x)
      for i in range(cfg.num_res_blocks[level]):
        x = block(cfg, level, cfg.channels * mult, name=f"down_{level}_{i}")(
            x, emb, text, text_mask, temporal_mask, train, frames_only)
      skips.append(x)

    x = block(cfg, len(cfg.channel_mult) - 1, x.shape[-1], force_attention=True, name="middle")(
        x, emb, text, text_mask, temporal_mask, train, frames_only)

    for level in reversed(range(len(cfg.channel_mult))):
      x = jnp.concatenate([x, skips.pop() * _SKIP_SCALE], axis=-1)
      for i in range(cfg.num_res_blocks[level]):
        x = block(cfg, level, cfg.channels * cfg.channel_mult[level], name=f"up_{level}_{i}")(
            x, emb, text, text_mask, temporal_mask, train, frames_only)
      if level > 0:
        x = upsample_nearest(x)
        x = layers.conv(cfg.channels * cfg.channel_mult[level - 1], (3, 3), dtype=dtype,
                        name=f"up_{level}")(x)

    x = nn.swish(layers.group_norm(x, dtype=dtype, name="out_norm"))
    x = layers.conv(cfg.out_channels, (3, 3), zero_init=True, dtype=dtype, name="out")(x)
    return layers.unfold_frames(x, b).astype(jnp.float32)


def upsample_nearest(x):
  """2× nearest-neighbour upsampling, (N, H, W, C) -> (N, 2H, 2W, C), as a broadcast (equal to
  `jax.image.resize(..., "nearest")`, which lowers to gathers that are slow on CPU)."""
  n, h, w, c = x.shape
  return jnp.broadcast_to(x[:, :, None, :, None], (n, h, 2, w, 2, c)).reshape(n, 2 * h, 2 * w, c)


class _Block(nn.Module):
  """One residual block and the attention/temporal layers its level calls for. x: (B·T, H, W, C).

  With `frames_only` (static; see `SpaceTimeUNet`) the temporal convolution, whose residual the
  frame mask would zero, is skipped, and temporal attention takes its per-frame form.
  """

  config: UNetConfig
  level: int
  out_channels: int
  force_attention: bool = False

  @nn.compact
  def __call__(self, x, emb, text, text_mask, temporal_mask, train, frames_only):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    b = text.shape[0]
    x = layers.ResBlock(self.out_channels, cfg.dropout, dtype=dtype, name="res")(x, emb, train=train)
    if cfg.temporal_conv and not frames_only:
      x = layers.fold_frames(layers.TemporalConv(dtype=dtype, name="temporal_conv")(
          layers.unfold_frames(x, b), temporal_mask))
    heads = self.out_channels // cfg.head_dim
    if self.level in cfg.attn_levels or self.level in cfg.cross_attn_levels or self.force_attention:
      self_attn = self.level in cfg.attn_levels or self.force_attention
      x = layers.SpatialAttention(heads, self_attention=self_attn, dtype=dtype, name="attn")(
          x, text, text_mask)
    if self.level in cfg.temporal_attn_levels:
      x = layers.fold_frames(layers.TemporalAttention(heads, dtype=dtype, name="temporal_attn")(
          layers.unfold_frames(x, b), temporal_mask, frames_only))
    # Block boundary: (B·T, H, W, C) activations are sharded by the 'activation_*' logical rules
    # (a no-op without a mesh and rules; see dreamix_jax.parallel).
    return nn.with_logical_constraint(x, ACTIVATION_AXES)


@dataclasses.dataclass(frozen=True)
class UNetBackbone:
  """The space-time U-Net behind the backbone seam (`backbones.base.Backbone`): v-prediction on
  a continuous log-SNR. `apply` is `SpaceTimeUNet(config).apply` with the protocol's signature;
  `rng` feeds dropout when `train` is True; `frames_only` is static (see `SpaceTimeUNet`)."""

  config: UNetConfig
  prediction = "v"
  time_input = "logsnr"

  @classmethod
  def from_config(cls, fields) -> "UNetBackbone":
    return cls(UNetConfig.from_config(fields))

  @property
  def spatial_factor(self) -> int:
    return self.config.downsample_factor

  def init(self, rng, spec) -> Any:
    """Parameters (logical-partitioning boxes removed) for inputs of `spec` (`base.InputSpec`)."""
    model = SpaceTimeUNet(self.config)
    args, kwargs = self._example_inputs(spec, abstract=False)
    init = jax.jit(lambda r, a, k: nn.meta.unbox(model.init(r, *a, **k)["params"]))
    # An RBG key derived from `rng`: the same parameters for the same `rng`, and it compiles ~3×
    # faster than threefry on CPU (init draws many independent tensors).
    return init(jax.random.wrap_key_data(jnp.tile(jax.random.key_data(rng).ravel(), 2)[:4],
                                         impl="rbg"), args, kwargs)

  def abstract_params(self, spec):
    """Parameter shapes (`jax.ShapeDtypeStruct`s, boxed with logical names) without any memory."""
    model = SpaceTimeUNet(self.config)
    args, kwargs = self._example_inputs(spec, abstract=True)
    return jax.eval_shape(lambda r, a, k: model.init(r, *a, **k)["params"],
                          jax.random.PRNGKey(0), args, kwargs)

  def apply(self, params, z, noise_level, text, text_mask, *, cond=None, cond_logsnr=None,
            temporal_mask=None, train=False, rng=None, frames_only=False):
    rngs = {"dropout": rng} if (train and rng is not None) else None
    return SpaceTimeUNet(self.config).apply(
        {"params": params}, z, noise_level, text, text_mask, cond=cond, cond_logsnr=cond_logsnr,
        temporal_mask=temporal_mask, train=train, rngs=rngs, frames_only=frames_only)

  def _example_inputs(self, spec, abstract):
    if spec.channels != self.config.out_channels:
      raise ValueError(f"The U-Net predicts {self.config.out_channels} channels but the stage's "
                       f"inputs have {spec.channels}; set backbone.out_channels={spec.channels}.")
    if self.config.conditional != (spec.cond_channels > 0):
      raise ValueError("backbone.conditional must be True exactly for super-resolution stages.")
    make = (lambda shape, dt: jax.ShapeDtypeStruct(shape, dt)) if abstract else jnp.zeros
    f, h, w = spec.frames, spec.height, spec.width
    args = (make((1, f, h, w, spec.channels), jnp.float32), make((1,), jnp.float32),
            make((1, spec.text_len, spec.text_dim), jnp.float32),
            make((1, spec.text_len), jnp.bool_))
    kwargs = {}
    if self.config.conditional:
      kwargs = dict(cond=make((1, f, h, w, spec.cond_channels), jnp.float32),
                    cond_logsnr=make((1,), jnp.float32))
    return args, kwargs
