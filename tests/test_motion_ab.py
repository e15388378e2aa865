"""The direction-of-motion A/B's levers: the motion-only (restricted) world and the training log-SNR
mixture; the default world and the default draws stay exactly as they were."""

import collections
import subprocess

import jax
import numpy as np
import pytest

from dreamix_jax.diffusion import objectives, schedules
from dreamix_jax.shapes import world
from dreamix_jax.train import losses
from config_loading import ROOT, load

MOTION_ONLY = dict(color=("white",), shape=("square",), background=("black",))


def test_restricted_world_draws():
  # No restriction: exactly the world's clips.
  for i in range(40):
    assert world.clip_attributes(0, "train", i, {}) == world.clip_attributes(0, "train", i)
  clips = [world.clip_attributes(0, "train", i, MOTION_ONLY) for i in range(400)]
  assert {(c.color, c.shape, c.background) for c in clips} == {("white", "square", "black")}
  motions = collections.Counter(c.motion for c in clips)
  assert set(motions) == set(world.MOTIONS) and min(motions.values()) > 50
  with pytest.raises(ValueError, match="not a caption attribute"):
    world.restricted({"speed": ("fast",)})
  with pytest.raises(ValueError, match="'teal' is not in the moving-shapes vocabulary"):
    world.restricted({"color": ("teal",)})


def test_logsnr_mixture_replaces_a_share_of_the_draws():
  schedule = schedules.CosineLogSNR()
  rng = jax.random.PRNGKey(0)
  plain = np.asarray(objectives.sample_logsnr(rng, (20000,), schedule))
  off = np.asarray(objectives.sample_logsnr(rng, (20000,), schedule, mixture=(0.0, -8.0, -3.0)))
  np.testing.assert_array_equal(off, plain)
  mixed = np.asarray(objectives.sample_logsnr(rng, (20000,), schedule, mixture=(0.4, -8.0, -3.0)))
  changed = mixed != plain
  assert abs(changed.mean() - 0.4) < 0.015
  assert mixed[changed].min() >= -8.0 and mixed[changed].max() <= -3.0
  assert np.ptp(mixed[changed]) > 4.5  # spread over the interval, not one level
  with pytest.raises(ValueError, match="logsnr_mixture"):
    losses.make_stage_loss(None, None, schedule, logsnr_mixture=(0.4, -3.0, -8.0))


def test_ab_configs_and_script_arguments():
  config = load("configs/pretrain.py:world=motion")
  assert dict(config.data.vocabulary)["color"] == ("white",)
  # The drift benchmark's object belongs to the world it is scored in.
  for arg, vocabulary in (("world=motion", MOTION_ONLY), ("", {})):
    eval_config = load(f"configs/eval.py:{arg}" if arg else "configs/eval.py")
    drawn = world.parse_caption(eval_config.drift.object)
    assert drawn.motion == "still"
    for attribute, values in vocabulary.items():
      assert getattr(drawn, attribute) in values
  assert load("configs/eval.py:world=motion").vocabulary.shape == ("square",)
  proc = subprocess.run(["bash", "launch/cpu/motion_ab.sh", "bogus", "10"], cwd=ROOT,
                        capture_output=True, text=True)
  assert proc.returncode == 2 and "unknown arm 'bogus'" in proc.stderr
