"""Cascade: resize ops, stage validation, paper-scale sizes, tiny cascade sampling with chunking."""

import dataclasses
import importlib.util
import pathlib
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamix_jax import cascade as cascade_lib
from dreamix_jax.diffusion import sampling
from dreamix_jax.backbones import unet
import readme_commands

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(relpath, arg=None):
  spec = importlib.util.spec_from_file_location("cfg", ROOT / relpath)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_resize_ops():
  v = jnp.arange(2 * 4 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 4, 6, 3)
  down = cascade_lib.area_downsample(v, 2)
  assert down.shape == (2, 4, 2, 3, 3)
  np.testing.assert_allclose(down[0, 0, 0, 0], v[0, 0, :2, :2].mean(axis=(0, 1)))
  np.testing.assert_allclose(down.mean(), v.mean(), rtol=1e-6)  # area resize keeps the mean
  np.testing.assert_array_equal(cascade_lib.skip_frames(v, 2), v[:, [0, 2]])
  rep = cascade_lib.repeat_frames(v, 2)
  np.testing.assert_array_equal(rep[:, 2], v[:, 1])
  np.testing.assert_array_equal(rep[:, 3], v[:, 1])
  up = cascade_lib.bilinear_upsample(jnp.ones((1, 2, 3, 5, 3)) * 0.25, 4)
  assert up.shape == (1, 2, 12, 20, 3)
  np.testing.assert_allclose(up, 0.25, atol=1e-6)  # constant stays constant
  with pytest.raises(ValueError, match="not divisible"):
    cascade_lib.area_downsample(v, 3)


PAPER_PARAMS = dict(base=5.6e9, tsr1=1.7e9, ssr1=1.4e9, ssr2=1.2e9, tsr2=780e6, tsr3=630e6,
                    ssr3=340e6)
PAPER_SHAPES = dict(base="16×24×40", tsr1="32×24×40", ssr1="32×48×80", ssr2="32×192×320",
                    tsr2="64×192×320", tsr3="128×192×320", ssr3="128×768×1280")


def test_imagen_video_config_matches_paper_table_within_15_percent():
  """The README's summary command on the paper-scale cascade: the stages, output shapes and
  parameter counts of the paper's table (within 15%), and a total that adds up. (The counts are
  read from the command's own output: tracing the 12B-parameter cascade twice is a minute.)"""
  argv = readme_commands.argv(
      "python -m dreamix_jax.tools.summary --config=configs/cascades/imagen_video.py")
  proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  title, header, *stages, total = proc.stdout.strip().splitlines()
  assert title == "cascade 'imagen_video'" and header.split() == ["stage", "kind", "output",
                                                                  "params"]
  rows = [(line.split()[0], line.split()[-2], int(line.split()[-1].replace(",", "")))
          for line in stages]
  assert [r[0] for r in rows] == list(PAPER_PARAMS)
  for name, shape, n in rows:
    assert shape == PAPER_SHAPES[name]
    assert abs(n / PAPER_PARAMS[name] - 1) <= 0.15, (name, n)
  assert total.split() == ["total", f"{sum(r[2] for r in rows):,}"]
  cascade = cascade_lib.Cascade.from_config(load_config("configs/cascades/imagen_video.py"))
  assert [s.name for s in cascade.stages if s.finetune] == ["base", "ssr1", "ssr2"]
  assert cascade.stage("ssr3").chunk_frames == 32


def test_tiny_variants_keep_the_stage_structure():
  for path in ("configs/cascades/imagen_video.py", "configs/cascades/shapes.py"):
    full = cascade_lib.Cascade.from_config(load_config(path))
    tiny = cascade_lib.Cascade.from_config(load_config(path, "tiny"))
    assert [(s.name, s.kind, s.factor) for s in tiny.stages] == \
           [(s.name, s.kind, s.factor) for s in full.stages]


def test_every_unet_and_sampler_field_can_be_set_on_every_stage():
  """The stage dicts carry every UNetConfig/SamplerConfig field (a cascade file names only some),
  so a command-line override such as --config.cascade.stages.base.backbone.remat=full reaches the
  stage; `conditional` follows the stage kind."""
  cfg = load_config("configs/cascades/shapes.py")
  for name, stage in cfg.stages.items():
    assert set(stage.backbone) == {f.name for f in dataclasses.fields(unet.UNetConfig)} | {"name"}, name
    assert set(stage.sampler) == {f.name for f in dataclasses.fields(sampling.SamplerConfig)}, name
    assert stage.backbone.conditional == (stage.kind != "base"), name
  cfg.stages.base.backbone.remat = "full"
  cfg.stages.tsr.sampler.eta = 0.5
  cascade = cascade_lib.Cascade.from_config(cfg)
  assert cascade.stage("base").backbone.config.remat == "full"
  assert cascade.stage("tsr").sampler.eta == 0.5


def test_cascade_validation_errors():
  cfg = load_config("configs/cascades/shapes.py", "tiny")
  cfg.stages.tsr.frames = 6  # no longer 2× the base's 4 frames
  with pytest.raises(ValueError, match="expects input"):
    cascade_lib.Cascade.from_config(cfg)
  cfg = load_config("configs/cascades/shapes.py", "tiny")
  cfg.stages.base.height = 7
  with pytest.raises(ValueError, match="not divisible"):
    cascade_lib.Cascade.from_config(cfg)
  with pytest.raises(KeyError, match="No stage"):
    cascade_lib.Cascade.from_config(load_config("configs/cascades/shapes.py", "tiny")).stage("x")


def test_tiny_cascade_samples_every_stage_with_chunking():
  cascade = cascade_lib.Cascade.from_config(load_config("configs/cascades/shapes.py", "tiny"))
  params = {s.name: cascade.init_params(jax.random.PRNGKey(i), s)
            for i, s in enumerate(cascade.stages)}
  text = jax.random.normal(jax.random.PRNGKey(9), (2, cascade.text_len, cascade.text_dim))
  mask = jnp.ones((2, cascade.text_len), bool)
  out = cascade.sample(params, text, mask, jax.random.PRNGKey(0))
  assert {k: v.shape for k, v in out.items()} == {
      "base": (2, 4, 8, 16, 3), "tsr": (2, 8, 8, 16, 3), "ssr": (2, 8, 16, 32, 3)}
  for v in out.values():
    assert float(jnp.abs(v).max()) <= 1.0
  # Editing entry point: base from a given video at s = 0 returns that video exactly.
  video = jnp.clip(jax.random.normal(jax.random.PRNGKey(1), (2, 4, 8, 16, 3)), -1, 1)
  base = cascade.stages[0]
  same = cascade.sample_stage(base, params["base"], text, mask, jax.random.PRNGKey(2),
                              z_start=video, t_start=0.0)
  np.testing.assert_array_equal(same, video)


def test_chunked_sr_sampling_equals_unchunked_when_frames_are_independent():
  """The SSR stage samples in chunks of `chunk_frames` input frames. With its temporal layers at
  their (identity) initialisation every frame is computed independently, so chunking must not
  change the output at all: the starting noise is drawn for the whole video and sliced (η = 0 and
  no conditioning augmentation, so no other randomness). With random temporal layers the chunks
  see different temporal context and the outputs differ: the chunked path really chunks."""
  from param_utils import randomise
  cfg = load_config("configs/cascades/shapes.py", "tiny")
  cfg.stages.ssr.sampler.eta = 0.0
  cfg.stages.ssr.cond_aug_t = 0.0
  chunked = cascade_lib.Cascade.from_config(cfg)
  cfg.stages.ssr.chunk_frames = 0
  whole = cascade_lib.Cascade.from_config(cfg)
  ssr = chunked.stage("ssr")
  assert ssr.chunk_frames == 4
  params = whole.init_params(jax.random.PRNGKey(3), whole.stage("ssr"))
  text = jax.random.normal(jax.random.PRNGKey(9), (2, whole.text_len, whole.text_dim))
  mask = jnp.ones((2, whole.text_len), bool)
  low = jnp.clip(jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 16, 3)), -1, 1)
  key = jax.random.PRNGKey(5)
  run = lambda cascade, p: cascade.sample_stage(cascade.stage("ssr"), p, text, mask, key, low=low)
  np.testing.assert_allclose(run(chunked, params), run(whole, params), atol=1e-5)
  mixed = randomise(params, 7)
  assert float(jnp.abs(run(chunked, mixed) - run(whole, mixed)).max()) > 1e-3
