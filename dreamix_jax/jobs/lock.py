"""One run at a time per output or training folder: a lock file beside the folder it guards.

Two runs writing the same folder at once would interleave their outputs and both "resume" into the
same orbax directory. So a run takes `<folder>.lock` before it writes there and removes it when it
ends, however it ends (done, an error, preemption). The file is created with O_CREAT|O_EXCL (only
one creator can succeed, also on NFS ≥ v3) and records the holder: pid, host, start time, command.
A second run is refused with a message naming the holder and how to proceed.

A run killed outright (SIGKILL, power loss) leaves its lock behind. On the holder's host a lock
whose process is gone (no such pid, or a pid reused by a process started after the lock) is stale:
the next run takes it over with a warning (two runs taking over the same stale lock at the same
instant could both succeed: a narrow window, left open). A lock from another host cannot be checked
from here and is left for a person to delete.

The lock sits beside the folder, not in it, so that it can be taken before the folder exists or is
inspected (no two runs both find it empty), and it never shows among the run's files or orbax's
steps. On several processes only process 0 takes it: they are one run.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
import time
from typing import Iterator

from absl import logging

from dreamix_jax import parallel


class LockedError(FileExistsError):
  """Another live run holds the lock of the folder."""


def lock_path(folder: str) -> str:
  """The lock file guarding `folder`: `<folder>.lock`."""
  return os.path.normpath(folder) + ".lock"


@contextlib.contextmanager
def hold(folder: str) -> Iterator[None]:
  """Holds the lock of `folder` for the duration of the block (process 0 only); raises
  `LockedError` when another live run holds it."""
  if not parallel.is_primary():
    yield
    return
  path = lock_path(folder)
  _acquire(path, folder)
  try:
    yield
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)


def _acquire(path: str, folder: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  me = dict(pid=os.getpid(), host=socket.gethostname(), started=time.time(),
            command=" ".join(sys.argv))
  while True:
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      holder = _read(path)
      if holder == {}:  # released meanwhile: try again
        continue
      if holder is None or not _is_stale(holder):
        raise LockedError(_refusal(holder, path, folder)) from None
      if _read(path) == holder:  # not taken over by another run in the meantime
        logging.warning("Taking over the stale lock %s: its holder (pid %s on host %s, started %s) "
                        "is no longer running.", path, holder["pid"], holder["host"],
                        _when(holder["started"]))
        with contextlib.suppress(FileNotFoundError):
          os.remove(path)
      continue
    try:
      with os.fdopen(fd, "w") as f:
        json.dump(me, f)
    except BaseException:  # (a preemption, a full disk) no empty lock may stay behind
      os.remove(path)
      raise
    return


def _read(path: str) -> dict | None:
  """The holder recorded in the lock file; {} when the file is gone; None when it is unreadable
  (still being written, or not a lock at all)."""
  try:
    with open(path) as f:
      holder = json.load(f)
  except FileNotFoundError:
    return {}
  except (OSError, ValueError):
    return None
  ok = isinstance(holder, dict) and {"pid", "host", "started"} <= set(holder)
  return holder if ok else None


def _is_stale(holder: dict) -> bool:
  """Whether the lock's holder is known to be gone: it was on this host and its pid runs no process
  started before the lock was taken."""
  if holder["host"] != socket.gethostname():
    return False
  pid = int(holder["pid"])
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return True
  except PermissionError:
    pass  # a process of another user: alive
  started = _process_start_time(pid)
  return started is not None and started > float(holder["started"]) + 1.0


def _process_start_time(pid: int) -> float | None:
  """Unix time at which process `pid` started (Linux /proc), or None where it cannot be told."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start time since boot
    with open("/proc/stat") as f:
      boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
  except (OSError, ValueError, IndexError, StopIteration):
    return None
  return boot + ticks / os.sysconf("SC_CLK_TCK")


def _when(timestamp) -> str:
  return datetime.datetime.fromtimestamp(float(timestamp)).isoformat(sep=" ", timespec="seconds")


def _refusal(holder: dict | None, path: str, folder: str) -> str:
  if holder is None:
    return (f"{path} exists but records no run (is another run just starting?); wait for it, or "
            f"delete {path} if no run is using {folder}.")
  return (f"another run (pid {holder['pid']} on host {holder['host']}, started "
          f"{_when(holder['started'])}) is using {folder}; wait for it to finish, or "
          f"delete {path} if that process is gone.")
