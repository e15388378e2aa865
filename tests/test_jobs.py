"""The jobs end to end on the tiny random cascade (`:runlocal` configs): outputs exist and play."""

import json
import os
import pathlib
import subprocess

import imageio.v3 as iio
import pytest

from dreamix_jax import jobs
from dreamix_jax.data import video as video_io
from compile_flags import FAST_COMPILE
from config_loading import load
import readme_commands

ROOT = pathlib.Path(__file__).resolve().parents[1]


def check_outputs(folder, frames, height, width, with_input):
  names = {"output.mp4", "output.gif", "comparison.png", "meta.json"} | (
      {"input.mp4"} if with_input else set())
  assert names <= set(os.listdir(folder))
  assert not [f for f in os.listdir(folder) if ".tmp" in f]
  video = video_io.read_video(os.path.join(folder, "output.mp4"), frames, height, width)
  assert video.shape == (frames, height, width, 3)
  assert iio.imread(os.path.join(folder, "output.gif")).shape[0] >= 1
  meta = json.loads(open(os.path.join(folder, "meta.json")).read())
  return meta


def test_text2video_cli_runs_end_to_end(tmp_path):
  """The README's main command, as a subprocess."""
  env = dict(os.environ, XLA_FLAGS=FAST_COMPILE)
  argv = readme_commands.argv(
      "python -m dreamix_jax.main --config=configs/text2video.py:runlocal --workdir=/tmp/t2v",
      {"--workdir=/tmp/t2v": f"--workdir={tmp_path}"})
  proc = subprocess.run(argv + ["--config.prompts=('a blue square moving up on a gray background',)"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  folders = sorted((tmp_path / "text2video" / "text2video").iterdir())
  assert len(folders) == 1
  meta = check_outputs(folders[0], 8, 16, 32, with_input=False)
  assert meta["prompt"] == "a blue square moving up on a gray background"


def test_demo_edit_cli_on_the_shipped_cascade(tmp_path):
  """The README's main command on the committed moving-shapes cascade and default clip (finetuning
  cut to 2 steps and every sampler to 2 steps to keep CI short): real-size outputs, the default
  prompt, nothing downloaded."""
  env = dict(os.environ, XLA_FLAGS=FAST_COMPILE)
  argv = readme_commands.argv("python -m dreamix_jax.main --config=configs/edit.py")
  short = [f"--config.cascade.stages.{stage}.sampler.num_steps=2" for stage in ("base", "tsr", "ssr")]
  proc = subprocess.run(argv + [f"--workdir={tmp_path}", "--config.finetune.steps=2", *short],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  folders = sorted((tmp_path / "edit" / "edit").iterdir())
  folders = [f for f in folders if f.is_dir() and f.name != "finetune"
             and f.name != "finetuned_cascade"]
  assert len(folders) == 1
  meta = check_outputs(folders[0], 32, 48, 80, with_input=True)
  assert meta["prompt"] == "a red circle standing still on a black background"
  assert meta["checkpoint"] == str(ROOT / "checkpoints" / "shapes")
  assert sorted(meta["timings"]) == ["finetune_base", "load", "read_input", "sample_base",
                                     "sample_ssr", "sample_tsr"]


@pytest.mark.parametrize("job", ["edit", "image2video", "subject"])
def test_dreamix_jobs_run_end_to_end(job, tmp_path):
  config = load(f"configs/{job}.py:runlocal")
  with config.unlocked():
    config.finetune.steps = 2
  folders = jobs.get(config.job)(config, str(tmp_path))
  assert len(folders) == 1
  meta = check_outputs(folders[0], 8, 16, 32, with_input=job != "subject")
  assert meta["prompt"] == config.prompts[0]
  # The finetuned stages are written beside the outputs, never into a pretrained checkpoint.
  finetuned = tmp_path / job / config.name / "finetuned_cascade"
  assert sorted(p.name for p in finetuned.iterdir()) == [
      "base.safetensors", "cascade.json", "ssr.safetensors", "tsr.safetensors"]


def test_bad_inputs_give_clear_errors(tmp_path):
  config = load("configs/edit.py:runlocal")
  with config.unlocked():
    config.input = str(tmp_path / "missing.mp4")
  with pytest.raises(FileNotFoundError, match="missing.mp4"):
    jobs.get("edit")(config, str(tmp_path))
  config = load("configs/edit.py:runlocal")
  with config.unlocked():
    config.noise_levels = (1.5,)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    jobs.get("edit")(config, str(tmp_path))
  with pytest.raises(ValueError, match="Unknown config argument"):
    load("configs/edit.py:vidoe=x.mp4")
  with pytest.raises(ValueError, match="Unknown job"):
    jobs.get("train")
