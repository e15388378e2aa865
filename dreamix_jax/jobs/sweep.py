"""The hyperparameter sweep of the paper's raters (App. F.1): one input, a grid of (finetuning, s).

  python -m dreamix_jax.main --config=configs/sweep.py --workdir=/tmp/dreamix
  python -m dreamix_jax.main --config=configs/sweep.py:runlocal --workdir=/tmp/sweep  # tiny, random

A setting is (mode, finetuning steps, noise level s): mode `none` edits with the pretrained cascade,
`video` finetunes with α = 1, `mixed` with α = 0.35 (`config.alphas`). Each mode is finetuned once,
to its largest step count, and its parameters are read at every smaller count on the way
(`dreamix.finetune_steps`); each finetuned state edits for every s the grid pairs with it and for
every prompt × seed. `plan` is that schedule as a pure function.

Outputs in `<workdir>/sweep/<name>/`: per prompt × seed a folder `<k>_<prompt>_seed<n>/` holding one
result folder per setting (`<j>_<setting>/`: output.mp4, input.mp4, output.gif, comparison.png,
meta.json) and `grid.png` (the input, then one row per setting, frames side by side, labelled);
`input.mp4` and `index.html`, which embeds every video under its label.
"""

from __future__ import annotations

import collections
import dataclasses
import html
import os
from typing import Mapping, Sequence

import jax.numpy as jnp

from dreamix_jax.data import outputs
from dreamix_jax.data import video as video_io
from dreamix_jax.dreamix import corrupt, finetune, finetune_steps
from dreamix_jax.data import report
from dreamix_jax.jobs import common, edit

NO_FINETUNING = "none"

# Paper App. F.1: (mode, finetuning steps, s).
PAPER_GRID = (
    ("none", 0, 0.4), ("none", 0, 0.7), ("none", 0, 0.8), ("none", 0, 0.85),
    ("video", 64, 0.8), ("video", 64, 0.9), ("video", 64, 0.95), ("video", 64, 0.98),
    ("mixed", 150, 0.98), ("mixed", 200, 0.98), ("mixed", 200, 1.0), ("mixed", 300, 1.0),
)
PAPER_ALPHAS = {"video": 1.0, "mixed": 0.35}


@dataclasses.dataclass(frozen=True)
class Setting:
  """One cell of the grid: finetuning `mode` (`none` or a key of the α table) for `steps` steps,
  then editing at noise level `s`."""

  mode: str
  steps: int
  s: float

  def label(self, alpha: float | None) -> str:
    if self.mode == NO_FINETUNING:
      return f"no finetuning, s={self.s:g}"
    return f"{self.mode} (a={alpha:g}) {self.steps} steps, s={self.s:g}"

  @property
  def slug(self) -> str:
    if self.mode == NO_FINETUNING:
      return f"none_s{self.s:g}"
    return f"{self.mode}_{self.steps}steps_s{self.s:g}"


@dataclasses.dataclass(frozen=True)
class FinetuneRun:
  """One finetune of the sweep: `mode` at α = `alpha` (None without finetuning), read at each of
  `steps` (ascending); `noise_levels[k]` are the s values edited with the k-step parameters."""

  mode: str
  alpha: float | None
  steps: tuple[int, ...]
  noise_levels: Mapping[int, tuple[float, ...]]


def parse_settings(grid: Sequence[Sequence], alphas: Mapping[str, float]) -> list[Setting]:
  """`((mode, steps, s), ...)` -> Settings, checked: known modes, steps 0 exactly without
  finetuning and ≥ 1 with it, s in [0, 1], no duplicates."""
  settings = []
  for entry in grid:
    if len(entry) != 3:
      raise ValueError(f"Sweep setting {tuple(entry)!r} must be (mode, steps, s), e.g. "
                       "('mixed', 150, 0.98).")
    mode, steps, s = str(entry[0]), int(entry[1]), corrupt.check_noise_level(float(entry[2]))
    if mode != NO_FINETUNING and mode not in alphas:
      raise ValueError(f"Sweep setting {tuple(entry)!r}: unknown mode {mode!r}; use "
                       f"{NO_FINETUNING!r} or one of config.alphas {sorted(alphas)}.")
    if (mode == NO_FINETUNING) != (steps == 0) or steps < 0:
      raise ValueError(f"Sweep setting {tuple(entry)!r}: mode {NO_FINETUNING!r} takes 0 steps and "
                       "a finetuning mode at least 1.")
    settings.append(Setting(mode, steps, s))
  duplicates = [s for s, n in collections.Counter(settings).items() if n > 1]
  if duplicates:
    raise ValueError(f"Sweep settings repeat {duplicates}; list each (mode, steps, s) once.")
  if not settings:
    raise ValueError("The sweep has no settings: set config.settings.")
  return settings


def plan(settings: Sequence[Setting], alphas: Mapping[str, float]) -> list[FinetuneRun]:
  """Which finetunes run and which s values share each finetuned state.

  One run per mode (in order of first appearance), read at the mode's distinct step counts; every
  setting of that mode and step count edits with the same parameters.
  """
  by_mode: dict[str, dict[int, list[float]]] = {}
  for setting in settings:
    levels = by_mode.setdefault(setting.mode, {}).setdefault(setting.steps, [])
    if setting.s not in levels:
      levels.append(setting.s)
  return [FinetuneRun(mode=mode, alpha=None if mode == NO_FINETUNING else float(alphas[mode]),
                      steps=tuple(sorted(steps)),
                      noise_levels={k: tuple(steps[k]) for k in sorted(steps)})
          for mode, steps in by_mode.items()]


def run(config, workdir: str) -> list[str]:
  """Runs the sweep; returns the result folders in the order they were made."""
  alphas = dict(config.alphas)
  settings = parse_settings(config.settings, alphas)
  runs = plan(settings, alphas)
  if not config.prompts:
    raise ValueError("No prompts given: set config.prompts.")
  timer = common.Timer()
  with timer("load"):
    cascade, params = common.load_cascade(config)
    embedder = common.make_embedder(config, cascade)
  top = cascade.stage(finetune.top_finetune_stage(cascade, config.finetune))
  with timer("read_input"):
    video = video_io.read_video(config.input, top.frames, top.height, top.width,
                                fps=top.fps)[None]
  out_root = common.output_dir(workdir, "sweep", config.name, config.overwrite)
  base_view = corrupt.to_stage(cascade, jnp.asarray(video), top.name, cascade.names[0])
  input_at_output = edit.input_at_output_resolution(cascade, video, top.name)
  fps = cascade.stages[-1].fps
  outputs.write_mp4(os.path.join(out_root, "input.mp4"), input_at_output, fps)
  text, mask = embedder(list(config.prompts))
  t_star, t_star_mask = embedder([config.finetune.prompt])
  cases = [(i, prompt, seed) for i, prompt in enumerate(config.prompts) for seed in config.seeds]
  case_dirs = {(i, seed): os.path.join(out_root, f"{i:03d}_{common.slug(prompt)}_seed{seed}")
               for i, prompt, seed in cases}
  order = {setting: j for j, setting in enumerate(settings)}
  videos: dict[tuple, dict[Setting, object]] = collections.defaultdict(dict)
  folders = []
  for finetune_run in runs:
    if finetune_run.alpha is None:
      states = [(0, params)]
    else:
      cfg = config.finetune.copy_and_resolve_references()
      with cfg.unlocked():
        cfg.alpha = finetune_run.alpha
      states = finetune_steps.finetune_at_steps(cascade, params, video, t_star, t_star_mask, cfg,
                                                finetune_run.steps)
    for steps, tuned in _timed(states, timer, f"finetune_{finetune_run.mode}"):
      for s in finetune_run.noise_levels[steps]:
        setting = Setting(finetune_run.mode, steps, s)
        label = setting.label(finetune_run.alpha)
        for i, prompt, seed in cases:
          with timer("sample"):
            out = edit.edit_video(cascade, tuned, base_view, text[i:i + 1], mask[i:i + 1], s, seed)
          folder = os.path.join(case_dirs[i, seed], f"{order[setting]:02d}_{setting.slug}")
          meta = dict(job="sweep", setting=label, mode=setting.mode, alpha=finetune_run.alpha,
                      finetune_steps=steps, s=s, input=config.input, prompt=prompt, seed=seed,
                      checkpoint=config.checkpoint, finetune=config.finetune.to_dict(),
                      output_shape=list(out.shape), fps=fps, timings=dict(timer.phases))
          common.write_result(folder, out, fps, meta, input_video=input_at_output)
          videos[i, seed][setting] = (folder, out)
          folders.append(folder)
  for i, prompt, seed in cases:
    rows = [input_at_output] + [videos[i, seed][s][1] for s in settings]
    labels = ["input"] + [s.label(alphas.get(s.mode)) for s in settings]
    outputs.write_comparison_png(os.path.join(case_dirs[i, seed], "grid.png"), rows, labels)
  report.write_text(os.path.join(out_root, "index.html"),
                    _index_html(out_root, config.input, cases, case_dirs, settings, alphas, videos))
  return folders


def _timed(iterable, timer, name):
  """Yields from `iterable`, timing the work of producing each item as phase `name`."""
  iterator = iter(iterable)
  while True:
    with timer(name):
      item = next(iterator, None)
    if item is None:
      return
    yield item


def _index_html(out_root, source, cases, case_dirs, settings, alphas, videos) -> str:
  """A page with, per prompt × seed, the grid png and every video under its setting's label."""
  rel = lambda path: html.escape(os.path.relpath(path, out_root))
  cell = lambda src, label: (f'<figure><video src="{src}" autoplay loop muted playsinline '
                             f'controls></video><figcaption>{html.escape(label)}</figcaption>'
                             "</figure>")
  parts = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8"><title>Dreamix sweep</title>',
           "<style>figure{display:inline-block;margin:4px}video{width:240px}"
           "figcaption{font:12px sans-serif}</style></head><body>",
           f"<h1>Dreamix sweep of {html.escape(str(source))}</h1>",
           cell("input.mp4", "input")]
  for i, prompt, seed in cases:
    parts.append(f"<h2>{html.escape(prompt)} (seed {seed})</h2>")
    parts.append(f'<img src="{rel(os.path.join(case_dirs[i, seed], "grid.png"))}" '
                 f'alt="grid of {html.escape(prompt)}">')
    parts.append("<div>" + "".join(
        cell(rel(os.path.join(videos[i, seed][s][0], "output.mp4")), s.label(alphas.get(s.mode)))
        for s in settings) + "</div>")
  parts.append("</body></html>")
  return "\n".join(parts) + "\n"
