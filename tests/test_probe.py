"""Tests for the moving-shapes pixel probe: accuracy on rendered clips, tracks, texture, errors."""

import dataclasses

import numpy as np
import pytest

from dreamix_jax.shapes import world as shapes
from dreamix_jax.data import tfds_builders
from dreamix_jax.shapes import probe

_NUM_CLIPS = 300
_CHUNK = 50
_FIELDS = ("shape", "color", "background", "motion")


def _blur(videos):
  """[1, 2, 1] / 4 separable spatial blur of `(B, T, H, W, 3)`."""
  padded = np.pad(videos, [(0, 0), (0, 0), (1, 1), (1, 1), (0, 0)], mode="edge")
  rows = 0.25 * padded[:, :, :-2] + 0.5 * padded[:, :, 1:-1] + 0.25 * padded[:, :, 2:]
  return 0.25 * rows[:, :, :, :-2] + 0.5 * rows[:, :, :, 1:-1] + 0.25 * rows[:, :, :, 2:]


@pytest.fixture(scope="module")
def test_split_accuracy():
  """Per-resolution, per-attribute share of the test split's first clips read correctly."""
  clips = [shapes.clip_attributes(0, "test", i) for i in range(_NUM_CLIPS)]
  correct = {"top": dict.fromkeys(_FIELDS, 0), "base": dict.fromkeys(_FIELDS, 0)}
  for start in range(0, _NUM_CLIPS, _CHUNK):
    chunk = clips[start:start + _CHUNK]
    top = shapes.render_batch(chunk)
    for name, videos in (("top", top), ("base", shapes.derive(top, 16, 24, 40))):
      for clip, result in zip(chunk, probe.probe_batch(videos)):
        # The caption, parsed back, is what the probe must read from the pixels.
        for field, ok in result.matches(shapes.parse_caption(shapes.caption(clip))).items():
          correct[name][field] += ok
  return {name: {field: count / _NUM_CLIPS for field, count in counts.items()}
          for name, counts in correct.items()}


@pytest.mark.parametrize("resolution", ["top", "base"])
def test_probe_reads_rendered_attributes(test_split_accuracy, resolution):
  accuracy = test_split_accuracy[resolution]
  assert min(accuracy.values()) >= 0.98, accuracy


def test_probe_survives_blur_and_noise():
  clips = [shapes.clip_attributes(0, "test", i) for i in range(60)]
  videos = shapes.derive(shapes.render_batch(clips), 16, 24, 40)
  noise = np.random.default_rng(0).standard_normal(videos.shape).astype(np.float32)
  degraded = np.clip(_blur(videos) + 0.05 * noise, -1, 1)
  results = probe.probe_batch(degraded)
  for field in _FIELDS:
    accuracy = np.mean([r.matches(c)[field] for r, c in zip(results, clips)])
    assert accuracy >= 0.95, (field, accuracy)


def test_track_and_mask_of_a_square():
  clip = shapes.ClipAttributes(shape="square", color="yellow", background="purple",
                               motion="right", x=20.0, y=24.0, size=12.0, speed=1.0,
                               texture_seed=1)
  result = probe.probe(shapes.render(clip))
  times = np.arange(32)
  np.testing.assert_allclose(result.centroids[:, 0], 20.0 + times, atol=0.05)
  np.testing.assert_allclose(result.centroids[:, 1], 24.0, atol=0.05)
  base = probe.probe(shapes.derive(shapes.render(clip), 16, 24, 40))
  np.testing.assert_allclose(base.centroids[:, 0], (20.0 + 2 * times[:16]) / 2, atol=0.05)
  np.testing.assert_allclose(result.masks.sum((1, 2)), 144, atol=12)
  np.testing.assert_allclose(result.displacement, [31 / 48, 0.0], atol=0.01)
  assert result.masks.shape == (32, 48, 80) and result.masks.dtype == bool
  assert result.attributes() == {"shape": "square", "color": "yellow", "background": "purple",
                                 "motion": "right"}
  assert result.fill_ratio > 0.95 and abs(result.vertical_skew) < 0.05
  assert result.matches({"shape": "circle", "color": "yellow", "background": "purple",
                         "motion": "left"}) == {"shape": False, "color": True,
                                                "background": True, "motion": False}
  assert np.isnan(result.texture_correlation)


def test_no_object_gives_nan_track_and_no_match():
  gray = np.full((16, 24, 40, 3), 0.0, np.float32)
  gray += 0.03 * np.random.default_rng(0).standard_normal(gray.shape).astype(np.float32)
  result = probe.probe(gray)
  assert result.background == "gray"
  assert result.color is None and result.shape is None and result.motion is None
  assert np.isnan(result.centroids).all() and not result.masks.any()
  attrs = shapes.parse_caption("a red circle standing still on a gray background")
  assert result.matches(attrs) == {"shape": False, "color": False, "background": True,
                                   "motion": False}


@pytest.mark.parametrize("size", [(32, 48, 80), (16, 24, 40)])
def test_texture_correlation_separates_kept_from_lost_texture(size):
  clips = [shapes.clip_attributes(0, "test", i) for i in range(6)]
  recolored = [dataclasses.replace(c, color=shapes.COLORS[(shapes.COLORS.index(c.color) + 1) % 5],
                                   motion="still", speed=0.0) for c in clips]
  retextured = [dataclasses.replace(c, texture_seed=c.texture_seed + 1) for c in clips]
  views = [shapes.derive(shapes.render_batch(group), *size)
           for group in (clips, recolored, retextured)]
  source, kept, lost = views
  kept_correlation = [r.texture_correlation for r in probe.probe_batch(kept, source)]
  assert min(kept_correlation) > 0.8, kept_correlation
  lost_correlation = probe.texture_correlation_batch(lost, source)
  assert np.abs(lost_correlation).max() < 0.2, lost_correlation
  np.testing.assert_allclose(probe.texture_correlation_batch(source, source), 1.0, atol=1e-5)


def test_probe_rejects_bad_shapes():
  with pytest.raises(ValueError, match="T, H, W, 3"):
    probe.probe(np.zeros((24, 40, 3), np.float32))
  with pytest.raises(ValueError, match="B, T, H, W, 3"):
    probe.probe_batch(np.zeros((1, 16, 24, 40), np.float32))
  with pytest.raises(ValueError, match="agree"):
    probe.texture_correlation_batch(np.zeros((1, 4, 24, 40, 3)), np.zeros((1, 4, 48, 80, 3)))
