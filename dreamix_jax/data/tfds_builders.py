"""TFDS builders: the procedural `moving_shapes` world and a user's own `video_folder`.

Both are generated locally (nothing is downloaded) and written as `array_record` files, which
`tfds` writes and reads without TensorFlow; read them back with the random-access numpy reader:

  builder = MovingShapes(config="base", data_dir=DATA_DIR)   # file_format="array_record"
  builder.download_and_prepare()
  train = builder.as_data_source()["train"]     # len(train), train[i] -> dict of numpy values

or, once prepared, `tfds.data_source("moving_shapes/base", data_dir=DATA_DIR)`.

Videos are stored as `uint8` tensors `(T, H, W, 3)` (zlib-compressed) rather than
`tfds.features.Video`, whose encoder needs TensorFlow; `outputs.from_uint8` maps them back to
[-1, 1].
Single frames for joint image-video training come from `pipeline.FramesSource`, which indexes the
frames of a video source as images, so no frame is stored twice.

`moving_shapes` clip `i` of a split is `shapes.clip_attributes(seed, split, i)` rendered at the
top stage's resolution (32 × 48 × 80) and derived (frame skipping, area resize) to the config's
resolution; the split's id in the clip's seed keeps train and test disjoint. Examples are stored
in index order (shuffling is the input pipeline's job).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from typing import Iterator

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from dreamix_jax.data import outputs
from dreamix_jax.shapes import world as shapes
from dreamix_jax.data import video as video_io

_RENDER_CHUNK = 64


def _video_feature(frames: int, height: int, width: int) -> tfds.features.Tensor:
  return tfds.features.Tensor(shape=(frames, height, width, 3), dtype=np.uint8,
                              encoding=tfds.features.Encoding.ZLIB)


class _LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A builder whose data is made on this machine, written as array_record (no TensorFlow)."""

  def __init__(self, *, file_format: str | tfds.core.FileFormat = "array_record", **kwargs):
    super().__init__(file_format=file_format, **kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """This file. tfds 4.9.10's default resolves the module through `importlib_resources`, a
    package it only installs for Python < 3.9, so it fails on a packaged builder."""
    return epath.Path(__file__)


@dataclasses.dataclass
class MovingShapesConfig(tfds.core.BuilderConfig):
  """Resolution of one cascade stage, split sizes and the dataset seed."""

  frames: int = shapes.REF_FRAMES
  height: int = shapes.REF_HEIGHT
  width: int = shapes.REF_WIDTH
  num_train: int = 20_000
  num_test: int = 512
  seed: int = 0

  def __post_init__(self):
    for name, size, top in (("frames", self.frames, shapes.REF_FRAMES),
                            ("height", self.height, shapes.REF_HEIGHT),
                            ("width", self.width, shapes.REF_WIDTH)):
      if size < 1 or top % size:
        raise ValueError(f"MovingShapesConfig {self.name!r}: {name}={size} must divide the top "
                         f"stage's {top} (clips are rendered at the top stage and derived).")
    if self.num_train < 0 or self.num_test < 0:
      raise ValueError(f"MovingShapesConfig {self.name!r}: split sizes must be >= 0, got "
                       f"num_train={self.num_train}, num_test={self.num_test}.")


class MovingShapes(_LocalBuilder):
  """One flat-colored shape moving over a textured background, with its caption and attributes."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [
      MovingShapesConfig(name="base", description="Base stage: 16 frames of 24x40.",
                         frames=16, height=24, width=40),
      MovingShapesConfig(name="tsr", description="Temporal SR stage: 32 frames of 24x40.",
                         frames=32, height=24, width=40),
      MovingShapesConfig(name="ssr", description="Spatial SR stage: 32 frames of 48x80.",
                         frames=32, height=48, width=80),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self,
        description=("Procedural video-text world for the Dreamix toy cascade: " + __doc__),
        features=tfds.features.FeaturesDict({
            "video": _video_feature(config.frames, config.height, config.width),
            "caption": tfds.features.Text(),
            "shape": tfds.features.ClassLabel(names=shapes.SHAPES),
            "color": tfds.features.ClassLabel(names=shapes.COLORS),
            "background": tfds.features.ClassLabel(names=shapes.BACKGROUNDS),
            "motion": tfds.features.ClassLabel(names=shapes.MOTIONS),
        }),
        supervised_keys=("video", "caption"),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Generated locally.
    config = self.builder_config
    sizes = {"train": config.num_train, "test": config.num_test}
    return {split: self._generate_examples(split, size) for split, size in sizes.items()}

  def _generate_examples(self, split: str, size: int) -> Iterator[tuple[int, dict]]:
    config = self.builder_config
    for start in range(0, size, _RENDER_CHUNK):
      indices = range(start, min(start + _RENDER_CHUNK, size))
      clips = [shapes.clip_attributes(config.seed, split, i) for i in indices]
      videos = shapes.derive(shapes.render_batch(clips), config.frames, config.height,
                             config.width)
      for i, clip, video in zip(indices, clips, outputs.to_uint8(videos)):
        yield i, {
            "video": video,
            "caption": shapes.caption(clip),
            "shape": clip.shape,
            "color": clip.color,
            "background": clip.background,
            "motion": clip.motion,
        }


@dataclasses.dataclass
class VideoFolderConfig(tfds.core.BuilderConfig):
  """A manifest of a user's videos and the resolution to decode them at.

  `manifest`: a `.csv` (header with columns `path`, `caption`) or `.jsonl` (one object per line
  with keys `path`, `caption`); paths are relative to the manifest's folder (or absolute).
  `fps`: sampling rate passed to `video.read_video` (None spreads the frames over the video).
  """

  manifest: str = ""
  frames: int = 16
  height: int = 24
  width: int = 40
  fps: float | None = None


def read_manifest(manifest: str) -> list[tuple[str, str]]:
  """`(absolute video path, caption)` rows of a csv or jsonl manifest, in file order."""
  if not manifest:
    raise ValueError("VideoFolderConfig.manifest is empty; give the path of a .csv or .jsonl "
                     "file listing `path` and `caption` of each video.")
  if not os.path.isfile(manifest):
    raise FileNotFoundError(f"Video manifest {manifest!r} does not exist.")
  ext = os.path.splitext(manifest)[1].lower()
  with open(manifest, newline="", encoding="utf-8") as f:
    if ext == ".csv":
      rows = list(csv.DictReader(f))
    elif ext == ".jsonl":
      rows = []
      for line_number, line in enumerate(f, 1):
        if line.strip():
          try:
            rows.append(json.loads(line))
          except json.JSONDecodeError as error:
            raise ValueError(f"{manifest}:{line_number} is not valid JSON: {error}.") from error
    else:
      raise ValueError(f"Video manifest {manifest!r} must end in .csv or .jsonl.")
  if not rows:
    raise ValueError(f"Video manifest {manifest!r} lists no videos.")
  folder = os.path.dirname(os.path.abspath(manifest))
  entries = []
  for number, row in enumerate(rows, 1):
    if not isinstance(row, dict) or not row.get("path") or row.get("caption") is None:
      raise ValueError(f"Entry {number} of {manifest!r} needs a non-empty `path` and a "
                       f"`caption`; got {row!r}.")
    path = os.path.join(folder, row["path"])
    if not os.path.exists(path):
      raise FileNotFoundError(f"Entry {number} of {manifest!r}: video {path!r} does not exist.")
    entries.append((path, str(row["caption"])))
  return entries


class VideoFolder(_LocalBuilder):
  """A user's own captioned videos, listed in a csv/jsonl manifest, as one `train` split.

  There are no predefined configs: pass `config=VideoFolderConfig(name=..., manifest=...)`.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self,
        description="User videos with captions, decoded, center-cropped and area-resized.",
        features=tfds.features.FeaturesDict({
            "video": _video_feature(config.frames, config.height, config.width),
            "caption": tfds.features.Text(),
            "path": tfds.features.Text(),
        }),
        supervised_keys=("video", "caption"),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The videos are local.
    return {"train": self._generate_examples(read_manifest(self.builder_config.manifest))}

  def _generate_examples(self, entries: list[tuple[str, str]]) -> Iterator[tuple[int, dict]]:
    config = self.builder_config
    for index, (path, text) in enumerate(entries):
      frames = video_io.read_video(path, config.frames, config.height, config.width,
                                   fps=config.fps)
      yield index, {"video": outputs.to_uint8(frames), "caption": text, "path": path}
