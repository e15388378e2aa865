"""Writers for what a sampling job leaves behind: mp4, gif, a comparison grid png and meta.json.

Every writer is atomic: it writes to a hidden temporary file in the destination's folder (with the
destination's extension, so ffmpeg and PIL pick the right container) and then `os.replace`s it onto
the destination. A failure part-way removes the temporary and leaves any earlier file untouched, so
a reader never sees a half-written output. Parent folders are created as needed.

Videos are `(T, H, W, 3)` arrays, either float in `[-1, 1]` (the model's range; values outside are
clipped) or uint8.
"""

from __future__ import annotations

import contextlib
import errno
import fractions
import json
import math
import os
import pathlib
import subprocess
import tempfile
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Height in pixels of the band above each row of a comparison grid that holds the row's label.
LABEL_BAND_HEIGHT = 14
_LABEL_FONT_SIZE = 10
_X264_CRF = 17  # Visually lossless for the small videos this project makes.


def to_uint8(video: Any) -> np.ndarray:
  """Converts a float video in `[-1, 1]` (any shape) to uint8 `[0, 255]`; uint8 passes through.

  Args:
    video: float array (NumPy or JAX) in `[-1, 1]`, clipped before conversion, or a uint8 array.

  Returns:
    uint8 array of the same shape: `round((x + 1) * 127.5)`.
  """
  array = np.asarray(video)
  if array.dtype == np.uint8:
    return array
  if not np.issubdtype(array.dtype, np.floating):
    raise ValueError(f"Expected a float video in [-1, 1] or a uint8 video, got dtype "
                     f"{array.dtype}; convert 8-bit data with `x.astype(np.float32) / 127.5 - 1`.")
  if not np.all(np.isfinite(array)):
    raise ValueError("The video holds NaN or infinite values; it cannot be written as an image.")
  return np.round((np.clip(array, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def from_uint8(video: Any) -> np.ndarray:
  """The inverse of `to_uint8`: uint8 `[0, 255]` (any shape) -> float32 in `[-1, 1]`."""
  array = np.asarray(video)
  if array.dtype != np.uint8:
    raise ValueError(f"Expected a uint8 video, got dtype {array.dtype}.")
  return array.astype(np.float32) / 127.5 - 1.0


def _video_uint8(video: Any, what: str) -> np.ndarray:
  """Checks that `video` is `(T, H, W, 3)` with T, H, W >= 1 and returns it as uint8."""
  array = to_uint8(video)
  if array.ndim != 4 or array.shape[-1] != 3 or min(array.shape[:3]) < 1:
    raise ValueError(f"{what} must have shape (T, H, W, 3) with T, H, W >= 1, got {array.shape}.")
  return array


def _check_fps(fps: float) -> float:
  if not (math.isfinite(fps) and fps > 0):
    raise ValueError(f"fps must be a positive number, got {fps}.")
  return float(fps)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
  """Yields a temporary path beside `path` (same extension, so ffmpeg and PIL pick the format);
  moves it onto `path` only if the block succeeds, else removes it. The project's one atomic
  writer: outputs, report tables, checkpoints' safetensors and JSON, and the embedding cache all
  write through it."""
  destination = pathlib.Path(path)
  if destination.is_dir():
    raise ValueError(f"Output path {destination} is a folder; give a file name.")
  destination.parent.mkdir(parents=True, exist_ok=True)
  try:
    handle, temporary = tempfile.mkstemp(prefix=f".{destination.stem}.tmp-",
                                         suffix=destination.suffix, dir=destination.parent)
  except OSError as e:  # e.g. a read-only or full file system: name the file the user asked for
    e.filename = str(destination)
    raise
  os.close(handle)
  try:
    yield temporary
    os.chmod(temporary, 0o644)  # mkstemp makes 0600 files; outputs are ordinary readable files
    os.replace(temporary, destination)
  except BaseException as e:
    with contextlib.suppress(FileNotFoundError):
      os.remove(temporary)
    if isinstance(e, OSError) and e.filename == temporary:
      e.filename = str(destination)  # name what the user asked for, not our vanished temporary
    raise


def write_mp4(path: str | os.PathLike, video: Any, fps: float) -> None:
  """Writes an H.264 (libx264, yuv420p) mp4 that common players and browsers play.

  yuv420p needs even sizes, so an odd height or width is padded by one replicated row/column at the
  bottom/right: the file holds `(T, H + H % 2, W + W % 2)` frames, exactly `(T, H, W)` when H and W
  are even. No other resizing happens (x264 encodes sizes that are not multiples of 16 directly).

  Args:
    path: destination, normally ending in `.mp4`.
    video: `(T, H, W, 3)` float in `[-1, 1]` or uint8.
    fps: frame rate stored in the file.

  Raises:
    OSError: ffmpeg failed (its last message in the text; the errno set when it names a file-system
      failure such as a full disk). Nothing is left at `path` but what was there before.
  """
  import imageio_ffmpeg  # here, not at the top: training jobs import this module but write no mp4
  frames = _video_uint8(video, "The video for write_mp4")
  fps = _check_fps(fps)
  _, height, width, _ = frames.shape
  frames = np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
  # The command imageio_ffmpeg.write_frames builds, run here because write_frames neither checks
  # ffmpeg's exit status (a full disk left a broken mp4) nor captures its messages.
  command = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-f", "rawvideo", "-vcodec", "rawvideo",
             "-s", f"{frames.shape[2]}x{frames.shape[1]}", "-pix_fmt", "rgb24",
             "-r", str(fractions.Fraction(fps).limit_denominator()), "-i", "-", "-an",
             "-vcodec", "libx264", "-pix_fmt", "yuv420p", "-v", "error",
             "-crf", str(_X264_CRF), "-movflags", "+faststart"]
  with atomic_path(path) as temporary:
    result = subprocess.run(command + [temporary], check=False, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE,
                            input=memoryview(np.ascontiguousarray(frames)).cast("B"))
    if result.returncode != 0:
      raise _ffmpeg_error(result.returncode, result.stderr.decode(errors="replace"), str(path))


# Failures of the file system that ffmpeg reports by their strerror text.
_OS_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO)


def _ffmpeg_error(status: int, stderr: str, path: str) -> OSError:
  """The OSError for an ffmpeg run writing `path` that exited with `status`: with the errno of a
  file-system failure named in its `stderr` (e.g. ENOSPC for 'No space left on device'), so that
  `main` reports it as the user's to fix; without one otherwise (a bug or a broken ffmpeg)."""
  lines = [line.strip() for line in stderr.splitlines() if line.strip()]
  detail = lines[-1] if lines else "no message"
  for code in _OS_ERRORS:
    if os.strerror(code) in stderr:
      return OSError(code, f"{os.strerror(code)} (ffmpeg: {detail})", path)
  return OSError(f"ffmpeg exited with status {status} while writing {path}: {detail}")


def write_gif(path: str | os.PathLike, video: Any, fps: float) -> None:
  """Writes a looping animated gif (one adaptive 256-colour palette per frame, no dithering).

  GIF stores frame delays in whole hundredths of a second, so frame k starts at
  `floor(100 k / fps + 0.5)` cs: delays alternate where `100 / fps` is not whole (8 fps: 12, 13, 12, ...
  cs), and the timeline stays within 5 ms of the exact one. Pillow stores a run of identical
  consecutive frames as one frame with the summed delay; the timeline is unchanged.

  Args:
    path: destination, normally ending in `.gif`.
    video: `(T, H, W, 3)` float in `[-1, 1]` or uint8.
    fps: playback frame rate, at most 100.
  """
  frames = _video_uint8(video, "The video for write_gif")
  fps = _check_fps(fps)
  if fps > 100:
    raise ValueError(f"GIF delays are whole hundredths of a second, so fps must be <= 100, "
                     f"got {fps}.")
  starts_cs = np.floor(100 * np.arange(len(frames) + 1) / fps + 0.5).astype(int)
  delays_ms = [10 * int(delay) for delay in np.diff(starts_cs)]
  images = [Image.fromarray(frame).quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                            dither=Image.Dither.NONE) for frame in frames]
  with atomic_path(path) as temporary:
    images[0].save(temporary, format="GIF", save_all=True, append_images=images[1:],
                   duration=delays_ms, loop=0)


def _resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
  """Resizes uint8 `(T, h, w, 3)` frames to `(T, height, width, 3)`.

  Enlarging uses nearest neighbour (pixels stay honest, as blocks); shrinking averages areas.
  """
  if frames.shape[1:3] == (height, width):
    return frames
  enlarging = height >= frames.shape[1] and width >= frames.shape[2]
  method = Image.Resampling.NEAREST if enlarging else Image.Resampling.BOX
  return np.stack([np.asarray(Image.fromarray(f).resize((width, height), method)) for f in frames])


def write_png(path: str | os.PathLike, image: Any) -> None:
  """Writes one image `(H, W, 3)` (float in [-1, 1] or uint8) as a PNG, atomically."""
  array = to_uint8(image)
  if array.ndim != 3 or array.shape[-1] != 3:
    raise ValueError(f"Expected an (H, W, 3) image, got shape {array.shape}.")
  with atomic_path(path) as temporary:
    Image.fromarray(array).save(temporary, format="PNG")


def write_comparison_png(path: str | os.PathLike, rows: Sequence[Any],
                         labels: Sequence[str] | None = None, max_frames: int = 16,
                         scale: int = 1) -> None:
  """Writes a grid png: one row per video, its frames side by side (e.g. input over output).

  The grid has `C = min(max_frames, shortest row's T)` columns; each row shows C frames evenly
  spread over its own length, so columns line up in time across rows of different lengths. Every
  cell is `(Hc, Wc) = (max H, max W)` over the rows; smaller rows are enlarged to it (nearest
  neighbour, stretching if aspect ratios differ). The image is then enlarged `scale` times (nearest
  neighbour). Without labels it is exactly `(len(rows) * Hc * scale, C * Wc * scale)` pixels; with
  labels each row gets a `LABEL_BAND_HEIGHT`-pixel band above it holding its label, written in
  PIL's default font.

  Args:
    path: destination, normally ending in `.png`.
    rows: videos, each `(T_i, H_i, W_i, 3)` float in `[-1, 1]` or uint8.
    labels: one string per row, or None for no labels.
    max_frames: the most columns to show.
    scale: integer enlargement factor for the whole grid, >= 1.
  """
  if len(rows) == 0:
    raise ValueError("write_comparison_png needs at least one row (video).")
  if labels is not None and len(labels) != len(rows):
    raise ValueError(f"Got {len(labels)} labels for {len(rows)} rows; give one label per row.")
  if max_frames < 1 or int(max_frames) != max_frames:
    raise ValueError(f"max_frames must be a positive integer, got {max_frames}.")
  if scale < 1 or int(scale) != scale:
    raise ValueError(f"scale must be a positive integer, got {scale}.")
  videos = [_video_uint8(row, f"Row {i} of the comparison") for i, row in enumerate(rows)]
  columns = min(int(max_frames), min(v.shape[0] for v in videos))
  cell_height = max(v.shape[1] for v in videos)
  cell_width = max(v.shape[2] for v in videos)
  strips = []
  for video in videos:
    picked = video[np.round(np.linspace(0, video.shape[0] - 1, columns)).astype(int)]
    picked = _resize_frames(picked, cell_height, cell_width)
    strip = np.concatenate(list(picked), axis=1)
    strips.append(np.repeat(np.repeat(strip, scale, axis=0), scale, axis=1))
  if labels is not None:
    strips = [_with_label_band(strip, label) for strip, label in zip(strips, labels)]
  grid = Image.fromarray(np.concatenate(strips, axis=0))
  with atomic_path(path) as temporary:
    grid.save(temporary, format="PNG")


def _with_label_band(strip: np.ndarray, label: str) -> np.ndarray:
  """Puts a black band with `label` in white above a uint8 `(h, w, 3)` strip."""
  band = Image.new("RGB", (strip.shape[1], LABEL_BAND_HEIGHT))
  font = ImageFont.load_default(size=_LABEL_FONT_SIZE)
  ImageDraw.Draw(band).text((2, 1), str(label), fill=(255, 255, 255), font=font)
  return np.concatenate([np.asarray(band), strip], axis=0)


def _json_default(value: Any) -> Any:
  """Makes NumPy/JAX scalars and arrays and paths JSON-serialisable."""
  if isinstance(value, os.PathLike):
    return os.fspath(value)
  if isinstance(value, np.generic):
    return value.item()
  if hasattr(value, "__array__"):
    return np.asarray(value).tolist()
  raise TypeError(f"Cannot write a {type(value).__name__} to JSON ({value!r}); convert it to a "
                  "string, number, list or dict first.")


def write_json(path: str | os.PathLike, obj: dict) -> None:
  """Writes `obj` as indented JSON (NumPy/JAX numbers and arrays, and paths, are converted).

  NaN and infinity are rejected (ValueError) because they are not valid JSON.
  """
  if not isinstance(obj, dict):
    raise ValueError(f"write_json writes a dict, got {type(obj).__name__}.")
  text = json.dumps(obj, indent=2, default=_json_default, allow_nan=False, ensure_ascii=False)
  with atomic_path(path) as temporary:
    with open(temporary, "w", encoding="utf-8") as f:
      f.write(text + "\n")
