"""Stochastic DDIM: analytic Gaussian check, start-at-s, guidance, thresholding, objectives."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamix_jax.diffusion import objectives, sampling, schedules

SCHED = schedules.CosineLogSNR(-20.0, 20.0)
MU, STD = 0.3, 0.5  # data distribution N(MU, STD²) per element


def gaussian_posterior_v(z, logsnr):
  """Exact v̂ for Gaussian data: x̂ = E[x | z] = μ + α s² (z − α μ) / (α² s² + σ²)."""
  alpha, sigma = schedules.alpha_sigma(logsnr)
  alpha, sigma = schedules.bcast(alpha, z), schedules.bcast(sigma, z)
  x_hat = MU + alpha * STD**2 * (z - alpha * MU) / (alpha**2 * STD**2 + sigma**2)
  return (alpha * z - x_hat) / sigma


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_sampler_recovers_gaussian_mean_and_variance(eta):
  cfg = sampling.SamplerConfig(num_steps=256, eta=eta, thresholding="none")
  v_fn = lambda z, lam: (gaussian_posterior_v(z, lam), None)
  z0 = jax.random.normal(jax.random.PRNGKey(0), (20_000, 2))
  x = jax.jit(lambda z, k: sampling.ddim_sample(v_fn, z, k, schedule=SCHED, config=cfg))(
      z0, jax.random.PRNGKey(1))
  x = np.asarray(x)
  assert abs(x.mean() - MU) < 0.01
  assert abs(x.std() / STD - 1.0) < 0.03


def test_sampler_is_exact_for_a_point_mass_from_any_start():
  """With the data a single point, DDIM (η = 0) from any s returns that point."""
  target = jnp.linspace(-0.9, 0.9, 12).reshape(3, 4)

  def v_fn(z, lam):
    return (schedules.v_from_x_eps(jnp.broadcast_to(target, z.shape),
                                   (z - schedules.bcast(schedules.alpha_sigma(lam)[0], z) * target)
                                   / schedules.bcast(schedules.alpha_sigma(lam)[1], z), lam), None)

  cfg = sampling.SamplerConfig(num_steps=8, thresholding="none")
  run = jax.jit(lambda z, s: sampling.ddim_sample(v_fn, z, jax.random.PRNGKey(0), schedule=SCHED,
                                                  config=cfg, t_start=s))
  for s in (0.3, 0.8, 1.0):
    lam = SCHED.logsnr(s)
    z = schedules.diffuse(target, jax.random.normal(jax.random.PRNGKey(2), target.shape),
                          jnp.full((3,), lam))
    np.testing.assert_allclose(run(z, s), target, atol=1e-4)


def test_trajectory_holds_each_steps_prediction_in_order():
  """A denoiser whose x̂ is its own log-SNR: the trajectory's step k holds λ(step_times[k]), from
  the noisiest step on, and its last entry is the sample returned without the trajectory."""

  def v_fn(z, lam):
    x = jnp.broadcast_to(schedules.bcast(lam, z), z.shape)
    alpha, sigma = (schedules.bcast(a, z) for a in schedules.alpha_sigma(lam))
    return schedules.v_from_x_eps(x, (z - alpha * x) / sigma, lam), None

  z = jax.random.normal(jax.random.PRNGKey(4), (2, 3))
  for t_start, shift in ((1.0, 1.0), (0.6, 1.0), (1.0, 3.0), (0.6, 3.0)):
    cfg = sampling.SamplerConfig(num_steps=5, thresholding="none", time_shift=shift)
    x, xs = sampling.ddim_sample(v_fn, z, jax.random.PRNGKey(0), schedule=SCHED, config=cfg,
                                 t_start=t_start, trajectory=True)
    times = sampling.step_times(5, t_start, shift)
    assert times.shape == (6,) and float(times[0]) == pytest.approx(t_start) and times[-1] == 0
    assert xs.shape == (5, 2, 3)
    np.testing.assert_allclose(xs[:, 0, 0], SCHED.logsnr(times[:-1]), rtol=1e-4)
    np.testing.assert_array_equal(x, xs[-1])
    np.testing.assert_array_equal(x, sampling.ddim_sample(v_fn, z, jax.random.PRNGKey(0),
                                                          schedule=SCHED, config=cfg,
                                                          t_start=t_start))


def test_time_shift_moves_steps_to_the_noisy_end():
  """u ↦ 3u / (1 + 2u) on the fractions 1, 3/4, 1/2, 1/4, 0 of `t_start`; the ends stay."""
  np.testing.assert_allclose(sampling.step_times(4, 1.0, 3.0), [1.0, 0.9, 0.75, 0.5, 0.0],
                             rtol=1e-6)
  np.testing.assert_allclose(sampling.step_times(4, 0.5, 3.0), [0.5, 0.45, 0.375, 0.25, 0.0],
                             rtol=1e-6)
  np.testing.assert_allclose(sampling.step_times(4, 0.8), [0.8, 0.6, 0.4, 0.2, 0.0], rtol=1e-6)
  with pytest.raises(ValueError, match="time_shift must be > 0"):
    sampling.SamplerConfig(time_shift=0.0)


def test_start_at_zero_returns_input():
  cfg = sampling.SamplerConfig(num_steps=4)
  z = jax.random.normal(jax.random.PRNGKey(3), (2, 3, 4, 4, 3))
  out = sampling.ddim_sample(lambda z, lam: (jnp.ones_like(z), None), z, jax.random.PRNGKey(0),
                             schedule=SCHED, config=cfg, t_start=0.0)
  np.testing.assert_array_equal(out, z)


def test_guidance_weight_one_equals_conditional():
  params = {"w": jnp.float32(0.7)}

  def apply(p, z, lam, text, mask):  # a toy "denoiser" that depends on the text
    return p["w"] * z + text.mean(axis=(1, 2)).reshape(-1, 1, 1) * mask.any(axis=1).reshape(-1, 1, 1)

  text = jnp.ones((2, 3, 4))
  mask = jnp.ones((2, 3), bool)
  z = jax.random.normal(jax.random.PRNGKey(4), (2, 5, 5))
  plain = sampling.SamplerConfig(num_steps=5, eta=0.5, guidance=1.0, thresholding="none")
  assert not plain.guided
  out_cond = sampling.ddim_sample(sampling.guided_v_fn(apply, params, text, mask, guided=False),
                                  z, jax.random.PRNGKey(5), schedule=SCHED, config=plain)
  out_both = sampling.ddim_sample(sampling.guided_v_fn(apply, params, text, mask, guided=True),
                                  z, jax.random.PRNGKey(5), schedule=SCHED, config=plain)
  np.testing.assert_allclose(out_both, out_cond, atol=1e-5)
  # And guidance > 1 really changes the result (the unconditional branch is used).
  strong = sampling.SamplerConfig(num_steps=5, eta=0.5, guidance=3.0, thresholding="none")
  out_strong = sampling.ddim_sample(sampling.guided_v_fn(apply, params, text, mask, guided=True),
                                    z, jax.random.PRNGKey(5), schedule=SCHED, config=strong)
  assert float(jnp.abs(out_strong - out_cond).max()) > 1e-2


def test_oscillating_guidance_weights():
  cfg = sampling.SamplerConfig(num_steps=7, guidance=5.0, guidance_low=1.0, oscillate_after=3)
  np.testing.assert_array_equal(cfg.guidance_weights(), [5, 5, 5, 5, 1, 5, 1])
  assert cfg.guided


def test_dynamic_thresholding():
  x = jnp.stack([jnp.linspace(-0.5, 0.5, 1000), jnp.linspace(-3.0, 3.0, 1000)])
  out = sampling.threshold(x, "dynamic", 99.5)
  np.testing.assert_allclose(out[0], x[0], atol=1e-7)  # within [-1, 1]: untouched
  assert float(jnp.abs(out[1]).max()) <= 1.0 + 1e-6
  s = np.percentile(np.abs(np.asarray(x[1])), 99.5)
  np.testing.assert_allclose(out[1, 500], x[1, 500] / s, rtol=1e-5)
  np.testing.assert_array_equal(sampling.threshold(x, "static"), jnp.clip(x, -1, 1))


@pytest.mark.parametrize("n", [1, 2, 7, 46080])
@pytest.mark.parametrize("percentile", [0.0, 37.3, 99.5, 100.0])
def test_row_percentile_equals_numpy(n, percentile):
  flat = np.abs(np.random.default_rng(n).normal(size=(3, n))).astype(np.float32)
  np.testing.assert_allclose(sampling.row_percentile(jnp.asarray(flat), percentile),
                             np.percentile(flat, percentile, axis=1), rtol=1e-6)


def test_sampler_config_errors():
  with pytest.raises(ValueError, match="eta"):
    sampling.SamplerConfig(eta=1.5)
  with pytest.raises(ValueError, match="thresholding"):
    sampling.SamplerConfig(thresholding="hard")


def test_v_loss_weightings_match_parametrisations():
  k = jax.random.split(jax.random.PRNGKey(6), 4)
  x = jax.random.normal(k[0], (2, 3, 4, 4, 3))
  eps = jax.random.normal(k[1], x.shape)
  lam = jax.random.uniform(k[2], (2,), minval=-5, maxval=5)
  v_pred = jax.random.normal(k[3], x.shape)
  z = schedules.diffuse(x, eps, lam)
  x_err = jnp.square(schedules.x_from_v(z, v_pred, lam) - x).mean(axis=(1, 2, 3, 4))
  e_err = jnp.square(schedules.eps_from_v(z, v_pred, lam) - eps).mean(axis=(1, 2, 3, 4))
  v_err = jnp.square(v_pred - schedules.v_target(x, eps, lam)).mean(axis=(1, 2, 3, 4))
  np.testing.assert_allclose(objectives.v_loss_per_example(v_pred, x, eps, lam, weighting="x"),
                             x_err, rtol=1e-4)
  np.testing.assert_allclose(objectives.v_loss_per_example(v_pred, x, eps, lam, weighting="eps"),
                             e_err, rtol=1e-4)
  np.testing.assert_allclose(objectives.v_loss_per_example(v_pred, x, eps, lam), v_err, rtol=1e-5)
  with pytest.raises(ValueError, match="weighting"):
    objectives.loss_weight(lam, "snr")


def test_condition_augmentation_levels():
  cond = jnp.ones((64, 2, 4, 4, 3))
  _, lam_train = objectives.augment_condition(jax.random.PRNGKey(0), cond, SCHED, max_t=0.3)
  t = SCHED.t_from_logsnr(lam_train)
  assert float(t.min()) >= 0 and float(t.max()) <= 0.3 + 1e-5 and float(t.std()) > 0.03
  z, lam = objectives.augment_condition(jax.random.PRNGKey(0), cond, SCHED, max_t=0.3, fixed_t=0.0)
  np.testing.assert_allclose(lam, 20.0, rtol=1e-4)
  np.testing.assert_allclose(z, cond, atol=1e-3)
