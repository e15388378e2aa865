"""Schedule endpoints, inverse, and the v / x / ε identities of the VP process."""

import jax
import numpy as np
import pytest

from dreamix_jax.diffusion import schedules


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
