"""Schedule endpoints, inverse, the v / x / ε identities of the VP process, and the training
log-SNR shift."""

import jax
import numpy as np
import pytest

from configs.cascades import shapes as shapes_cfg
from dreamix_jax import cascade as cascade_lib
from dreamix_jax.diffusion import objectives, schedules
from dreamix_jax.train import losses


def test_cosine_logsnr_endpoints_and_monotone():
  sched = schedules.CosineLogSNR(-20.0, 20.0)
  np.testing.assert_allclose(sched.logsnr(0.0), 20.0, rtol=1e-4)  # float32 tan near 0
  np.testing.assert_allclose(sched.logsnr(1.0), -20.0, rtol=1e-4)
  t = np.linspace(0, 1, 101)
  lam = np.asarray(sched.logsnr(t))
  assert np.all(np.diff(lam) < 0)
  # Midpoint of the unshifted cosine schedule is λ = 0 up to the tiny shift.
  np.testing.assert_allclose(sched.logsnr(0.5), 0.0, atol=1e-3)
  np.testing.assert_allclose(sched.t_from_logsnr(lam), t, atol=1e-5)


def test_cosine_logsnr_rejects_inverted_range():
  with pytest.raises(ValueError, match="logsnr_min"):
    schedules.CosineLogSNR(5.0, -5.0)


def test_alpha_sigma_variance_preserving():
  lam = np.linspace(-20, 20, 41)
  alpha, sigma = schedules.alpha_sigma(lam)
  np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, atol=1e-6)
  np.testing.assert_allclose(np.log(alpha**2 / sigma**2)[10:31], lam[10:31], atol=1e-3)


def test_v_x_eps_identities():
  kx, ke, kl = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(kx, (3, 4, 5, 6, 3))
  eps = jax.random.normal(ke, x.shape)
  lam = jax.random.uniform(kl, (3, 4), minval=-8, maxval=8)  # per-frame log-SNR
  z = schedules.diffuse(x, eps, lam)
  v = schedules.v_target(x, eps, lam)
  np.testing.assert_allclose(schedules.x_from_v(z, v, lam), x, atol=1e-5)
  np.testing.assert_allclose(schedules.eps_from_v(z, v, lam), eps, atol=1e-5)
  np.testing.assert_allclose(schedules.v_from_x_eps(x, eps, lam), v, atol=1e-6)


def test_sample_logsnr_shift_moves_and_clips():
  """A shift adds to every λ of the same t draws and stays inside the schedule's range."""
  schedule = schedules.CosineLogSNR(-20.0, 20.0)
  key = jax.random.PRNGKey(0)
  plain = np.asarray(objectives.sample_logsnr(key, (4096,), schedule))
  shifted = np.asarray(objectives.sample_logsnr(key, (4096,), schedule, shift=-2.0))
  np.testing.assert_allclose(shifted, np.clip(plain - 2.0, -20.0, 20.0), atol=1e-5)
  assert shifted.min() >= -20.0
  # Noisier training: the share of draws below log-SNR -4 grows (from ~9% to ~17% for this range).
  assert (shifted < -4).mean() > 1.5 * (plain < -4).mean()
  narrow = schedules.CosineLogSNR(-5.0, 5.0)
  clipped = np.asarray(objectives.sample_logsnr(key, (4096,), narrow, shift=-2.0))
  assert clipped.min() == -5.0 and clipped.max() <= 3.0 + 1e-5


def test_stage_loss_uses_its_logsnr_shift():
  """`StageLoss.noise` draws the shifted log-SNRs (same key, same t draws)."""
  cascade = cascade_lib.Cascade.from_config(shapes_cfg.get_config("tiny"))
  stage = cascade.stage("base")
  batch = dict(video=np.zeros((2,) + stage.shape + (3,), np.float32),
               text=np.zeros((2, cascade.text_len, cascade.text_dim), np.float32),
               text_mask=np.ones((2, cascade.text_len), bool),
               temporal_mask=np.array([0.0, 1.0], np.float32))
  key = jax.random.PRNGKey(3)
  lam = lambda shift: np.asarray(losses.make_stage_loss(
      None, stage, cascade.schedule, logsnr_shift=shift).noise(batch, key)["logsnr"])
  np.testing.assert_allclose(lam(-3.0), np.clip(lam(0.0) - 3.0, cascade.schedule.logsnr_min,
                                                cascade.schedule.logsnr_max), atol=1e-5)
