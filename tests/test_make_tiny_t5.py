"""The moving-shapes text encoder: deterministic generation, the shipped copy, loading, tokens.

The shipped `assets/shapes_t5` must equal a fresh `make_tiny_t5(seed=0)` byte for byte, load
through the project's own path (`t5_weights`, `text_encoder.t5_embedder`) and through
`transformers.T5EncoderModel` with the same outputs, and give every word of the caption grammar
and the Dreamix placeholder "sks" exactly one known token.
"""

import itertools
import os
import pathlib
import subprocess

import flax.traverse_util
import jax
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from dreamix_jax.shapes import world as shapes
from dreamix_jax.text import t5
from dreamix_jax.text import t5_weights
from dreamix_jax.text import text_encoder
from dreamix_jax.tools import make_tiny_t5
import readme_commands

ROOT = pathlib.Path(__file__).resolve().parents[1]

MAX_LENGTH = 16
GRAMMAR_WORDS = (("a", "moving", "standing", "on", "background") + shapes.SHAPES + shapes.COLORS
                 + shapes.BACKGROUNDS + shapes.MOTIONS)
ALL_CAPTIONS = [shapes.caption(shapes.Attributes(shape, color, background, motion))
                for shape, color, background, motion in itertools.product(
                    shapes.SHAPES, shapes.COLORS, shapes.BACKGROUNDS, shapes.MOTIONS)]


def _read_dir(directory):
  return {path.name: path.read_bytes() for path in sorted(pathlib.Path(directory).iterdir())}


@pytest.fixture(scope="module")
def embedder():
  return text_encoder.t5_embedder(make_tiny_t5.shipped_dir(), max_length=MAX_LENGTH)


@pytest.fixture(scope="module")
def caption_embeddings(embedder):
  """Embeddings (225, 16, 64) and masks (225, 16) of every caption of the grammar."""
  return embedder.encode(ALL_CAPTIONS)


def test_generation_is_deterministic_and_seeded(tmp_path):
  first = _read_dir(make_tiny_t5.make_tiny_t5(str(tmp_path / "a"), seed=3))
  second = _read_dir(make_tiny_t5.make_tiny_t5(str(tmp_path / "b"), seed=3))
  assert sorted(first) == sorted(make_tiny_t5.OUTPUT_FILES)
  assert first == second
  other_seed = _read_dir(make_tiny_t5.make_tiny_t5(str(tmp_path / "c"), seed=4))
  assert other_seed["model.safetensors"] != first["model.safetensors"]
  assert other_seed["tokenizer.json"] == first["tokenizer.json"]
  # Regenerating over an earlier output replaces it.
  again = _read_dir(make_tiny_t5.make_tiny_t5(str(tmp_path / "c"), seed=3))
  assert again == first


def test_readme_command_remakes_the_shipped_copy(tmp_path):
  """The README's make_tiny_t5 command, writing to a temporary folder, makes the shipped files
  byte for byte."""
  argv = readme_commands.argv("python -m dreamix_jax.tools.make_tiny_t5 --out=assets/shapes_t5",
                              {"--out=assets/shapes_t5": f"--out={tmp_path / 'fresh'}"})
  proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  shipped = _read_dir(make_tiny_t5.shipped_dir())
  assert shipped == _read_dir(str(tmp_path / "fresh"))
  assert sum(len(data) for data in shipped.values()) < 1 << 20


def test_bad_arguments_are_rejected(tmp_path):
  (tmp_path / "other.txt").write_text("not a T5 file")
  with pytest.raises(ValueError, match="other.txt"):
    make_tiny_t5.make_tiny_t5(str(tmp_path))
  with pytest.raises(ValueError, match="d_model"):
    make_tiny_t5.make_tiny_t5(str(tmp_path / "new"), d_model=0)
  with pytest.raises(ValueError, match="is a file"):
    make_tiny_t5.make_tiny_t5(str(tmp_path / "other.txt"))


def test_loads_through_t5_weights():
  directory = make_tiny_t5.shipped_dir()
  config = t5_weights.load_t5_config(directory)
  assert (config.vocab_size, config.d_model, config.num_layers, config.num_heads, config.d_kv,
          config.d_ff) == (len(make_tiny_t5.vocabulary()), 64, 2, 4, 16, 128)
  params = t5_weights.load_t5_params(directory, config)
  expected = t5.param_shapes(config)
  assert jax.tree.map(lambda x: x.shape, params) == jax.tree.map(lambda x: x.shape, expected)
  stored = safetensors.numpy.load_file(os.path.join(directory, "model.safetensors"))
  flat = flax.traverse_util.flatten_dict(params)
  np.testing.assert_array_equal(flat["token_embedding", "embedding"], stored["shared.weight"])
  np.testing.assert_array_equal(flat["block_1", "mlp", "wo", "kernel"],
                                stored["encoder.block.1.layer.1.DenseReluDense.wo.weight"].T)
  assert np.all(flat["final_norm", "scale"] == 1.0)
  np.testing.assert_allclose(stored["shared.weight"].std(), 1.0, atol=0.05)


def test_transformers_loads_the_same_encoder(embedder):
  model, info = transformers.T5EncoderModel.from_pretrained(
      make_tiny_t5.shipped_dir(), output_loading_info=True, local_files_only=True)
  assert not info["missing_keys"] and not info["unexpected_keys"]
  assert model.config.feed_forward_proj == "gated-gelu"
  prompts = ["a red circle moving left on a black background", "a sks square standing still"]
  tokens, mask = embedder.tokenize(prompts)
  with torch.no_grad():
    reference = model.eval()(input_ids=torch.from_numpy(tokens).long(),
                             attention_mask=torch.from_numpy(mask).long()).last_hidden_state
  ours, _ = embedder(prompts)
  np.testing.assert_allclose(ours[mask], reference.numpy()[mask], atol=1e-4)


@pytest.mark.parametrize("word", GRAMMAR_WORDS + ("sks",))
def test_every_word_is_one_known_token(embedder, word):
  tokenizer = embedder.tokenizer
  ids = tokenizer(word)["input_ids"]
  assert len(ids) == 2 and ids[1] == tokenizer.eos_token_id == 1
  assert ids[0] not in (tokenizer.unk_token_id, tokenizer.pad_token_id)
  assert tokenizer.convert_ids_to_tokens(ids[0]) == word


def test_special_token_ids(embedder):
  tokenizer = embedder.tokenizer
  assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
  assert len(tokenizer) == len(make_tiny_t5.vocabulary()) == embedder.config.vocab_size
  assert tokenizer("a zebra")["input_ids"] == [tokenizer.convert_tokens_to_ids("a"), 2, 1]


def test_captions_tokenize_one_token_per_word_with_eos(embedder):
  tokenizer = embedder.tokenizer
  assert len(set(ALL_CAPTIONS)) == 225
  for caption in ALL_CAPTIONS:
    ids = tokenizer(caption)["input_ids"]
    assert len(ids) == len(caption.split()) + 1 <= MAX_LENGTH
    assert ids[-1] == 1 and tokenizer.unk_token_id not in ids
  # Case, surrounding space and a final period do not change the words' tokens.
  plain = tokenizer(ALL_CAPTIONS[0])["input_ids"]
  assert tokenizer(f"  {ALL_CAPTIONS[0].upper()}.")["input_ids"] == plain[:-1] + [
      tokenizer.convert_tokens_to_ids("."), 1]
  sks = tokenizer.convert_tokens_to_ids("sks")
  assert tokenizer("a sks circle")["input_ids"] == [
      tokenizer.convert_tokens_to_ids("a"), sks, tokenizer.convert_tokens_to_ids("circle"), 1]


def test_embeddings_shape_and_mask(embedder, caption_embeddings):
  embeddings, mask = caption_embeddings
  assert embeddings.shape == (225, MAX_LENGTH, 64) and embeddings.dtype == np.float32
  np.testing.assert_array_equal(mask.sum(1), [len(c.split()) + 1 for c in ALL_CAPTIONS])
  assert np.all(embeddings[~mask] == 0.0)
  assert np.all(np.isfinite(embeddings))
  again, again_mask = embedder(ALL_CAPTIONS[:3])
  np.testing.assert_allclose(again, embeddings[:3], atol=1e-6)
  np.testing.assert_array_equal(again_mask, mask[:3])


def test_different_captions_give_different_embeddings(caption_embeddings):
  embeddings, _ = caption_embeddings
  flat = embeddings.reshape(len(embeddings), -1).astype(np.float64)
  squared = (flat**2).sum(1)
  distances = np.sqrt(np.maximum(squared[:, None] + squared[None] - 2 * flat @ flat.T, 0.0))
  np.fill_diagonal(distances, np.inf)
  assert distances.min() > 5.0


def test_a_changed_word_moves_its_own_position_most(embedder):
  """Token identity: swapping one word changes the embedding most at that word's position."""
  base = "a red circle moving left on a black background"
  edits = {2: "a red square moving left on a black background",
           1: "a blue circle moving left on a black background",
           4: "a red circle moving up on a black background",
           7: "a red circle moving left on a purple background"}
  embeddings, _ = embedder([base] + list(edits.values()))
  for (position, _), edited in zip(edits.items(), embeddings[1:]):
    change = np.linalg.norm(edited - embeddings[0], axis=-1)
    assert change.argmax() == position
    assert change[position] > 2 * np.delete(change, position).max()
