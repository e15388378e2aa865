"""The ModelScope / Zeroscope text-to-video U-Net (diffusers `UNet3DConditionModel`, the network of
`damo-vilab/text-to-video-ms-1.7b` and `cerspense/zeroscope_v2_576w`) in Flax Linen, behind the
backbone seam (`UNet3DBackbone`).

Network (blocks in `unet3d_blocks`): conv_in -> `transformer_in` (temporal) -> down blocks (per
layer: ResNet, temporal convs, and for CrossAttnDownBlock3D a spatial transformer with
cross-attention to the text and a temporal transformer; then a stride-2 conv) -> mid block ->
up blocks (skip concatenation, same layers, nearest 2× upsampling + conv) -> GroupNorm, SiLU,
conv_out. The time embedding (sinusoidal -> MLP) is added in every ResNet. Weights come from a
diffusers pipeline folder through `diffusers_import.load_unet`.

Frames-only (Dreamix's frame objective): the temporal layers — `transformer_in`, every
`temp_convs` and `temp_attentions` — are residual, and their GroupNorms normalise over all frames
of an example, so masking temporal attention would still mix frames. With `frames_only=True`
(static) they are skipped (identity) and every frame is computed exactly as if it were alone;
with `temporal_mask` (B,) they are blended per example, out = x + (1 − m)·(layer(x) − x).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from dreamix_jax.backbones import unet3d_blocks as blocks

ACTIVATION_AXES = ("activation_batch", "activation_height", "activation_width", "activation_embed")
DOWN_BLOCKS = ("CrossAttnDownBlock3D", "DownBlock3D")
UP_BLOCKS = ("CrossAttnUpBlock3D", "UpBlock3D")
REMAT_POLICIES = {
    "none": None,
    "full": None,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
# diffusers config keys that carry no architecture.
_IGNORED_KEYS = ("_class_name", "_diffusers_version", "_name_or_path", "_use_default_values",
                 "sample_size")
# diffusers keys whose only supported value is fixed here (key -> supported value).
_FIXED_KEYS = {"act_fn": "silu", "num_attention_heads": None, "time_cond_proj_dim": None}


@dataclasses.dataclass(frozen=True)
class UNet3DConfig:
  """Architecture (the fields of diffusers' `unet/config.json`) and how to run it.

  attention_head_dim: per-head width (diffusers' naming quirk: the value is passed on as the
    *number* of heads and used as `channels // value` heads of `value` channels, which is the
    same thing); an int, or one per down block.
  dtype: compute dtype ('bfloat16' on accelerators); parameters stay float32.
  remat: per-block rematerialisation policy (`REMAT_POLICIES`; True = 'full').
  temporal_dropout: dropout of the temporal convolutions when training (diffusers: 0.1).
  attention_impl: `jax.nn.dot_product_attention`'s implementation (None = XLA; 'cudnn' for
    fused attention on GPUs with bf16). Softmax is float32 either way.
  """

  in_channels: int = 4
  out_channels: int = 4
  down_block_types: tuple[str, ...] = ("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",)
  up_block_types: tuple[str, ...] = ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3
  block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
  layers_per_block: int = 2
  downsample_padding: int = 1
  mid_block_scale_factor: float = 1.0
  norm_num_groups: int = 32
  norm_eps: float = 1e-5
  cross_attention_dim: int = 1024
  attention_head_dim: int | tuple[int, ...] = 64
  dtype: str = "float32"
  remat: str | bool = "none"
  temporal_dropout: float = 0.1
  attention_impl: str | None = None

  def __post_init__(self):
    n = len(self.block_out_channels)
    if len(self.down_block_types) != n or len(self.up_block_types) != n:
      raise ValueError(f"down_block_types {self.down_block_types} and up_block_types "
                       f"{self.up_block_types} need one entry per block_out_channels ({n}).")
    bad = [b for b in self.down_block_types if b not in DOWN_BLOCKS] + [
        b for b in self.up_block_types if b not in UP_BLOCKS]
    if bad:
      raise ValueError(f"Unsupported UNet3D block types {bad}; supported: "
                       f"{DOWN_BLOCKS + UP_BLOCKS}.")
    if (self.remat if isinstance(self.remat, str) else "full") not in REMAT_POLICIES:
      raise ValueError(f"remat {self.remat!r} is not one of {sorted(REMAT_POLICIES)} (or a bool).")
    if not isinstance(self.attention_head_dim, int) and len(self.attention_head_dim) != n:
      raise ValueError(f"attention_head_dim {self.attention_head_dim} needs one entry per block.")

  @classmethod
  def from_diffusers(cls, config: Mapping[str, Any], **overrides) -> "UNet3DConfig":
    """From a diffusers `unet/config.json` dict; `overrides` set the run fields (dtype, remat...).
    Raises a ValueError naming any key or value this implementation does not support."""
    d = {k: v for k, v in config.items() if k not in _IGNORED_KEYS}
    for key, value in _FIXED_KEYS.items():
      if d.pop(key, value) != value:
        raise ValueError(f"unet/config.json: {key}={config[key]!r} is not supported "
                         f"(only {value!r}).")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"unet/config.json has keys {unknown} that UNet3DConfig does not support.")
    d.update(overrides)
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

  @property
  def head_dims(self) -> tuple[int, ...]:
    n = len(self.block_out_channels)
    return ((self.attention_head_dim,) * n if isinstance(self.attention_head_dim, int)
            else tuple(self.attention_head_dim))

  @property
  def downsample_factor(self) -> int:
    return 2 ** (len(self.block_out_channels) - 1)


def _temporal(x, delta, keep):
  """x + keep·delta; keep (N,) per folded frame, or None (temporal layers fully on)."""
  return x + delta if keep is None else x + keep[:, None, None, None].astype(x.dtype) * delta


class _Level(nn.Module):
  """One down, mid or up block (diffusers naming: resnets_i, temp_convs_i, attentions_i,
  temp_attentions_i, downsamplers_0 / upsamplers_0). x: (B·T, H, W, C); emb: (B·T, E);
  text: (B, S, D); keep: (B·T,) or None; skips (up blocks): the skip tensors it consumes, last
  first. Returns x and, for down blocks, the outputs it leaves as skips."""

  config: UNet3DConfig
  kind: str  # 'down' | 'mid' | 'up'
  out_channels: int
  heads: int
  head_dim: int
  cross_attention: bool
  frames: int
  resample: bool  # downsample after (down) / upsample after (up)

  @nn.compact
  def __call__(self, x, skips, emb, text, keep, train, frames_only):
    cfg, dt = self.config, jnp.dtype(self.config.dtype)
    groups, c = cfg.norm_num_groups, self.out_channels
    scale = cfg.mid_block_scale_factor if self.kind == "mid" else 1.0

    def resnet(i, h):
      return blocks.ResnetBlock2D(c, groups, cfg.norm_eps, scale, dtype=dt, name=f"resnets_{i}")(
          h, emb, train)

    def temp_conv(i, h):
      if frames_only:
        return h
      return _temporal(h, blocks.TemporalConvLayer(groups, self.frames, cfg.temporal_dropout, dt,
                                                   name=f"temp_convs_{i}")(h, train), keep)

    def attentions(i, h):
      h = blocks.Transformer2D(self.heads, self.head_dim, groups, dt, cfg.attention_impl,
                               name=f"attentions_{i}")(h, text)
      if frames_only:
        return h
      return _temporal(h, blocks.TransformerTemporal(
          self.heads, self.head_dim, groups, self.frames, dt, cfg.attention_impl,
          name=f"temp_attentions_{i}")(h), keep)

    outputs = []
    if self.kind == "mid":  # resnet, temp conv, then (attention, temporal attention, resnet, conv)
      x = temp_conv(0, resnet(0, x))
      x = temp_conv(1, resnet(1, attentions(0, x)))
    else:
      for i in range(cfg.layers_per_block + (self.kind == "up")):
        if self.kind == "up":
          x = jnp.concatenate([x, skips[i].astype(x.dtype)], axis=-1)
        x = temp_conv(i, resnet(i, x))
        if self.cross_attention:
          x = attentions(i, x)
        outputs.append(x)
    if self.resample and self.kind == "down":
      x = blocks.downsample(x, padding=cfg.downsample_padding, dtype=dt, name="downsamplers_0")
      outputs.append(x)
    if self.resample and self.kind == "up":
      x = blocks.upsample(x, dtype=dt, name="upsamplers_0")
    x = nn.with_logical_constraint(x, ACTIVATION_AXES)
    return x, tuple(outputs) if self.kind == "down" else ()


class UNet3D(nn.Module):
  """ε- (or v-) prediction `f(z, t, text)`.

  z: (B, T, H, W, C_in) channels-last; timesteps: (B,) or (B, T) float, the DDPM timestep in
  [0, num_train_timesteps) (fractional values are fine: the embedding is sinusoidal); text:
  (B, S, cross_attention_dim), the text tower's last hidden state, attended in full (diffusers
  passes no text mask); keep: (B,) 1 − temporal_mask or None; frames_only static (module
  docstring). Returns (B, T, H, W, out_channels) float32.
  """

  config: UNet3DConfig

  @nn.compact
  def __call__(self, z, timesteps, text, keep=None, *, train=False, frames_only=False):
    cfg, dt = self.config, jnp.dtype(self.config.dtype)
    b, t, h, w, _ = z.shape
    if h % cfg.downsample_factor or w % cfg.downsample_factor:
      raise ValueError(f"Latent size {h}×{w} is not divisible by the UNet3D's downsampling "
                       f"factor {cfg.downsample_factor}.")
    if keep is not None:
      keep = jnp.repeat(jnp.asarray(keep, jnp.float32), t)  # (B·T,)
    c0 = cfg.block_out_channels[0]
    steps = jnp.broadcast_to(timesteps.reshape(b, -1), (b, t)).reshape(b * t)
    emb = blocks.timestep_embedding(steps, c0)
    emb = _TimeEmbedding(4 * c0, dt, name="time_embedding")(emb)  # (B·T, 4·C0)
    text = text.astype(dt)

    x = blocks.conv(c0, (3, 3), dtype=dt, name="conv_in")(z.reshape((b * t,) + z.shape[2:])
                                                          .astype(dt))
    if not frames_only:
      x = _temporal(x, blocks.TransformerTemporal(8, cfg.head_dims[0], cfg.norm_num_groups, t, dt,
                                                  cfg.attention_impl, name="transformer_in")(x),
                    keep)
    policy = cfg.remat if isinstance(cfg.remat, str) else ("full" if cfg.remat else "none")
    level = _Level if policy == "none" else nn.remat(_Level, static_argnums=(6, 7),
                                                     policy=REMAT_POLICIES[policy])
    n = len(cfg.block_out_channels)
    heads = lambda i: (cfg.block_out_channels[i] // cfg.head_dims[i], cfg.head_dims[i])

    skips = [x]
    for i, kind in enumerate(cfg.down_block_types):
      x, outs = level(cfg, "down", cfg.block_out_channels[i], *heads(i),
                      kind == "CrossAttnDownBlock3D", t, i < n - 1, name=f"down_blocks_{i}")(
                          x, (), emb, text, keep, train, frames_only)
      skips.extend(outs)
    x, _ = level(cfg, "mid", cfg.block_out_channels[-1], *heads(n - 1), True, t, False,
                 name="mid_block")(x, (), emb, text, keep, train, frames_only)
    for i, kind in enumerate(cfg.up_block_types):
      j = n - 1 - i  # head configuration of the mirrored down block
      mine = tuple(reversed(skips[-(cfg.layers_per_block + 1):]))
      del skips[-(cfg.layers_per_block + 1):]
      x, _ = level(cfg, "up", cfg.block_out_channels[j], *heads(j), kind == "CrossAttnUpBlock3D",
                   t, i < n - 1, name=f"up_blocks_{i}")(x, mine, emb, text, keep, train,
                                                       frames_only)

    x = nn.silu(blocks.GroupNorm(cfg.norm_num_groups, cfg.norm_eps, dt, name="conv_norm_out")(x))
    x = blocks.conv(cfg.out_channels, (3, 3), dtype=dt, name="conv_out")(x)
    return x.reshape((b, t) + x.shape[1:]).astype(jnp.float32)


class _TimeEmbedding(nn.Module):
  """`TimestepEmbedding`: linear_1 -> SiLU -> linear_2. (N, C0) -> (N, dim)."""

  dim: int
  dtype: Any

  @nn.compact
  def __call__(self, x):
    x = nn.silu(blocks.dense(self.dim, dtype=self.dtype, name="linear_1")(x))
    return blocks.dense(self.dim, dtype=self.dtype, name="linear_2")(x)


@dataclasses.dataclass(frozen=True)
class UNet3DBackbone:
  """`UNet3D` behind `backbones.base.Backbone`: `time_input = "timestep"` (the noise level is the
  DDPM timestep in [0, 1000), (B,) or (B, T)); `prediction` from the scheduler config ('eps' for
  ModelScope; 'v' for v-prediction checkpoints). `apply` takes z (B, T, H, W, C) channels-last and
  text (B, 77, D) (the CLIP text tower's last hidden state); `text_mask` is ignored, as in
  diffusers (the U-Net attends to all 77 positions, padding included); `cond`/`cond_logsnr` must
  be None (a base stage); `temporal_mask` is (B,) (1 = a set of independent images); `rng` feeds
  the temporal convolutions' dropout when `train`."""

  config: UNet3DConfig
  prediction: str = "eps"
  time_input = "timestep"

  @classmethod
  def from_config(cls, fields) -> "UNet3DBackbone":
    """From a stage config's backbone fields: `pipeline_dir` (a local diffusers pipeline folder,
    whose unet/ and scheduler/ configs give the architecture and prediction) plus run fields
    (dtype, remat, ...), or the architecture fields themselves (and `prediction`)."""
    fields = dict(fields)
    pipeline_dir = fields.pop("pipeline_dir", None)
    if pipeline_dir is not None:
      from dreamix_jax.backbones import diffusers_import  # pylint: disable=g-import-not-at-top
      return diffusers_import.unet_backbone(pipeline_dir, **fields)
    prediction = fields.pop("prediction", "eps")
    return cls(UNet3DConfig.from_diffusers(fields), prediction)

  @property
  def spatial_factor(self) -> int:
    return self.config.downsample_factor

  def init(self, rng, spec) -> Any:
    """Parameters (logical boxes removed) for inputs of `spec` (`base.InputSpec`)."""
    args = self._example_inputs(spec, abstract=False)
    return jax.jit(lambda r, a: nn.meta.unbox(UNet3D(self.config).init(r, *a)["params"]))(rng, args)

  def abstract_params(self, spec):
    """Parameter shapes (`jax.ShapeDtypeStruct`s boxed with logical names), no memory."""
    args = self._example_inputs(spec, abstract=True)
    return jax.eval_shape(lambda r, a: UNet3D(self.config).init(r, *a)["params"],
                          jax.random.PRNGKey(0), args)

  def apply(self, params, z, noise_level, text, text_mask, *, cond=None, cond_logsnr=None,
            temporal_mask=None, train=False, rng=None, frames_only=False):
    del text_mask  # diffusers' UNet3D attends to every text position
    if cond is not None or cond_logsnr is not None:
      raise ValueError("UNet3DBackbone is a base-stage (text-to-video) network: it takes no "
                       "`cond` / `cond_logsnr`.")
    if frames_only and temporal_mask is not None:
      raise ValueError("frames_only=True already bypasses every temporal layer; pass no "
                       "temporal_mask.")
    keep = None if temporal_mask is None else 1.0 - jnp.asarray(temporal_mask, jnp.float32)
    if keep is not None and keep.ndim != 1:
      raise ValueError(f"temporal_mask must be (B,) per-example flags, got {keep.shape}.")
    rngs = {"dropout": rng} if (train and rng is not None) else None
    return UNet3D(self.config).apply({"params": params}, z, noise_level, text, keep, train=train,
                                     frames_only=frames_only, rngs=rngs)

  def _example_inputs(self, spec, abstract):
    if spec.channels != self.config.in_channels or spec.cond_channels:
      raise ValueError(f"The UNet3D takes {self.config.in_channels}-channel latents and no "
                       f"conditioning video; the stage has {spec.channels} channels and "
                       f"cond_channels={spec.cond_channels}.")
    if spec.text_dim != self.config.cross_attention_dim:
      raise ValueError(f"The UNet3D cross-attends to {self.config.cross_attention_dim}-d text; "
                       f"the stage's text is {spec.text_dim}-d.")
    make = (lambda s, d: jax.ShapeDtypeStruct(s, d)) if abstract else jnp.zeros
    return (make((1, spec.frames, spec.height, spec.width, spec.channels), jnp.float32),
            make((1,), jnp.float32), make((1, spec.text_len, spec.text_dim), jnp.float32))
