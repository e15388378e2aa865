"""Checkpoints: orbax managers for train states, safetensors files for exported parameters.

Two formats, one purpose each:
- A training run (pretrain or finetune of one stage) keeps an orbax `CheckpointManager` in its work
  directory: the full `TrainState` plus a JSON item (config, data position), saved atomically
  (orbax writes to a temporary directory and renames it), resumable.
- A *cascade* is a directory with one `<stage>.safetensors` file of (EMA) parameters per stage and a
  `cascade.json` with the cascade config. It is small, portable and has no pickle; this is what the
  sampling/editing jobs read and what the repository ships. A finetuned cascade is written to its own
  directory beside the pretrained one, never over it.

Reading either is strict, since a checkpoint that loads wrongly wastes a run: a truncated or corrupt
safetensors file, or a tensor of the right shape but another dtype than the model's parameter, is a
`CheckpointError` naming the file and tensors; an orbax step that cannot be restored (damaged
files) falls back to the previous step kept (`max_to_keep=2`), saying so.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

from absl import logging
import flax.linen as nn
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from dreamix_jax import cascade as cascade_lib
from dreamix_jax import weight_files
from dreamix_jax.data import outputs

CASCADE_CONFIG = "cascade.json"


class CheckpointError(ValueError):
  """A checkpoint that is missing, incomplete or does not fit the configured model."""


# --------------------------------------------------------------------------------------------------
# Parameter trees <-> flat safetensors.

def flatten(params: Mapping) -> dict[str, np.ndarray]:
  """{'a': {'b': x}} -> {'a/b': np.asarray(x)}."""
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    flat["/".join(str(getattr(k, "key", k)) for k in path)] = np.asarray(leaf)
  return flat


def unflatten(flat: Mapping[str, Any]) -> dict:
  out: dict = {}
  for name, value in flat.items():
    node = out
    *parents, leaf = name.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return out


def save_params(path: str, params: Mapping, metadata: Mapping[str, str] | None = None) -> None:
  """Writes `params` to a safetensors file atomically (temporary file, then rename)."""
  with outputs.atomic_path(path) as tmp:
    weight_files.save_safetensors(tmp, flatten(params), metadata)


def load_params(path: str, expected=None) -> dict:
  """Reads a safetensors parameter file; with `expected` (a params or `eval_shape` tree) checks that
  names and shapes match exactly, listing every difference."""
  flat = _read(path)
  if expected is not None:
    expected = _flat_shapes(expected)
    check_matches(flat, {k: v.shape for k, v in expected.items()}, path,
                  {k: v.dtype for k, v in expected.items()})
  return unflatten(flat)


def _read(path: str) -> dict[str, np.ndarray]:
  """The tensors of a project safetensors file, in their stored dtypes; a `CheckpointError` naming
  the file if it is missing, truncated or corrupt."""
  if not os.path.isfile(path):
    raise CheckpointError(f"Parameter file {path!r} does not exist.")
  try:
    return weight_files.read_safetensors(path)[0]
  except ValueError as e:
    raise CheckpointError(f"{e} If it is the newest export of a training run, re-export it from "
                          "that run's checkpoint (re-run the same command).") from e


def load_params_over(path: str, initial, new: Sequence[str]) -> dict:
  """Reads a parameter file written before modules were added to a model: every parameter of
  `initial` (the model's full, freshly initialised tree) comes from the file, except those under the
  top-level names in `new` (e.g. 'frame_emb'), which the file must lack and which keep their
  initial values. Any other difference is an error listing it, as in `load_params`."""
  initial = flatten(nn.meta.unbox(initial))
  tops = {k.split("/")[0] for k in initial}
  unknown = sorted(set(new) - tops)
  if unknown:
    raise CheckpointError(f"New modules {unknown} are not in the model; its top-level modules are "
                          f"{sorted(tops)}.")
  is_new = lambda k: k.split("/")[0] in new
  flat = _read(path)
  stored_new = sorted(k for k in flat if is_new(k))
  if stored_new:
    raise CheckpointError(f"{path} already has {stored_new[:5]}: do not list "
                          f"{sorted({k.split('/')[0] for k in stored_new})} as new.")
  kept = {k: v for k, v in initial.items() if not is_new(k)}
  check_matches(flat, {k: v.shape for k, v in kept.items()}, path,
                {k: v.dtype for k, v in kept.items()})
  return unflatten({**initial, **flat})


def _flat_shapes(tree) -> dict[str, Any]:
  tree = nn.meta.unbox(tree)  # abstract params carry logical-partitioning boxes
  return {"/".join(str(getattr(k, "key", k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def check_matches(flat: Mapping[str, np.ndarray], expected: Mapping[str, tuple], source: str,
                  dtypes: Mapping[str, Any] | None = None):
  """A `CheckpointError` listing every name of `flat` (name -> array) missing from or unexpected in
  `expected` (name -> shape), every shape that differs and, with `dtypes` (name -> the model's
  dtype), every dtype that differs (a bfloat16 or integer tensor where the model holds float32
  would otherwise load silently)."""
  missing = sorted(set(expected) - set(flat))
  unexpected = sorted(set(flat) - set(expected))
  common = sorted(set(flat) & set(expected))
  wrong = [f"{k}: checkpoint {tuple(flat[k].shape)} vs model {tuple(expected[k])}"
           for k in common if tuple(flat[k].shape) != tuple(expected[k])]
  wrong_dtype = [f"{k}: checkpoint {np.dtype(flat[k].dtype).name} vs model "
                 f"{np.dtype(dtypes[k]).name}" for k in common
                 if dtypes is not None and np.dtype(flat[k].dtype) != np.dtype(dtypes[k])]
  if missing or unexpected or wrong or wrong_dtype:
    lines = [f"{source} does not fit the configured model (was it made with a different config?)"]
    for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong),
                         ("wrong dtype", wrong_dtype)):
      if items:
        lines.append(f"  {title} ({len(items)}): " + "; ".join(items[:20]) +
                     (" ..." if len(items) > 20 else ""))
    raise CheckpointError("\n".join(lines))


# --------------------------------------------------------------------------------------------------
# Cascade directories.

def save_cascade_stage(directory: str, stage_name: str, params, cascade_config=None,
                       metadata: Mapping[str, str] | None = None) -> str:
  """Writes one stage's parameters (and, if given, the cascade config) into a cascade directory."""
  path = os.path.join(directory, f"{stage_name}.safetensors")
  save_params(path, params, metadata)
  if cascade_config is not None:
    outputs.write_json(os.path.join(directory, CASCADE_CONFIG), cascade_config.to_dict())
  return path


def load_cascade(directory: str, cascade: cascade_lib.Cascade,
                 stages: list[str] | None = None) -> dict[str, Any]:
  """{stage name: params} for `stages` (default: all), validated against the cascade's shapes."""
  if not os.path.isdir(directory):
    raise CheckpointError(f"Cascade checkpoint directory {directory!r} does not exist. Pass "
                          "--config.checkpoint=<a cascade directory> (one <stage>.safetensors per "
                          "stage, e.g. <workdir>/cascade from configs/pretrain.py).")
  out = {}
  for name in stages or cascade.names:
    path = os.path.join(directory, f"{name}.safetensors")
    if not os.path.isfile(path):
      present = sorted(f[:-len(".safetensors")] for f in os.listdir(directory)
                       if f.endswith(".safetensors"))
      raise CheckpointError(f"Cascade checkpoint {directory!r} has no stage {name!r} "
                            f"(expected {path}); it has stages {present}.")
    out[name] = load_params(path, cascade.abstract_params(cascade.stage(name)))
  return out


def read_cascade_config(directory: str) -> ml_collections.ConfigDict:
  path = os.path.join(directory, CASCADE_CONFIG)
  if not os.path.isfile(path):
    raise CheckpointError(f"{path} is missing: a cascade directory records its config there.")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


# --------------------------------------------------------------------------------------------------
# Train-state checkpoints (orbax).

class TrainCheckpointer:
  """Orbax manager for one training run: items `state` (a TrainState) and `meta` (JSON)."""

  def __init__(self, directory: str, *, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    self._max_to_keep = max_to_keep
    self._manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        self.directory, item_names=("state", "meta"),
        options=ocp.CheckpointManagerOptions(max_to_keep=self._max_to_keep, create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, meta: Mapping[str, Any]) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta))), force=True)
    self._manager.wait_until_finished()

  def restore(self, template, step: int | None = None):
    """(state, meta) of `step`, or by default of the newest readable step: when the newest cannot
    be restored (damaged or truncated files), it is moved aside to `unreadable-<step>` in the same
    directory (so the run can save that step again) and the previous step is used, with a warning
    naming both. `template`: a TrainState with the right shapes (and shardings, where restoring onto
    a mesh)."""
    if step is not None:
      return self._restore(template, step)
    steps = sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      raise CheckpointError(f"No checkpoint in {self.directory}.")
    failures = []
    for candidate in steps:
      try:
        restored = self._restore(template, candidate)
      except CheckpointError:
        raise  # the model does not fit: an older step would not fit either
      except Exception as e:  # pylint: disable=broad-except  (orbax/tensorstore raise many types)
        failures.append(f"step {candidate}: {type(e).__name__}: {_first_line(e)}")
        logging.warning("Checkpoint step %d in %s cannot be restored (%s).", candidate,
                        self.directory, failures[-1])
        continue
      if failures:
        self._set_aside(steps[:len(failures)])
        logging.warning("Step %s in %s is unreadable (moved aside to unreadable-<step>); resuming "
                        "from step %d instead.", ", ".join(map(str, steps[:len(failures)])),
                        self.directory, candidate)
      return restored
    raise CheckpointError(
        f"No checkpoint in {self.directory} can be restored ({'; '.join(failures)}): its files are "
        f"damaged. Delete {self.directory} to start this run afresh.")

  def _restore(self, template, step: int):
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    except ValueError as e:
      if "structures do not match" not in str(e):
        raise
      # orbax lists every differing subtree with its full metadata; name the subtrees only.
      differing = [line[:-1] for line in str(e).splitlines()
                   if line.endswith(":") and not line.startswith((" ", "User-provided"))]
      names = ", ".join(differing[:8]) or "listed by orbax"
      raise CheckpointError(
          f"The checkpoint at step {step} in {self.directory} was written by a model with other "
          f"parameters (differing: {names}): was the config changed since? Resume with the "
          "config that wrote it, or start in a new --workdir (pretraining: --config.init_from=<a "
          "cascade directory> keeps its weights, with --config.init_from_new_modules for modules "
          "added since).") from e
    return restored["state"], restored["meta"]

  def _set_aside(self, steps: Sequence[int]) -> None:
    """Renames step directories out of orbax's view and reopens the manager on what is left."""
    self._manager.close()
    if jax.process_index() == 0:
      for step in steps:
        os.replace(os.path.join(self.directory, str(step)),
                   os.path.join(self.directory, f"unreadable-{step}"))
    self._manager = self._open()

  def close(self) -> None:
    self._manager.close()


def _first_line(error: BaseException) -> str:
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return lines[0][:300] if lines else ""
