"""Streaming reader of one diffusers / transformers component folder (`unet/`, `vae/`,
`text_encoder/`) into Flax parameters, through an explicit name map.

Files (found and read by `dreamix_jax.weight_files`): `*.safetensors`, single or sharded through
`*.safetensors.index.json` (float32, float16 or bfloat16), optionally a variant
(`diffusion_pytorch_model.fp16.safetensors`); a shard name that leaves the folder is refused. Each
tensor is memory-mapped, converted (layout transpose, cast to the parameter dtype) and placed on its
devices one at a time, so importing the 1.7B U-Net never holds a second copy of it in host memory.
Pickle checkpoints (`*.bin`) are read only through `torch.load(weights_only=True)` with torch >= 2.6
installed; without it they are refused with a ValueError naming the file (no pickle is ever
executed by anything else).

Every name is checked before any tensor is read: one ValueError lists the missing, unexpected and
mis-shaped tensors, with the folder.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import flax.linen
import flax.traverse_util
import jax
import numpy as np

from dreamix_jax import weight_files as weight_io

ShardingSpec = weight_io.ShardingSpec
# Layouts: PyTorch tensor -> Flax leaf (a transpose; None keeps the layout).
LAYOUTS = {
    "copy": None,
    "linear": (1, 0),              # nn.Linear (out, in) -> Dense kernel (in, out)
    "conv2d": (2, 3, 1, 0),        # Conv2d OIHW -> HWIO
    "conv3d": (2, 3, 4, 1, 0),     # Conv3d OIDHW, kernel (3, 1, 1) -> DHWIO
}


@dataclasses.dataclass(frozen=True)
class Target:
  """Where a checkpoint tensor goes: the Flax parameter path and the layout conversion."""

  path: tuple[str, ...]
  layout: str = "copy"


def weight_files(folder: str, stems: tuple[str, ...], variant: str | None = None) -> list[str]:
  """The weight files of a component folder, preferring safetensors: for each stem (e.g.
  'diffusion_pytorch_model', 'model'), its sharded index `{stem}.safetensors.index[.{variant}].json`
  or `{stem}[.{variant}].safetensors`, then the `.bin` equivalents."""
  return weight_io.find(folder, stems, variant)


def load_params(folder: str, name_map: Mapping[str, Target], expected: Mapping, *,
                stems: tuple[str, ...], variant: str | None = None,
                aliases: Mapping[str, str] | None = None, ignored: tuple[str, ...] = (),
                param_dtype=np.float32, sharding: ShardingSpec = None) -> dict:
  """Reads the tensors of `name_map` from `folder` into a Flax parameter tree.

  Args:
    folder: the component folder (holding the weight files).
    name_map: checkpoint tensor name -> `Target` (every tensor the model needs).
    expected: the Flax parameters' shapes, a pytree of arrays or `ShapeDtypeStruct`s (boxed with
      logical names or not).
    stems: weight file stems to look for (see `weight_files`); variant: e.g. 'fp16'.
    aliases: older checkpoint names -> current names (e.g. the VAE's `query` -> `to_q`).
    ignored: checkpoint names to skip (buffers such as CLIP's `position_ids`).
    param_dtype: dtype of the returned parameters.
    sharding: None (default device), one Sharding, a callable from param path to Sharding, or a
      pytree of Shardings shaped like the params.

  Returns:
    The nested parameter dict, every leaf a `jax.Array` of `expected`'s shape.
  """
  aliases = dict(aliases or {})
  weights = weight_io.Weights(weight_files(folder, stems, variant))
  infos = weights.infos
  by_name = {aliases.get(n, n): n for n in infos if n not in ignored}
  missing = set(name_map) - set(by_name)
  unexpected = set(by_name) - set(name_map)
  flat_expected = {k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(
      flax.linen.meta.unbox(expected)).items()}
  misshaped = []
  for name, target in name_map.items():
    if name not in by_name:
      continue
    info = infos[by_name[name]]
    want = flat_expected[target.path]
    perm = LAYOUTS[target.layout]
    got = info.shape if perm is None else tuple(info.shape[p] for p in perm)
    if got != want:
      inverse = want if perm is None else tuple(want[perm.index(i)] for i in range(len(want)))
      misshaped.append(f"{by_name[name]} {info.shape} (expected {inverse})")
  bad_dtype = weights.non_float(by_name[n] for n in name_map if n in by_name)
  problems = []
  if missing:
    problems.append(f"missing tensors: {weight_io.short_list(missing)}")
  if unexpected:
    problems.append(f"unexpected tensors: {weight_io.short_list(by_name[n] for n in unexpected)}")
  if misshaped:
    problems.append(f"mis-shaped tensors: {weight_io.short_list(misshaped)}")
  if bad_dtype:
    problems.append(f"unsupported dtypes: {weight_io.short_list(bad_dtype)} (supported: "
                    f"{', '.join(weight_io.FLOAT_DTYPES)})")
  if problems:
    raise ValueError(f"The weights in {folder} do not match its config.json: "
                     f"{'; '.join(problems)}. Is the folder complete and its config.json from the "
                     "same checkpoint?")

  place = weight_io.placer(sharding)
  params = {}
  for name, target in name_map.items():
    array = weights.read(by_name[name], param_dtype, LAYOUTS[target.layout])
    params[target.path] = jax.device_put(array, place(target.path))
  return flax.traverse_util.unflatten_dict(params)
