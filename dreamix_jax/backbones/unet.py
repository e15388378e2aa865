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

Direction-of-motion options (`UNetConfig`: coord_channels, pos_embedding, spacetime_conv_levels,
joint_attn_levels, text_temporal; all off by default, see `spacetime_layers`) add paths from text,
space and time together; each starts as an exact no-op, so old weights continue where they were.

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

from dreamix_jax.backbones import layers, spacetime_layers

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

  Direction-of-motion options (`spacetime_layers`; each off by default, leaving the parameter tree
  and outputs as they were; each new term starts at zero, so old weights plus the new top-level
  module named in brackets, `init_from_new_modules`, start exactly where they were):
  coord_channels: x, y ramps in [−1, 1] as stem inputs ('coord_stem'); coord_time adds a t ramp
    over the clip's frames, 0 in every frame of a frame set.
  pos_embedding: a learned (H, W, C) position table per level, added before its spatial attention
    ('pos_emb').
  spacetime_conv_levels: a residual 3×3×3 space-time convolution after every block of these levels
    ('spacetime_conv'); a frame set keeps its centre time slice only.
  joint_attn_levels: self-attention over all T·H·W positions (3-D positions, text tokens in the
    keys/values) after every block of these levels ('joint_attn'); per-frame for a frame set.
  text_temporal: a per-frame FiLM of the temporal layers (temporal conv input, temporal attention
    queries and keys) from the conditioning embedding, pooled text included ('text_temporal');
    a no-op for frame sets, whose temporal layers are bypassed.
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
  coord_channels: bool = False
  coord_time: bool = False
  pos_embedding: bool = False
  spacetime_conv_levels: tuple[int, ...] = ()
  joint_attn_levels: tuple[int, ...] = ()
  text_temporal: bool = False

  def __post_init__(self):
    if _remat_policy_name(self.remat) not in REMAT_POLICIES:
      raise ValueError(f"remat {self.remat!r} is not one of {sorted(REMAT_POLICIES)} (or a bool).")
    if len(self.channel_mult) != len(self.num_res_blocks):
      raise ValueError(f"channel_mult {self.channel_mult} and num_res_blocks {self.num_res_blocks} "
                       "must have one entry per level.")
    levels = len(self.channel_mult)
    for field in ("attn_levels", "cross_attn_levels", "temporal_attn_levels",
                  "spacetime_conv_levels", "joint_attn_levels"):
      bad = [lvl for lvl in getattr(self, field) if not 0 <= lvl < levels]
      if bad:
        raise ValueError(f"{field} {bad} out of range: the U-Net has levels 0..{levels - 1}.")
    for mult in self.channel_mult:
      if (self.channels * mult) % self.head_dim:
        raise ValueError(f"channels×mult = {self.channels * mult} is not divisible by head_dim "
                         f"{self.head_dim}.")
    if self.coord_time and not self.coord_channels:
      raise ValueError("coord_time adds a t ramp to the coordinate channels: set coord_channels.")
    if self.text_temporal and not (self.temporal_conv or self.temporal_attn_levels):
      raise ValueError("text_temporal modulates the temporal layers, and this U-Net has none.")

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
    if cfg.coord_channels:
      x = x + spacetime_layers.CoordinateStem(cfg.channels, cfg.coord_time, dtype=dtype,
                                              name="coord_stem")(temporal_mask, t, h, w)
    run_block = self._block_runner(cfg, dtype, b, h, w, emb, text, text_mask, temporal_mask,
                                   train, frames_only)

    skips = []
    for level, mult in enumerate(cfg.channel_mult):
      if level > 0:
        x = layers.conv(x.shape[-1], (3, 3), strides=2, dtype=dtype, name=f"down_{level}")(x)
      for i in range(cfg.num_res_blocks[level]):
        x = run_block(f"down_{level}_{i}", level, cfg.channels * mult, x)
      skips.append(x)

    x = run_block("middle", len(cfg.channel_mult) - 1, x.shape[-1], x, force_attention=True)

    for level in reversed(range(len(cfg.channel_mult))):
      x = jnp.concatenate([x, skips.pop() * _SKIP_SCALE], axis=-1)
      for i in range(cfg.num_res_blocks[level]):
        x = run_block(f"up_{level}_{i}", level, cfg.channels * cfg.channel_mult[level], x)
      if level > 0:
        x = upsample_nearest(x)
        x = layers.conv(cfg.channels * cfg.channel_mult[level - 1], (3, 3), dtype=dtype,
                        name=f"up_{level}")(x)

    x = nn.swish(layers.group_norm(x, dtype=dtype, name="out_norm"))
    x = layers.conv(cfg.out_channels, (3, 3), zero_init=True, dtype=dtype, name="out")(x)
    return layers.unfold_frames(x, b).astype(jnp.float32)

  def _block_runner(self, cfg, dtype, b, h, w, emb, text, text_mask, temporal_mask, train,
                    frames_only):
    """`run(name, level, channels, x, force_attention=False)`: the block `name` on x
    (B·T, H_l, W_l, C) with the direction-of-motion layers its level calls for: the block's
    temporal-layer FiLM (computed here, passed in), the level's position table, and after the
    block the space-time conv and joint attention (their parameters under one top-level name each,
    `spacetime_layers.PerBlock`; rematerialised like the blocks)."""
    policy = _remat_policy_name(cfg.remat)
    remat = lambda cls, static: cls if policy == "none" else nn.remat(
        cls, static_argnums=static, policy=REMAT_POLICIES[policy])
    block = remat(_Block, (8, 9))
    options = (("dtype", dtype),)
    pos = {}
    if cfg.pos_embedding:
      last = len(cfg.channel_mult) - 1
      levels = sorted(set(cfg.attn_levels) | set(cfg.cross_attn_levels) | {last})
      pos = spacetime_layers.PositionEmbedding(
          tuple((lvl, h >> lvl, w >> lvl, cfg.channels * cfg.channel_mult[lvl]) for lvl in levels),
          name="pos_emb")()
    if cfg.text_temporal and not frames_only:
      film_bank = spacetime_layers.PerBlock(spacetime_layers.TemporalFiLM, options,
                                            name="text_temporal")
    if cfg.spacetime_conv_levels:
      conv_bank = remat(spacetime_layers.PerBlock, (1, 4))(spacetime_layers.SpaceTimeConv, options,
                                                           name="spacetime_conv")
    if cfg.joint_attn_levels:
      joint_bank = remat(spacetime_layers.PerBlock, (1, 6))(
          spacetime_layers.JointAttention, options + (("head_dim", cfg.head_dim),),
          name="joint_attn")

    def run(name, level, channels, x, force_attention=False):
      film = None
      features = (2 * channels * cfg.temporal_conv +
                  4 * channels * (level in cfg.temporal_attn_levels))
      if cfg.text_temporal and not frames_only and features:
        film = film_bank(name, emb, features)
      x = block(cfg, level, channels, force_attention=force_attention, name=name)(
          x, emb, text, text_mask, temporal_mask, film, pos.get(level), train, frames_only)
      if level in cfg.spacetime_conv_levels:
        x = layers.fold_frames(conv_bank(name, layers.unfold_frames(x, b), temporal_mask,
                                         frames_only))
        x = nn.with_logical_constraint(x, ACTIVATION_AXES)
      if level in cfg.joint_attn_levels:
        x = layers.fold_frames(joint_bank(name, layers.unfold_frames(x, b), text, text_mask,
                                          temporal_mask, frames_only))
        x = nn.with_logical_constraint(x, ACTIVATION_AXES)
      return x

    return run


def upsample_nearest(x):
  """2× nearest-neighbour upsampling, (N, H, W, C) -> (N, 2H, 2W, C), as a broadcast (equal to
  `jax.image.resize(..., "nearest")`, which lowers to gathers that are slow on CPU)."""
  n, h, w, c = x.shape
  return jnp.broadcast_to(x[:, :, None, :, None], (n, h, 2, w, 2, c)).reshape(n, 2 * h, 2 * w, c)


class _Block(nn.Module):
  """One residual block and the attention/temporal layers its level calls for. x: (B·T, H, W, C).

  With `frames_only` (static; see `SpaceTimeUNet`) the temporal convolution, whose residual the
  frame mask would zero, is skipped, and temporal attention takes its per-frame form.
  film: None, or (B·T, F) the block's temporal FiLM (`UNetConfig.text_temporal`): the temporal
  conv's 2C columns first (when it has one), then temporal attention's 4C. pos: None, or the
  level's (H, W, C) position table, added before spatial attention (`pos_embedding`).
  """

  config: UNetConfig
  level: int
  out_channels: int
  force_attention: bool = False

  @nn.compact
  def __call__(self, x, emb, text, text_mask, temporal_mask, film, pos, train, frames_only):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    b = text.shape[0]
    x = layers.ResBlock(self.out_channels, cfg.dropout, dtype=dtype, name="res")(x, emb, train=train)
    conv_film = None
    if film is not None and cfg.temporal_conv:
      conv_film, film = film[:, :2 * self.out_channels], film[:, 2 * self.out_channels:]
    if cfg.temporal_conv and not frames_only:
      x = layers.fold_frames(layers.TemporalConv(dtype=dtype, name="temporal_conv")(
          layers.unfold_frames(x, b), temporal_mask, conv_film))
    heads = self.out_channels // cfg.head_dim
    if self.level in cfg.attn_levels or self.level in cfg.cross_attn_levels or self.force_attention:
      self_attn = self.level in cfg.attn_levels or self.force_attention
      if pos is not None:
        x = x + pos.astype(x.dtype)[None]
      x = layers.SpatialAttention(heads, self_attention=self_attn, dtype=dtype, name="attn")(
          x, text, text_mask)
    if self.level in cfg.temporal_attn_levels:
      x = layers.fold_frames(layers.TemporalAttention(heads, dtype=dtype, name="temporal_attn")(
          layers.unfold_frames(x, b), temporal_mask, frames_only,
          film if film is not None and film.shape[-1] else None))
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
