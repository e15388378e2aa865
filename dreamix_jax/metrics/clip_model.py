"""CLIP (ViT image tower + causal text tower) in Flax Linen, mirroring `transformers.CLIPModel`.

Pre-LN transformer blocks, class token and learned position embeddings, bias-free patch convolution
and projections, pre/post layer norms, and a causal text tower pooled at the end-of-text token, with
Hugging Face's parameter names, so that its weights load through an explicit name map
(`metrics.clip_weights`). Every matmul runs at `Precision.HIGHEST`: this is a metric, and
accelerators would otherwise use reduced precision. The score built on it is `metrics.clip`.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_PRECISION = jax.lax.Precision.HIGHEST
# Configs with this eos id predate transformers PR #24773: pool at the argmax token id instead.
_LEGACY_EOS_TOKEN_ID = 2

_ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


@dataclasses.dataclass(frozen=True)
class TowerConfig:
  """One transformer tower of CLIP (fields of a Hugging Face vision or text config)."""
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  hidden_act: str
  layer_norm_eps: float

  def __post_init__(self):
    if self.hidden_act not in _ACTIVATIONS:
      raise ValueError(f"Unsupported CLIP hidden_act {self.hidden_act!r}; supported: "
                       f"{sorted(_ACTIVATIONS)}.")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads "
                       f"{self.num_heads}.")


@dataclasses.dataclass(frozen=True)
class ClipConfig:
  """Architecture of a CLIP model, read from a Hugging Face `CLIPConfig`."""
  vision: TowerConfig
  text: TowerConfig
  image_size: int
  patch_size: int
  num_channels: int
  vocab_size: int
  max_position_embeddings: int
  eos_token_id: int
  projection_dim: int

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size)**2

  @classmethod
  def from_hf(cls, hf_config) -> ClipConfig:
    """Builds the config from a `transformers.CLIPConfig`."""
    vc, tc = hf_config.vision_config, hf_config.text_config
    if tc.eos_token_id is None:
      raise ValueError("The CLIP text config has no eos_token_id; set it to the tokenizer's "
                       "end-of-text id (text pooling happens at that token).")

    def tower(c) -> TowerConfig:
      return TowerConfig(c.hidden_size, c.intermediate_size, c.num_hidden_layers,
                         c.num_attention_heads, c.hidden_act, c.layer_norm_eps)

    return cls(vision=tower(vc), text=tower(tc), image_size=vc.image_size,
               patch_size=vc.patch_size, num_channels=vc.num_channels,
               vocab_size=tc.vocab_size, max_position_embeddings=tc.max_position_embeddings,
               eos_token_id=tc.eos_token_id, projection_dim=hf_config.projection_dim)


class SelfAttention(nn.Module):
  """Multi-head self-attention with biased q/k/v/out projections."""
  hidden_size: int
  num_heads: int

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """x: (B, L, D); mask: (L, L) bool, True where attending is allowed. Returns (B, L, D)."""
    head_dim = self.hidden_size // self.num_heads

    def project(name: str) -> jax.Array:
      y = nn.Dense(self.hidden_size, precision=_PRECISION, name=name)(x)
      return y.reshape(*x.shape[:2], self.num_heads, head_dim)

    q, k, v = project("q_proj"), project("k_proj"), project("v_proj")
    logits = jnp.einsum("bqhd,bkhd->bhqk", q * head_dim**-0.5, k, precision=_PRECISION)
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v, precision=_PRECISION)
    out = out.reshape(*x.shape[:2], self.hidden_size)
    return nn.Dense(self.hidden_size, precision=_PRECISION, name="out_proj")(out)


class MLP(nn.Module):
  """fc1 -> activation -> fc2."""
  config: TowerConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (B, L, D) -> (B, L, D)."""
    h = nn.Dense(self.config.intermediate_size, precision=_PRECISION, name="fc1")(x)
    h = _ACTIVATIONS[self.config.hidden_act](h)
    return nn.Dense(self.config.hidden_size, precision=_PRECISION, name="fc2")(h)


class EncoderLayer(nn.Module):
  """Pre-LN transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""
  config: TowerConfig

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """x: (B, L, D) -> (B, L, D)."""
    c = self.config
    h = nn.LayerNorm(epsilon=c.layer_norm_eps, name="layer_norm1")(x)
    x = x + SelfAttention(c.hidden_size, c.num_heads, name="self_attn")(h, mask)
    h = nn.LayerNorm(epsilon=c.layer_norm_eps, name="layer_norm2")(x)
    h = MLP(c, name="mlp")(h)
    return x + h


class Encoder(nn.Module):
  """A stack of `EncoderLayer`s named `layers_{i}`."""
  config: TowerConfig

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """x: (B, L, D) -> (B, L, D)."""
    for i in range(self.config.num_layers):
      x = EncoderLayer(self.config, name=f"layers_{i}")(x, mask)
    return x


class VisionTower(nn.Module):
  """ViT image tower; returns the post-layer-normed class token."""
  config: ClipConfig

  @nn.compact
  def __call__(self, pixels: jax.Array) -> jax.Array:
    """pixels: (B, S, S, C) normalised images, S = image_size. Returns (B, hidden)."""
    c = self.config
    if pixels.shape[1:] != (c.image_size, c.image_size, c.num_channels):
      raise ValueError(f"CLIP expects images of shape (B, {c.image_size}, {c.image_size}, "
                       f"{c.num_channels}), got {pixels.shape}.")
    width = c.vision.hidden_size
    emb = nn.Conv(width, (c.patch_size, c.patch_size), strides=(c.patch_size, c.patch_size),
                  padding="VALID", use_bias=False, precision=_PRECISION,
                  name="patch_embedding")(pixels)
    emb = emb.reshape(pixels.shape[0], -1, width)
    class_embedding = self.param("class_embedding", nn.initializers.normal(0.02), (width,))
    cls = jnp.broadcast_to(class_embedding, (pixels.shape[0], 1, width))
    emb = jnp.concatenate([cls.astype(emb.dtype), emb], axis=1)
    positions = nn.Embed(c.num_patches + 1, width, name="position_embedding")
    x = emb + positions(jnp.arange(c.num_patches + 1))[None]
    x = nn.LayerNorm(epsilon=c.vision.layer_norm_eps, name="pre_layrnorm")(x)
    x = Encoder(c.vision, name="encoder")(x)
    return nn.LayerNorm(epsilon=c.vision.layer_norm_eps, name="post_layernorm")(x[:, 0])


def eos_positions(input_ids: jax.Array, eos_token_id: int) -> jax.Array:
  """Index of the pooled token of each sequence, as Hugging Face's CLIP text model.

  Args:
    input_ids: (B, L) int token ids.
    eos_token_id: the config's end-of-text id. The legacy value 2 selects the largest token id
      (the end-of-text token of the original vocabulary); otherwise the first `eos_token_id`.

  Returns:
    (B,) int32 positions.
  """
  if eos_token_id == _LEGACY_EOS_TOKEN_ID:
    return jnp.argmax(input_ids, axis=-1).astype(jnp.int32)
  return jnp.argmax(input_ids == eos_token_id, axis=-1).astype(jnp.int32)


class TextTower(nn.Module):
  """Causal text transformer; returns the final-layer-normed end-of-text token."""
  config: ClipConfig

  @nn.compact
  def __call__(self, input_ids: jax.Array) -> jax.Array:
    """input_ids: (B, L) int, L <= max_position_embeddings. Returns (B, hidden)."""
    c = self.config
    length = input_ids.shape[1]
    if length > c.max_position_embeddings:
      raise ValueError(f"Token sequence of length {length} exceeds CLIP's "
                       f"max_position_embeddings ({c.max_position_embeddings}).")
    width = c.text.hidden_size
    x = nn.Embed(c.vocab_size, width, name="token_embedding")(input_ids)
    x = x + nn.Embed(c.max_position_embeddings, width,
                     name="position_embedding")(jnp.arange(length))[None]
    causal = jnp.tril(jnp.ones((length, length), dtype=bool))
    x = Encoder(c.text, name="encoder")(x, causal)
    x = nn.LayerNorm(epsilon=c.text.layer_norm_eps, name="final_layer_norm")(x)
    pooled = eos_positions(input_ids, c.eos_token_id)
    return x[jnp.arange(x.shape[0]), pooled]


class ClipModel(nn.Module):
  """CLIP: both towers, bias-free projections and the learned logit scale."""
  config: ClipConfig

  def setup(self):
    self.vision_model = VisionTower(self.config)
    self.text_model = TextTower(self.config)
    self.visual_projection = nn.Dense(self.config.projection_dim, use_bias=False,
                                      precision=_PRECISION)
    self.text_projection = nn.Dense(self.config.projection_dim, use_bias=False,
                                    precision=_PRECISION)
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(np.log(1 / 0.07)), ())

  def image_features(self, pixels: jax.Array) -> jax.Array:
    """pixels: (B, S, S, C) normalised images -> (B, projection_dim), not unit-normalised."""
    return self.visual_projection(self.vision_model(pixels))

  def text_features(self, input_ids: jax.Array) -> jax.Array:
    """input_ids: (B, L) -> (B, projection_dim), not unit-normalised."""
    return self.text_projection(self.text_model(input_ids))

  def __call__(self, pixels: jax.Array, input_ids: jax.Array) -> jax.Array:
    """Returns logits_per_image (B_img, B_txt) = exp(logit_scale) · cos(image_i, text_j)."""
    image = unit(self.image_features(pixels))
    text = unit(self.text_features(input_ids))
    return jnp.exp(self.logit_scale) * jnp.matmul(image, text.T, precision=_PRECISION)


def unit(x: jax.Array) -> jax.Array:
  """x / ‖x‖₂ over the last axis (embeddings to compare by cosine)."""
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)
