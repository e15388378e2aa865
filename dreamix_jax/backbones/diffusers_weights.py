"""Streaming reader of one diffusers / transformers component folder (`unet/`, `vae/`,
`text_encoder/`) into Flax parameters, through an explicit name map.

Files: `*.safetensors`, single or sharded through `*.safetensors.index.json` (float32, float16 or
bfloat16), optionally a variant (`diffusion_pytorch_model.fp16.safetensors`); a shard name that
leaves the folder is refused. Each tensor is memory-mapped, converted (layout transpose, cast to
the parameter dtype) and placed on its devices one at a time, so importing the 1.7B U-Net never
holds a second copy of it in host memory. Pickle checkpoints (`*.bin`) are read only through
`torch.load(weights_only=True)` with torch >= 2.6 installed; without it they are refused with a
ValueError naming the file (no pickle is ever executed by anything else).

Every name is checked before any tensor is read: one ValueError lists the missing, unexpected and
mis-shaped tensors, with the folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable, Mapping, Union

import flax.linen
import flax.traverse_util
import jax
import ml_dtypes
import numpy as np

# Param path -> Sharding, one Sharding for all, or a pytree of Shardings shaped like the params.
ShardingSpec = Union[jax.sharding.Sharding, Callable[[tuple[str, ...]], Any], dict, None]
# Layouts: PyTorch tensor -> Flax leaf (a transpose; None keeps the layout).
LAYOUTS = {
    "copy": None,
    "linear": (1, 0),              # nn.Linear (out, in) -> Dense kernel (in, out)
    "conv2d": (2, 3, 1, 0),        # Conv2d OIHW -> HWIO
    "conv3d": (2, 3, 4, 1, 0),     # Conv3d OIDHW, kernel (3, 1, 1) -> DHWIO
}
_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
                       "F64": np.float64}
_MIN_TORCH = (2, 6)
_LIST_LIMIT = 12


@dataclasses.dataclass(frozen=True)
class Target:
  """Where a checkpoint tensor goes: the Flax parameter path and the layout conversion."""

  path: tuple[str, ...]
  layout: str = "copy"


@dataclasses.dataclass(frozen=True)
class _Info:
  file: str
  shape: tuple[int, ...]
  dtype: str
  offsets: tuple[int, int] | None = None  # safetensors byte range (after the header)
  data_start: int = 0


def _fail(message: str):
  raise ValueError(message)


def _short(names) -> str:
  names = sorted(names)
  more = f" … and {len(names) - _LIST_LIMIT} more" if len(names) > _LIST_LIMIT else ""
  return ", ".join(names[:_LIST_LIMIT]) + more


def _inside(folder: str, name: str) -> str:
  """Absolute path of `name` within `folder`; a ValueError if it resolves outside."""
  root = os.path.realpath(folder)
  path = os.path.realpath(os.path.join(root, name))
  if os.path.isabs(name) or os.path.commonpath([root, path]) != root:
    _fail(f"Weight shard {name!r} listed in {folder} points outside that folder; refusing to read "
          "it (re-download the checkpoint).")
  return path


def weight_files(folder: str, stems: tuple[str, ...], variant: str | None = None) -> list[str]:
  """The weight files of a component folder, preferring safetensors: for each stem (e.g.
  'diffusion_pytorch_model', 'model'), `{stem}[.{variant}].safetensors`, its sharded index
  `{stem}.safetensors.index[.{variant}].json`, then the `.bin` equivalents."""
  if not os.path.isdir(folder):
    _fail(f"Component folder {folder} does not exist; pass a complete diffusers pipeline folder.")
  v = f".{variant}" if variant else ""
  for ext in ("safetensors", "bin"):
    for stem in stems:
      single = os.path.join(folder, f"{stem}{v}.{ext}")
      index = os.path.join(folder, f"{stem}.{ext}.index{v}.json")
      if os.path.isfile(index):
        with open(index) as f:
          weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict):
          _fail(f"{index} has no weight_map; the checkpoint's index file is damaged.")
        names = sorted(set(weight_map.values()))
        paths = [_inside(folder, n) for n in names]
        missing = [n for n, p in zip(names, paths) if not os.path.isfile(p)]
        if missing:
          _fail(f"Shards {missing} listed in {index} are missing; download the complete "
                "checkpoint.")
        return paths
      if os.path.isfile(single):
        return [single]
  want = " or ".join(f"{s}{v}.safetensors" for s in stems)
  _fail(f"No weights in {folder}: expected {want} (or a sharded *.index.json, or .bin).")


def _safetensors_infos(path: str) -> dict[str, _Info]:
  with open(path, "rb") as f:
    header_len = int.from_bytes(f.read(8), "little")
    if header_len <= 0 or header_len > 100_000_000:
      _fail(f"{path} is not a safetensors file (bad header length).")
    header = json.loads(f.read(header_len))
  infos = {}
  for name, meta in header.items():
    if name == "__metadata__":
      continue
    infos[name] = _Info(path, tuple(meta["shape"]), meta["dtype"], tuple(meta["data_offsets"]),
                        8 + header_len)
  return infos


def _read_safetensor(info: _Info) -> np.ndarray:
  """One tensor, memory-mapped (the map is dropped with the returned array's last reference)."""
  dtype = np.dtype(_SAFETENSORS_DTYPES[info.dtype])
  begin, end = info.offsets
  if end - begin != math.prod(info.shape) * dtype.itemsize:
    _fail(f"{info.file}: a tensor's byte range does not match its shape {info.shape}; the file is "
          "corrupt.")
  raw = np.memmap(info.file, np.uint8, "r", offset=info.data_start + begin, shape=(end - begin,))
  return raw.view(dtype).reshape(info.shape)


def _torch_state_dict(path: str) -> dict:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    torch = None
  version = tuple(int(p) for p in getattr(torch, "__version__", "0.0").split("+")[0].split(".")[:2])
  if torch is None or version < _MIN_TORCH:
    _fail(f"{path} is a pickle checkpoint, read only through torch.load(weights_only=True), which "
          f"needs torch>=2.6: install it (pip install 'torch>=2.6') or convert the file to "
          "safetensors.")
  return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def _torch_to_numpy(tensor) -> np.ndarray:
  import torch  # pylint: disable=g-import-not-at-top
  if tensor.dtype == torch.bfloat16:
    return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return tensor.numpy()


def _placer(sharding: ShardingSpec) -> Callable[[tuple[str, ...]], Any]:
  if sharding is None or isinstance(sharding, jax.sharding.Sharding):
    return lambda path: sharding
  if callable(sharding):
    return sharding
  flat = flax.traverse_util.flatten_dict(sharding)
  return lambda path: flat[path]


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
  files = weight_files(folder, stems, variant)
  torch_dicts, infos = {}, {}
  for path in files:
    if path.endswith(".safetensors"):
      infos.update(_safetensors_infos(path))
    else:
      torch_dicts[path] = _torch_state_dict(path)
      infos.update({n: _Info(path, tuple(t.shape), str(t.dtype))
                    for n, t in torch_dicts[path].items()})
  by_name = {aliases.get(n, n): n for n in infos if n not in ignored}
  missing = set(name_map) - set(by_name)
  unexpected = set(by_name) - set(name_map)
  flat_expected = {k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(
      flax.linen.meta.unbox(expected)).items()}
  misshaped, bad_dtype = [], []
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
    if info.offsets is not None and info.dtype not in _SAFETENSORS_DTYPES:
      bad_dtype.append(f"{by_name[name]} ({info.dtype})")
  problems = []
  if missing:
    problems.append(f"missing tensors: {_short(missing)}")
  if unexpected:
    problems.append(f"unexpected tensors: {_short(by_name[n] for n in unexpected)}")
  if misshaped:
    problems.append(f"mis-shaped tensors: {_short(misshaped)}")
  if bad_dtype:
    problems.append(f"unsupported dtypes: {_short(bad_dtype)} (supported: F32, F16, BF16)")
  if problems:
    _fail(f"The weights in {folder} do not match its config.json: {'; '.join(problems)}. Is the "
          "folder complete and its config.json from the same checkpoint?")

  place = _placer(sharding)
  params = {}
  for name, target in name_map.items():
    info = infos[by_name[name]]
    if info.file in torch_dicts:
      array = _torch_to_numpy(torch_dicts[info.file][by_name[name]])
    else:
      array = _read_safetensor(info)
    perm = LAYOUTS[target.layout]
    if perm is not None:
      array = array.transpose(perm)
    # A C-ordered copy: never hand JAX a view of the memory map (it could alias it on CPU).
    params[target.path] = jax.device_put(np.array(array, dtype=param_dtype, order="C", copy=True),
                                         place(target.path))
    del array
  return flax.traverse_util.unflatten_dict(params)
