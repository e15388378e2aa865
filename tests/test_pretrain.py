"""Pretraining job: joint image-video batches, text dropout, resume, exported cascade, summaries."""

import importlib.util
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamix_jax import cascade as cascade_lib
from dreamix_jax.jobs import common, pretrain
from dreamix_jax.train import checkpoints

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load(arg):
  spec = importlib.util.spec_from_file_location("pretrain_config", ROOT / "configs/pretrain.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg)
  config.lock()
  return config


@pytest.fixture(scope="module")
def ssr_maker():
  config = load("stage=ssr,runlocal")
  with config.unlocked():
    config.batch_size = 4
    config.data.image_fraction = 0.5
    config.text_dropout = 0.5
  cascade = cascade_lib.Cascade.from_config(config.cascade)
  return pretrain.BatchMaker(config, cascade, cascade.stage("ssr"),
                             common.make_embedder(config, cascade)), cascade


def test_batches_are_deterministic_joint_and_aligned(ssr_maker):
  maker, cascade = ssr_maker
  a, b = maker(3), maker(3)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(maker(4)["video"], a["video"])
  np.testing.assert_array_equal(a["temporal_mask"], [1, 1, 0, 0])
  assert a["video"].shape == (4, 8, 16, 32, 3) and a["low"].shape == (4, 8, 8, 16, 3)
  # Every (shuffled) frame keeps its own low-resolution counterpart.
  np.testing.assert_allclose(
      a["low"], np.asarray(cascade.stage("ssr").downsample(jnp.asarray(a["video"]))), atol=1e-6)


def test_text_dropout_gives_null_embeddings(ssr_maker):
  maker, _ = ssr_maker
  dropped = kept = 0
  for step in range(6):
    batch = maker(step)
    for text, mask in zip(batch["text"], batch["text_mask"]):
      if not mask.any():
        assert np.all(text == 0)
        dropped += 1
      else:
        kept += 1
  assert dropped > 0 and kept > 0


def test_process_shares_make_the_global_batch(ssr_maker):
  """Two processes' shares, concatenated, are the one-process batch (images, frame order, dropped
  captions included), so a multi-host run trains on the same data."""
  maker, cascade = ssr_maker
  shares = [pretrain.BatchMaker(maker.config, cascade, maker.stage, maker.embedder,
                                process_index=p, process_count=2) for p in range(2)]
  for step in (0, 5):
    whole, parts = maker(step), [share(step) for share in shares]
    assert parts[0]["video"].shape[0] == 2
    for k in whole:  # caption embeddings: T5 run on other caption batches, float rounding apart
      np.testing.assert_allclose(np.concatenate([p[k] for p in parts]), whole[k],
                                 atol=1e-5 if k == "text" else 0)


def test_pretrain_on_a_mesh_matches_one_device(tmp_path):
  """Two steps sharded over data=2 × fsdp=2 × tensor=2 (8 simulated devices) equal the unsharded
  steps: losses and parameters."""
  results = {}
  for name, mesh in (("mesh", dict(data=2, fsdp=2, tensor=2)), ("single", None)):
    config = load("stage=base,runlocal")
    with config.unlocked():
      config.steps, config.log_every, config.sample_every = 2, 1, 0
      config.mesh = mesh
    final, history = pretrain.run(config, str(tmp_path / name))
    results[name] = ([h["loss"] for h in history], jax.device_get(final.params))
  np.testing.assert_allclose(results["mesh"][0], results["single"][0], rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(results["mesh"][1]),
                  jax.tree_util.tree_leaves(results["single"][1])):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_tsr_rejects_image_examples(tmp_path):
  config = load("stage=tsr,runlocal")
  with config.unlocked():
    config.data.image_fraction = 0.25
  with pytest.raises(ValueError, match="image_fraction"):
    pretrain.run(config, str(tmp_path))


def test_pretrain_runs_resumes_and_exports(tmp_path):
  config = load("stage=base,runlocal")
  with config.unlocked():
    config.steps = 3
  pretrain.run(config, str(tmp_path))
  with config.unlocked():
    config.steps = 6
  final, history = pretrain.run(config, str(tmp_path))  # resumes at step 3
  assert int(final.step) == 6 and history[0]["step"] == 4
  cascade = cascade_lib.Cascade.from_config(config.cascade)
  params = checkpoints.load_cascade(str(tmp_path / "cascade"), cascade, ["base"])
  assert set(params) == {"base"}
  events = list((tmp_path / "tensorboard" / "base").glob("events.out.tfevents.*"))
  assert events and os.path.getsize(events[0]) > 0
  # Continuing from a committed cascade directory (init_from): starts at its recorded step, from
  # its parameters.
  with config.unlocked():
    config.init_from = str(tmp_path / "cascade")
    config.steps = 7
  cont, history = pretrain.run(config, str(tmp_path / "continued"))
  assert int(cont.step) == 7 and [h["step"] for h in history] == [7]
  # ... and with a module added to the stage since (the frame embedding): it must be named.
  with config.unlocked():
    config.cascade.stages.base.backbone.frame_embedding = True
  with pytest.raises(checkpoints.CheckpointError, match="missing.*frame_emb"):
    pretrain.run(config, str(tmp_path / "grown_unnamed"))
  with config.unlocked():
    config.init_from_new_modules = ("frame_emb",)
  grown, history = pretrain.run(config, str(tmp_path / "grown"))
  assert int(grown.step) == 7 and "frame_emb" in grown.params
  assert set(grown.params) == set(cont.params) | {"frame_emb"}
  # Resuming that workdir without the module: its orbax state no longer fits, said plainly.
  with config.unlocked():
    config.cascade.stages.base.backbone.frame_embedding = False
    config.init_from_new_modules = ()
    config.steps = 8
  with pytest.raises(checkpoints.CheckpointError,
                     match=r"other parameters \(differing: .*frame_emb"):
    pretrain.run(config, str(tmp_path / "grown"))


def test_cascade_checkpoint_round_trip_and_mismatch_errors(tmp_path):
  config = load("stage=base,runlocal")
  cascade = cascade_lib.Cascade.from_config(config.cascade)
  params = {s.name: cascade.init_params(jax.random.PRNGKey(i), s)
            for i, s in enumerate(cascade.stages)}
  for name, p in params.items():
    checkpoints.save_cascade_stage(str(tmp_path), name, p, config.cascade)
  loaded = checkpoints.load_cascade(str(tmp_path), cascade)
  for name in params:
    for a, b in zip(jax.tree_util.tree_leaves(params[name]),
                    jax.tree_util.tree_leaves(loaded[name])):
      np.testing.assert_array_equal(a, b)
  assert checkpoints.read_cascade_config(str(tmp_path)).name == config.cascade.name
  os.remove(tmp_path / "tsr.safetensors")
  with pytest.raises(checkpoints.CheckpointError, match="no stage 'tsr'"):
    checkpoints.load_cascade(str(tmp_path), cascade)
  # A stage saved under another stage's name: names and shapes are listed.
  checkpoints.save_cascade_stage(str(tmp_path), "tsr", params["base"])
  with pytest.raises(checkpoints.CheckpointError, match="wrong shape|missing|unexpected"):
    checkpoints.load_cascade(str(tmp_path), cascade)


# As if not installed: `import` raises ImportError and importlib.util.find_spec returns None.
_MISSING = ("tensorflow", "tensorflow_datasets", "imageio_ffmpeg")
_BLOCK_TENSORFLOW = f"""
import sys
sys.modules.update(dict.fromkeys({_MISSING!r}))
"""


def test_pretrain_and_eval_jobs_need_no_tensorflow_or_ffmpeg(tmp_path):
  """With TensorFlow, TFDS and ffmpeg unimportable (a bare JAX GPU image), the pretrain and eval
  jobs import, and the pretrain writer falls back to the log and PNG files."""
  import subprocess
  import sys
  script = _BLOCK_TENSORFLOW + f"""
import numpy as np
from absl import logging
logging.set_verbosity(logging.INFO)
from dreamix_jax.jobs import evaluate, pretrain
writer = pretrain.metric_writer({str(tmp_path)!r}, primary=True)
assert isinstance(writer, pretrain.LogAndPngWriter), type(writer)
writer.write_scalars(3, {{"loss": 0.5}})
writer.write_images(3, {{"samples": np.full((2, 4, 8, 3), 0.25)}})
assert all(sys.modules[name] is None for name in {_MISSING!r})
"""
  result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "No TensorBoard summaries" in result.stderr and "[3] loss=0.5" in result.stderr
  from PIL import Image
  for i in range(2):
    image = np.asarray(Image.open(tmp_path / f"samples_3_{i}.png"))
    assert image.shape == (4, 8, 3) and (image == 64).all()  # round(0.25 * 255)
  with_tf = pretrain.metric_writer(str(tmp_path / "tb"), primary=False)
  assert not isinstance(with_tf, pretrain.LogAndPngWriter)  # clu where TensorFlow is installed
