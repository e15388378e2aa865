"""Fault injection: a disk that fills during a checkpoint or an mp4 write, and a damaged newest
orbax step.

A full disk is made real where the machine allows it (a 1 MiB tmpfs mounted in a private mount
namespace, `unshare -rm`, gone when the process ends); everywhere, it is also injected: safetensors
reports ENOSPC part-way through a write, and a stand-in ffmpeg fails as the real one does on a full
disk. Either way the write runs
inside a job called by `dreamix_jax.main.main`, which must exit 2 with a one-line message, leave the
previous file byte-identical and no temporary behind.
"""

import logging
import os
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from dreamix_jax.train import checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Writes a good checkpoint and mp4 into `folder`, fills the disk (tmpfs) or arms the injected
# failure (inject), then runs a job through dreamix_jax.main that overwrites one of them with a
# file too big for the disk; prints whether that file is intact, and the folder's listing.
# argv: checkpoint|mp4, folder, tmpfs|inject[, an ffmpeg that fails as on a full disk].
_JOB = r"""
import os, sys
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags
from dreamix_jax import jobs, main
from dreamix_jax.data import outputs
from dreamix_jax.train import checkpoints

what, folder, mode = sys.argv[1:4]
ckpt, mp4 = os.path.join(folder, "base.safetensors"), os.path.join(folder, "output.mp4")
target = ckpt if what == "checkpoint" else mp4
noise = lambda shape: np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
checkpoints.save_params(ckpt, {"w": np.arange(8, dtype=np.float32)})
outputs.write_mp4(mp4, noise((2, 16, 16, 3)), fps=8)
before = open(target, "rb").read()
if mode == "readonly":  # the same tmpfs, remounted read-only
  import subprocess
  subprocess.run(["mount", "-o", "remount,ro", folder], check=True)
elif mode == "tmpfs":  # a filler leaving 16 KiB of the 1 MiB free
  stat = os.statvfs(folder)
  with open(os.path.join(folder, "filler"), "wb") as f:
    f.write(b"\0" * (stat.f_bavail * stat.f_frsize - 16 * 1024))
else:
  import safetensors, safetensors.numpy

  def save_file(tensors, path, metadata=None):  # as safetensors does when the disk fills
    with open(path, "wb") as f:
      f.write(b"partial")
    raise safetensors.SafetensorError(
        "Error while serializing: I/O error: No space left on device (os error 28)")

  safetensors.numpy.save_file = save_file
  os.environ["IMAGEIO_FFMPEG_EXE"] = sys.argv[4]

def job(config, workdir):
  if what == "checkpoint":
    checkpoints.save_params(ckpt, {"w": np.ones(1 << 18, np.float32)})  # 1 MiB
  else:
    outputs.write_mp4(mp4, noise((16, 128, 128, 3)), fps=8)  # noise: about 1 MiB of H.264

jobs.get = lambda name: job
config_flags.DEFINE_config_dict("config", ml_collections.ConfigDict({"job": "fault"}))
flags.DEFINE_string("workdir", folder, "")
try:
  app.run(main.main, argv=["fault"])
finally:
  intact = open(target, "rb").read() == before
  print("INTACT" if intact else "CHANGED", ",".join(sorted(os.listdir(folder))))
"""


def _can_mount_tmpfs(folder):
  if shutil.which("unshare") is None:
    return False
  probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs "
                          f"'{folder}'"], capture_output=True, check=False)
  return probe.returncode == 0


@pytest.mark.parametrize("mode", ["tmpfs", "inject", "readonly"])
@pytest.mark.parametrize("what", ["checkpoint", "mp4"])
def test_full_disk_exits_2_and_keeps_the_previous_file(tmp_path, what, mode):
  """`readonly`: the file system refuses every write (EROFS), the same exit-2 path as a full
  disk, a permission error or a quota (errors the user fixes, not bugs)."""
  script = tmp_path / "job.py"
  script.write_text(_JOB)
  folder = tmp_path / "workdir"
  folder.mkdir()
  command = [sys.executable, str(script), what, str(folder), mode]
  if mode in ("tmpfs", "readonly"):
    if not _can_mount_tmpfs(folder):
      pytest.skip("this machine does not allow mounting a tmpfs in a private mount namespace")
    command = ["unshare", "-rm", "sh", "-c",
               f"mount -t tmpfs -o size=1m tmpfs '{folder}' && exec \"$@\"", "sh", *command]
  else:
    # ffmpeg as it fails on a full disk: part of the file written, the error, exit status 1. (The
    # real ffmpeg writing to /dev/full exits 0: it does not see that device's write errors.)
    ffmpeg = tmp_path / "ffmpeg_on_a_full_disk"
    ffmpeg.write_text("#!/bin/sh\ncat > /dev/null\nfor last; do :; done\nprintf partial > "
                      "\"$last\"\necho 'Error writing trailer: No space left on device' >&2\n"
                      "exit 1\n")
    ffmpeg.chmod(0o755)
    command.append(str(ffmpeg))
  result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False,
                          env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"))
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  target = folder / ("base.safetensors" if what == "checkpoint" else "output.mp4")
  what_fix = ("read-only file system", "mount it writable") if mode == "readonly" else (
      "no space left on the device", "free space there")
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: {what_fix[0]} ({target}): {what_fix[1]} or give a --workdir "
      "elsewhere, then re-run the same command (it resumes).")
  left = ["base.safetensors", "output.mp4"] + (["filler"] if mode == "tmpfs" else [])
  assert result.stdout.split() == ["INTACT", ",".join(sorted(left))]  # no temporary left


# A damaged newest orbax step.

def _state(value):
  return {"w": jnp.full((3,), value, jnp.float32), "step": jnp.asarray(value, jnp.int32)}


def _corrupt_step(directory, step):
  """Truncates every data file of a step's `state` item (what a crash or a bad disk leaves)."""
  damaged = 0
  for root, _, files in os.walk(os.path.join(directory, str(step), "state")):
    for name in files:
      with open(os.path.join(root, name), "r+b") as f:
        f.truncate(max(0, os.path.getsize(os.path.join(root, name)) // 3))
      damaged += 1
  assert damaged


def test_unreadable_newest_step_falls_back_to_the_previous(tmp_path, caplog):
  directory = str(tmp_path / "ckpt")
  ckpt = checkpoints.TrainCheckpointer(directory)
  for step in (1, 2):
    ckpt.save(step, _state(float(step)), {"step": step})
  ckpt.close()
  _corrupt_step(directory, 2)

  ckpt = checkpoints.TrainCheckpointer(directory)
  assert ckpt.latest_step() == 2
  with caplog.at_level(logging.WARNING):
    state, meta = ckpt.restore(_state(0.0))
  np.testing.assert_array_equal(state["w"], [1.0, 1.0, 1.0])
  assert meta == {"step": 1}
  warnings = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
  assert "Step 2 in" in warnings and "resuming from step 1 instead" in warnings
  # The run continues: step 2 can be saved again, and the damaged files are kept aside.
  assert ckpt.latest_step() == 1
  ckpt.save(2, _state(5.0), {"step": 2})
  np.testing.assert_array_equal(ckpt.restore(_state(0.0))[0]["w"], [5.0, 5.0, 5.0])
  ckpt.close()
  assert os.path.isdir(os.path.join(directory, "unreadable-2"))

  _corrupt_step(directory, 1)
  _corrupt_step(directory, 2)
  ckpt = checkpoints.TrainCheckpointer(directory)
  with pytest.raises(checkpoints.CheckpointError,
                     match=f"No checkpoint in {directory} can be restored.*step 2: .*step 1: .*"
                           f"Delete {directory} to start this run afresh"):
    ckpt.restore(_state(0.0))
  ckpt.close()
