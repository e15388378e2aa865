"""Import T5 v1.1 encoder weights from a local Hugging Face directory into `T5Encoder` params.

Reads `config.json` and `model.safetensors`, or shards listed in `model.safetensors.index.json`
(float32, bfloat16 or float16), streaming: every tensor is read, converted and placed on its devices
one at a time, so host memory never holds a second copy of the model (files are memory-mapped and
closed after each tensor). `pytorch_model.bin` (and its sharded index) is read only through
`torch.load(weights_only=True)` when torch is installed; no pickle is ever executed otherwise.

The name map is explicit: each Hugging Face tensor name maps to one Flax parameter path and a
layout (PyTorch `nn.Linear` weights are (out, in) and are transposed to Flax (in, out) kernels).
Decoder and `lm_head` tensors of full encoder-decoder checkpoints are ignored; the token embedding
may be named `shared.weight` or `encoder.embed_tokens.weight` (tied in transformers). Any missing,
unexpected or mis-shaped tensor is an error that names it, raised before any tensor is read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Callable, Iterator, Union

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import safetensors

from dreamix_jax.text import t5

# Param path (tuple of names) -> Sharding, a single Sharding for all, or a pytree of Shardings.
ShardingSpec = Union[jax.sharding.Sharding, Callable[[tuple[str, ...]], jax.sharding.Sharding],
                     dict, None]

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
EMBEDDING_NAMES = ("shared.weight", "encoder.embed_tokens.weight")
IGNORED_PREFIXES = ("decoder.", "lm_head.")
_SUPPORTED_DTYPES = ("F32", "BF16", "F16")  # safetensors dtype names


def _require_dir(t5_dir: str) -> None:
  if not os.path.isdir(t5_dir):
    raise FileNotFoundError(f"T5 directory {t5_dir!r} does not exist; pass the local directory "
                            "holding config.json and the *.safetensors weights of a T5 v1.1 model.")


def load_t5_config(t5_dir: str, *, dtype: str = "float32",
                   param_dtype: str = "float32") -> t5.T5Config:
  """The `T5Config` described by `t5_dir/config.json` (a Hugging Face T5 v1.1 config)."""
  _require_dir(t5_dir)
  path = os.path.join(t5_dir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: a Hugging Face T5 directory needs its config.json.")
  with open(path) as f:
    hf = json.load(f)
  if hf.get("model_type", "t5") not in ("t5", "umt5"):
    raise ValueError(f"{path} describes a {hf.get('model_type')!r} model, not T5.")
  projection = hf.get("feed_forward_proj", "relu")
  if projection not in ("gated-gelu", "gated-gelu_new"):
    raise ValueError(f"{path} has feed_forward_proj={projection!r}; only T5 v1.1 encoders with "
                     "'gated-gelu' feed-forward layers are supported (e.g. google/t5-v1_1-xxl).")
  return t5.T5Config(
      vocab_size=hf["vocab_size"], d_model=hf["d_model"], d_kv=hf["d_kv"], d_ff=hf["d_ff"],
      num_layers=hf["num_layers"], num_heads=hf["num_heads"],
      relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
      relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
      layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-6), dtype=dtype, param_dtype=param_dtype)


@dataclasses.dataclass(frozen=True)
class _Target:
  path: tuple[str, ...]  # Flax param path
  transpose: bool        # nn.Linear (out, in) -> Flax kernel (in, out)


def hf_name_map(config: t5.T5Config) -> dict[str, _Target]:
  """Hugging Face tensor name -> Flax param path and layout, for every encoder tensor.

  The embedding is listed under `shared.weight`; `encoder.embed_tokens.weight` is accepted in its
  place by `load_t5_params`.
  """
  names = {
      "shared.weight": _Target(("token_embedding", "embedding"), False),
      "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight":
          _Target(("relative_attention_bias", "embedding"), False),
      "encoder.final_layer_norm.weight": _Target(("final_norm", "scale"), False),
  }
  for i in range(config.num_layers):
    hf, ours = f"encoder.block.{i}.layer", f"block_{i}"
    names[f"{hf}.0.layer_norm.weight"] = _Target((ours, "attention_norm", "scale"), False)
    for proj in ("q", "k", "v", "o"):
      names[f"{hf}.0.SelfAttention.{proj}.weight"] = _Target((ours, "attention", proj, "kernel"),
                                                              True)
    names[f"{hf}.1.layer_norm.weight"] = _Target((ours, "mlp_norm", "scale"), False)
    for proj in ("wi_0", "wi_1", "wo"):
      names[f"{hf}.1.DenseReluDense.{proj}.weight"] = _Target((ours, "mlp", proj, "kernel"), True)
  return names


def weight_files(t5_dir: str) -> list[str]:
  """Names of the weight files of `t5_dir` (sharded or not), checking every one exists."""
  _require_dir(t5_dir)
  for index_name in (SAFETENSORS_INDEX, TORCH_INDEX):
    index_path = os.path.join(t5_dir, index_name)
    if os.path.isfile(index_path):
      with open(index_path) as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
      for name in files:
        if not os.path.isfile(os.path.join(t5_dir, name)):
          raise FileNotFoundError(f"Shard {name!r} listed in {index_path} is missing from "
                                  f"{t5_dir}; download the complete checkpoint.")
      return files
  for name in (SAFETENSORS_FILE, TORCH_FILE):
    if os.path.isfile(os.path.join(t5_dir, name)):
      return [name]
  raise FileNotFoundError(f"No weights in {t5_dir}: expected {SAFETENSORS_FILE}, "
                          f"{SAFETENSORS_INDEX} with its shards, or {TORCH_FILE}.")


def weights_fingerprint(t5_dir: str) -> str:
  """sha256 identifying a checkpoint: config and index bytes, weight file names and sizes.

  Tokenizer files are hashed too, since they change the embedding of a prompt.
  """
  digest = hashlib.sha256()
  files = weight_files(t5_dir)
  small = [CONFIG_FILE, SAFETENSORS_INDEX, TORCH_INDEX, "tokenizer.json", "tokenizer_config.json",
           "special_tokens_map.json", "spiece.model"]
  for name in small:
    path = os.path.join(t5_dir, name)
    if os.path.isfile(path):
      with open(path, "rb") as f:
        digest.update(f"{name}\0".encode() + hashlib.sha256(f.read()).digest())
  for name in files:
    digest.update(f"{name}\0{os.path.getsize(os.path.join(t5_dir, name))}\0".encode())
  return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class _TensorInfo:
  file: str
  shape: tuple[int, ...]
  dtype: str


def _safetensors_headers(path: str) -> Iterator[tuple[str, _TensorInfo]]:
  with safetensors.safe_open(path, framework="numpy") as f:
    for name in f.keys():
      tensor = f.get_slice(name)
      yield name, _TensorInfo(path, tuple(tensor.get_shape()), tensor.get_dtype())


def _read_safetensor(info: _TensorInfo, name: str) -> np.ndarray:
  # Opening per tensor drops the memory map of what was read before, keeping host RSS at one tensor.
  with safetensors.safe_open(info.file, framework="numpy") as f:
    return f.get_tensor(name)


def _torch_state_dict(path: str) -> dict:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"{path} is a PyTorch checkpoint and torch is not installed; install torch "
                      "or convert the checkpoint to safetensors.") from e
  return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def _torch_to_numpy(tensor) -> np.ndarray:
  import torch  # pylint: disable=g-import-not-at-top
  if tensor.dtype == torch.bfloat16:
    return tensor.view(torch.int16).numpy().view(jnp.bfloat16)
  return tensor.numpy()


def _select(names: list[str], config: t5.T5Config) -> dict[str, tuple[str, _Target]]:
  """Checkpoint name -> (name map key, target) for the encoder tensors; errors on anything else."""
  name_map = hf_name_map(config)
  present = set(names)
  embedding = next((n for n in EMBEDDING_NAMES if n in present), None)
  selected, unexpected = {}, []
  for name in names:
    if name.startswith(IGNORED_PREFIXES) or (name in EMBEDDING_NAMES and name != embedding):
      continue
    key = "shared.weight" if name == embedding else name
    if key in name_map:
      selected[name] = (key, name_map[key])
    else:
      unexpected.append(name)
  if unexpected:
    raise ValueError(f"Unexpected tensors for a {config.num_layers}-layer T5 v1.1 encoder: "
                     f"{sorted(unexpected)}. Is config.json from the same checkpoint?")
  missing = sorted(set(name_map) - {key for key, _ in selected.values()})
  if missing:
    if "shared.weight" in missing:
      missing[missing.index("shared.weight")] = " or ".join(EMBEDDING_NAMES)
    raise ValueError(f"Missing tensors for a {config.num_layers}-layer T5 v1.1 encoder: {missing}.")
  return selected


def _sharding_fn(sharding: ShardingSpec) -> Callable[[tuple[str, ...]], Any]:
  if sharding is None or isinstance(sharding, jax.sharding.Sharding):
    return lambda path: sharding
  if callable(sharding):
    return sharding
  flat = flax.traverse_util.flatten_dict(sharding)
  return lambda path: flat[path]


def load_t5_params(t5_dir: str, config: t5.T5Config | None = None, *,
                   sharding: ShardingSpec = None) -> dict:
  """Reads the encoder params of `t5_dir`, one tensor at a time.

  Args:
    t5_dir: local Hugging Face directory (config.json + weights).
    config: the encoder config; read from config.json when None. Params are converted to its
      `param_dtype`.
    sharding: where to put each param: None (default device), one `jax.sharding.Sharding` for all,
      a callable from param path (e.g. `("block_0", "mlp", "wo", "kernel")`) to a Sharding, or a
      pytree of Shardings with the params' structure.

  Returns:
    Params (plain `jax.Array`s) with exactly the structure and shapes of `t5.param_shapes(config)`.
  """
  config = config or load_t5_config(t5_dir)
  files = weight_files(t5_dir)
  torch_dicts = {}
  infos: dict[str, _TensorInfo] = {}
  for file in files:
    path = os.path.join(t5_dir, file)
    if file.endswith(".safetensors"):
      infos.update(_safetensors_headers(path))
    else:
      torch_dicts[path] = _torch_state_dict(path)
      for name, tensor in torch_dicts[path].items():
        infos[name] = _TensorInfo(path, tuple(tensor.shape), str(tensor.dtype))

  selected = _select(list(infos), config)
  expected = flax.traverse_util.flatten_dict(t5.param_shapes(config))
  for name, (_, target) in selected.items():
    want = expected[target.path].shape
    want = want[::-1] if target.transpose else want
    if infos[name].shape != want:
      raise ValueError(f"Tensor {name!r} in {infos[name].file} has shape {infos[name].shape}; "
                       f"config.json implies {want}.")
    if infos[name].file not in torch_dicts and infos[name].dtype not in _SUPPORTED_DTYPES:
      raise ValueError(f"Tensor {name!r} in {infos[name].file} has dtype {infos[name].dtype}; "
                       f"supported: {sorted(_SUPPORTED_DTYPES)}.")

  place = _sharding_fn(sharding)
  param_dtype = jnp.dtype(config.param_dtype)
  params = {}
  for name, (_, target) in selected.items():
    info = infos[name]
    if info.file in torch_dicts:
      array = _torch_to_numpy(torch_dicts[info.file][name])
    else:
      array = _read_safetensor(info, name)
    if target.transpose:
      array = array.T
    array = np.ascontiguousarray(array, dtype=param_dtype)
    params[target.path] = jax.device_put(array, place(target.path))
  return flax.traverse_util.unflatten_dict(params)

