"""The seams: a second backbone, a latent autoencoder and an ε-on-timesteps parametrisation plug in
through the registries alone and run the method end to end (train step, finetune, edit job).

The test backbone is linear: per pixel, ε̂ = z·W + (1 − m)·mean_t(z)·U + pooled text·V + c·k/N,
an ε-prediction fed a DDPM timestep k (so `diffusion.parametrisation` has to adapt it) whose only
cross-frame term is switched off for frame sets (its frames-only variant). The test autoencoder is
a 2×2 space-to-depth reshuffle (3 → 12 channels), exactly invertible.
"""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamix_jax import autoencoders, backbones, cascade as cascade_lib, jobs
from dreamix_jax import config_utils as cu
from dreamix_jax.diffusion import parametrisation, schedules
from dreamix_jax.dreamix import edit, finetune
from dreamix_jax.train import losses, state as state_lib
from config_loading import load

DDPM = dict(kind="ddpm", num_steps=1000, beta_start=0.00085, beta_end=0.012,
            beta_schedule="scaled_linear")


@dataclasses.dataclass(frozen=True)
class LinearBackbone:
  channels: int = 3
  prediction = "eps"
  time_input = "timestep"
  spatial_factor = 1

  @classmethod
  def from_config(cls, fields):
    return cls(**fields)

  def init(self, rng, spec):
    k = jax.random.split(rng, 3)
    c = spec.channels
    return {"w": jnp.eye(c) + 0.1 * jax.random.normal(k[0], (c, c)),
            "u": 0.1 * jax.random.normal(k[1], (c, c)),
            "v": 0.01 * jax.random.normal(k[2], (spec.text_dim, c)), "c": jnp.zeros((c,))}

  def abstract_params(self, spec):
    shapes = jax.eval_shape(lambda: self.init(jax.random.PRNGKey(0), spec))
    return jax.tree_util.tree_map(lambda x: nn.Partitioned(x, names=(None,) * x.ndim), shapes)

  def apply(self, params, z, noise_level, text, text_mask, *, cond=None, cond_logsnr=None,
            temporal_mask=None, train=False, rng=None, frames_only=False):
    b, t = z.shape[:2]
    mixing = jnp.zeros((b,)) if frames_only else 1.0 - (
        jnp.zeros((b,)) if temporal_mask is None else temporal_mask)
    pooled = (text * text_mask[..., None]).sum(1) / jnp.maximum(text_mask.sum(1), 1)[:, None]
    level = jnp.broadcast_to(noise_level.reshape(b, -1), (b, t)) / 1000.0
    out = z @ params["w"] + mixing[:, None, None, None, None] * (
        z.mean(1, keepdims=True) @ params["u"])
    out = out + (pooled @ params["v"])[:, None, None, None]
    out = out + level[..., None, None, None] * params["c"]
    return out.astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class SpaceToDepth:
  """2×2 pixel blocks folded into channels: (B, T, H, W, 3) <-> (B, T, H/2, W/2, 12)."""

  channels: int = 12
  spatial_factor: int = 2
  pixel_space: bool = False

  def encode(self, video, rng=None):
    b, t, h, w, c = video.shape
    x = video.reshape(b, t, h // 2, 2, w // 2, 2, c).transpose(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(b, t, h // 2, w // 2, 4 * c)

  def decode(self, latents):
    b, t, h, w, c = latents.shape
    x = latents.reshape(b, t, h, w, 2, 2, c // 4).transpose(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(b, t, 2 * h, 2 * w, c // 4)


@pytest.fixture(autouse=True)
def registered(monkeypatch):
  monkeypatch.setitem(backbones.REGISTRY, "linear", LinearBackbone)
  monkeypatch.setitem(autoencoders.REGISTRY, "space_to_depth", SpaceToDepth)


def cascade_config(latent: bool):
  channels = 12 if latent else 3
  stage = cu.stage("base", 4, 8, 16, 3, backbone=dict(name="linear", channels=channels),
                   sampler=dict(num_steps=4, guidance=2.0))
  return cu.cascade("linear", {"base": stage}, text_len=16, text_dim=64, schedule=dict(DDPM),
                    autoencoder=dict(name="space_to_depth") if latent else None)


def test_ddpm_schedule_matches_the_discrete_grid():
  schedule = schedules.DiscreteDDPM()
  betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
  alphas_cumprod = np.cumprod(1 - betas)
  k = np.array([0, 1, 250, 999])
  np.testing.assert_allclose(schedule.logsnr(k / 999.0),
                             np.log(alphas_cumprod[k] / (1 - alphas_cumprod[k])), rtol=1e-5)
  t = np.linspace(0.0, 1.0, 37)
  np.testing.assert_allclose(schedule.timestep(schedule.logsnr(t)), t * 999, atol=2e-2)
  with pytest.raises(ValueError, match="beta_schedule"):
    schedules.from_config(dict(kind="ddpm", beta_schedule="cosine"))
  with pytest.raises(ValueError, match="kind"):
    schedules.from_config(dict(kind="karras"))


def test_eps_on_timesteps_is_adapted_to_v_on_logsnr():
  """The adapted v̂ implies exactly the ε̂ the network predicted and x̂ = (z − σ ε̂)/α, and the
  network saw the timestep of the log-SNR."""
  schedule = schedules.DiscreteDDPM()
  backbone = LinearBackbone()
  seen = {}

  class Recording(LinearBackbone):
    def apply(self, params, z, level, *args, **kwargs):
      seen["level"] = level
      return super().apply(params, z, level, *args, **kwargs)

  v_fn = parametrisation.v_on_logsnr(Recording(), schedule)
  k = jax.random.split(jax.random.PRNGKey(0), 3)
  z = jax.random.normal(k[0], (2, 4, 8, 16, 3))
  text, mask = jax.random.normal(k[1], (2, 16, 64)), jnp.ones((2, 16), bool)
  params = backbone.init(k[2], _spec(3))
  lam = jnp.array([-6.0, 3.0])
  v = v_fn(params, z, lam, text, mask)
  eps = backbone.apply(params, z, schedule.timestep(lam), text, mask)
  np.testing.assert_allclose(seen["level"], schedule.timestep(lam))
  np.testing.assert_allclose(schedules.eps_from_v(z, v, lam), eps, atol=1e-4)
  alpha, sigma = schedules.alpha_sigma(lam)
  x = (z - sigma[:, None, None, None, None] * eps) / alpha[:, None, None, None, None]
  np.testing.assert_allclose(schedules.x_from_v(z, v, lam), x, atol=1e-4)


def _spec(channels):
  from dreamix_jax.backbones import base
  return base.InputSpec(4, 8, 16, channels, 16, 64)


@pytest.mark.parametrize("latent", [False, True])
def test_train_step_finetune_and_edit_through_the_registries(latent):
  cascade = cascade_lib.Cascade.from_config(cascade_config(latent))
  stage = cascade.stage("base")
  assert isinstance(stage.backbone, LinearBackbone)
  assert cascade.latent_shape(stage) == ((4, 4, 8, 12) if latent else (4, 8, 16, 3))
  params = {"base": cascade.init_params(jax.random.PRNGKey(0), stage)}
  video = jnp.clip(jax.random.normal(jax.random.PRNGKey(1), (1, 4, 8, 16, 3)), -1, 1)
  text, mask = jax.random.normal(jax.random.PRNGKey(2), (1, 16, 64)), jnp.ones((1, 16), bool)
  # One generic train step on the stage loss.
  loss_fn = losses.make_stage_loss(cascade.denoiser(stage), stage, cascade.schedule,
                                   weighting="eps")
  optimizer = state_lib.make_optimizer(state_lib.optimizer_config(name="adam", lr=1e-2))
  step = jax.jit(state_lib.make_train_step(lambda p, b, r: (loss_fn(p, b, r).mean(), {}),
                                           optimizer))
  batch = dict(video=cascade.encode(video), text=text, text_mask=mask,
               temporal_mask=jnp.zeros((1,)))
  state, metrics = step(state_lib.init_state(params["base"], optimizer, ema=False), batch,
                        jax.random.PRNGKey(3))
  assert np.isfinite(float(metrics["loss"]))
  assert not np.allclose(state.params["w"], params["base"]["w"])
  # Mixed finetuning (both variants) and an edit.
  cfg = finetune.finetune_config(steps=3, stages=("base",), alpha=0.5, log_every=1,
                                 weighting="eps")
  tuned, history = finetune.finetune_cascade(cascade, params, video, text, mask, cfg, None)
  assert set(history["base"][-1]) >= {"loss_video", "loss_frames"}
  assert not np.allclose(tuned["base"]["u"], params["base"]["u"])
  out = edit.edit_video(cascade, tuned, edit.base_view(cascade, video, "base"), text, mask, 0.5, 0)
  assert out.shape == (4, 8, 16, 3) and np.all(np.abs(out) <= 1.0)
  if latent:
    np.testing.assert_array_equal(cascade.autoencoder.decode(cascade.encode(video)), video)


def test_edit_job_runs_on_the_linear_latent_cascade(tmp_path):
  config = load("configs/edit.py:runlocal")
  with config.unlocked():
    config.cascade = cascade_config(latent=True)
    config.finetune.stages = ("base",)
    config.finetune.steps = 2
    config.finetune.weighting = "eps"
  folders = jobs.get("edit")(config, str(tmp_path))
  assert len(folders) == 1
  meta = json.loads((tmp_path / "edit" / "edit" / folders[0].split("/")[-1] / "meta.json")
                    .read_text())
  assert meta["output_shape"] == [4, 8, 16, 3]
