"""Importing diffusers pipeline folders: the scheduler config, sharded / variant / bfloat16 /
pickle weights, and the ValueErrors for incomplete or mismatched folders."""

import json
import os
import shutil
import sys

import jax
import numpy as np
import pytest
import safetensors.torch
import torch
from diffusers import DDIMScheduler

from dreamix_jax.backbones import diffusers_import
from dreamix_jax.backbones import diffusers_weights
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
