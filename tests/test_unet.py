"""Space-time U-Net: shapes, frame-mask invariances, vmapped variants, text masking, counts."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamix_jax.backbones import base as backbone_base, unet
from param_utils import randomise, unet_abstract, unet_init

B, T, H, W, L, D = 2, 5, 8, 16, 6, 12  # odd frame count on purpose

BASE = unet.UNetConfig(channels=8, channel_mult=(1, 2), num_res_blocks=(1, 1), attn_levels=(1,),
                       cross_attn_levels=(0,), temporal_attn_levels=(0, 1), temporal_conv=True,
                       head_dim=8)
SR = unet.UNetConfig(channels=8, channel_mult=(1, 2), num_res_blocks=(1, 1), attn_levels=(),
                     cross_attn_levels=(1,), temporal_attn_levels=(), temporal_conv=True,
                     head_dim=8, conditional=True)


@pytest.fixture(scope="module")
def fresh_params():
  return unet_init(BASE, jax.random.PRNGKey(0), frames=T, height=H, width=W, text_len=L,
                          text_dim=D)


@pytest.fixture(scope="module")
def base(fresh_params):
  apply = unet.UNetBackbone(BASE).apply
  return randomise(fresh_params, 1), jax.jit(apply)


@pytest.fixture(scope="module")
def inputs():
  k = jax.random.split(jax.random.PRNGKey(2), 3)
  z = jax.random.normal(k[0], (B, T, H, W, 3))
  logsnr = jax.random.uniform(k[1], (B, T), minval=-5, maxval=5)
  text = jax.random.normal(k[2], (B, L, D))
  mask = jnp.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]], bool)
  return z, logsnr, text, mask


def test_output_shapes_every_kind_and_odd_frames(base, inputs):
  params, apply = base
  z, logsnr, text, mask = inputs
  out = apply(params, z, logsnr, text, mask, temporal_mask=jnp.zeros((B,)))
  assert out.shape == (B, T, H, W, 3) and out.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(out)))
  # Per-example log-SNR and an SR stage with conditioning, 3 frames.
  sr_params = unet_init(SR, jax.random.PRNGKey(3), frames=3, height=8, width=8, text_len=L,
                               text_dim=D)
  sr_apply = unet.UNetBackbone(SR).apply
  low = z[:, :3, :, :8]
  out = sr_apply(sr_params, low, logsnr[:, 0], text, mask, cond=low, cond_logsnr=jnp.zeros((B,)))
  assert out.shape == (B, 3, 8, 8, 3)


def test_frame_mask_permutation_equivariance(base, inputs):
  params, apply = base
  z, logsnr, text, mask = inputs
  perm = np.array([3, 0, 4, 1, 2])
  on = jnp.ones((B,))
  out = apply(params, z, logsnr, text, mask, temporal_mask=on)
  out_perm = apply(params, z[:, perm], logsnr[:, perm], text, mask, temporal_mask=on)
  np.testing.assert_allclose(out_perm, out[:, perm], atol=1e-5)


def test_frame_mask_isolates_frames_and_unmasked_mixes(base, inputs):
  params, apply = base
  z, logsnr, text, mask = inputs
  z2 = z.at[:, 2].add(1.0)
  for flag, should_mix in ((1.0, False), (0.0, True)):
    tm = jnp.full((B,), flag)
    diff = jnp.abs(apply(params, z2, logsnr, text, mask, temporal_mask=tm) -
                   apply(params, z, logsnr, text, mask, temporal_mask=tm))
    others = np.asarray(diff[:, [0, 1, 3, 4]].max())
    assert float(diff[:, 2].max()) > 1e-3
    if should_mix:
      assert others > 1e-3, "with temporal layers on, changing frame 2 must change other frames"
    else:
      assert others == 0.0, "with the frame mask on, other frames must not change at all"


def test_identity_attention_mask_array_equals_flag(base, inputs):
  params, apply = base
  z, logsnr, text, mask = inputs
  eye = jnp.broadcast_to(jnp.eye(T, dtype=bool), (B, T, T))
  np.testing.assert_allclose(apply(params, z, logsnr, text, mask, temporal_mask=eye),
                             apply(params, z, logsnr, text, mask, temporal_mask=jnp.ones((B,))),
                             atol=1e-6)


def test_vmapped_variants_equal_separate_calls(base, inputs):
  params, apply = base
  z, logsnr, text, mask = inputs
  masks = jnp.stack([jnp.zeros((B,)), jnp.ones((B,))])
  zs = jnp.stack([z, z[:, ::-1]])
  both = jax.vmap(lambda zz, tm: apply(params, zz, logsnr, text, mask, temporal_mask=tm))(zs, masks)
  np.testing.assert_allclose(both[0], apply(params, zs[0], logsnr, text, mask,
                                            temporal_mask=masks[0]), atol=1e-5)
  np.testing.assert_allclose(both[1], apply(params, zs[1], logsnr, text, mask,
                                            temporal_mask=masks[1]), atol=1e-5)


def test_padding_tokens_are_ignored_and_null_text_is_finite(base, inputs):
  params, apply = base
  z, logsnr, text, mask = inputs
  tm = jnp.zeros((B,))
  noisy_pad = jnp.where(mask[..., None], text, 100.0)
  np.testing.assert_allclose(apply(params, z, logsnr, noisy_pad, mask, temporal_mask=tm),
                             apply(params, z, logsnr, text, mask, temporal_mask=tm), atol=1e-5)
  null = apply(params, z, logsnr, jnp.zeros_like(text), jnp.zeros_like(mask), temporal_mask=tm)
  assert bool(jnp.all(jnp.isfinite(null)))


def test_fresh_temporal_layers_are_identity(base, fresh_params, inputs):
  """Zero-initialised temporal output projections: a new model ignores the frame mask."""
  _, apply = base
  z, logsnr, text, mask = inputs
  # Make only the final output layer non-zero so the output is informative.
  params = dict(fresh_params)
  params["out"] = jax.tree_util.tree_map(lambda x: x + 0.1, params["out"])
  args = (z, logsnr, text, mask)
  out_masked = apply(params, *args, temporal_mask=jnp.ones((B,)))
  assert float(jnp.abs(out_masked).max()) > 1e-3
  np.testing.assert_allclose(out_masked, apply(params, *args, temporal_mask=jnp.zeros((B,))),
                             atol=1e-6)


def test_parameter_count_exact_and_abstract_matches(fresh_params):
  """Pinned counts: the stem and head by hand (3x3 convolutions 3 -> 8 and 8 -> 3 channels with
  biases; LayerNorm/GroupNorm scale and bias), the total as built today (a change to the
  architecture's size must show here), and the abstract (shape-only) tree agrees leaf by leaf."""
  abstract = unet_abstract(BASE, frames=T, height=H, width=W, text_len=L, text_dim=D)
  count = backbone_base.count_params
  assert count(fresh_params["stem"]) == 3 * 3 * 3 * 8 + 8
  assert count(fresh_params["out"]) == 3 * 3 * 8 * 3 + 3
  assert count(fresh_params["out_norm"]) == 2 * 8
  assert count(fresh_params["text_norm"]) == 2 * D
  assert count(fresh_params) == 39_911
  shapes = lambda tree: jax.tree_util.tree_map(lambda x: tuple(x.shape), nn.unbox(tree))
  assert shapes(abstract) == shapes(fresh_params)


def test_bad_shapes_and_config_errors():
  with pytest.raises(ValueError, match="divisible"):
    unet_init(BASE, jax.random.PRNGKey(0), frames=2, height=7, width=16, text_len=L,
                     text_dim=D)
  with pytest.raises(ValueError, match="out of range"):
    unet.UNetConfig(channel_mult=(1, 2), num_res_blocks=(1, 1), attn_levels=(3,))
  with pytest.raises(ValueError, match="Unknown U-Net config fields"):
    unet.UNetConfig.from_config({"chanels": 8})


@pytest.mark.parametrize("remat", ["none", "full"])
def test_frames_only_equals_all_masked(base, inputs, remat):
  """The static frames-only form computes the all-masked U-Net (outputs and every parameter
  gradient; the temporal convolutions' gradients exactly zero), base and SR stages, with remat."""
  params, _ = base
  z, logsnr, text, mask = inputs
  low = z[:, :, :, :8]
  sr_params = randomise(unet_init(SR, jax.random.PRNGKey(4), frames=T, height=H, width=8,
                                         text_len=L, text_dim=D), 5)
  for config, p, kwargs, x in ((BASE, params, {}, z),
                               (SR, sr_params, dict(cond=low, cond_logsnr=logsnr[:, 0]), low)):
    apply = unet.UNetBackbone(dataclasses.replace(config, remat=remat)).apply

    def loss(p, frames_only, apply=apply, kwargs=kwargs, x=x):
      extra = dict(frames_only=True) if frames_only else dict(temporal_mask=jnp.ones((B,)))
      out = apply(p, x, logsnr, text, mask, **kwargs, **extra)
      return jnp.sum(out * jnp.cos(out)), out

    (_, out_ref), g_ref = jax.jit(jax.value_and_grad(functools.partial(loss, frames_only=False),
                                                     has_aux=True))(p)
    (_, out), g = jax.jit(jax.value_and_grad(functools.partial(loss, frames_only=True),
                                             has_aux=True))(p)
    np.testing.assert_allclose(out, out_ref, rtol=1e-5, atol=1e-5)
    # One scale for all leaves: some gradients are zero up to rounding (a conv bias before a
    # GroupNorm), so a per-leaf scale would compare rounding noise with rounding noise.
    scale = max(float(jnp.abs(b).max()) for b in jax.tree_util.tree_leaves(g_ref))
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(g)[0],
                            jax.tree_util.tree_leaves(g_ref)):
      name = jax.tree_util.keystr(path)
      np.testing.assert_allclose(a / scale, b / scale, atol=1e-5, err_msg=name)
      if "temporal_conv" in name:
        assert float(jnp.abs(a).max()) == 0.0, name
  with pytest.raises(ValueError, match="frames_only"):
    unet.UNetBackbone(BASE).apply(params, z, logsnr, text, mask, temporal_mask=jnp.ones((B,)),
                                frames_only=True)
