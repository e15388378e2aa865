"""Import T5 v1.1 encoder weights from a local Hugging Face directory into `T5Encoder` params.

Reads `config.json` and `model.safetensors`, or shards listed in `model.safetensors.index.json`
(float32, bfloat16 or float16), streaming through `dreamix_jax.weight_files`: every tensor is read,
converted and placed on its devices one at a time, so host memory never holds a second copy of the
model. `pytorch_model.bin` (and its sharded index) is read only through
`torch.load(weights_only=True)` with torch >= 2.6; no pickle is ever executed otherwise. A shard
named outside the folder, a truncated or corrupt file, or a non-float tensor is a ValueError naming
it.

The name map is explicit: each Hugging Face tensor name maps to one Flax parameter path and a
layout (PyTorch `nn.Linear` weights are (out, in) and are transposed to Flax (in, out) kernels).
Decoder and `lm_head` tensors of full encoder-decoder checkpoints are ignored; the token embedding
may be named `shared.weight` or `encoder.embed_tokens.weight` (tied in transformers). Any missing,
unexpected or mis-shaped tensor is an error that names it, raised before any tensor is read.
"""

from __future__ import annotations

import dataclasses
import json
import os

import flax.traverse_util
import jax
import jax.numpy as jnp

from dreamix_jax import weight_files as weight_io
from dreamix_jax.text import t5

ShardingSpec = weight_io.ShardingSpec

CONFIG_FILE = "config.json"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_INDEX = "pytorch_model.bin.index.json"
EMBEDDING_NAMES = ("shared.weight", "encoder.embed_tokens.weight")
IGNORED_PREFIXES = ("decoder.", "lm_head.")


def _require_dir(t5_dir: str) -> None:
  if not os.path.isdir(t5_dir):
    raise weight_io.MissingWeightsError(
        f"T5 directory {t5_dir!r} does not exist; pass the local directory holding config.json "
        "and the *.safetensors weights of a T5 v1.1 model.")


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
  """Names (relative to `t5_dir`) of its weight files, sharded or not, checking every one exists
  and stays inside the folder."""
  _require_dir(t5_dir)
  return [os.path.relpath(path, t5_dir)
          for path in weight_io.find(t5_dir, ("model", "pytorch_model"))]


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
  weights = weight_io.Weights([os.path.join(t5_dir, f) for f in weight_files(t5_dir)])
  infos = weights.infos
  selected = _select(list(infos), config)
  expected = flax.traverse_util.flatten_dict(t5.param_shapes(config))
  for name, (_, target) in selected.items():
    want = expected[target.path].shape
    want = want[::-1] if target.transpose else want
    if infos[name].shape != want:
      raise ValueError(f"Tensor {name!r} in {infos[name].file} has shape {infos[name].shape}; "
                       f"config.json implies {want}.")
  weights.check_float(selected, t5_dir)

  place = weight_io.placer(sharding)
  param_dtype = jnp.dtype(config.param_dtype)
  params = {}
  for name, (_, target) in selected.items():
    array = weights.read(name, param_dtype, (1, 0) if target.transpose else None)
    params[target.path] = jax.device_put(array, place(target.path))
  return flax.traverse_util.unflatten_dict(params)
