"""The caption classifier (`research.caption_classifier`): candidates, paired noise, the U-Net's
errors against a direct computation, scoring with a denoiser whose preferences are known, and the
eval job end to end on the tiny random cascade."""

import csv
import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from dreamix_jax.shapes import world as shapes
from dreamix_jax.diffusion import schedules
from dreamix_jax.research import caption_classifier as cc
from dreamix_jax.jobs import common, evaluate
from config_loading import load
from param_utils import randomise

LOGSNRS = (-4.0, 0.0, 3.0)


def test_candidates_change_one_attribute():
  target = shapes.Attributes(shape="square", color="blue", background="gray", motion="up")
  for attribute, vocabulary in cc.VOCABULARIES.items():
    captions = cc.candidate_captions(target, attribute)
    parsed = [shapes.parse_caption(c) for c in captions]
    assert [getattr(p, attribute) for p in parsed] == list(vocabulary)
    for p in parsed:  # every other attribute is the target's
      assert dataclasses.replace(p, **{attribute: getattr(target, attribute)}) == target
    assert shapes.caption(target) in captions
  with pytest.raises(ValueError, match="Unknown attribute"):
    cc.candidate_captions(target, "texture")


class _WordEmbedder:
  """Text = a one-hot of the caption's words (so a fake denoiser can read the caption back)."""

  VOCAB = sorted({w for vocab in cc.VOCABULARIES.values() for w in vocab} | {"standing"})

  def __call__(self, captions):
    text = np.zeros((len(captions), 1, len(self.VOCAB)), np.float32)
    for i, caption in enumerate(captions):
      for word in caption.split():
        if word in self.VOCAB:
          text[i, 0, self.VOCAB.index(word)] = 1.0
    return text, np.ones((len(captions), 1), bool)


def test_classify_clips_scores_a_denoiser_with_known_preferences():
  """A fake denoiser that is right about color, shape and background and always prefers 'still'
  (it ignores the motion word): accuracy 1 on the three, and on motion exactly the share of
  'still' clips; every candidate of a clip sees the same noise."""
  targets = [shapes.clip_attributes(0, "test", i) for i in range(12)]
  seen_eps = []

  def errors_fn(video, text, mask, eps, logsnrs):
    assert video.shape == (4, 8, 16, 3) and eps.shape == (len(logsnrs),) + video.shape
    seen_eps.append(eps)
    truth = targets[(len(seen_eps) - 1) // 4].discrete()
    want = _WordEmbedder()([shapes.caption(dataclasses.replace(truth, motion="still"))])[0]
    miss = np.abs(text - want).sum(axis=(1, 2))  # (K,) 0 for the preferred caption
    return miss[:, None] + np.zeros((1, len(logsnrs)))

  rows = cc.classify_clips(errors_fn, _WordEmbedder(), targets, shape=(4, 8, 16), logsnrs=LOGSNRS,
                           seed=3)
  assert len(rows) == 4 * len(targets) and len(seen_eps) == 4 * len(targets)
  for i in range(len(targets)):  # one noise draw per clip, shared by its four attributes
    for j in range(1, 4):
      np.testing.assert_array_equal(seen_eps[4 * i], seen_eps[4 * i + j])
  assert not np.array_equal(seen_eps[0], seen_eps[4])
  table = {t["attribute"]: t for t in cc.summarize(rows, LOGSNRS)}
  still = np.mean([t.motion == "still" for t in targets])
  assert 0 < still < 1
  assert {a: table[a]["accuracy"] for a in cc.VOCABULARIES} == {
      "color": 1.0, "shape": 1.0, "motion": still, "background": 1.0}
  assert table["motion"]["chance"] == 0.2 and table["shape"]["chance"] == pytest.approx(1 / 3)
  assert table["motion"]["at_logsnr_0"] == still
  motion_rows = [r for r in rows if r["attribute"] == "motion"]
  assert {r["winner"] for r in motion_rows} == {"still"}
  assert [r["true"] for r in motion_rows] == [t.motion for t in targets]


def test_direction_row_leaves_still_out_and_counts_moving_clips_only():
  """A fake denoiser that always prefers 'still', then (at the first two levels) the true
  direction, and at the last level the opposite one: motion accuracy 0 on moving clips, direction
  accuracy 1, 1, 0 by level and 1 summed; still clips are not in the direction row."""
  targets = [shapes.clip_attributes(0, "test", i) for i in range(16)]
  opposite = {"left": "right", "right": "left", "up": "down", "down": "up"}
  calls = []

  def errors_fn(video, text, mask, eps, logsnrs):
    calls.append(None)
    truth = targets[(len(calls) - 1) // 4].discrete()
    errors = np.full((text.shape[0], len(logsnrs)), 5.0)
    for k in range(text.shape[0]):
      words = {w for w, on in zip(_WordEmbedder.VOCAB, text[k, 0]) if on}
      if "still" in words:
        errors[k] = 0.0
      elif truth.motion in words:
        errors[k] = (1.0, 1.0, 3.0)
      elif opposite.get(truth.motion) in words:
        errors[k] = (4.0, 4.0, 2.0)
    return errors

  rows = cc.classify_clips(errors_fn, _WordEmbedder(), targets, shape=(4, 8, 16), logsnrs=LOGSNRS,
                           seed=0)
  moving = [t for t in targets if t.motion != "still"]
  assert 0 < len(moving) < len(targets)
  table = {t["attribute"]: t for t in cc.summarize(rows, LOGSNRS)}
  assert table["direction"]["clips"] == len(moving) and table["direction"]["chance"] == 0.25
  assert [table["direction"][k] for k in ("accuracy", "at_logsnr_-4", "at_logsnr_0", "at_logsnr_3")
          ] == [1.0, 1.0, 1.0, 0.0]
  assert table["motion"]["accuracy"] == pytest.approx(1 - len(moving) / len(targets))
  still_rows = [r for r in rows if r["attribute"] == "motion" and r["true"] == "still"]
  assert still_rows and all("direction_correct" not in r for r in still_rows)
  only_still = [r for r in rows if r["attribute"] != "motion" or r["true"] == "still"]
  assert "direction" not in {t["attribute"] for t in cc.summarize(only_still, LOGSNRS)}


@pytest.fixture(scope="module")
def tiny_base():
  config = load("configs/eval.py:benchmark=classifier,runlocal")
  cascade, params = common.load_cascade(config, upto="base")
  return config, cascade.stages[0], params["base"]


def test_denoising_errors_match_a_direct_computation(tiny_base):
  _, stage, params = tiny_base
  params = randomise(params, 1, 0.1)  # zero-initialised output layers would predict 0
  rng = np.random.default_rng(0)
  video = rng.uniform(-1, 1, stage.shape + (3,)).astype(np.float32)
  eps = rng.standard_normal((len(LOGSNRS),) + video.shape).astype(np.float32)
  text = rng.standard_normal((3, 16, 64)).astype(np.float32)
  mask = np.ones((3, 16), bool)
  mask[1, 5:] = False
  got = cc.denoising_errors(stage, params, video, text, mask, eps, LOGSNRS)
  assert got.shape == (3, len(LOGSNRS))
  apply = stage.backbone.apply
  for k in range(3):
    for n, lam in enumerate(LOGSNRS):
      z = schedules.diffuse(jnp.asarray(video[None]), jnp.asarray(eps[n][None]), lam)
      v = apply(params, z, jnp.full((1,), lam), jnp.asarray(text[k:k + 1]),
                jnp.asarray(mask[k:k + 1]))
      want = jnp.mean(jnp.square(v - schedules.v_target(video[None], eps[n][None], lam)))
      np.testing.assert_allclose(got[k, n], want, rtol=1e-4)
  assert np.ptp(got[:, 0]) > 0  # the texts matter to the random U-Net
  with pytest.raises(ValueError, match="eps must be"):
    cc.denoising_errors(stage, params, video, text, mask, eps[:1], LOGSNRS)


def test_classifier_benchmark_runlocal(tmp_path, tiny_base):
  config = tiny_base[0]
  paths = evaluate.run(config, str(tmp_path))
  with open(paths["clips"]) as f:
    clips = list(csv.DictReader(f))
  with open(paths["table_csv"]) as f:
    table = list(csv.DictReader(f))
  assert [(r["clip"], r["attribute"]) for r in clips] == [
      (str(i), a) for i in range(2) for a in cc.VOCABULARIES]
  for r in clips:
    errors = {v: float(r[f"error_{v}"]) for v in cc.VOCABULARIES[r["attribute"]]}
    assert r["winner"] == min(errors, key=errors.get)
    assert r["correct"] == str(int(r["winner"] == r["true"]))
  moving = [r for r in clips if r["attribute"] == "motion" and r["true"] != "still"]
  assert [r["attribute"] for r in table] == list(cc.VOCABULARIES) + ["direction"] * bool(moving)
  for t in table[:len(cc.VOCABULARIES)]:
    mine = [int(r["correct"]) for r in clips if r["attribute"] == t["attribute"]]
    assert (int(t["clips"]), float(t["accuracy"])) == (2, np.mean(mine))
  bad = load("configs/eval.py:benchmark=classifier,runlocal")
  with bad.unlocked():
    bad.classifier.num_clips = 0
  with pytest.raises(ValueError, match="num_clips must be at least 1"):
    evaluate.run(bad, str(tmp_path / "bad"))
