"""Probe-based edit scores in the moving-shapes world: alignment, fidelity, temporal stability.

The paper's raters judged alignment (does the edit match the text?), fidelity (are the unedited
details of the original kept?) and quality; in the moving-shapes world the pixel probe
(`shapes.probe`) answers the first two exactly:

- alignment: every attribute the prompt names (shape, color, background, motion via
  `shapes.parse_caption`) is what the probe reads from the output;
- fidelity: what the prompt did not change survived: the attributes it keeps from the source, the
  object's start position (first-frame centroid within `START_TOLERANCE` frame heights), its size
  (bounding-box side within a factor `SIZE_TOLERANCE`) and the uncaptioned background texture
  (correlation with the source's at least `TEXTURE_THRESHOLD`);
- temporal stability: the temporal distance of the output (`metrics.temporal`: RMS difference of
  consecutive frames; lower is stabler), a pixel-space stand-in for temporal LPIPS;
- success: alignment and fidelity both hold (the paper's "all scores above 2.5");
- kept, success_kept: fidelity and success without the texture criterion (the unchanged attributes,
  start position and size only). The texture is the finest detail of the world and the first to go
  when an edit re-generates the background, so the pair separates "the scene was kept" from "its
  fine detail was kept".

Size is the bounding-box side rather than the area so that a shape edit (a circle and a square of
one size differ in area by 4/π) does not count as a size change.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from dreamix_jax.metrics import temporal
from dreamix_jax.shapes import probe as probe_lib
from dreamix_jax.shapes import world as shapes

ATTRIBUTES = ("shape", "color", "background", "motion")
START_TOLERANCE = 0.15  # frame heights
SIZE_TOLERANCE = 1.3  # largest ratio between output and source object sizes
TEXTURE_THRESHOLD = 0.5


@dataclasses.dataclass(frozen=True)
class EditScores:
  """Probe scores of one edited video against its prompt and source (see the module docstring).

  `kept`: fidelity without the texture criterion.
  `changed`: the attributes the prompt changes from the source; `attributes_ok`: per attribute,
  whether the output shows the prompt's value; `start_shift`: first-frame centroid distance in
  frame heights; `size_ratio`: output / source object size; `texture_correlation`: background
  texture correlation with the source. NaN where the output shows no object.
  """

  alignment: bool
  fidelity: bool
  kept: bool
  stability: float
  changed: tuple[str, ...]
  attributes_ok: dict
  start_shift: float
  size_ratio: float
  texture_correlation: float

  @property
  def success(self) -> bool:
    return self.alignment and self.fidelity

  @property
  def success_kept(self) -> bool:
    return self.alignment and self.kept

  def row(self) -> dict:
    """A flat dict for tables: floats for the scores (1.0/0.0 for the booleans)."""
    out = dict(alignment=float(self.alignment), fidelity=float(self.fidelity),
               kept=float(self.kept), stability=self.stability, success=float(self.success),
               success_kept=float(self.success_kept),
               changed="+".join(self.changed) or "none")
    out.update({f"{k}_ok": float(v) for k, v in self.attributes_ok.items()})
    out.update(start_shift=self.start_shift, size_ratio=self.size_ratio,
               texture_correlation=self.texture_correlation)
    return out


def _start(result: probe_lib.ProbeResult) -> np.ndarray:
  """(x, y) centroid of the first frame showing the object, in frame heights (NaN if none)."""
  present = ~np.isnan(result.centroids[:, 0])
  if not present.any():
    return np.full(2, np.nan)
  return result.centroids[np.argmax(present)] / result.masks.shape[1]


def _size(result: probe_lib.ProbeResult) -> float:
  """Median over frames of the object mask's bounding-box side (max of width, height) in frame
  heights; NaN without an object."""
  sides = []
  for mask in result.masks:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size:
      sides.append(max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1))
  return float(np.median(sides)) / result.masks.shape[1] if sides else math.nan


def edit_scores(output: np.ndarray, source: np.ndarray, prompt: str | shapes.Attributes,
                source_attributes: shapes.Attributes | None = None) -> EditScores:
  """Scores an edit of a moving-shapes clip.

  Args:
    output: the edited video (T, H, W, 3) in [-1, 1].
    source: the input video (T', H, W, 3) in [-1, 1], the same height and width as `output`.
    prompt: the edit prompt (moving-shapes grammar) or its attributes.
    source_attributes: the source's captioned attributes; read from `source` by the probe when
      not given.
  """
  target = shapes.parse_caption(prompt) if isinstance(prompt, str) else prompt.discrete()
  output, source = np.asarray(output, np.float32), np.asarray(source, np.float32)
  if output.shape[1:] != source.shape[1:]:
    raise ValueError(f"The output {output.shape} and its source {source.shape} must have the same "
                     "frame size to be compared; bring the source to the output's resolution.")
  result = probe_lib.probe(output, source)
  source_result = probe_lib.probe(source)
  if source_attributes is None:
    read = source_result.attributes()
    if None in read.values():
      raise ValueError("The probe finds no object in the source video: it is not a moving-shapes "
                       "clip; give its attributes explicitly.")
    source_attributes = shapes.Attributes(**read)
  source_attributes = source_attributes.discrete()
  wanted = dataclasses.asdict(target)
  kept = dataclasses.asdict(source_attributes)
  changed = tuple(k for k in ATTRIBUTES if wanted[k] != kept[k])
  matches = result.matches(target)
  attributes_ok = {k: bool(matches[k]) for k in ATTRIBUTES}
  start_shift = float(np.linalg.norm(_start(result) - _start(source_result)))
  size_ratio = _size(result) / _size(source_result)
  texture = result.texture_correlation
  kept = (all(attributes_ok[k] for k in ATTRIBUTES if k not in changed)
          and start_shift <= START_TOLERANCE
          and 1 / SIZE_TOLERANCE <= size_ratio <= SIZE_TOLERANCE)
  return EditScores(alignment=all(attributes_ok.values()),
                    fidelity=bool(kept and texture >= TEXTURE_THRESHOLD), kept=bool(kept),
                    stability=temporal.temporal_distance(output), changed=changed,
                    attributes_ok=attributes_ok, start_shift=start_shift, size_ratio=size_ratio,
                    texture_correlation=float(texture))
