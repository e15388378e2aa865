"""T5 v1.1 text encoder in Flax Linen, numerically matching `transformers.T5EncoderModel`.

The cascade is conditioned on frozen T5 v1.1 encoder embeddings (Imagen / Imagen Video use XXL).
T5 v1.1 differs from the original T5 in its gated-GELU feed-forward (`gelu_new`, the tanh
approximation) and untied input/output embeddings; like T5 it has no biases, RMS ("T5") layer norms
without mean subtraction, pre-norm residual blocks, unscaled dot-product attention, and a bucketed
relative position bias owned by the first layer and shared by every other layer.

Parameters are created in `param_dtype` (float32 by default) and carry logical axis names for
sharding; matmuls run in `dtype` (e.g. bfloat16) while the residual stream, norms and softmax
stay in float32. Layers are unrolled (not scanned) so every Hugging Face tensor maps to one Flax
parameter and a checkpoint can be imported tensor by tensor (see `t5_weights.py`).
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Dimensions of a T5 v1.1 encoder and its numerics.

  `dtype` is the matmul compute dtype; `param_dtype` the dtype parameters are created in.
  """

  vocab_size: int = 32128
  d_model: int = 512
  d_kv: int = 64
  d_ff: int = 1024
  num_layers: int = 8
  num_heads: int = 6
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads",
                 "relative_attention_num_buckets", "relative_attention_max_distance"):
      if getattr(self, name) < 1:
        raise ValueError(f"T5Config.{name} must be a positive integer, got {getattr(self, name)}.")
    for name in ("dtype", "param_dtype"):
      if jnp.dtype(getattr(self, name)) not in (jnp.float32, jnp.bfloat16, jnp.float16):
        raise ValueError(f"T5Config.{name} must be float32, bfloat16 or float16, got "
                         f"{getattr(self, name)!r}.")

  @property
  def inner_dim(self) -> int:
    """Joined attention width heads * d_kv."""
    return self.num_heads * self.d_kv


# Dimensions of the published google/t5-v1_1-{small,base,large,xl,xxl} configs.
PRESETS = {
    "small": dict(d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6),
    "base": dict(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12),
    "large": dict(d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_heads=16),
    "xl": dict(d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_heads=32),
    "xxl": dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64),
}


def preset(name: str, **overrides) -> T5Config:
  """The T5 v1.1 encoder config `name` (small/base/large/xl/xxl), with `overrides` applied."""
  if name not in PRESETS:
    raise ValueError(f"Unknown T5 preset {name!r}; choose one of {sorted(PRESETS)}.")
  return T5Config(**{**PRESETS[name], **overrides})


def relative_position_buckets(query_length: int, key_length: int, num_buckets: int,
                              max_distance: int) -> np.ndarray:
  """Bidirectional T5 relative-position bucket of every (query, key) pair, int32 (Lq, Lk).

  Half the buckets are for keys after the query, half for keys before; within each half, the first
  half of the buckets are exact offsets and the rest cover offsets up to `max_distance`
  logarithmically. Computed on the host in float32 exactly as Mesh TensorFlow / transformers do,
  so bucket boundaries agree bit for bit.
  """
  relative = np.arange(key_length)[None, :] - np.arange(query_length)[:, None]
  half = num_buckets // 2
  buckets = (relative > 0).astype(np.int64) * half
  distance = np.abs(relative)
  max_exact = half // 2
  with np.errstate(divide="ignore"):
    log_ratio = np.log(distance.astype(np.float32) / np.float32(max_exact))
  scaled = log_ratio / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact)
  large = max_exact + np.where(distance < max_exact, 0, scaled).astype(np.int64)
  large = np.minimum(large, half - 1)
  buckets += np.where(distance < max_exact, distance, large)
  return buckets.astype(np.int32)


def _normal(stddev: float, axes: tuple[str, ...]):
  """Normal initializer (stddev as in transformers' T5 `_init_weights`) with logical axes."""
  return nn.with_logical_partitioning(nn.initializers.normal(stddev), axes)


class T5LayerNorm(nn.Module):
  """RMS norm, no mean subtraction or bias, in float32; returns `dtype`. (..., D) -> (..., D)."""

  config: T5Config

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                       (cfg.d_model,), jnp.dtype(cfg.param_dtype))
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + cfg.layer_norm_epsilon)
    return (x * scale.astype(jnp.float32)).astype(cfg.dtype)


def _dense(cfg: T5Config, features: int, stddev: float, axes: tuple[str, str], name: str):
  return nn.Dense(features, use_bias=False, dtype=jnp.dtype(cfg.dtype),
                  param_dtype=jnp.dtype(cfg.param_dtype), kernel_init=_normal(stddev, axes),
                  name=name)


class T5SelfAttention(nn.Module):
  """Unscaled multi-head self-attention with an additive position bias and a key padding mask."""

  config: T5Config

  @nn.compact
  def __call__(self, x, position_bias, mask):
    """x (B, L, D) in `dtype`; position_bias (H, L, L) float32; mask (B, L) bool -> (B, L, D)."""
    cfg = self.config
    batch, length, _ = x.shape
    heads = (batch, length, cfg.num_heads, cfg.d_kv)
    q = _dense(cfg, cfg.inner_dim, (cfg.d_model * cfg.d_kv)**-0.5, ("embed", "heads_kv"), "q")(x)
    k = _dense(cfg, cfg.inner_dim, cfg.d_model**-0.5, ("embed", "heads_kv"), "k")(x)
    v = _dense(cfg, cfg.inner_dim, cfg.d_model**-0.5, ("embed", "heads_kv"), "v")(x)
    q, k, v = q.reshape(heads), k.reshape(heads), v.reshape(heads)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    scores = scores + position_bias[None]
    scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(cfg.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, cfg.inner_dim)
    return _dense(cfg, cfg.d_model, cfg.inner_dim**-0.5, ("heads_kv", "embed"), "o")(out)


class T5GatedGeluFeedForward(nn.Module):
  """wo(gelu_tanh(wi_0 x) * wi_1 x), no biases. (B, L, D) -> (B, L, D)."""

  config: T5Config

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    gate = _dense(cfg, cfg.d_ff, cfg.d_model**-0.5, ("embed", "mlp"), "wi_0")(x)
    linear = _dense(cfg, cfg.d_ff, cfg.d_model**-0.5, ("embed", "mlp"), "wi_1")(x)
    hidden = jax.nn.gelu(gate, approximate=True) * linear
    return _dense(cfg, cfg.d_model, cfg.d_ff**-0.5, ("mlp", "embed"), "wo")(hidden)


class T5Block(nn.Module):
  """Pre-norm self-attention and feed-forward residual block; residual stream in float32."""

  config: T5Config

  @nn.compact
  def __call__(self, x, position_bias, mask):
    """x (B, L, D) float32 -> (B, L, D) float32."""
    attention = T5SelfAttention(self.config, name="attention")
    x = x + attention(T5LayerNorm(self.config, name="attention_norm")(x), position_bias,
                      mask).astype(jnp.float32)
    mlp = T5GatedGeluFeedForward(self.config, name="mlp")
    return x + mlp(T5LayerNorm(self.config, name="mlp_norm")(x)).astype(jnp.float32)


class T5Encoder(nn.Module):
  """The T5 v1.1 encoder stack: token embedding, blocks, final norm.

  The relative position bias table lives at the top level (`relative_attention_bias`); it is the
  table of the first layer in the Hugging Face layout, whose bias every layer reuses.
  """

  config: T5Config

  @nn.compact
  def __call__(self, tokens, mask):
    """tokens (B, L) int; mask (B, L) bool (False = padding) -> hidden states (B, L, D) float32.

    Outputs at padded positions are computed like every other position (as transformers does);
    callers mask them.
    """
    cfg = self.config
    param_dtype = jnp.dtype(cfg.param_dtype)
    embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=jnp.float32, param_dtype=param_dtype,
                     embedding_init=_normal(1.0, ("vocab", "embed")), name="token_embedding")
    bias_table = nn.Embed(cfg.relative_attention_num_buckets, cfg.num_heads, dtype=jnp.float32,
                          param_dtype=param_dtype,
                          embedding_init=_normal(cfg.d_model**-0.5, ("relpos_buckets", "heads")),
                          name="relative_attention_bias")
    length = tokens.shape[1]
    buckets = relative_position_buckets(length, length, cfg.relative_attention_num_buckets,
                                        cfg.relative_attention_max_distance)
    position_bias = jnp.transpose(bias_table(jnp.asarray(buckets)), (2, 0, 1))  # (H, L, L)
    mask = mask.astype(bool)
    x = embed(tokens)
    for i in range(cfg.num_layers):
      x = T5Block(cfg, name=f"block_{i}")(x, position_bias, mask)
    return T5LayerNorm(cfg, name="final_norm")(x).astype(jnp.float32)


def _dummy_inputs():
  return jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), bool)


def init_params(config: T5Config, rng: jax.Array) -> dict:
  """Randomly initialised encoder parameters as plain arrays (logical-axis boxes removed)."""
  return nn.meta.unbox(T5Encoder(config).init(rng, *_dummy_inputs())["params"])


def param_shapes(config: T5Config) -> dict:
  """`jax.ShapeDtypeStruct` of every parameter, the exact pytree structure of `init_params`."""
  boxed = jax.eval_shape(T5Encoder(config).init, jax.random.key(0), *_dummy_inputs())
  return nn.meta.unbox(boxed["params"])


def param_logical_axes(config: T5Config) -> dict:
  """`jax.sharding.PartitionSpec` of logical axis names for every parameter (same structure)."""
  boxed = jax.eval_shape(T5Encoder(config).init, jax.random.key(0), *_dummy_inputs())
  return nn.get_partition_spec(boxed["params"])
