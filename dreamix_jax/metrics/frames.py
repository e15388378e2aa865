"""Frame preprocessing shared by the video metrics (frame-level CLIP score, temporal LPIPS).

The Dreamix paper (App. G) evaluates every method on the same footing: videos are subsampled to
5 fps and at most 24 frames (the output format of Tune-a-Video), then each frame is resized so its
shorter side is 224 pixels (bicubic) and centre-cropped to 224×224. This module does those steps
once for both metrics; each metric applies its own value normalisation afterwards (CLIP: mean/std,
LPIPS: [-1, 1]).

Subsampling picks, for each target timestamp `k / target_fps`, the source frame nearest to it
(`floor(k · fps / target_fps + 1/2)`), starting at frame 0 and keeping only timestamps that fall on
an existing frame. A video at or below the target rate keeps every frame (nothing is invented).

Resizing follows Hugging Face's `CLIPImageProcessor` with PIL: the shorter side becomes
`resize_to`, the longer side `int(resize_to · long / short)`, Keys bicubic (a = −0.5) with an
antialiasing kernel stretched by the downscale factor, then a crop at offset
`((h − crop) // 2, (w − crop) // 2)`. Values are clipped to [0, 1] after resizing, as PIL's
8-bit output is.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

PAPER_FPS = 5.0
PAPER_MAX_FRAMES = 24
PAPER_IMAGE_SIZE = 224
# Values this far outside [-1, 1] are taken as a caller error rather than sampler overshoot.
_RANGE_TOLERANCE = 1e-3


def subsample_indices(num_frames: int,
                      fps: float,
                      target_fps: float = PAPER_FPS,
                      max_frames: int = PAPER_MAX_FRAMES) -> np.ndarray:
  """Indices of the frames kept when resampling a `fps` video to `target_fps`.

  Args:
    num_frames: number of frames T of the source video.
    fps: frame rate of the source video.
    target_fps: frame rate to subsample to (the paper: 5).
    max_frames: keep at most this many frames, from the start (the paper: 24).

  Returns:
    int64 array of shape (N,), N = min(max_frames, number of target timestamps inside the video),
    strictly increasing, starting at 0.
  """
  if num_frames < 1:
    raise ValueError(f"The video has {num_frames} frames; it needs at least one.")
  if not fps > 0 or not target_fps > 0:
    raise ValueError(f"Frame rates must be positive, got fps={fps}, target_fps={target_fps}.")
  if max_frames < 1:
    raise ValueError(f"max_frames must be at least 1, got {max_frames}.")
  if fps <= target_fps:
    indices = np.arange(num_frames)
  else:
    step = fps / target_fps
    count = int(np.floor((num_frames - 0.5) / step)) + 1  # timestamps rounding to a real frame
    indices = np.floor(np.arange(count) * step + 0.5).astype(np.int64)
    indices = indices[indices < num_frames]
  return indices[:max_frames].astype(np.int64)


def to_unit_range(video: np.ndarray) -> np.ndarray:
  """Converts a uint8 video in [0, 255] or a float video in [-1, 1] to float32 in [0, 1].

  Args:
    video: (..., 3) array, uint8 or floating point.

  Returns:
    float32 array of the same shape with values in [0, 1].
  """
  video = np.asarray(video)
  if video.dtype == np.uint8:
    return video.astype(np.float32) / 255.0
  if not np.issubdtype(video.dtype, np.floating):
    raise ValueError(f"Video dtype must be uint8 (in [0, 255]) or float (in [-1, 1]), got "
                     f"{video.dtype}.")
  low, high = float(video.min()), float(video.max())
  if low < -1 - _RANGE_TOLERANCE or high > 1 + _RANGE_TOLERANCE:
    raise ValueError(f"A float video must lie in [-1, 1], got values in [{low:.4g}, {high:.4g}]; "
                     "rescale it (x / 127.5 − 1 for 8-bit values) or pass uint8.")
  return np.clip((video.astype(np.float32) + 1.0) * 0.5, 0.0, 1.0)


def resized_shape(height: int, width: int, resize_to: int) -> tuple[int, int]:
  """(H', W') with the shorter side equal to `resize_to`, as Hugging Face's CLIP processor."""
  if height <= width:
    return resize_to, int(resize_to * width / height)
  return int(resize_to * height / width), resize_to


@functools.partial(jax.jit, static_argnames=("resize_to", "crop_to"))
def resize_center_crop(frames: jax.Array, resize_to: int, crop_to: int) -> jax.Array:
  """Bicubic resize of the shorter side to `resize_to`, then a centre crop of `crop_to`².

  Args:
    frames: (N, H, W, C) float array in [0, 1].
    resize_to: target length of the shorter side.
    crop_to: side of the square centre crop; at most `resize_to`.

  Returns:
    (N, crop_to, crop_to, C) float32 array in [0, 1].
  """
  if crop_to > resize_to:
    raise ValueError(f"crop_to ({crop_to}) must not exceed resize_to ({resize_to}).")
  n, height, width, channels = frames.shape
  new_h, new_w = resized_shape(height, width, resize_to)
  resized = jax.image.resize(frames.astype(jnp.float32), (n, new_h, new_w, channels),
                             method="bicubic", antialias=True)
  top, left = (new_h - crop_to) // 2, (new_w - crop_to) // 2
  cropped = resized[:, top:top + crop_to, left:left + crop_to, :]
  return jnp.clip(cropped, 0.0, 1.0)


def paper_frames(video: np.ndarray,
                 fps: float,
                 *,
                 target_fps: float = PAPER_FPS,
                 max_frames: int = PAPER_MAX_FRAMES,
                 resize_to: int = PAPER_IMAGE_SIZE,
                 crop_to: int = PAPER_IMAGE_SIZE) -> jax.Array:
  """The evaluation frames of a video: subsampled, resized, centre-cropped, in [0, 1].

  Args:
    video: (T, H, W, 3) uint8 in [0, 255] or float in [-1, 1].
    fps: frame rate of `video`.
    target_fps, max_frames: subsampling (see `subsample_indices`).
    resize_to, crop_to: spatial preprocessing (see `resize_center_crop`).

  Returns:
    (N, crop_to, crop_to, 3) float32 array in [0, 1].
  """
  video = np.asarray(video)
  if video.ndim != 4 or video.shape[-1] != 3:
    raise ValueError(f"Expected a video of shape (T, H, W, 3), got {video.shape}.")
  indices = subsample_indices(video.shape[0], fps, target_fps, max_frames)
  return resize_center_crop(to_unit_range(video[indices]), resize_to=resize_to, crop_to=crop_to)
