"""Deterministic, resumable batching over random-access data sources.

A source is anything with `len(source)` and `source[i] -> dict` (a `tfds` array_record data
source, a list of dicts, `FramesSource`). Batch `k` is a pure function of `(seed, k)`: the
examples of an endless stream in which epoch `e` visits every example once, in the order
`permutation(seed, e)`. A run resumed at step `k` (`start_step=k`) therefore sees exactly the
batches it would have seen, with no iterator state to checkpoint beyond the step.

`batch_size` is global; with `process_count > 1` each host takes its contiguous slice of every
global batch (`batch_size // process_count` examples), ready for
`jax.make_array_from_process_local_data`.
"""

from __future__ import annotations

from typing import Any, Iterator, Protocol

import numpy as np


class Source(Protocol):
  """Random access to examples: `len(source)` and `source[i] -> dict`."""

  def __len__(self) -> int:
    """Number of examples."""

  def __getitem__(self, index: int) -> dict[str, Any]:
    """Example `index` (0 ≤ index < len) as a dict of arrays/strings."""


def epoch_permutation(seed: int, epoch: int, size: int) -> np.ndarray:
  """The order `(size,)` in which epoch `epoch` visits the examples."""
  return np.random.default_rng((seed, epoch)).permutation(size)


def _check(batch_size: int, size: int, process_index: int, process_count: int) -> None:
  if size < 1:
    raise ValueError("The data source is empty; nothing to batch.")
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} must be in [0, process_count) with "
                     f"process_count >= 1, got process_count {process_count}.")
  if batch_size < 1 or batch_size % process_count:
    raise ValueError(f"The global batch_size {batch_size} must be a positive multiple of "
                     f"process_count {process_count}.")


def batch_indices(step: int, *, batch_size: int, size: int, seed: int, process_index: int = 0,
                  process_count: int = 1) -> np.ndarray:
  """Indices `(batch_size // process_count,)` of this host's share of global batch `step`."""
  _check(batch_size, size, process_index, process_count)
  if step < 0:
    raise ValueError(f"step must be >= 0, got {step}.")
  local = batch_size // process_count
  start = step * batch_size + process_index * local
  positions = np.arange(start, start + local)
  epochs = positions // size
  out = np.empty(local, np.int64)
  for epoch in np.unique(epochs):
    in_epoch = epochs == epoch
    out[in_epoch] = epoch_permutation(seed, int(epoch), size)[positions[in_epoch] % size]
  return out


def stack_examples(examples: list[dict[str, Any]]) -> dict[str, np.ndarray]:
  """Stacks a list of example dicts into a dict of arrays with a leading batch axis."""
  keys = examples[0].keys()
  for example in examples[1:]:
    if example.keys() != keys:
      raise ValueError(f"Examples disagree on their keys: {sorted(keys)} vs "
                       f"{sorted(example.keys())}.")
  return {key: np.stack([np.asarray(example[key]) for example in examples]) for key in keys}


def batches(source: Source, batch_size: int, *, seed: int, start_step: int = 0,
            process_index: int = 0, process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Endless batches `{key: (batch_size // process_count, ...)}`, from step `start_step` on."""
  size = len(source)
  _check(batch_size, size, process_index, process_count)
  step = start_step
  while True:
    indices = batch_indices(step, batch_size=batch_size, size=size, seed=seed,
                            process_index=process_index, process_count=process_count)
    yield stack_examples([source[int(i)] for i in indices])
    step += 1


class FramesSource:
  """The frames of a video source as a source of images (for joint image-video training).

  Item `i` is frame `i % T` of video `i // T`: the video's example with `video_key` replaced by
  `image_key` holding that frame `(H, W, C)`, and `frame_index` added. Every video must have the
  same number of frames `T` (read from the first).
  """

  def __init__(self, source: Source, video_key: str = "video", image_key: str = "image"):
    if len(source) < 1:
      raise ValueError("FramesSource needs a non-empty video source.")
    first = source[0]
    if video_key not in first:
      raise ValueError(f"Examples have no {video_key!r} key (keys: {sorted(first)}).")
    self._source = source
    self._video_key = video_key
    self._image_key = image_key
    self.frames_per_video = int(np.shape(first[video_key])[0])

  def __len__(self) -> int:
    return len(self._source) * self.frames_per_video

  def __getitem__(self, index: int) -> dict[str, Any]:
    if not -len(self) <= index < len(self):
      raise IndexError(f"Frame {index} is out of range for {len(self)} frames.")
    video_index, frame_index = divmod(index % len(self), self.frames_per_video)
    example = dict(self._source[video_index])
    video = example.pop(self._video_key)
    if np.shape(video)[0] != self.frames_per_video:
      raise ValueError(f"Video {video_index} has {np.shape(video)[0]} frames; FramesSource "
                       f"expects {self.frames_per_video} in every video.")
    example[self._image_key] = video[frame_index]
    example["frame_index"] = frame_index
    return example
