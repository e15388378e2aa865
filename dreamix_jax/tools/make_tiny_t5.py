r"""Writes the moving-shapes world's text encoder: a tiny, frozen, random T5 v1.1 encoder.

  python -m dreamix_jax.tools.make_tiny_t5 --out=assets/shapes_t5 [--seed=0]

No pretrained T5 can be downloaded here, and the toy cascade needs none: its captions come from a
grammar of a few dozen words (`dreamix_jax.shapes.world`), and a frozen random transformer keeps
each token's identity, which is all the U-Net's cross-attention needs. The output is an ordinary
Hugging Face directory, so the project loads it through its real path (`text.t5_weights`,
`text.text_encoder.t5_embedder`):

- `config.json`: a `transformers` T5 v1.1 config for `T5EncoderModel` (gated-GELU feed-forward).
- `model.safetensors`: the encoder tensors under their Hugging Face names (float32), drawn with
  numpy from the seed at the scales of `transformers`' T5 initialisation.
- `tokenizer.json`, `tokenizer_config.json`: a word-level `tokenizers` tokenizer (lowercasing,
  split on whitespace and punctuation, `</s>` appended) in which every word of the grammar, the
  Dreamix rare-token placeholder "sks" and a few generic words are one token each;
  `<pad>` = 0, `</s>` = 1, `<unk>` = 2, as in T5.
- `README.md`: what the directory is and the command that made it.

Every file is a pure function of the seed and sizes (byte-for-byte), so the shipped copy
`assets/shapes_t5` can be checked against a fresh run.
"""

from __future__ import annotations

import itertools
import json
import os
import pathlib
import tempfile

from absl import app
from absl import flags
from absl import logging
import numpy as np
import safetensors.numpy
import tokenizers
from tokenizers import models as tokenizer_models
from tokenizers import normalizers
from tokenizers import pre_tokenizers
from tokenizers import processors

from dreamix_jax.shapes import world as shapes


def define_flags():
  """Registers this tool's flags (only when it runs as a program, so importing it defines none)."""
  flags.DEFINE_string("out", None, "Output directory (new, empty, or an earlier output).")
  flags.DEFINE_integer("seed", 0, "Seed of the random encoder weights.")
  flags.mark_flags_as_required(["out"])


PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, EOS, UNK)  # Ids 0, 1, 2, as in T5.
PLACEHOLDER_TOKEN = "sks"  # Dreamix's rare token t* naming the finetuned subject or video.
EXTRA_WORDS = ("the", "an", "and", "with", "of", "in", "photo", "video", "object", ".", ",")
MODEL_MAX_LENGTH = 16  # Every caption of the grammar (at most 9 words + </s>) fits.
OUTPUT_FILES = ("README.md", "config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json")


def shipped_dir() -> str:
  """Absolute path of the copy shipped in the repository, `<repo>/assets/shapes_t5`."""
  path = pathlib.Path(__file__).resolve().parents[2] / "assets" / "shapes_t5"
  if not path.is_dir():
    raise FileNotFoundError(f"{path} does not exist; the shipped tiny T5 is missing from this "
                            "checkout. Regenerate it with python -m dreamix_jax.tools.make_tiny_t5 "
                            f"--out={path}")
  return str(path)


def caption_words() -> list[str]:
  """Every word of every moving-shapes caption, in order of first appearance."""
  captions = (shapes.caption(shapes.Attributes(shape, color, background, motion))
              for shape, color, background, motion in itertools.product(
                  shapes.SHAPES, shapes.COLORS, shapes.BACKGROUNDS, shapes.MOTIONS))
  return list(dict.fromkeys(word for text in captions for word in text.split()))


def vocabulary() -> list[str]:
  """Tokens by id: the special tokens, the caption words, "sks", then the extra words."""
  tokens = list(SPECIAL_TOKENS) + caption_words() + [PLACEHOLDER_TOKEN] + list(EXTRA_WORDS)
  if len(set(tokens)) != len(tokens):
    raise ValueError(f"The tiny T5 vocabulary repeats a token: {tokens}.")
  return tokens


def build_tokenizer() -> tokenizers.Tokenizer:
  """Word-level tokenizer over `vocabulary()` that appends `</s>` to every sequence."""
  vocab = {token: i for i, token in enumerate(vocabulary())}
  tokenizer = tokenizers.Tokenizer(tokenizer_models.WordLevel(vocab=vocab, unk_token=UNK))
  tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
  tokenizer.normalizer = normalizers.Lowercase()
  tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
  tokenizer.post_processor = processors.TemplateProcessing(
      single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, vocab[EOS])])
  return tokenizer


def hf_config(vocab_size: int, *, d_model: int, num_layers: int, num_heads: int, d_kv: int,
              d_ff: int) -> dict:
  """`config.json` of a T5 v1.1 encoder (`transformers.T5Config` fields)."""
  return {
      "architectures": ["T5EncoderModel"],
      "d_ff": d_ff,
      "d_kv": d_kv,
      "d_model": d_model,
      "decoder_start_token_id": 0,
      "dropout_rate": 0.0,
      "eos_token_id": 1,
      "feed_forward_proj": "gated-gelu",
      "initializer_factor": 1.0,
      "is_encoder_decoder": False,
      "layer_norm_epsilon": 1e-6,
      "model_type": "t5",
      "num_decoder_layers": num_layers,
      "num_heads": num_heads,
      "num_layers": num_layers,
      "pad_token_id": 0,
      "relative_attention_max_distance": 128,
      "relative_attention_num_buckets": 32,
      "tie_word_embeddings": False,
      "use_cache": False,
      "vocab_size": vocab_size,
  }


def random_encoder_tensors(config: dict, seed: int) -> dict[str, np.ndarray]:
  """Hugging Face name -> float32 tensor ((out, in) for linear layers), drawn from `seed`.

  Standard deviations follow `transformers`' `T5PreTrainedModel._init_weights` (factor 1): 1 for
  the embedding, (d_model·d_kv)^-½ for queries, d_model^-½ for keys, values, the relative
  attention bias and the feed-forward input, (heads·d_kv)^-½ for the attention output, d_ff^-½
  for the feed-forward output; layer norms are ones.
  """
  rng = np.random.default_rng(seed)
  d_model, d_ff = config["d_model"], config["d_ff"]
  inner = config["num_heads"] * config["d_kv"]

  def normal(shape, std):
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

  tensors = {
      "shared.weight": normal((config["vocab_size"], d_model), 1.0),
      "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight":
          normal((config["relative_attention_num_buckets"], config["num_heads"]), d_model**-0.5),
  }
  for i in range(config["num_layers"]):
    prefix = f"encoder.block.{i}.layer"
    tensors[f"{prefix}.0.layer_norm.weight"] = np.ones(d_model, np.float32)
    tensors[f"{prefix}.0.SelfAttention.q.weight"] = normal((inner, d_model),
                                                           (d_model * config["d_kv"])**-0.5)
    tensors[f"{prefix}.0.SelfAttention.k.weight"] = normal((inner, d_model), d_model**-0.5)
    tensors[f"{prefix}.0.SelfAttention.v.weight"] = normal((inner, d_model), d_model**-0.5)
    tensors[f"{prefix}.0.SelfAttention.o.weight"] = normal((d_model, inner), inner**-0.5)
    tensors[f"{prefix}.1.layer_norm.weight"] = np.ones(d_model, np.float32)
    tensors[f"{prefix}.1.DenseReluDense.wi_0.weight"] = normal((d_ff, d_model), d_model**-0.5)
    tensors[f"{prefix}.1.DenseReluDense.wi_1.weight"] = normal((d_ff, d_model), d_model**-0.5)
    tensors[f"{prefix}.1.DenseReluDense.wo.weight"] = normal((d_model, d_ff), d_ff**-0.5)
  tensors["encoder.final_layer_norm.weight"] = np.ones(d_model, np.float32)
  return tensors


def _tokenizer_config() -> dict:
  return {
      "eos_token": EOS,
      "model_max_length": MODEL_MAX_LENGTH,
      "pad_token": PAD,
      "padding_side": "right",
      "tokenizer_class": "PreTrainedTokenizerFast",
      "unk_token": UNK,
  }


def _readme(config: dict, seed: int) -> str:
  return (
      "# Moving-shapes text encoder (tiny random T5 v1.1)\n\n"
      "A frozen, randomly initialised T5 v1.1 encoder with a word-level tokenizer over the\n"
      "moving-shapes caption grammar plus the Dreamix placeholder token \"sks\". Not trained:\n"
      "its only job is to give each token a distinct, fixed embedding.\n\n"
      f"- seed {seed}; d_model {config['d_model']}, {config['num_layers']} layers, "
      f"{config['num_heads']} heads of {config['d_kv']}, d_ff {config['d_ff']}, "
      f"vocabulary {config['vocab_size']}\n"
      "- generated by `python -m dreamix_jax.tools.make_tiny_t5 --out=<dir> "
      f"--seed={seed}`;\n  do not edit by hand (tests compare it with a fresh run)\n")


def _json_bytes(data: dict) -> bytes:
  return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _write_atomic(path: str, data: bytes) -> None:
  directory = os.path.dirname(path)
  with tempfile.NamedTemporaryFile(dir=directory, prefix=".tmp-", delete=False) as f:
    tmp = f.name
    try:
      f.write(data)
      os.chmod(tmp, 0o644)
    except BaseException:
      os.unlink(tmp)
      raise
  os.replace(tmp, path)


def make_tiny_t5(out_dir: str, *, seed: int = 0, d_model: int = 64, num_layers: int = 2,
                 num_heads: int = 4, d_kv: int = 16, d_ff: int = 128) -> str:
  """Writes the tiny T5 directory (see module docstring) to `out_dir`; returns `out_dir`.

  `out_dir` is created if needed; it may already hold an earlier output (whose files are
  replaced one by one, atomically) but no other file.
  """
  for name, value in dict(d_model=d_model, num_layers=num_layers, num_heads=num_heads, d_kv=d_kv,
                          d_ff=d_ff).items():
    if value < 1:
      raise ValueError(f"{name} must be >= 1; got {value}.")
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise ValueError(f"--out={out_dir!r} is a file; pass a directory path.")
  os.makedirs(out_dir, exist_ok=True)
  foreign = sorted(set(os.listdir(out_dir)) - set(OUTPUT_FILES))
  if foreign:
    raise ValueError(f"{out_dir} holds files that are not part of a tiny T5 directory "
                     f"({foreign}); pass an empty or new directory.")

  tokenizer = build_tokenizer()
  config = hf_config(tokenizer.get_vocab_size(), d_model=d_model, num_layers=num_layers,
                     num_heads=num_heads, d_kv=d_kv, d_ff=d_ff)
  weights = safetensors.numpy.save(random_encoder_tensors(config, seed),
                                   metadata={"format": "pt"})
  files = {
      "README.md": _readme(config, seed).encode(),
      "config.json": _json_bytes(config),
      "model.safetensors": weights,
      "tokenizer.json": (tokenizer.to_str(pretty=True) + "\n").encode(),
      "tokenizer_config.json": _json_bytes(_tokenizer_config()),
  }
  for name in OUTPUT_FILES:
    _write_atomic(os.path.join(out_dir, name), files[name])
  return out_dir


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}.")
  f = flags.FLAGS
  out_dir = make_tiny_t5(f.out, seed=f.seed)
  logging.info("Wrote a tiny random T5 v1.1 encoder (seed %d) to %s.", f.seed, out_dir)


if __name__ == "__main__":
  define_flags()
  app.run(main)
