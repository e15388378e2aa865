"""Pieces shared by the job configs (paths of the shipped demo assets, the cascade choice)."""

import pathlib

import ml_collections

from dreamix_jax import parallel
from dreamix_jax.jobs import common as jobs_common

REPO = pathlib.Path(__file__).resolve().parents[1]
SHAPES_CASCADE = str(REPO / "checkpoints" / "shapes")  # the pretrained demo cascade
SHAPES_T5 = str(REPO / "assets" / "shapes_t5")         # its frozen tiny T5
SHAPES_CLIP = str(REPO / "assets" / "shapes_clip.mp4")  # the default input video


def base_config(job: str, runlocal: bool) -> ml_collections.ConfigDict:
  """Fields every sampling-type job has. `runlocal`: tiny random cascade (smoke runs on a CPU)."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "shapes_cascade", REPO / "configs" / "cascades" / "shapes.py")
  shapes = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(shapes)
  config = ml_collections.ConfigDict()
  config.job = job
  config.name = job
  config.cascade = shapes.get_config("tiny" if runlocal else None)
  config.checkpoint = "" if runlocal else SHAPES_CASCADE
  config.text = jobs_common.text_config(t5_dir=SHAPES_T5)
  config.seed = 0
  config.seeds = (0,)
  config.overwrite = runlocal
  # Sharding (dreamix_jax.parallel): mesh sizes (-1 fills the devices), logical-axis rules, and
  # multi-host start-up. `runlocal` stays on one device.
  config.mesh = dict(data=1 if runlocal else -1, fsdp=1, tensor=1)
  config.logical_axis_rules = parallel.DEFAULT_RULES
  config.distributed = parallel.distributed_config()
  return config
