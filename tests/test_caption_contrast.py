"""Caption contrast (`train.losses.CaptionContrast`): counterfactual captions, the hinge's value
and coverage, and the pretrain job's batches and checks."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamix_jax import cascade as cascade_lib
from dreamix_jax.data import pipeline
from dreamix_jax.shapes import world as shapes
from dreamix_jax.diffusion import schedules
from dreamix_jax.jobs import common, pretrain
from dreamix_jax.train import losses

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load(arg):
  spec = importlib.util.spec_from_file_location("pretrain_config", ROOT / "configs/pretrain.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_counterfactual_changes_exactly_one_attribute_to_every_other_value():
  attrs = shapes.Attributes(shape="circle", color="red", background="black", motion="right")
  rng = np.random.default_rng(0)
  for attribute, vocabulary in shapes.VOCABULARIES.items():
    drawn = [shapes.counterfactual(attrs, attribute, rng) for _ in range(60)]
    values = {getattr(d, attribute) for d in drawn}
    assert values == set(vocabulary) - {getattr(attrs, attribute)}, attribute
    for d in drawn:  # nothing else changes
      assert dataclasses_equal_except(d, attrs, attribute)
  with pytest.raises(ValueError, match="Unknown caption attribute 'speed'"):
    shapes.counterfactual(attrs, "speed", rng)


def dataclasses_equal_except(a, b, attribute):
  return all(getattr(a, f) == getattr(b, f)
             for f in ("shape", "color", "background", "motion") if f != attribute)


# A denoiser that ignores z and predicts, everywhere, the mean of the caption embedding's first
# channel times a parameter: its errors under the two captions are easy to tell apart.
def fake_apply(params, z, logsnr, text, text_mask, *, train, rng, temporal_mask):
  value = params["w"] * text[:, :, 0].mean(axis=1)
  return jnp.broadcast_to(value[:, None, None, None, None], z.shape)


@pytest.fixture(scope="module")
def contrast_setup():
  config = load("stage=base,runlocal")
  cascade = cascade_lib.Cascade.from_config(config.cascade)
  stage = cascade.stage("base")
  loss = losses.make_stage_loss(fake_apply, stage, cascade.schedule, train=False)
  b, t, h, w = 6, *stage.shape
  rng = np.random.default_rng(1)
  batch = dict(video=rng.uniform(-1, 1, (b, t, h, w, 3)).astype(np.float32),
               text=rng.normal(size=(b, 4, 8)).astype(np.float32),
               text_mask=np.ones((b, 4), bool),
               temporal_mask=np.array([1, 0, 0, 0, 0, 0], np.float32),
               contrast_text=rng.normal(size=(b, 4, 8)).astype(np.float32),
               contrast_text_mask=np.ones((b, 4), bool),
               contrast_weight=np.array([0, 0, 1, 1, 1, 1], np.float32))
  return loss, batch


def _errors(loss, batch, noised):
  """Per-example v-errors of `fake_apply` (w = 0.7) under the true and the contrast captions."""
  target = np.asarray(schedules.v_target(noised["video"], noised["eps"], noised["logsnr"]))
  pred = lambda text: 0.7 * text[:, :, 0].mean(axis=1)[:, None, None, None, None]
  return (np.square(pred(batch["text"]) - target).mean(axis=(1, 2, 3, 4)),
          np.square(pred(batch["contrast_text"]) - target).mean(axis=(1, 2, 3, 4)))


def test_contrast_is_the_hinge_over_covered_examples_at_its_own_levels(contrast_setup):
  loss, batch = contrast_setup
  params = {"w": jnp.float32(0.7)}
  key = jax.random.PRNGKey(5)
  contrast = losses.CaptionContrast(loss, weight=2.0, margin=0.1, logsnr_min=-6.0,
                                    logsnr_max=-3.0)
  value, terms = jax.jit(contrast)(params, batch, key)
  k_denoise, k_contrast = jax.random.split(key)
  # The denoising loss: the batch at the schedule's levels, with its own key.
  denoise = loss(params, batch, k_denoise).mean()
  np.testing.assert_allclose(terms["loss_denoise"], denoise, rtol=1e-5)
  # The contrast examples: every example at one log-SNR inside the range, frames alike.
  noised = loss.noise(batch, k_contrast, (-6.0, -3.0))
  lam = np.asarray(noised["logsnr"])
  assert np.all((lam >= -6.0) & (lam <= -3.0)) and np.ptp(lam[:, 0]) > 0
  np.testing.assert_array_equal(lam, np.broadcast_to(lam[:, :1], lam.shape))
  err, err_counter = _errors(loss, batch, noised)
  covered = batch["contrast_weight"]
  hinge = np.maximum(1.1 * err - err_counter, 0.0)
  assert 0 < np.count_nonzero(hinge * covered) < covered.sum()  # some active, some satisfied
  expected = (hinge * covered).sum() / covered.sum()
  np.testing.assert_allclose(terms["loss_contrast"], expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(value, denoise + 2.0 * expected, rtol=1e-5)
  np.testing.assert_allclose(terms["contrast_share"], covered.mean(), rtol=1e-6)
  gap = ((err_counter - err) / err * covered).sum() / covered.sum()
  np.testing.assert_allclose(terms["contrast_gap"], gap, rtol=1e-5)


def test_contrast_asks_for_the_margin_and_nothing_beyond(contrast_setup):
  """With the true caption on both sides the gap is zero: the hinge is exactly margin·e (zero
  without a margin), and uncovered examples add nothing."""
  loss, batch = contrast_setup
  params = {"w": jnp.float32(0.7)}
  key = jax.random.PRNGKey(5)
  same = dict(batch, contrast_text=batch["text"])
  _, terms = losses.CaptionContrast(loss, margin=0.0)(params, same, key)
  assert float(terms["loss_contrast"]) == 0.0 and abs(float(terms["contrast_gap"])) < 1e-6
  margined = losses.CaptionContrast(loss, margin=0.5)
  _, terms = margined(params, same, key)
  noised = loss.noise(batch, jax.random.split(key)[1], (margined.logsnr_min, margined.logsnr_max))
  err, _ = _errors(loss, batch, noised)
  covered = batch["contrast_weight"]
  np.testing.assert_allclose(terms["loss_contrast"], 0.5 * (err * covered).sum() / covered.sum(),
                             rtol=1e-5)
  none = dict(batch, contrast_weight=np.zeros(6, np.float32))
  value, terms = margined(params, none, key)
  np.testing.assert_allclose(value, terms["loss_denoise"], rtol=1e-7)
  assert float(terms["contrast_share"]) == 0.0


def test_contrast_rejects_bad_settings(contrast_setup):
  loss, _ = contrast_setup
  with pytest.raises(ValueError, match="margin >= 0"):
    losses.CaptionContrast(loss, margin=-0.1)
  with pytest.raises(ValueError, match="is empty"):
    losses.CaptionContrast(loss, logsnr_min=2.0, logsnr_max=-2.0)


@pytest.fixture(scope="module")
def base_maker():
  config = load("stage=base,runlocal")
  config.batch_size = 8
  config.data.image_fraction = 0.25
  config.text_dropout = 0.3
  config.contrast.attribute = "motion"
  cascade = cascade_lib.Cascade.from_config(config.cascade)
  embedder = common.make_embedder(config, cascade)
  return pretrain.BatchMaker(config, cascade, cascade.stage("base"), embedder), embedder


def test_batches_carry_a_caption_with_another_motion(base_maker):
  maker, embedder = base_maker
  seen_dropped = False
  for step in (0, 1, 2):
    batch = maker(step)
    idx = pipeline.batch_indices(step, batch_size=8, size=len(maker.source),
                                          seed=maker.config.data.seed)
    dropped = ~batch["text_mask"].any(axis=1)
    seen_dropped |= dropped.any()
    np.testing.assert_array_equal(batch["contrast_weight"],
                                  (batch["temporal_mask"] == 0) & ~dropped)
    for j, i in enumerate(idx):
      attrs = maker.source[i]["attrs"]
      others = [shapes.caption(shapes.Attributes(attrs.shape, attrs.color, attrs.background, m))
                for m in shapes.MOTIONS if m != attrs.motion]
      emb, mask = embedder(others)
      matches = [np.allclose(batch["contrast_text"][j], e, atol=1e-5) for e in emb]
      assert sum(matches) == 1, (step, j)
  assert seen_dropped
  np.testing.assert_array_equal(maker(1)["contrast_text"], maker(1)["contrast_text"])


def test_pretrain_checks_the_contrast_settings(tmp_path):
  config = load("stage=base,runlocal")
  config.contrast.attribute = "speed"
  with pytest.raises(ValueError, match="not a caption attribute"):
    pretrain.run(config, str(tmp_path / "a"))
  config = load("stage=ssr,runlocal")
  config.contrast.attribute = "motion"
  with pytest.raises(ValueError, match="applies to the base stage"):
    pretrain.run(config, str(tmp_path / "b"))
  assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_pretrain_trains_with_the_contrast(tmp_path):
  config = load("stage=base,runlocal")
  config.steps, config.log_every, config.sample_every = 2, 1, 0
  config.contrast.attribute = "motion"
  final, history = pretrain.run(config, str(tmp_path))
  assert int(final.step) == 2 and len(history) == 2
  for row in history:
    assert {"loss_denoise", "loss_contrast", "contrast_gap", "contrast_share"} <= set(row)
    np.testing.assert_allclose(row["loss"], row["loss_denoise"] + row["loss_contrast"], rtol=1e-5)
