"""The jobs: thin functions `run(config, workdir)` from a config to the method to outputs, with no
absl inside (tests and notebooks call them directly). `REGISTRY` maps a config's `job` to the module
that holds its `run`; modules are imported on first use, so a bad command line fails fast.
A new job: a module here with `run(config, workdir)`, a line in `REGISTRY`, and `configs/<job>.py`.

`get` hands out each `run` under a `train.preemption.JobGuard`: SIGTERM/SIGINT anywhere in the job
(not only in training) end it as a preemption, resumable by the same command.
"""

from __future__ import annotations

import functools
import importlib
from typing import Callable

from dreamix_jax.train import preemption

REGISTRY = {
    "text2video": "dreamix_jax.jobs.text2video",
    "edit": "dreamix_jax.jobs.edit",
    "image2video": "dreamix_jax.jobs.image2video",
    "subject": "dreamix_jax.jobs.subject",
    "sweep": "dreamix_jax.jobs.sweep",
    "eval": "dreamix_jax.jobs.evaluate",
    "pretrain": "dreamix_jax.jobs.pretrain",
}


def get(name: str) -> Callable:
  """The `run(config, workdir)` function of job `name`, run under a `preemption.JobGuard`."""
  if name not in REGISTRY:
    raise ValueError(f"Unknown job {name!r}; config.job must be one of {sorted(REGISTRY)}.")
  run = importlib.import_module(REGISTRY[name]).run

  @functools.wraps(run)
  def guarded(config, workdir: str):
    with preemption.JobGuard(name):
      return run(config, workdir)

  return guarded
