"""Dreamix on a diffusers text-to-video pipeline folder (the ModelScope / Zeroscope layout): the
edit and text-to-video jobs from the command line on a tiny random pipeline written at test time,
and bad pipeline folders answered with one line and exit code 2, nothing written."""

import json
import os
import shutil
import subprocess
import sys

import pytest

import diffusers_tiny
import readme_commands
from config_loading import ROOT

COMMON = ["--config.finetune.steps=2", "--config.finetune.log_every=1",
          "--config.mesh.data=1"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
  root = tmp_path_factory.mktemp("pipeline")
  return diffusers_tiny.write_pipeline(root, unet=diffusers_tiny.tiny_unet(),
                                       vae=diffusers_tiny.tiny_vae(),
                                       text_encoder=diffusers_tiny.tiny_text_encoder(),
                                       tokenizer=True)


def _run(args, workdir):
  return subprocess.run([sys.executable, "-m", "dreamix_jax.main", *args, f"--workdir={workdir}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_edit_and_text2video_on_a_pipeline_folder(pipeline, tmp_path):
  video = ROOT / "assets" / "shapes_clip.mp4"
  argv = readme_commands.argv(
      "python -m dreamix_jax.main --config=configs/edit.py:cascade=modelscope "
      "--config.checkpoint=<folder> --config.input=<video> --workdir=<dir>",
      {"cascade=modelscope": "cascade=modelscope,runlocal", "<folder>": str(pipeline),
       "<video>": str(video), "<dir>": str(tmp_path)})
  edit = subprocess.run(argv + COMMON, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert edit.returncode == 0, edit.stderr[-3000:]
  folder, = (p.parent for p in (tmp_path / "edit" / "edit").glob("*/meta.json"))
  assert {"input.mp4", "output.mp4", "output.gif", "comparison.png", "meta.json"} <= set(
      os.listdir(folder))
  meta = json.loads((folder / "meta.json").read_text())
  assert meta["output_shape"] == [4, 32, 32, 3]
  assert (meta["s"], meta["finetune"]["alpha"]) == (0.85, 0.5)  # App. C.5's defaults
  assert not (tmp_path / "edit" / "edit" / "finetuned_cascade").exists()  # no 5.6 GB export
  t2v = _run(["--config=configs/text2video.py:cascade=modelscope,runlocal",
              f"--config.checkpoint={pipeline}"], tmp_path)
  assert t2v.returncode == 0, t2v.stderr[-3000:]
  assert len(list((tmp_path / "text2video" / "text2video").glob("*/output.mp4"))) == 2


@pytest.mark.parametrize("damage, message", [
    ("no_vae", "no vae/ component"),
    ("no_checkpoint", "diffusers pipeline folder"),
])
def test_bad_pipeline_folders_exit_2_and_write_nothing(pipeline, tmp_path, damage, message):
  bad = tmp_path / "bad"
  shutil.copytree(pipeline, bad)
  args = ["--config=configs/edit.py:cascade=modelscope,runlocal", *COMMON]
  if damage == "no_vae":
    shutil.rmtree(bad / "vae")
    args.append(f"--config.checkpoint={bad}")
  work = tmp_path / "work"
  result = _run(args, work)
  assert result.returncode == 2, result.stderr[-3000:]
  assert message in result.stderr.strip().splitlines()[-1]
  assert not work.exists() or not any(work.rglob("*.mp4"))
