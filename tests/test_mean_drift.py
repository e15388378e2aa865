"""The caption-mean drift benchmark (`research.mean_drift`): the world's mean clips drift the way
their motion says, an oracle denoiser that predicts that mean reproduces the drift through the
model path, a denoiser that ignores time gives none, and the eval job end to end."""

import csv
import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from dreamix_jax.shapes import world as shapes
from dreamix_jax.diffusion import schedules
from dreamix_jax.research import mean_drift
from dreamix_jax.jobs import evaluate
from config_loading import load

SHAPE = (16, 24, 40)
OBJECT = shapes.parse_caption("a red circle standing still on a black background")


class _Embedder:
  """Text = one-hot of the caption's motion, so a fake denoiser can read the motion back."""

  def __call__(self, captions):
    text = np.zeros((len(captions), 4, len(shapes.MOTIONS)), np.float32)
    for i, c in enumerate(captions):
      text[i, :, shapes.MOTIONS.index(shapes.parse_caption(c).motion)] = 1.0
    return text, np.ones((len(captions), 4), bool)


def _oracle(means):
  """v̂ for which x_from_v(z, v̂) is the world's mean video of the caption's motion."""
  def denoise(z, logsnr, text, mask):
    del mask
    x0 = jnp.asarray(np.stack([means[shapes.MOTIONS[int(np.argmax(t[0]))]] for t in text]))
    alpha, sigma = schedules.alpha_sigma(logsnr)
    eps = (z - alpha[:, None, None, None, None] * x0) / sigma[:, None, None, None, None]
    return schedules.v_from_x_eps(x0, eps, logsnr)
  return denoise


@pytest.fixture(scope="module")
def world_means():
  return {m: mean_drift.world_clips(
      shapes.Attributes(shape="circle", color="red", background="black", motion=m), SHAPE, 64,
      0).mean(axis=0) for m in shapes.MOTIONS}


def test_world_means_drift_the_way_the_caption_says(world_means):
  drifts = {m: mean_drift.centroid_drift(v, "black") for m, v in world_means.items()}
  # The object stays in the frame, so the mean of its clips starts on one side and ends on the
  # other: several pixels of the 40×24 frame, along the motion's axis only.
  assert drifts["right"][0] > 5 and drifts["left"][0] < -5
  assert drifts["down"][1] > 4 and drifts["up"][1] < -4
  for m in ("left", "right"):
    assert abs(drifts[m][1]) < 0.5
  for m in ("up", "down"):
    assert abs(drifts[m][0]) < 0.5
  assert max(abs(d) for d in drifts["still"]) < 0.5


def test_oracle_reproduces_the_data_and_a_time_blind_model_gives_none(world_means):
  rows = mean_drift.measure(_oracle(world_means), _Embedder(), shape=SHAPE, object_caption=OBJECT,
                            logsnrs=(-10.0, 2.0), num_noise=2, num_clips=64, seed=0)
  assert [r["motion"] for r in rows] == list(shapes.MOTIONS)
  # A still caption's mean is the same in every frame; a moving one's costs a few percent.
  costs = {r["motion"]: r["still_mean_cost"] for r in rows}
  assert costs["still"] < 1e-9 and all(0.005 < costs[m] < 0.3 for m in ("left", "right", "up"))
  for r in rows:
    for lam in ("-10", "2"):
      np.testing.assert_allclose(r[f"model_dx_at_{lam}"], r["data_dx"], atol=0.05)
      np.testing.assert_allclose(r[f"model_dy_at_{lam}"], r["data_dy"], atol=0.05)
  # A denoiser that predicts the same (time-averaged) frame everywhere: no drift at all.
  still = {m: np.broadcast_to(v.mean(0), v.shape) for m, v in world_means.items()}
  rows = mean_drift.measure(_oracle(still), _Embedder(), shape=SHAPE, object_caption=OBJECT,
                            logsnrs=(-10.0,), num_noise=2, num_clips=64, seed=0)
  for r in rows:
    assert abs(r["model_dx_at_-10"]) < 0.05 and abs(r["model_dy_at_-10"]) < 0.05


def test_centroid_drift_of_a_moving_square_and_errors():
  video = np.full((8, 10, 20, 3), -0.88, np.float32)  # black background
  for t in range(8):
    video[t, 4:6, 2 + t:4 + t] = 1.0  # moves one pixel right per frame
  dx, dy = mean_drift.centroid_drift(video, "black")
  assert dx == pytest.approx(6.0) and dy == pytest.approx(0.0)  # frames 0-1 vs 6-7
  with pytest.raises(ValueError, match="at least 4 frames"):
    mean_drift.centroid_drift(video[:3], "black")


def test_guided_start_amplifies_each_caption_away_from_the_object_mean(world_means):
  starts = mean_drift.guided_start(world_means, 3.0)
  average = np.mean(list(world_means.values()), axis=0)
  np.testing.assert_allclose(np.mean(list(starts.values()), axis=0), average, atol=1e-5)
  for m in shapes.MOTIONS:
    np.testing.assert_allclose(starts[m] - average, 4.0 * (world_means[m] - average), atol=1e-5)
  dx, dy = mean_drift.centroid_drift(starts["right"], "black")
  assert dx > 2 and abs(dy) < 0.5  # still a smear drifting right


def test_direction_from_mean_starts_from_the_noised_mean_and_scores_the_probe(world_means):
  """A fake sampler that obeys the caption when started from the mean and gives still clips from
  pure noise: shares 1 and 0 (still: 1 and 1); and it is handed z = α x̂0 + σ ε at t(λ)."""
  schedule, lam, calls = schedules.CosineLogSNR(), -6.0, []
  rng = np.random.default_rng(0)

  def sample(text, mask, z_start, t_start):
    calls.append((z_start, t_start))
    motions = [shapes.MOTIONS[int(np.argmax(t[0]))] for t in text]
    if z_start is None:
      motions = ["still"] * len(motions)
    clips = [dataclasses.replace(shapes.sample_attributes(rng), shape="circle", color="red",
                                 background="black", motion=m, x=40.0, y=24.0, size=10.0,
                                 speed=0.0 if m == "still" else 0.5) for m in motions]
    return shapes.render_batch(clips, *SHAPE)

  shares = mean_drift.direction_from_mean(sample, _Embedder(), object_caption=OBJECT,
                                          starts=world_means, schedule=schedule, start_logsnr=lam,
                                          num_samples=3, seed=0)
  assert shares == {m: (1.0, 1.0 if m == "still" else 0.0) for m in shapes.MOTIONS}
  (z, t_start), (none, _) = calls
  assert none is None
  assert t_start == pytest.approx(float(schedule.t_from_logsnr(lam)))
  alpha, sigma = (float(v) for v in schedules.alpha_sigma(lam))
  x0 = np.repeat(np.stack([world_means[m] for m in shapes.MOTIONS]), 3, 0)
  noise = (np.asarray(z) - alpha * x0) / sigma
  assert abs(noise.mean()) < 0.01 and noise.std() == pytest.approx(1.0, abs=0.01)


def test_drift_benchmark_runlocal(tmp_path):
  config = load("configs/eval.py:benchmark=drift,runlocal")
  paths = evaluate.run(config, str(tmp_path))
  with open(paths["table_csv"]) as f:
    rows = list(csv.DictReader(f))
  assert [r["motion"] for r in rows] == list(shapes.MOTIONS)
  assert set(rows[0]) == {"motion", "data_dx", "data_dy", "still_mean_cost", "model_dx_at_-10",
                          "model_dy_at_-10", "model_dx_at_-6", "model_dy_at_-6"}
  assert float(rows[1]["data_dx"]) > 0 > float(rows[0]["data_dx"])  # right, left
  # With samples from the mean start: two more columns, shares of the samples.
  config = load("configs/eval.py:benchmark=drift,runlocal")
  with config.unlocked():
    config.drift.num_samples = 1
  with open(evaluate.run(config, str(tmp_path / "samples"))["table_csv"]) as f:
    rows = list(csv.DictReader(f))
  for r in rows:
    assert {float(r["from_mean_motion_right"]), float(r["from_noise_motion_right"])} <= {0.0, 1.0}
  bad = load("configs/eval.py:benchmark=drift,runlocal")
  with bad.unlocked():
    bad.drift.logsnrs = ()
  with pytest.raises(ValueError, match="logsnrs is empty"):
    evaluate.run(bad, str(tmp_path / "bad"))
