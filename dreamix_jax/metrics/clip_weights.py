"""Hugging Face CLIP weights into `metrics.clip_model.ClipModel` variables.

A local Hugging Face CLIP directory (`config.json`, `model.safetensors` or sharded safetensors with
an index, read by `dreamix_jax.weight_files`) loads through an explicit name map: each Hugging Face
tensor maps to one Flax parameter path and a transform (PyTorch linear weights (out, in) become
Flax kernels (in, out), convolutions (O, I, kh, kw) become (kh, kw, I, O)). Any missing, unexpected or mis-shaped tensor is an error that
names it. transformers is needed only to read `config.json`.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dreamix_jax import weight_files as weight_io
from dreamix_jax.metrics import clip_model

# Buffers that older Hugging Face checkpoints saved; they carry no learned values.
_IGNORED_TENSORS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")

# How a Hugging Face tensor becomes a Flax leaf of the same values.
_TRANSFORMS = {
    "linear": lambda w: w.T,  # (out, in) -> (in, out)
    "conv": lambda w: w.transpose(2, 3, 1, 0),  # (O, I, kh, kw) -> (kh, kw, I, O)
    "copy": lambda w: w,
}
FlaxPath = tuple[str, ...]


def _dense(hf: str, fx: FlaxPath, bias: bool = True) -> dict[str, tuple[FlaxPath, str]]:
  specs = {f"{hf}.weight": (fx + ("kernel",), "linear")}
  if bias:
    specs[f"{hf}.bias"] = (fx + ("bias",), "copy")
  return specs


def _norm(hf: str, fx: FlaxPath) -> dict[str, tuple[FlaxPath, str]]:
  return {f"{hf}.weight": (fx + ("scale",), "copy"), f"{hf}.bias": (fx + ("bias",), "copy")}


def tower_specs(prefix: str,
                 tower: clip_model.TowerConfig) -> dict[str, tuple[FlaxPath, str]]:
  specs = {}
  for i in range(tower.num_layers):
    hf, fx = f"{prefix}.encoder.layers.{i}", (prefix, "encoder", f"layers_{i}")
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
      specs.update(_dense(f"{hf}.self_attn.{proj}", fx + ("self_attn", proj)))
    for fc in ("fc1", "fc2"):
      specs.update(_dense(f"{hf}.mlp.{fc}", fx + ("mlp", fc)))
    for norm in ("layer_norm1", "layer_norm2"):
      specs.update(_norm(f"{hf}.{norm}", fx + (norm,)))
  return specs


def hf_name_map(config: clip_model.ClipConfig) -> dict[str, tuple[FlaxPath, str]]:
  """Hugging Face tensor name -> (Flax parameter path, transform name) for every parameter."""
  v, t = "vision_model", "text_model"
  specs = {
      "logit_scale": (("logit_scale",), "copy"),
      f"{v}.embeddings.class_embedding": ((v, "class_embedding"), "copy"),
      f"{v}.embeddings.patch_embedding.weight": ((v, "patch_embedding", "kernel"), "conv"),
      f"{v}.embeddings.position_embedding.weight": ((v, "position_embedding", "embedding"),
                                                    "copy"),
      f"{t}.embeddings.token_embedding.weight": ((t, "token_embedding", "embedding"), "copy"),
      f"{t}.embeddings.position_embedding.weight": ((t, "position_embedding", "embedding"),
                                                    "copy"),
  }
  specs.update(_dense("visual_projection", ("visual_projection",), bias=False))
  specs.update(_dense("text_projection", ("text_projection",), bias=False))
  specs.update(_norm(f"{v}.pre_layrnorm", (v, "pre_layrnorm")))
  specs.update(_norm(f"{v}.post_layernorm", (v, "post_layernorm")))
  specs.update(_norm(f"{t}.final_layer_norm", (t, "final_layer_norm")))
  specs.update(tower_specs(v, config.vision))
  specs.update(tower_specs(t, config.text))
  return specs


def params_from_hf(tensors: Mapping[str, np.ndarray],
                   config: clip_model.ClipConfig) -> dict[str, Any]:
  """Converts Hugging Face `CLIPModel` tensors to Flax variables of `clip_model.ClipModel(config)`.

  Args:
    tensors: Hugging Face tensor name -> array (any float dtype; cast to float32).
    config: the model's architecture.

  Returns:
    {"params": nested dict} for `clip_model.ClipModel(config).apply`.

  Raises:
    ValueError: naming every missing or unexpected tensor, or the first one whose shape differs
      from what `config` requires.
  """
  name_map = hf_name_map(config)
  missing = sorted(set(name_map) - set(tensors))
  unexpected = sorted(set(tensors) - set(name_map) - set(_IGNORED_TENSORS))
  if missing or unexpected:
    raise ValueError(f"CLIP checkpoint does not match its config: missing tensors {missing}, "
                     f"unexpected tensors {unexpected}.")
  expected = jax.eval_shape(
      clip_model.ClipModel(config).init, jax.random.key(0),
      jax.ShapeDtypeStruct((1, config.image_size, config.image_size, config.num_channels),
                           jnp.float32), jax.ShapeDtypeStruct((1, 1), jnp.int32))["params"]
  params: dict[str, Any] = {}
  for hf_name, (path, transform) in name_map.items():
    value = _TRANSFORMS[transform](np.asarray(tensors[hf_name], dtype=np.float32))
    want = _lookup(expected, path).shape
    if value.shape != want:
      raise ValueError(f"CLIP tensor {hf_name} has shape {tuple(tensors[hf_name].shape)}; the "
                       f"config requires {want} in Flax layout (got {value.shape}).")
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = jnp.asarray(value)
  return {"params": params}


def _lookup(tree: Mapping[str, Any], path: Sequence[str]) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def load_safetensors_dir(model_dir: str) -> dict[str, np.ndarray]:
  """Reads `model.safetensors`, or the shards named by `model.safetensors.index.json` (each kept
  inside `model_dir`); every tensor must be a float (F32, F16, BF16 or F64), returned as float32."""
  files = weight_io.find(model_dir, ("model",))
  if not all(f.endswith(".safetensors") for f in files):
    raise weight_io.MissingWeightsError(
        f"No model.safetensors or model.safetensors.index.json in {model_dir}; save the model with "
        "`save_pretrained(..., safe_serialization=True)`.")
  weights = weight_io.Weights(files)
  weights.check_float(set(weights.infos) - set(_IGNORED_TENSORS), model_dir)
  return {name: weights.read(name, None if name in _IGNORED_TENSORS else np.float32)
          for name in weights.infos}


def load_clip(model_dir: str) -> tuple[clip_model.ClipModel, dict[str, Any]]:
  """Loads a local Hugging Face CLIP directory. Returns (module, variables)."""
  import transformers  # pylint: disable=g-import-not-at-top  (heavy; only needed to load)

  if not os.path.isfile(os.path.join(model_dir, "config.json")):
    raise FileNotFoundError(f"{model_dir} is not a Hugging Face CLIP directory: no config.json.")
  config = clip_model.ClipConfig.from_hf(transformers.CLIPConfig.from_pretrained(model_dir))
  return clip_model.ClipModel(config), params_from_hf(load_safetensors_dir(model_dir), config)
