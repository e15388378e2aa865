"""The prompt-embedding cache for both text towers: CLIP entries (diffusers' convention, all 77
positions kept) round-trip bit for bit and skip the tower, and cache keys follow the *content* of
the encoder's files (CLIP and T5), so another encoder with the same shapes never reuses entries."""

import json
import os
import shutil

from absl import flags
import numpy as np
import pytest
import safetensors.numpy

from dreamix_jax.backbones import diffusers_import
from dreamix_jax.text import text_encoder
from dreamix_jax.tools import encode_prompts, make_tiny_t5
from diffusers_tiny import tiny_text_encoder, write_pipeline

PROMPTS = ["a bear dancing", "A dog runs on the beach, at sunset!"]


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
  """Two tiny pipeline folders whose CLIP text encoders differ only in weight values."""
  root = tmp_path_factory.mktemp("pipes")
  return [write_pipeline(root / f"p{seed}", text_encoder=tiny_text_encoder(seed), tokenizer=True)
          for seed in (0, 1)]


def _forbid_encoding(embedder):
  def fail(*args):
    raise AssertionError("the CLIP tower ran on a cached prompt")
  embedder._apply = fail  # pylint: disable=protected-access


def test_clip_cache_round_trip_is_bit_identical_and_skips_the_tower(pipelines, tmp_path):
  fresh = diffusers_import.clip_text_embedder(pipelines[0])
  reference, reference_mask = fresh(PROMPTS)
  null_reference = fresh.null(2)

  cache = str(tmp_path / "cache")
  first = diffusers_import.clip_text_embedder(pipelines[0], cache)
  np.testing.assert_array_equal(first(PROMPTS)[0], reference)
  first.null(1)
  assert first.num_encoded == 3  # the two prompts and ""
  entries = [f for f in os.listdir(cache) if f.endswith(".npz")]
  assert len(entries) == 3
  with np.load(os.path.join(cache, entries[0])) as entry:  # the padded sequence, not the tokens
    assert entry["embedding"].shape == (77, 32) and entry["mask"].all()
  encoder, = json.loads(open(os.path.join(cache, "cache_info.json")).read())["encoders"]
  assert (encoder["max_length"], encoder["dim"], encoder["padded"]) == (77, 32, True)

  second = diffusers_import.clip_text_embedder(pipelines[0], cache)
  _forbid_encoding(second)
  embeddings, mask = second(PROMPTS[::-1] + PROMPTS[:1])
  assert embeddings.dtype == np.float32 and second.num_encoded == 0
  assert np.array_equal(embeddings, reference[[1, 0, 0]])
  assert np.array_equal(mask, reference_mask[[1, 0, 0]]) and mask.all()
  for ours, theirs in zip(second.null(2), null_reference):
    assert np.array_equal(ours, theirs)

  # The same files in another folder are the same encoder: the key is content, not path.
  copy = shutil.copytree(pipelines[0], tmp_path / "copy")
  moved = diffusers_import.clip_text_embedder(str(copy), cache)
  _forbid_encoding(moved)
  assert np.array_equal(moved(PROMPTS)[0], reference)


def test_another_clip_encoder_of_the_same_shapes_does_not_reuse_entries(pipelines, tmp_path):
  cache = str(tmp_path / "cache")
  ours = diffusers_import.clip_text_embedder(pipelines[0], cache)(PROMPTS)[0]
  other = diffusers_import.clip_text_embedder(pipelines[1], cache)
  assert other.fingerprint != diffusers_import.text_encoder_fingerprint(pipelines[0])
  theirs = other(PROMPTS)[0]
  assert other.num_encoded == 2
  assert np.abs(theirs - ours).max() > 0.1
  assert np.array_equal(theirs, diffusers_import.clip_text_embedder(pipelines[1])(PROMPTS)[0])
  # A tokenizer file changed (same weights) is another encoder too.
  changed = shutil.copytree(pipelines[0], tmp_path / "changed")
  with open(changed / "tokenizer" / "tokenizer_config.json", "a") as f:
    f.write("\n")
  assert diffusers_import.text_encoder_fingerprint(str(changed)) != (
      diffusers_import.text_encoder_fingerprint(pipelines[0]))


def test_cli_precomputes_clip_prompts_for_a_cache_only_embedder(pipelines, tmp_path):
  prompts_file = tmp_path / "prompts.txt"
  prompts_file.write_text("\n".join(PROMPTS) + "\n\n")
  out = str(tmp_path / "cli_cache")
  argv = ["encode_prompts", f"--pipeline={pipelines[0]}", f"--prompts={prompts_file}",
          f"--out={out}"]
  if "prompts" not in flags.FLAGS:
    encode_prompts.define_flags()
  flags.FLAGS(argv)
  try:
    encode_prompts.main(argv[:1])
  finally:
    flags.FLAGS.unparse_flags()
  assert len([f for f in os.listdir(out) if f.endswith(".npz")]) == 3  # the prompts and ""

  fresh = diffusers_import.clip_text_embedder(pipelines[0])
  cached = text_encoder.cached_embedder(out)
  assert (cached.max_length, cached.dim) == (77, 32)
  embeddings, mask = cached(PROMPTS)
  assert np.array_equal(embeddings, fresh(PROMPTS)[0]) and mask.all()
  null, null_mask = cached.null(3)
  assert np.array_equal(null, fresh.null(3)[0]) and null_mask.all()
  with pytest.raises(text_encoder.PromptNotCachedError, match=r"'a cat'.*--pipeline="):
    cached(["a cat"])
  rerun = encode_prompts.encode_clip_prompts(pipelines[0], str(prompts_file), out)
  assert rerun.num_encoded == 0


def test_t5_fingerprint_follows_weight_values(tmp_path):
  """A T5 folder whose weights are rewritten with other values of the same shapes (and the same
  file size) is another encoder: it gets its own fingerprint and re-encodes."""
  first = make_tiny_t5.make_tiny_t5(str(tmp_path / "a"), d_model=16, d_kv=4, d_ff=32)
  second = shutil.copytree(first, tmp_path / "b")
  weights = os.path.join(second, "model.safetensors")
  tensors = safetensors.numpy.load_file(weights)
  rng = np.random.default_rng(1)
  tensors = {k: rng.normal(size=v.shape).astype(v.dtype) for k, v in tensors.items()}
  size = os.path.getsize(weights)
  safetensors.numpy.save_file(tensors, weights, metadata={"format": "pt"})
  assert os.path.getsize(weights) == size

  assert text_encoder.encoder_fingerprint(first, "float32") != text_encoder.encoder_fingerprint(
      str(second), "float32")
  copy = shutil.copytree(first, tmp_path / "c")
  assert text_encoder.encoder_fingerprint(str(copy), "float32") == (
      text_encoder.encoder_fingerprint(first, "float32"))
  assert text_encoder.encoder_fingerprint(first, "bfloat16") != (
      text_encoder.encoder_fingerprint(first, "float32"))

  cache = str(tmp_path / "cache")
  ours, _ = text_encoder.t5_embedder(first, max_length=8, cache_dir=cache)(["a red circle"])
  other = text_encoder.t5_embedder(str(second), max_length=8, cache_dir=cache)
  theirs, mask = other(["a red circle"])
  assert other.num_encoded == 1
  assert np.abs(theirs[mask] - ours[mask]).max() > 0.1
  fresh, _ = text_encoder.t5_embedder(str(second), max_length=8)(["a red circle"])
  assert np.array_equal(theirs, fresh)
