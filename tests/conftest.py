"""Test setup: 8 simulated CPU devices (set before JAX initialises its backends), and compile-time
savings: the suite compiles far more than it runs."""

import atexit
import os
import shutil
import tempfile

from compile_flags import FAST_COMPILE

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_force_host_platform_device_count=8 {FAST_COMPILE}").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the whole run, inherited by the subprocesses that tests start
# (CLI runs, resume-after-kill, two-process runs), so the same tiny programs compile once.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="dreamix-jax-cache-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_xdist_auto_num_workers(config):
  """`-n auto` (pytest.ini): a worker per core, at most 4 (each holds its own JAX runtime and
  compiled programs, ~1-2 GiB; the suite is sized for a 2-core CI machine)."""
  del config
  return max(1, min(4, len(os.sched_getaffinity(0))))
