"""Reading videos, images and subject image collections into float `[-1, 1]` arrays.

Sources:
  - video files (mp4, m4v, mov, mkv, webm, avi), decoded by the ffmpeg that imageio-ffmpeg bundles,
    through `imageio_ffmpeg.read_frames` (the streaming generator behind imageio's FFMPEG plugin),
    used directly so that the pixel format (rgba) and the input seek can be set;
  - animated gifs, decoded by Pillow, which gives each frame's own delay (ffmpeg reports a rounded
    average rate for gifs);
  - folders of frames (png, jpg, bmp, webp, tif, gif), in natural order (frame2 before frame10).
    A folder has no frame rate of its own: its consecutive frames are taken to be at the requested
    `fps`.

Every pixel format becomes RGB: grey is repeated to three channels, palette images are expanded,
16-bit samples are scaled by 1/65535, and alpha is composited onto black (`rgb * alpha`).

Time: with `fps` given, frame k is the source frame whose start time is nearest to
`start_seconds + k / fps` (ties go to the later frame); with `fps=None`, `num_frames` frames are
taken evenly spread over the whole video, first and last included. Frames are streamed and decoding
stops at the last needed one; with `fps` given, a video file is also seeked (to half a frame before
the first needed frame), so nothing before `start_seconds` is decoded either.

Space: each frame is center-cropped to the target aspect ratio and then area-resized: every output
pixel is the mean of the source area it covers, with fractional weights at the edges (exact for any
ratio; enlarging this way repeats pixels).

Every input problem raises a `VideoInputError` (a ValueError) whose message says what is wrong and
how to fix it; a missing path raises `InputNotFoundError`, which is also a FileNotFoundError.

One module for all three sources (over 400 lines) because they share the time and space sampling
and the error catalogue above; splitting them would spread one contract over several files.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import struct
import subprocess
from typing import Callable, Iterator, Sequence

import numpy as np
import scipy.sparse
from PIL import Image, ImageOps, UnidentifiedImageError

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")
GIF_EXTENSIONS = (".gif",)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
_ACCEPTED_VIDEOS = ", ".join(VIDEO_EXTENSIONS + GIF_EXTENSIONS) + ", or a folder of frames"
_ACCEPTED_IMAGES = ", ".join(IMAGE_EXTENSIONS)

# What Pillow raises on truncated or damaged files (a "broken PNG" is a SyntaxError), and on an
# image so large that decoding it could exhaust memory (a "decompression bomb").
_DAMAGED = (UnidentifiedImageError, OSError, IndexError, EOFError, ValueError, SyntaxError,
            struct.error, Image.DecompressionBombError)
# Timestamps within this many seconds count as equal (far below any frame period).
_TIME_TOLERANCE = 1e-6
# Browsers play gif delays of 10 ms or less at 100 ms; so do we.
_GIF_DEFAULT_DELAY_MS = 100


class VideoInputError(ValueError):
  """An input video, image or folder that cannot be used; the message says how to fix it."""


class InputNotFoundError(VideoInputError, FileNotFoundError):
  """The input path does not exist."""


class VideoTooShortError(VideoInputError):
  """The video has fewer frames than the requested number at the requested rate."""


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  """What a video source holds.

  Attributes:
    kind: "video" (a file ffmpeg decodes), "gif" or "frame_folder".
    num_frames: number of frames; an estimate (duration × fps) when `num_frames_exact` is False.
    num_frames_exact: whether `num_frames` was counted rather than estimated.
    fps: frames per second (a gif's mean rate); None for a frame folder, which has no rate.
    height: frame height in pixels (of the first frame, for a folder).
    width: frame width in pixels (of the first frame, for a folder).
  """

  kind: str
  num_frames: int
  num_frames_exact: bool
  fps: float | None
  height: int
  width: int

  @property
  def duration_seconds(self) -> float | None:
    return None if self.fps is None else self.num_frames / self.fps


@dataclasses.dataclass(frozen=True)
class _Frame:
  """One source frame: its position, start time and display time, and how to load its pixels."""

  index: int
  start: float
  duration: float
  load: Callable[[], np.ndarray]  # -> float32 (H, W, 3) in [0, 1]


# ---------------------------------------------------------------------------------------------
# Pixel formats and resizing


def _natural_key(name: str) -> list:
  """Sort key that orders embedded numbers by value: frame2 before frame10."""
  return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _composite_on_black(rgba: np.ndarray) -> np.ndarray:
  """uint8 `(H, W, 4)` -> float32 `(H, W, 3)` in [0, 1], colour multiplied by alpha."""
  rgba = rgba.astype(np.float32) / 255.0
  return rgba[..., :3] * rgba[..., 3:]


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
  """Any Pillow image -> float32 `(H, W, 3)` in [0, 1].

  16-bit grey ("I;16*", and "I" as Pillow opens 16-bit PNGs) is scaled by 1/65535; float images
  ("F") are clipped to [0, 1]; everything else goes through RGBA and is composited onto black.
  """
  if image.mode.startswith("I"):
    grey = np.asarray(image, dtype=np.float32) / 65535.0
  elif image.mode == "F":
    grey = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
  else:
    return _composite_on_black(np.asarray(image.convert("RGBA")))
  return np.repeat(np.clip(grey, 0.0, 1.0)[..., None], 3, axis=-1)


def _area_weights(in_size: int, out_size: int, start: float,
                  length: float) -> scipy.sparse.csr_array:
  """`(out_size, in_size)` matrix averaging `[start, start + length)` into `out_size` equal cells.

  Entry (i, j) is the overlap of output cell i with source pixel `[j, j + 1)`, divided by the cell
  length, so each row sums to 1.
  """
  edges = start + length * np.arange(out_size + 1) / out_size
  low, high = edges[:-1, None], edges[1:, None]
  pixels = np.arange(in_size)[None, :]
  overlap = np.clip(np.minimum(high, pixels + 1) - np.maximum(low, pixels), 0.0, None)
  return scipy.sparse.csr_array((overlap / (high - low)).astype(np.float32))


def _crop_resize(frame: np.ndarray, height: int, width: int) -> np.ndarray:
  """Center-crops `(h, w, 3)` to the aspect ratio `height : width`, then area-resizes it.

  Returns:
    float32 `(height, width, 3)`.
  """
  in_height, in_width, channels = frame.shape
  crop_height, crop_width = float(in_height), float(in_width)
  if in_width * height > width * in_height:  # source is wider: crop the sides
    crop_width = in_height * width / height
  else:
    crop_height = in_width * height / width
  rows = _area_weights(in_height, height, (in_height - crop_height) / 2, crop_height)
  cols = _area_weights(in_width, width, (in_width - crop_width) / 2, crop_width)
  resized_rows = (rows @ frame.reshape(in_height, -1)).reshape(height, in_width, channels)
  by_column = resized_rows.transpose(1, 0, 2).reshape(in_width, -1)
  return (cols @ by_column).reshape(width, height, channels).transpose(1, 0, 2)


def _check_size(height: int, width: int) -> None:
  if height < 1 or width < 1 or int(height) != height or int(width) != width:
    raise ValueError(f"height and width must be positive integers, got {height} x {width}.")


# ---------------------------------------------------------------------------------------------
# Recognising inputs


def _describe_file(path: str) -> str:
  """A short guess at what a file holds, from its first bytes, for error messages."""
  with open(path, "rb") as f:
    head = f.read(512)
  if not head:
    return "an empty file (0 bytes)"
  signatures = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image",
                b"GIF8": "a GIF image", b"PK\x03\x04": "a ZIP archive", b"%PDF": "a PDF document",
                b"\x1a\x45\xdf\xa3": "a Matroska/WebM video",
                b"RIFF": "a RIFF (AVI/WAV/WebP) file", b"II*\x00": "a TIFF image",
                b"MM\x00*": "a TIFF image", b"BM": "a BMP image"}
  for signature, description in signatures.items():
    if head.startswith(signature):
      return description
  if head[4:8] == b"ftyp":
    return "an MP4/MOV container"
  try:
    text = head.decode("utf-8")
  except UnicodeDecodeError:
    return f"binary data of unknown type ({os.path.getsize(path)} bytes)"
  first_line = text.strip().splitlines()[0] if text.strip() else ""
  return f"a text file (starting {first_line[:40]!r})"


def _require_exists(path: str, what: str) -> None:
  if not os.path.exists(path):
    raise InputNotFoundError(f"The {what} {path!r} does not exist; check the path.")


def _list_images(folder: str, what: str) -> list[str]:
  """Image files in `folder` in natural order; anything else (but hidden files) is an error."""
  names = sorted((n for n in os.listdir(folder) if not n.startswith(".")), key=_natural_key)
  others = [n for n in names if not os.path.isfile(os.path.join(folder, n))
            or os.path.splitext(n)[1].lower() not in IMAGE_EXTENSIONS]
  if others:
    raise VideoInputError(f"The {what} {folder!r} holds {len(others)} entries that are not "
                          f"images (e.g. {others[0]!r}); accepted images: {_ACCEPTED_IMAGES}. "
                          "Move them out.")
  if not names:
    raise VideoInputError(f"The {what} {folder!r} holds no images; put images ({_ACCEPTED_IMAGES}) "
                          "in it.")
  return [os.path.join(folder, n) for n in names]


def _open_image(path: str) -> Image.Image:
  """Loads an image file with Pillow (EXIF rotation applied); a clear error if it is not one."""
  try:
    with Image.open(path) as image:
      image.load()
      return ImageOps.exif_transpose(image)
  except Image.DecompressionBombError as error:
    raise VideoInputError(f"{path!r} is too large to decode safely ({error}); downscale it, e.g. "
                          "`ffmpeg -i <in> -vf scale=1920:-2 <out>.png`.") from error
  except _DAMAGED as error:
    description = _describe_file(path)
    if description.endswith("image"):
      raise VideoInputError(f"{path!r} is {description} that could not be decoded ({error}): "
                            "truncated, damaged, or in an unsupported pixel format or compression. "
                            "Re-export it as 8-bit RGB, e.g. `ffmpeg -i <in> -pix_fmt rgb24 "
                            "<out>.png`.") from error
    raise VideoInputError(f"{path!r} could not be read as an image: it seems to be {description}. "
                          f"Accepted images: {_ACCEPTED_IMAGES}.") from error


# ---------------------------------------------------------------------------------------------
# Sources: probing and streaming frames


def _ffmpeg():
  """`imageio_ffmpeg`, imported when a video file is first read: jobs that read none (pretraining,
  the moving-shapes benchmarks) then run where its 68 MB wheel is not installed."""
  import imageio_ffmpeg
  return imageio_ffmpeg


def _count_video_packets(path: str) -> int:
  """Counts the first video stream's frames by demuxing only (no decoding).

  Raises:
    VideoInputError: the file cannot be opened as a video, or it has no video stream.
  """
  command = [_ffmpeg().get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", path,
             "-map", "0:v:0", "-c", "copy", "-f", "null", "-"]
  result = subprocess.run(command, capture_output=True, text=True, errors="replace", check=False)
  counts = re.findall(r"frame=\s*(\d+)", result.stderr)
  if counts:
    return int(counts[-1])
  if "matches no streams" in result.stderr:
    raise VideoInputError(f"{path!r} has no video stream (it seems to be {_describe_file(path)} "
                          "holding only audio or nothing); give a video file.")
  last_line = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "no message"
  description = _describe_file(path)
  if description.endswith(("container", "video")):
    raise VideoInputError(f"{path!r} is {description} that ffmpeg could not read ({last_line}): "
                          "it is probably truncated or damaged; re-download or re-encode it.")
  raise VideoInputError(f"{path!r} could not be read as a video: it seems to be {description} "
                        f"(ffmpeg: {last_line}). Accepted inputs: {_ACCEPTED_VIDEOS}.")


def _probe_ffmpeg(path: str) -> VideoInfo:
  try:
    reader = _ffmpeg().read_frames(path, pix_fmt="rgba", bits_per_pixel=32)
    meta = next(reader)
    reader.close()
  except (OSError, RuntimeError, StopIteration) as error:
    if _count_video_packets(path) == 0:
      raise VideoInputError(f"{path!r} is an empty video (0 frames); give a video with frames.")
    raise VideoInputError(f"ffmpeg could not decode {path!r} ({_describe_file(path)}): "
                          f"{str(error).strip().splitlines()[-1]}") from error
  width, height = meta["size"]
  fps = float(meta["fps"])
  duration = meta.get("duration") or 0.0
  if not (fps > 0 and math.isfinite(fps)):
    raise VideoInputError(f"{path!r} reports no usable frame rate ({meta['fps']}); re-encode it "
                          "with a constant frame rate, e.g. `ffmpeg -i in -r 24 out.mp4`.")
  if math.isfinite(duration) and duration > 0:
    return VideoInfo("video", round(duration * fps), False, fps, height, width)
  return VideoInfo("video", _count_video_packets(path), True, fps, height, width)


def _gif_delays_ms(path: str) -> list[int]:
  with Image.open(path) as gif:
    delays = []
    for index in range(getattr(gif, "n_frames", 1)):
      gif.seek(index)
      delay = gif.info.get("duration") or 0
      delays.append(delay if delay > 10 else _GIF_DEFAULT_DELAY_MS)
    return delays


def _probe_gif(path: str) -> VideoInfo:
  try:
    delays = _gif_delays_ms(path)
    with Image.open(path) as gif:
      width, height = gif.size
  except _DAMAGED as error:
    raise VideoInputError(f"{path!r} could not be read as a gif: it seems to be "
                          f"{_describe_file(path)} ({error!r}); a gif that fails like this is "
                          "truncated or damaged: re-export or re-download it.") from error
  return VideoInfo("gif", len(delays), True, 1000.0 * len(delays) / sum(delays), height, width)


def _probe_folder(path: str) -> tuple[VideoInfo, list[str]]:
  files = _list_images(path, "frame folder")
  with _open_image(files[0]) as first:
    width, height = first.size
  return VideoInfo("frame_folder", len(files), True, None, height, width), files


def _ffmpeg_frames(path: str, info: VideoInfo, first_index: int,
                   passthrough: bool) -> Iterator[_Frame]:
  """Streams a video file's frames from `first_index` (seeking there), timed at `info.fps`.

  With `passthrough`, ffmpeg emits exactly the stored frames; otherwise it emits a constant-rate
  sequence at the stream's rate (repeating or dropping frames of variable-rate videos), which
  makes frame i start at i / fps.
  """
  input_params = ["-nostdin"]
  if first_index > 0:  # the first frame after this point is frame `first_index`
    input_params += ["-ss", f"{(first_index - 0.5) / info.fps:.6f}"]
  output_params = ["-fps_mode", "passthrough"] if passthrough else []
  reader = _ffmpeg().read_frames(path, pix_fmt="rgba", bits_per_pixel=32,
                                      input_params=input_params, output_params=output_params)
  try:
    next(reader)
    for offset, buffer in enumerate(reader):
      rgba = np.frombuffer(buffer, np.uint8).reshape(info.height, info.width, 4)
      index = first_index + offset
      yield _Frame(index, index / info.fps, 1.0 / info.fps,
                   lambda rgba=rgba: _composite_on_black(rgba))
  finally:
    reader.close()


def _gif_frames(path: str) -> Iterator[_Frame]:
  """Streams a gif's frames (fully composited by Pillow) with their own start times and delays."""
  with Image.open(path) as gif:
    start = 0.0
    for index in range(gif.n_frames):
      try:
        gif.seek(index)
        rgba = np.asarray(gif.convert("RGBA"))
      except _DAMAGED as error:
        raise VideoInputError(f"{path!r}: frame {index} of the gif could not be decoded ({error}); "
                              "the file is truncated or damaged; re-export or re-download it."
                              ) from error
      delay = gif.info.get("duration") or 0
      duration = (delay if delay > 10 else _GIF_DEFAULT_DELAY_MS) / 1000.0
      yield _Frame(index, start, duration, lambda rgba=rgba: _composite_on_black(rgba))
      start += duration


def _folder_frames(files: Sequence[str], first_index: int, fps: float) -> Iterator[_Frame]:
  """Streams a frame folder from `first_index`; frame i starts at i / fps. Files load lazily."""
  def load(file):
    with _open_image(file) as image:
      return _pil_to_rgb(image)
  for index in range(first_index, len(files)):
    yield _Frame(index, index / fps, 1.0 / fps, lambda file=files[index]: load(file))


@dataclasses.dataclass(frozen=True)
class _Source:
  path: str
  info: VideoInfo
  files: tuple[str, ...] = ()

  def frames(self, first_index: int, rate: float | None, passthrough: bool) -> Iterator[_Frame]:
    """Frames from `first_index` on (gifs always start at 0); `rate` times a frame folder."""
    if self.info.kind == "video":
      return _ffmpeg_frames(self.path, self.info, first_index, passthrough)
    if self.info.kind == "gif":
      return _gif_frames(self.path)
    return _folder_frames(self.files, first_index, rate or 1.0)

  def count_frames(self) -> int:
    """The exact number of frames (demuxes a video file when its count was only estimated)."""
    if self.info.num_frames_exact:
      return self.info.num_frames
    return _count_video_packets(self.path)


def _open_source(path: str) -> _Source:
  """Recognises `path` as a video file, gif or frame folder and probes it."""
  path = os.fspath(path)
  _require_exists(path, "video")
  if os.path.isdir(path):
    info, files = _probe_folder(path)
    return _Source(path, info, tuple(files))
  extension = os.path.splitext(path)[1].lower()
  if extension in GIF_EXTENSIONS:
    return _Source(path, _probe_gif(path))
  if extension in IMAGE_EXTENSIONS:
    raise VideoInputError(f"{path!r} is a single image, not a video. To make a video from one "
                          "image use the image-to-video job (configs/image2video.py, "
                          "dreamix_jax.dreamix.image2video); to load it use read_image.")
  if extension not in VIDEO_EXTENSIONS:
    raise VideoInputError(f"{path!r} has an unsupported extension {extension or '(none)'!r}; "
                          f"accepted inputs: {_ACCEPTED_VIDEOS}.")
  return _Source(path, _probe_ffmpeg(path))


def probe_video(path: str) -> VideoInfo:
  """Describes a video file, gif or frame folder without decoding its frames.

  Raises:
    InputNotFoundError: `path` does not exist.
    VideoInputError: `path` is not a readable video, gif or frame folder.
  """
  return _open_source(path).info


# ---------------------------------------------------------------------------------------------
# Choosing frames in time


def _too_short(source: _Source, found: int, rate: float | None, needed: int, fps: float | None,
               start_seconds: float) -> VideoTooShortError:
  """The error for `found` frames (at `rate` fps, if known) where `needed` are wanted."""
  if fps is None:
    return VideoTooShortError(
        f"{source.path!r}: found {found} frames but {needed} are needed: ask for at most {found} "
        "frames or give a longer video.")
  kind = {"gif": "mean ", "frame_folder": "the requested "}.get(source.info.kind, "")
  span = start_seconds + needed / fps
  return VideoTooShortError(
      f"{source.path!r}: found {found} frames ({found / rate:.1f}s at {kind}{rate:g} fps) but "
      f"{needed} are needed at {fps:g} fps from {start_seconds:g}s (up to {span:.1f}s): lower "
      "num_frames or fps, start earlier, or give a longer video.")


def _pick_at_rate(source: _Source, num_frames: int, fps: float,
                  start_seconds: float) -> list[_Frame]:
  """For each target time `start + k / fps`, the frame whose start time is nearest."""
  targets = start_seconds + np.arange(num_frames) / fps
  rate = source.info.fps or fps
  first_index = 0 if source.info.kind == "gif" else int(
      math.floor(start_seconds * rate + _TIME_TOLERANCE))
  chosen: list[_Frame] = []
  previous = None
  seen = 0
  stream = source.frames(first_index, rate, passthrough=False)
  try:
    for frame in stream:
      seen += 1
      while len(chosen) < num_frames and frame.start >= targets[len(chosen)] - _TIME_TOLERANCE:
        target = targets[len(chosen)]
        nearer_previous = previous is not None and target - previous.start < frame.start - target
        chosen.append(previous if nearer_previous else frame)
      if len(chosen) == num_frames:
        return chosen
      previous = frame
  finally:
    stream.close()
  if previous is None:
    if first_index == 0:
      raise VideoInputError(f"{source.path!r} is an empty video (0 frames); give a video with "
                            "frames.")
    raise _too_short(source, source.info.num_frames, rate, num_frames, fps, start_seconds)
  # Targets after the last frame's start but within its display time still get it.
  end = previous.start + previous.duration
  while len(chosen) < num_frames and targets[len(chosen)] < end - _TIME_TOLERANCE:
    chosen.append(previous)
  if len(chosen) < num_frames:
    found = previous.index + 1
    raise _too_short(source, found, found / end, num_frames, fps, start_seconds)
  return chosen


def _pick_evenly(source: _Source, num_frames: int) -> list[_Frame]:
  """`num_frames` frames at indices `round(linspace(0, N - 1, num_frames))` of the N stored."""
  total = source.count_frames()
  if total == 0:
    raise VideoInputError(f"{source.path!r} is an empty video (0 frames); give a video with "
                          "frames.")
  if total < num_frames:
    raise _too_short(source, total, None, num_frames, None, 0.0)
  wanted = np.floor(np.linspace(0, total - 1, num_frames) + 0.5).astype(int)
  chosen: list[_Frame] = []
  stream = source.frames(0, None, passthrough=True)
  try:
    for frame in stream:
      if frame.index == wanted[len(chosen)]:
        chosen.append(frame)
        if len(chosen) == num_frames:
          return chosen
  finally:
    stream.close()
  if not chosen:
    raise VideoInputError(f"{source.path!r} is an empty video (0 frames); give a video with "
                          "frames.")
  # The container listed more frames than decode (rare): the missing tail repeats the last one.
  return chosen + [chosen[-1]] * (num_frames - len(chosen))


# ---------------------------------------------------------------------------------------------
# Public readers


def read_video(path: str, num_frames: int, height: int, width: int, *, fps: float | None = None,
               start_seconds: float = 0.0) -> np.ndarray:
  """Reads `num_frames` frames of a video file, gif or frame folder, cropped and resized.

  Args:
    path: a video file (mp4, m4v, mov, mkv, webm, avi), a gif, or a folder of frames.
    num_frames: number of frames to return.
    height: output frame height.
    width: output frame width.
    fps: sampling rate in frames per second from `start_seconds`; None spreads `num_frames`
      evenly over the whole video (then `start_seconds` must be 0).
    start_seconds: time of the first frame, when `fps` is given.

  Returns:
    float32 `(num_frames, height, width, 3)` in [-1, 1].

  Raises:
    InputNotFoundError: `path` does not exist.
    VideoTooShortError: the video does not hold enough frames.
    VideoInputError: anything else wrong with the input (see the message).
  """
  _check_size(height, width)
  if num_frames < 1 or int(num_frames) != num_frames:
    raise ValueError(f"num_frames must be a positive integer, got {num_frames}.")
  if fps is not None and not (fps > 0 and math.isfinite(fps)):
    raise ValueError(f"fps must be a positive number or None, got {fps}.")
  if not (start_seconds >= 0 and math.isfinite(start_seconds)):
    raise ValueError(f"start_seconds must be >= 0, got {start_seconds}.")
  if fps is None and start_seconds:
    raise ValueError("start_seconds needs fps: with fps=None frames are spread over the whole "
                     "video. Give fps (e.g. fps=3) to start later.")
  source = _open_source(path)
  if fps is None:
    picked = _pick_evenly(source, int(num_frames))
  else:
    picked = _pick_at_rate(source, int(num_frames), float(fps), float(start_seconds))
  video = np.stack([_crop_resize(frame.load(), height, width) for frame in picked])
  return video * 2.0 - 1.0


def read_image(path: str, height: int, width: int) -> np.ndarray:
  """Reads one image (first frame of a gif), center-cropped and area-resized.

  Returns:
    float32 `(height, width, 3)` in [-1, 1].

  Raises:
    InputNotFoundError: `path` does not exist.
    VideoInputError: `path` is a folder, a video, or not a readable image.
  """
  _check_size(height, width)
  path = os.fspath(path)
  _require_exists(path, "image")
  if os.path.isdir(path):
    raise VideoInputError(f"{path!r} is a folder; read_image reads one image file. Use "
                          "read_image_collection for a folder of subject images.")
  extension = os.path.splitext(path)[1].lower()
  if extension in VIDEO_EXTENSIONS:
    raise VideoInputError(f"{path!r} is a video; use read_video for it.")
  if extension not in IMAGE_EXTENSIONS:
    raise VideoInputError(f"{path!r} has an unsupported extension {extension or '(none)'!r}; "
                          f"accepted images: {_ACCEPTED_IMAGES}.")
  with _open_image(path) as image:
    rgb = _pil_to_rgb(image)
  return _crop_resize(rgb, height, width) * 2.0 - 1.0


def read_image_collection(folder: str, height: int, width: int) -> np.ndarray:
  """Reads every image of a subject folder (natural order; any sizes and formats).

  Returns:
    float32 `(N, height, width, 3)` in [-1, 1], each image center-cropped and area-resized.

  Raises:
    InputNotFoundError: `folder` does not exist.
    VideoInputError: `folder` is not a folder, holds no images, or holds other files.
  """
  _check_size(height, width)
  folder = os.fspath(folder)
  _require_exists(folder, "subject folder")
  if not os.path.isdir(folder):
    raise VideoInputError(f"{folder!r} is a file; give the folder that holds the subject images.")
  return np.stack([read_image(file, height, width)
                   for file in _list_images(folder, "subject folder")])
