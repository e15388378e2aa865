"""The sweep job: its plan (which finetunes run, which s values share them), continued finetuning,
and the `:runlocal` sweep end to end (grid png, html page)."""

import html.parser
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from dreamix_jax import cascade as cascade_lib
from dreamix_jax.data import outputs, video as video_io
from dreamix_jax.dreamix import finetune, sweep
from dreamix_jax.jobs import sweep as sweep_job
from dreamix_jax.train import preemption
from config_loading import load



def test_plan_of_the_paper_grid():
  settings = sweep.parse_settings(sweep.PAPER_GRID, sweep.PAPER_ALPHAS)
  assert len(settings) == 12
  assert sweep.plan(settings, sweep.PAPER_ALPHAS) == [
      sweep.FinetuneRun("none", None, (0,), {0: (0.4, 0.7, 0.8, 0.85)}),
      sweep.FinetuneRun("video", 1.0, (64,), {64: (0.8, 0.9, 0.95, 0.98)}),
      # One mixed finetune, read at 150, 200 and 300 steps; the 200-step state serves two s.
      sweep.FinetuneRun("mixed", 0.35, (150, 200, 300), {150: (0.98,), 200: (0.98, 1.0),
                                                           300: (1.0,)}),
  ]
  assert settings[10].label(0.35) == "mixed (a=0.35) 200 steps, s=1"
  assert settings[0].label(None) == "no finetuning, s=0.4"
  assert [s.slug for s in settings[3:5]] == ["none_s0.85", "video_64steps_s0.8"]


def test_plan_orders_steps_and_keeps_first_appearance():
  settings = sweep.parse_settings((("mixed", 300, 1.0), ("none", 0, 0.5), ("mixed", 100, 0.9),
                                   ("mixed", 300, 0.9)), {"mixed": 0.5})
  assert sweep.plan(settings, {"mixed": 0.5}) == [
      sweep.FinetuneRun("mixed", 0.5, (100, 300), {100: (0.9,), 300: (1.0, 0.9)}),
      sweep.FinetuneRun("none", None, (0,), {0: (0.5,)})]


@pytest.mark.parametrize("grid, message", [
    ((("image", 10, 0.9),), "unknown mode 'image'"),
    ((("none", 5, 0.9),), "takes 0 steps"),
    ((("mixed", 0, 0.9),), "takes 0 steps"),
    ((("mixed", 10, 1.5),), r"\[0, 1\]"),
    ((("mixed", 10, 0.9), ("mixed", 10, 0.9)), "repeat"),
    ((("mixed", 10),), r"\(mode, steps, s\)"),
    ((), "no settings"),
])
def test_bad_settings_give_clear_errors(grid, message):
  with pytest.raises(ValueError, match=message):
    sweep.parse_settings(grid, sweep.PAPER_ALPHAS)


def test_intermediate_states_equal_shorter_runs():
  """The 1-step state of a 3-step run is the 1-step run's, and continuing gives the 3-step run's."""
  config = load("configs/sweep.py:runlocal")
  cascade = cascade_lib.Cascade.from_config(config.cascade)
  params = {"base": cascade.init_params(jax.random.PRNGKey(0), cascade.stage("base"))}
  cfg = config.finetune.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.alpha = 0.35
  rng = np.random.default_rng(0)
  video = rng.uniform(-1, 1, (1, 4, 8, 16, 3)).astype(np.float32)
  text = rng.normal(size=(1, 16, 64)).astype(np.float32)
  mask = np.ones((1, 16), bool)
  read = dict(finetune.finetune_at_steps(cascade, params, video, text, mask, cfg, [3, 1]))
  assert sorted(read) == [1, 3]
  direct = dict(finetune.finetune_at_steps(cascade, params, video, text, mask, cfg, [1]))
  first = jax.tree_util.tree_leaves(read[1]["base"])
  direct_leaves = jax.tree_util.tree_leaves(direct[1]["base"])
  assert len(first) == len(direct_leaves) > 1
  for a, b in zip(first, direct_leaves):  # every parameter, not a sample of them
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in zip(
      first, jax.tree_util.tree_leaves(read[3]["base"])))
  assert any(not np.array_equal(a, b) for a, b in zip(
      first, jax.tree_util.tree_leaves(params["base"])))


class _Sources(html.parser.HTMLParser):
  def __init__(self):
    super().__init__()
    self.sources = {"video": [], "img": []}

  def handle_starttag(self, tag, attrs):
    if tag in self.sources:
      self.sources[tag].append(dict(attrs)["src"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """(config, workdir, result folders) of the `:runlocal` sweep run without interruption."""
  config = load("configs/sweep.py:runlocal")
  workdir = tmp_path_factory.mktemp("reference")
  return config, workdir, sweep_job.run(config, str(workdir))


def test_sweep_runlocal_end_to_end(reference):
  config, tmp_path, folders = reference
  root = tmp_path / "sweep" / "sweep"
  assert sorted(os.listdir(root)) == ["000_a-red-circle-moving-left-on-a-black-background_seed0",
                                      "index.html", "input.mp4"]  # no finetune state, no marker
  settings = sweep.parse_settings(config.settings, config.alphas)
  assert len(folders) == len(settings) == 8
  case = root / "000_a-red-circle-moving-left-on-a-black-background_seed0"
  assert sorted(os.listdir(case)) == sorted(
      [f"{j:02d}_{s.slug}" for j, s in enumerate(settings)] + ["grid.png"])
  metas = {}
  for j, setting in enumerate(settings):
    folder = case / f"{j:02d}_{setting.slug}"
    assert {"output.mp4", "input.mp4", "output.gif", "comparison.png", "meta.json"} <= set(
        os.listdir(folder))
    meta = json.loads((folder / "meta.json").read_text())
    assert (meta["mode"], meta["finetune_steps"], meta["s"]) == (setting.mode, setting.steps,
                                                                  setting.s)
    assert meta["output_shape"] == [8, 16, 32, 3]
    metas[setting] = meta
  # Grid: the input, then one labelled row per setting; 8 frames of 16x32 each.
  grid = Image.open(case / "grid.png")
  assert grid.size == (8 * 32, (len(settings) + 1) * (outputs.LABEL_BAND_HEIGHT + 16))
  # The page shows the input and every setting's video, all of which exist.
  parser = _Sources()
  parser.feed((root / "index.html").read_text())
  expected = ["input.mp4"] + [os.path.relpath(f, root) + "/output.mp4" for f in
                              sorted(folders)]
  assert sorted(parser.sources["video"]) == sorted(expected)
  assert all((root / src).is_file() for src in parser.sources["video"] + parser.sources["img"])
  assert parser.sources["img"] == [os.path.relpath(case / "grid.png", root)]
  # The two s values of the 2-step mixed state share its finetune: same alpha and steps.
  shared = [m for s, m in metas.items() if s.mode == "mixed" and s.steps == 2]
  assert [(m["alpha"], m["s"]) for m in shared] == [(0.35, 0.98), (0.35, 1.0)]


def test_sweep_preempted_in_a_finetune_resumes_to_the_same_results(reference, tmp_path,
                                                                   monkeypatch):
  """A SIGTERM at step 1 of the 2-step video finetune (after the settings without finetuning were
  written), then the same command again: it continues that finetune from its checkpoint and ends
  with the results of the uninterrupted run."""
  _, ref_dir, ref_folders = reference
  config = load("configs/sweep.py:runlocal")
  with config.unlocked():
    config.overwrite = False  # a resumed run must not need it

  def stop_now(guard):
    guard.requested = "SIGTERM"
    return True

  with monkeypatch.context() as patch:
    patch.setattr(preemption.Guard, "should_stop", stop_now)
    with pytest.raises(preemption.Preempted, match=r"\[finetune/base\] preempted by SIGTERM at "
                                                   r"step 1: a checkpoint at step 1 is in \S+/sweep/"
                                                   r"sweep/finetune/video/2/base"):
      sweep_job.run(config, str(tmp_path))
  root = tmp_path / "sweep" / "sweep"
  assert (root / ".unfinished.json").is_file() and not (root / "index.html").exists()
  folders = sweep_job.run(config, str(tmp_path))
  assert [os.path.relpath(f, tmp_path) for f in folders] == [
      os.path.relpath(f, ref_dir) for f in ref_folders]
  assert sorted(os.listdir(root)) == sorted(os.listdir(ref_dir / "sweep" / "sweep"))
  for folder, ref_folder in zip(folders, ref_folders):
    for name in ("output.mp4", "input.mp4"):
      np.testing.assert_array_equal(
          video_io.read_video(os.path.join(folder, name), 8, 16, 32),
          video_io.read_video(os.path.join(ref_folder, name), 8, 16, 32), err_msg=f"{folder}/{name}")
  case = "000_a-red-circle-moving-left-on-a-black-background_seed0"
  np.testing.assert_array_equal(np.asarray(Image.open(root / case / "grid.png")),
                                np.asarray(Image.open(ref_dir / "sweep" / "sweep" / case /
                                                      "grid.png")))
