"""Importing diffusers pipeline folders: the scheduler config, sharded / variant / bfloat16 /
pickle weights, and the ValueErrors for incomplete or mismatched folders."""

import json
import os
import shutil
import sys

import diffusers
import flax
import jax
import numpy as np
import pytest
import safetensors.torch
import torch
import transformers
from diffusers import DDIMScheduler

from dreamix_jax.autoencoders import sd_vae
from dreamix_jax.backbones import base
from dreamix_jax.backbones import diffusers_import
from dreamix_jax.backbones import diffusers_weights
from dreamix_jax.backbones import unet3d
from dreamix_jax.text import clip_text
from diffusers_tiny import SCHEDULER, tiny_unet, tiny_vae, write_pipeline

VAE_FILE = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def vae_root(tmp_path_factory):
  return write_pipeline(tmp_path_factory.mktemp("vae_pipe"), vae=tiny_vae())


@pytest.fixture
def vae_copy(vae_root, tmp_path):
  return shutil.copytree(vae_root, tmp_path / "pipe")


def _leaves(params):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(params)]


def _assert_same_params(a, b, **tol):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(_leaves(a), _leaves(b)):
    np.testing.assert_allclose(x, y, **tol)


def test_scheduler_config_matches_diffusers(tmp_path):
  root = write_pipeline(tmp_path / "eps")
  cfg = diffusers_import.load_scheduler_config(root)
  assert (cfg.num_train_timesteps, cfg.beta_schedule, cfg.prediction, cfg.class_name) == (
      1000, "scaled_linear", "eps", "DDIMScheduler")
  reference = DDIMScheduler.from_pretrained(os.path.join(root, "scheduler")).alphas_cumprod
  np.testing.assert_allclose(cfg.alphas_cumprod(), reference.numpy(), rtol=1e-6)
  v_root = write_pipeline(tmp_path / "v", unet=tiny_unet(),
                          scheduler=dict(SCHEDULER, prediction_type="v_prediction"))
  assert diffusers_import.unet_backbone(v_root).prediction == "v"
  bad = write_pipeline(tmp_path / "bad",
                       scheduler=dict(SCHEDULER, beta_schedule="squaredcos_cap_v2"))
  with pytest.raises(ValueError, match="squaredcos_cap_v2"):
    diffusers_import.load_scheduler_config(bad)


def test_missing_folders(vae_root, tmp_path):
  with pytest.raises(ValueError, match="no unet/ component"):
    diffusers_import.load_unet(vae_root)
  shutil.copytree(os.path.join(vae_root, "vae"), tmp_path / "vae")
  with pytest.raises(ValueError, match="model_index.json"):
    diffusers_import.load_vae(str(tmp_path))
  empty = write_pipeline(tmp_path / "empty")
  os.makedirs(os.path.join(empty, "vae"))
  shutil.copy(os.path.join(vae_root, "vae", "config.json"), os.path.join(empty, "vae"))
  with pytest.raises(ValueError, match="No weights in .*vae"):
    diffusers_import.load_vae(empty)


@pytest.mark.parametrize("edit, message", [
    ("missing", r"missing tensors: decoder\.conv_out\.bias"),
    ("unexpected", r"unexpected tensors: decoder\.extra\.weight"),
    ("shape", r"mis-shaped tensors: encoder\.conv_in\.weight \(32, 3, 3, 4\) "
              r"\(expected \(32, 3, 3, 3\)\)"),
])
def test_mismatched_tensors_are_named(vae_copy, edit, message):
  path = os.path.join(vae_copy, "vae", VAE_FILE)
  tensors = safetensors.torch.load_file(path)
  if edit == "missing":
    del tensors["decoder.conv_out.bias"]
  elif edit == "unexpected":
    tensors["decoder.extra.weight"] = torch.zeros(3)
  else:
    tensors["encoder.conv_in.weight"] = torch.zeros(32, 3, 3, 4)
  safetensors.torch.save_file(tensors, path)
  with pytest.raises(ValueError, match=message) as info:
    diffusers_import.load_vae(str(vae_copy))
  assert str(vae_copy) in str(info.value) and "\n" not in str(info.value)


def test_pickle_weights_need_torch(vae_root, tmp_path, monkeypatch):
  root = write_pipeline(tmp_path / "bin", vae=tiny_vae(), safe_serialization=False)
  bin_path = os.path.join(root, "vae", "diffusion_pytorch_model.bin")
  assert os.path.isfile(bin_path) and not os.path.exists(os.path.join(root, "vae", VAE_FILE))
  from_bin = diffusers_import.load_vae(root).params  # torch >= 2.6 is installed here
  _assert_same_params(from_bin, diffusers_import.load_vae(vae_root).params)
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
  with pytest.raises(ValueError, match=f"{bin_path} is a pickle checkpoint.*torch>=2.6"):
    diffusers_import.load_vae(root)


def test_sharded_bf16_variant_and_containment(tmp_path):
  unet = tiny_unet()
  single = write_pipeline(tmp_path / "single", unet=unet)
  sharded = write_pipeline(tmp_path / "sharded", unet=unet.to(torch.bfloat16), variant="fp16",
                           max_shard_size="200KB")
  files = os.listdir(os.path.join(sharded, "unet"))
  index = os.path.join(sharded, "unet", "diffusion_pytorch_model.safetensors.index.fp16.json")
  assert os.path.isfile(index) and sum(f.endswith(".safetensors") for f in files) > 2, files
  _, reference = diffusers_import.load_unet(single)
  with pytest.raises(ValueError, match="No weights"):  # the variant must be asked for
    diffusers_import.load_unet(sharded)
  _, params = diffusers_import.load_unet(sharded, variant="fp16")
  assert all(x.dtype == np.float32 for x in _leaves(params))
  _assert_same_params(params, reference, rtol=1e-2, atol=1e-2)  # bfloat16 rounding
  with open(index) as f:
    data = json.load(f)
  name = sorted(data["weight_map"])[0]
  data["weight_map"][name] = "../../single/unet/diffusion_pytorch_model.safetensors"
  with open(index, "w") as f:
    json.dump(data, f)
  with pytest.raises(ValueError, match="points outside that folder"):
    diffusers_import.load_unet(sharded, variant="fp16")


def test_weight_file_order(tmp_path):
  """safetensors is preferred over .bin; stems are tried in order."""
  folder = tmp_path / "c"
  folder.mkdir()
  for name in ("pytorch_model.bin", "model.safetensors"):
    (folder / name).write_bytes(b"")
  assert diffusers_weights.weight_files(str(folder), ("model", "pytorch_model")) == [
      str(folder / "model.safetensors")]


# Configs of damo-vilab/text-to-video-ms-1.7b (unet/, vae/, text_encoder/ config.json).
MS_UNET = {"_class_name": "UNet3DConditionModel", "act_fn": "silu", "attention_head_dim": 64,
           "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 1024,
           "down_block_types": ["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"],
           "downsample_padding": 1, "in_channels": 4, "layers_per_block": 2,
           "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
           "out_channels": 4, "sample_size": 32,
           "up_block_types": ["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3}
MS_VAE = {"_class_name": "AutoencoderKL", "act_fn": "silu", "in_channels": 3, "out_channels": 3,
          "block_out_channels": [128, 256, 512, 512], "latent_channels": 4, "layers_per_block": 2,
          "down_block_types": ["DownEncoderBlock2D"] * 4, "norm_num_groups": 32,
          "up_block_types": ["UpDecoderBlock2D"] * 4, "sample_size": 512,
          "scaling_factor": 0.18215}
MS_TEXT = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
               num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu",
               layer_norm_eps=1e-05)


def _real_size(component):
  """(torch state-dict shapes of the full-size model built on the meta device, name map, Flax
  parameter shapes, checkpoint-name aliases)."""
  plain = lambda d: {k: v for k, v in d.items() if not k.startswith("_")}
  with torch.device("meta"):
    if component == "unet":
      model = diffusers.UNet3DConditionModel(**plain(MS_UNET))
      backbone = unet3d.UNet3DBackbone(unet3d.UNet3DConfig.from_diffusers(MS_UNET))
      expected = backbone.abstract_params(base.InputSpec(1, 8, 8, 4, 1, 1024))
      name_map, aliases = diffusers_import.unet_name_map(backbone.config), {}
    elif component == "vae":
      model = diffusers.AutoencoderKL(**plain(MS_VAE))
      cfg = sd_vae.VAEConfig.from_diffusers(MS_VAE)
      expected = jax.eval_shape(sd_vae.AutoencoderKL(cfg).init, jax.random.PRNGKey(0),
                                jax.ShapeDtypeStruct((1, 16, 16, 3), np.float32))["params"]
      name_map, aliases = diffusers_import.vae_name_map(cfg), {}
    else:
      model = transformers.CLIPTextModel(transformers.CLIPTextConfig(**MS_TEXT))
      cfg = clip_text.ClipTextConfig.from_hf(MS_TEXT)
      expected = jax.eval_shape(clip_text.ClipTextTransformer(cfg).init, jax.random.PRNGKey(0),
                                jax.ShapeDtypeStruct((1, 1), np.int32))["params"]
      name_map = diffusers_import.text_encoder_name_map(cfg)
      aliases = {n.removeprefix("text_model."): n for n in name_map}
  shapes = {aliases.get(k, k): tuple(v.shape) for k, v in model.state_dict().items()
            if not k.endswith("position_ids")}
  return shapes, name_map, expected


@pytest.mark.parametrize("component, billions", [("unet", 1.411), ("vae", 0.0837),
                                                 ("text_encoder", 0.3404)])
def test_name_maps_cover_the_full_size_modelscope_models(component, billions):
  """Every tensor of the real architectures maps to exactly one Flax parameter of the matching
  shape (checked on PyTorch's meta device: no memory, no weights)."""
  shapes, name_map, expected = _real_size(component)
  flat = {k: v.shape for k, v in flax.traverse_util.flatten_dict(
      flax.linen.meta.unbox(expected)).items()}
  assert set(name_map) == set(shapes)
  assert sorted(t.path for t in name_map.values()) == sorted(flat)
  for name, target in name_map.items():
    perm = diffusers_weights.LAYOUTS[target.layout]
    got = shapes[name] if perm is None else tuple(shapes[name][p] for p in perm)
    assert got == flat[target.path], name
  assert sum(np.prod(s) for s in shapes.values()) / 1e9 == pytest.approx(billions, rel=1e-3)
