r"""Precomputes prompt embeddings into a cache directory: T5's, for jobs that run without T5, or
the CLIP text tower's of a diffusers pipeline folder (ModelScope / Zeroscope).

  python -m dreamix_jax.tools.encode_prompts --t5=/path/to/t5-v1_1-xxl \
      --prompts=prompts.txt --out=/path/to/cache [--max_length=128] [--dtype=float32]
  python -m dreamix_jax.tools.encode_prompts --pipeline=/path/to/text-to-video-ms-1.7b \
      --prompts=prompts.txt --out=/path/to/cache

`--prompts` holds one prompt per line (surrounding whitespace stripped, blank lines skipped).
Prompts already in the cache are not encoded again. Jobs then read the cache with
`text_encoder.cached_embedder(out)` (or `make_embedder(None, out, max_length)`); CLIP entries
keep all 77 positions (`--max_length` and `--dtype` do not apply), and the empty prompt "" (the
guidance null condition) is always added.
"""

from __future__ import annotations

import os

from absl import app
from absl import flags
from absl import logging

from dreamix_jax.text import text_encoder

def define_flags():
  """Registers this tool's flags (only when it runs as a program, so importing it defines none)."""
  flags.DEFINE_string("t5", None, "Local Hugging Face T5 v1.1 directory (weights, tokenizer).")
  flags.DEFINE_string("pipeline", None, "Local diffusers pipeline folder: encode with its CLIP "
                      "text tower (text_encoder/, tokenizer/) instead of T5.")
  flags.DEFINE_string("prompts", None, "Text file with one prompt per line.")
  flags.DEFINE_string("out", None, "Embedding cache directory to fill.")
  flags.DEFINE_integer("max_length", text_encoder.DEFAULT_MAX_LENGTH,
                       "Token length L of the embeddings.")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "T5 compute dtype.")
  flags.DEFINE_integer("batch_size", 32, "Prompts encoded per jitted call.")
  flags.mark_flags_as_required(["prompts", "out"])
  flags.mark_flags_as_mutual_exclusive(["t5", "pipeline"], required=True)


def read_prompts(path: str) -> list[str]:
  """The non-blank lines of `path`, stripped, duplicates removed (first occurrence kept)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Prompt file {path!r} not found; pass a text file with one prompt per "
                            "line to --prompts.")
  with open(path, encoding="utf-8") as f:
    prompts = [line.strip() for line in f]
  prompts = list(dict.fromkeys(p for p in prompts if p))
  if not prompts:
    raise ValueError(f"Prompt file {path!r} holds no prompts (all lines are blank).")
  return prompts


def encode_prompts(t5_dir: str, prompts_file: str, out_dir: str, *, max_length: int,
                   dtype: str = "float32", batch_size: int = 32) -> text_encoder.T5TextEncoder:
  """Encodes the prompts of `prompts_file` missing from the cache `out_dir`; returns the encoder."""
  prompts = read_prompts(prompts_file)
  embedder = text_encoder.t5_embedder(t5_dir, max_length=max_length, dtype=dtype,
                                      cache_dir=out_dir, max_batch=batch_size)
  for start in range(0, len(prompts), batch_size):
    embedder(prompts[start:start + batch_size])
    logging.info("Prompts %d-%d of %d done.", start + 1,
                 min(start + batch_size, len(prompts)), len(prompts))
  logging.info("%d prompts in %s: %d encoded now, %d were cached (encoder %s, max_length %d).",
               len(prompts), out_dir, embedder.num_encoded, len(prompts) - embedder.num_encoded,
               embedder.fingerprint[:12], max_length)
  return embedder


def encode_clip_prompts(pipeline_dir: str, prompts_file: str, out_dir: str, *,
                        batch_size: int = 16):
  """Encodes the prompts of `prompts_file`, and "", missing from the cache `out_dir` with the CLIP
  text tower of the diffusers pipeline folder `pipeline_dir`; returns the embedder."""
  from dreamix_jax.backbones import diffusers_import  # pylint: disable=g-import-not-at-top
  prompts = read_prompts(prompts_file)
  embedder = diffusers_import.clip_text_embedder(pipeline_dir, out_dir,
                                                        max_batch=batch_size)
  embedder.null(1)  # "" alone, as a job encodes its null condition
  for start in range(0, len(prompts), batch_size):
    embedder(prompts[start:start + batch_size])
  prompts = [""] + prompts
  logging.info("%d prompts (with \"\") in %s: %d encoded now, %d were cached (CLIP text encoder "
               "%s).", len(prompts), out_dir, embedder.num_encoded,
               len(prompts) - embedder.num_encoded, embedder.fingerprint[:12])
  return embedder


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if f.pipeline:
    encode_clip_prompts(f.pipeline, f.prompts, f.out, batch_size=f.batch_size)
    return
  encode_prompts(f.t5, f.prompts, f.out, max_length=f.max_length, dtype=f.dtype,
                 batch_size=f.batch_size)


if __name__ == "__main__":
  define_flags()
  app.run(main)
