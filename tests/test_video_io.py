"""Tests for dreamix_jax.data.outputs (writers) and dreamix_jax.data.video (readers)."""

import errno
import json
import os
import subprocess

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from dreamix_jax.data import outputs
from dreamix_jax.data import video


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


def _failing_ffmpeg(folder, message):
  """An executable standing in for ffmpeg: it reads all the frames, writes a partial file to its
  output (the last argument), prints `message` on stderr and exits 1, as ffmpeg does when the disk
  fills during a write."""
  script = folder / "ffmpeg_that_fails"
  script.write_text("#!/bin/sh\ncat > /dev/null\nfor last; do :; done\n"
                    f"printf partial > \"$last\"\necho '{message}' >&2\nexit 1\n")
  script.chmod(0o755)
  return str(script)


def test_writers_are_atomic_on_failure(tmp_path, monkeypatch):
  path = tmp_path / "out.mp4"
  outputs.write_mp4(path, _smooth_video(2, 24, 40), fps=8)
  before = path.read_bytes()
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()

  # ffmpeg exits 1 after writing part of the file: an OSError with its message, nothing renamed.
  monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", _failing_ffmpeg(bin_dir, "Conversion failed!"))
  with pytest.raises(OSError, match="status 1.*Conversion failed!") as info:
    outputs.write_mp4(path, _smooth_video(2, 24, 40), fps=8)
  assert info.value.errno is None
  assert path.read_bytes() == before  # the earlier output is untouched
  # A full disk is reported as one (ENOSPC), naming the destination.
  monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", _failing_ffmpeg(
      bin_dir, "[out#0/mp4] Error writing trailer: No space left on device"))
  with pytest.raises(OSError, match="No space left on device") as info:
    outputs.write_mp4(tmp_path / "new.mp4", _smooth_video(2, 24, 40), fps=8)
  assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "new.mp4")
  assert not (tmp_path / "new.mp4").exists()
  monkeypatch.delenv("IMAGEIO_FFMPEG_EXE")

  def failing_save(self, *args, **kwargs):
    raise OSError("simulated disk full")

  monkeypatch.setattr(Image.Image, "save", failing_save)
  with pytest.raises(OSError, match="disk full"):
    outputs.write_gif(tmp_path / "new.gif", _smooth_video(2, 24, 40), fps=8)
  with pytest.raises(OSError, match="disk full"):
    outputs.write_comparison_png(tmp_path / "new.png", [_smooth_video(2, 24, 40)])
  assert sorted(os.listdir(tmp_path)) == ["bin", "out.mp4"]


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


# ---------------------------------------------------------------------------------------------
# Readers


def _indexed_frames(num_frames, height=32, width=48):
  """Flat uint8 frames whose colour encodes the frame index (robust to lossy codecs)."""
  index = np.arange(num_frames)
  frames = np.zeros((num_frames, height, width, 3), np.uint8)
  frames[..., 0] = ((index % 16) * 16 + 8)[:, None, None]
  frames[..., 1] = ((index // 16) * 16 + 8)[:, None, None]
  return frames


def _frame_indices(video_array):
  """Inverts _indexed_frames on a read video in [-1, 1]."""
  mean = outputs.to_uint8(video_array).astype(np.float32).mean(axis=(1, 2))
  return (np.round((mean[:, 0] - 8) / 16) + 16 * np.round((mean[:, 1] - 8) / 16)).astype(int)


def _encode(path, frames, fps, codec, pix_fmt_in="rgb24", pix_fmt_out="yuv420p", params=()):
  """Encodes uint8 frames (T, H, W, C) with the bundled ffmpeg."""
  writer = imageio_ffmpeg.write_frames(str(path), (frames.shape[2], frames.shape[1]), fps=fps,
                                       codec=codec, pix_fmt_in=pix_fmt_in,
                                       pix_fmt_out=pix_fmt_out, quality=None, macro_block_size=1,
                                       ffmpeg_log_level="error", output_params=list(params))
  writer.send(None)
  for frame in frames:
    writer.send(np.ascontiguousarray(frame))
  writer.close()
  return str(path)


@pytest.fixture(scope="module")
def long_mp4(tmp_path_factory):
  """240 frames (8 s) at 30 fps, keyframe every 30 frames."""
  path = tmp_path_factory.mktemp("videos") / "indexed.mp4"
  return _encode(path, _indexed_frames(240), 30, "libx264", params=["-g", "30", "-crf", "10"])


@pytest.mark.parametrize("extension,codec,params", [
    (".mp4", "libx264", ["-crf", "10"]),
    (".webm", "libvpx", ["-b:v", "1M"]),
    (".avi", "mpeg4", ["-q:v", "2"]),
    (".mkv", "libx264", ["-crf", "10"]),
])
def test_read_each_container(tmp_path, extension, codec, params):
  path = _encode(tmp_path / f"clip{extension}", _indexed_frames(24), 8, codec, params=params)
  info = video.probe_video(path)
  assert (info.kind, info.fps, info.height, info.width, info.num_frames) == ("video", 8, 32, 48, 24)
  np.testing.assert_array_equal(_frame_indices(video.read_video(path, 24, 32, 48)), np.arange(24))
  at_rate = video.read_video(path, 6, 16, 24, fps=4, start_seconds=0.5)
  assert at_rate.shape == (6, 16, 24, 3) and at_rate.dtype == np.float32
  np.testing.assert_array_equal(_frame_indices(at_rate), [4, 6, 8, 10, 12, 14])


def test_read_gif_uses_its_own_frame_delays(tmp_path):
  path = str(tmp_path / "clip.gif")
  frames = [Image.fromarray(f) for f in _indexed_frames(6)]
  # Frame 2 is shown three times as long as the others: a variable-rate gif.
  frames[0].save(path, save_all=True, append_images=frames[1:],
                 duration=[100, 100, 300, 100, 100, 100], loop=0)
  info = video.probe_video(path)
  assert (info.kind, info.num_frames, info.fps) == ("gif", 6, 6 / 0.8)
  # Frames start at 0, .1, .2, .5, .6, .7 s; each target takes the nearest start (0.4 s -> 0.5 s).
  at_rate = video.read_video(path, 8, 32, 48, fps=10)
  np.testing.assert_array_equal(_frame_indices(at_rate), [0, 1, 2, 2, 3, 3, 4, 5])
  np.testing.assert_array_equal(_frame_indices(video.read_video(path, 3, 32, 48)), [0, 3, 5])


def test_temporal_resampling_picks_nearest_frames(long_mp4):
  at_3fps = video.read_video(long_mp4, 16, 8, 12, fps=3)
  np.testing.assert_array_equal(_frame_indices(at_3fps), np.arange(16) * 10)
  # 1.55 s is frame 46.5: the tie goes to the later frame; later targets round to nearest.
  at_7fps = video.read_video(long_mp4, 5, 8, 12, fps=7, start_seconds=1.55)
  expected = np.floor((1.55 + np.arange(5) / 7) * 30 + 0.5).astype(int)
  np.testing.assert_array_equal(_frame_indices(at_7fps), expected)
  spread = video.read_video(long_mp4, 16, 8, 12)
  np.testing.assert_array_equal(_frame_indices(spread),
                                np.floor(np.linspace(0, 239, 16) + 0.5).astype(int))


def test_streaming_decodes_only_the_needed_frames(long_mp4, monkeypatch):
  pulled = []
  original = imageio_ffmpeg.read_frames

  def counting_read_frames(*args, **kwargs):
    reader = original(*args, **kwargs)
    yield next(reader)  # metadata
    for buffer in reader:
      pulled.append(1)
      yield buffer

  monkeypatch.setattr(imageio_ffmpeg, "read_frames", counting_read_frames)
  video.read_video(long_mp4, 4, 8, 12, fps=3)  # frames 0, 10, 20, 30 of 240
  assert len(pulled) == 31
  pulled.clear()
  # Starting at 6 s seeks to frame 180 first: frames 180..210 only.
  np.testing.assert_array_equal(
      _frame_indices(video.read_video(long_mp4, 4, 8, 12, fps=3, start_seconds=6.0)),
      [180, 190, 200, 210])
  assert len(pulled) == 31


def test_frame_folder_natural_order(tmp_path):
  frames = _indexed_frames(12)
  for index in range(12):
    Image.fromarray(frames[index]).save(tmp_path / f"frame{index + 1}.png")
  info = video.probe_video(str(tmp_path))
  assert (info.kind, info.num_frames, info.fps) == ("frame_folder", 12, None)
  np.testing.assert_array_equal(_frame_indices(video.read_video(str(tmp_path), 12, 32, 48)),
                                np.arange(12))
  # A folder's frames are taken to be at the requested rate: consecutive frames from 0.5 s.
  at_rate = video.read_video(str(tmp_path), 4, 32, 48, fps=4, start_seconds=0.5)
  np.testing.assert_array_equal(_frame_indices(at_rate), [2, 3, 4, 5])


def test_pixel_formats_become_rgb(tmp_path):
  grey = Image.fromarray(np.full((4, 4), 51, np.uint8), "L")
  rgba = Image.fromarray(np.tile(np.array([200, 100, 50, 51], np.uint8), (4, 4, 1)), "RGBA")
  palette = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), "P")
  palette.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
  deep = Image.fromarray(np.full((4, 4), 32768, np.uint16))  # 16-bit grey, above 8-bit range
  for name, image in [("grey", grey), ("rgba", rgba), ("palette", palette), ("deep", deep)]:
    image.save(tmp_path / f"{name}.png")
  assert deep.mode.startswith("I;16")

  def pixel(name, size=4):
    return (video.read_image(str(tmp_path / f"{name}.png"), size, size) + 1) / 2

  np.testing.assert_allclose(pixel("grey"), 51 / 255, atol=1e-6)
  np.testing.assert_allclose(pixel("rgba")[0, 0], np.array([200, 100, 50]) / 255 * 0.2, atol=1e-6)
  np.testing.assert_allclose(pixel("palette", 2), [[[1, 0, 0], [0, 1, 0]], [[0, 0, 1], [0, 1, 0]]],
                             atol=1e-6)
  np.testing.assert_allclose(pixel("deep"), 32768 / 65535, atol=1e-6)


def test_rgba_and_16_bit_videos(tmp_path):
  rgba = np.zeros((3, 16, 16, 4), np.uint8)
  rgba[...] = [240, 120, 60, 128]
  path = _encode(tmp_path / "alpha.mov", rgba, 8, "png", "rgba", "rgba")
  np.testing.assert_allclose((video.read_video(path, 3, 16, 16) + 1) / 2,
                             np.broadcast_to(np.array([240, 120, 60]) / 255 * 128 / 255,
                                             (3, 16, 16, 3)), atol=1e-6)
  grey16 = np.full((3, 16, 16), 40000, np.uint16)
  path = _encode(tmp_path / "deep.mkv", grey16, 8, "ffv1", "gray16le", "gray16le")
  np.testing.assert_allclose((video.read_video(path, 3, 16, 16) + 1) / 2, 40000 / 65535,
                             atol=1 / 255)


def test_center_crop_and_area_resize(tmp_path):
  def read(array, height, width):
    Image.fromarray(array).save(tmp_path / "pattern.png")
    return (video.read_image(str(tmp_path / "pattern.png"), height, width) + 1) / 2

  pixel_checkerboard = (np.indices((16, 16)).sum(0) % 2 * 255).astype(np.uint8)
  np.testing.assert_allclose(read(pixel_checkerboard, 8, 8), 0.5, atol=1e-6)  # flat grey
  block_checkerboard = np.kron(pixel_checkerboard[:8, :8], np.ones((2, 2), np.uint8))
  np.testing.assert_allclose(read(block_checkerboard, 8, 8)[..., 0],
                             pixel_checkerboard[:8, :8] / 255, atol=1e-6)  # exact footprints
  stripes = np.zeros((10, 20, 3), np.uint8)
  stripes[:, :5] = [255, 0, 0]
  stripes[:, 5:15] = [0, 255, 0]
  stripes[:, 15:] = [0, 0, 255]
  np.testing.assert_allclose(read(stripes, 4, 4), np.broadcast_to([0, 1, 0], (4, 4, 3)), atol=1e-6)
  # 3 pixels wide to 2: the center crop [0.5, 2.5) splits the edge pixels fractionally.
  row = np.array([[[0, 0, 0], [100, 100, 100], [200, 200, 200]]], np.uint8)
  np.testing.assert_allclose(read(row, 1, 2)[0, :, 0], np.array([50, 150]) / 255, atol=1e-6)


def test_subject_image_collection(tmp_path):
  Image.fromarray(np.full((30, 20, 4), 255, np.uint8), "RGBA").save(tmp_path / "b10.png")
  Image.fromarray(np.full((50, 70), 0, np.uint8), "L").save(tmp_path / "b2.jpg")
  Image.fromarray(np.full((9, 9, 3), [255, 0, 0], np.uint8)).save(tmp_path / "a.bmp")
  collection = video.read_image_collection(str(tmp_path), 16, 12)
  assert collection.shape == (3, 16, 12, 3) and collection.dtype == np.float32
  np.testing.assert_allclose(collection.mean(axis=(1, 2)), [[1, -1, -1], [-1, -1, -1], [1, 1, 1]],
                             atol=0.02)  # a.bmp, b2.jpg, b10.png in natural order


def test_round_trip_through_writers(tmp_path):
  smooth = _smooth_video(12, 24, 40)
  outputs.write_mp4(tmp_path / "out.mp4", smooth, fps=8)
  read_back = video.read_video(str(tmp_path / "out.mp4"), 12, 24, 40, fps=8)
  assert read_back.shape == (12, 24, 40, 3)
  assert np.abs(read_back - smooth).mean() < 2.5 / 127.5
  few_colours = _indexed_frames(16, 24, 40)
  outputs.write_gif(tmp_path / "out.gif", few_colours, fps=8)
  np.testing.assert_array_equal(
      outputs.to_uint8(video.read_video(str(tmp_path / "out.gif"), 16, 24, 40, fps=8)),
      few_colours)


def test_input_errors(tmp_path, long_mp4):
  missing = str(tmp_path / "missing.mp4")
  with pytest.raises(video.InputNotFoundError, match="missing.mp4") as caught:
    video.read_video(missing, 16, 8, 8)
  assert isinstance(caught.value, FileNotFoundError)
  assert isinstance(caught.value, video.VideoInputError)

  text = tmp_path / "notes.mp4"
  text.write_text("shopping list\n")
  with pytest.raises(video.VideoInputError, match=r"text file \(starting 'shopping list'\).*"
                                                  r"Accepted inputs: \.mp4"):
    video.read_video(str(text), 16, 8, 8)

  empty = str(tmp_path / "empty.avi")
  subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-f", "lavfi", "-i",
                  "color=c=red:s=32x32:r=8", "-frames:v", "0", "-c:v", "mpeg4", empty], check=True)
  with pytest.raises(video.VideoInputError, match=r"empty video \(0 frames\)"):
    video.read_video(empty, 16, 8, 8)

  with pytest.raises(video.VideoTooShortError,
                     match=r"found 240 frames \(8\.0s at 30 fps\) but 16 are needed at 1 fps "
                           r"from 0s \(up to 16\.0s\): lower num_frames or fps"):
    video.read_video(long_mp4, 16, 8, 8, fps=1)
  with pytest.raises(video.VideoTooShortError, match="found 240 frames but 300 are needed"):
    video.read_video(long_mp4, 300, 8, 8)

  frames = tmp_path / "frames"
  frames.mkdir()
  with pytest.raises(video.VideoInputError, match="frame folder .* holds no images"):
    video.read_video(str(frames), 16, 8, 8)
  (frames / "readme.txt").write_text("x")
  with pytest.raises(video.VideoInputError, match="'readme.txt'.*Move them out"):
    video.read_video(str(frames), 16, 8, 8)
  subjects = tmp_path / "subjects"
  subjects.mkdir()
  with pytest.raises(video.VideoInputError, match="subject folder .* holds no images"):
    video.read_image_collection(str(subjects), 8, 8)

  with pytest.raises(video.VideoInputError, match=r"unsupported extension '\.txt'.*\.webm"):
    video.read_video(str(frames / "readme.txt"), 16, 8, 8)
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "still.png")
  with pytest.raises(video.VideoInputError, match="single image.*image-to-video"):
    video.read_video(str(tmp_path / "still.png"), 16, 8, 8)
  with pytest.raises(video.VideoInputError, match="is a video; use read_video"):
    video.read_image(long_mp4, 8, 8)
  with pytest.raises(ValueError, match="start_seconds needs fps"):
    video.read_video(long_mp4, 4, 8, 8, start_seconds=1.0)


def test_huge_image_is_a_clear_error(tmp_path, monkeypatch):
  """Pillow refuses images over twice MAX_IMAGE_PIXELS (a decompression bomb); lowered here so a
  64×64 image counts as one."""
  path = tmp_path / "huge.png"
  Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(path)
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
  with pytest.raises(video.VideoInputError, match="too large to decode safely.*downscale it"):
    video.read_image(str(path), 16, 16)


def test_an_output_path_that_is_a_folder_is_refused(tmp_path):
  (tmp_path / "out.png").mkdir()
  with pytest.raises(ValueError, match=r"out.png is a folder; give a file name"):
    outputs.write_png(tmp_path / "out.png", np.zeros((4, 4, 3), np.uint8))
  assert os.listdir(tmp_path / "out.png") == []
