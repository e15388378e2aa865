"""Image-to-video: turn one image into a coarse video for Dreamix to edit (paper §5, App. D).

Either the image is replicated into a static video, or a smooth sequence of perspective transforms
simulates camera motion: a pan (translate), camera shake (random translate), a perspective pan
(the camera turns, so the view plane rotates) or a zoom in / out. Frame k is the image warped by a
homography `M_k` with `M_0 = I` (the first frame is the image itself).

Conventions: pixel (x, y) is column x, row y, with pixel centres at integers. `M_k` maps a pixel
of frame k to the source-image point it shows (inverse mapping), which is then sampled bilinearly.
Points outside the image are reflected back into it across the image border (symmetric reflection
padding, as in the paper), so no pixel is left unfilled. `direction` is the way the *camera* moves:
panning "right" makes the content slide left.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

TRANSFORMS = ("none", "translate", "random_translate", "perspective", "zoom_in", "zoom_out")
DIRECTIONS = {"right": (1.0, 0.0), "left": (-1.0, 0.0), "down": (0.0, 1.0), "up": (0.0, -1.0)}

# Default strength of each transform; see the function of the same name for the unit.
DEFAULT_STRENGTH = {
    "translate": 0.25,         # total pan, as a fraction of the image width (height if vertical)
    "random_translate": 0.02,  # largest shake offset, as a fraction of the image size
    "perspective": 20.0,       # total camera turn in degrees
    "zoom_in": 1.5,            # final magnification
    "zoom_out": 1.5,           # final demagnification
}


def _check_image(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim != 3 or min(image.shape) < 1:
    raise ValueError(f"Expected an image of shape (H, W, C), got {image.shape}.")
  return image.astype(np.float32, copy=False)


def _check_num_frames(num_frames: int) -> None:
  if num_frames < 1 or int(num_frames) != num_frames:
    raise ValueError(f"num_frames must be a positive integer, got {num_frames}.")


def _direction(direction: str) -> np.ndarray:
  if direction not in DIRECTIONS:
    raise ValueError(f"Unknown direction {direction!r}; choose one of {sorted(DIRECTIONS)}.")
  return np.array(DIRECTIONS[direction])


def _progress(num_frames: int) -> np.ndarray:
  """`(T,)` from 0 at the first frame to 1 at the last (all 0 for a single frame)."""
  return np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)


def _translations(offsets: np.ndarray) -> np.ndarray:
  """`(T, 2)` pixel offsets -> `(T, 3, 3)` homographies `p -> p + offset`."""
  matrices = np.tile(np.eye(3), (len(offsets), 1, 1))
  matrices[:, :2, 2] = offsets
  return matrices


def _about_centre(matrices: np.ndarray, height: int, width: int) -> np.ndarray:
  """Conjugates `(T, 3, 3)` homographies written for centred coordinates to pixel coordinates."""
  centre = np.array([(width - 1) / 2, (height - 1) / 2])
  to_centred = _translations(-centre[None])[0]
  from_centred = _translations(centre[None])[0]
  return from_centred @ matrices @ to_centred


def reflect_coordinates(coords: np.ndarray, size: int) -> np.ndarray:
  """Reflects coordinates into `[0, size - 1]` across the image borders at -0.5 and size - 0.5.

  Symmetric reflection, repeated as often as needed: -1 -> 0, -2 -> 1, size -> size - 1.
  The half-pixel bands next to the border clamp to the edge pixel.
  """
  period = 2.0 * size
  folded = np.mod(coords + 0.5, period)
  folded = np.where(folded >= size, period - folded, folded) - 0.5
  return np.clip(folded, 0.0, size - 1.0)


def warp(image: np.ndarray, homographies: np.ndarray) -> np.ndarray:
  """Warps one image by each homography (inverse mapping, bilinear, reflection padding).

  Args:
    image: `(H, W, C)`.
    homographies: `(T, 3, 3)`; frame k's pixel p shows the image at `homographies[k] @ p`.

  Returns:
    float32 `(T, H, W, C)`.
  """
  image = _check_image(image)
  height, width, _ = image.shape
  ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
  pixels = np.stack([xs, ys, np.ones_like(xs)])  # (3, H, W)
  source = np.einsum("tij,jhw->tihw", homographies, pixels)
  u = reflect_coordinates(source[:, 0] / source[:, 2], width)
  v = reflect_coordinates(source[:, 1] / source[:, 2], height)
  x0 = np.floor(u).astype(int)
  y0 = np.floor(v).astype(int)
  x1 = np.minimum(x0 + 1, width - 1)
  y1 = np.minimum(y0 + 1, height - 1)
  wx = (u - x0)[..., None].astype(np.float32)
  wy = (v - y0)[..., None].astype(np.float32)
  top = (1 - wx) * image[y0, x0] + wx * image[y0, x1]
  bottom = (1 - wx) * image[y1, x0] + wx * image[y1, x1]
  return (1 - wy) * top + wy * bottom


def replicate(image: np.ndarray, num_frames: int = 16) -> np.ndarray:
  """The static video `[x, x, ..., x]`: `(H, W, C)` -> float32 `(T, H, W, C)`."""
  _check_num_frames(num_frames)
  return np.repeat(_check_image(image)[None], num_frames, axis=0)


def translate(image: np.ndarray, num_frames: int = 16, *,
              strength: float = DEFAULT_STRENGTH["translate"],
              direction: str = "right") -> np.ndarray:
  """A pan at constant speed.

  The camera moves by `strength` × the image width (left/right) or height (up/down) over the
  video, so the content slides the opposite way.

  Returns:
    float32 `(T, H, W, C)`.
  """
  image = _check_image(image)
  _check_num_frames(num_frames)
  height, width, _ = image.shape
  extent = width if direction in ("left", "right") else height
  step = _direction(direction) * strength * extent
  return warp(image, _translations(_progress(num_frames)[:, None] * step[None]))


def random_translate(image: np.ndarray, num_frames: int = 16, *,
                     strength: float = DEFAULT_STRENGTH["random_translate"],
                     seed: int = 0) -> np.ndarray:
  """Camera shake: every frame but the first is offset at random.

  Offsets are independent and uniform in `±strength × width` horizontally and
  `±strength × height` vertically, drawn from `seed`.

  Returns:
    float32 `(T, H, W, C)`.
  """
  image = _check_image(image)
  _check_num_frames(num_frames)
  height, width, _ = image.shape
  rng = np.random.default_rng(seed)
  offsets = rng.uniform(-strength, strength, (num_frames, 2)) * np.array([width, height])
  offsets[0] = 0.0
  return warp(image, _translations(offsets))


def perspective(image: np.ndarray, num_frames: int = 16, *,
                strength: float = DEFAULT_STRENGTH["perspective"],
                direction: str = "right") -> np.ndarray:
  """A perspective pan: the camera turns by `strength` degrees in total, at constant angular speed.

  Frame k is the view of the image plane from a camera rotated by angle θ_k about its vertical
  axis (left/right) or horizontal axis (up/down): `M_k = K R(θ_k) K⁻¹` with focal length
  `f = max(H, W)` pixels and the principal point at the image centre.

  Returns:
    float32 `(T, H, W, C)`.
  """
  image = _check_image(image)
  _check_num_frames(num_frames)
  height, width, _ = image.shape
  axis = _direction(direction)
  focal = float(max(height, width))
  intrinsics = np.diag([focal, focal, 1.0])
  matrices = []
  for angle in np.deg2rad(strength) * _progress(num_frames):
    cos, sin = np.cos(angle), np.sin(angle)
    rotation = np.eye(3)
    # Turns the optical axis (0, 0, 1) towards `axis` in the image plane.
    rotation[:2, :2] += (cos - 1) * np.outer(axis, axis)
    rotation[:2, 2] = sin * axis
    rotation[2, :2] = -sin * axis
    rotation[2, 2] = cos
    matrices.append(intrinsics @ rotation @ np.linalg.inv(intrinsics))
  return warp(image, _about_centre(np.stack(matrices), height, width))


def _zoom(image: np.ndarray, num_frames: int, magnification: float) -> np.ndarray:
  """Scales about the image centre by `magnification ** progress` (a constant zoom rate)."""
  image = _check_image(image)
  _check_num_frames(num_frames)
  height, width, _ = image.shape
  scales = magnification ** _progress(num_frames)
  matrices = np.tile(np.eye(3), (num_frames, 1, 1))
  matrices[:, 0, 0] = matrices[:, 1, 1] = 1.0 / scales
  return warp(image, _about_centre(matrices, height, width))


def zoom_in(image: np.ndarray, num_frames: int = 16, *,
            strength: float = DEFAULT_STRENGTH["zoom_in"]) -> np.ndarray:
  """Zooms in: the last frame shows the central `1 / strength` of the image, enlarged.

  Returns:
    float32 `(T, H, W, C)`.
  """
  if strength < 1:
    raise ValueError(f"zoom_in needs strength >= 1 (the final magnification), got {strength}.")
  return _zoom(image, num_frames, strength)


def zoom_out(image: np.ndarray, num_frames: int = 16, *,
             strength: float = DEFAULT_STRENGTH["zoom_out"]) -> np.ndarray:
  """Zooms out: the last frame shows `strength` × the image's width and height, shrunk.

  The border that appears around the image is filled by reflection.

  Returns:
    float32 `(T, H, W, C)`.
  """
  if strength < 1:
    raise ValueError(f"zoom_out needs strength >= 1 (the final demagnification), got {strength}.")
  return _zoom(image, num_frames, 1.0 / strength)


def image_to_video(image: np.ndarray, transform: str, num_frames: int = 16, *, seed: int = 0,
                   strength: float | None = None, direction: str = "right") -> np.ndarray:
  """Makes a `num_frames`-frame video from one image by the named transform.

  Args:
    image: `(H, W, C)`, e.g. float in [-1, 1] from `read_image`.
    transform: one of `TRANSFORMS`: "none" (replicate), "translate", "random_translate",
      "perspective", "zoom_in", "zoom_out".
    num_frames: number of frames T.
    seed: random seed (used by "random_translate").
    strength: the transform's amount (see `DEFAULT_STRENGTH` for units and defaults); None for
      the default. Not used by "none".
    direction: camera direction for "translate" and "perspective": left, right, up or down.

  Returns:
    float32 `(T, H, W, C)`; frame 0 is the image itself.
  """
  if transform not in TRANSFORMS:
    raise ValueError(f"Unknown image-to-video transform {transform!r}; valid transforms: "
                     f"{', '.join(TRANSFORMS)}.")
  if transform == "none":
    return replicate(image, num_frames)
  amount = DEFAULT_STRENGTH[transform] if strength is None else float(strength)
  makers: dict[str, Callable[[], np.ndarray]] = {
      "translate": lambda: translate(image, num_frames, strength=amount, direction=direction),
      "random_translate": lambda: random_translate(image, num_frames, strength=amount, seed=seed),
      "perspective": lambda: perspective(image, num_frames, strength=amount, direction=direction),
      "zoom_in": lambda: zoom_in(image, num_frames, strength=amount),
      "zoom_out": lambda: zoom_out(image, num_frames, strength=amount),
  }
  return makers[transform]()
