"""Dreamix mixed finetuning: the mixed objective, masking gradients, α limits, loss decrease,
corruption, exact resume of the training loop."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamix_jax import cascade as cascade_lib
from dreamix_jax.dreamix import corrupt, finetune, objective
from dreamix_jax.backbones import unet
from dreamix_jax.train import loop as loop_lib, losses, state as state_lib
from param_utils import randomise

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _shapes_tiny():
  spec = importlib.util.spec_from_file_location("c", ROOT / "configs/cascades/shapes.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return cascade_lib.Cascade.from_config(mod.get_config("tiny"))


@pytest.fixture(scope="module")
def setup():
  cascade = _shapes_tiny()
  params = {s.name: randomise(cascade.init_params(jax.random.PRNGKey(i), s), 10 + i, scale=0.1)
            for i, s in enumerate(cascade.stages)}
  k = jax.random.split(jax.random.PRNGKey(0), 2)
  top = cascade.stage("ssr")
  video = jnp.tanh(jax.random.normal(k[0], (1,) + top.shape + (3,)))
  text = jax.random.normal(k[1], (1, cascade.text_len, cascade.text_dim))
  mask = jnp.arange(cascade.text_len)[None] < 5
  views = finetune.stage_views(cascade, video, "ssr")
  return cascade, params, views, text, mask


def _batch(cascade, views, stage, text, mask, b=2):
  rep = lambda x: jnp.repeat(x, b, axis=0)
  batch = dict(video=rep(views[stage.name]), text=rep(text), text_mask=rep(mask),
               temporal_mask=jnp.zeros((b,)))
  if stage.kind != "base":
    batch["low"] = rep(views[cascade.names[cascade.names.index(stage.name) - 1]])
  return batch


@pytest.fixture(scope="module")
def base_losses(setup):
  cascade, params, views, text, mask = setup
  stage = cascade.stage("base")
  apply = cascade.denoiser(stage)
  loss_fn = losses.make_stage_loss(apply, stage, cascade.schedule, train=False)
  return stage, loss_fn, _batch(cascade, views, stage, text, mask)


def test_stage_views_are_downsampled_input(setup):
  cascade, _, views, _, _ = setup
  assert {k: v.shape[1:4] for k, v in views.items()} == {
      "base": (4, 8, 16), "tsr": (8, 8, 16), "ssr": (8, 16, 32)}
  np.testing.assert_allclose(views["tsr"], cascade_lib.area_downsample(views["ssr"], 2), atol=1e-6)
  np.testing.assert_array_equal(views["base"], views["tsr"][:, ::2])


@pytest.mark.parametrize("stage_name", ["base", "ssr"])
def test_mixed_loss_equals_weighted_separate_calls(setup, stage_name):
  cascade, params, views, text, mask = setup
  stage = cascade.stage(stage_name)
  apply = cascade.denoiser(stage)
  loss_fn = losses.make_stage_loss(apply, stage, cascade.schedule, train=False)
  batch = _batch(cascade, views, stage, text, mask)
  alpha = 0.35
  rng = jax.random.PRNGKey(3)
  mixed, aux = jax.jit(objective.make_mixed_loss(loss_fn, stage, alpha))(params[stage_name], batch, rng)
  k_perm, k_vid, k_frm = jax.random.split(rng, 3)
  l_vid = loss_fn(params[stage_name], objective.video_variant(stage, batch), k_vid).mean()
  l_frm = loss_fn(params[stage_name], objective.frames_variant(stage, batch, k_perm), k_frm).mean()
  np.testing.assert_allclose(mixed, alpha * l_vid + (1 - alpha) * l_frm, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(aux["loss_video"], l_vid, rtol=1e-6)
  np.testing.assert_allclose(aux["loss_frames"], l_frm, rtol=1e-6)


def test_frame_variant_gradients(setup, base_losses):
  """Frames only: temporal convs get exactly zero gradient, temporal attention does not."""
  _, params, _, _, _ = setup
  stage, loss_fn, batch = base_losses
  frames_only = objective.make_mixed_loss(loss_fn, stage, 0.0)
  grads = jax.jit(jax.grad(lambda p: frames_only(p, batch, jax.random.PRNGKey(4))[0]))(
      params["base"])
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(g)
          for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]}
  tconv = [k for k in flat if "temporal_conv" in k]
  tattn = [k for k in flat if "temporal_attn" in k and ("qkv" in k or "/out/" in k)]
  assert tconv and tattn
  for k in tconv:
    assert np.all(flat[k] == 0.0), k
  assert any(np.abs(flat[k]).max() > 0 for k in tattn)


def test_alpha_one_ignores_frame_branch(setup, base_losses):
  _, params, _, _, _ = setup
  stage, loss_fn, batch = base_losses
  rng = jax.random.PRNGKey(5)
  video_only = objective.make_mixed_loss(loss_fn, stage, 1.0)
  loss, aux = video_only(params["base"], batch, rng)
  assert set(aux) == {"loss_video"}
  _, k_vid, _ = jax.random.split(rng, 3)
  np.testing.assert_allclose(loss, loss_fn(params["base"], objective.video_variant(stage, batch),
                                           k_vid).mean(), rtol=1e-6)
  with pytest.raises(ValueError, match="alpha"):
    objective.make_mixed_loss(loss_fn, stage, 1.5)


def test_corruption_at_zero_is_the_downsampled_video(setup):
  cascade, _, views, _, _ = setup
  base = corrupt.to_stage(cascade, views["ssr"], "ssr", "base")
  np.testing.assert_array_equal(base, views["base"])
  z0 = corrupt.corrupt(base, 0.0, jax.random.PRNGKey(0), cascade.schedule)
  np.testing.assert_array_equal(z0, base)
  z1 = corrupt.corrupt(base, 1.0, jax.random.PRNGKey(0), cascade.schedule)
  assert abs(float(jnp.std(z1)) - 1.0) < 0.15  # pure noise
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    corrupt.check_noise_level(1.2)


def _train(cascade, params, views, text, mask, steps, ckpt_dir, total=None):
  cfg = finetune.finetune_config(alpha=0.35, steps=total or steps, batch_size=2, log_every=1,
                                 checkpoint_every=steps, stages=("base",), ema_decay=0.9)
  cfg.optimizer.lr = 3e-3
  stage = cascade.stage("base")
  apply = cascade.denoiser(stage)
  loss_fn = losses.make_stage_loss(apply, stage, cascade.schedule)
  optimizer = state_lib.make_optimizer(cfg.optimizer)
  step_fn = state_lib.make_train_step(objective.make_mixed_loss(loss_fn, stage, cfg.alpha), optimizer,
                                      ema_decay=cfg.ema_decay)
  batch = _batch(cascade, views, stage, text, mask)
  loop_cfg = loop_lib.LoopConfig(steps=steps, log_every=1, checkpoint_every=steps, name="t")
  st = state_lib.init_state(params["base"], optimizer, ema=True)
  return loop_lib.run(loop_cfg, st, step_fn, lambda s: batch, checkpoint_dir=ckpt_dir)


def test_finetuning_lowers_loss_and_resume_is_exact(setup, tmp_path):
  cascade, params, views, text, mask = setup
  full, hist = _train(cascade, params, views, text, mask, 40, str(tmp_path / "a"))
  first = np.mean([h["loss"] for h in hist[:8]])
  last = np.mean([h["loss"] for h in hist[-8:]])
  assert last < 0.8 * first, (first, last)
  # Interrupted after 20 steps, resumed to 40: bit-identical parameters and EMA.
  _train(cascade, params, views, text, mask, 20, str(tmp_path / "b"))
  resumed, _ = _train(cascade, params, views, text, mask, 40, str(tmp_path / "b"))
  assert int(resumed.step) == 40
  for a, b in zip(jax.tree_util.tree_leaves((full.params, full.ema_params)),
                  jax.tree_util.tree_leaves((resumed.params, resumed.ema_params))):
    np.testing.assert_array_equal(a, b)


def test_nonfinite_loss_stops_with_the_step_named(setup, tmp_path):
  cascade, params, views, text, mask = setup
  bad = dict(views, base=views["base"] * jnp.nan)
  with pytest.raises(loop_lib.NonFiniteLossError, match="step 0"):
    _train(cascade, params, bad, text, mask, 2, str(tmp_path / "nan"))
