"""The hyperparameter sweep of the paper's raters (App. F.1) as data: which finetunes to run and
which noise levels share each finetuned state.

A setting is (mode, finetuning steps, noise level s): mode `none` edits with the pretrained cascade,
`video` finetunes with α = 1, `mixed` with α = 0.35 (`PAPER_ALPHAS`, overridable). Each mode is
finetuned once, to its largest step count, and its parameters are read at every smaller count on
the way (`finetune.finetune_at_steps`); `plan` is that schedule as a pure function.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Mapping, Sequence

from dreamix_jax.dreamix import corrupt

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
  finetuning and ≥ 1 with it, s in [0, 1], no duplicates; and the α table: each mode one folder
  name (it names result and checkpoint folders), each α in [0, 1]."""
  for mode, alpha in alphas.items():
    if not re.fullmatch(r"[A-Za-z0-9_-]+", mode) or mode == NO_FINETUNING:
      raise ValueError(f"config.alphas has mode {mode!r}: a mode names result and checkpoint "
                       f"folders, so use letters, digits, '_' or '-', and not {NO_FINETUNING!r}.")
    if not 0.0 <= float(alpha) <= 1.0:
      raise ValueError(f"config.alphas.{mode} must be in [0, 1] (the weight of the full-video "
                       f"loss), got {alpha!r}.")
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
