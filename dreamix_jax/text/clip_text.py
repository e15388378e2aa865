"""The CLIP text tower as diffusers' text-to-video pipelines use it (ModelScope / Zeroscope: an
OpenCLIP-H text tower in the `transformers.CLIPTextModel` layout), and `ClipTextEmbedder`, the
`text_encoder.TextEmbedder` that feeds the UNet3D.

Prompt encoding, as diffusers' `encode_prompt`: tokens padded (and truncated) to the tokenizer's
`model_max_length` (77), no attention mask (only the causal one), and the *last hidden state* after
the final layer norm, (B, 77, D), every position, padding included: the U-Net cross-attends to all
of them. So the embedder's mask is all True, embeddings are not zeroed at padding, and its `null`
condition is the encoding of the empty prompt "" (what diffusers uses for classifier-free
guidance), not zeros.

The transformer layers are `metrics.clip_model.Encoder` (the CLIP-score towers; same parameter names
and arithmetic, matmuls at `Precision.HIGHEST`, float32): prompts are encoded once, so precision
costs nothing that matters. Weights: `backbones.diffusers_import.load_text_encoder`.

With a `cache_dir`, prompts go through `text_encoder.EmbeddingCache` as *padded* entries (the
whole (77, D) sequence; the T5 entries keep only the unpadded tokens), keyed by a fingerprint of
the text encoder's and tokenizer's file contents
(`backbones.diffusers_import.text_encoder_fingerprint`): a prompt is encoded once per encoder,
and `tools/encode_prompts.py --pipeline=<folder>` can fill the cache ahead of a job.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dreamix_jax.metrics import clip_model
from dreamix_jax.text import text_encoder

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ClipTextConfig:
  """The fields of a `CLIPTextConfig` (`text_encoder/config.json`) this tower needs."""

  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_hidden_layers: int
  num_attention_heads: int
  max_position_embeddings: int = 77
  hidden_act: str = "gelu"
  layer_norm_eps: float = 1e-5

  @classmethod
  def from_hf(cls, config: Mapping[str, Any]) -> "ClipTextConfig":
    """From `text_encoder/config.json` (a CLIPTextConfig dict, or a CLIPConfig's text_config)."""
    config = config.get("text_config", config)
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [n for n in names[:5] if n not in config]
    if missing:
      raise ValueError(f"text_encoder/config.json lacks {missing}; is it a CLIPTextModel config?")
    return cls(**{n: config[n] for n in names if n in config})

  @property
  def tower(self) -> clip_model.TowerConfig:
    return clip_model.TowerConfig(self.hidden_size, self.intermediate_size, self.num_hidden_layers,
                            self.num_attention_heads, self.hidden_act, self.layer_norm_eps)


class ClipTextTransformer(nn.Module):
  """input_ids (B, L) int, L <= max_position_embeddings -> last hidden state (B, L, hidden) after
  `final_layer_norm`, causal self-attention only (as `CLIPTextModel` without an attention mask).
  Parameter names: token_embedding, position_embedding, encoder/layers_{i}/..., final_layer_norm."""

  config: ClipTextConfig

  @nn.compact
  def __call__(self, input_ids):
    c = self.config
    length = input_ids.shape[1]
    if length > c.max_position_embeddings:
      raise ValueError(f"{length} tokens exceed CLIP's {c.max_position_embeddings} positions.")
    x = nn.Embed(c.vocab_size, c.hidden_size, name="token_embedding")(input_ids)
    x = x + nn.Embed(c.max_position_embeddings, c.hidden_size,
                     name="position_embedding")(jnp.arange(length))[None]
    x = clip_model.Encoder(c.tower, name="encoder")(x, jnp.tril(jnp.ones((length, length), bool)))
    return nn.LayerNorm(epsilon=c.layer_norm_eps, name="final_layer_norm")(x)


def _batch_bucket(n: int, max_batch: int) -> int:
  return min(max_batch, 1 << max(n - 1, 0).bit_length())


class ClipTextEmbedder:
  """`text_encoder.TextEmbedder` for the UNet3D: `embedder(prompts)` -> (B, 77, D) float32 last
  hidden states and an all-True (B, 77) mask; `null(B)` -> the encoding of "" and an all-True
  mask (see the module docstring). `tokenizer`: a `transformers.CLIPTokenizer`. `cache_dir`: an
  embedding cache (entries keyed by `fingerprint`, which must identify weights and tokenizer).

  Attributes:
    num_encoded: prompts run through the tower so far (cache hits are not counted).
  """

  def __init__(self, config: ClipTextConfig, params, tokenizer, *, max_batch: int = 16,
               cache_dir: str | None = None, fingerprint: str = "", source: str = ""):
    self.config, self.params, self.tokenizer = config, params, tokenizer
    self.max_length = int(min(getattr(tokenizer, "model_max_length", 77) or 77,
                              config.max_position_embeddings))
    self.dim = config.hidden_size
    self.max_batch = max_batch
    self._lock = threading.Lock()  # fast tokenizers keep per-call settings in shared state
    self._apply = jax.jit(lambda p, ids: ClipTextTransformer(config).apply({"params": p}, ids))
    self._null = None
    self.num_encoded = 0
    if cache_dir and not fingerprint:
      raise ValueError("A CLIP embedding cache needs the encoder's fingerprint.")
    self.fingerprint = fingerprint
    self.cache = text_encoder.EmbeddingCache(cache_dir) if cache_dir else None
    if self.cache:
      self.cache.register(fingerprint, self.max_length, self.dim, "float32", source, padded=True)

  def tokenize(self, prompts: Sequence[str]) -> np.ndarray:
    """Token ids (B, max_length) int32: padded to max_length, truncated with a warning."""
    if isinstance(prompts, str):
      raise ValueError(f"Pass a sequence of prompts, not one string: [{prompts!r}].")
    prompts = list(prompts)
    with self._lock:
      full = self.tokenizer(prompts)["input_ids"]
      ids = self.tokenizer(prompts, padding="max_length", max_length=self.max_length,
                           truncation=True, return_tensors="np")["input_ids"]
    for prompt, tokens in zip(prompts, full):
      if len(tokens) > self.max_length:
        _log.warning("Prompt %r has %d tokens; CLIP truncates it to %d.", prompt, len(tokens),
                     self.max_length)
    return ids.astype(np.int32)

  def encode_ids(self, ids) -> np.ndarray:
    """Last hidden states (B, L, D) float32 of token ids (B, L), in batches of `max_batch`."""
    ids = np.asarray(ids, np.int32)
    out = []
    for start in range(0, len(ids), self.max_batch):
      chunk = ids[start:start + self.max_batch]
      pad = _batch_bucket(len(chunk), self.max_batch) - len(chunk)
      padded = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
      out.append(np.asarray(self._apply(self.params, padded))[:len(chunk)])
    return np.concatenate(out).astype(np.float32) if out else np.zeros(
        (0, ids.shape[1], self.dim), np.float32)

  def encode(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Runs the tower on `prompts` (no cache): (B, 77, D) float32 and an all-True (B, 77) mask."""
    ids = self.tokenize(prompts)
    self.num_encoded += len(ids)
    return self.encode_ids(ids), np.ones(ids.shape, bool)

  def __call__(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """`encode`, with prompts found in the cache read from it and the others stored there."""
    if self.cache is None:
      return self.encode(prompts)
    if isinstance(prompts, str):
      raise ValueError(f"Pass a sequence of prompts, not one string: [{prompts!r}].")
    prompts = list(prompts)
    found = self.cache.read_through(self.fingerprint, self.max_length, self.dim, prompts,
                                    self.encode, padded=True)
    if not prompts:
      return (np.zeros((0, self.max_length, self.dim), np.float32),
              np.ones((0, self.max_length), bool))
    return (np.stack([found[p][0] for p in prompts]), np.stack([found[p][1] for p in prompts]))

  def null(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
    if self._null is None:
      self._null = self([""])[0]
    return (np.repeat(self._null, batch, axis=0), np.ones((batch, self.max_length), bool))
