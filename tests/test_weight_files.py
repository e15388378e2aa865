"""dreamix_jax.weight_files through the loaders that use it: shard containment, damaged safetensors,
bfloat16 and non-float tensors, pickle loading only on torch >= 2.6; and the project's own
parameter files (train.checkpoints), whose dtype must match the model's.

Everything is a few-element array written here; no model is built.
"""

import json
import os
import struct
import sys
import types

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

from dreamix_jax import weight_files
from dreamix_jax.metrics import clip_weights
from dreamix_jax.metrics import lpips
from dreamix_jax.text import t5_weights
from dreamix_jax.train import checkpoints


def _index(folder, shard_name):
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "model.safetensors.index.json").write_text(
      json.dumps({"weight_map": {"a": shard_name}}))
  return str(folder)


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_index_shards_outside_the_folder_are_refused(tmp_path, how):
  outside = tmp_path / "secret.safetensors"
  safetensors.numpy.save_file({"a": np.ones(2, np.float32)}, str(outside))
  folder = tmp_path / "model"
  folder.mkdir()
  name = {"dotdot": "../secret.safetensors", "absolute": str(outside),
          "symlink": "link.safetensors"}[how]
  if how == "symlink":
    (folder / name).symlink_to(outside)
  _index(folder, name)
  for load in (t5_weights.weight_files, clip_weights.load_safetensors_dir):
    with pytest.raises(ValueError, match="points outside that folder"):
      load(str(folder))
  # A shard in a subfolder stays inside and loads.
  (folder / "shards").mkdir()
  os.replace(outside, folder / "shards" / "one.safetensors")
  _index(folder, "shards/one.safetensors")
  assert t5_weights.weight_files(str(folder)) == ["shards/one.safetensors"]
  np.testing.assert_array_equal(clip_weights.load_safetensors_dir(str(folder))["a"], [1, 1])


def _damaged(path, how):
  safetensors.numpy.save_file({"a": np.arange(6, dtype=np.float32).reshape(2, 3),
                               "b": np.ones(4, np.float16)}, str(path))
  data = path.read_bytes()
  header_len = struct.unpack("<Q", data[:8])[0]
  if how == "truncated":
    data = data[:-5]
  elif how == "empty":
    data = b""
  elif how == "header_length":
    data = struct.pack("<Q", 10 ** 12) + data[8:]
  elif how == "header_json":
    data = data[:8] + b"{" + b" " * (header_len - 1) + data[8 + header_len:]
  elif how == "shape":  # a shape whose bytes do not match the tensor's byte range
    header = data[8:8 + header_len].replace(b"[2,3]", b"[3,3]")
    data = data[:8] + header + data[8 + header_len:]
  path.write_bytes(data)


@pytest.mark.parametrize("how", ["truncated", "empty", "header_length", "header_json", "shape"])
def test_damaged_safetensors_name_the_file(tmp_path, how):
  folder = tmp_path / "clip"
  folder.mkdir()
  path = folder / "model.safetensors"
  _damaged(path, how)
  with pytest.raises(ValueError, match=f"{path} is not a valid safetensors file.*re-download"):
    clip_weights.load_safetensors_dir(str(folder))
  with pytest.raises(checkpoints.CheckpointError, match=f"{path} is not a valid safetensors"):
    checkpoints.load_params(str(path))


def test_bfloat16_and_float16_read_as_float32(tmp_path):
  folder = tmp_path / "clip"
  folder.mkdir()
  values = np.array([1.0, -2.5, 3.140625, 1e-3], np.float32)
  header = {"bf": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]},
            "f16": {"dtype": "F16", "shape": [4], "data_offsets": [8, 16]}}
  blob = json.dumps(header).encode()
  blob += b" " * (-len(blob) % 8)
  data = values.astype(ml_dtypes.bfloat16).tobytes() + values.astype(np.float16).tobytes()
  (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(blob)) + blob + data)
  tensors = clip_weights.load_safetensors_dir(str(folder))
  assert tensors["bf"].dtype == tensors["f16"].dtype == np.float32
  np.testing.assert_array_equal(tensors["bf"], values.astype(ml_dtypes.bfloat16).astype(np.float32))
  np.testing.assert_array_equal(tensors["f16"], values.astype(np.float16).astype(np.float32))


def test_integer_tensor_where_a_float_is_expected_is_named(tmp_path):
  folder = tmp_path / "clip"
  folder.mkdir()
  safetensors.numpy.save_file({"w": np.ones(2, np.float32), "q": np.ones(3, np.int64)},
                              str(folder / "model.safetensors"))
  with pytest.raises(ValueError, match=r"non-float tensors.*q \(I64\)"):
    clip_weights.load_safetensors_dir(str(folder))


class _OldTorch(types.ModuleType):
  """Stands in for torch 2.5, whose weights_only loader is not safe."""
  __version__ = "2.5.1+cpu"

  def load(self, *args, **kwargs):
    raise AssertionError("torch.load must not be called on torch < 2.6")


def test_pickles_need_torch_2_6(tmp_path, monkeypatch):
  path = tmp_path / "heads.pth"
  path.write_bytes(b"not read")
  monkeypatch.setitem(sys.modules, "torch", _OldTorch("torch"))
  with pytest.raises(ValueError, match=r"torch>=2\.6 \(torch 2\.5\.1\+cpu is installed\).*"
                                       "convert_lpips"):
    lpips.load_torch_state_dict(str(path))


def test_damaged_pickle_names_the_file(tmp_path):
  pytest.importorskip("torch")
  path = tmp_path / "heads.pth"
  path.write_bytes(b"PK\x03\x04 this is no checkpoint")
  with pytest.raises(ValueError, match=f"{path} could not be read as a PyTorch state dict"):
    lpips.load_torch_state_dict(str(path))


# The project's own parameter files.

def test_parameter_file_of_another_dtype_is_refused(tmp_path):
  expected = {"dense": {"kernel": np.zeros((2, 3), np.float32), "bias": np.zeros(3, np.float32)}}
  path = str(tmp_path / "base.safetensors")
  stored = {"dense/kernel": np.ones((2, 3), ml_dtypes.bfloat16), "dense/bias": np.ones(3, np.int32)}
  weight_files.save_safetensors(path, stored)
  with pytest.raises(checkpoints.CheckpointError,
                     match=r"wrong dtype \(2\): dense/bias: checkpoint int32 vs model float32; "
                           r"dense/kernel: checkpoint bfloat16 vs model float32"):
    checkpoints.load_params(path, expected)
  checkpoints.save_params(path, expected)
  loaded = checkpoints.load_params(path, expected)
  assert loaded["dense"]["kernel"].dtype == np.float32
  with pytest.raises(checkpoints.CheckpointError, match="wrong dtype"):
    checkpoints.load_params_over(path, {"dense": {"kernel": np.zeros((2, 3), np.float16),
                                                  "bias": np.zeros(3, np.float32)}}, [])
