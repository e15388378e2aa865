"""Content fingerprints of input files and folders: what a resumed run and an embedding cache
compare to know that their inputs are the very bytes they started from.

A path and a size say nothing about content: a video replaced by another of the same name, or a
finetuned encoder saved over the original with the same tensor shapes, must not resume an old run
or reuse old embeddings. So fingerprints are sha256 digests of the bytes themselves. Reading
multi-gigabyte weights takes seconds (disk speed), so a digest is remembered for the life of the
process, keyed by the file's identity (device, inode, size, modification time): a file rewritten in
place gets a new modification time and is read again. Nothing is written to disk.
"""

from __future__ import annotations

import hashlib
import os
from typing import Iterable

_CHUNK = 1 << 20
_memo: dict[tuple, str] = {}


def file_sha256(path: str | os.PathLike) -> str:
  """Hex sha256 of the file's bytes (remembered per process while the file is unchanged)."""
  stat = os.stat(path)
  key = (os.fspath(os.path.realpath(path)), stat.st_dev, stat.st_ino, stat.st_size,
         stat.st_mtime_ns)
  if key not in _memo:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
      while chunk := f.read(_CHUNK):
        digest.update(chunk)
    _memo[key] = digest.hexdigest()
  return _memo[key]


def files_sha256(folder: str | os.PathLike, names: Iterable[str]) -> str:
  """Hex sha256 over `(name, file_sha256)` of the named files of `folder` that exist, in sorted
  order: the fingerprint of a model folder given the files that define the model (weights, config,
  tokenizer). Files absent from the folder are skipped, so one list of candidate names serves
  folders in different layouts."""
  digest = hashlib.sha256()
  for name in sorted(set(names)):
    path = os.path.join(folder, name)
    if os.path.isfile(path):
      digest.update(f"{name}\0{file_sha256(path)}\0".encode())
  return digest.hexdigest()
