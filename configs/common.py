"""Pieces shared by the job configs (paths of the shipped demo assets, the cascade choice)."""

import importlib.util
import pathlib

import ml_collections

from dreamix_jax import parallel

REPO = pathlib.Path(__file__).resolve().parents[1]
SHAPES_CASCADE = str(REPO / "checkpoints" / "shapes")  # the pretrained demo cascade
SHAPES_T5 = str(REPO / "assets" / "shapes_t5")         # its frozen tiny T5
SHAPES_CLIP = str(REPO / "assets" / "shapes_clip.mp4")  # the default input video


def text_config(t5_dir: str = "", cache_dir: str = "") -> ml_collections.ConfigDict:
  """`t5_dir`: a local Hugging Face T5 directory; `cache_dir`: an embedding cache (written when a
  T5 directory is given, read alone otherwise)."""
  return ml_collections.ConfigDict(dict(t5_dir=t5_dir, cache_dir=cache_dir))


def cascade_config(cascade: str, runlocal: bool) -> ml_collections.ConfigDict:
  """The cascade config `cascade` names: a file of configs/cascades/ by name (`shapes`,
  `imagen_video`) or a path to a cascade config file; its tiny variant with `runlocal`."""
  path = pathlib.Path(cascade) if cascade.endswith(".py") else REPO / "configs" / "cascades" / (
      f"{cascade}.py")
  if not path.is_file():
    known = sorted(p.stem for p in (REPO / "configs" / "cascades").glob("*.py"))
    raise ValueError(f"cascade={cascade!r}: no cascade config at {path}; give one of {known} or a "
                     "path to a cascade config .py file.")
  spec = importlib.util.spec_from_file_location(f"cascade_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("tiny" if runlocal else None)


def diffusers_finetune(config: ml_collections.ConfigDict, runlocal: bool) -> None:
  """The paper's settings for Dreamix on the ModelScope backbone (App. C.5) in place of the
  moving-shapes ones, for a cascade read from a diffusers pipeline: 750 steps at learning rate
  1e-5 on the one (latent) stage, ε-loss as the model was trained; α and s are the job's. No
  `finetuned_cascade/` export (5.6 GB of float32 that a diffusers cascade, which reads a pipeline
  folder, could not load back) and checkpoints by wall time only (each orbax state of the 1.4B
  U-Net with its Adam moments is ~17 GB; the paper's finetune takes under 15 minutes)."""
  if config.cascade.get("source", "project") != "diffusers":
    return
  config.finetune.steps = 4 if runlocal else 750
  config.finetune.stages = tuple(config.cascade.order)
  config.finetune.weighting = "eps"
  config.finetune.batch_size = 1
  config.finetune.optimizer.lr = 1e-5
  config.finetune.export = False
  config.finetune.checkpoint_every = 0


def base_config(job: str, runlocal: bool, cascade: str = "") -> ml_collections.ConfigDict:
  """Fields every sampling-type job has. `runlocal`: tiny random cascade (smoke runs on a CPU).
  `cascade`: the `:cascade=<name|path>` argument (default: the moving-shapes cascade, whose
  shipped weights are the default checkpoint; other cascades start with none, so give
  --config.checkpoint)."""
  config = ml_collections.ConfigDict()
  config.job = job
  config.name = job
  config.cascade = cascade_config(cascade or "shapes", runlocal)
  shipped = not runlocal and cascade in ("", "shapes")
  config.checkpoint = SHAPES_CASCADE if shipped else ""
  config.text = text_config(t5_dir=SHAPES_T5)
  config.seed = 0
  config.seeds = (0,)
  config.overwrite = runlocal
  # Sharding (dreamix_jax.parallel): mesh sizes (-1 fills the devices), logical-axis rules, and
  # multi-host start-up. `runlocal` stays on one device.
  config.mesh = dict(data=1 if runlocal else -1, fsdp=1, tensor=1)
  config.logical_axis_rules = parallel.DEFAULT_RULES
  config.distributed = parallel.distributed_config()
  return config
