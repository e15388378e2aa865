"""XManager launcher: `dreamix_jax.main` jobs on TPU/GPU, one job or a hyperparameter sweep.

  python launch/xm_launch.py --config=configs/edit.py --sweep=paper --dry_run
  python launch/xm_launch.py --config=configs/edit.py --accelerator=tpu_v4=32 --multihost --sweep=paper
  python launch/xm_launch.py --config=configs/pretrain.py --accelerator=a100=8 \
      --axis='config.optimizer.lr=1e-4|3e-4' --set=config.steps=20000

The project is packaged as a Python container (`xm.python_container`, entry point the module
`dreamix_jax.main`) and each job gets `--config`, `--workdir=<workdir>/<job name>` and its overrides.
Sweeps:
  --sweep=paper  the paper's 12 editing settings (App. F.1, `dreamix_jax.jobs.sweep.PAPER_GRID`),
                 grouped by `jobs.sweep.plan`: one edit job per (finetuning mode, steps) that edits
                 at every noise level s the grid pairs with it (5 jobs for the 12 settings).
  --axis=FIELD=V1|V2|...  (repeatable) the Cartesian product of config-field values.
Every override is checked against the (locked) config before anything is submitted.
--dry_run prints the job specs as JSON and needs neither xmanager nor credentials; a real launch
imports xmanager (`pip install xmanager`) and submits through `xm_local` (`--executor=local` runs
the container on this machine, `vertex` on Vertex AI).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import pathlib
import shlex
import sys
from typing import Sequence

from absl import app
from absl import flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENTRYPOINT = "dreamix_jax.main"
# xm.ResourceType names (lower case); which ones an executor accepts depends on the xmanager version.
ACCELERATORS = ("tpu_v2", "tpu_v3", "tpu_v4", "p100", "v100", "a100", "h100", "l4", "t4", "cpu")
EXECUTORS = ("local", "vertex")

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("config", "configs/edit.py", "Job config, configs/<job>.py[:args].")
  flags.DEFINE_string("workdir", "/tmp/dreamix_xm", "Each job writes to <workdir>/<job name>.")
  flags.DEFINE_string("name", "", "Experiment title (default: the config's job).")
  flags.DEFINE_string("accelerator", "tpu_v4=8", "Per-job requirement RESOURCE=COUNT, RESOURCE one "
                      f"of {ACCELERATORS}.")
  flags.DEFINE_enum("executor", "vertex", EXECUTORS, "xm_local executor.")
  flags.DEFINE_string("base_image", "python:3.11", "Container base image.")
  flags.DEFINE_enum("sweep", "none", ("none", "paper"), "Predefined sweep (see the module doc).")
  flags.DEFINE_multi_string("axis", [], "FIELD=V1|V2|...: sweep a config field over values.")
  flags.DEFINE_multi_string("set", [], "FIELD=VALUE: an override every job gets.")
  flags.DEFINE_bool("multihost", False, "Jobs span several hosts (TPU pod slices): every process "
                    "starts jax.distributed (--config.distributed.enabled=True).")
  flags.DEFINE_bool("dry_run", False, "Print the job specs instead of submitting them.")


def load_config(config_arg: str):
  """The locked ConfigDict `--config=<config_arg>` gives (the file is resolved from the repo)."""
  path, _, arg = config_arg.partition(":")
  file = ROOT / path
  if not file.is_file():
    raise ValueError(f"No config file {path!r} under {ROOT}; give configs/<job>.py[:args].")
  if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
  spec = importlib.util.spec_from_file_location("xm_job_config", file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  config.lock()
  return config


def _field(text: str, flag: str) -> tuple[str, str]:
  """'config.a.b=value' or 'a.b=value' -> ('a.b', 'value')."""
  key, has_value, value = text.partition("=")
  key = key.strip().removeprefix("--").removeprefix("config.")
  if not has_value or not key:
    raise ValueError(f"--{flag}={text!r} must be FIELD=VALUE, e.g. config.finetune.steps=300.")
  return key, value


def check_fields(config, config_arg: str, fields: Sequence[str]) -> None:
  """Raises ValueError naming any field the config lacks (a typo would fail every job later)."""
  for field in fields:
    node = config
    for part in field.split("."):
      if not hasattr(node, "keys") or part not in node:
        raise ValueError(f"Config {config_arg!r} has no field {field!r}; check the spelling "
                         "against the config file.")
      node = node[part]


def paper_sweep() -> list[dict[str, str]]:
  """The paper's 12 (finetuning, s) settings as edit-job overrides, grouped by `sweep.plan`."""
  from dreamix_jax.dreamix import sweep
  settings = sweep.parse_settings(sweep.PAPER_GRID, sweep.PAPER_ALPHAS)
  points = []
  for run in sweep.plan(settings, sweep.PAPER_ALPHAS):
    for steps in run.steps:
      levels = run.noise_levels[steps]
      point = {"noise_levels": repr(tuple(levels))}
      if run.alpha is None:
        point["finetune.enabled"] = "False"
      else:
        point.update({"finetune.alpha": repr(run.alpha), "finetune.steps": str(steps)})
      point["name"] = f"{run.mode}_{steps}steps"
      points.append(point)
  return points


def axis_sweep(axes: Sequence[str]) -> list[dict[str, str]]:
  """The Cartesian product of `FIELD=V1|V2` axes, as override dicts."""
  parsed = [_field(axis, "axis") for axis in axes]
  grid = [[(key, value) for value in values.split("|")] for key, values in parsed]
  return [dict(point) for point in itertools.product(*grid)]


def parse_accelerator(text: str) -> dict[str, int]:
  resource, _, count = text.partition("=")
  if resource not in ACCELERATORS or not count.isdigit() or int(count) < 1:
    raise ValueError(f"--accelerator={text!r} must be RESOURCE=COUNT with RESOURCE one of "
                     f"{ACCELERATORS}, e.g. tpu_v4=32 or a100=8.")
  return {resource: int(count)}


def job_specs(config_arg: str, workdir: str, accelerator: str, executor: str, sweep_name: str,
              axes: Sequence[str], sets: Sequence[str], title: str = "",
              multihost: bool = False) -> list[dict]:
  """Plain-dict specs of the jobs to submit (what --dry_run prints)."""
  config = load_config(config_arg)
  requirements = parse_accelerator(accelerator)
  common = dict(_field(s, "set") for s in sets)
  points = paper_sweep() if sweep_name == "paper" else [{}]
  if sweep_name == "paper" and config.job != "edit":
    raise ValueError(f"--sweep=paper sweeps the edit job's finetuning and s; {config_arg!r} is a "
                     f"{config.job!r} config. Use --config=configs/edit.py[:args].")
  points = [dict(p, **a) for p in points for a in axis_sweep(axes)] if axes else points
  distributed = {"distributed.enabled": "True"} if multihost else {}
  specs = []
  for k, point in enumerate(points):
    point = dict(point)
    label = point.pop("name", None) or "_".join(f"{key.split('.')[-1]}={value}"
                                                for key, value in point.items()) or config.job
    overrides = {**distributed, **common, **point}
    check_fields(config, config_arg, list(overrides))
    name = f"{k:02d}_{label}"
    args = {"config": config_arg, "workdir": os.path.join(workdir, name),
            **{f"config.{key}": value for key, value in overrides.items()}}
    command = ["python", "-m", ENTRYPOINT] + [f"--{key}={value}" for key, value in args.items()]
    specs.append(dict(experiment=title or config.job, name=name, entrypoint=ENTRYPOINT,
                      executor=executor, requirements=requirements, args=args,
                      command=shlex.join(command)))
  return specs


def submit(specs: Sequence[dict], base_image: str) -> None:
  """Packages the repository once and adds one job per spec to a new xm_local experiment."""
  try:
    from xmanager import xm
    from xmanager import xm_local
  except ImportError as e:
    raise ValueError("A real launch needs xmanager: `pip install xmanager` (and `xmanager` "
                     "credentials for Vertex AI); --dry_run prints the specs without it.") from e
  executor_cls = xm_local.Vertex if specs[0]["executor"] == "vertex" else xm_local.Local
  with xm_local.create_experiment(experiment_title=specs[0]["experiment"]) as experiment:
    [executable] = experiment.package([xm.python_container(
        executor_spec=executor_cls.Spec(), path=str(ROOT), base_image=base_image,
        entrypoint=xm.ModuleName(ENTRYPOINT))])
    for spec in specs:
      requirements = xm.JobRequirements(**spec["requirements"])
      experiment.add(xm.Job(executable=executable, executor=executor_cls(requirements=requirements),
                            args=spec["args"], name=spec["name"]))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    specs = job_specs(FLAGS.config, FLAGS.workdir, FLAGS.accelerator, FLAGS.executor, FLAGS.sweep,
                      FLAGS.axis, FLAGS.set, FLAGS.name, FLAGS.multihost)
    if FLAGS.dry_run:
      print(json.dumps(specs, indent=2))
    else:
      submit(specs, FLAGS.base_image)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  define_flags()
  app.run(main)
