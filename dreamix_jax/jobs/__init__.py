"""The jobs: thin functions `run(config, workdir)` from a config to the method to outputs, with no
absl inside (tests and notebooks call them directly). `REGISTRY` maps a config's `job` to the module
that holds its `run`; modules are imported on first use, so a bad command line fails fast.
A new job: a module here with `run(config, workdir)`, a line in `REGISTRY`, and `configs/<job>.py`.
"""

from __future__ import annotations

import importlib
from typing import Callable

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
  """The `run(config, workdir)` function of job `name`."""
  if name not in REGISTRY:
    raise ValueError(f"Unknown job {name!r}; config.job must be one of {sorted(REGISTRY)}.")
  return importlib.import_module(REGISTRY[name]).run
