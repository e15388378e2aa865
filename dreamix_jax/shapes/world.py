"""The "moving shapes" world: a procedural video-text renderer (pure numpy, deterministic by seed).

One flat-colored object (circle, square or triangle) moves in a straight line over a colored
background that carries a fine, static, seeded texture which the caption does not mention. The
caption names the shape, its color, its motion and the background color, so a pixel probe
(`dreamix_jax.shapes.probe`) can check whether a generated or edited video matches a prompt,
and whether uncaptioned detail (the texture) survived an edit.

Geometry lives on a reference canvas of `REF_FRAMES × REF_HEIGHT × REF_WIDTH` (32 × 48 × 80, the
top stage of the toy cascade): positions, sizes and speeds are in reference pixels and reference
frames, and `render` scales them to the requested resolution. Frame `t` of a clip rendered with
`frames` frames shows reference time `t · REF_FRAMES / frames`, so rendering 16 frames shows the
same instants as keeping every second frame of a 32-frame clip (what `derive` does).

Anti-aliasing is scanline supersampling: each pixel row is split into `_SUBROWS` strips, each
strip's vertical overlap with the object's bounding box is exact, and within a strip the object's
horizontal extent is intersected exactly with every pixel column. Axis-aligned squares are
therefore rendered with exact area coverage, circles and triangles to within a strip's error.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping, Sequence

import numpy as np

SHAPES = ("circle", "square", "triangle")
COLORS = ("red", "green", "blue", "yellow", "white")
BACKGROUNDS = ("black", "gray", "purple")
MOTIONS = ("left", "right", "up", "down", "still")
# Every captioned attribute and its values, in caption-table order.
VOCABULARIES = {"color": COLORS, "shape": SHAPES, "motion": MOTIONS, "background": BACKGROUNDS}

# RGB in [0, 1]; every object color is at least 0.5 away (Euclidean) from every background color.
COLOR_RGB = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.8, 0.2),
    "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.9, 0.1),
    "white": (0.95, 0.95, 0.95),
}
BACKGROUND_RGB = {
    "black": (0.06, 0.06, 0.06),
    "gray": (0.5, 0.5, 0.5),
    "purple": (0.45, 0.1, 0.55),
}
# Unit direction of each motion in image coordinates (x to the right, y down).
MOTION_DIRECTION = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "still": (0.0, 0.0),
}

REF_FRAMES, REF_HEIGHT, REF_WIDTH = 32, 48, 80
SIZE_RANGE = (10.0, 18.0)  # Object bounding-box side, reference pixels.
SPEED_RANGE = (0.5, 1.2)  # Reference pixels per reference frame.
MARGIN = 1.0  # Minimum gap between the object and the frame border, reference pixels.
TEXTURE_STD = 0.04  # Texture amplitude in [-1, 1] units, before clipping ...
TEXTURE_MAX = 0.08  # ... to ±TEXTURE_MAX.

_SUBROWS = 4
_CAPTION_RE = re.compile(
    r"^a (?P<color>\w+) (?P<shape>\w+) (?:moving (?P<motion>\w+)|(?P<still>standing still)) "
    r"on a (?P<background>\w+) background$")


def _check_choice(field: str, value: str, vocabulary: Sequence[str]) -> None:
  if value not in vocabulary:
    raise ValueError(f"{field}={value!r} is not in the moving-shapes vocabulary; "
                     f"choose one of {', '.join(vocabulary)}.")


@dataclasses.dataclass(frozen=True)
class Attributes:
  """The captioned (discrete) attributes of a clip."""

  shape: str
  color: str
  background: str
  motion: str

  def __post_init__(self):
    _check_choice("shape", self.shape, SHAPES)
    _check_choice("color", self.color, COLORS)
    _check_choice("background", self.background, BACKGROUNDS)
    _check_choice("motion", self.motion, MOTIONS)

  def discrete(self) -> Attributes:
    """The captioned attributes alone (drops continuous fields of subclasses)."""
    return Attributes(self.shape, self.color, self.background, self.motion)


@dataclasses.dataclass(frozen=True)
class ClipAttributes(Attributes):
  """Everything that determines a clip: captioned attributes plus uncaptioned continuous ones.

  `x`, `y`: object center at reference time 0, reference pixels (x right, y down).
  `size`: bounding-box side, reference pixels. `speed`: reference pixels per reference frame
  (0 for `still`). `texture_seed`: seed of the background texture.
  """

  x: float
  y: float
  size: float
  speed: float
  texture_seed: int


def caption(attrs: Attributes) -> str:
  """The caption of `attrs` (a `ClipAttributes` or bare `Attributes`)."""
  if attrs.motion == "still":
    return f"a {attrs.color} {attrs.shape} standing still on a {attrs.background} background"
  return f"a {attrs.color} {attrs.shape} moving {attrs.motion} on a {attrs.background} background"


def parse_caption(text: str) -> Attributes:
  """Inverse of `caption` (case, surrounding whitespace and a final period are ignored)."""
  normalized = " ".join(text.lower().split()).rstrip(".")
  match = _CAPTION_RE.match(normalized)
  if match is None:
    raise ValueError(
        f"Caption {text!r} is outside the moving-shapes grammar; expected "
        "'a {color} {shape} moving {left|right|up|down} on a {background} background' or "
        "'a {color} {shape} standing still on a {background} background'.")
  motion = "still" if match["still"] else match["motion"]
  return Attributes(shape=match["shape"], color=match["color"],
                    background=match["background"], motion=motion)


def restricted(vocabulary: Mapping[str, Sequence[str]] | None = None) -> dict[str, tuple]:
  """The world's vocabularies with some attributes restricted to the given values (a restricted
  world, e.g. only the motion varies: color=('white',), shape=('square',), background=('black',));
  an attribute that is absent or empty keeps its whole vocabulary."""
  out = dict(VOCABULARIES)
  for attribute, values in (vocabulary or {}).items():
    if attribute not in VOCABULARIES:
      raise ValueError(f"vocabulary names {attribute!r}, not a caption attribute; use "
                       f"{', '.join(VOCABULARIES)}.")
    for value in values:
      _check_choice(attribute, value, VOCABULARIES[attribute])
    if values:
      out[attribute] = tuple(values)
  return out


def sample_attributes(rng: np.random.Generator,
                      vocabulary: Mapping[str, Sequence[str]] | None = None) -> ClipAttributes:
  """Draws a clip uniformly over the vocabulary (`restricted(vocabulary)`: the whole world by
  default, with the same draws); the object stays inside the frame throughout."""
  vocab = restricted(vocabulary)
  shape = vocab["shape"][rng.integers(len(vocab["shape"]))]
  color = vocab["color"][rng.integers(len(vocab["color"]))]
  background = vocab["background"][rng.integers(len(vocab["background"]))]
  motion = vocab["motion"][rng.integers(len(vocab["motion"]))]
  size = float(rng.uniform(*SIZE_RANGE))
  dx, dy = MOTION_DIRECTION[motion]
  travel_frames = REF_FRAMES - 1
  if motion == "still":
    speed = 0.0
  else:
    room = (REF_WIDTH if dx else REF_HEIGHT) - 2 * MARGIN - size
    speed = float(rng.uniform(SPEED_RANGE[0], min(SPEED_RANGE[1], room / travel_frames)))
  travel = speed * travel_frames
  centers = []
  for extent, direction in ((REF_WIDTH, dx), (REF_HEIGHT, dy)):
    low = MARGIN + size / 2 + (travel if direction < 0 else 0.0)
    high = extent - MARGIN - size / 2 - (travel if direction > 0 else 0.0)
    centers.append(float(rng.uniform(low, high)))
  texture_seed = int(rng.integers(2**62))
  return ClipAttributes(shape=shape, color=color, background=background, motion=motion,
                        x=centers[0], y=centers[1], size=size, speed=speed,
                        texture_seed=texture_seed)


# Seed-space ids of the dataset splits: clip i of a split has its own generator, so the splits are
# disjoint and any clip can be drawn without the others.
SPLITS = {"train": 0, "test": 1}


def clip_key(seed: int, split: str, index: int) -> tuple[int, int, int]:
  """The `np.random.default_rng` seed of clip `index` of `split` (`train` or `test`)."""
  if split not in SPLITS:
    raise ValueError(f"Unknown moving_shapes split {split!r}; use one of {list(SPLITS)}.")
  return (seed, SPLITS[split], index)


def clip_attributes(seed: int, split: str, index: int,
                    vocabulary: Mapping[str, Sequence[str]] | None = None) -> ClipAttributes:
  """The attributes of clip `index` of `split` of the moving-shapes world built with `seed` (the
  `moving_shapes` TFDS dataset stores exactly these clips), or of its restricted version."""
  return sample_attributes(np.random.default_rng(clip_key(seed, split, index)), vocabulary)


def _texture(seed: int, height: int, width: int) -> np.ndarray:
  """Static grayscale texture `(H, W)` in [-TEXTURE_MAX, TEXTURE_MAX]: binomially smoothed noise."""
  noise = np.random.default_rng(seed).standard_normal((height, width)).astype(np.float32)
  padded = np.pad(noise, 1, mode="reflect")
  rows = 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]
  smooth = 0.25 * rows[:, :-2] + 0.5 * rows[:, 1:-1] + 0.25 * rows[:, 2:]
  smooth *= TEXTURE_STD / smooth.std()
  return np.clip(smooth, -TEXTURE_MAX, TEXTURE_MAX)


def _coverage(clips: Sequence[ClipAttributes], frames: int, height: int,
              width: int) -> np.ndarray:
  """Object area coverage per pixel, `(B, T, H, W)` in [0, 1]."""
  scale_x, scale_y = width / REF_WIDTH, height / REF_HEIGHT
  times = np.arange(frames, dtype=np.float32) * (REF_FRAMES / frames)  # (T,)
  direction = np.array([MOTION_DIRECTION[c.motion] for c in clips], np.float32)  # (B, 2)
  speed = np.array([c.speed for c in clips], np.float32)[:, None]  # (B, 1)
  cx = (np.array([c.x for c in clips], np.float32)[:, None]
        + direction[:, :1] * speed * times) * scale_x  # (B, T)
  cy = (np.array([c.y for c in clips], np.float32)[:, None]
        + direction[:, 1:] * speed * times) * scale_y
  half = np.array([c.size / 2 for c in clips], np.float32)[:, None]  # (B, 1)
  half_x, half_y = half * scale_x, half * scale_y
  shape_id = np.array([SHAPES.index(c.shape) for c in clips])[:, None, None]  # (B, 1, 1)

  # Strips of 1/_SUBROWS pixel; each strip's overlap with the bounding box, exact.
  strip_lo = np.arange(height * _SUBROWS, dtype=np.float32) / _SUBROWS  # (S,)
  top, bottom = (cy - half_y)[..., None], (cy + half_y)[..., None]  # (B, T, 1)
  lo = np.maximum(strip_lo, top)
  hi = np.minimum(strip_lo + 1.0 / _SUBROWS, bottom)
  weight = np.clip((hi - lo) * _SUBROWS, 0.0, 1.0)  # (B, T, S)
  v = ((lo + hi) / 2 - cy[..., None]) / half_y[..., None]  # In [-1, 1] inside the box.
  v = np.clip(v, -1.0, 1.0)
  half_width = half_x[..., None] * np.where(
      shape_id == SHAPES.index("circle"), np.sqrt(1.0 - v * v),
      np.where(shape_id == SHAPES.index("square"), 1.0, (v + 1.0) / 2))  # (B, T, S)
  left = (cx[..., None] - half_width)[..., None]  # (B, T, S, 1)
  right = (cx[..., None] + half_width)[..., None]
  columns = np.arange(width, dtype=np.float32)
  overlap = np.minimum(right, columns + 1.0)
  overlap -= np.maximum(left, columns)
  np.clip(overlap, 0.0, 1.0, out=overlap)
  overlap *= weight[..., None]
  return overlap.reshape(len(clips), frames, height, _SUBROWS, width).mean(axis=3)


def render_batch(clips: Sequence[ClipAttributes], frames: int = REF_FRAMES,
                 height: int = REF_HEIGHT, width: int = REF_WIDTH) -> np.ndarray:
  """Renders clips to float32 `(B, T, H, W, 3)` in [-1, 1]."""
  if not clips:
    raise ValueError("render_batch needs at least one ClipAttributes.")
  if min(frames, height, width) < 1:
    raise ValueError(f"frames, height and width must be positive, got {frames}, {height}, "
                     f"{width}.")
  alpha = _coverage(clips, frames, height, width)[..., None]  # (B, T, H, W, 1)
  background = np.stack([
      2.0 * np.asarray(BACKGROUND_RGB[c.background], np.float32) - 1.0
      + _texture(c.texture_seed, height, width)[..., None] for c in clips])  # (B, H, W, 3)
  color = np.array([COLOR_RGB[c.color] for c in clips], np.float32) * 2.0 - 1.0  # (B, 3)
  video = background[:, None] * (1.0 - alpha)
  video += alpha * color[:, None, None, None, :]
  return np.clip(video, -1.0, 1.0, out=video)


def render(attrs: ClipAttributes, frames: int = REF_FRAMES, height: int = REF_HEIGHT,
           width: int = REF_WIDTH) -> np.ndarray:
  """Renders one clip to float32 `(T, H, W, 3)` in [-1, 1]."""
  return render_batch([attrs], frames, height, width)[0]


def render_image(attrs: ClipAttributes, height: int = REF_HEIGHT,
                 width: int = REF_WIDTH) -> np.ndarray:
  """The clip's first frame as an image, float32 `(H, W, 3)` in [-1, 1]."""
  return render_batch([attrs], 1, height, width)[0, 0]


def derive(video: np.ndarray, frames: int, height: int, width: int) -> np.ndarray:
  """A lower cascade stage's view: frame skipping and area (block-mean) resize.

  Args:
    video: `(..., T, H, W, C)`.
    frames, height, width: the target sizes; each must divide `T`, `H`, `W` exactly.

  Returns:
    `(..., frames, height, width, C)`: every `T // frames`-th frame starting at frame 0, each
    averaged over `(H // height) × (W // width)` pixel blocks; floating inputs keep their dtype,
    integer inputs give float32.
  """
  video = np.asarray(video)
  if video.ndim < 4:
    raise ValueError(f"derive expects (..., T, H, W, C), got shape {video.shape}.")
  *lead, t, h, w, c = video.shape
  for name, source, target in (("frames", t, frames), ("height", h, height),
                               ("width", w, width)):
    if target < 1 or source % target:
      raise ValueError(f"derive: {name} {target} must be a positive divisor of the video's "
                       f"{source}; only integer frame-skip and resize factors are supported.")
  kh, kw = h // height, w // width
  video = video[..., ::t // frames, :, :, :]
  blocks = video.reshape(*lead, frames, height, kh, width, kw, c)
  dtype = video.dtype if np.issubdtype(video.dtype, np.floating) else np.float32
  return blocks.mean(axis=(-4, -2), dtype=dtype)
