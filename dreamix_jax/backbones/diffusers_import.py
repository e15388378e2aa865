"""Imports a local diffusers text-to-video pipeline folder (ModelScope
`damo-vilab/text-to-video-ms-1.7b`, Zeroscope `cerspense/zeroscope_v2_576w`) into this project's
Flax networks.

Folder layout: `model_index.json`, `unet/` (UNet3DConditionModel), `vae/` (AutoencoderKL),
`text_encoder/` (CLIPTextModel), `tokenizer/` (CLIPTokenizer files), `scheduler/`
(`scheduler_config.json`). Nothing is downloaded. Each component's config.json gives the
architecture; its weights stream through `diffusers_weights.load_params` (one tensor at a time,
safetensors or, with torch >= 2.6, `torch.load(weights_only=True)`) through the explicit name maps
below: diffusers tensor name -> Flax path and layout (Linear (out, in) -> (in, out); Conv2d OIHW ->
HWIO; the temporal Conv3d's (O, I, 3, 1, 1) -> (3, 1, 1, I, O)). Any missing component, missing,
unexpected or mis-shaped tensor is a ValueError saying what is wrong.

Entry points: `load_pipeline` (everything), or `load_unet`, `load_vae`, `clip_text_embedder`,
`load_scheduler_config` alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from dreamix_jax import parallel
from dreamix_jax.autoencoders import sd_vae
from dreamix_jax.backbones import base
from dreamix_jax.backbones import diffusers_weights as weights
from dreamix_jax.backbones import unet3d
from dreamix_jax.data import fingerprint
from dreamix_jax.metrics import clip_weights
from dreamix_jax.text import clip_text

T = weights.Target
_DIFFUSERS_STEMS = ("diffusion_pytorch_model",)
_TRANSFORMERS_STEMS = ("model", "pytorch_model")
_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v"}
# Pre-0.15 diffusers names of the autoencoder's mid-block attention (converted by diffusers too).
_VAE_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


# ------------------------------------------------------------------------------ folders, configs

def component_dir(pipeline_dir: str, name: str) -> str:
  """`pipeline_dir/name`, checking that the pipeline folder and the component folder exist."""
  if not os.path.isfile(os.path.join(pipeline_dir, "model_index.json")):
    raise ValueError(f"{pipeline_dir} is not a diffusers pipeline folder (no model_index.json); "
                     "download the whole pipeline, e.g. `huggingface-cli download "
                     "damo-vilab/text-to-video-ms-1.7b --local-dir DIR`.")
  folder = os.path.join(pipeline_dir, name)
  if not os.path.isdir(folder):
    raise ValueError(f"The pipeline folder {pipeline_dir} has no {name}/ component; it needs "
                     "unet/, vae/, text_encoder/, tokenizer/ and scheduler/ (download it "
                     "completely).")
  return folder


def read_json(folder: str, filename: str) -> dict:
  path = os.path.join(folder, filename)
  if not os.path.isfile(path):
    raise ValueError(f"{path} is missing; the component folder is incomplete.")
  with open(path) as f:
    return json.load(f)


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
  """The DDPM training schedule of `scheduler/scheduler_config.json` (whatever the sampler class):
  betas over `num_train_timesteps` steps ('scaled_linear': linspace(√β0, √β1)², 'linear':
  linspace(β0, β1)) and what the U-Net predicts."""

  num_train_timesteps: int = 1000
  beta_start: float = 0.00085
  beta_end: float = 0.012
  beta_schedule: str = "scaled_linear"
  prediction_type: str = "epsilon"
  steps_offset: int = 0
  timestep_spacing: str = "leading"
  class_name: str = ""

  def __post_init__(self):
    if self.beta_schedule not in ("scaled_linear", "linear"):
      raise ValueError(f"beta_schedule {self.beta_schedule!r} is not supported (scaled_linear, "
                       "linear).")
    if self.prediction_type not in _PREDICTIONS:
      raise ValueError(f"prediction_type {self.prediction_type!r} is not supported "
                       f"({sorted(_PREDICTIONS)}).")

  @property
  def prediction(self) -> str:
    """'eps' or 'v' (the backbone protocol's names)."""
    return _PREDICTIONS[self.prediction_type]

  def betas(self) -> np.ndarray:
    n = self.num_train_timesteps
    if self.beta_schedule == "linear":
      return np.linspace(self.beta_start, self.beta_end, n, dtype=np.float64)
    return np.linspace(self.beta_start ** 0.5, self.beta_end ** 0.5, n, dtype=np.float64) ** 2

  def alphas_cumprod(self) -> np.ndarray:
    """ᾱ_t for t = 0..N−1 (float64): z_t = √ᾱ_t x + √(1 − ᾱ_t) ε."""
    return np.cumprod(1.0 - self.betas())


def load_scheduler_config(pipeline_dir: str) -> SchedulerConfig:
  cfg = read_json(component_dir(pipeline_dir, "scheduler"), "scheduler_config.json")
  if cfg.get("trained_betas") is not None:
    raise ValueError("scheduler_config.json has trained_betas; only beta schedules are supported.")
  names = {f.name for f in dataclasses.fields(SchedulerConfig)}
  fields = {k: v for k, v in cfg.items() if k in names}
  return SchedulerConfig(class_name=cfg.get("_class_name", ""), **fields)


# ------------------------------------------------------------------------------ name maps

def _linear(d, f, bias=True):
  out = {f"{d}.weight": T(f + ("kernel",), "linear")}
  if bias:
    out[f"{d}.bias"] = T(f + ("bias",))
  return out


def _conv(d, f, layout="conv2d"):
  return {f"{d}.weight": T(f + ("kernel",), layout), f"{d}.bias": T(f + ("bias",))}


def _norm(d, f):
  return {f"{d}.weight": T(f + ("scale",)), f"{d}.bias": T(f + ("bias",))}


def _attention(d, f, qkv_bias=False):
  out = {}
  for p in ("to_q", "to_k", "to_v"):
    out.update(_linear(f"{d}.{p}", f + (p,), bias=qkv_bias))
  out.update(_linear(f"{d}.to_out.0", f + ("to_out",)))
  return out


def _transformer(d, f):
  """Transformer2DModel / TransformerTemporalModel with one BasicTransformerBlock."""
  b, fb = f"{d}.transformer_blocks.0", f + ("transformer_blocks_0",)
  out = {**_norm(f"{d}.norm", f + ("norm",)), **_linear(f"{d}.proj_in", f + ("proj_in",)),
         **_linear(f"{d}.proj_out", f + ("proj_out",))}
  for i in (1, 2, 3):
    out.update(_norm(f"{b}.norm{i}", fb + (f"norm{i}",)))
  for a in ("attn1", "attn2"):
    out.update(_attention(f"{b}.{a}", fb + (a,)))
  out.update(_linear(f"{b}.ff.net.0.proj", fb + ("ff", "proj")))
  out.update(_linear(f"{b}.ff.net.2", fb + ("ff", "out")))
  return out


def _resnet(d, f, shortcut, temb=True):
  out = {**_norm(f"{d}.norm1", f + ("norm1",)), **_conv(f"{d}.conv1", f + ("conv1",)),
         **_norm(f"{d}.norm2", f + ("norm2",)), **_conv(f"{d}.conv2", f + ("conv2",))}
  if temb:
    out.update(_linear(f"{d}.time_emb_proj", f + ("time_emb_proj",)))
  if shortcut:
    out.update(_conv(f"{d}.conv_shortcut", f + ("conv_shortcut",)))
  return out


def _temp_conv(d, f):
  out = {}
  for i in range(1, 5):
    out.update(_norm(f"{d}.conv{i}.0", f + (f"conv{i}_norm",)))
    out.update(_conv(f"{d}.conv{i}.{2 if i == 1 else 3}", f + (f"conv{i}",), "conv3d"))
  return out


def unet_name_map(cfg: unet3d.UNet3DConfig) -> dict[str, weights.Target]:
  """Every tensor of a diffusers `UNet3DConditionModel` with config `cfg` -> its Flax target."""
  ch, n, layers = cfg.block_out_channels, len(cfg.block_out_channels), cfg.layers_per_block
  m = {**_conv("conv_in", ("conv_in",)), **_conv("conv_out", ("conv_out",)),
       **_norm("conv_norm_out", ("conv_norm_out",)),
       **_linear("time_embedding.linear_1", ("time_embedding", "linear_1")),
       **_linear("time_embedding.linear_2", ("time_embedding", "linear_2")),
       **_transformer("transformer_in", ("transformer_in",))}

  def layer(d, f, j, shortcut, attention):
    m.update(_resnet(f"{d}.resnets.{j}", f + (f"resnets_{j}",), shortcut))
    m.update(_temp_conv(f"{d}.temp_convs.{j}", f + (f"temp_convs_{j}",)))
    if attention:
      m.update(_transformer(f"{d}.attentions.{j}", f + (f"attentions_{j}",)))
      m.update(_transformer(f"{d}.temp_attentions.{j}", f + (f"temp_attentions_{j}",)))

  for i, kind in enumerate(cfg.down_block_types):
    d, f = f"down_blocks.{i}", (f"down_blocks_{i}",)
    for j in range(layers):
      layer(d, f, j, j == 0 and ch[max(i - 1, 0)] != ch[i], kind == "CrossAttnDownBlock3D")
    if i < n - 1:
      m.update(_conv(f"{d}.downsamplers.0.conv", f + ("downsamplers_0",)))
  layer("mid_block", ("mid_block",), 0, False, True)
  m.update(_resnet("mid_block.resnets.1", ("mid_block", "resnets_1"), False))
  m.update(_temp_conv("mid_block.temp_convs.1", ("mid_block", "temp_convs_1")))
  for i, kind in enumerate(cfg.up_block_types):
    d, f = f"up_blocks.{i}", (f"up_blocks_{i}",)
    for j in range(layers + 1):  # skip concatenation: every resnet changes its channel count
      layer(d, f, j, True, kind == "CrossAttnUpBlock3D")
    if i < n - 1:
      m.update(_conv(f"{d}.upsamplers.0.conv", f + ("upsamplers_0",)))
  return m


def vae_name_map(cfg: sd_vae.VAEConfig) -> dict[str, weights.Target]:
  """Every tensor of a diffusers `AutoencoderKL` with config `cfg` -> its Flax target."""
  ch, n, layers = cfg.block_out_channels, len(cfg.block_out_channels), cfg.layers_per_block
  m = {}
  for part in ("encoder", "decoder"):
    p = (part,)
    m.update(_conv(f"{part}.conv_in", p + ("conv_in",)))
    m.update(_conv(f"{part}.conv_out", p + ("conv_out",)))
    m.update(_norm(f"{part}.conv_norm_out", p + ("conv_norm_out",)))
    for j in (0, 1):
      m.update(_resnet(f"{part}.mid_block.resnets.{j}", p + ("mid_block", f"resnets_{j}"), False,
                       temb=False))
    if cfg.mid_block_add_attention:
      a, fa = f"{part}.mid_block.attentions.0", p + ("mid_block", "attentions_0")
      m.update(_norm(f"{a}.group_norm", fa + ("group_norm",)))
      m.update(_attention(a, fa, qkv_bias=True))
  for i in range(n):
    d, f = f"encoder.down_blocks.{i}", ("encoder", f"down_blocks_{i}")
    for j in range(layers):
      m.update(_resnet(f"{d}.resnets.{j}", f + (f"resnets_{j}",),
                       j == 0 and ch[max(i - 1, 0)] != ch[i], temb=False))
    if i < n - 1:
      m.update(_conv(f"{d}.downsamplers.0.conv", f + ("downsamplers_0",)))
  rev = tuple(reversed(ch))
  for i in range(n):
    d, f = f"decoder.up_blocks.{i}", ("decoder", f"up_blocks_{i}")
    for j in range(layers + 1):
      m.update(_resnet(f"{d}.resnets.{j}", f + (f"resnets_{j}",),
                       j == 0 and rev[max(i - 1, 0)] != rev[i], temb=False))
    if i < n - 1:
      m.update(_conv(f"{d}.upsamplers.0.conv", f + ("upsamplers_0",)))
  if cfg.use_quant_conv:
    m.update(_conv("quant_conv", ("quant_conv",)))
  if cfg.use_post_quant_conv:
    m.update(_conv("post_quant_conv", ("post_quant_conv",)))
  return m


def vae_legacy_aliases(cfg: sd_vae.VAEConfig) -> dict[str, str]:
  """Old attention names (`...attentions.0.query.weight`) -> current ones (`...to_q.weight`)."""
  out = {}
  for part in ("encoder", "decoder"):
    for old, new in _VAE_LEGACY_ATTENTION.items():
      for s in ("weight", "bias"):
        out[f"{part}.mid_block.attentions.0.{old}.{s}"] = f"{part}.mid_block.attentions.0.{new}.{s}"
  return out


def text_encoder_name_map(cfg: clip_text.ClipTextConfig) -> dict[str, weights.Target]:
  """Every tensor of a `transformers.CLIPTextModel` -> its `ClipTextTransformer` target (the
  encoder layers' map is `metrics.clip`'s, whose layouts are named as ours)."""
  t = "text_model"
  m = {f"{t}.embeddings.token_embedding.weight": T(("token_embedding", "embedding")),
       f"{t}.embeddings.position_embedding.weight": T(("position_embedding", "embedding")),
       **_norm(f"{t}.final_layer_norm", ("final_layer_norm",))}
  specs = clip_weights.tower_specs(t, cfg.tower)
  for name, (path, transform) in specs.items():
    m[name] = T(path[1:], transform)
  return m


# ------------------------------------------------------------------------------ loaders

def _shardings(sharding, boxed):
  if isinstance(sharding, parallel.Layout):
    return sharding.param_shardings(boxed)
  return sharding


def unet_backbone(pipeline_dir: str, **overrides) -> unet3d.UNet3DBackbone:
  """The backbone described by `unet/config.json` and the scheduler's prediction type;
  `overrides`: run fields of `UNet3DConfig` (dtype, remat, temporal_dropout, attention_impl)."""
  cfg = read_json(component_dir(pipeline_dir, "unet"), "config.json")
  prediction = load_scheduler_config(pipeline_dir).prediction
  return unet3d.UNet3DBackbone(unet3d.UNet3DConfig.from_diffusers(cfg, **overrides), prediction)


def load_unet(pipeline_dir: str, *, variant: str | None = None, sharding=None,
              **overrides) -> tuple[unet3d.UNet3DBackbone, Any]:
  """(backbone, float32 params) of `pipeline_dir/unet`. `sharding`: a `parallel.Layout` (params
  laid out by their logical axis names) or anything `diffusers_weights.load_params` takes."""
  backbone = unet_backbone(pipeline_dir, **overrides)
  f = backbone.spatial_factor
  spec = base.InputSpec(1, f, f, backbone.config.in_channels, 1,
                        backbone.config.cross_attention_dim)
  boxed = backbone.abstract_params(spec)
  params = weights.load_params(component_dir(pipeline_dir, "unet"),
                               unet_name_map(backbone.config), nn.meta.unbox(boxed),
                               stems=_DIFFUSERS_STEMS, variant=variant,
                               sharding=_shardings(sharding, boxed))
  return backbone, params


def load_vae(pipeline_dir: str, *, variant: str | None = None, dtype: str = "float32",
             frames_per_call: int = 8, sharding=None) -> sd_vae.SDVAE:
  """`pipeline_dir/vae` as an `autoencoders.Autoencoder` (weights inside)."""
  folder = component_dir(pipeline_dir, "vae")
  cfg = sd_vae.VAEConfig.from_diffusers(read_json(folder, "config.json"), dtype=dtype)
  size = 2 * cfg.spatial_factor
  expected = jax.eval_shape(sd_vae.AutoencoderKL(cfg).init, jax.random.PRNGKey(0),
                            jax.ShapeDtypeStruct((1, size, size, cfg.in_channels), np.float32))
  params = weights.load_params(folder, vae_name_map(cfg), expected["params"],
                               stems=_DIFFUSERS_STEMS, variant=variant,
                               aliases=vae_legacy_aliases(cfg), sharding=sharding)
  return sd_vae.SDVAE(cfg, params, frames_per_call=frames_per_call)


def load_text_encoder(pipeline_dir: str, *, variant: str | None = None,
                      sharding=None) -> tuple[clip_text.ClipTextConfig, Any]:
  """(config, float32 params) of `pipeline_dir/text_encoder` (a CLIPTextModel)."""
  folder = component_dir(pipeline_dir, "text_encoder")
  cfg = clip_text.ClipTextConfig.from_hf(read_json(folder, "config.json"))
  expected = jax.eval_shape(clip_text.ClipTextTransformer(cfg).init, jax.random.PRNGKey(0),
                            jax.ShapeDtypeStruct((1, 1), np.int32))
  name_map = text_encoder_name_map(cfg)
  # transformers >= 5 saves a CLIPTextModel without the `text_model.` prefix; hub files have it.
  unprefixed = {n.removeprefix("text_model."): n for n in name_map}
  params = weights.load_params(folder, name_map, expected["params"], stems=_TRANSFORMERS_STEMS,
                               variant=variant, aliases=unprefixed, sharding=sharding,
                               ignored=("text_model.embeddings.position_ids",
                                        "embeddings.position_ids"))
  return cfg, params


def load_tokenizer(pipeline_dir: str):
  """`transformers.CLIPTokenizer` from `pipeline_dir/tokenizer` (local files only)."""
  import transformers  # pylint: disable=g-import-not-at-top  (heavy; only needed here)
  folder = component_dir(pipeline_dir, "tokenizer")
  try:
    return transformers.CLIPTokenizer.from_pretrained(folder, local_files_only=True)
  except (OSError, ValueError, TypeError) as e:
    raise ValueError(f"No usable CLIP tokenizer in {folder} ({e}); it needs vocab.json and "
                     "merges.txt, or tokenizer.json (and tokenizer_config.json).") from e


def clip_text_embedder(pipeline_dir: str, cache_dir: str | None = None, *,
                       variant: str | None = None,
                       max_batch: int = 16) -> clip_text.ClipTextEmbedder:
  """The pipeline's CLIP text tower and tokenizer as a prompt embedder, backed by the
  prompt-embedding cache `cache_dir` when given (entries keyed by `text_encoder_fingerprint`, the
  content of the tower's and tokenizer's files)."""
  cfg, params = load_text_encoder(pipeline_dir, variant=variant)
  key = text_encoder_fingerprint(pipeline_dir, variant=variant) if cache_dir else ""
  return clip_text.ClipTextEmbedder(cfg, params, load_tokenizer(pipeline_dir),
                                    max_batch=max_batch, cache_dir=cache_dir, fingerprint=key,
                                    source=os.path.abspath(pipeline_dir))


@dataclasses.dataclass
class Pipeline:
  """Everything a latent text-to-video cascade stage needs from a diffusers pipeline folder."""

  backbone: unet3d.UNet3DBackbone
  unet_params: Any
  autoencoder: sd_vae.SDVAE
  embedder: clip_text.ClipTextEmbedder
  scheduler: SchedulerConfig


def load_pipeline(pipeline_dir: str, *, dtype: str = "float32", variant: str | None = None,
                  sharding=None, **unet_overrides) -> Pipeline:
  """Loads all components; `dtype` is the U-Net's and autoencoder's compute dtype."""
  backbone, params = load_unet(pipeline_dir, variant=variant, sharding=sharding, dtype=dtype,
                               **unet_overrides)
  return Pipeline(backbone, params, load_vae(pipeline_dir, variant=variant, dtype=dtype),
                  clip_text_embedder(pipeline_dir, variant=variant),
                  load_scheduler_config(pipeline_dir))


# ------------------------------------------------------------------------------ prompt cache

def text_encoder_fingerprint(pipeline_dir: str, *, variant: str | None = None) -> str:
  """sha256 of the content of what defines a prompt's CLIP embedding: `text_encoder/`'s config,
  index and the weight files `load_text_encoder` reads, and every file of `tokenizer/`
  (`data.fingerprint.files_sha256`), plus a tag for the convention (last hidden state, float32).
  Two pipelines whose text encoders differ only in weight values get different fingerprints."""
  folder = component_dir(pipeline_dir, "text_encoder")
  tokenizer = component_dir(pipeline_dir, "tokenizer")
  names = [os.path.relpath(p, pipeline_dir)
           for p in weights.weight_files(folder, _TRANSFORMERS_STEMS, variant)]
  names += [os.path.join("text_encoder", n) for n in os.listdir(folder)
            if n == "config.json" or n.endswith(".index.json")]
  names += [os.path.join("tokenizer", n) for n in os.listdir(tokenizer)]
  files = fingerprint.files_sha256(pipeline_dir, names)
  return hashlib.sha256(f"clip-last-hidden-state-float32\0{files}".encode()).hexdigest()
