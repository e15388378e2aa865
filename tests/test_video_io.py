"""Tests for dreamix_jax.data.outputs (writers) and dreamix_jax.data.video (readers)."""

import json
import os

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from dreamix_jax.data import outputs


def _smooth_video(num_frames, height, width):
  """A smooth float video in [-1, 1]: a slowly drifting low-frequency colour gradient."""
  t = np.arange(num_frames)[:, None, None, None]
  y = np.arange(height)[None, :, None, None] / height
  x = np.arange(width)[None, None, :, None] / width
  phase = np.array([0.0, 0.3, 0.6])
  video = 0.6 * np.sin(np.pi * (0.5 * x + 0.3 * y + 0.02 * t + phase))
  return np.broadcast_to(video, (num_frames, height, width, 3)).astype(np.float32)


def _decode_with_ffmpeg(path):
  """All frames of a video file as uint8 (T, H, W, 3), plus the container's fps."""
  reader = imageio_ffmpeg.read_frames(str(path))
  meta = next(reader)
  width, height = meta["size"]
  frames = [np.frombuffer(buffer, np.uint8).reshape(height, width, 3) for buffer in reader]
  return np.stack(frames), meta["fps"]


def _no_temporaries(folder):
  return [name for name in os.listdir(folder) if ".tmp-" in name] == []


# ---------------------------------------------------------------------------------------------
# Writers


def test_to_uint8_maps_range_and_clips():
  video = np.array([-1.5, -1.0, 0.0, 1.0, 2.0], np.float32)
  np.testing.assert_array_equal(outputs.to_uint8(video), [0, 0, 128, 255, 255])
  uint8_video = np.arange(6, dtype=np.uint8)
  assert outputs.to_uint8(uint8_video) is uint8_video
  with pytest.raises(ValueError, match="dtype int32"):
    outputs.to_uint8(np.zeros(3, np.int32))
  with pytest.raises(ValueError, match="NaN"):
    outputs.to_uint8(np.array([np.nan], np.float32))


@pytest.mark.parametrize("height,width", [(24, 40), (23, 41)])
def test_write_mp4_tiny_round_trip(tmp_path, height, width):
  video = _smooth_video(10, height, width)
  path = tmp_path / "out.mp4"
  outputs.write_mp4(str(path), video, fps=8)
  frames, fps = _decode_with_ffmpeg(path)
  assert fps == 8
  # Odd sizes are padded to even by replicating the last row/column.
  assert frames.shape == (10, height + height % 2, width + width % 2, 3)
  error = np.abs(frames[:, :height, :width].astype(np.float32) - outputs.to_uint8(video))
  assert error.mean() < 2.5, error.mean()  # yuv420p chroma subsampling dominates
  assert _no_temporaries(tmp_path)


def test_write_mp4_is_h264_yuv420p(tmp_path):
  path = tmp_path / "out.mp4"
  outputs.write_mp4(path, _smooth_video(3, 24, 40), fps=8)
  reader = imageio_ffmpeg.read_frames(str(path))
  meta = next(reader)
  reader.close()
  assert meta["codec"] == "h264"
  assert meta["pix_fmt"].startswith("yuv420p")


def test_write_gif_round_trip_is_exact_on_few_colours(tmp_path):
  rng = np.random.default_rng(0)
  palette = rng.integers(0, 256, (6, 3), dtype=np.uint8)
  video = palette[rng.integers(0, 6, (5, 24, 40))]
  path = tmp_path / "out.gif"
  outputs.write_gif(path, video, fps=8)
  with Image.open(path) as gif:
    assert gif.n_frames == 5
    frames, delays = [], []
    for index in range(gif.n_frames):
      gif.seek(index)
      frames.append(np.asarray(gif.convert("RGB")))
      delays.append(gif.info["duration"])
  np.testing.assert_array_equal(np.stack(frames), video)
  assert delays == [130, 120, 130, 120, 130]  # starts at round(100 k / 8) hundredths of a second
  assert _no_temporaries(tmp_path)


def test_writers_are_atomic_on_failure(tmp_path, monkeypatch):
  path = tmp_path / "out.mp4"
  outputs.write_mp4(path, _smooth_video(2, 24, 40), fps=8)
  before = path.read_bytes()

  def failing_writer(temporary, *args, **kwargs):
    with open(temporary, "wb") as f:
      f.write(b"partial")
    raise OSError("simulated encoder crash")
    yield  # pylint: disable=unreachable

  monkeypatch.setattr(imageio_ffmpeg, "write_frames", failing_writer)
  with pytest.raises(OSError, match="simulated"):
    outputs.write_mp4(path, _smooth_video(2, 24, 40), fps=8)
  assert path.read_bytes() == before  # the earlier output is untouched
  with pytest.raises(OSError, match="simulated"):
    outputs.write_mp4(tmp_path / "new.mp4", _smooth_video(2, 24, 40), fps=8)
  assert not (tmp_path / "new.mp4").exists()

  def failing_save(self, *args, **kwargs):
    raise OSError("simulated disk full")

  monkeypatch.setattr(Image.Image, "save", failing_save)
  with pytest.raises(OSError, match="disk full"):
    outputs.write_gif(tmp_path / "new.gif", _smooth_video(2, 24, 40), fps=8)
  with pytest.raises(OSError, match="disk full"):
    outputs.write_comparison_png(tmp_path / "new.png", [_smooth_video(2, 24, 40)])
  assert sorted(os.listdir(tmp_path)) == ["out.mp4"]


def test_comparison_png_layout(tmp_path):
  source = np.zeros((16, 24, 40, 3), np.uint8)
  source[..., 0] = np.arange(16)[:, None, None] * 10  # frame index in the red channel
  edited = np.full((32, 12, 20, 3), 255, np.uint8)  # twice the frames, half the size
  path = tmp_path / "grid.png"
  outputs.write_comparison_png(path, [source, edited], max_frames=8, scale=2)
  grid = np.asarray(Image.open(path))
  assert grid.shape == (2 * 24 * 2, 8 * 40 * 2, 3)
  # Columns show frames evenly spread over the row: round(linspace(0, 15, 8)).
  shown = grid[0, ::80, 0] // 10
  np.testing.assert_array_equal(shown, np.round(np.linspace(0, 15, 8)).astype(int))
  assert (grid[48:] == 255).all()  # the small row is enlarged to the full cell

  outputs.write_comparison_png(path, [source, edited], labels=["input", "output"], max_frames=4)
  grid = np.asarray(Image.open(path))
  band = outputs.LABEL_BAND_HEIGHT
  assert grid.shape == (2 * (band + 24), 4 * 40, 3)
  assert grid[:band].max() > 200  # the label text is drawn in the band
  assert (grid[band + 24 + band:] == 255).all()
  with pytest.raises(ValueError, match="one label per row"):
    outputs.write_comparison_png(path, [source], labels=["a", "b"])
  with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
    outputs.write_comparison_png(path, [source[0]])


def test_write_json_converts_numpy_and_rejects_nan(tmp_path):
  path = tmp_path / "meta.json"
  outputs.write_json(path, {"prompt": "a dog", "s": np.float32(0.5), "steps": np.int64(3),
                            "shape": np.array([16, 24, 40]), "dir": tmp_path})
  assert json.loads(path.read_text()) == {"prompt": "a dog", "s": 0.5, "steps": 3,
                                          "shape": [16, 24, 40], "dir": str(tmp_path)}
  with pytest.raises(ValueError):
    outputs.write_json(tmp_path / "bad.json", {"loss": float("nan")})
  assert sorted(os.listdir(tmp_path)) == ["meta.json"]
