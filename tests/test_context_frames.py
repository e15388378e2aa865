"""Context frames (`train.losses.StageLoss.context_share`): which examples and frames get a raised
log-SNR, to what level, and the pretrain job's wiring of `config.context_frame`."""

import importlib.util
import pathlib

import jax
import numpy as np
import pytest

from configs.cascades import shapes as shapes_cfg
from dreamix_jax import cascade as cascade_lib
from dreamix_jax.diffusion import schedules
from dreamix_jax.jobs import pretrain
from dreamix_jax.train import losses

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_base():
  cascade = cascade_lib.Cascade.from_config(shapes_cfg.get_config("tiny"))
  return cascade, cascade.stage("base")


def make_batch(cascade, stage, temporal_mask, seed=0):
  b = len(temporal_mask)
  rng = np.random.default_rng(seed)
  return dict(video=rng.uniform(-1, 1, (b,) + stage.shape + (3,)).astype(np.float32),
              text=np.zeros((b, cascade.text_len, cascade.text_dim), np.float32),
              text_mask=np.ones((b, cascade.text_len), bool),
              temporal_mask=np.asarray(temporal_mask, np.float32))


def noised(cascade, stage, batch, key, **kwargs):
  loss = losses.make_stage_loss(None, stage, cascade.schedule, **kwargs)
  return jax.tree_util.tree_map(np.asarray, loss.noise(batch, key))


def test_every_chosen_video_gets_one_frame_at_the_context_level(tiny_base):
  cascade, stage = tiny_base
  t = stage.shape[0]
  frame_sets = np.arange(32) % 4 == 3
  batch = make_batch(cascade, stage, frame_sets.astype(np.float32))
  key = jax.random.PRNGKey(7)
  plain = noised(cascade, stage, batch, key)
  assert np.array_equal(plain["logsnr"], noised(cascade, stage, batch, key,
                                                context_share=0.0)["logsnr"])
  out = noised(cascade, stage, batch, key, context_share=1.0, context_logsnr=(2.0, 8.0))
  lam0, lam1 = plain["logsnr"], out["logsnr"]
  # Frame sets keep their per-frame levels; videos keep the example's level on T - 1 frames.
  np.testing.assert_array_equal(lam1[frame_sets], lam0[frame_sets])
  for row0, row1 in zip(lam0[~frame_sets], lam1[~frame_sets]):
    assert np.all(row0 == row0[0])
    kept = row1 == row0
    assert kept.sum() >= t - 1
    assert row1.max() >= 2.0 and np.all(row1 >= row0)
    if not kept.all():
      assert 2.0 <= row1[~kept][0] <= 8.0
  assert (lam1 != lam0).any(axis=1)[~frame_sets].sum() > 12  # most of the 24 example levels are < 2
  # The inputs are noised at the raised levels, with the same noise.
  np.testing.assert_allclose(out["z"], np.asarray(schedules.diffuse(batch["video"], out["eps"],
                                                                    lam1)), atol=1e-6)
  np.testing.assert_array_equal(out["eps"], plain["eps"])


def test_share_picks_videos_at_its_rate_and_frames_uniformly(tiny_base):
  cascade, stage = tiny_base
  t = stage.shape[0]
  b = 2000
  batch = make_batch(cascade, stage, np.zeros(b))
  # A context range above the schedule's maximum (20) marks the chosen frames unambiguously.
  lam = noised(cascade, stage, batch, jax.random.PRNGKey(1), context_share=0.25,
               context_logsnr=(25.0, 26.0))["logsnr"]
  context = lam >= 25.0
  chosen = context.any(axis=1)
  assert np.all(context.sum(axis=1) <= 1)
  assert abs(chosen.mean() - 0.25) < 0.04, chosen.mean()
  per_frame = context.sum(axis=0)
  np.testing.assert_allclose(per_frame, chosen.sum() / t, atol=45)


def test_bad_context_settings_are_rejected(tiny_base, tmp_path):
  cascade, stage = tiny_base
  with pytest.raises(ValueError, match="context_share"):
    losses.make_stage_loss(None, stage, cascade.schedule, context_share=1.5)
  with pytest.raises(ValueError, match="low <= high"):
    losses.make_stage_loss(None, stage, cascade.schedule, context_share=0.5,
                           context_logsnr=(8.0, 2.0))
  spec = importlib.util.spec_from_file_location("pretrain_config", ROOT / "configs/pretrain.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("stage=base,runlocal")
  config.context_frame.share = -0.1
  with pytest.raises(ValueError, match="context_share"):
    pretrain.run(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
