"""Reliability: preemption and exact resume across processes, the numerics guard, every bad input
answered with a clear message and nothing left behind, and no unsafe loading in the package.

The cross-process tests run the real CLI (`python -m dreamix_jax.main`) on the `:runlocal` pretrain
config in subprocesses, started together where they do not depend on each other and sharing a JAX
compilation cache, because start-up and compilation dominate their time.
"""

import ast
import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import safetensors.numpy

from dreamix_jax import cascade as cascade_lib, jobs
from dreamix_jax.data import outputs, video as video_io
from dreamix_jax.dreamix import finetune
from dreamix_jax.jobs import common, edit, lock, pretrain, subject
from dreamix_jax.train import checkpoints, loop as loop_lib, preemption, state as state_lib
from tests.test_jobs import load
from compile_flags import FAST_COMPILE

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 10
PRETRAIN = ["--config=configs/pretrain.py:runlocal", f"--config.steps={STEPS}",
            "--config.checkpoint_every=2", "--config.sample_every=0", "--config.batch_size=1",
            "--config.log_every=1"]
NAN_STEP = 3


# --------------------------------------------------------------------------------------------------
# Subprocess helpers.

def _env(cache_dir):
  return dict(os.environ, XLA_FLAGS=FAST_COMPILE, JAX_PLATFORMS="cpu",
              JAX_COMPILATION_CACHE_DIR=str(cache_dir), PYTHONPATH=str(ROOT),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def _start(args, env, log_path):
  """`nice -n 10 python <args>` in the repository root, output to `log_path`."""
  log = open(log_path, "w")
  return subprocess.Popen(["nice", "-n", "10", sys.executable] + args, cwd=ROOT, env=env,
                          stdout=log, stderr=subprocess.STDOUT, text=True)


def _steps(checkpoint_dir) -> list[int]:
  """Finished orbax checkpoints (temporary directories are not digit-named)."""
  if not os.path.isdir(checkpoint_dir):
    return []
  return sorted(int(n) for n in os.listdir(checkpoint_dir) if n.isdigit())


def _wait_for_checkpoint(proc, checkpoint_dir, after: int, timeout=400.0) -> int:
  """Polls until a checkpoint beyond step `after` exists; returns its step."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    done = [s for s in _steps(checkpoint_dir) if s > after]
    if done:
      return done[-1]
    assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before checkpoint > {after}"
    time.sleep(0.02)
  raise TimeoutError(f"no checkpoint beyond step {after} in {checkpoint_dir}")


def _final_state(workdir) -> dict:
  """{name: array} of the final orbax train state (parameters, EMA, optimizer moments, step)."""
  path = os.path.join(workdir, "checkpoints", "base", str(STEPS), "state")
  tree = ocp.PyTreeCheckpointer().restore(path)
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


NAN_DRIVER = f"""
import runpy
import numpy as np
from dreamix_jax.jobs import pretrain
clean = pretrain.BatchMaker.__call__
def corrupted(self, step):
  batch = clean(self, step)
  if step == {NAN_STEP}:
    batch["video"] = batch["video"] * np.nan
  return batch
pretrain.BatchMaker.__call__ = corrupted
runpy.run_module("dreamix_jax.main", run_name="__main__")
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """An uninterrupted run, a run with NaN data at step NAN_STEP, and one run taken through
  SIGTERM (at a checkpoint) -> resume, SIGKILL (after a later checkpoint) -> resume to the end."""
  tmp = tmp_path_factory.mktemp("preempt")
  env = _env(tmp / "jax_cache")
  cli = ["-m", "dreamix_jax.main"] + PRETRAIN
  work = tmp / "cut"
  ckpt_dir = work / "checkpoints" / "base"
  out = {"ref_dir": tmp / "ref", "nan_dir": tmp / "nan", "cut_dir": work}
  procs = {"ref": _start(cli + [f"--workdir={tmp / 'ref'}"], env, tmp / "ref.log")}
  try:
    # The others start once the reference has compiled its step (its first checkpoint is written
    # after the first step), so that they load the programs from the shared cache.
    _wait_for_checkpoint(procs["ref"], tmp / "ref" / "checkpoints" / "base", after=0)
    procs["nan"] = _start(["-c", NAN_DRIVER] + PRETRAIN + [f"--workdir={tmp / 'nan'}"], env,
                          tmp / "nan.log")
    procs["cut"] = _start(cli + [f"--workdir={work}"], env, tmp / "term.log")
    out["term_seen"] = _wait_for_checkpoint(procs["cut"], ckpt_dir, after=0)
    procs["cut"].send_signal(signal.SIGTERM)
    out["term_rc"] = procs["cut"].wait(timeout=300)
    out["term_saved"] = _steps(ckpt_dir)[-1]
    out["lock_after_term"] = os.path.exists(lock.lock_path(str(ckpt_dir)))

    procs["cut"] = _start(cli + [f"--workdir={work}"], env, tmp / "kill.log")
    _wait_for_checkpoint(procs["cut"], ckpt_dir, after=out["term_saved"])
    procs["cut"].send_signal(signal.SIGKILL)
    out["kill_rc"] = procs["cut"].wait(timeout=60)
    out["kill_saved"] = _steps(ckpt_dir)[-1]
    out["lock_after_kill"] = os.path.exists(lock.lock_path(str(ckpt_dir)))

    procs["cut"] = _start(cli + [f"--workdir={work}"], env, tmp / "final.log")
    for name in ("cut", "ref", "nan"):
      out[f"{'final' if name == 'cut' else name}_rc"] = procs[name].wait(timeout=400)
    out["lock_after_final"] = os.path.exists(lock.lock_path(str(ckpt_dir)))
  finally:
    for proc in procs.values():  # only when a step above failed
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  for name in ("ref", "nan", "term", "final"):
    out[f"{name}_log"] = (tmp / f"{name}.log").read_text()
  return out


def test_sigterm_saves_the_current_step_and_exits_preempted(runs):
  assert runs["term_rc"] == preemption.EXIT_CODE, runs["term_log"][-3000:]
  assert runs["term_saved"] >= runs["term_seen"] and runs["term_saved"] < STEPS
  last = runs["term_log"].strip().splitlines()[-1]
  assert last.startswith("preempted: [pretrain/base] preempted by SIGTERM at step "
                         f"{runs['term_saved']}"), last
  assert "Re-run the same command to resume" in last
  assert "Traceback" not in runs["term_log"]
  assert not runs["lock_after_term"]  # a preempted run releases its checkpoint folder's lock


def test_sigkill_and_sigterm_then_resume_is_bit_identical(runs):
  assert runs["ref_rc"] == 0, runs["ref_log"][-3000:]
  assert runs["kill_rc"] == -signal.SIGKILL
  assert runs["term_saved"] < runs["kill_saved"] < STEPS  # the cut really happened mid-run
  assert runs["final_rc"] == 0, runs["final_log"][-3000:]
  assert f"resumed from step {runs['kill_saved']}" in runs["final_log"]
  # SIGKILL leaves the lock behind; the resumed run finds its process gone and takes it over.
  assert runs["lock_after_kill"] and not runs["lock_after_final"]
  assert re.search(r"Taking over the stale lock \S+base.lock: its holder \(pid \d+ on host",
                   runs["final_log"])
  ref, resumed = _final_state(runs["ref_dir"]), _final_state(runs["cut_dir"])
  assert sorted(ref) == sorted(resumed) and len(ref) > 10
  for name in ref:
    np.testing.assert_array_equal(ref[name], resumed[name], err_msg=name)
  # The exported EMA parameters, too. (A SIGKILL during an export may leave a `.tmp-*` file, never
  # a truncated file under the real name.)
  a = safetensors.numpy.load_file(str(runs["ref_dir"] / "cascade" / "base.safetensors"))
  b = safetensors.numpy.load_file(str(runs["cut_dir"] / "cascade" / "base.safetensors"))
  assert sorted(a) == sorted(b)
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_nan_loss_stops_the_job_naming_the_step_and_keeps_the_last_checkpoint(runs):
  assert runs["nan_rc"] == 3, runs["nan_log"][-3000:]
  last = runs["nan_log"].strip().splitlines()[-1]
  assert last.startswith(
      f"error: [pretrain/base] non-finite loss/gradient at step {NAN_STEP}"), last
  assert f"Last good checkpoint: step {NAN_STEP - 1}" in last
  assert "Traceback" not in runs["nan_log"]
  ckpt_dir = runs["nan_dir"] / "checkpoints" / "base"
  assert _steps(ckpt_dir) == [NAN_STEP - 1]
  state = ocp.PyTreeCheckpointer().restore(str(ckpt_dir / str(NAN_STEP - 1) / "state"))
  assert int(state["step"]) == NAN_STEP - 1
  assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(state["params"]))


# --------------------------------------------------------------------------------------------------
# The loop's preemption and timed checkpoints, in process on a toy problem.

def _toy(tmp_path, steps, **loop_kwargs):
  """(LoopConfig, state, step_fn, batch_fn) fitting w to a step-dependent target."""
  optimizer = optax.adam(0.1)
  step_fn = state_lib.make_train_step(
      lambda p, batch, rng: (jnp.sum((p["w"] - batch) ** 2) + 0 * jax.random.normal(rng), {}),
      optimizer)
  state = state_lib.init_state({"w": jnp.zeros((3,))}, optimizer, ema=False)
  cfg = loop_lib.LoopConfig(steps=steps, log_every=1, name="toy", **loop_kwargs)
  return cfg, state, step_fn, lambda step: jnp.full((3,), float(step))


def test_signal_in_the_loop_checkpoints_that_step_and_resume_matches(tmp_path):
  cfg, state, step_fn, batch_fn = _toy(tmp_path, 6, checkpoint_every=100)
  full, _ = loop_lib.run(cfg, state, step_fn, batch_fn, checkpoint_dir=None)

  def interrupting(step):
    if step == 2:
      signal.raise_signal(signal.SIGINT)  # handled after this step: checkpoint at step 3
    return batch_fn(step)

  before = signal.getsignal(signal.SIGINT)
  with pytest.raises(preemption.Preempted, match="preempted by SIGINT at step 3"):
    loop_lib.run(cfg, state, step_fn, interrupting, checkpoint_dir=str(tmp_path / "c"))
  assert signal.getsignal(signal.SIGINT) is before  # the handler is restored
  assert checkpoints.TrainCheckpointer(str(tmp_path / "c")).latest_step() == 3
  resumed, history = loop_lib.run(cfg, state, step_fn, batch_fn, checkpoint_dir=str(tmp_path / "c"))
  assert history[0]["step"] == 4
  np.testing.assert_array_equal(full.params["w"], resumed.params["w"])


def test_checkpoints_every_minutes(tmp_path, monkeypatch):
  clock = iter(range(0, 10_000, 25))  # each call to the clock advances 25 s
  monkeypatch.setattr(preemption, "time", types.SimpleNamespace(monotonic=lambda: next(clock)))
  cfg, state, step_fn, batch_fn = _toy(tmp_path, 5, checkpoint_every=0,
                                       checkpoint_every_minutes=1.0)
  saved = []
  loop_lib.run(cfg, state, step_fn, batch_fn, checkpoint_dir=str(tmp_path / "c"),
               on_checkpoint=lambda step, _: saved.append(step))
  # The clock reads 25, 50, 75 s after the start at steps 1-3: the 60 s are up after step 3; it
  # reads 100 s at that save and 125, 150 s at steps 4, 5 (not 60 s later); the end always saves.
  assert saved == [3, 5]
  with pytest.raises(ValueError, match="checkpoint_every_minutes"):
    loop_lib.LoopConfig(steps=1, checkpoint_every_minutes=-1)


def test_nonfinite_variant_stops_naming_step_stage_and_variant(tmp_path):
  """A mixed-objective-like loss whose frame variant turns NaN at step 3 (checkpoints every 2)."""
  optimizer = optax.adam(0.1)

  def loss(params, batch, rng):
    frames = jnp.sum((params["w"] - batch) ** 2)
    video = jnp.sum(params["w"] ** 2)
    return video + frames, {"loss_video": video, "loss_frames": frames}

  step_fn = state_lib.make_train_step(loss, optimizer)
  state = state_lib.init_state({"w": jnp.zeros((3,))}, optimizer, ema=False)
  cfg = loop_lib.LoopConfig(steps=6, log_every=1, checkpoint_every=2, name="finetune/base")
  batch_fn = lambda step: jnp.full((3,), jnp.nan if step == 3 else float(step))
  with pytest.raises(loop_lib.NonFiniteLossError,
                     match=r"\[finetune/base\] non-finite loss/gradient at step 3 .*non-finite "
                           r"variants: loss_frames\).*Last good checkpoint: step 2 in") as info:
    loop_lib.run(cfg, state, step_fn, batch_fn, checkpoint_dir=str(tmp_path / "c"))
  assert "loss_video," not in str(info.value).split("variants:")[1]
  ckpt = checkpoints.TrainCheckpointer(str(tmp_path / "c"))
  assert ckpt.latest_step() == 2
  restored, meta = ckpt.restore(state)
  assert meta["step"] == 2 and np.all(np.isfinite(restored.params["w"]))


def test_nonfinite_before_any_checkpoint_says_none_was_saved(tmp_path):
  """A run that starts at step 5 from given weights (as after pretraining's init_from) and
  diverges at once: no checkpoint exists, and the message must not name one."""
  cfg, state, step_fn, _ = _toy(tmp_path, 8, checkpoint_every=2)
  state = state.replace(step=jnp.asarray(5, jnp.int32))
  with pytest.raises(loop_lib.NonFiniteLossError) as info:
    loop_lib.run(cfg, state, step_fn, lambda step: jnp.full((3,), jnp.nan),
                 checkpoint_dir=str(tmp_path / "c"))
  message = str(info.value)
  assert "Last good checkpoint" not in message
  assert re.search(r"at step 5 .*No checkpoint was saved yet in \S+/c: the run diverged from its "
                   r"initial parameters .*Lower the learning rate, check the data and the initial "
                   r"weights \(init_from\)", message), message
  assert checkpoints.TrainCheckpointer(str(tmp_path / "c")).latest_step() is None


def test_a_second_signal_falls_through_to_the_previous_handler():
  received = []
  previous = signal.signal(signal.SIGTERM, lambda *a: received.append("previous"))
  try:
    with preemption.Guard() as guard:
      signal.raise_signal(signal.SIGTERM)
      assert guard.requested == "SIGTERM" and guard.should_stop() and not received
      signal.raise_signal(signal.SIGTERM)
      assert received == ["previous"]
  finally:
    signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------------------------------
# The edit job's output folder: resume an unfinished run, refuse a finished one.

def test_edit_output_dir_resumes_unfinished_runs_only(tmp_path):
  config = load("configs/edit.py:runlocal")
  with config.unlocked():
    config.overwrite = False
  path = common.open_output_dir(str(tmp_path), "edit", config)
  os.makedirs(os.path.join(path, "finetune", "base", "2"))  # an unfinished finetune
  assert common.open_output_dir(str(tmp_path), "edit", config) == path  # resumed, state kept
  assert os.path.isdir(os.path.join(path, "finetune", "base", "2"))
  changed = load("configs/edit.py:runlocal")
  with changed.unlocked():
    changed.overwrite, changed.finetune.alpha = False, 0.5
  with pytest.raises(FileExistsError, match=r"unfinished run started with other settings "
                                            r"\(differing: \['finetune'\]\)"):
    common.open_output_dir(str(tmp_path), "edit", changed)
  common.mark_finished(path)
  with pytest.raises(FileExistsError, match="already holds a finished run.*overwrite=True"):
    common.open_output_dir(str(tmp_path), "edit", config)
  with config.unlocked():
    config.overwrite = True
  assert common.open_output_dir(str(tmp_path), "edit", config) == path
  assert not os.path.exists(os.path.join(path, "finetune"))  # no stale state in a new run
  assert os.path.isfile(os.path.join(path, common.RUN_MARKER))


@pytest.mark.parametrize("field", ["input", "checkpoint", "text.t5_dir"])
def test_an_unfinished_run_is_not_resumed_from_other_bytes_at_the_same_path(tmp_path, field):
  """Replacing the input, a checkpoint file or a T5 file (same path, same size, other bytes)
  between a preemption and the re-run: refused, naming what changed, not resumed."""
  t5 = tmp_path / "t5"
  shutil.copytree(ROOT / "assets" / "shapes_t5", t5)
  (tmp_path / "cascade").mkdir()
  (tmp_path / "cascade" / "base.safetensors").write_bytes(b"weights A")
  (tmp_path / "in.mp4").write_bytes(b"video A")
  config = _edit(tmp_path, overwrite=False, input=str(tmp_path / "in.mp4"),
                 checkpoint=str(tmp_path / "cascade"), **{"text.t5_dir": str(t5)})
  path = common.open_output_dir(str(tmp_path / "work"), "edit", config)
  assert common.open_output_dir(str(tmp_path / "work"), "edit", config) == path  # unchanged
  changed = {"input": tmp_path / "in.mp4", "checkpoint": tmp_path / "cascade" / "base.safetensors",
             "text.t5_dir": t5 / "model.safetensors"}[field]
  data = bytearray(changed.read_bytes())
  data[-1] ^= 1
  changed.write_bytes(bytes(data))
  with pytest.raises(FileExistsError) as info:
    common.open_output_dir(str(tmp_path / "work"), "edit", config)
  named = str(tmp_path / ("in.mp4" if field == "input" else
                          "cascade" if field == "checkpoint" else "t5"))
  assert str(info.value) == (
      f"{path} holds an unfinished run whose inputs have other content now: config.{field} "
      f"({named}) (same path, other bytes). Re-run with the same config and files to resume it, "
      "choose another --config.name or --workdir, or pass --config.overwrite=True to start afresh.")
  with config.unlocked():
    config.overwrite = True
  assert common.open_output_dir(str(tmp_path / "work"), "edit", config) == path  # afresh


@contextlib.contextmanager
def _unguarded_sigterm_fails():
  """A SIGTERM that no job guard catches fails the test (instead of ending pytest)."""

  def unguarded(signum, frame):
    raise AssertionError("SIGTERM reached the process's own handler: no job guard was active")

  previous = signal.signal(signal.SIGTERM, unguarded)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


def test_edit_interrupted_then_input_replaced_is_refused(zeros_cascade, tmp_path, monkeypatch):
  """SIGTERM as the finetune starts (after the output folder is opened), then another video saved
  under the input's name: the re-run names the input and resumes nothing."""
  video = tmp_path / "in.mp4"
  _mp4(video, 24)
  config = _edit(tmp_path, input=str(video), overwrite=False, checkpoint=str(zeros_cascade))
  monkeypatch.setattr(finetune, "finetune_cascade",
                      lambda *a, **k: signal.raise_signal(signal.SIGTERM))
  with _unguarded_sigterm_fails():
    with pytest.raises(preemption.Preempted, match=r"^\[edit\] preempted by SIGTERM outside "
                                                   r"training .*Re-run the same command to resume"):
      jobs.get("edit")(config, str(tmp_path / "work"))
  out = tmp_path / "work" / "edit" / config.name
  assert os.listdir(out) == [common.RUN_MARKER]
  assert not os.path.exists(lock.lock_path(str(out)))
  rng = np.random.default_rng(1)  # another video of the same name and length
  outputs.write_mp4(video, rng.uniform(-1, 1, (24, 16, 32, 3)), 6.0)
  with pytest.raises(FileExistsError, match=rf"^{out} holds an unfinished run whose inputs have "
                                            rf"other content now: config.input \({video}\)"):
    jobs.get("edit")(config, str(tmp_path / "work"))
  assert os.listdir(out) == [common.RUN_MARKER]


def test_sigterm_while_sampling_exits_preempted_leaving_a_resumable_run(tmp_path):
  """SIGTERM once the CLI's text-to-video announces its first sample (outside any training loop):
  exit code 75 with the resume message, no result folder or temporary file, the lock released and
  the run marker kept, so that the same command resumes."""
  overrides = ["--config.overwrite=False",
               "--config.prompts=('a red circle moving right on a black background',"
               "'a blue square moving up on a gray background','a red circle moving left on a "
               "black background')"]
  env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
  proc = subprocess.Popen([sys.executable, "-m", "dreamix_jax.main",
                           "--config=configs/text2video.py:runlocal", f"--workdir={tmp_path}"]
                          + overrides, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  log = []
  for line in proc.stderr:
    log.append(line)
    if "[sample] ..." in line:
      proc.send_signal(signal.SIGTERM)
      break
  log += proc.stderr.readlines()
  assert proc.wait(timeout=300) == preemption.EXIT_CODE, "".join(log[-30:])
  last = [line for line in log if line.strip()][-1].strip()
  assert re.fullmatch(r"preempted: \[text2video\] preempted by SIGTERM outside training \(loading, "
                      r"sampling or writing\): finished results and checkpoints are kept, nothing "
                      r"half-written. Re-run the same command to resume.", last), last
  assert "Traceback" not in "".join(log)
  out = tmp_path / "text2video" / "text2video"
  assert os.listdir(out) == [common.RUN_MARKER]
  assert os.listdir(tmp_path / "text2video") == ["text2video"]  # the lock is gone
  config = load("configs/text2video.py:runlocal")
  with config.unlocked():
    config.overwrite = False
    config.prompts = ("a red circle moving right on a black background",
                      "a blue square moving up on a gray background",
                      "a red circle moving left on a black background")
  assert common.open_output_dir(str(tmp_path), "text2video", config) == str(out)  # resumable


def test_a_signal_outside_training_gets_past_except_exception():
  """The signal lands in whatever code runs, e.g. logging's handler, which reports and swallows
  any Exception: the preemption must still end the job, and a second signal acts as before."""
  with _unguarded_sigterm_fails():
    with pytest.raises(preemption.Preempted, match=r"^\[edit\] preempted by SIGTERM"):
      with preemption.JobGuard("edit"):
        try:
          signal.raise_signal(signal.SIGTERM)
        except Exception:  # pylint: disable=broad-except
          pass
    with pytest.raises(AssertionError, match="no job guard"):
      signal.raise_signal(signal.SIGTERM)  # the guard is gone: the previous handler is back


def test_a_result_folder_appears_whole_or_not_at_all(tmp_path, monkeypatch):
  """A SIGTERM while a result folder is being written (here: its last file) leaves no partial
  folder and no temporary one; an earlier folder of that name is replaced only by a whole one."""
  video = np.zeros((2, 8, 8, 3), np.float32)
  folder = tmp_path / "000_prompt_seed0"
  common.write_result(str(folder), video, 6.0, {"run": 1})
  write_json = outputs.write_json

  def interrupted(path, obj):
    signal.raise_signal(signal.SIGTERM)
    write_json(path, obj)

  monkeypatch.setattr(outputs, "write_json", interrupted)
  with _unguarded_sigterm_fails():
    with pytest.raises(preemption.Preempted, match=r"^\[text2video\] preempted by SIGTERM"):
      with preemption.JobGuard("text2video"):
        common.write_result(str(folder), video + 0.5, 6.0, {"run": 2})
  assert os.listdir(tmp_path) == [folder.name]
  assert json.loads((folder / "meta.json").read_text()) == {"run": 1}  # the earlier, whole folder
  assert abs(video_io.read_video(str(folder / "output.mp4"), 2, 8, 8).mean()) < 0.05  # run 1's
  monkeypatch.setattr(outputs, "write_json", write_json)
  common.write_result(str(folder), video + 0.5, 6.0, {"run": 2})
  assert os.listdir(tmp_path) == [folder.name]
  assert sorted(os.listdir(folder)) == ["comparison.png", "meta.json", "output.gif", "output.mp4"]
  assert json.loads((folder / "meta.json").read_text()) == {"run": 2}


# --------------------------------------------------------------------------------------------------
# Bad inputs: a message that says what is wrong and what to do, and nothing left behind.

def _mp4(path, frames, height=16, width=32, fps=6.0):
  rng = np.random.default_rng(0)
  outputs.write_mp4(path, rng.uniform(-1, 1, (frames, height, width, 3)), fps)
  return str(path)


def _edit(tmp_path, **overrides):
  config = load("configs/edit.py:runlocal")
  with config.unlocked():
    for key, value in overrides.items():
      node = config
      *parents, leaf = key.split(".")
      for p in parents:
        node = node[p]
      node[leaf] = value
  return config


def _fails(job, config, workdir, error, pattern):
  """Runs `job` expecting `error` matching `pattern`; asserts that `workdir` stayed empty."""
  with pytest.raises(error, match=pattern) as info:
    job(config, str(workdir))
  assert not os.path.exists(workdir) or not os.listdir(workdir), sorted(os.listdir(workdir))
  return str(info.value)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("inputs")
  (tmp / "empty.mp4").write_bytes(b"")
  (tmp / "notes.txt").write_text("a shopping list")
  (tmp / "text.mp4").write_text("not a video at all")
  full = _mp4(tmp / "full.mp4", 24)
  (tmp / "truncated.mp4").write_bytes(open(full, "rb").read()[:600])
  _mp4(tmp / "short.mp4", 3)
  frames = tmp / "float_frames"
  frames.mkdir()
  import imageio.v3 as iio
  for i in range(8):  # 32-bit float RGB TIFFs: a pixel format Pillow cannot decode
    iio.imwrite(frames / f"{i}.tif", np.zeros((16, 32, 3), np.float32))
  (tmp / "no_subject").mkdir()
  return tmp


@pytest.mark.parametrize("name,error,pattern", [
    ("missing.mp4", FileNotFoundError, r"does not exist; check the path"),
    ("empty.mp4", video_io.VideoInputError, r"could not be read as a video: it seems to be an "
                                             r"empty file \(0 bytes\)"),
    ("truncated.mp4", video_io.VideoInputError, r"is an MP4/MOV container that ffmpeg could not "
                                                 r"read .*probably truncated or damaged"),
    ("text.mp4", video_io.VideoInputError, r"it seems to be a text file .*Accepted inputs"),
    ("notes.txt", video_io.VideoInputError, r"unsupported extension '\.txt'; accepted inputs"),
    ("short.mp4", video_io.VideoTooShortError, r"\b3\b.*frames"),
    ("float_frames", video_io.VideoInputError, r"TIFF image that could not be decoded .*"
                                                r"unsupported pixel format.*8-bit RGB"),
])
def test_bad_videos(inputs, tmp_path, name, error, pattern):
  config = _edit(tmp_path, input=str(inputs / name))
  _fails(edit.run, config, tmp_path / "work", error, pattern)


def test_a_bad_video_is_refused_before_any_weights_load(inputs, tmp_path, monkeypatch):
  monkeypatch.setattr(common, "load_cascade", lambda *a, **k: pytest.fail("loaded the cascade"))
  config = _edit(tmp_path, input=str(inputs / "text.mp4"))
  _fails(edit.run, config, tmp_path / "work", video_io.VideoInputError, r"seems to be a text file")


def test_empty_subject_folder(inputs, tmp_path):
  config = load("configs/subject.py:runlocal")
  with config.unlocked():
    config.input = str(inputs / "no_subject")
  _fails(subject.run, config, tmp_path / "work", video_io.VideoInputError,
         r"holds no images; put images")


@pytest.mark.parametrize("override,pattern", [
    ({"noise_levels": (1.5,)}, r"noise level s must be in \[0, 1\].*got 1.5"),
    ({"noise_levels": (-0.1,)}, r"noise level s must be in \[0, 1\]"),
    ({"finetune.alpha": 1.2}, r"finetune.alpha must be in \[0, 1\].*got 1.2; fix "
                              r"--config.finetune.alpha"),
    ({"finetune.alpha": -0.5}, r"finetune.alpha must be in \[0, 1\]"),
    ({"finetune.steps": -3}, r"finetune.steps must be ≥ 0, got -3"),
    ({"finetune.checkpoint_every_minutes": -1.0}, r"finetune.checkpoint_every_minutes must be ≥ 0"),
    ({"cascade.stages.base.height": 7}, r"7×16 is not divisible by the"),
])
def test_out_of_range_settings(inputs, tmp_path, override, pattern):
  # The settings are checked before the input is even looked at.
  config = _edit(tmp_path, input=str(tmp_path / "not_read.mp4"), **override)
  _fails(edit.run, config, tmp_path / "work", ValueError, pattern)


JOBS = {"edit": edit.run, "image2video": jobs.get("image2video"), "subject": subject.run,
        "sweep": jobs.get("sweep"), "text2video": jobs.get("text2video")}


@pytest.mark.parametrize("job", sorted(JOBS))
@pytest.mark.parametrize("name", ["", ".", "..", "../escape", "a/b", "/abs", "a\\b", "nul\0"])
def test_names_that_are_not_one_folder_are_refused(tmp_path, job, name):
  config = load(f"configs/{job}.py:runlocal")
  with config.unlocked():
    config.name = name
  _fails(JOBS[job], config, tmp_path / "work", ValueError,
         r"^config.name=.* must be one plain folder name \(non-empty, no '/' or '\\', not '\.' or "
         r"'\.\.', no NUL\): it names a folder inside the workdir; fix --config.name.$")


def test_an_absolute_name_with_overwrite_deletes_nothing_outside_the_workdir(tmp_path):
  outside = tmp_path / "precious"
  (outside / "finetune").mkdir(parents=True)
  (outside / "finetune" / "weights").write_text("keep me")
  config = _edit(tmp_path, name=str(outside), overwrite=True)
  _fails(edit.run, config, tmp_path / "work", ValueError, r"config.name=.*precious")
  assert (outside / "finetune" / "weights").read_text() == "keep me"


@pytest.mark.parametrize("job,field,value,pattern", [
    ("text2video", "seeds", (), r"^config.seeds is empty: give at least one"),
    ("text2video", "prompts", (), r"^config.prompts is empty"),
    ("sweep", "seeds", (), r"^config.seeds is empty"),
    ("sweep", "prompts", (), r"^config.prompts is empty"),
    ("edit", "finetune.stages", (), r"^config.finetune.stages is empty"),
    ("edit", "finetune.stages", ("bsae",), r"^finetune.stages names \['bsae'\], which the "
                                          r"cascade does not have"),
    ("edit", "noise_levels", (), r"^config.noise_levels is empty"),
    ("image2video", "seeds", (), r"^config.seeds is empty"),
    ("sweep", "alphas", {"x/y": 0.5}, r"^config.alphas has mode 'x/y': a mode names result and "
                                      r"checkpoint folders"),
    ("sweep", "alphas", {"mixed": 1.5}, r"^config.alphas.mixed must be in \[0, 1\]"),
    ("eval", "ablation.upto", "bsae", r"^config.ablation.upto='bsae' is not a stage of the "
                                      r"cascade; use one of \['base', 'tsr', 'ssr'\] or '' \(the "
                                      r"last stage\): fix --config.ablation.upto."),
    ("eval", "text2video.upto", "ssr2", r"^config.text2video.upto='ssr2' is not a stage"),
    ("eval", "classifier.logsnrs", (), r"^config.classifier.logsnrs is empty"),
    ("pretrain", "sample_prompts", (), r"^config.sample_prompts is empty"),
])
def test_empty_lists_and_unknown_stages_are_refused(tmp_path, job, field, value, pattern):
  config = load(f"configs/{job}.py:runlocal" + {"eval": ",benchmark=shapes"}.get(job, ""))
  benchmark = {"text2video.upto": "text2video", "classifier.logsnrs": "classifier"}.get(field)
  with config.unlocked():
    if benchmark:
      config.benchmark = benchmark
    node = config
    *parents, leaf = field.split(".")
    for p in parents:
      node = node[p]
    if isinstance(value, dict):
      node[leaf] = ml_collections.ConfigDict(value)
    else:
      node[leaf] = value
  _fails(jobs.get(job), config, tmp_path / "work", ValueError, pattern)


def test_pretrain_bad_settings_leave_nothing(tmp_path):
  for field, value, pattern in (("steps", -1, r"steps must be ≥ 0, got -1"),
                                ("stage", "bsae", r"config.stage 'bsae' is not a stage.*choose "
                                                  r"one of \['base', 'tsr', 'ssr'\]"),
                                ("checkpoint_every", -2, r"checkpoint_every \(-2\).*must be ≥ 0")):
    config = load("configs/pretrain.py:runlocal")
    with config.unlocked():
      config[field] = value
    _fails(pretrain.run, config, tmp_path / "work", ValueError, pattern)


def _zeros_cascade(tmp, base_channels_factor: int = 1):
  """A cascade directory of zeros of the `:runlocal` edit config's shapes (the base U-Net
  `base_channels_factor` times as wide): loads fast, no compilation needed."""
  config = load("configs/edit.py:runlocal")
  with config.unlocked():
    config.cascade.stages.base.backbone.channels *= base_channels_factor
  cascade = cascade_lib.Cascade.from_config(config.cascade)
  for stage in cascade.stages:
    zeros = jax.tree_util.tree_map(lambda x: np.zeros(x.shape, x.dtype),
                                   nn.meta.unbox(cascade.abstract_params(stage)))
    checkpoints.save_cascade_stage(str(tmp), stage.name, zeros, config.cascade)
  return tmp


@pytest.fixture(scope="module")
def foreign_cascade(tmp_path_factory):
  """A cascade directory written for another config (base U-Net twice as wide)."""
  return _zeros_cascade(tmp_path_factory.mktemp("foreign"), 2)


@pytest.fixture(scope="module")
def zeros_cascade(tmp_path_factory):
  """A cascade directory that fits the `:runlocal` edit config."""
  return _zeros_cascade(tmp_path_factory.mktemp("zeros"))


def test_checkpoint_for_another_config_lists_names_and_shapes(inputs, foreign_cascade, tmp_path):
  config = _edit(tmp_path, input=_mp4(tmp_path / "in.mp4", 24), checkpoint=str(foreign_cascade))
  message = _fails(edit.run, config, tmp_path / "work", checkpoints.CheckpointError,
                   r"base.safetensors does not fit the configured model \(was it made with a "
                   r"different config\?\)")
  assert re.search(r"wrong shape \(\d+\): \S+: checkpoint \(\d+(, \d+)*\) vs model \(\d+", message)


def test_missing_stage_in_a_cascade_checkpoint(foreign_cascade, tmp_path):
  config = _edit(tmp_path, input=_mp4(tmp_path / "in.mp4", 24))
  partial = tmp_path / "partial"
  partial.mkdir()
  for name in ("base.safetensors", "cascade.json"):  # tsr and ssr are missing
    (partial / name).write_bytes((foreign_cascade / name).read_bytes())
  with config.unlocked():
    config.checkpoint = str(partial)
    config.cascade.stages.base.backbone.channels *= 2  # so that base fits and the gap shows first
  _fails(edit.run, config, tmp_path / "work", checkpoints.CheckpointError,
         r"has no stage 'tsr' .*it has stages \['base'\]")


def test_long_prompts_are_truncated_with_a_warning(caplog):
  config = load("configs/edit.py:runlocal")
  cascade = cascade_lib.Cascade.from_config(config.cascade)
  embedder = common.make_embedder(config, cascade)
  prompt = " ".join(["a red circle moving left on a black background"] * 4)
  with caplog.at_level(logging.WARNING):
    text, mask = embedder([prompt])
  assert re.search(rf"has \d+ tokens; truncated to max_length={cascade.text_len}", caplog.text)
  assert text.shape == (1, cascade.text_len, cascade.text_dim) and mask.all()


def test_cli_bad_inputs_give_one_line_and_exit_code_2(inputs, zeros_cascade, tmp_path):
  """The CLI for a few bad inputs, in parallel: one `error: ...` line, exit code 2, no traceback,
  and no workdir (but for the lock a live process holds, which stays as it was)."""
  env = _env(tmp_path / "jax_cache")
  held = lock.lock_path(str(tmp_path / "locked" / "text2video" / "text2video"))
  os.makedirs(os.path.dirname(held))
  with open(held, "w") as f:  # held by this (live) process
    json.dump(dict(pid=os.getpid(), host=socket.gethostname(), started=time.time()), f)
  cases = {
      "name": (["--config=configs/edit.py:runlocal", "--config.name=../../escape"],
               r"^error: config.name='../../escape' must be one plain folder name"),
      "locked": (["--config=configs/text2video.py:runlocal", f"--config.checkpoint={zeros_cascade}"],
                 rf"^error: another run \(pid {os.getpid()} on host {re.escape(socket.gethostname())}"
                 rf", started [-0-9: ]+\) is using \S+/text2video/text2video; wait for it to "
                 rf"finish, or delete {re.escape(held)} if that process is gone.$"),
      "typo": (["--config=configs/edit.py:runlocal", "--config.finetnue.steps=3"],
               r"^error: unknown config field\(s\) \['finetnue.steps'\]: the config is locked"),
      "arg": (["--config=configs/edit.py:runlocal,vidoe=x.mp4"],
              r"^error: bad flags: ValueError: Unknown config argument 'vidoe'"),
      "s": (["--config=configs/edit.py:runlocal", "--config.noise_levels=(1.5,)"],
            r"^error: The noise level s must be in \[0, 1\]"),
      "video": (["--config=configs/edit.py:runlocal", f"--config.input={inputs / 'notes.txt'}"],
                r"^error: .*notes.txt' has an unsupported extension"),
  }
  procs = {name: _start(["-m", "dreamix_jax.main"] + args + [f"--workdir={tmp_path / name}"], env,
                        tmp_path / f"{name}.log") for name, (args, _) in cases.items()}
  for name, (_, pattern) in cases.items():
    assert procs[name].wait(timeout=300) == 2, name
    log = (tmp_path / f"{name}.log").read_text()
    assert "Traceback" not in log, log
    errors = [line for line in log.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and re.search(pattern, errors[0]), log
    if name == "locked":
      assert os.listdir(tmp_path / name / "text2video") == ["text2video.lock"]
    else:
      assert not (tmp_path / name).exists()


# --------------------------------------------------------------------------------------------------
# No unsafe loading anywhere in the package.

_PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "cloudpickle", "marshal",
                   "shelve"}


def _keyword(call: ast.Call, name: str):
  """The constant value of keyword `name` in `call` (None when absent or not a constant)."""
  for keyword in call.keywords:
    if keyword.arg == name and isinstance(keyword.value, ast.Constant):
      return keyword.value.value
  return None


def unsafe_calls(source: str) -> list[tuple[int, str]]:
  """(line, what) for every unsafe loading or execution in Python `source`, found on its syntax
  tree (so code is caught however it is formatted, and docstrings and comments never are):
  pickle-family imports; np.load without allow_pickle=False; torch.load without
  weights_only=True; yaml.load without a safe loader; eval/exec/compile; os.system/os.popen; and
  any call with shell=True."""
  found = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
      if any(n.split(".")[0] in _PICKLE_MODULES for n in names):
        found.append((node.lineno, "pickle-family import"))
    if not isinstance(node, ast.Call):
      continue
    func = node.func
    name = (func.id if isinstance(func, ast.Name) else
            f"{getattr(func.value, 'id', '?')}.{func.attr}" if isinstance(func, ast.Attribute)
            else "?")
    if name in ("eval", "exec", "compile", "__import__"):
      found.append((node.lineno, f"{name}()"))
    elif name in ("np.load", "numpy.load") and _keyword(node, "allow_pickle") is not False:
      found.append((node.lineno, "np.load without allow_pickle=False"))
    elif name == "torch.load" and _keyword(node, "weights_only") is not True:
      found.append((node.lineno, "torch.load without weights_only=True"))
    elif name == "yaml.load" and "Safe" not in ast.unparse(node):
      found.append((node.lineno, "yaml.load without a safe loader"))
    elif name in ("os.system", "os.popen"):
      found.append((node.lineno, name))
    if _keyword(node, "shell") is True:
      found.append((node.lineno, "shell=True"))
  return found


def test_the_unsafe_code_scan_catches_what_it_is_for():
  bad = textwrap.dedent('''
      import pickle
      from dill import loads
      x = np.load(path)
      y = np.load(path, allow_pickle=True)
      z = torch.load(
          path)
      w = torch.load(path, weights_only=False)
      eval("1 + 1")
      exec(code)
      subprocess.run(command, shell=True)
      os.system("ls")
      yaml.load(text)
  ''')
  assert sorted(line for line, _ in unsafe_calls(bad)) == [2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13]
  good = textwrap.dedent('''
      """Never call pickle.load(f), eval(text) or torch.load(f) here."""
      x = np.load(path, allow_pickle=False)
      y = torch.load(path, map_location="cpu", weights_only=True)
      subprocess.run(["ls"], check=True)
      model.eval()  # a method named eval is not the builtin
  ''')
  assert unsafe_calls(good) == []


def test_no_unsafe_loading_in_the_package():
  found = [f"{path.relative_to(ROOT)}:{line}: {what}"
           for path in sorted((ROOT / "dreamix_jax").rglob("*.py"))
           for line, what in unsafe_calls(path.read_text())]
  assert not found, "\n".join(found)


def test_prefetcher_yields_the_same_batches_building_at_most_depth_ahead():
  calls = []

  def batch_fn(step):
    calls.append(step)
    return step * 10

  assert list(loop_lib.Prefetcher(batch_fn, range(2, 9), 0)) == [20, 30, 40, 50, 60, 70, 80]
  calls.clear()
  prefetcher = loop_lib.Prefetcher(batch_fn, range(2, 9), 3)
  batches = iter(prefetcher)
  assert [next(batches), next(batches)] == [20, 30]
  prefetcher.close()  # waits for the batches in flight, drops the rest
  assert sorted(calls) == list(range(2, 2 + len(calls))) and len(calls) <= 2 + 3
  assert list(loop_lib.Prefetcher(batch_fn, range(2, 9), 3)) == [20, 30, 40, 50, 60, 70, 80]
  with pytest.raises(ValueError, match="prefetch"):
    loop_lib.LoopConfig(steps=1, prefetch=-1)


def test_loop_with_prefetch_matches_the_loop_without(tmp_path):
  cfg, state, step_fn, batch_fn = _toy(tmp_path, 7)
  plain, plain_history = loop_lib.run(cfg, state, step_fn, batch_fn, checkpoint_dir=None)
  cfg = dataclasses.replace(cfg, prefetch=3)
  ahead, ahead_history = loop_lib.run(cfg, state, step_fn, batch_fn, checkpoint_dir=None)
  np.testing.assert_array_equal(plain.params["w"], ahead.params["w"])
  assert [h["loss"] for h in plain_history] == [h["loss"] for h in ahead_history]

  def failing(step):
    if step == 4:
      raise OSError("disk gone")
    return batch_fn(step)

  with pytest.raises(OSError, match="disk gone"):  # a batch's error reaches the loop
    loop_lib.run(cfg, state, step_fn, failing, checkpoint_dir=None)
