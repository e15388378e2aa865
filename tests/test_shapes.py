"""Tests for the moving-shapes renderer, its TFDS builders and the input pipeline."""

import csv
import dataclasses
import itertools
import json

import imageio.v2 as imageio
import numpy as np
import pytest
import tensorflow_datasets as tfds

from dreamix_jax.data import outputs
from dreamix_jax.data import pipeline
from dreamix_jax.shapes import world as shapes
from dreamix_jax.data import tfds_builders
from dreamix_jax.data import video as video_io


def _clips(n, seed=0):
  return [shapes.sample_attributes(np.random.default_rng((seed, i))) for i in range(n)]


def _coverage(clip, frames=32, height=48, width=80):
  """Object coverage recovered from pixels: two renders differing only in object color."""
  white = shapes.render(dataclasses.replace(clip, color="white"), frames, height, width)
  red = shapes.render(dataclasses.replace(clip, color="red"), frames, height, width)
  return (white - red)[..., 1] / (2 * (shapes.COLOR_RGB["white"][1] - shapes.COLOR_RGB["red"][1]))


# ---------------------------------------------------------------- captions and attributes


def test_caption_round_trip_over_whole_vocabulary():
  for shape, color, background, motion in itertools.product(
      shapes.SHAPES, shapes.COLORS, shapes.BACKGROUNDS, shapes.MOTIONS):
    attrs = shapes.Attributes(shape, color, background, motion)
    assert shapes.parse_caption(shapes.caption(attrs)) == attrs
  assert shapes.caption(shapes.Attributes("circle", "red", "black", "left")) == (
      "a red circle moving left on a black background")
  assert shapes.caption(shapes.Attributes("square", "white", "gray", "still")) == (
      "a white square standing still on a gray background")
  assert shapes.parse_caption("  A Red circle moving LEFT on a black background. ") == (
      shapes.Attributes("circle", "red", "black", "left"))


@pytest.mark.parametrize("text", [
    "a red circle jumping left on a black background",
    "a pink circle moving left on a black background",
    "a red circle moving sideways on a black background",
    "red circle moving left on a black background",
    "",
])
def test_parse_caption_rejects_text_outside_grammar(text):
  with pytest.raises(ValueError, match="moving-shapes"):
    shapes.parse_caption(text)


def test_attributes_validate_vocabulary():
  with pytest.raises(ValueError, match="hexagon"):
    shapes.Attributes("hexagon", "red", "black", "left")


def test_sample_attributes_ranges_and_captions():
  clips = _clips(400)
  for clip in clips:
    assert shapes.SIZE_RANGE[0] <= clip.size <= shapes.SIZE_RANGE[1]
    if clip.motion == "still":
      assert clip.speed == 0
    else:
      assert shapes.SPEED_RANGE[0] <= clip.speed <= shapes.SPEED_RANGE[1]
    assert shapes.parse_caption(shapes.caption(clip)) == clip.discrete()
  for field, vocabulary in (("shape", shapes.SHAPES), ("color", shapes.COLORS),
                            ("background", shapes.BACKGROUNDS), ("motion", shapes.MOTIONS)):
    assert {getattr(c, field) for c in clips} == set(vocabulary)


# ---------------------------------------------------------------- rendering


def test_render_is_deterministic_by_seed():
  clip = shapes.sample_attributes(np.random.default_rng(3))
  again = shapes.sample_attributes(np.random.default_rng(3))
  other = shapes.sample_attributes(np.random.default_rng(4))
  video = shapes.render(clip)
  assert clip == again
  assert video.tobytes() == shapes.render(again).tobytes()
  assert video.tobytes() != shapes.render(other).tobytes()
  retextured = dataclasses.replace(clip, texture_seed=clip.texture_seed + 1)
  assert not np.array_equal(video, shapes.render(retextured))


def test_render_shapes_dtypes_and_range():
  clips = _clips(3)
  videos = shapes.render_batch(clips)
  assert videos.shape == (3, 32, 48, 80, 3) and videos.dtype == np.float32
  assert videos.min() >= -1 and videos.max() <= 1
  np.testing.assert_array_equal(videos[1], shapes.render(clips[1]))
  np.testing.assert_array_equal(shapes.render_image(clips[0]), videos[0, 0])
  assert shapes.render(clips[0], 16, 24, 40).shape == (16, 24, 40, 3)


def test_background_texture_is_static_small_and_uncaptioned():
  clip = dataclasses.replace(_clips(1)[0], background="gray")
  video = shapes.render(clip)
  coverage = _coverage(clip)
  clear = (coverage == 0).all(0)  # Pixels the object never touches.
  background = 2 * np.array(shapes.BACKGROUND_RGB["gray"], np.float32) - 1
  texture = video[:, clear] - background
  np.testing.assert_allclose(texture, np.broadcast_to(texture[:1], texture.shape))  # Static.
  np.testing.assert_allclose(texture[..., 0], texture[..., 2], atol=1e-6)  # Gray texture.
  assert np.abs(texture).max() <= shapes.TEXTURE_MAX + 1e-6
  assert texture.std() > 0.02


@pytest.mark.parametrize("shape,area_factor,rtol", [("square", 1.0, 1e-4),
                                                     ("circle", np.pi / 4, 0.01),
                                                     ("triangle", 0.5, 0.01)])
def test_coverage_has_exact_area_and_is_anti_aliased(shape, area_factor, rtol):
  for clip in _clips(6, seed=1):
    clip = dataclasses.replace(clip, shape=shape)
    coverage = _coverage(clip)
    assert coverage.min() > -1e-5 and coverage.max() < 1 + 1e-5
    np.testing.assert_allclose(coverage.sum((1, 2)), area_factor * clip.size**2, rtol=rtol)
    edge = (coverage > 0.05) & (coverage < 0.95)
    assert edge.sum((1, 2)).min() >= 8  # Intermediate values along every frame's edges.


def test_object_moves_as_captioned_and_stays_in_frame():
  for clip in _clips(200, seed=2):
    times = np.arange(32)
    dx, dy = shapes.MOTION_DIRECTION[clip.motion]
    cx = clip.x + dx * clip.speed * times
    cy = clip.y + dy * clip.speed * times
    half, margin = clip.size / 2, shapes.MARGIN - 1e-9
    assert (cx - half >= margin).all() and (cx + half <= 80 - margin).all()
    assert (cy - half >= margin).all() and (cy + half <= 48 - margin).all()
    if clip.motion != "still":
      assert clip.speed * 31 >= 15
  for clip in _clips(8, seed=3):
    clip = dataclasses.replace(clip, shape="square")
    coverage = _coverage(clip)
    border = np.concatenate([coverage[:, 0], coverage[:, -1], coverage[:, :, 0],
                             coverage[:, :, -1]], axis=1)
    assert np.abs(border).max() < 1e-5
    area = coverage.sum((1, 2))
    centroid_x = (coverage.sum(1) * (np.arange(80) + 0.5)).sum(-1) / area
    centroid_y = (coverage.sum(2) * (np.arange(48) + 0.5)).sum(-1) / area
    dx, dy = shapes.MOTION_DIRECTION[clip.motion]
    # Partly covered pixels weigh at their centers: exact to within a few hundredths.
    np.testing.assert_allclose(centroid_x, clip.x + dx * clip.speed * np.arange(32), atol=0.02)
    np.testing.assert_allclose(centroid_y, clip.y + dy * clip.speed * np.arange(32), atol=0.02)


# ---------------------------------------------------------------- derive


def test_derive_skips_frames_and_area_resizes():
  video = np.random.default_rng(0).uniform(-1, 1, (2, 32, 48, 80, 3)).astype(np.float32)
  base = shapes.derive(video, 16, 24, 40)
  assert base.shape == (2, 16, 24, 40, 3) and base.dtype == np.float32
  np.testing.assert_allclose(base[1, 3, 5, 7], video[1, 6, 10:12, 14:16].mean((0, 1)), atol=1e-6)
  tsr = shapes.derive(video[0], 32, 24, 40)
  np.testing.assert_allclose(tsr.mean(), video[0].mean(), atol=1e-6)  # Mean preserving.
  np.testing.assert_array_equal(shapes.derive(video, 8, 48, 80), video[:, ::4])
  # Rendering at a lower resolution shows the same instants as frame skipping.
  clip = _clips(1)[0]
  np.testing.assert_allclose(shapes.derive(shapes.render(clip), 16, 48, 80),
                             shapes.render(clip, 16, 48, 80), atol=1e-5)
  assert shapes.derive(np.zeros((4, 6, 8, 3), np.uint8), 2, 3, 4).dtype == np.float32


@pytest.mark.parametrize("size", [(12, 24, 40), (16, 20, 40), (16, 24, 30), (0, 24, 40)])
def test_derive_rejects_non_integer_factors(size):
  with pytest.raises(ValueError, match="divisor"):
    shapes.derive(np.zeros((32, 48, 80, 3), np.float32), *size)


# ---------------------------------------------------------------- TFDS builders

_SEED = 5


@pytest.fixture(scope="module")
def moving_shapes(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  config = tfds_builders.MovingShapesConfig(name="tiny_base", frames=16, height=24, width=40,
                                            num_train=6, num_test=4, seed=_SEED)
  builder = tfds_builders.MovingShapes(config=config, data_dir=str(data_dir))
  builder.download_and_prepare()
  return data_dir, builder


def test_moving_shapes_matches_renderer(moving_shapes):
  data_dir, builder = moving_shapes
  sources = builder.as_data_source()
  assert {split: len(source) for split, source in sources.items()} == {"train": 6, "test": 4}
  reread = tfds.data_source("moving_shapes/tiny_base", data_dir=str(data_dir))
  for split, source in sources.items():
    for index in range(len(source)):
      example = source[index]
      clip = shapes.clip_attributes(_SEED, split, index)
      expected = outputs.to_uint8(shapes.derive(shapes.render(clip), 16, 24, 40))
      assert example["video"].dtype == np.uint8 and example["video"].shape == (16, 24, 40, 3)
      np.testing.assert_array_equal(example["video"], expected)
      np.testing.assert_array_equal(reread[split][index]["video"], expected)
      assert example["caption"].decode() == shapes.caption(clip)
      for field, vocabulary in (("shape", shapes.SHAPES), ("color", shapes.COLORS),
                                ("background", shapes.BACKGROUNDS),
                                ("motion", shapes.MOTIONS)):
        assert vocabulary[example[field]] == getattr(clip, field)
  np.testing.assert_allclose(outputs.from_uint8(expected),
                             shapes.derive(shapes.render(clip), 16, 24, 40), atol=1 / 127.5)


def test_predefined_configs_are_the_toy_cascade_stages():
  configs = tfds_builders.MovingShapes.BUILDER_CONFIGS
  sizes = {c.name: (c.frames, c.height, c.width) for c in configs}
  assert sizes == {"base": (16, 24, 40), "tsr": (32, 24, 40), "ssr": (32, 48, 80)}
  with pytest.raises(ValueError, match="divide"):
    tfds_builders.MovingShapesConfig(name="bad", height=30)


def test_train_and_test_splits_are_disjoint():
  train = {shapes.clip_attributes(0, "train", i) for i in range(2000)}
  test = {shapes.clip_attributes(0, "test", i) for i in range(512)}
  assert len(train) == 2000 and len(test) == 512
  assert not train & test
  assert not {c.texture_seed for c in train} & {c.texture_seed for c in test}
  with pytest.raises(ValueError, match="split"):
    shapes.clip_key(0, "validation", 0)


def _write_video(path, seed, frames=6, height=32, width=48):
  rng = np.random.default_rng(seed)
  video = np.repeat(rng.integers(0, 256, (frames, 1, 1, 3), np.uint8), height, 1)
  video = np.repeat(video, width, 2)  # Flat frames survive lossy encoding.
  imageio.mimwrite(str(path), list(video), fps=8, macro_block_size=16)


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_video_folder_reads_a_manifest(tmp_path, kind):
  (tmp_path / "clips").mkdir()
  rows = [{"path": "clips/a.mp4", "caption": "a first clip"},
          {"path": "clips/b.mp4", "caption": "a second, comma clip"}]
  for seed, row in enumerate(rows):
    _write_video(tmp_path / row["path"], seed)
  manifest = tmp_path / f"videos.{kind}"
  with open(manifest, "w", newline="") as f:
    if kind == "csv":
      writer = csv.DictWriter(f, ["path", "caption"])
      writer.writeheader()
      writer.writerows(rows)
    else:
      f.writelines(json.dumps(row) + "\n" for row in rows)
  config = tfds_builders.VideoFolderConfig(name=f"mine_{kind}", manifest=str(manifest),
                                           frames=4, height=8, width=12)
  builder = tfds_builders.VideoFolder(config=config, data_dir=str(tmp_path / "tfds"))
  builder.download_and_prepare()
  source = builder.as_data_source()["train"]
  assert len(source) == 2
  for index, row in enumerate(rows):
    example = source[index]
    assert example["caption"].decode() == row["caption"]
    expected = video_io.read_video(str(tmp_path / row["path"]), 4, 8, 12)
    np.testing.assert_array_equal(example["video"], outputs.to_uint8(expected))


def test_read_manifest_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    tfds_builders.read_manifest(str(tmp_path / "missing.csv"))
  bad = tmp_path / "bad.csv"
  bad.write_text("file,text\na.mp4,hello\n")
  with pytest.raises(ValueError, match="`path`"):
    tfds_builders.read_manifest(str(bad))
  missing_video = tmp_path / "videos.jsonl"
  missing_video.write_text(json.dumps({"path": "nope.mp4", "caption": "x"}) + "\n")
  with pytest.raises(FileNotFoundError, match="nope.mp4"):
    tfds_builders.read_manifest(str(missing_video))
  text = tmp_path / "videos.txt"
  text.write_text("a.mp4 hello\n")
  with pytest.raises(ValueError, match=".csv or .jsonl"):
    tfds_builders.read_manifest(str(text))


# ---------------------------------------------------------------- input pipeline


def _toy_source(n):
  return [{"index": np.int64(i), "value": np.full((2,), i, np.float32)} for i in range(n)]


def test_batches_are_a_pure_function_of_seed_and_step():
  source = _toy_source(10)
  run = pipeline.batches(source, 4, seed=1)
  first = [next(run)["index"] for _ in range(8)]
  resumed = pipeline.batches(source, 4, seed=1, start_step=5)
  for step in range(5, 8):
    np.testing.assert_array_equal(next(resumed)["index"], first[step])
  stream = np.concatenate(first)  # 32 positions = 3 full epochs + 2.
  for epoch in range(3):
    assert sorted(stream[10 * epoch:10 * (epoch + 1)]) == list(range(10))
    np.testing.assert_array_equal(stream[10 * epoch:10 * (epoch + 1)],
                                  pipeline.epoch_permutation(1, epoch, 10))
  other_seed = [next(pipeline.batches(source, 4, seed=s))["index"] for s in range(2, 5)]
  assert not all(np.array_equal(batch, first[0]) for batch in other_seed)
  batch = next(pipeline.batches(source, 4, seed=1))
  assert batch["value"].shape == (4, 2)
  np.testing.assert_array_equal(batch["value"][:, 0], batch["index"])


def test_batches_slice_per_host():
  source = _toy_source(7)
  whole = pipeline.batches(source, 6, seed=3, start_step=2)
  hosts = [pipeline.batches(source, 6, seed=3, start_step=2, process_index=i, process_count=3)
           for i in range(3)]
  for _ in range(3):
    parts = [next(host)["index"] for host in hosts]
    assert all(len(part) == 2 for part in parts)
    np.testing.assert_array_equal(np.concatenate(parts), next(whole)["index"])
  with pytest.raises(ValueError, match="multiple of process_count"):
    next(pipeline.batches(source, 5, seed=0, process_count=2))
  with pytest.raises(ValueError, match="process_index"):
    next(pipeline.batches(source, 4, seed=0, process_index=2, process_count=2))
  with pytest.raises(ValueError, match="empty"):
    next(pipeline.batches([], 4, seed=0))


def test_frames_source_yields_images_for_joint_training(moving_shapes):
  _, builder = moving_shapes
  videos = builder.as_data_source()["train"]
  frames = pipeline.FramesSource(videos)
  assert len(frames) == 6 * 16 and frames.frames_per_video == 16
  item = frames[2 * 16 + 5]
  np.testing.assert_array_equal(item["image"], videos[2]["video"][5])
  assert item["frame_index"] == 5 and item["caption"] == videos[2]["caption"]
  assert "video" not in item
  batch = next(pipeline.batches(frames, 8, seed=0))
  assert batch["image"].shape == (8, 24, 40, 3) and batch["image"].dtype == np.uint8
  with pytest.raises(IndexError):
    frames[len(frames)]
