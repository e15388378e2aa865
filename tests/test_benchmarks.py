"""The benchmark scripts run end to end in their `--tiny` mode and print well-formed tables.

Timings are not checked (CPU under test load); the tables' columns, row names and the numeric,
positive figures are.
"""

import gzip
import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
sys.path.insert(0, BENCH)

import edit_phases  # pylint: disable=g-import-not-at-top,wrong-import-position
import sampler_loop  # pylint: disable=g-import-not-at-top,wrong-import-position
import step_profile  # pylint: disable=g-import-not-at-top,wrong-import-position
import unet3d_step  # pylint: disable=g-import-not-at-top,wrong-import-position
import unet_step  # pylint: disable=g-import-not-at-top,wrong-import-position


def run_script(name, *args, wall=None):
  """Runs benchmarks/<name> --tiny; returns (title line, header cells, rows of cells). `wall`, a
  list, receives the seconds the whole process took."""
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, os.path.join(BENCH, name), "--tiny", *args],
                        capture_output=True, text=True, cwd=ROOT, timeout=600, check=False)
  if wall is not None:
    wall.append(time.perf_counter() - start)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [line for line in proc.stdout.splitlines() if line.strip()]
  title = [line for line in lines if line.startswith("## ")]
  table = [[c.strip() for c in line.strip("|").split("|")] for line in lines
           if line.startswith("|")]
  assert len(title) == 1 and table, proc.stdout
  assert all(set(c) == {"-"} for c in table[1]), "second table line must be the separator"
  return title[0], table[0], table[2:]


def _positive(cell):
  return float(cell) > 0


def test_unet_step_table():
  title, header, rows = run_script("unet_step.py", "--configs=base")
  assert "dtype=float32" in title
  assert tuple(header) == unet_step.COLUMNS
  assert [(r[0], r[1]) for r in rows] == [("base", s) for s in ("video", "mixed", "sampler")]
  col = {name: i for i, name in enumerate(header)}
  for r in rows:
    for name in ("params_M", "GFLOP", "time_s", "GFLOP/s", "peak_GFLOP/s", "frac_peak"):
      assert _positive(r[col[name]]), (name, r)
  # The guided base stage runs CFG's two branches in one call: batch 2 for one prompt.
  assert int(rows[2][col["batch"]]) == 2
  assert _positive(rows[1][col["x_video"]]) and rows[0][col["x_video"]] == "-"
  # The mixed step runs two variants, the frame variant without the temporal work its mask
  # discards: more than one video step's FLOPs, clearly less than two (1.78× for the tiny stage).
  assert 1.5 < float(rows[1][col["GFLOP"]]) / float(rows[0][col["GFLOP"]]) < 1.95


def test_sampler_loop_table_and_no_recompiles():
  _, header, rows = run_script("sampler_loop.py", "--configs=base")
  assert tuple(header) == sampler_loop.COLUMNS
  assert [r[0] for r in rows] == ["base"]
  col = {name: i for i, name in enumerate(header)}
  assert int(rows[0][col["steps"]]) == 4 and rows[0][col["guided"]] == "True"  # tiny base sampler
  row = rows[0]
  assert _positive(row[col["loop_s"]]) and _positive(row[col["call_s"]])
  assert int(row[col["recompiles"]]) == 0  # a new prompt, seed and t_start reuse the program


def test_edit_phases_table():
  wall = []
  title, header, rows = run_script("edit_phases.py", wall=wall)
  assert "1 finetuning steps" in title
  assert tuple(header) == edit_phases.COLUMNS
  names = [r[0] for r in rows]
  assert sorted(names[:-2]) == ["finetune_base", "load", "read_input", "sample_base", "sample_ssr",
                                "sample_tsr"]  # the job's phases: per stage
  assert names[-2:] == ["untimed", "total"]
  seconds = {r[0]: float(r[1]) for r in rows}
  # Measured from outside: the job's total is the wall time of the run inside the process, which
  # also imported JAX and the package before it started.
  assert 0 < seconds["total"] < wall[0]
  assert all(v >= 0 for v in seconds.values())


def test_unet3d_step_table():
  """The full-size ModelScope U-Net's forward + backward row, on the toy UNet3D (--tiny): the
  parameter count is diffusers' for the same config."""
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  title, header, rows = run_script("unet3d_step.py")
  assert "dtype=bfloat16" in title
  assert tuple(header) == unet3d_step.COLUMNS
  assert [(r[0], r[1], r[3]) for r in rows] == [("toy", "2x2x2", "bfloat16")]
  col = {name: i for i, name in enumerate(header)}
  with torch.device("meta"):
    reference = diffusers.UNet3DConditionModel(**unet3d_step.TINY_UNET)
  count = sum(t.numel() for t in reference.parameters())
  assert float(rows[0][col["params_M"]]) == pytest.approx(count / 1e6, abs=0.005)
  for name in ("GFLOP", "time_s", "GFLOP/s", "peak_GFLOP/s", "frac_peak", "compile_s", "xla_GiB"):
    assert _positive(rows[0][col[name]]), name


def test_step_profile_table():
  """The profile of the tiny base stage's train step: real operation kinds, shares summing to one,
  and the runtime's own trace events left out."""
  title, header, rows = run_script("step_profile.py", "--mode=profile", "--top=4")
  assert "1 steps traced" in title
  assert tuple(header) == step_profile.PROFILE_COLUMNS
  kinds = [r[1] for r in rows]
  assert len(kinds) == 6 and kinds[4].startswith("other (") and kinds[5] == "total"
  assert all(step_profile._HLO_NAME.fullmatch(k) for k in kinds[:4])  # pylint: disable=protected-access
  shares = [float(r[3]) for r in rows]
  assert shares[:4] == sorted(shares[:4], reverse=True)
  assert sum(shares[:5]) == pytest.approx(1.0, abs=0.01) and shares[5] == 1.0
  ms = [float(r[2]) for r in rows]
  assert sum(ms[:5]) == pytest.approx(ms[5], rel=0.01)


def test_step_profile_groups_operations_by_kind(tmp_path):
  """`op_kinds` on a written trace: suffixes merged, per step, runtime events and instants dropped."""
  events = [dict(ph="X", name="ynn_fusion.95", dur=3000), dict(ph="X", name="ynn_fusion.7", dur=1000),
            dict(ph="X", name="copy", dur=500), dict(ph="X", name="dot.3.1", dur=1500),
            dict(ph="X", name="ThunkExecutor::Execute", dur=90000),
            dict(ph="X", name="$api.py:2479 block_until_ready", dur=90000),
            dict(ph="X", name="Handle inputs", dur=700), dict(ph="i", name="copy", dur=9000)]
  path = tmp_path / "perfetto_trace.json.gz"
  with gzip.open(path, "wt") as f:
    json.dump({"traceEvents": events}, f)
  assert step_profile.op_kinds(str(path), steps=2) == [
      ("ynn_fusion", 2.0, 1), ("dot", 0.75, 0), ("copy", 0.25, 0)]


def test_step_profile_flags():
  assert step_profile.parse_backbone("channels=16, spacetime_conv_levels=(0, 1),coord_time=True") == {
      "channels": 16, "spacetime_conv_levels": (0, 1), "coord_time": True}
  assert step_profile.parse_variants("a:x=,y=TRUE,z=3;b:q=false") == {
      "default": {}, "a": {"x": "", "y": True, "z": 3}, "b": {"q": False}}
  for bad in ("channels", "channels=sixteen"):
    with pytest.raises(SystemExit, match="--backbone"):
      step_profile.parse_backbone(bad)
  for bad in ("noname", "default:x=1", "a:x"):
    with pytest.raises(SystemExit, match="--variants"):
      step_profile.parse_variants(bad)
