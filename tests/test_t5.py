"""T5 v1.1 encoder: parity with transformers, weight import, tokenizer, embedders, cache, CLI.

Everything is built here: a tiny random `transformers.T5EncoderModel` saved with `save_pretrained`
and a SentencePiece tokenizer trained on a few sentences. Nothing is downloaded.
"""

import copy
import dataclasses
import json
import logging
import os
import shutil
import threading

from absl import flags
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors
import safetensors.numpy

from dreamix_jax.text import t5
from dreamix_jax.text import t5_weights
from dreamix_jax.text import text_encoder
from dreamix_jax.tools import encode_prompts
import readme_commands

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

MAX_LENGTH = 16
SENTENCES = [
    "a red car drives down the road", "a cat sitting on a mat", "a dog running in the park",
    "the quick brown fox jumps over the lazy dog", "a bear walking in the snow",
    "an origami boat floating on the water", "a monkey eating a banana",
]
PROMPTS = ["a bear walking in the snow", "a dog", "the red fox jumps over the car"]


def _tiny_hf_config():
  return transformers.T5Config(vocab_size=96, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                               num_heads=4, feed_forward_proj="gated-gelu", dropout_rate=0.0)


def _train_tokenizer(directory):
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  prefix = os.path.join(directory, "sp")
  spm.SentencePieceTrainer.train(sentence_iterator=iter(SENTENCES * 4), model_prefix=prefix,
                                 vocab_size=80, model_type="unigram", pad_id=0, eos_id=1,
                                 unk_id=2, bos_id=-1, hard_vocab_limit=False,
                                 minloglevel=2)
  processor = spm.SentencePieceProcessor(model_file=prefix + ".model")
  vocab = [(processor.id_to_piece(i), processor.get_score(i))
           for i in range(processor.get_piece_size())]
  return transformers.T5Tokenizer(vocab=vocab, extra_ids=10)


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
  """Tiny torch model and its checkpoint directories: single, sharded, bf16 safetensors."""
  root = tmp_path_factory.mktemp("t5")
  tokenizer = _train_tokenizer(str(root))
  torch.manual_seed(0)
  model = transformers.T5EncoderModel(_tiny_hf_config()).eval()
  dirs = {name: str(root / name) for name in ("single", "sharded", "bf16")}
  model.save_pretrained(dirs["single"])
  model.save_pretrained(dirs["sharded"], max_shard_size="20KB")
  copy.deepcopy(model).to(torch.bfloat16).save_pretrained(dirs["bf16"])
  for directory in dirs.values():
    tokenizer.save_pretrained(directory)
  state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
  return dict(model=model, tokenizer=tokenizer, dirs=dirs, state=state, root=root)


@pytest.fixture(scope="module")
def config(hf):
  return t5_weights.load_t5_config(hf["dirs"]["single"])


@pytest.fixture(scope="module")
def embedder(hf, tmp_path_factory):
  cache_dir = str(tmp_path_factory.mktemp("cache"))
  return text_encoder.t5_embedder(hf["dirs"]["single"], max_length=MAX_LENGTH, cache_dir=cache_dir,
                                  max_batch=4)


def _reference(hf, tokens, mask):
  with torch.no_grad():
    out = hf["model"](input_ids=torch.tensor(tokens, dtype=torch.long),
                      attention_mask=torch.tensor(mask, dtype=torch.long))
  return out.last_hidden_state.numpy()


def _padded_batch(hf):
  batch = hf["tokenizer"](PROMPTS, padding="max_length", max_length=12, truncation=True,
                          return_tensors="np")
  assert not batch["attention_mask"].all()  # the batch really has padding
  return batch["input_ids"], batch["attention_mask"].astype(bool)


def _write_safetensors(directory, tensors, config_dir):
  os.makedirs(directory)
  shutil.copy(os.path.join(config_dir, "config.json"), directory)
  safetensors.numpy.save_file(tensors, os.path.join(directory, "model.safetensors"))
  return str(directory)


# Model.


def test_relative_position_buckets_match_transformers():
  attention = transformers.models.t5.modeling_t5.T5Attention
  length = 400
  relative = torch.arange(length)[None, :] - torch.arange(length)[:, None]
  for num_buckets, max_distance in [(32, 128), (16, 64), (8, 20), (33, 300)]:
    ref = attention._relative_position_bucket(relative, bidirectional=True,
                                              num_buckets=num_buckets, max_distance=max_distance)
    ours = t5.relative_position_buckets(length, length, num_buckets, max_distance)
    np.testing.assert_array_equal(ours, ref.numpy())


def test_gelu_matches_gelu_new_of_gated_gelu_configs():
  hf_config = transformers.T5Config(feed_forward_proj="gated-gelu")
  assert hf_config.is_gated_act and hf_config.dense_act_fn == "gelu_new"
  x = np.linspace(-6, 6, 101, dtype=np.float32)
  ref = transformers.activations.ACT2FN["gelu_new"](torch.tensor(x)).numpy()
  np.testing.assert_allclose(jax.nn.gelu(x, approximate=True), ref, atol=1e-6)


def test_presets_match_published_t5_v1_1_configs():
  published = {  # google/t5-v1_1-*: d_model, d_kv, d_ff, num_layers, num_heads
      "small": (512, 64, 1024, 8, 6), "base": (768, 64, 2048, 12, 12),
      "large": (1024, 64, 2816, 24, 16), "xl": (2048, 64, 5120, 24, 32),
      "xxl": (4096, 64, 10240, 24, 64)}
  for name, dims in published.items():
    cfg = t5.preset(name)
    assert (cfg.d_model, cfg.d_kv, cfg.d_ff, cfg.num_layers, cfg.num_heads) == dims
    assert (cfg.vocab_size, cfg.relative_attention_num_buckets,
            cfg.relative_attention_max_distance) == (32128, 32, 128)
  xxl = t5.preset("xxl")
  count = sum(x.size for x in jax.tree.leaves(t5.param_shapes(xxl)))
  per_layer = 4 * 4096 * 4096 + 3 * 4096 * 10240 + 2 * 4096
  assert count == 32128 * 4096 + 24 * per_layer + 32 * 64 + 4096  # ~4.76B encoder params
  with pytest.raises(ValueError, match="Unknown T5 preset"):
    t5.preset("huge")


def test_params_are_plain_arrays_with_logical_axes(config):
  params = t5.init_params(config, jax.random.key(0))
  shapes = t5.param_shapes(config)
  assert jax.tree.structure(params) == jax.tree.structure(shapes)
  assert all(isinstance(x, jax.Array) and x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  axes = {path: tuple(spec) for path, spec in
          flax.traverse_util.flatten_dict(t5.param_logical_axes(config)).items()}
  assert axes[("token_embedding", "embedding")] == ("vocab", "embed")
  assert axes[("relative_attention_bias", "embedding")] == ("relpos_buckets", "heads")
  assert axes[("final_norm", "scale")] == ("embed",)
  block = {k[1:]: v for k, v in axes.items() if k[0] == "block_1"}
  for proj in "qkv":
    assert block[("attention", proj, "kernel")] == ("embed", "heads_kv")
  assert block[("attention", "o", "kernel")] == ("heads_kv", "embed")
  assert block[("mlp", "wi_0", "kernel")] == block[("mlp", "wi_1", "kernel")] == ("embed", "mlp")
  assert block[("mlp", "wo", "kernel")] == ("mlp", "embed")
  assert block[("attention_norm", "scale")] == block[("mlp_norm", "scale")] == ("embed",)


# Import and parity.


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_import_matches_transformers_float32(hf, config, layout):
  directory = hf["dirs"][layout]
  if layout == "sharded":
    assert len(t5_weights.weight_files(directory)) > 1
  params = t5_weights.load_t5_params(directory, config)
  assert jax.tree.structure(params) == jax.tree.structure(t5.param_shapes(config))
  tokens, mask = _padded_batch(hf)
  ours = t5.T5Encoder(config).apply({"params": params}, tokens, mask)
  np.testing.assert_allclose(ours, _reference(hf, tokens, mask), atol=1e-5, rtol=0)


def test_bfloat16_compute_stays_close(hf, config):
  """Bounds from bfloat16's precision (8 significant bits, unit roundoff u = 2^-8): the output's RMS
  error relative to the float32 reference's RMS within 2u (measured: 1.5u; PyTorch running the same
  model in bfloat16: 1.8u), and every element within 16u of the reference's RMS (measured: 5.4u).
  The former atol of 0.1 allowed 26u everywhere."""
  params = t5_weights.load_t5_params(hf["dirs"]["single"], config)
  tokens, mask = _padded_batch(hf)
  bf16 = t5.T5Encoder(dataclasses.replace(config, dtype="bfloat16"))
  ours = np.asarray(bf16.apply({"params": params}, tokens, mask))
  assert ours.dtype == np.float32
  reference = _reference(hf, tokens, mask)
  rms = lambda x: float(np.sqrt(np.mean(np.square(x))))
  u = 2.0 ** -8
  assert rms(ours - reference) <= 2 * u * rms(reference)
  assert np.abs(ours - reference).max() <= 16 * u * rms(reference)


def test_bfloat16_checkpoint_imports_rounded_values(hf, config):
  with safetensors.safe_open(os.path.join(hf["dirs"]["bf16"], "model.safetensors"), "numpy") as f:
    assert {f.get_slice(name).get_dtype() for name in f.keys()} == {"BF16"}
  params = flax.traverse_util.flatten_dict(t5_weights.load_t5_params(hf["dirs"]["bf16"], config))
  as_bf16 = dataclasses.replace(config, param_dtype="bfloat16")
  params_bf16 = flax.traverse_util.flatten_dict(
      t5_weights.load_t5_params(hf["dirs"]["bf16"], as_bf16))
  for name, target in t5_weights.hf_name_map(config).items():
    rounded = hf["state"][name].astype(jnp.bfloat16)
    rounded = rounded.T if target.transpose else rounded
    assert params[target.path].dtype == jnp.float32
    np.testing.assert_array_equal(params[target.path], rounded.astype(np.float32))
    assert params_bf16[target.path].dtype == jnp.bfloat16
    np.testing.assert_array_equal(params_bf16[target.path], rounded)


def test_full_t5_checkpoint_ignores_decoder_and_accepts_embed_tokens(hf, config, tmp_path):
  tensors = dict(hf["state"])
  tensors["encoder.embed_tokens.weight"] = tensors.pop("shared.weight")
  tensors["decoder.block.0.layer.0.SelfAttention.q.weight"] = np.ones((32, 32), np.float32)
  tensors["lm_head.weight"] = np.ones((96, 32), np.float32)
  directory = _write_safetensors(tmp_path / "full", tensors, hf["dirs"]["single"])
  ours = t5_weights.load_t5_params(directory, config)
  reference = t5_weights.load_t5_params(hf["dirs"]["single"], config)
  jax.tree.map(np.testing.assert_array_equal, ours, reference)


def test_pytorch_bin_checkpoint(hf, config, tmp_path):
  directory = tmp_path / "bin"
  directory.mkdir()
  shutil.copy(os.path.join(hf["dirs"]["single"], "config.json"), directory)
  torch.save(hf["model"].state_dict(), directory / "pytorch_model.bin")
  ours = t5_weights.load_t5_params(str(directory), config)
  reference = t5_weights.load_t5_params(hf["dirs"]["single"], config)
  jax.tree.map(np.testing.assert_array_equal, ours, reference)


def test_import_places_params_with_given_sharding(hf, config):
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("model",))
  named = lambda *spec: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))

  def sharding(path):
    return named(None, "model") if path[-1] == "kernel" else named()

  params = flax.traverse_util.flatten_dict(
      t5_weights.load_t5_params(hf["dirs"]["single"], config, sharding=sharding))
  assert len(jax.devices()) == 8
  for path, value in params.items():
    assert value.sharding == sharding(path), path
  tree = jax.tree.map(lambda _: named(), t5.param_shapes(config))
  replicated = t5_weights.load_t5_params(hf["dirs"]["single"], config, sharding=tree)
  assert all(x.sharding == named() for x in jax.tree.leaves(replicated))


def test_import_errors_name_the_problem(hf, config, tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    t5_weights.load_t5_params(str(tmp_path / "nowhere"))
  sharded = shutil.copytree(hf["dirs"]["sharded"], tmp_path / "sharded")
  os.remove(sharded / "model-00002-of-00006.safetensors")
  with pytest.raises(FileNotFoundError, match="model-00002-of-00006.safetensors"):
    t5_weights.load_t5_params(str(sharded), config)

  extra = dict(hf["state"], **{"encoder.block.0.layer.0.SelfAttention.q.bias": np.zeros(32)})
  directory = _write_safetensors(tmp_path / "extra", extra, hf["dirs"]["single"])
  with pytest.raises(ValueError, match=r"Unexpected.*SelfAttention\.q\.bias"):
    t5_weights.load_t5_params(directory, config)

  missing = {k: v for k, v in hf["state"].items() if "block.1.layer.1.DenseReluDense.wo" not in k}
  directory = _write_safetensors(tmp_path / "missing", missing, hf["dirs"]["single"])
  with pytest.raises(ValueError, match=r"Missing.*block\.1\.layer\.1\.DenseReluDense\.wo"):
    t5_weights.load_t5_params(directory, config)

  wrong = dict(hf["state"])
  wrong["encoder.block.1.layer.0.SelfAttention.k.weight"] = np.zeros((32, 31), np.float32)
  directory = _write_safetensors(tmp_path / "wrong", wrong, hf["dirs"]["single"])
  with pytest.raises(ValueError, match=r"SelfAttention\.k\.weight.*\(32, 31\).*\(32, 32\)"):
    t5_weights.load_t5_params(directory, config)

  ints = dict(hf["state"], **{"encoder.final_layer_norm.weight": np.ones(32, np.int32)})
  directory = _write_safetensors(tmp_path / "ints", ints, hf["dirs"]["single"])
  with pytest.raises(ValueError, match=r"non-float.*encoder\.final_layer_norm\.weight \(I32\)"):
    t5_weights.load_t5_params(directory, config)

  shard = sharded / "model-00003-of-00006.safetensors"
  shard.write_bytes(shard.read_bytes()[:-7])  # an interrupted download
  shutil.copy(hf["dirs"]["sharded"] + "/model-00002-of-00006.safetensors", sharded)
  with pytest.raises(ValueError, match=f"{shard} is not a valid safetensors file.*re-download"):
    t5_weights.load_t5_params(str(sharded), config)


# Embedders and cache.


def test_embedder_matches_transformers_and_zeroes_padding(hf, embedder):
  embeddings, mask = embedder.encode(PROMPTS)
  assert embeddings.shape == (3, MAX_LENGTH, 32) and embeddings.dtype == np.float32
  assert mask.shape == (3, MAX_LENGTH) and mask.dtype == bool
  tokens, expected_mask = embedder.tokenize(PROMPTS)
  np.testing.assert_array_equal(mask, expected_mask)
  reference = _reference(hf, tokens, mask)
  np.testing.assert_allclose(embeddings[mask], reference[mask], atol=1e-5, rtol=0)
  assert not embeddings[~mask].any()
  # Batch size does not change a prompt's embedding (padding rows to a bucket are inert).
  single, _ = embedder.encode(PROMPTS[1:2])
  np.testing.assert_allclose(single[0], embeddings[1], atol=1e-6)
  # More prompts than max_batch (4) are chunked.
  many, _ = embedder.encode(PROMPTS * 2)
  np.testing.assert_allclose(many[3:6], embeddings, atol=1e-6)


def test_null_embedding(embedder):
  embeddings, mask = embedder.null(2)
  assert embeddings.shape == (2, MAX_LENGTH, 32) and not embeddings.any()
  assert mask.shape == (2, MAX_LENGTH) and not mask.any()


def test_cache_hits_skip_the_encoder(hf, embedder, config):
  first, first_mask = embedder(["a cat on the road", "a dog", "a cat on the road"])
  encoded = embedder.num_encoded
  np.testing.assert_array_equal(first[0], first[2])
  second, second_mask = embedder(["a dog", "a cat on the road"])
  assert embedder.num_encoded == encoded  # both hits
  np.testing.assert_array_equal(second, first[[1, 0]])
  np.testing.assert_array_equal(second_mask, first_mask[[1, 0]])
  other = text_encoder.T5TextEncoder(config, embedder.params, hf["tokenizer"],
                                     fingerprint="another-checkpoint", max_length=MAX_LENGTH,
                                     cache_dir=embedder.cache.cache_dir)
  other(["a dog"])
  assert other.num_encoded == 1  # a different fingerprint misses


def test_truncation_warns(embedder, caplog):
  long_prompt = " ".join(SENTENCES)
  with caplog.at_level(logging.WARNING):
    tokens, mask = embedder.tokenize([long_prompt, "a dog"])
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1  # only the long prompt
  assert "truncated to max_length=16" in warnings[0] and long_prompt[:40] in warnings[0]
  assert mask[0].all() and tokens[0, -1] == 1  # EOS kept at the end
  assert not mask[1].all()


def test_tokenize_from_many_threads_always_pads(embedder):
  """The pretrain job embeds captions on prefetching threads; a fast tokenizer's per-call padding
  state is shared, so unguarded calls sometimes returned another call's unpadded (B, 10) batch."""
  prompts = ["a red circle moving left on a black background", "a blue square moving up"]
  expected = embedder.tokenize(prompts)
  shapes_seen = []

  def work():
    for _ in range(60):
      tokens, mask = embedder.tokenize(prompts)
      shapes_seen.append(tokens.shape if np.array_equal(tokens, expected[0])
                         and np.array_equal(mask, expected[1]) else ("differs", tokens.shape))

  threads = [threading.Thread(target=work) for _ in range(6)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert shapes_seen == [(2, MAX_LENGTH)] * 360


def test_cli_builds_cache_for_cached_embedder(hf, tmp_path):
  prompts_file = tmp_path / "prompts.txt"
  prompts_file.write_text("a bear walking in the snow\n\n  a dog  \na bear walking in the snow\n")
  out = str(tmp_path / "cli_cache")
  readme = readme_commands.argv(
      "python -m dreamix_jax.tools.encode_prompts --t5=<hf t5 dir> --prompts=prompts.txt "
      "--out=<cache dir>", {"<hf t5 dir>": hf["dirs"]["sharded"],
                            "prompts.txt": str(prompts_file), "<cache dir>": out})
  argv = readme[2:] + [f"--max_length={MAX_LENGTH}"]  # in process: [module, flags...]
  if "prompts" not in flags.FLAGS:
    encode_prompts.define_flags()
  flags.FLAGS(argv)
  try:
    encode_prompts.main(argv[:1])
  finally:
    flags.FLAGS.unparse_flags()
  info = json.loads((tmp_path / "cli_cache" / "cache_info.json").read_text())
  assert [(e["max_length"], e["dim"]) for e in info["encoders"]] == [(MAX_LENGTH, 32)]
  assert len([f for f in os.listdir(out) if f.endswith(".npz")]) == 2

  cached = text_encoder.make_embedder(None, out, MAX_LENGTH)
  assert (cached.max_length, cached.dim) == (MAX_LENGTH, 32)
  embeddings, mask = cached(["a dog", "a bear walking in the snow"])
  batch = hf["tokenizer"](["a dog", "a bear walking in the snow"], padding="max_length",
                          max_length=MAX_LENGTH, truncation=True, return_tensors="np")
  np.testing.assert_array_equal(mask, batch["attention_mask"].astype(bool))
  reference = _reference(hf, batch["input_ids"], mask)
  np.testing.assert_allclose(embeddings[mask], reference[mask], atol=1e-5, rtol=0)

  # Re-running the CLI on the same cache encodes nothing: cached and fresh embeddings agree.
  rerun = encode_prompts.encode_prompts(hf["dirs"]["sharded"], str(prompts_file), out,
                                        max_length=MAX_LENGTH)
  assert rerun.num_encoded == 0
  np.testing.assert_array_equal(rerun(["a dog", "a bear walking in the snow"])[0], embeddings)

  with pytest.raises(text_encoder.PromptNotCachedError,
                     match=r"'a cat'.*python -m dreamix_jax\.tools\.encode_prompts"):
    cached(["a dog", "a cat"])
  with pytest.raises(ValueError, match="max_length 77"):
    text_encoder.cached_embedder(out, max_length=77)


def test_embedder_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="not an embedding cache"):
    text_encoder.cached_embedder(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    text_encoder.t5_embedder(str(tmp_path / "nowhere"))
  with pytest.raises(ValueError, match="t5_dir"):
    text_encoder.make_embedder(None, None, MAX_LENGTH)
  with pytest.raises(FileNotFoundError, match="no prompts|not found"):
    encode_prompts.read_prompts(str(tmp_path / "missing.txt"))
