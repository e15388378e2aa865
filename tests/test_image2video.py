"""Tests for dreamix_jax.dreamix.image2video: identity, direction, smoothness, padding."""

import numpy as np
import pytest

from dreamix_jax.dreamix import image2video

HEIGHT, WIDTH = 48, 64


@pytest.fixture(scope="module")
def dot_image():
  """A bright Gaussian dot at (x=36, y=22) on a textured background without black pixels."""
  ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
  background = 0.3 + 0.1 * np.sin(xs / 3.0) * np.cos(ys / 4.0)
  dot = np.exp(-((xs - 36.0) ** 2 + (ys - 22.0) ** 2) / (2 * 2.0 ** 2))
  grey = background * (1 - dot) + dot
  return np.stack([grey, 0.8 * grey, 0.5 + 0.5 * grey], axis=-1).astype(np.float32)


def _dot_centre(frames):
  """`(T, 2)` centroid (x, y) of the bright dot (red channel above the background, <= 0.4)."""
  ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
  weights = np.clip(frames[..., 0] - 0.45, 0, None)
  total = weights.sum(axis=(1, 2))
  return np.stack([(weights * xs).sum(axis=(1, 2)) / total,
                   (weights * ys).sum(axis=(1, 2)) / total], axis=-1)


def _dot_spread(frames):
  """`(T,)` root-mean-square radius of the bright dot (red channel above the background)."""
  ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
  weights = np.clip(frames[..., 0] - 0.45, 0, None)
  centre = _dot_centre(frames)
  squared = (xs - centre[:, :1, None]) ** 2 + (ys - centre[:, 1:, None]) ** 2
  return np.sqrt((weights * squared).sum(axis=(1, 2)) / weights.sum(axis=(1, 2)))


@pytest.mark.parametrize("transform", image2video.TRANSFORMS)
def test_identity_at_first_frame_and_no_unfilled_pixels(dot_image, transform):
  video = image2video.image_to_video(dot_image, transform, num_frames=16, seed=3)
  assert video.shape == (16, HEIGHT, WIDTH, 3) and video.dtype == np.float32
  np.testing.assert_allclose(video[0], dot_image, atol=1e-5)
  # Reflection padding: every pixel comes from the image, so nothing falls below its minimum.
  assert video.min() >= dot_image.min() - 1e-6
  assert video.max() <= dot_image.max() + 1e-6


def test_replicate_is_static(dot_image):
  video = image2video.image_to_video(dot_image, "none", num_frames=5)
  np.testing.assert_array_equal(video, np.broadcast_to(dot_image, (5, HEIGHT, WIDTH, 3)))


@pytest.mark.parametrize("direction,motion", [("right", (-1, 0)), ("left", (1, 0)),
                                              ("down", (0, -1)), ("up", (0, 1))])
def test_translate_pans_at_constant_speed(dot_image, direction, motion):
  video = image2video.translate(dot_image, 16, strength=0.2, direction=direction)
  steps = np.diff(_dot_centre(video), axis=0)
  extent = WIDTH if direction in ("left", "right") else HEIGHT
  # The content slides opposite to the camera by 0.2 × extent in total, evenly per frame.
  np.testing.assert_allclose(steps, np.broadcast_to(np.array(motion) * 0.2 * extent / 15, (15, 2)),
                             atol=0.05)


def test_reflection_padding_mirrors_across_the_border():
  ramp = np.arange(8, dtype=np.float32)[None, :, None] * np.ones((2, 1, 1), np.float32)
  last = image2video.translate(ramp, 2, strength=3 / 8, direction="right")[-1]
  np.testing.assert_allclose(last[0, :, 0], [3, 4, 5, 6, 7, 7, 6, 5])
  np.testing.assert_allclose(image2video.reflect_coordinates(np.array([-3.0, -1.0, 8.0, 17.0]), 8),
                             [2, 0, 7, 1])


def test_perspective_pans_smoothly(dot_image):
  # 10 degrees keeps the dot's mirror image (reflection padding) out of view.
  video = image2video.perspective(dot_image, 16, strength=10.0, direction="right")
  steps = np.diff(_dot_centre(video), axis=0)
  assert (steps[:, 0] < 0).all()  # turning right slides content left, every frame
  assert np.abs(steps[:, 0]).max() < 0.05 * WIDTH  # small frame-to-frame motion
  assert np.abs(steps[:, 0]).max() < 1.5 * np.abs(steps[:, 0]).min()  # near-constant speed


def test_perspective_matches_the_rotated_camera_homography():
  # An image holding its own coordinates: bilinear sampling returns the source point exactly.
  ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
  coordinates = np.stack([xs, ys], axis=-1)
  angle = np.deg2rad(10.0)
  last = image2video.perspective(coordinates, 2, strength=10.0, direction="right")[-1]
  focal, cx, cy = float(WIDTH), (WIDTH - 1) / 2, (HEIGHT - 1) / 2
  depth = -(xs - cx) * np.sin(angle) + focal * np.cos(angle)
  source_x = cx + focal * ((xs - cx) * np.cos(angle) + focal * np.sin(angle)) / depth
  source_y = cy + focal * (ys - cy) / depth
  inside = (source_x <= WIDTH - 1) & (source_y >= 0) & (source_y <= HEIGHT - 1)
  assert inside.mean() > 0.5
  np.testing.assert_allclose(last[..., 0][inside], source_x[inside], atol=1e-3)
  np.testing.assert_allclose(last[..., 1][inside], source_y[inside], atol=1e-3)


@pytest.mark.parametrize("transform", ["zoom_in", "zoom_out"])
def test_zoom_scales_the_dot_monotonically(dot_image, transform):
  # At 1.5x the dot's mirror images (reflection padding) stay out of view.
  video = image2video.image_to_video(dot_image, transform, 16, strength=1.5)
  spread = _dot_spread(video)
  centre = _dot_centre(video)
  offset = np.linalg.norm(centre - [(WIDTH - 1) / 2, (HEIGHT - 1) / 2], axis=-1)
  if transform == "zoom_in":
    assert (np.diff(spread) > 0).all()  # the dot grows every frame
    assert (np.diff(offset) > 0).all()  # the dot moves away from the centre
    np.testing.assert_allclose([offset[-1] / offset[0], spread[-1] / spread[0]], 1.5, rtol=0.03)
  else:
    assert (np.diff(spread) < 0).all()
    assert (np.diff(offset) < 0).all()
    np.testing.assert_allclose([offset[-1] / offset[0], spread[-1] / spread[0]], 1 / 1.5,
                               rtol=0.03)
  # A constant zoom rate: the offset changes by the same factor every frame.
  ratios = offset[1:] / offset[:-1]
  np.testing.assert_allclose(ratios, ratios.mean(), rtol=0.01)


def test_random_translate_is_seeded_small_shake(dot_image):
  video = image2video.random_translate(dot_image, 16, strength=0.03, seed=7)
  np.testing.assert_array_equal(video, image2video.random_translate(dot_image, 16, strength=0.03,
                                                                    seed=7))
  assert not np.array_equal(video, image2video.random_translate(dot_image, 16, strength=0.03,
                                                                seed=8))
  moved = _dot_centre(video) - _dot_centre(video[:1])
  np.testing.assert_allclose(moved[0], 0.0, atol=1e-6)
  assert (np.abs(moved) <= np.array([0.03 * WIDTH, 0.03 * HEIGHT]) + 0.1).all()
  assert (np.abs(moved[1:]).sum(axis=-1) > 0).all()


def test_bad_arguments():
  image = np.zeros((4, 4, 3), np.float32)
  with pytest.raises(ValueError, match="valid transforms: none, translate, random_translate"):
    image2video.image_to_video(image, "spin")
  with pytest.raises(ValueError, match="Unknown direction 'sideways'"):
    image2video.image_to_video(image, "translate", direction="sideways")
  with pytest.raises(ValueError, match=r"\(H, W, C\)"):
    image2video.image_to_video(image[..., 0], "none")
  with pytest.raises(ValueError, match="strength >= 1"):
    image2video.zoom_out(image, strength=0.5)
