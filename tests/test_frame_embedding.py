"""Absolute frame-index embedding (`unet.frame_embedding`) and loading weights that predate it."""

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamix_jax.backbones import unet
from dreamix_jax.train import checkpoints
from param_utils import randomise, unet_abstract, unet_init

B, T, H, W, L, D = 2, 5, 8, 16, 6, 12

WITH = unet.UNetConfig(channels=8, channel_mult=(1, 2), num_res_blocks=(1, 1), attn_levels=(1,),
                       cross_attn_levels=(0,), temporal_attn_levels=(0, 1), temporal_conv=True,
                       head_dim=8, frame_embedding=True)
WITHOUT = dataclasses.replace(WITH, frame_embedding=False)
init = functools.partial(unet_init, frames=T, height=H, width=W, text_len=L, text_dim=D)


@pytest.fixture(scope="module")
def inputs():
  k = jax.random.split(jax.random.PRNGKey(2), 3)
  z = jax.random.normal(k[0], (B, T, H, W, 3))
  logsnr = jax.random.uniform(k[1], (B,), minval=-5, maxval=5)
  text = jax.random.normal(k[2], (B, L, D))
  return z, logsnr, text, jnp.ones((B, L), bool)


@pytest.fixture(scope="module")
def trained():
  """(params of WITH, all non-zero, and its jitted apply)."""
  params = randomise(init(WITH, jax.random.PRNGKey(0)), 1)
  return params, jax.jit(unet.UNetBackbone(WITH).apply, static_argnames=("frames_only",))


def test_zero_initialised_embedding_leaves_a_trained_model_unchanged(trained, inputs):
  params, apply = trained
  fresh = init(WITH, jax.random.PRNGKey(3))["frame_emb"]
  old = {k: v for k, v in params.items() if k != "frame_emb"}
  out_old = jax.jit(unet.UNetBackbone(WITHOUT).apply)(old, *inputs, temporal_mask=jnp.zeros((B,)))
  out_new = apply({**old, "frame_emb": fresh}, *inputs, temporal_mask=jnp.zeros((B,)))
  np.testing.assert_allclose(out_new, out_old, atol=1e-5)  # two programs: rounding only
  # A trained embedding does change it.
  trained_out = apply(params, *inputs, temporal_mask=jnp.zeros((B,)))
  assert float(jnp.abs(trained_out - out_old).max()) > 1e-3


def test_stationary_input_gives_frame_dependent_output_only_with_the_embedding(inputs):
  """Without temporal layers every frame is denoised alone: the same frame repeated gives the
  same output at every position, unless the frame's index is embedded."""
  z, logsnr, text, mask = inputs
  still = jnp.broadcast_to(z[:, :1], z.shape)
  for config, differs in ((WITH, True), (WITHOUT, False)):
    config = dataclasses.replace(config, temporal_conv=False, temporal_attn_levels=())
    params = randomise(init(config, jax.random.PRNGKey(0)), 1)
    out = unet.UNetBackbone(config).apply(params, still, logsnr, text, mask,
                                        temporal_mask=jnp.zeros((B,)))
    spread = float(jnp.abs(out - out[:, :1]).max())
    assert (spread > 1e-3) if differs else (spread < 1e-5), (config.frame_embedding, spread)


def test_masked_examples_are_frame_sets_again(trained, inputs):
  """Image sets (frame mask on) get no index: permuting frames permutes outputs, and the
  frames-only form still equals the all-masked call."""
  params, apply = trained
  z, logsnr, text, mask = inputs
  on = jnp.ones((B,))
  perm = np.array([3, 0, 4, 1, 2])
  out = apply(params, z, logsnr, text, mask, temporal_mask=on)
  np.testing.assert_allclose(apply(params, z[:, perm], logsnr, text, mask, temporal_mask=on),
                             out[:, perm], atol=1e-5)
  np.testing.assert_allclose(apply(params, z, logsnr, text, mask, frames_only=True), out,
                             rtol=1e-5, atol=1e-5)
  # Unmasked, the same permutation is not equivariant (the index and temporal layers see order).
  off = jnp.zeros((B,))
  out = apply(params, z, logsnr, text, mask, temporal_mask=off)
  out_perm = apply(params, z[:, perm], logsnr, text, mask, temporal_mask=off)
  assert float(jnp.abs(out_perm - out[:, perm]).max()) > 1e-3


def test_load_params_over_adds_only_the_named_new_modules(tmp_path):
  old = randomise(init(WITHOUT, jax.random.PRNGKey(0)), 1)
  path = os.path.join(tmp_path, "base.safetensors")
  checkpoints.save_params(path, old)
  initial = init(WITH, jax.random.PRNGKey(5))
  loaded = checkpoints.load_params_over(path, initial, ["frame_emb"])
  assert set(loaded) == set(old) | {"frame_emb"}
  for (p, a), b in zip(jax.tree_util.tree_flatten_with_path(loaded["frame_emb"])[0],
                       jax.tree_util.tree_leaves(initial["frame_emb"])):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(p))
  np.testing.assert_array_equal(loaded["stem"]["kernel"], old["stem"]["kernel"])

  with pytest.raises(checkpoints.CheckpointError, match="missing.*frame_emb"):
    checkpoints.load_params_over(path, initial, [])
  with pytest.raises(checkpoints.CheckpointError, match="not in the model"):
    checkpoints.load_params_over(path, initial, ["frame_embedding"])
  newer = os.path.join(tmp_path, "newer.safetensors")
  checkpoints.save_params(newer, loaded)
  with pytest.raises(checkpoints.CheckpointError, match="already has"):
    checkpoints.load_params_over(newer, initial, ["frame_emb"])
  # Anything else that differs is still an error.
  partial = {k: v for k, v in old.items() if k != "stem"}
  checkpoints.save_params(path, partial)
  with pytest.raises(checkpoints.CheckpointError, match="missing.*stem"):
    checkpoints.load_params_over(path, initial, ["frame_emb"])
