"""The eval job (probe scores of result folders, CSV/markdown), the scoring rules and the ablation
benchmark on the tiny random cascade."""

import csv
import dataclasses
import inspect
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from dreamix_jax.data import tfds_builders
from dreamix_jax.shapes import world as shapes
from dreamix_jax.shapes import ablation
from dreamix_jax.data import report
from dreamix_jax.metrics import proportions, temporal
from dreamix_jax.shapes import scoring
from dreamix_jax.shapes import text2video
from dreamix_jax.jobs import common, evaluate
from dreamix_jax.tools import pool_ablation
from config_loading import ROOT, load

SIZE = (32, 48, 80)
SOURCE = shapes.ClipAttributes("circle", "red", "black", "right", x=30.0, y=24.0, size=14.0,
                               speed=0.6, texture_seed=7)


def render(**changes):
  return shapes.render(dataclasses.replace(SOURCE, **changes), *SIZE)


def prompt(**changes):
  return shapes.caption(dataclasses.replace(SOURCE.discrete(), **changes))


@pytest.mark.parametrize("changes, asked, alignment, fidelity", [
    (dict(color="blue"), dict(color="blue"), True, True),
    (dict(color="blue", shape="square"), dict(color="blue"), False, False),
    (dict(shape="triangle"), dict(shape="triangle"), True, True),
    (dict(motion="up"), dict(motion="up"), True, True),
    (dict(background="gray"), dict(background="gray"), True, True),
    (dict(background="gray", texture_seed=8), dict(background="gray"), True, False),
    (dict(color="blue", x=50.0), dict(color="blue"), True, False),
    (dict(color="blue", size=10.0), dict(color="blue"), True, False),
    ({}, dict(color="blue"), False, True),
])
def test_scores_of_constructed_edits(changes, asked, alignment, fidelity):
  scores = scoring.edit_scores(render(**changes), render(), prompt(**asked), SOURCE)
  assert (scores.alignment, scores.fidelity, scores.success) == (
      alignment, fidelity, alignment and fidelity)
  assert scores.changed == tuple(k for k in scoring.ATTRIBUTES if k in asked)
  # Without the source's attributes the probe reads them from the source video: same verdict.
  assert scoring.edit_scores(render(**changes), render(), prompt(**asked)).fidelity == fidelity


def test_kept_is_fidelity_without_the_texture():
  retextured = scoring.edit_scores(render(color="blue", texture_seed=8), render(),
                                   prompt(color="blue"))
  assert (retextured.fidelity, retextured.kept, retextured.success_kept) == (False, True, True)
  moved = scoring.edit_scores(render(color="blue", x=50.0), render(), prompt(color="blue"))
  assert (moved.fidelity, moved.kept, moved.success_kept) == (False, False, False)
  row = retextured.row()
  assert (row["kept"], row["success_kept"], row["success"]) == (1.0, 1.0, 0.0)


def test_temporal_distance():
  video = np.zeros((3, 4, 5, 3), np.float32)
  video[1] = 0.5
  assert temporal.temporal_distance(video) == pytest.approx(0.5)
  with pytest.raises(ValueError, match="T >= 2"):
    temporal.temporal_distance(video[:1])
  # An edit's stability is the temporal distance of its output.
  assert scoring.edit_scores(render(), render(), prompt()).stability == pytest.approx(
      temporal.temporal_distance(render()))


def test_edit_attributes_change_exactly_one_attribute():
  clips = ablation.source_clips(12, data_seed=0)
  for index, clip in enumerate(clips):
    for category, field in ablation.CATEGORIES.items():
      edited = ablation.edit_attributes(clip, category, index)
      before, after = dataclasses.asdict(clip.discrete()), dataclasses.asdict(edited)
      assert [k for k in before if before[k] != after[k]] == [field]
      assert edited == ablation.edit_attributes(clip, category, index)
  assert ablation.edit_attributes(SOURCE, "appearance", 0).color == "green"
  assert ablation.edit_attributes(SOURCE, "appearance", 5).color == "blue"
  with pytest.raises(ValueError, match="Unknown edit category"):
    ablation.edit_attributes(SOURCE, "style", 0)


MOTION_WORLD = dict(color=("white",), shape=("square",), background=("black",))


def test_ablation_in_the_motion_world_edits_the_motion_only():
  assert ablation.edit_categories() == list(ablation.CATEGORIES)
  assert ablation.edit_categories(MOTION_WORLD) == ["motion"]
  clips = ablation.source_clips(20, data_seed=0, vocabulary=MOTION_WORLD)
  assert {(c.color, c.shape, c.background) for c in clips} == {("white", "square", "black")}
  assert len({c.motion for c in clips}) == 5
  for index, clip in enumerate(clips):
    edited = ablation.edit_attributes(clip, "motion", index, MOTION_WORLD)
    assert edited.motion != clip.motion
    assert dataclasses.replace(edited, motion=clip.motion) == clip.discrete()
  with pytest.raises(ValueError, match="cannot be edited in this world"):
    ablation.edit_attributes(clips[0], "appearance", 0, MOTION_WORLD)


@pytest.mark.parametrize("successes, trials, low, high", [
    (12, 24, 0.3143, 0.6857), (7, 20, 0.1812, 0.5671), (0, 12, 0.0, 0.2425), (12, 12, 0.7575, 1.0)])
def test_wilson_interval_known_values(successes, trials, low, high):
  got = proportions.wilson_interval(successes, trials)
  assert got == pytest.approx((low, high), abs=1e-4)


def test_ablation_summary_intervals_count_the_scored_edits():
  rows = [dict(method="mixed", category="motion", alignment=a, fidelity=0.0, kept=1.0,
               texture_correlation=0.1, stability=0.1, success=0.0, success_kept=a)
          for a in [1.0] * 7 + [0.0] * 13 + [float("nan")]]
  motion, = ablation.summarize(rows)  # one category: no "all" row
  assert motion["category"] == "motion"
  assert motion["edits"] == 21 and motion["alignment"] == pytest.approx(0.35)
  assert motion["alignment_ci95"] == motion["success_kept_ci95"] == "0.18–0.57"
  assert motion["success_ci95"] == "0.00–0.15"  # 0 of 21: every edit has a success score


@pytest.mark.parametrize("only_a, only_b, p", [
    (6, 0, 0.03125), (0, 5, 0.0625), (2, 8, 0.109375), (3, 3, 1.0), (0, 0, 1.0)])
def test_sign_test_exact_values(only_a, only_b, p):
  assert proportions.sign_test(only_a, only_b) == pytest.approx(p)


def _edit_row(clip, method, alignment, kept):
  return dict(clip=clip, category="motion", method=method, alignment=alignment, fidelity=0.0,
              kept=kept, texture_correlation=0.1, stability=0.1, success=0.0,
              success_kept=float(alignment and kept))


def test_paired_counts_edits_only_one_method_got_right():
  rows = []
  for clip, (mixed, video) in enumerate([(1, 0)] * 6 + [(1, 1), (0, 0), (0, 1)]):
    rows += [_edit_row(clip, "mixed", 1.0, float(mixed)), _edit_row(clip, "video", 1.0,
                                                                      float(video))]
  rows.append(_edit_row(99, "mixed", 1.0, 1.0))  # no video edit of clip 99: not paired
  table = {(r["method_a"], r["method_b"], r["score"]): r for r in ablation.paired(rows)}
  kept = table["mixed", "video", "kept"]
  assert (kept["edits"], kept["only_a"], kept["only_b"]) == (9, 6, 1)
  assert kept["sign_test_p"] == pytest.approx(0.125)  # 2 * (1 + 7) / 2**7
  assert table["mixed", "video", "alignment"]["only_a"] == 0
  assert table["mixed", "none", "kept"]["edits"] == 0  # no "none" edits at all


def _write_run(workdir, data_seed, rows, lr=1e-3):
  settings = dict(checkpoint={}, seed=0, ablation=dict(data_seed=data_seed, s_none=0.98),
                  finetune=dict(lr=lr))
  (workdir / "ablation_clips").mkdir(parents=True)
  (workdir / "ablation_clips" / "clip000.json").write_text(
      json.dumps(dict(settings=settings, rows=rows)))


def test_pool_ablation_pools_runs_of_one_benchmark_only(tmp_path):
  _write_run(tmp_path / "a", 0, [_edit_row(0, "mixed", 1.0, 1.0), _edit_row(0, "video", 0.0, 1.0)])
  _write_run(tmp_path / "b", 1, [_edit_row(0, "mixed", 0.0, 1.0), _edit_row(0, "video", 0.0, 0.0)])
  paths = pool_ablation.pool([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "pooled"))
  with open(paths["edits"]) as f:
    edits = list(csv.DictReader(f))
  assert sorted(r["clip"] for r in edits) == ["seed0/0", "seed0/0", "seed1/0", "seed1/0"]
  with open(paths["paired_csv"]) as f:
    kept = next(r for r in csv.DictReader(f) if r["method_b"] == "video" and r["score"] == "kept")
  assert (kept["edits"], kept["only_a"], kept["only_b"]) == ("2", "1", "0")
  _write_run(tmp_path / "other", 2, [_edit_row(0, "mixed", 1.0, 1.0)], lr=1e-4)
  with pytest.raises(ValueError, match="other settings"):
    pool_ablation.pool([str(tmp_path / "a"), str(tmp_path / "other")], str(tmp_path / "p2"))
  _write_run(tmp_path / "again", 1, [_edit_row(0, "mixed", 1.0, 1.0)])
  with pytest.raises(ValueError, match="both edit data seed 1"):
    pool_ablation.pool([str(tmp_path / "b"), str(tmp_path / "again")], str(tmp_path / "p2"))
  proc = subprocess.run([sys.executable, "-m", "dreamix_jax.tools.pool_ablation",
                         f"--out={tmp_path / 'p3'}", str(tmp_path / "empty")],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
      "error: ") and "no finished ablation clip" in proc.stderr
  assert not (tmp_path / "p2").exists() and not (tmp_path / "p3").exists()


def test_tables():
  rows = [dict(a="x|y", b=0.123456), dict(a="z", c=float("nan"))]
  assert report.csv_text(rows) == "a,b,c\nx|y,0.1235,\nz,,\n"
  assert report.markdown_text(rows, title="T") == (
      "## T\n\n| a | b | c |\n|---|---|---|\n| x\\|y | 0.1235 |  |\n| z |  |  |\n")


def _write_result(folder, output, meta, source=None):
  common.write_result(str(folder), output, 6.0, dict(meta, fps=6.0, output_shape=list(output.shape)),
                      input_video=source)


def test_eval_job_scores_result_folders(tmp_path):
  results = tmp_path / "results"
  _write_result(results / "edit" / "a_color", render(color="blue"),
                dict(prompt=prompt(color="blue"), job="edit", s=0.9), render())
  _write_result(results / "edit" / "b_color_and_shape", render(color="blue", shape="square"),
                dict(prompt=prompt(color="blue"), job="edit", s=0.9), render())
  _write_result(results / "edit" / "c_background_texture_lost",
                render(background="gray", texture_seed=8),
                dict(prompt=prompt(background="gray"), job="edit",
                     source_caption=shapes.caption(SOURCE)), render())
  _write_result(results / "text2video" / "d_text2video", render(motion="left", x=60.0),
                dict(prompt=prompt(motion="left"), job="text2video"))
  _write_result(results / "text2video" / "e_other", render(), dict(prompt="a bear dancing"))
  config = load(f"configs/eval.py:outputs={results}")
  paths = evaluate.run(config, str(tmp_path / "eval"))
  with open(paths["csv"]) as f:
    rows = {r["folder"]: r for r in csv.DictReader(f)}
  assert list(rows) == ["edit/a_color", "edit/b_color_and_shape", "edit/c_background_texture_lost",
                        "text2video/d_text2video", "text2video/e_other"]
  verdicts = {k: (r["alignment"], r["fidelity"], r["success"]) for k, r in rows.items()}
  assert verdicts == {"edit/a_color": ("1", "1", "1"), "edit/b_color_and_shape": ("0", "0", "0"),
                      "edit/c_background_texture_lost": ("1", "0", "0"),
                      "text2video/d_text2video": ("1", "", ""), "text2video/e_other": ("", "", "")}
  assert rows["edit/a_color"]["changed"] == "color"
  assert float(rows["edit/a_color"]["texture_correlation"]) > 0.9
  assert all(float(r["temporal_distance"]) > 0 for r in rows.values())
  assert rows["edit/a_color"]["s"] == "0.9" and rows["text2video/d_text2video"]["job"] == "text2video"
  md = pathlib.Path(paths["md"]).read_text().splitlines()
  assert md[0] == "## Scores of 5 results"
  assert md[2].startswith("| folder | prompt | job | setting | s | temporal_distance |")
  assert len(md) == 4 + 5 + 1 and md[-1].startswith("| mean |")
  # Mean alignment over the four shapes prompts: (1 + 0 + 1 + 1) / 4.
  header = [c.strip() for c in md[2].strip("|").split("|")]
  assert md[-1].strip("|").split("|")[header.index("alignment")].strip() == "0.75"


def test_eval_config_errors(tmp_path):
  with pytest.raises(ValueError, match="exactly one of config.outputs"):
    evaluate.run(load("configs/eval.py"), str(tmp_path))
  with pytest.raises(ValueError, match="exactly one of config.outputs"):
    evaluate.run(load(f"configs/eval.py:outputs={tmp_path},benchmark=shapes"), str(tmp_path))
  with pytest.raises(FileNotFoundError, match="not a directory"):
    evaluate.run(load(f"configs/eval.py:outputs={tmp_path / 'none'}"), str(tmp_path))
  with pytest.raises(ValueError, match="No result folders"):
    evaluate.run(load(f"configs/eval.py:outputs={tmp_path}"), str(tmp_path))
  with pytest.raises(ValueError, match=r"Unknown benchmark 'faces'; use one of \('shapes', "
                     r"'text2video', 'classifier', 'drift', 'caption_fit'\)"):
    evaluate.run(load("configs/eval.py:benchmark=faces"), str(tmp_path))


def test_every_benchmark_has_the_one_signature():
  """The registry's functions all take `evaluate.Benchmark`'s arguments, and none lives in jobs/."""
  want = list(inspect.signature(evaluate.Benchmark.__call__).parameters.values())[1:]  # no self
  for name, benchmark in evaluate.BENCHMARKS.items():
    got = list(inspect.signature(benchmark).parameters.values())
    assert [(p.name, p.kind) for p in got] == [(p.name, p.kind) for p in want], name
    assert not benchmark.__module__.startswith("dreamix_jax.jobs"), name


def test_ablation_methods_take_their_own_finetuning_steps():
  """App. F.1's protocol: video-only finetuning for 64 steps, mixed for 150, both edited from the
  same s; a steps table without both finetuned methods, or with a step count below 1, is refused."""
  config = load("configs/eval.py:benchmark=shapes")
  with config.unlocked():
    config.ablation.steps.video, config.ablation.s_finetuned = 64, 0.98
  methods = {m.name: m for m in ablation.methods_from_config(config.ablation, config.alphas)}
  assert [(m.alpha, m.steps, m.s) for m in methods.values()] == [
      (None, 0, 0.8), (1.0, 64, 0.98), (0.35, 150, 0.98), (None, 0, None)]
  with config.unlocked():
    config.ablation.steps.mixed = 0
  with pytest.raises(ValueError, match=r"ablation.steps.mixed must be at least 1, got 0"):
    ablation.methods_from_config(config.ablation, config.alphas)
  with config.unlocked():
    config.ablation.steps = dict(video=64)
  with pytest.raises(ValueError, match=r"must name the finetuned methods video and mixed"):
    ablation.methods_from_config(config.ablation, config.alphas)


def test_ablation_runlocal(tmp_path, monkeypatch):
  """1 clip x 4 categories x 4 methods on the tiny random cascade, tiny finetunes; a second run in
  the workdir reuses the finished clip, and one with other settings is refused."""
  config = load("configs/eval.py:benchmark=shapes,runlocal")
  assert config.ablation.upto == "base"
  paths = evaluate.run(config, str(tmp_path))
  first = pathlib.Path(paths["edits"]).read_text()

  def unexpected(*args, **kwargs):
    raise AssertionError("a finished clip was edited again")
  monkeypatch.setattr(ablation, "_method_params", unexpected)
  monkeypatch.setattr(ablation, "_edit", unexpected)
  assert pathlib.Path(evaluate.run(config, str(tmp_path))["edits"]).read_text() == first
  config.ablation.steps.video = 3
  with pytest.raises(ValueError, match="other settings"):
    evaluate.run(config, str(tmp_path))
  with open(paths["edits"]) as f:
    edits = list(csv.DictReader(f))
  assert sorted((r["method"], r["category"]) for r in edits) == sorted(
      (m, c) for m in ablation.METHODS for c in ablation.CATEGORIES)
  for r in edits:
    target = shapes.parse_caption(r["prompt"])
    assert r["changed"] == ablation.CATEGORIES[r["category"]]
    assert target == ablation.edit_attributes(shapes.parse_caption(r["source"]), r["category"], 0)
    assert r["success"] == str(int(r["alignment"] == r["fidelity"] == "1"))
    assert r["success_kept"] == str(int(r["alignment"] == r["kept"] == "1"))
    assert r["fidelity"] <= r["kept"]
  with open(paths["table_csv"]) as f:
    table = list(csv.reader(f))
  assert table[0] == list(ablation.SUMMARY_COLUMNS)
  assert [(r[0], r[1], r[2]) for r in table[1:]] == [
      (m, c, "4" if c == "all" else "1") for m in ablation.METHODS
      for c in list(ablation.CATEGORIES) + ["all"]]
  assert pathlib.Path(paths["table_md"]).read_text().count("\n| ") == 1 + 20
  for plot in ("plot", "plot_kept"):
    assert pathlib.Path(paths[plot]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert (tmp_path / "ablation_clips" / "clip000.png").is_file()


def test_text2video_scores_read_rendered_captions():
  """Rendered test clips show every attribute of their own caption; a caption with one attribute
  changed is found in every attribute but that one."""
  clips = [shapes.clip_attributes(0, "test", i) for i in range(6)]
  videos = shapes.render_batch(clips, 16, 24, 40)
  targets = text2video.test_captions(6, 0)
  assert targets == [c.discrete() for c in clips]
  rows = text2video.score_samples(videos, targets)
  assert all(r["all"] == 1 and r["caption"] == shapes.caption(t) for r, t in zip(rows, targets))
  assert [r["read_shape"] for r in rows] == [t.shape for t in targets]
  changed = [ablation.edit_attributes(t, category, 0)
             for t, category in zip(targets, list(ablation.CATEGORIES) * 2)]
  rows = text2video.score_samples(videos, changed)
  for r, category in zip(rows, list(ablation.CATEGORIES) * 2):
    wrong = ablation.CATEGORIES[category]
    assert {a: r[a] for a in text2video.ATTRIBUTES} == {
        a: int(a != wrong) for a in text2video.ATTRIBUTES}
    assert r["all"] == 0
  table = text2video.summarize(rows)
  moving = [t for t in changed if t.motion != "still"]
  assert [(t["attribute"], t["samples"]) for t in table] == [
      (a, 6) for a in text2video.ATTRIBUTES + ("all",)] + [("direction", len(moving))]
  assert table[0]["found"] == pytest.approx(5 / 6)  # color ("appearance") changed in 1 of the 6
  assert table[4]["found"] == 0.0
  # direction: the motion column of the moving captions alone
  motion_found = [r["motion"] for r, t in zip(rows, changed) if t.motion != "still"]
  assert table[5]["found"] == pytest.approx(np.mean(motion_found)) and 0 < np.mean(motion_found) < 1
  still = dict(caption="a red circle standing still on a black background", color=1, shape=1,
               motion=1, background=1, all=1)
  assert [t["attribute"] for t in text2video.summarize([still])][-1] == "all"


def test_text2video_confusion_counts_captioned_against_read_values():
  """Every sample lands in the cell (its caption's value, the value the probe read); a missing
  object counts as "none"; rows and columns follow the vocabulary."""
  rows = [dict(caption="a red circle moving left on a black background", read_motion="right"),
          dict(caption="a blue square moving left on a gray background", read_motion="left"),
          dict(caption="a red circle moving left on a black background", read_motion="right"),
          dict(caption="a red circle standing still on a black background", read_motion=""),
          dict(caption="a red circle moving up on a black background", read_motion="still")]
  table = text2video.confusion(rows, "motion")
  assert [r["caption"] for r in table] == list(shapes.MOTIONS)
  assert all(list(r)[1:] == list(shapes.MOTIONS) + ["none"] for r in table)
  counts = {(r["caption"], read): n for r in table for read, n in list(r.items())[1:] if n}
  assert counts == {("left", "right"): 2, ("left", "left"): 1, ("still", "none"): 1,
                    ("up", "still"): 1}


def test_decision_table_counts_reads_per_step():
  """Per step, the share of samples reading as the final step and as the caption; a missing object
  (None) matches neither a value nor the caption."""
  targets = [shapes.parse_caption("a red circle moving left on a black background"),
             shapes.parse_caption("a blue square moving up on a gray background")]
  read = lambda motion, color="red": dict(color=color, shape="circle", motion=motion,
                                          background="black")
  steps = [[read(None), read("down", "blue")],
           [read("right"), read("up", "blue")],
           [read("right"), read("up", "blue")]]
  table = text2video.decision_table(steps, targets, [-6.0, 0.0, 6.0])
  assert [(r["step"], r["logsnr"]) for r in table] == [(0, -6.0), (1, 0.0), (2, 6.0)]
  assert [r["motion_as_final"] for r in table] == [0.0, 1.0, 1.0]
  assert [r["motion_as_caption"] for r in table] == [0.0, 0.5, 0.5]
  assert [r["color_as_caption"] for r in table] == [1.0, 1.0, 1.0]
  assert [r["shape_as_caption"] for r in table] == [0.5, 0.5, 0.5]  # circle vs square
  assert [r["background_as_final"] for r in table] == [1.0, 1.0, 1.0]


def test_text2video_trace_keeps_the_samples_and_ends_at_them(tmp_path):
  """With trace the base stage's samples are exactly those without it, and the decision table's
  last step reads as the samples do (its _as_caption equals the per-attribute found share)."""
  config = load("configs/eval.py:benchmark=text2video,runlocal,upto=base")
  plain = evaluate.run(config, str(tmp_path / "plain"))
  config.text2video.trace = True
  traced = evaluate.run(config, str(tmp_path / "traced"))
  assert "decision_csv" not in plain
  assert (pathlib.Path(plain["samples"]).read_text()
          == pathlib.Path(traced["samples"]).read_text())
  with open(traced["decision_csv"]) as f:
    decision = list(csv.DictReader(f))
  with open(traced["table_csv"]) as f:
    found = {r["attribute"]: float(r["found"]) for r in csv.DictReader(f)}
  assert len(decision) == config.cascade.stages.base.sampler.num_steps
  assert float(decision[0]["logsnr"]) == pytest.approx(config.cascade.schedule.logsnr_min)
  assert all(float(decision[-1][f"{a}_as_final"]) == 1.0 for a in text2video.ATTRIBUTES)
  assert {a: float(decision[-1][f"{a}_as_caption"]) for a in text2video.ATTRIBUTES} == {
      a: found[a] for a in text2video.ATTRIBUTES}
  config.text2video.upto = "tsr"
  with pytest.raises(ValueError, match="trace follows the base stage"):
    evaluate.run(config, str(tmp_path / "tsr"))


def test_text2video_runlocal(tmp_path):
  """Two test captions through the tiny random cascade; only the stages up to `upto` are loaded."""
  config = load("configs/eval.py:benchmark=text2video,runlocal,upto=tsr")
  paths = evaluate.run(config, str(tmp_path))
  with open(paths["samples"]) as f:
    samples = list(csv.DictReader(f))
  assert [r["caption"] for r in samples] == [shapes.caption(t)
                                             for t in text2video.test_captions(2, 0)]
  with open(paths["table_csv"]) as f:
    table = list(csv.DictReader(f))
  moving = [s for s in samples if shapes.parse_caption(s["caption"]).motion != "still"]
  assert [r["attribute"] for r in table] == (list(text2video.ATTRIBUTES) + ["all"]
                                             + ["direction"] * bool(moving))
  for r in table[:len(text2video.ATTRIBUTES) + 1]:
    found = [int(s[r["attribute"]]) for s in samples]
    assert (int(r["samples"]), float(r["found"])) == (2, np.mean(found))
  for attribute in text2video.ATTRIBUTES:
    with open(paths[f"confusion_{attribute}_csv"]) as f:
      confusion = list(csv.DictReader(f))
    assert sum(int(n) for r in confusion for k, n in r.items() if k != "caption") == 2
  assert pathlib.Path(paths["grid"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  cascade, params = common.load_cascade(config, upto="tsr")
  assert list(params) == ["base", "tsr"] and cascade.names == ["base", "tsr", "ssr"]
  with pytest.raises(ValueError, match="not in cascade"):
    common.load_cascade(config, upto="ssr2")
