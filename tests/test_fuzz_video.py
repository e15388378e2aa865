"""Fuzzing the video/image readers and their preprocessing (crop + area resize) with hypothesis.

Random containers (mp4, gif, folders of png/tif frames), pixel formats (RGB, grey, RGBA, palette,
16-bit grey, 32-bit float grey), shapes, frame counts, requested sizes and rates, and truncated
files. A read either returns exactly the requested shape with values in [-1, 1], or raises the
project's `VideoInputError` (with a message); anything else is a bug.
"""

import os
import tempfile

import numpy as np
from hypothesis import HealthCheck, event, given, settings, strategies as st
from PIL import Image

from dreamix_jax.data import outputs, video as video_io

FORMATS = ("RGB", "L", "RGBA", "P", "I;16", "F")
FUZZ = settings(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


def _image(rng, mode, height, width) -> Image.Image:
  """A random Pillow image of `mode`."""
  if mode == "I;16":
    return Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
  if mode == "F":
    return Image.fromarray(rng.random((height, width), dtype=np.float32) * 1.5 - 0.25)
  channels = {"RGB": 3, "RGBA": 4}.get(mode, 1)
  pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
  image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels)
  return image.quantize(16) if mode == "P" else image


def _truncate(path, fraction):
  """Keeps the first `fraction` of the file's bytes (None: leaves it whole)."""
  if fraction is not None:
    data = open(path, "rb").read()
    open(path, "wb").write(data[:int(len(data) * fraction)])


def _write_source(directory, rng, kind, mode, frames, height, width, fps, truncate) -> str:
  video = rng.uniform(-1, 1, (frames, height, width, 3))
  if kind == "mp4":
    path = os.path.join(directory, "in.mp4")
    outputs.write_mp4(path, video, fps)
  elif kind == "gif":
    path = os.path.join(directory, "in.gif")
    outputs.write_gif(path, video, fps)
  else:
    path = os.path.join(directory, "frames")
    os.mkdir(path)
    extension = ".tif" if mode == "F" else ".png"
    for i in range(frames):
      _image(rng, mode, height, width).save(os.path.join(path, f"frame{i}{extension}"))
    if truncate is not None:  # damage one frame of the folder
      return _damaged(path, rng, truncate)
  _truncate(path, truncate)
  return path


def _damaged(folder, rng, fraction) -> str:
  files = sorted(os.listdir(folder))
  _truncate(os.path.join(folder, files[int(rng.integers(len(files)))]), fraction)
  return folder


def _check(read, shape):
  """Runs `read()`: the result must have `shape` and lie in [-1, 1], or be a VideoInputError.
  Returns the error (None on success)."""
  try:
    out = read()
  except video_io.VideoInputError as error:
    assert str(error)
    event(type(error).__name__)
    return error
  assert out.shape == shape and out.dtype == np.float32
  assert np.all(np.isfinite(out)) and out.min() >= -1 - 1e-5 and out.max() <= 1 + 1e-5
  event("read")
  return None


@FUZZ
@given(kind=st.sampled_from(("mp4", "gif", "folder")), mode=st.sampled_from(FORMATS),
       frames=st.integers(1, 6), height=st.integers(1, 20), width=st.integers(1, 20),
       source_fps=st.sampled_from((1.0, 5.0, 12.5, 30.0)),
       truncate=st.one_of(st.none(), st.floats(0.0, 0.95)),
       num_frames=st.integers(1, 8), out_height=st.integers(1, 12), out_width=st.integers(1, 12),
       fps=st.one_of(st.none(), st.sampled_from((1.0, 3.0, 10.0))), seed=st.integers(0, 2**16))
def test_read_video_returns_the_shape_or_a_clear_error(kind, mode, frames, height, width,
                                                       source_fps, truncate, num_frames,
                                                       out_height, out_width, fps, seed):
  rng = np.random.default_rng(seed)
  with tempfile.TemporaryDirectory() as directory:
    path = _write_source(directory, rng, kind, mode, frames, height, width, source_fps, truncate)
    error = _check(lambda: video_io.read_video(path, num_frames, out_height, out_width, fps=fps),
                   (num_frames, out_height, out_width, 3))
    if truncate is None and error is not None:  # an intact source fails only by being too short
      assert isinstance(error, video_io.VideoTooShortError), error


@FUZZ
@given(mode=st.sampled_from(FORMATS), count=st.integers(1, 4), height=st.integers(1, 24),
       width=st.integers(1, 24), truncate=st.one_of(st.none(), st.floats(0.0, 0.95)),
       out_height=st.integers(1, 16), out_width=st.integers(1, 16), seed=st.integers(0, 2**16))
def test_read_images_return_the_shape_or_a_clear_error(mode, count, height, width, truncate,
                                                       out_height, out_width, seed):
  rng = np.random.default_rng(seed)
  with tempfile.TemporaryDirectory() as directory:
    extension = ".tif" if mode == "F" else ".png"
    files = [os.path.join(directory, f"{i}{extension}") for i in range(count)]
    for file in files:
      _image(rng, mode, height, width).save(file)
    if truncate is not None:
      _truncate(files[-1], truncate)
    error = _check(lambda: video_io.read_image(files[0], out_height, out_width),
                   (out_height, out_width, 3))
    if count > 1 or truncate is None:
      assert error is None, error  # an intact image of any of these formats is read
    _check(lambda: video_io.read_image_collection(directory, out_height, out_width),
           (count, out_height, out_width, 3))


@FUZZ
@given(height=st.integers(1, 30), width=st.integers(1, 30), out_height=st.integers(1, 30),
       out_width=st.integers(1, 30), value=st.floats(0.0, 1.0))
def test_crop_resize_keeps_constant_frames_constant(height, width, out_height, out_width, value):
  """Area resizing is a weighted mean with weights summing to one: a flat frame stays flat."""
  frame = np.full((height, width, 3), value, np.float32)
  out = video_io._crop_resize(frame, out_height, out_width)
  assert out.shape == (out_height, out_width, 3)
  np.testing.assert_allclose(out, value, atol=1e-5)
