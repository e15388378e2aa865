"""Prompt -> T5 embeddings for the cascade: tokenizer, jitted batched encoder, on-disk cache.

The rest of the project sees only the `TextEmbedder` protocol: `embedder(prompts)` gives float32
embeddings (B, L, D) and a bool mask (B, L) with L = `max_length`, and `embedder.null(B)` gives the
classifier-free-guidance null condition. For T5, embeddings are zero at padded positions and the
null condition is zeros, all masked (what a fully masked prompt looks like); the CLIP text tower of
a diffusers pipeline (`text.clip_text`) keeps every position instead (see below).

Three embedders implement it here:
- `t5_embedder`: runs the Flax T5 encoder (weights from a Hugging Face directory), optionally
  backed by a cache directory so no prompt is encoded twice;
- `cached_embedder`: reads only a cache directory precomputed by `tools/encode_prompts.py`, so a
  job on a small machine needs no text-encoder weights;
- `make_embedder`: picks one of the two from what a job config provides.

Cache layout: `cache_info.json` lists the encoders that wrote entries (fingerprint, max_length, dim,
dtype, source directory, `padded`); each entry is `<sha256 of [fingerprint, max_length,
prompt]>.npz` holding the prompt and float32 embeddings in one of two forms:
- unpadded (T5, right-padded masks): the embeddings of the prompt's tokens only, (n, D); read
  back zero-padded to (L, D) with the mask `arange(L) < n`;
- padded (`padded=True`, CLIP as diffusers uses it: the last hidden state at all 77 positions,
  padding included, and an all-True mask): the whole (L, D) sequence and its (L,) mask, read back
  as stored. Such an encoder's null condition is its encoding of the empty prompt "", cached like
  any other prompt.
The fingerprint is a sha256 of the encoder's files' *content* (`data.fingerprint`: weights, config,
tokenizer) and its compute dtype, so another checkpoint (even one with the same tensor shapes) or
dtype never hits a foreign entry. All files are written atomically (temporary file in the same
directory, then `os.replace`); nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from typing import Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import transformers

from dreamix_jax.data import fingerprint as fingerprint_lib
from dreamix_jax.data import outputs
from dreamix_jax.text import t5
from dreamix_jax.text import t5_weights

DEFAULT_MAX_LENGTH = 128
CACHE_INFO_FILE = "cache_info.json"
# Files of a Hugging Face T5 directory besides its weights that change a prompt's embedding.
T5_DEFINING_FILES = (t5_weights.CONFIG_FILE, t5_weights.SAFETENSORS_INDEX, t5_weights.TORCH_INDEX,
                     "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                     "spiece.model")

_log = logging.getLogger(__name__)


class TextEmbedder(Protocol):
  """What the cascade and jobs need from a text encoder."""

  max_length: int
  dim: int  # Embedding width D.

  def __call__(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings float32 (B, L, D) and mask bool (B, L) of `prompts`."""

  def null(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Null condition: zeros (batch, L, D) and an all-False mask (batch, L)."""


class PromptNotCachedError(ValueError):
  """A prompt asked of a cache-only embedder was never precomputed."""


def null_embeddings(batch: int, max_length: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
  """Zeros (batch, max_length, dim) float32 and an all-False mask (batch, max_length)."""
  return (np.zeros((batch, max_length, dim), np.float32), np.zeros((batch, max_length), bool))


def _check_prompts(prompts: Sequence[str]) -> list[str]:
  if isinstance(prompts, str):
    raise ValueError(f"Pass a sequence of prompts, not one string: [{prompts!r}].")
  prompts = list(prompts)
  bad = [p for p in prompts if not isinstance(p, str)]
  if bad:
    raise ValueError(f"Prompts must be strings; got {bad[:3]!r}.")
  return prompts


def _atomic_write(path: str, write) -> None:
  """Calls `write(file)` on a binary file that lands at `path` only if it succeeds."""
  with outputs.atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      write(f)


class EmbeddingCache:
  """A directory of prompt embeddings for any number of encoders (see module docstring)."""

  def __init__(self, cache_dir: str):
    self.cache_dir = cache_dir

  @property
  def info_path(self) -> str:
    return os.path.join(self.cache_dir, CACHE_INFO_FILE)

  def encoders(self) -> list[dict]:
    """The encoders recorded in `cache_info.json` (empty if the cache is new)."""
    if not os.path.isfile(self.info_path):
      return []
    with open(self.info_path) as f:
      return json.load(f)["encoders"]

  def register(self, fingerprint: str, max_length: int, dim: int, dtype: str, source: str, *,
               padded: bool = False) -> None:
    """Records an encoder in `cache_info.json` (creating the directory), once. `padded`: its
    entries are whole padded sequences and its null condition is the encoding of ""."""
    os.makedirs(self.cache_dir, exist_ok=True)
    encoders = self.encoders()
    if any(e["fingerprint"] == fingerprint and e["max_length"] == max_length for e in encoders):
      return
    encoders.append(dict(fingerprint=fingerprint, max_length=max_length, dim=dim, dtype=dtype,
                         source=source, padded=padded))
    _atomic_write(self.info_path,
                  lambda f: f.write(json.dumps({"encoders": encoders}, indent=1).encode()))

  def entry_path(self, fingerprint: str, max_length: int, prompt: str) -> str:
    key = json.dumps([fingerprint, max_length, prompt], ensure_ascii=False)
    return os.path.join(self.cache_dir, hashlib.sha256(key.encode()).hexdigest() + ".npz")

  def load(self, fingerprint: str, max_length: int, dim: int,
           prompt: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Cached (embedding (L, D) float32, mask (L,) bool) of `prompt`, or None on a miss."""
    path = self.entry_path(fingerprint, max_length, prompt)
    if not os.path.isfile(path):
      return None
    with np.load(path, allow_pickle=False) as entry:
      stored_prompt, tokens = str(entry["prompt"]), entry["embedding"]
      mask = entry["mask"] if "mask" in entry else None
    if mask is not None:  # a padded entry: the whole sequence
      if stored_prompt != prompt or tokens.shape != (max_length, dim) or mask.shape != (
          max_length,):
        raise ValueError(f"Cache entry {path} does not hold prompt {prompt!r} as a ({max_length}, "
                         f"{dim}) embedding; delete the file and encode the prompt again.")
      return tokens.astype(np.float32), mask.astype(bool)
    if stored_prompt != prompt or tokens.ndim != 2 or tokens.shape[0] > max_length or (
        tokens.shape[1] != dim):
      raise ValueError(f"Cache entry {path} does not hold prompt {prompt!r} as a (<= {max_length}, "
                       f"{dim}) embedding; delete the file and encode the prompt again.")
    embedding = np.zeros((max_length, dim), np.float32)
    embedding[:len(tokens)] = tokens
    return embedding, np.arange(max_length) < len(tokens)

  def store(self, fingerprint: str, max_length: int, prompt: str, embedding: np.ndarray,
            mask: np.ndarray, *, padded: bool = False) -> None:
    """Stores embedding (L, D) with its mask (L,) for `prompt`: the whole sequence and mask when
    `padded`, else the unpadded tokens of a right-padded mask."""
    if padded:
      full, full_mask = np.asarray(embedding, np.float32), np.asarray(mask, bool)
      _atomic_write(self.entry_path(fingerprint, max_length, prompt),
                    lambda f: np.savez(f, prompt=np.array(prompt), embedding=full, mask=full_mask))
      return
    length = int(mask.sum())
    if not mask[:length].all():
      raise ValueError("Only right-padded masks can be cached (the T5 tokenizer pads right).")
    tokens = np.asarray(embedding[:length], np.float32)
    _atomic_write(self.entry_path(fingerprint, max_length, prompt),
                  lambda f: np.savez(f, prompt=np.array(prompt), embedding=tokens))

  def read_through(self, fingerprint: str, max_length: int, dim: int, prompts: Sequence[str],
                   encode, *, padded: bool = False) -> dict:
    """{prompt: (embedding (L, D), mask (L,))} for every distinct prompt: read from the cache, the
    others encoded together by `encode(prompts) -> ((B, L, D), (B, L))` and stored."""
    found = {}
    for prompt in dict.fromkeys(prompts):
      entry = self.load(fingerprint, max_length, dim, prompt)
      if entry is not None:
        found[prompt] = entry
    missing = [p for p in dict.fromkeys(prompts) if p not in found]
    if missing:
      for prompt, embedding, mask in zip(missing, *encode(missing)):
        found[prompt] = (embedding, mask)
        self.store(fingerprint, max_length, prompt, embedding, mask, padded=padded)
    return found


def encoder_fingerprint(t5_dir: str, dtype: str) -> str:
  """sha256 of the content of the T5 directory's weight, config and tokenizer files and of the
  compute dtype: what identifies an encoder."""
  files = fingerprint_lib.files_sha256(t5_dir, list(T5_DEFINING_FILES) +
                                       list(t5_weights.weight_files(t5_dir)))
  return hashlib.sha256(f"{files}\0{jnp.dtype(dtype).name}".encode()).hexdigest()


def _batch_bucket(n: int, max_batch: int) -> int:
  """Smallest power of two >= n, capped at max_batch: bounds the number of compiled shapes."""
  return min(max_batch, 1 << max(n - 1, 0).bit_length())


class T5TextEncoder:
  """`TextEmbedder` running the Flax T5 encoder, backed by an optional `EmbeddingCache`.

  Attributes:
    num_encoded: how many prompts were run through T5 so far (cache hits are not counted).
  """

  def __init__(self, config: t5.T5Config, params, tokenizer, *, fingerprint: str,
               max_length: int = DEFAULT_MAX_LENGTH, cache_dir: str | None = None,
               source: str = "", max_batch: int = 32):
    if max_length < 1 or max_batch < 1:
      raise ValueError(f"max_length ({max_length}) and max_batch ({max_batch}) must be >= 1.")
    if len(tokenizer) > config.vocab_size:
      raise ValueError(f"The tokenizer has {len(tokenizer)} tokens but the encoder's vocabulary "
                       f"has {config.vocab_size}; tokenizer and weights must come from one model.")
    tokenizer.padding_side = "right"
    self.config, self.params, self.tokenizer = config, params, tokenizer
    # A fast tokenizer keeps its padding/truncation settings in shared state, set per call: two
    # threads tokenizing at once (the pretrain job's prefetching workers) can get each other's,
    # e.g. an unpadded (B, 10) batch. One call at a time.
    self._tokenizer_lock = threading.Lock()
    self.fingerprint, self.max_length, self.max_batch = fingerprint, max_length, max_batch
    self.dim = config.d_model
    self.num_encoded = 0
    self.cache = EmbeddingCache(cache_dir) if cache_dir else None
    if self.cache:
      self.cache.register(fingerprint, max_length, self.dim, config.dtype, source)
    model = t5.T5Encoder(config)

    def apply(params, tokens, mask):
      hidden = model.apply({"params": params}, tokens, mask)
      return jnp.where(mask[..., None], hidden, 0.0)

    self._apply = jax.jit(apply)

  def tokenize(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids int32 (B, L) and mask bool (B, L), truncated (with a warning) to max_length."""
    prompts = _check_prompts(prompts)
    with self._tokenizer_lock:
      lengths = [len(ids) for ids in self.tokenizer(prompts)["input_ids"]]
      batch = self.tokenizer(prompts, padding="max_length", truncation=True,
                             max_length=self.max_length, return_tensors="np")
    for prompt, length in zip(prompts, lengths):
      if length > self.max_length:
        _log.warning("Prompt %r has %d tokens; truncated to max_length=%d.", prompt, length,
                     self.max_length)
    return batch["input_ids"].astype(np.int32), batch["attention_mask"].astype(bool)

  def encode(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Runs T5 on `prompts` (no cache): float32 (B, L, D), zero where masked, and mask (B, L)."""
    prompts = _check_prompts(prompts)
    if not prompts:
      return null_embeddings(0, self.max_length, self.dim)
    tokens, mask = self.tokenize(prompts)
    outputs = []
    for start in range(0, len(tokens), self.max_batch):
      chunk_tokens, chunk_mask = tokens[start:start + self.max_batch], mask[start:start +
                                                                             self.max_batch]
      n = len(chunk_tokens)
      pad = _batch_bucket(n, self.max_batch) - n
      chunk_tokens = np.pad(chunk_tokens, ((0, pad), (0, 0)))
      chunk_mask = np.pad(chunk_mask, ((0, pad), (0, 0)))
      outputs.append(np.asarray(self._apply(self.params, chunk_tokens, chunk_mask))[:n])
    self.num_encoded += len(tokens)
    return np.concatenate(outputs), mask

  def __call__(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings float32 (B, L, D) and mask bool (B, L); cached prompts skip T5."""
    prompts = _check_prompts(prompts)
    if self.cache:
      found = self.cache.read_through(self.fingerprint, self.max_length, self.dim, prompts,
                                      self.encode)
    else:
      distinct = list(dict.fromkeys(prompts))
      found = dict(zip(distinct, zip(*self.encode(distinct)))) if distinct else {}
    return _stack([found[p] for p in prompts], self.max_length, self.dim)

  def null(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
    return null_embeddings(batch, self.max_length, self.dim)


def _stack(entries, max_length: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
  if not entries:
    return null_embeddings(0, max_length, dim)
  return (np.stack([e for e, _ in entries]).astype(np.float32), np.stack([m for _, m in entries]))


class CachedEmbedder:
  """`TextEmbedder` that only reads a cache directory (no encoder weights needed)."""

  def __init__(self, cache_dir: str, encoder: dict):
    self.cache = EmbeddingCache(cache_dir)
    self.fingerprint = encoder["fingerprint"]
    self.max_length, self.dim = encoder["max_length"], encoder["dim"]
    self.padded = bool(encoder.get("padded", False))
    self._encoder = encoder

  def _add_command(self) -> str:
    if self.padded:
      source = self._encoder.get("source") or "<diffusers pipeline folder>"
      return ("python -m dreamix_jax.tools.encode_prompts "
              f"--pipeline={source} --prompts=<file with one prompt per line> "
              f"--out={self.cache.cache_dir}")
    source = self._encoder.get("source") or "<T5 dir>"
    dtype = self._encoder.get("dtype", "float32")
    return ("python -m dreamix_jax.tools.encode_prompts "
            f"--t5={source} --prompts=<file with one prompt per line> "
            f"--out={self.cache.cache_dir} --max_length={self.max_length}" +
            ("" if dtype == "float32" else f" --dtype={dtype}"))

  def __call__(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings float32 (B, L, D) and mask bool (B, L), all read from the cache."""
    entries = []
    for prompt in _check_prompts(prompts):
      entry = self.cache.load(self.fingerprint, self.max_length, self.dim, prompt)
      if entry is None:
        raise PromptNotCachedError(
            f"Prompt {prompt!r} is not in the embedding cache {self.cache.cache_dir} (encoder "
            f"{self.fingerprint[:12]}, max_length {self.max_length}). Add it with: "
            f"{self._add_command()}")
      entries.append(entry)
    return _stack(entries, self.max_length, self.dim)

  def null(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Zeros, all masked; for a padded (CLIP) encoder, its cached encoding of "" repeated."""
    if self.padded:
      embedding, mask = self([""])
      return np.repeat(embedding, batch, axis=0), np.repeat(mask, batch, axis=0)
    return null_embeddings(batch, self.max_length, self.dim)


def t5_embedder(t5_dir: str, *, max_length: int = DEFAULT_MAX_LENGTH, dtype: str = "float32",
                cache_dir: str | None = None, sharding: t5_weights.ShardingSpec = None,
                max_batch: int = 32) -> T5TextEncoder:
  """A T5 embedder from a local Hugging Face directory (weights, config.json and tokenizer).

  `dtype` is the matmul compute dtype (params are float32); `sharding` places the params (see
  `t5_weights.load_t5_params`); `cache_dir` adds an on-disk embedding cache.
  """
  config = t5_weights.load_t5_config(t5_dir, dtype=dtype)
  fingerprint = encoder_fingerprint(t5_dir, dtype)
  try:
    tokenizer = transformers.AutoTokenizer.from_pretrained(t5_dir, local_files_only=True)
  except (OSError, ValueError, TypeError) as e:
    raise FileNotFoundError(f"No usable tokenizer in {t5_dir} ({e}); save the model's tokenizer "
                            "there with `tokenizer.save_pretrained(t5_dir)`.") from e
  params = t5_weights.load_t5_params(t5_dir, config, sharding=sharding)
  return T5TextEncoder(config, params, tokenizer, fingerprint=fingerprint, max_length=max_length,
                       cache_dir=cache_dir, source=os.path.abspath(t5_dir), max_batch=max_batch)


def cached_embedder(cache_dir: str, *, max_length: int | None = None) -> CachedEmbedder:
  """An embedder reading only `cache_dir` (filled by `tools/encode_prompts.py`).

  The cache must record exactly one encoder (with `max_length`, when given).
  """
  cache = EmbeddingCache(cache_dir)
  if not os.path.isfile(cache.info_path):
    raise FileNotFoundError(f"{cache.info_path} not found: {cache_dir!r} is not an embedding "
                            "cache. Build it with python -m dreamix_jax.tools.encode_prompts "
                            "--t5=<T5 dir> (or --pipeline=<diffusers pipeline folder>) "
                            f"--prompts=<file> --out={cache_dir}")
  encoders = [e for e in cache.encoders() if max_length is None or e["max_length"] == max_length]
  if len(encoders) != 1:
    found = [(e["fingerprint"][:12], e["max_length"], e.get("source")) for e in cache.encoders()]
    raise ValueError(f"The cache {cache_dir} must hold exactly one encoder"
                     f"{'' if max_length is None else f' with max_length {max_length}'}; it holds "
                     f"(fingerprint, max_length, source) {found}. Use one cache directory per "
                     "encoder.")
  return CachedEmbedder(cache_dir, encoders[0])


def make_embedder(t5_dir: str | None, cache_dir: str | None,
                  max_length: int = DEFAULT_MAX_LENGTH) -> TextEmbedder:
  """The embedder a job uses: T5 (cached in `cache_dir` if given) when `t5_dir` is set, else the
  precomputed cache `cache_dir` alone."""
  if t5_dir:
    return t5_embedder(t5_dir, max_length=max_length, cache_dir=cache_dir)
  if cache_dir:
    return cached_embedder(cache_dir, max_length=max_length)
  raise ValueError("A text embedder needs a T5 directory (t5_dir) or a precomputed embedding cache "
                   "(cache_dir); set at least one.")
