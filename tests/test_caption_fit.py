"""The caption-fit benchmark (`research.caption_fit`): its clips differ in one attribute only,
`matched` cannot exceed one when the captions are indistinguishable and reaches four when they are
not, and the eval job end to end."""

import csv
import dataclasses

import jax
import numpy as np
import pytest

from configs.cascades import shapes as shapes_cfg
from dreamix_jax import cascade as cascade_lib
from dreamix_jax.shapes import world as shapes
from dreamix_jax.research import caption_fit
from dreamix_jax.shapes import probe
from dreamix_jax.jobs import evaluate
from config_loading import load

SHAPE = (8, 24, 40)


@pytest.mark.parametrize("attribute", sorted(caption_fit.ATTRIBUTE_VALUES))
def test_clips_differ_in_the_one_attribute_the_probe_reads(attribute):
  clips, videos = caption_fit.fit_clips(attribute, SHAPE)
  values = caption_fit.ATTRIBUTE_VALUES[attribute]
  assert videos.shape == (len(values),) + SHAPE + (3,)
  read = probe.probe_batch(videos)
  for clip, result, value in zip(clips, read, values):
    attrs = dataclasses.asdict(shapes.parse_caption(shapes.caption(clip)))
    assert attrs == {**caption_fit._DEFAULTS, attribute: value}
    assert getattr(result, attribute) == value
  with pytest.raises(ValueError, match="not one of"):
    caption_fit.fit_clips("speed", SHAPE)


@pytest.fixture(scope="module")
def tiny_base():
  cascade = cascade_lib.Cascade.from_config(shapes_cfg.get_config("tiny"))
  base = cascade.stage("base")
  params = cascade.init_params(jax.random.PRNGKey(0), base)
  return cascade, base, params, cascade.denoiser(base)


def test_matched_counts_only_what_the_caption_tells_apart(tiny_base):
  cascade, base, params, apply = tiny_base
  _, videos = caption_fit.fit_clips("color", base.shape)
  n, length, dim = len(videos), cascade.text_len, cascade.text_dim
  mask = np.ones((n, length), bool)
  kwargs = dict(logsnr=cascade.schedule.logsnr_min, learning_rate=1e-2, seed=0)
  same = np.ones((n, length, dim), np.float32)  # four captions the model cannot tell apart
  rows = caption_fit.fit(apply, params, same, mask, videos, steps=150, report_every=75, **kwargs)
  assert [r["step"] for r in rows] == [0, 75, 150]
  assert all(r["matched"] <= 1 for r in rows)
  # One-hot captions: the randomly initialised tiny base ties all four to their clips in ~175
  # steps (matched 1, 1, ..., 2 at 150, 4 at 175 and 200).
  distinct = np.repeat(np.eye(n, dim, dtype=np.float32)[:, None] * 3.0, length, axis=1)
  rows = caption_fit.fit(apply, params, distinct, mask, videos, steps=250, report_every=250,
                         **kwargs)
  assert rows[-1]["matched"] == n
  assert rows[-1]["relative_error"] < rows[0]["relative_error"]


def test_caption_fit_benchmark_runlocal(tmp_path):
  config = load("configs/eval.py:benchmark=caption_fit,runlocal")
  paths = evaluate.run(config, str(tmp_path))
  with open(paths["table_csv"]) as f:
    rows = list(csv.DictReader(f))
  assert [(r["attribute"], int(r["step"])) for r in rows] == [
      ("color", 0), ("color", 1), ("color", 2), ("motion", 0), ("motion", 1), ("motion", 2)]
  assert set(rows[0]) == {"attribute", "captions", "step", "loss", "matched", "relative_error"}
  bad = load("configs/eval.py:benchmark=caption_fit,runlocal")
  with bad.unlocked():
    bad.caption_fit.steps = 0
  with pytest.raises(ValueError, match="caption_fit.steps"):
    evaluate.run(bad, str(tmp_path / "bad"))
  with bad.unlocked():
    bad.caption_fit.steps = 2
    bad.caption_fit.attributes = ("color", "speed")
  with pytest.raises(ValueError, match=r"\['speed'\] are not among"):
    evaluate.run(bad, str(tmp_path / "bad"))
