"""CLIP parity with transformers' PyTorch CLIPModel (`metrics.clip_model`), weight-import errors
(`metrics.clip_weights`), frame preprocessing and the score (`metrics.clip`)."""

import json
import os
import string

import numpy as np
import pytest
from PIL import Image
import torch
import transformers

from dreamix_jax.metrics import clip, clip_model, clip_weights
from dreamix_jax.metrics import frames

IMAGE_SIZE = 32
MAX_TOKENS = 16
MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)


def _write_tokenizer(model_dir):
  """A CLIP BPE tokenizer over lowercase letters plus two merges, saved as HF files."""
  letters = list(string.ascii_lowercase)
  tokens = ["<|startoftext|>", "<|endoftext|>"] + letters + [c + "</w>" for c in letters]
  tokens += ["th", "the</w>"]
  with open(os.path.join(model_dir, "vocab.json"), "w") as f:
    json.dump({t: i for i, t in enumerate(tokens)}, f)
  with open(os.path.join(model_dir, "merges.txt"), "w") as f:
    f.write("#version: 0.2\nt h\nth e</w>\n")
  transformers.CLIPTokenizer.from_pretrained(model_dir).save_pretrained(model_dir)


def _tiny_config(hidden_act="quick_gelu"):
  return transformers.CLIPConfig(
      text_config=dict(vocab_size=110, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, max_position_embeddings=MAX_TOKENS, bos_token_id=0,
                       eos_token_id=1, pad_token_id=1, hidden_act=hidden_act),
      vision_config=dict(image_size=IMAGE_SIZE, patch_size=8, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, hidden_act=hidden_act),
      projection_dim=16, logit_scale_init_value=2.0)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
  """A tiny random CLIP saved as a Hugging Face directory; returns (path, torch model)."""
  model_dir = str(tmp_path_factory.mktemp("clip"))
  torch.manual_seed(0)
  model = transformers.CLIPModel(_tiny_config()).eval()
  model.save_pretrained(model_dir)
  _write_tokenizer(model_dir)
  transformers.CLIPImageProcessor(
      size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
      image_mean=list(MEAN), image_std=list(STD)).save_pretrained(model_dir)
  return model_dir, model


@pytest.fixture(scope="module")
def scorer(clip_dir):
  return clip.ClipScorer(clip_dir[0])


def _to_torch_pixels(pixels_nhwc):
  return torch.from_numpy(np.ascontiguousarray(np.asarray(pixels_nhwc).transpose(0, 3, 1, 2)))


def test_parity_with_transformers(clip_dir, scorer):
  _, torch_model = clip_dir
  pixels = np.random.default_rng(0).normal(size=(3, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
  prompts = ["the cat", "a dog runs on the beach", "the"]
  ids = scorer.tokenize(prompts)
  assert ids.shape == (3, MAX_TOKENS)
  with torch.no_grad():
    ref = torch_model(input_ids=torch.from_numpy(ids).long(),
                      pixel_values=_to_torch_pixels(pixels))
  logits = scorer.model.apply(scorer.variables, pixels, ids)
  np.testing.assert_allclose(logits, ref.logits_per_image.numpy(), atol=1e-5, rtol=1e-5)
  image = scorer.model.apply(scorer.variables, pixels, method=clip_model.ClipModel.image_features)
  image = image / np.linalg.norm(image, axis=-1, keepdims=True)
  np.testing.assert_allclose(image, ref.image_embeds.numpy(), atol=1e-5)
  np.testing.assert_allclose(scorer.text_embeddings(prompts), ref.text_embeds.numpy(), atol=1e-5)


def test_score_is_mean_frame_cosine_on_subsampled_frames(clip_dir, scorer):
  _, torch_model = clip_dir
  rng = np.random.default_rng(1)
  video = rng.integers(0, 256, size=(7, 40, 48, 3), dtype=np.uint8)  # 10 fps -> frames 0, 2, 4, 6
  pixels = frames.resize_center_crop(video[[0, 2, 4, 6]] / np.float32(255), resize_to=IMAGE_SIZE,
                                     crop_to=IMAGE_SIZE)
  pixels = (np.asarray(pixels) - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
  with torch.no_grad():
    image = torch_model.get_image_features(pixel_values=_to_torch_pixels(pixels)).pooler_output
    text = torch_model.get_text_features(
        input_ids=torch.from_numpy(scorer.tokenize(["the cat"])).long()).pooler_output
  want = torch.nn.functional.cosine_similarity(image, text).numpy()
  np.testing.assert_allclose(scorer.frame_scores(video, "the cat", fps=10), want, atol=1e-5)
  assert scorer.score(video, "the cat", fps=10) == pytest.approx(float(want.mean()), abs=1e-5)
  # A float video in [-1, 1] is the same video.
  as_float = video.astype(np.float32) / 127.5 - 1
  assert scorer.score(as_float, "the cat", fps=10) == pytest.approx(float(want.mean()), abs=1e-5)


def test_preprocessing_matches_hf_image_processor(clip_dir, scorer):
  model_dir, _ = clip_dir
  assert scorer.preprocessing == clip.ImagePreprocessing(IMAGE_SIZE, IMAGE_SIZE, MEAN, STD)
  processor = transformers.AutoImageProcessor.from_pretrained(model_dir)
  # Unsaturated values: PIL's 8-bit bicubic clips and rounds between its two passes.
  image = np.random.default_rng(2).integers(60, 190, size=(45, 60, 3), dtype=np.uint8)
  ref = processor(images=image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
  ref = ref * np.array(STD) + np.array(MEAN)  # back to [0, 1]
  ours = frames.resize_center_crop(frames.to_unit_range(image[None]), resize_to=IMAGE_SIZE,
                                   crop_to=IMAGE_SIZE)[0]
  np.testing.assert_allclose(ours, ref, atol=1.5 / 255)


def test_preprocessing_defaults_without_processor_config(tmp_path):
  assert clip.ImagePreprocessing.from_dir(str(tmp_path), 224) == clip.ImagePreprocessing(
      224, 224, clip.CLIP_MEAN, clip.CLIP_STD)


def test_sharded_checkpoint_loads_the_same_tensors(clip_dir, tmp_path):
  model_dir, torch_model = clip_dir
  torch_model.save_pretrained(str(tmp_path), max_shard_size="50KB")
  assert os.path.exists(tmp_path / "model.safetensors.index.json")
  assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
  sharded = clip_weights.load_safetensors_dir(str(tmp_path))
  single = clip_weights.load_safetensors_dir(model_dir)
  assert sharded.keys() == single.keys()
  for name, value in single.items():
    np.testing.assert_array_equal(sharded[name], value)


@pytest.fixture(scope="module")
def tensors_and_config(clip_dir):
  model_dir, torch_model = clip_dir
  return (clip_weights.load_safetensors_dir(model_dir),
          clip_model.ClipConfig.from_hf(torch_model.config))


def test_import_rejects_missing_tensor(tensors_and_config):
  tensors, config = tensors_and_config
  broken = dict(tensors)
  del broken["text_model.encoder.layers.1.mlp.fc2.bias"]
  with pytest.raises(ValueError, match=r"missing tensors \['text_model.encoder.layers.1.mlp.fc2"):
    clip_weights.params_from_hf(broken, config)


def test_import_rejects_unexpected_tensor(tensors_and_config):
  tensors, config = tensors_and_config
  broken = dict(tensors, **{"vision_model.extra.weight": np.zeros(3, np.float32)})
  with pytest.raises(ValueError, match=r"unexpected tensors \['vision_model.extra.weight'\]"):
    clip_weights.params_from_hf(broken, config)


def test_import_rejects_misshaped_tensor(tensors_and_config):
  tensors, config = tensors_and_config
  broken = dict(tensors)
  broken["vision_model.encoder.layers.0.self_attn.q_proj.weight"] = np.zeros((32, 16), np.float32)
  with pytest.raises(ValueError, match=r"vision_model.encoder.layers.0.self_attn.q_proj.weight "
                     r"has shape \(32, 16\)"):
    clip_weights.params_from_hf(broken, config)


def test_import_ignores_legacy_position_id_buffers(tensors_and_config):
  tensors, config = tensors_and_config
  legacy = dict(tensors, **{"text_model.embeddings.position_ids": np.arange(MAX_TOKENS)[None]})
  params = clip_weights.params_from_hf(legacy, config)["params"]
  np.testing.assert_array_equal(params["logit_scale"], tensors["logit_scale"])


def test_missing_weights_file_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    clip_weights.load_safetensors_dir(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="config.json"):
    clip_weights.load_clip(str(tmp_path))


def test_eos_pooling_positions():
  ids = np.array([[0, 5, 7, 1, 1, 1], [0, 9, 1, 1, 1, 1]])
  np.testing.assert_array_equal(clip_model.eos_positions(ids, eos_token_id=1), [3, 2])
  legacy = np.array([[49406, 5, 49407, 0, 0], [49406, 49407, 0, 0, 0]])
  np.testing.assert_array_equal(clip_model.eos_positions(legacy, eos_token_id=2), [2, 1])


def test_gelu_config_matches_transformers():
  torch.manual_seed(3)
  model = transformers.CLIPModel(_tiny_config(hidden_act="gelu")).eval()
  config = clip_model.ClipConfig.from_hf(model.config)
  tensors = {k: v.numpy() for k, v in model.state_dict().items()}
  variables = clip_weights.params_from_hf(tensors, config)
  pixels = np.random.default_rng(4).normal(size=(2, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
  ids = np.array([[0, 5, 7, 1, 1], [0, 9, 1, 1, 1]])
  with torch.no_grad():
    ref = model(input_ids=torch.from_numpy(ids), pixel_values=_to_torch_pixels(pixels))
  logits = clip_model.ClipModel(config).apply(variables, pixels, ids)
  np.testing.assert_allclose(logits, ref.logits_per_image.numpy(), atol=1e-5, rtol=1e-5)


def test_subsample_indices_follow_target_timestamps():
  # 24 fps -> 5 fps: nearest frames to k / 5 s, i.e. round(4.8 k), capped at 24 frames.
  idx = frames.subsample_indices(128, fps=24)
  np.testing.assert_array_equal(idx[:7], [0, 5, 10, 14, 19, 24, 29])
  assert len(idx) == 24 and idx[-1] == 110
  np.testing.assert_array_equal(frames.subsample_indices(20, fps=30), [0, 6, 12, 18])
  np.testing.assert_array_equal(frames.subsample_indices(12, fps=24), [0, 5, 10])
  np.testing.assert_array_equal(frames.subsample_indices(10, fps=25), [0, 5])
  np.testing.assert_array_equal(frames.subsample_indices(30, fps=5), np.arange(24))
  np.testing.assert_array_equal(frames.subsample_indices(4, fps=3), np.arange(4))
  with pytest.raises(ValueError, match="positive"):
    frames.subsample_indices(10, fps=0)


@pytest.mark.parametrize("shape", [(2, 30, 45, 3), (1, 50, 20, 3)])
def test_resize_center_crop_matches_pil_bicubic(shape):
  video = np.random.default_rng(5).uniform(0.2, 0.8, size=shape).astype(np.float32)
  out = np.asarray(frames.resize_center_crop(video, resize_to=24, crop_to=20))
  assert out.shape == (shape[0], 20, 20, 3)
  new_h, new_w = frames.resized_shape(shape[1], shape[2], 24)
  assert min(new_h, new_w) == 24
  top, left = (new_h - 20) // 2, (new_w - 20) // 2
  for n in range(shape[0]):
    ref = np.stack([
        np.asarray(Image.fromarray(video[n, :, :, c]).resize((new_w, new_h), Image.BICUBIC))
        for c in range(3)], axis=-1)[top:top + 20, left:left + 20]
    np.testing.assert_allclose(out[n], ref, atol=1e-5)


def test_paper_frames_shape_and_range():
  video = np.random.default_rng(6).uniform(-1, 1, size=(50, 36, 64, 3)).astype(np.float32)
  out = np.asarray(frames.paper_frames(video, fps=24, resize_to=32, crop_to=32))
  assert out.shape == (len(frames.subsample_indices(50, 24)), 32, 32, 3) == (11, 32, 32, 3)
  assert out.min() >= 0 and out.max() <= 1


def test_float_video_out_of_range_is_rejected():
  with pytest.raises(ValueError, match=r"\[-1, 1\]"):
    frames.to_unit_range(np.full((1, 4, 4, 3), 200.0, np.float32))
  with pytest.raises(ValueError, match="uint8"):
    frames.to_unit_range(np.zeros((1, 4, 4, 3), np.int32))
