"""The one reader of weight files written by other frameworks (Hugging Face, diffusers, torchvision)
and of the project's own safetensors files.

Why one module: every loader (T5, the diffusers U-Net/VAE/text encoder, CLIP, LPIPS) needs the same
four guarantees, and each copy of them drifted:
- A sharded checkpoint's `*.safetensors.index.json` / `*.bin.index.json` names its shards; a name
  that is absolute, holds `..` or resolves (through symlinks) outside the weights folder is refused,
  so a crafted index cannot make us read other files.
- A safetensors file is checked completely from its header before any tensor is read (header
  length, JSON, every tensor's byte range inside the file and matching its shape and dtype), so a
  truncated or corrupt download is a ValueError naming the file, never a crash or garbage values.
  Tensors are then memory-mapped and copied one at a time (host memory holds one tensor, not a
  second copy of the model); bfloat16 is read through `ml_dtypes` (NumPy has no bfloat16).
- Pickle checkpoints (`*.bin`, `*.pth`) are read only through `torch.load(weights_only=True)`, and
  only with torch >= 2.6 (older versions can still execute code from a crafted file); torch is
  optional, and without it such a file is a clear error.
- Loaded parameters are placed on devices by one rule (`placer`): none, one sharding for all, a
  function of the parameter path, or a pytree of shardings.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

import flax.traverse_util
import jax
import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

# Param path (tuple of names) -> Sharding, one Sharding for all, or a pytree of Shardings.
ShardingSpec = Union[jax.sharding.Sharding, Callable[[tuple[str, ...]], Any], dict, None]

# safetensors dtype names -> NumPy dtypes.
SAFETENSORS_DTYPES = {
    "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "U16": np.uint16, "I16": np.int16,
    "U32": np.uint32, "I32": np.int32, "U64": np.uint64, "I64": np.int64,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
    "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F32": np.float32, "F64": np.float64,
}
# Dtypes a floating-point parameter may be stored in.
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
MIN_TORCH = (2, 6)
_MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
_LIST_LIMIT = 12


class MissingWeightsError(FileNotFoundError, ValueError):
  """Weights that are not where they should be (a folder, a file or a shard is missing): both a
  FileNotFoundError and a ValueError, as loaders raised either before this module unified them."""


class TorchUnavailableError(ImportError, ValueError):
  """A pickle checkpoint that cannot be read safely: torch is absent or older than 2.6."""


def short_list(names: Iterable[str]) -> str:
  """The first `_LIST_LIMIT` of `names`, sorted and comma-separated, with a count of the rest."""
  names = sorted(names)
  more = f" … and {len(names) - _LIST_LIMIT} more" if len(names) > _LIST_LIMIT else ""
  return ", ".join(names[:_LIST_LIMIT]) + more


# --------------------------------------------------------------------------------------------------
# Finding the files.

def inside(folder: str, name: str, listed_in: str) -> str:
  """`folder/name`, after checking that `name` (a shard listed in the index file `listed_in`)
  stays inside `folder`: not absolute, no `..`, and its real path (symlinks resolved) within the
  folder's real path; a ValueError otherwise."""
  root = os.path.realpath(folder)
  path = os.path.join(folder, name)
  real = os.path.realpath(path)
  if (os.path.isabs(name) or ".." in name.replace("\\", "/").split("/")
      or os.path.commonpath([root, real]) != root):
    raise ValueError(f"Weight shard {name!r} listed in {listed_in} points outside that folder; "
                     "refusing to read it (re-download the checkpoint).")
  return path


def index_shards(index: str) -> list[str]:
  """Paths of the shards named by a `*.index.json` (`weight_map`: tensor -> shard file), each
  checked by `inside` and for existence."""
  folder = os.path.dirname(index)
  try:
    with open(index) as f:
      weight_map = json.load(f).get("weight_map")
  except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
    raise ValueError(f"{index} is not a valid JSON index ({e}); re-download the checkpoint.") from e
  if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
    raise ValueError(f"{index} has no weight_map of shard names; the checkpoint's index file is "
                     "damaged: re-download it.")
  names = sorted(set(weight_map.values()))
  paths = [inside(folder, name, index) for name in names]
  missing = [n for n, p in zip(names, paths) if not os.path.isfile(p)]
  if missing:
    raise MissingWeightsError(f"Shards {missing} listed in {index} are missing from {folder}; "
                              "download the complete checkpoint.")
  return paths


def find(folder: str, stems: Sequence[str], variant: str | None = None) -> list[str]:
  """The weight files of a model folder, preferring safetensors: for `ext` in (safetensors, bin),
  for each stem (e.g. 'model', 'diffusion_pytorch_model'), the sharded index
  `{stem}.{ext}.index[.{variant}].json` (its shards), else `{stem}[.{variant}].{ext}`."""
  if not os.path.isdir(folder):
    raise MissingWeightsError(f"Weights folder {folder} does not exist; pass the local folder "
                              "holding config.json and the weight files.")
  v = f".{variant}" if variant else ""
  for ext in ("safetensors", "bin"):
    for stem in stems:
      index = os.path.join(folder, f"{stem}.{ext}.index{v}.json")
      if os.path.isfile(index):
        return index_shards(index)
      single = os.path.join(folder, f"{stem}{v}.{ext}")
      if os.path.isfile(single):
        return [single]
  want = " or ".join(f"{s}{v}.safetensors" for s in stems)
  raise MissingWeightsError(f"No weights in {folder}: expected {want} (or a sharded "
                            "*.safetensors.index.json with its shards, or .bin).")


# --------------------------------------------------------------------------------------------------
# Reading tensors.

@dataclasses.dataclass(frozen=True)
class TensorInfo:
  """Where one tensor is and what it is. `dtype`: a safetensors dtype name ('F32', 'BF16', 'I64',
  ...; torch tensors are named the same way)."""

  file: str
  shape: tuple[int, ...]
  dtype: str
  offset: int = 0  # safetensors: byte offset of the data in the file


def _corrupt(path: str, reason: str) -> ValueError:
  return ValueError(f"{path} is not a valid safetensors file ({reason}): it is truncated or "
                    "corrupt; re-download or re-convert it.")


def safetensors_layout(path: str) -> tuple[dict[str, TensorInfo], dict[str, str]]:
  """(name -> `TensorInfo`, the `__metadata__` strings) of a safetensors file, after checking its
  whole layout: a ValueError naming the file if anything is inconsistent."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(8)
    if len(head) < 8:
      raise _corrupt(path, f"{size} bytes, shorter than a header")
    header_len = int.from_bytes(head, "little")
    if not 0 < header_len <= min(_MAX_HEADER_BYTES, size - 8):
      raise _corrupt(path, f"header length {header_len} in a file of {size} bytes")
    try:
      header = json.loads(f.read(header_len))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise _corrupt(path, f"unreadable header: {e}") from e
  if not isinstance(header, dict):
    raise _corrupt(path, "the header is not a JSON object")
  metadata = header.pop("__metadata__", None) or {}
  data_start, data_size = 8 + header_len, size - 8 - header_len
  infos = {}
  for name, meta in header.items():
    try:
      dtype, shape, (begin, end) = meta["dtype"], tuple(meta["shape"]), meta["data_offsets"]
      itemsize = np.dtype(SAFETENSORS_DTYPES[dtype]).itemsize
      valid = all(isinstance(d, int) and d >= 0 for d in shape + (begin, end))
    except (KeyError, TypeError, ValueError) as e:
      raise _corrupt(path, f"bad entry for tensor {name!r}: {e!r}") from e
    if not valid or not begin <= end <= data_size or end - begin != math.prod(shape) * itemsize:
      raise _corrupt(path, f"tensor {name!r} of shape {shape} and dtype {dtype} has byte range "
                           f"{meta['data_offsets']} in {data_size} data bytes")
    infos[name] = TensorInfo(path, shape, dtype, data_start + begin)
  return infos, metadata


def read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """(name -> array in its stored dtype, metadata) of a whole safetensors file, checked as in
  `safetensors_layout`."""
  infos, metadata = safetensors_layout(path)
  return {name: _read_safetensor(info) for name, info in infos.items()}, metadata


def save_safetensors(path: str, tensors: Mapping[str, np.ndarray],
                     metadata: Mapping[str, str] | None = None) -> None:
  """`safetensors.numpy.save_file`, with a failed write (a full disk, a quota, a permission) raised
  as the OSError it is (safetensors raises its own error type, with the errno only in the text),
  so that callers and `main` can tell a full disk from a bug."""
  try:
    safetensors.numpy.save_file(dict(tensors), path, metadata=dict(metadata or {}))
  except safetensors.SafetensorError as e:
    code = re.search(r"\(os error (\d+)\)", str(e))
    if code is None:
      raise
    raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), path) from e


def _read_safetensor(info: TensorInfo) -> np.ndarray:
  """A copy of one tensor (the memory map is dropped when this returns)."""
  dtype = np.dtype(SAFETENSORS_DTYPES[info.dtype])
  count = math.prod(info.shape)
  if count == 0:
    return np.zeros(info.shape, dtype)
  raw = np.memmap(info.file, dtype, "r", offset=info.offset, shape=(count,))
  array = np.array(raw.reshape(info.shape), copy=True)
  del raw
  return array


_TORCH_DTYPES = {"torch.float32": "F32", "torch.float16": "F16", "torch.bfloat16": "BF16",
                 "torch.float64": "F64", "torch.int64": "I64", "torch.int32": "I32",
                 "torch.int16": "I16", "torch.int8": "I8", "torch.uint8": "U8",
                 "torch.bool": "BOOL"}


def torch_state_dict(path: str, *, how_to_convert: str = "convert the file to safetensors",
                     mmap: bool = True) -> dict:
  """A PyTorch state dict file read with `torch.load(weights_only=True, map_location='cpu')`.

  Refuses (TorchUnavailableError) when torch is absent or older than 2.6, whose `weights_only`
  loader could still run code from a crafted file; `how_to_convert` ends that message. A file that
  is not a plain state dict of tensors is a ValueError naming it. `mmap`: map the file instead of
  reading it (needs the zip format of torch >= 1.6).
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top  (optional dependency)
  except ImportError:
    torch = None
  version = getattr(torch, "__version__", "0.0").split("+")[0].split(".")[:2]
  if torch is None or tuple(int(p) for p in version) < MIN_TORCH:
    found = f"torch {torch.__version__} is installed" if torch is not None else "torch is absent"
    raise TorchUnavailableError(
        f"{path} is a pickle checkpoint, read only through torch.load(weights_only=True), which "
        f"needs torch>=2.6 ({found}): install it (pip install 'torch>=2.6') or {how_to_convert}.")
  try:
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
  except OSError:
    raise
  except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ... on bad files
    raise ValueError(f"{path} could not be read as a PyTorch state dict ({type(e).__name__}: "
                     f"{str(e).splitlines()[0] if str(e) else ''}); re-download it.") from e
  if not isinstance(state, Mapping) or not all(isinstance(t, torch.Tensor) for t in state.values()):
    raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict of tensors.")
  return dict(state)


def torch_to_numpy(tensor) -> np.ndarray:
  """A CPU torch tensor as a NumPy array of the same dtype (bfloat16 through `ml_dtypes`)."""
  import torch  # pylint: disable=g-import-not-at-top
  tensor = tensor.detach()
  if tensor.dtype == torch.bfloat16:
    return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return tensor.numpy()


class Weights:
  """The tensors of a list of weight files (safetensors and/or torch pickles): every name, shape
  and dtype known up front (`infos`), values read one at a time (`read`)."""

  def __init__(self, files: Sequence[str], *, how_to_convert: str = "convert the file to "
               "safetensors"):
    self.infos: dict[str, TensorInfo] = {}
    self._torch: dict[str, dict] = {}
    for path in files:
      if path.endswith(".safetensors"):
        infos, _ = safetensors_layout(path)
      else:
        state = self._torch[path] = torch_state_dict(path, how_to_convert=how_to_convert)
        infos = {n: TensorInfo(path, tuple(t.shape), _TORCH_DTYPES.get(str(t.dtype), str(t.dtype)))
                 for n, t in state.items()}
      repeated = sorted(set(infos) & set(self.infos))
      if repeated:
        raise ValueError(f"Tensors {short_list(repeated)} appear both in {path} and in "
                         f"{self.infos[repeated[0]].file}; the checkpoint is inconsistent.")
      self.infos.update(infos)

  def non_float(self, names: Iterable[str]) -> list[str]:
    """'name (dtype)' for each of `names` not stored as a float (a parameter needs one)."""
    return [f"{n} ({self.infos[n].dtype})" for n in sorted(names)
            if self.infos[n].dtype not in FLOAT_DTYPES]

  def check_float(self, names: Iterable[str], folder: str) -> None:
    """A ValueError naming every tensor of `names` that is not stored as a float."""
    bad = self.non_float(names)
    if bad:
      raise ValueError(f"The weights in {folder} hold non-float tensors where parameters are "
                       f"expected: {short_list(bad)} (supported: {', '.join(FLOAT_DTYPES)}); "
                       "re-download or re-convert the checkpoint.")

  def read(self, name: str, dtype=None, perm: Sequence[int] | None = None) -> np.ndarray:
    """Tensor `name` as a new C-ordered array (never a view of a memory map), transposed by
    `perm` if given, in `dtype` (default: as stored)."""
    info = self.infos[name]
    if info.file in self._torch:
      array = torch_to_numpy(self._torch[info.file][name])
    else:
      array = _read_safetensor(info)
    if perm is not None:
      array = array.transpose(perm)
    return np.array(array, dtype=dtype, order="C", copy=True)


# --------------------------------------------------------------------------------------------------
# Placement.

def placer(sharding: ShardingSpec) -> Callable[[tuple[str, ...]], Any]:
  """Param path -> where `jax.device_put` puts it: None (default device), one Sharding for all,
  a callable of the path, or a pytree of Shardings shaped like the params."""
  if sharding is None or isinstance(sharding, jax.sharding.Sharding):
    return lambda path: sharding
  if callable(sharding):
    return sharding
  flat = flax.traverse_util.flatten_dict(sharding)
  return lambda path: flat[path]
