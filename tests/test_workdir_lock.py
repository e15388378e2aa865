"""The lock that keeps two runs out of one output or training folder (`jobs.lock`): refused while
the holder lives, taken over (with a warning) once it is gone, released however the run ends.

The end-to-end cases run in tests/test_reliability.py: a CLI run refused by a live holder (exit
code 2, one line), and a pretraining run resumed after SIGKILL taking over the lock the killed run
left behind.
"""

import json
import logging
import os
import socket
import subprocess
import time

import pytest

from dreamix_jax.jobs import lock


def _write_lock(folder, **holder):
  path = lock.lock_path(str(folder))
  record = dict(pid=os.getpid(), host=socket.gethostname(), started=time.time(), command="x")
  record.update(holder)
  with open(path, "w") as f:
    json.dump(record, f)
  return path


def test_a_live_holder_refuses_a_second_run_naming_it(tmp_path):
  folder = tmp_path / "edit" / "run"
  with lock.hold(str(folder)):
    path = lock.lock_path(str(folder))
    holder = json.load(open(path))
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    with pytest.raises(lock.LockedError) as info:
      with lock.hold(str(folder)):
        pass
    assert str(info.value).startswith(
        f"another run (pid {os.getpid()} on host {socket.gethostname()}, started ")
    assert str(info.value).endswith(f") is using {folder}; wait for it to finish, or delete "
                                    f"{path} if that process is gone.")
    assert isinstance(info.value, FileExistsError)  # exit code 2 at the entry point
    assert os.path.isfile(path)  # the refused run leaves the holder's lock alone
  assert not os.path.exists(path) and not folder.exists()  # released; the folder is not made


def test_the_lock_is_released_on_an_error(tmp_path):
  with pytest.raises(RuntimeError):
    with lock.hold(str(tmp_path / "run")):
      raise RuntimeError("boom")
  assert os.listdir(tmp_path) == []


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog):
  gone = subprocess.Popen(["true"])
  gone.wait()  # reaped: no process has this pid now
  stale = {"dead pid": dict(pid=gone.pid),
           "pid reused by a later process": dict(started=1_000_000.0)}
  for why, holder in stale.items():
    path = _write_lock(tmp_path / "run", **holder)
    with caplog.at_level(logging.WARNING):
      with lock.hold(str(tmp_path / "run")):
        assert json.load(open(path))["pid"] == os.getpid(), why
    assert "Taking over the stale lock" in caplog.text, why
    assert not os.path.exists(path), why
    caplog.clear()


@pytest.mark.parametrize("holder,pattern", [
    (dict(host="another-host"), r"another run \(pid \d+ on host another-host, started "),
    ("not json", r"exists but records no run .*delete .*run.lock if no run is using"),
])
def test_locks_that_cannot_be_checked_here_are_left_alone(tmp_path, holder, pattern):
  """Another host's pid cannot be checked, and an unreadable lock may be one being written."""
  if isinstance(holder, dict):
    path = _write_lock(tmp_path / "run", **holder)
  else:
    path = lock.lock_path(str(tmp_path / "run"))
    open(path, "w").write(holder)
  with pytest.raises(lock.LockedError, match=pattern):
    with lock.hold(str(tmp_path / "run")):
      pass
  assert os.path.isfile(path)
