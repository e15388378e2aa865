"""The eval job: score a directory of results, or run the moving-shapes ablation benchmark.

  python -m dreamix_jax.main --config=configs/eval.py:outputs=/tmp/dreamix/sweep --workdir=/tmp/eval
  python -m dreamix_jax.main --config=configs/eval.py:benchmark=shapes --workdir=/tmp/ablation
  python -m dreamix_jax.main --config=configs/eval.py:benchmark=text2video --workdir=/tmp/t2v_eval
  python -m dreamix_jax.main --config=configs/eval.py:benchmark=classifier --workdir=/tmp/clf
  python -m dreamix_jax.main --config=configs/eval.py:benchmark=drift --workdir=/tmp/drift
  python -m dreamix_jax.main --config=configs/eval.py:benchmark=caption_fit --workdir=/tmp/fit

Scoring (`config.outputs`): every result folder below the directory (one holding meta.json and
output.mp4, as every sampling job writes) gets a row of `scores.csv` / `scores.md` in the workdir:
- always the temporal distance (`metrics.temporal`: mean RMS difference of consecutive frames;
  lower is stabler);
- the frame-level CLIP score with the prompt when `config.clip_dir` holds a CLIP model;
- temporal LPIPS when `config.lpips_weights` is a converted LPIPS file (tools/convert_lpips);
- when the prompt is a moving-shapes caption, the probe's readings: an edit (the folder has
  input.mp4) gets alignment, fidelity and success (`shapes.scoring`; the source's attributes
  are probed from input.mp4 unless meta.json names `source_caption`), a text-to-video sample gets
  alignment alone.

Benchmarks (`BENCHMARKS`: name -> a `Benchmark` function in its own module; the job loads the
cascade and the text embedder, the function runs and writes everything else):
`config.benchmark = "shapes"`, the editing ablation (`shapes.ablation`; writes
ablation.csv/.md, ablation_edits.csv and ablation_success[_kept].png); `"text2video"`, test-split
captions sampled and read back by the probe (`shapes.text2video`; writes text2video.csv/.md,
text2video_samples.csv, text2video_confusion_<attribute>.csv/.md and text2video_grid.png);
`"classifier"`, the base stage's denoiser as a zero-shot classifier of each caption attribute on
test clips (`research.caption_classifier`; writes classifier.csv/.md and classifier_clips.csv);
`"drift"`, whether the base stage's prediction from pure noise (the caption's mean video) moves the
way each motion word says, against the world's own mean (`research.mean_drift`; drift.csv/.md);
`"caption_fit"`, how fast a copy of the base stage learns to tie four captions that differ in one
attribute to their four clips from pure noise (`research.caption_fit`; caption_fit.csv/.md).
"""

from __future__ import annotations

import json
import math
import os
from typing import Protocol

import numpy as np
from absl import logging

from dreamix_jax import config_utils
from dreamix_jax.data import report, video as video_io
from dreamix_jax.research import caption_classifier, caption_fit, mean_drift
from dreamix_jax.shapes import ablation, probe, scoring, text2video, world as shapes
from dreamix_jax.metrics import clip as clip_lib
from dreamix_jax.metrics import lpips as lpips_lib
from dreamix_jax.metrics import temporal
from dreamix_jax.jobs import common


class Benchmark(Protocol):
  """What every entry of `BENCHMARKS` is: runs one benchmark on a loaded cascade and writes its
  files into `workdir`; returns {kind: path} of the files written (with at least "table_md").

  `config` is the eval config (each benchmark reads its own section, and `seed`); `cascade` a
  `cascade.Cascade`; `params` {stage name: parameters} of the stages `load_upto` names; `embedder`
  the cascade's text embedder (captions -> (embeddings, mask)); `timer(name)` a context manager
  that times a phase of the run (`jobs.common.Timer`).
  """

  def __call__(self, config, workdir: str, *, cascade, params, embedder,
               timer) -> dict[str, str]:
    ...


BENCHMARKS: dict[str, Benchmark] = {
    "shapes": ablation.run_benchmark,
    "text2video": text2video.run_benchmark,
    "classifier": caption_classifier.run_benchmark,
    "drift": mean_drift.run_benchmark,
    "caption_fit": caption_fit.run_benchmark,
}
# The last stage a benchmark needs loaded ("": every stage); benchmarks not named here read the
# base stage alone.
_LOAD_UPTO = {"shapes": lambda config: config.ablation.upto,
              "text2video": lambda config: config.text2video.upto}
# The leading columns of scores.csv (the score columns follow, in first-seen order).
ID_COLUMNS = ("folder", "prompt", "job", "setting", "s")


def run(config, workdir: str) -> dict[str, str]:
  """Runs what the config asks; returns {kind: path} of the files written."""
  if bool(config.outputs) == bool(config.benchmark):
    raise ValueError("Give exactly one of config.outputs (a directory of results to score, "
                     "configs/eval.py:outputs=<dir>) and config.benchmark (configs/eval.py:"
                     f"benchmark=shapes); got outputs={config.outputs!r}, "
                     f"benchmark={config.benchmark!r}.")
  if config.benchmark:
    check_benchmark_config(config)
    os.makedirs(workdir, exist_ok=True)
    return run_benchmark(config, workdir)
  os.makedirs(workdir, exist_ok=True)
  rows = score_folders(config.outputs, clip_dir=config.clip_dir,
                       lpips_weights=config.lpips_weights)
  return write_scores(workdir, rows)


# Per benchmark, the fields that name a stage ("" = the last) and the lists that must not be empty.
_STAGE_FIELDS = {"shapes": ("ablation.upto",), "text2video": ("text2video.upto",)}
_LIST_FIELDS = {"classifier": ("classifier.logsnrs",),
                "drift": ("drift.logsnrs",), "caption_fit": ("caption_fit.attributes",)}


def check_benchmark_config(config) -> None:
  """Checks the fields `config.benchmark` reads that name a stage or list what to run, before
  anything is loaded or written; raises a ValueError naming the field."""
  if config.benchmark not in BENCHMARKS:
    raise ValueError(f"Unknown benchmark {config.benchmark!r}; use one of {tuple(BENCHMARKS)}.")
  for name in _STAGE_FIELDS.get(config.benchmark, ()):
    config_utils.check_stage(name, config_utils.field(config, name), config.cascade.order,
                             empty_means="the last stage")
  for name in _LIST_FIELDS.get(config.benchmark, ()):
    config_utils.check_not_empty(name, config_utils.field(config, name))


def load_upto(config) -> str:
  """The last stage `config.benchmark` needs loaded ("": every stage)."""
  return _LOAD_UPTO.get(config.benchmark, lambda config: config.cascade.order[0])(config)


def run_benchmark(config, workdir: str) -> dict[str, str]:
  """Loads what `config.benchmark` needs and runs its `BENCHMARKS` entry; returns its paths.
  `config` has passed `check_benchmark_config`."""
  benchmark = BENCHMARKS[config.benchmark]
  timer = common.Timer()
  with timer("load"):
    cascade, params = common.load_cascade(config, upto=load_upto(config))
    embedder = common.make_embedder(config, cascade)
  paths = benchmark(config, workdir, cascade=cascade, params=params, embedder=embedder,
                    timer=timer)
  logging.info("%s benchmark written to %s (timings %s)", config.benchmark, paths["table_md"],
               timer.phases)
  return paths


def find_result_folders(root: str) -> list[str]:
  """Folders below `root` (itself included) holding meta.json and output.mp4, sorted."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f"config.outputs={root!r} is not a directory; point it at a job's "
                            "output folder, e.g. <workdir>/edit/<name>.")
  found = [d for d, _, files in os.walk(root) if {"meta.json", "output.mp4"} <= set(files)]
  if not found:
    raise ValueError(f"No result folders (with meta.json and output.mp4) under {root!r}.")
  return sorted(found)


def _read(path: str, shape=None) -> np.ndarray:
  """A result video at its stored size: (T, H, W, 3) in [-1, 1]."""
  if shape is None:
    info = video_io.probe_video(path)
    shape = (info.num_frames, info.height, info.width)
  return video_io.read_video(path, int(shape[0]), int(shape[1]), int(shape[2]))


def score_folders(root: str, *, clip_dir: str = "", lpips_weights: str = "") -> list[dict]:
  """One row of scores per result folder under `root` (see the module docstring)."""
  clip_scorer = lpips_model = None
  if clip_dir:
    clip_scorer = clip_lib.ClipScorer(clip_dir)
  if lpips_weights:
    lpips_model = lpips_lib.LpipsModel.from_safetensors(lpips_weights)
  rows = []
  for folder in find_result_folders(root):
    with open(os.path.join(folder, "meta.json"), encoding="utf-8") as f:
      meta = json.load(f)
    if "prompt" not in meta:
      raise ValueError(f"{folder}/meta.json has no prompt; it was not written by a dreamix job.")
    output = _read(os.path.join(folder, "output.mp4"), meta.get("output_shape"))
    fps = float(meta.get("fps") or video_io.probe_video(os.path.join(folder, "output.mp4")).fps)
    prompt = meta["prompt"]
    row = dict(folder=os.path.relpath(folder, root) if folder != root else ".", prompt=prompt,
               job=meta.get("job", ""), setting=meta.get("setting", ""), s=meta.get("s", ""),
               temporal_distance=temporal.temporal_distance(output))
    if clip_scorer is not None:
      row["clip_score"] = clip_scorer.score(output, prompt, fps)
    if lpips_model is not None:
      row["temporal_lpips"] = lpips_lib.temporal_lpips(output, lpips_model, fps)
    row.update(_probe_scores(folder, meta, output))
    rows.append(row)
    logging.info("scored %s", folder)
  return rows


def _probe_scores(folder: str, meta: dict, output: np.ndarray) -> dict:
  """The probe's columns for a moving-shapes prompt; {} for any other prompt."""
  try:
    target = shapes.parse_caption(meta["prompt"])
  except ValueError:
    return {}
  input_path = os.path.join(folder, "input.mp4")
  if not os.path.exists(input_path):
    return dict(alignment=float(all(probe.probe(output).matches(target).values())))
  source = _read(input_path, output.shape)
  source_attributes = (shapes.parse_caption(meta["source_caption"])
                       if meta.get("source_caption") else None)
  try:
    scores = scoring.edit_scores(output, source, target, source_attributes)
  except ValueError as e:  # the input is not a moving-shapes clip
    logging.warning("%s: no probe scores (%s)", folder, e)
    return {}
  return scores.row()


def write_scores(workdir: str, rows: list[dict]) -> dict[str, str]:
  """scores.csv (one row per result) and scores.md (the same, then the mean of each score)."""
  columns = list(ID_COLUMNS) + [c for c in report.columns_of(rows) if c not in ID_COLUMNS]
  numeric = [c for c in columns if c not in ID_COLUMNS
             and all(isinstance(r.get(c, math.nan), float) for r in rows)]
  mean = dict(folder="mean", **{c: float(np.nanmean([r.get(c, math.nan) for r in rows]))
                                for c in numeric})
  paths = {"csv": os.path.join(workdir, "scores.csv"), "md": os.path.join(workdir, "scores.md")}
  report.write_text(paths["csv"], report.csv_text(rows, columns))
  report.write_text(paths["md"], report.markdown_text(rows + [mean], columns,
                                                      title=f"Scores of {len(rows)} results"))
  return paths
