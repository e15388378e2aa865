"""A pixel probe for the moving-shapes world: reads a clip's attributes back from its pixels.

Given a video `(T, H, W, 3)` in [-1, 1] at any of the toy cascade's resolutions, the probe recovers
the background color class, a per-frame object mask, the centroid track and the motion direction,
the object's color and shape class, and (given a source video) how well the uncaptioned background
texture was preserved. That turns the Dreamix claims into numbers without CLIP: alignment (does the
output show the prompt's attributes?) and fidelity (did what the prompt did not change survive?).

Every decision is a median or a majority over frames, so blurry or noisy generated videos still
read correctly; everything is vectorised numpy over a batch.

Method:
- background: per-channel median of the border pixels over all frames, nearest palette color;
- object color: per frame, mean of pixels far (> `_CORE_DISTANCE`) from the background; median
  over frames; nearest palette color;
- coverage: each pixel's position on the background → object color segment (clipped to [0, 1]),
  kept only on and next to the pixels more than half covered (the mask, without noise specks
  away from any solid 3 × 3 block), so texture and noise elsewhere never count;
- centroid: coverage-weighted, NaN in frames with less than `_MIN_AREA_FRACTION` of the frame;
- motion: median centroid of the last third minus that of the first third, scaled to the whole
  clip, in frame heights; below `_STILL_THRESHOLD` it is `still`;
- shape: the triangle (apex up) is the only shape whose mass is vertically skewed (skewness of the
  row profile: −0.57 for the triangle, 0 for circle and square; scale free, kept under blur);
  square and circle differ in the fill of the bounding box, area / (soft width × soft height)
  (1 against π/4); both are medians over frames;
- texture correlation: Pearson correlation of the static high-pass background residuals (pixel
  minus its 3 × 3 mean, averaged over the frames where the pixel is well clear of the object) of
  the two videos, over pixels that are background in both.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Mapping

import numpy as np

from dreamix_jax.shapes import world as shapes

_CORE_DISTANCE = 0.5  # Euclidean RGB distance in [-1, 1] units; palette pairs are ≥ 1.0 apart.
_MIN_AREA_FRACTION = 0.002
_STILL_THRESHOLD = 0.12  # Frame heights over the clip; true motions travel ≥ 0.32.
# Shape thresholds, placed between the classes' values on clean clips (square fill 1, circle
# π/4 ≈ 0.785; skew 0 against −0.566) and moved toward the side that blur erodes: blurred small
# squares lose fill (~0.88 at 24 × 40 after a [1, 2, 1] blur), blurred triangles lose skew (~−0.3).
_FILL_SQUARE_CIRCLE = 0.84
_TRIANGLE_SKEW = -0.15
_TEXTURE_CLEARANCE = 2  # Pixels around the object excluded from the texture residual.

_BACKGROUND_PALETTE = np.array([shapes.BACKGROUND_RGB[b] for b in shapes.BACKGROUNDS],
                               np.float32) * 2 - 1
_COLOR_PALETTE = np.array([shapes.COLOR_RGB[c] for c in shapes.COLORS], np.float32) * 2 - 1


@dataclasses.dataclass(frozen=True)
class ProbeResult:
  """What the probe read from one video `(T, H, W, 3)`.

  Attributes:
    background: background color class.
    background_rgb: `(3,)` estimated background color in [-1, 1].
    color: object color class, or None when no frame shows an object.
    color_rgb: `(3,)` estimated object color (NaN without an object).
    shape: shape class, or None when no frame shows an object.
    fill_ratio: median over frames of area / bounding-box area (NaN without an object).
    vertical_skew: median over frames of the skewness of the object's row profile (NaN without
      an object).
    masks: `(T, H, W)` bool, pixels more than half covered by the object.
    centroids: `(T, 2)` coverage-weighted object center (x, y) in pixels, in the renderer's
      continuous coordinates (pixel i spans [i, i + 1]); NaN in frames without an object.
    displacement: `(2,)` (dx, dy) over the whole clip in frame heights (NaN if < 2 frames show
      the object).
    motion: motion class (`still` when the object moves less than `_STILL_THRESHOLD`), or None.
    texture_correlation: correlation of the background texture with the source video's (NaN
      when no source was given).
  """

  background: str
  background_rgb: np.ndarray
  color: str | None
  color_rgb: np.ndarray
  shape: str | None
  fill_ratio: float
  vertical_skew: float
  masks: np.ndarray
  centroids: np.ndarray
  displacement: np.ndarray
  motion: str | None
  texture_correlation: float

  def attributes(self) -> dict[str, str | None]:
    """The four captioned attributes as read from pixels."""
    return {"shape": self.shape, "color": self.color, "background": self.background,
            "motion": self.motion}

  def matches(self, attrs: shapes.Attributes | Mapping[str, str]) -> dict[str, bool]:
    """Per captioned attribute, whether the video shows the value in `attrs`.

    `attrs` is a `shapes.Attributes` (e.g. from `shapes.parse_caption(prompt)`) or a mapping
    with keys shape, color, background, motion.
    """
    if isinstance(attrs, shapes.Attributes):
      attrs = dataclasses.asdict(attrs.discrete())
    read = self.attributes()
    return {key: read[key] == attrs[key] for key in read}


def _nearest(rgb: np.ndarray, palette: np.ndarray) -> np.ndarray:
  """Index of the nearest palette row for each `(..., 3)` color."""
  return np.argmin(((rgb[..., None, :] - palette) ** 2).sum(-1), axis=-1)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
  """Square dilation of `(..., H, W)` bool masks."""
  out = mask.copy()
  for _ in range(radius):
    grown = out.copy()
    grown[..., 1:, :] |= out[..., :-1, :]
    grown[..., :-1, :] |= out[..., 1:, :]
    grown[..., :, 1:] |= grown[..., :, :-1]
    grown[..., :, :-1] |= out[..., :, 1:]
    out = grown
  return out


def _despeckle(mask: np.ndarray) -> np.ndarray:
  """Keeps the mask pixels within 2 pixels of a 3 × 3 block of the mask (drops noise specks)."""
  opened = _dilate(~_dilate(~mask, 1), 1)
  return mask & _dilate(opened, 2)


def _high_pass(gray: np.ndarray) -> np.ndarray:
  """`(..., H, W)` minus its 3 × 3 box mean (edge-replicated)."""
  pad = [(0, 0)] * (gray.ndim - 2) + [(1, 1), (1, 1)]
  padded = np.pad(gray, pad, mode="edge")
  h, w = gray.shape[-2:]
  box = sum(padded[..., i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0
  return gray - box


def _static_residual(videos: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Static texture estimate `(B, H, W)` and where it is defined `(B, H, W)` bool."""
  residual = _high_pass(videos.mean(-1))  # (B, T, H, W)
  clear = ~_dilate(masks, _TEXTURE_CLEARANCE)
  count = clear.sum(1)
  total = np.where(clear, residual, 0.0).sum(1)
  return total / np.maximum(count, 1), count > 0


def texture_correlation_batch(videos: np.ndarray, sources: np.ndarray,
                              masks: np.ndarray | None = None,
                              source_masks: np.ndarray | None = None) -> np.ndarray:
  """Correlation `(B,)` of the background texture of `videos` with that of `sources`.

  Args:
    videos, sources: `(B, T, H, W, 3)` in [-1, 1] (frame counts may differ, sizes may not).
    masks, source_masks: `(B, T, H, W)` object masks; probed when not given.
  """
  videos, sources = np.asarray(videos, np.float32), np.asarray(sources, np.float32)
  if videos.shape[0] != sources.shape[0] or videos.shape[2:] != sources.shape[2:]:
    raise ValueError(f"videos {videos.shape} and sources {sources.shape} must agree in batch "
                     "size, height, width and channels.")
  if masks is None:
    masks = _probe_arrays(videos)["masks"]
  if source_masks is None:
    source_masks = _probe_arrays(sources)["masks"]
  a, a_valid = _static_residual(videos, masks)
  b, b_valid = _static_residual(sources, source_masks)
  valid = a_valid & b_valid
  n = np.maximum(valid.sum((1, 2)), 1)
  a_mean = np.where(valid, a, 0).sum((1, 2)) / n
  b_mean = np.where(valid, b, 0).sum((1, 2)) / n
  a = np.where(valid, a - a_mean[:, None, None], 0)
  b = np.where(valid, b - b_mean[:, None, None], 0)
  denominator = np.sqrt((a * a).sum((1, 2)) * (b * b).sum((1, 2)))
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(denominator > 0, (a * b).sum((1, 2)) / denominator, np.nan)


def _probe_arrays(videos: np.ndarray) -> dict[str, np.ndarray]:
  """The probe's per-video readings as batched arrays (see `ProbeResult`)."""
  b, t, h, w, _ = videos.shape
  border = np.concatenate([
      videos[:, :, 0].reshape(b, -1, 3), videos[:, :, -1].reshape(b, -1, 3),
      videos[:, :, 1:-1, 0].reshape(b, -1, 3), videos[:, :, 1:-1, -1].reshape(b, -1, 3)], 1)
  background_rgb = np.median(border, axis=1)  # (B, 3)
  offset = videos - background_rgb[:, None, None, None, :]  # (B, T, H, W, 3)
  core = _despeckle(np.sqrt((offset * offset).sum(-1)) > _CORE_DISTANCE)  # (B, T, H, W)

  core_count = core.sum((2, 3))  # (B, T)
  frame_colors = (np.where(core[..., None], videos, 0).sum((2, 3))
                  / np.maximum(core_count, 1)[..., None])  # (B, T, 3)
  frame_colors[core_count == 0] = np.nan
  with warnings.catch_warnings():  # All-NaN slices (no object) are expected: they give NaN.
    warnings.simplefilter("ignore", RuntimeWarning)
    color_rgb = np.nanmedian(frame_colors, axis=1)  # (B, 3)
  has_object = ~np.isnan(color_rgb[:, 0])
  axis = np.where(has_object[:, None], color_rgb - background_rgb, 1.0)  # (B, 3)
  alpha = np.einsum("bthwc,bc->bthw", offset, axis / (axis * axis).sum(-1, keepdims=True))
  alpha = np.clip(alpha, 0.0, 1.0)
  masks = _despeckle(alpha > 0.5) & has_object[:, None, None, None]
  coverage = np.where(_dilate(masks, 1), alpha, 0.0)  # (B, T, H, W)

  area = coverage.sum((2, 3))  # (B, T)
  present = area >= _MIN_AREA_FRACTION * h * w
  ys = np.arange(h, dtype=np.float32) + 0.5  # Pixel i spans [i, i + 1], as in the renderer.
  xs = np.arange(w, dtype=np.float32) + 0.5
  safe_area = np.where(present, area, 1.0)
  cx = (coverage.sum(2) * xs).sum(-1) / safe_area
  cy = (coverage.sum(3) * ys).sum(-1) / safe_area
  centroids = np.where(present[..., None], np.stack([cx, cy], -1), np.nan)  # (B, T, 2)

  soft_width = coverage.max(2).sum(-1)  # (B, T)
  soft_height = coverage.max(3).sum(-1)
  fill = np.where(present, area / np.maximum(soft_width * soft_height, 1e-6), np.nan)
  row_offsets = ys - cy[..., None]  # (B, T, H)
  row_profile = coverage.sum(3)
  row_var = (row_profile * row_offsets**2).sum(-1) / safe_area
  skew = np.where(present, (row_profile * row_offsets**3).sum(-1) / safe_area
                  / np.maximum(row_var, 1e-6)**1.5, np.nan)

  third = max(t // 3, 1)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    fill_ratio = np.nanmedian(fill, axis=1)  # (B,)
    vertical_skew = np.nanmedian(skew, axis=1)
    first = np.nanmedian(centroids[:, :third], axis=1)
    last = np.nanmedian(centroids[:, t - third:], axis=1)
  span = (t - third) if t > 1 else 1  # Frames between the centers of the first and last thirds.
  displacement = (last - first) * ((t - 1) / span) / h  # (B, 2), frame heights.
  return {
      "background_rgb": background_rgb, "color_rgb": color_rgb, "has_object": has_object,
      "masks": masks, "centroids": centroids, "fill_ratio": fill_ratio,
      "vertical_skew": vertical_skew,
      "displacement": displacement,
  }


def _motion_class(displacement: np.ndarray) -> str | None:
  if np.isnan(displacement).any():
    return None
  dx, dy = displacement
  if max(abs(dx), abs(dy)) < _STILL_THRESHOLD:
    return "still"
  if abs(dx) >= abs(dy):
    return "right" if dx > 0 else "left"
  return "down" if dy > 0 else "up"


def _shape_class(fill_ratio: float, vertical_skew: float) -> str | None:
  if np.isnan(fill_ratio) or np.isnan(vertical_skew):
    return None
  if vertical_skew < _TRIANGLE_SKEW:
    return "triangle"
  return "square" if fill_ratio >= _FILL_SQUARE_CIRCLE else "circle"


def probe_batch(videos: np.ndarray, sources: np.ndarray | None = None) -> list[ProbeResult]:
  """Probes `(B, T, H, W, 3)` videos in [-1, 1]; `sources` `(B, T', H, W, 3)` adds texture."""
  videos = np.asarray(videos, np.float32)
  if videos.ndim != 5 or videos.shape[-1] != 3:
    raise ValueError(f"probe_batch expects videos of shape (B, T, H, W, 3), got {videos.shape}.")
  if min(videos.shape[2:4]) < 3:
    raise ValueError(f"Frames of {videos.shape[2]}x{videos.shape[3]} are too small to probe.")
  arrays = _probe_arrays(videos)
  if sources is None:
    texture = np.full(videos.shape[0], np.nan)
  else:
    texture = texture_correlation_batch(videos, sources, masks=arrays["masks"])
  backgrounds = _nearest(arrays["background_rgb"], _BACKGROUND_PALETTE)
  colors = _nearest(np.nan_to_num(arrays["color_rgb"]), _COLOR_PALETTE)
  results = []
  for i in range(videos.shape[0]):
    has_object = bool(arrays["has_object"][i])
    results.append(ProbeResult(
        background=shapes.BACKGROUNDS[backgrounds[i]],
        background_rgb=arrays["background_rgb"][i],
        color=shapes.COLORS[colors[i]] if has_object else None,
        color_rgb=arrays["color_rgb"][i],
        shape=_shape_class(float(arrays["fill_ratio"][i]), float(arrays["vertical_skew"][i])),
        fill_ratio=float(arrays["fill_ratio"][i]),
        vertical_skew=float(arrays["vertical_skew"][i]),
        masks=arrays["masks"][i],
        centroids=arrays["centroids"][i],
        displacement=arrays["displacement"][i],
        motion=_motion_class(arrays["displacement"][i]),
        texture_correlation=float(texture[i])))
  return results


def probe(video: np.ndarray, source: np.ndarray | None = None) -> ProbeResult:
  """Probes one video `(T, H, W, 3)` in [-1, 1]; `source` `(T', H, W, 3)` adds texture."""
  video = np.asarray(video)
  if video.ndim != 4:
    raise ValueError(f"probe expects a video of shape (T, H, W, 3), got {video.shape}.")
  return probe_batch(video[None], None if source is None else np.asarray(source)[None])[0]
