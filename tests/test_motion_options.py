"""Direction-of-motion options of the U-Net (`UNetConfig.coord_channels`, `pos_embedding`,
`spacetime_conv_levels`, `joint_attn_levels`, `text_temporal`; `backbones.spacetime_layers`).

For each option: off by default with the shipped parameter trees unchanged; adds only its own
top-level module; old weights plus its fresh module compute what they computed (zero-initialised
residuals), including through `checkpoints.load_params_over`; trained, it changes the output;
frame sets stay per-frame (permutation equivariance, frame isolation, an identity mask and
`frames_only` equal to the flags), with remat and bfloat16.
"""

import dataclasses
import functools
import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors

from dreamix_jax.backbones import base, layers, spacetime_layers, unet
from dreamix_jax.train import checkpoints
from param_utils import randomise

B, T, H, W, L, D = 2, 5, 8, 16, 6, 12  # odd frame count on purpose
SPEC = base.InputSpec(T, H, W, channels=3, text_len=L, text_dim=D)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

OFF = unet.UNetConfig(channels=8, channel_mult=(1, 2), num_res_blocks=(1, 1), attn_levels=(1,),
                      cross_attn_levels=(0,), temporal_attn_levels=(1,), temporal_conv=True,
                      head_dim=8, frame_embedding=True)
# option -> (its config fields, the top-level modules it adds)
OPTIONS = {
    "coord": (dict(coord_channels=True, coord_time=True), ("coord_stem",)),
    "pos_embedding": (dict(pos_embedding=True), ("pos_emb",)),
    "spacetime_conv": (dict(spacetime_conv_levels=(0, 1)), ("spacetime_conv",)),
    "joint_attn": (dict(joint_attn_levels=(1,)), ("joint_attn",)),
    "text_temporal": (dict(text_temporal=True), ("text_temporal",)),
}
ALL = dataclasses.replace(OFF, **{k: v for fields, _ in OPTIONS.values() for k, v in fields.items()})
ALL_MODULES = tuple(m for _, names in OPTIONS.values() for m in names)


def config(option):
  return dataclasses.replace(OFF, **OPTIONS[option][0])


@functools.lru_cache(maxsize=None)
def model(cfg):
  """(backbone, jitted apply) of a config, compiled once per module."""
  bb = unet.UNetBackbone(cfg)
  return bb, jax.jit(bb.apply, static_argnames=("frames_only", "train"))


@functools.lru_cache(maxsize=None)
def fresh(cfg, seed=0):
  return model(cfg)[0].init(jax.random.PRNGKey(seed), SPEC)


def trained(cfg):
  """Parameters with every leaf non-zero (the zero-initialised residuals take part)."""
  return randomise(fresh(cfg), 1)


def drop(params, names):
  return {k: v for k, v in params.items() if k not in names}


def shapes(params):
  """{'a/b': shape} of a parameter tree, concrete or abstract."""
  return {"/".join(str(k.key) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(nn.meta.unbox(params))[0]}


@pytest.fixture(scope="module")
def inputs():
  k = jax.random.split(jax.random.PRNGKey(2), 3)
  z = jax.random.normal(k[0], (B, T, H, W, 3))
  logsnr = jax.random.uniform(k[1], (B, T), minval=-5, maxval=5)
  text = jax.random.normal(k[2], (B, L, D))
  mask = jnp.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]], bool)
  return z, logsnr, text, mask


def run(cfg, params, inputs, flags=None, frames_only=False):
  """The U-Net's output; `flags`: a (B,) frame mask, or a (B, T, T) attention mask."""
  if frames_only:
    return model(cfg)[1](params, *inputs, frames_only=True)
  return model(cfg)[1](params, *inputs, temporal_mask=jnp.asarray(flags, jnp.float32)
                       if np.ndim(flags) == 1 else flags)


def max_diff(a, b):
  return float(jnp.abs(a - b).max())


# --------------------------------------------------------------------------------------------------
# Off by default: shipped weights, parameter trees.

@pytest.mark.parametrize("stage", ["base", "tsr", "ssr"])
def test_default_config_matches_the_shipped_weights(stage):
  """Every option off by default: the shipped demo cascade's parameter files fit the U-Net its
  cascade.json describes, key for key and shape for shape."""
  directory = os.path.join(ROOT, "checkpoints", "shapes")
  with open(os.path.join(directory, "cascade.json")) as f:
    stage_cfg = json.load(f)["stages"][stage]
  cfg = unet.UNetConfig.from_config(stage_cfg["unet"])
  assert not (cfg.coord_channels or cfg.pos_embedding or cfg.spacetime_conv_levels or
              cfg.joint_attn_levels or cfg.text_temporal)
  spec = base.InputSpec(stage_cfg["frames"], stage_cfg["height"], stage_cfg["width"], channels=3,
                        text_len=16, text_dim=64, cond_channels=3 if cfg.conditional else 0)
  expected = shapes(unet.UNetBackbone(cfg).abstract_params(spec))
  with safetensors.safe_open(os.path.join(directory, f"{stage}.safetensors"), "np") as f:
    stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
  assert stored == expected


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_option_adds_only_its_top_level_modules(option):
  on, off = shapes(fresh(config(option))), shapes(fresh(OFF))
  names = OPTIONS[option][1]
  assert {k.split("/")[0] for k in set(on) - set(off)} == set(names)
  assert {k: v for k, v in on.items() if k.split("/")[0] not in names} == off


def test_new_parameters_carry_logical_axis_names():
  """Every new parameter is boxed with logical axis names, so `base.param_shardings` lays it out
  like the existing ones."""
  abstract = unet.UNetBackbone(ALL).abstract_params(SPEC)
  is_box = lambda x: isinstance(x, nn.Partitioned)
  for name in ALL_MODULES:
    leaves = jax.tree_util.tree_leaves(abstract[name], is_leaf=is_box)
    assert leaves and all(is_box(leaf) for leaf in leaves), name


# --------------------------------------------------------------------------------------------------
# Continues where it was; trained, it matters.

@pytest.mark.parametrize("option", sorted(OPTIONS) + ["all"])
def test_fresh_option_on_old_weights_changes_nothing(option, inputs):
  """Old (trained) weights + the option's freshly initialised modules: the same outputs, for
  clips, a mixed batch and the frames-only variant."""
  cfg, names = (ALL, ALL_MODULES) if option == "all" else (config(option), OPTIONS[option][1])
  old = trained(OFF)
  merged = {**old, **{n: fresh(cfg, 3)[n] for n in names}}
  # Equal to float32 rounding (a zero branch changes how XLA orders the sums); a trained option
  # changes them by > 1e-3 (below).
  for flags in ([0.0, 0.0], [0.0, 1.0]):
    np.testing.assert_allclose(run(cfg, merged, inputs, flags), run(OFF, old, inputs, flags),
                               rtol=0, atol=1e-5, err_msg=str(flags))
  np.testing.assert_allclose(run(cfg, merged, inputs, frames_only=True),
                             run(OFF, old, inputs, frames_only=True), rtol=0, atol=1e-5)


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_trained_option_changes_the_output(option, inputs):
  """With its parameters non-zero the option changes clips; for frame sets, everything but
  text_temporal (a modulation of the temporal layers, which frame sets bypass) changes them too."""
  cfg, names = config(option), OPTIONS[option][1]
  params = trained(cfg)
  shared = drop(params, names)
  assert max_diff(run(cfg, params, inputs, [0.0, 0.0]), run(OFF, shared, inputs, [0.0, 0.0])) > 1e-3
  on = run(cfg, params, inputs, frames_only=True)
  off = run(OFF, shared, inputs, frames_only=True)
  if option == "text_temporal":
    np.testing.assert_array_equal(on, off)
  else:
    assert max_diff(on, off) > 1e-3


def test_load_params_over_continues_from_old_weights(tmp_path, inputs):
  """The `init_from_new_modules` path: an old parameter file, every option's top-level module
  named as new, gives the old model's outputs."""
  old = trained(OFF)
  path = os.path.join(tmp_path, "base.safetensors")
  checkpoints.save_params(path, old)
  loaded = checkpoints.load_params_over(path, fresh(ALL, 5), ALL_MODULES)
  loaded = jax.tree_util.tree_map(jnp.asarray, loaded)
  np.testing.assert_allclose(run(ALL, loaded, inputs, [0.0, 1.0]), run(OFF, old, inputs, [0.0, 1.0]),
                             rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Frame sets: every frame computed alone.

@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_frame_sets_are_per_frame(option, inputs):
  cfg = config(option)
  params = trained(cfg)
  z, logsnr, text, mask = inputs
  on = run(cfg, params, inputs, [1.0, 1.0])
  # Permuting the frames of a frame set permutes the output.
  perm = np.array([3, 0, 4, 1, 2])
  np.testing.assert_allclose(run(cfg, params, (z[:, perm], logsnr[:, perm], text, mask),
                                 [1.0, 1.0]), on[:, perm], atol=1e-5)
  # Changing frame 2 leaves the other frames exactly unchanged; in a clip it changes them.
  changed = (z.at[:, 2].add(1.0), logsnr, text, mask)
  for flags, mixes in (([1.0, 1.0], False), ([0.0, 0.0], True)):
    diff = jnp.abs(run(cfg, params, changed, flags) - run(cfg, params, inputs, flags))
    assert float(diff[:, 2].max()) > 1e-3
    others = float(diff[:, [0, 1, 3, 4]].max())
    assert (others > 1e-3) if mixes else (others == 0.0), (flags, others)
  # An identity attention mask is a frame set; frames_only computes the same.
  eye = jnp.broadcast_to(jnp.eye(T, dtype=bool), (B, T, T))
  np.testing.assert_allclose(run(cfg, params, inputs, eye), on, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(run(cfg, params, inputs, frames_only=True), on, rtol=1e-5, atol=1e-5)


def test_all_options_frames_only_gradients_equal_the_masked_ones(inputs):
  """frames_only computes the all-masked U-Net with every option on: outputs and every parameter
  gradient, under remat (compared with the un-rematerialised outputs; the FiLM's masked gradients are zero up to rounding, through
  identity attention's one-key softmax); the time taps and frame positions get none at all."""
  cfg = dataclasses.replace(ALL, remat="full")
  params = trained(ALL)
  bb = unet.UNetBackbone(cfg)

  def loss(p, frames_only):
    extra = dict(frames_only=True) if frames_only else dict(temporal_mask=jnp.ones((B,)))
    out = bb.apply(p, *inputs, **extra)
    return jnp.sum(out * jnp.cos(out)), out

  grads = {}
  for frames_only in (False, True):
    fn = jax.jit(jax.value_and_grad(functools.partial(loss, frames_only=frames_only), has_aux=True))
    (_, out), grads[frames_only] = fn(params)
    np.testing.assert_allclose(out, run(ALL, params, inputs, [1.0, 1.0]), rtol=1e-5, atol=1e-5)
  scale = max(float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(grads[False]))
  flat = {k: checkpoints.flatten(g) for k, g in grads.items()}
  for name, g in flat[False].items():
    np.testing.assert_allclose(flat[True][name] / scale, g / scale, atol=1e-5, err_msg=name)
    if name.endswith("pos_time/kernel"):
      assert float(np.abs(g).max()) == 0.0, name
    if name.startswith("spacetime_conv/") and name.endswith("kernel"):
      assert float(np.abs(g[[0, 2]]).max()) == 0.0, name


def test_all_options_in_bfloat16(inputs):
  """bfloat16 activations (float32 parameters, float32 softmax) with every option on."""
  params = trained(ALL)
  ref = run(ALL, params, inputs, [0.0, 1.0])
  out = run(dataclasses.replace(ALL, dtype="bfloat16"), params, inputs, [0.0, 1.0])
  assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
  assert max_diff(out, ref) < 0.05 * float(jnp.abs(ref).max())


# --------------------------------------------------------------------------------------------------
# The layers.

def test_spacetime_conv_is_a_3d_convolution_and_follows_the_mask():
  """Unmasked it is x + conv3d(swish(norm(x))) ('SAME', zero padding in time); under a causal
  (B, T, T) mask the t+1 tap is dropped; under flags only the centre slice remains."""
  x = jax.random.normal(jax.random.PRNGKey(0), (B, T, 4, 6, 8))
  layer = spacetime_layers.SpaceTimeConv()
  params = randomise(nn.meta.unbox(layer.init(jax.random.PRNGKey(1), x, jnp.zeros((B,)))), 2)
  p = params["params"]
  y = layers.GroupNorm(math.gcd(32, 8)).apply({"params": p["norm"]}, layers.fold_frames(x))
  y = nn.swish(y).reshape(x.shape)

  def conv3d(kernel):
    out = jax.lax.conv_general_dilated(y, kernel, (1, 1, 1), "SAME",
                                       dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
    return x + out + p["bias"]

  kernel = p["kernel"]
  causal = jnp.broadcast_to(jnp.tril(jnp.ones((T, T), bool)), (B, T, T))
  centre = jnp.zeros_like(kernel).at[1].set(kernel[1])
  for mask, ref in ((jnp.zeros((B,)), conv3d(kernel)),
                    (causal, conv3d(kernel.at[2].set(0.0))),
                    (jnp.ones((B,)), conv3d(centre))):
    np.testing.assert_allclose(layer.apply(params, x, mask), ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(layer.apply(params, x, None, True), conv3d(centre), rtol=1e-5,
                             atol=1e-5)


def test_joint_attention_mixes_frames_and_follows_a_causal_mask():
  x = jax.random.normal(jax.random.PRNGKey(0), (B, T, 2, 4, 16))
  text = jax.random.normal(jax.random.PRNGKey(1), (B, L, D))
  text_mask = jnp.ones((B, L), bool)
  layer = spacetime_layers.JointAttention(head_dim=8)
  params = randomise(nn.meta.unbox(layer.init(jax.random.PRNGKey(2), x, text, text_mask,
                                              jnp.zeros((B,)))), 3)
  changed = x.at[:, 3].add(jax.random.normal(jax.random.PRNGKey(4), x[:, 3].shape))
  causal = jnp.broadcast_to(jnp.tril(jnp.ones((T, T), bool)), (B, T, T))
  for mask, earlier_fixed in ((jnp.zeros((B,)), False), (causal, True)):
    diff = jnp.abs(layer.apply(params, changed, text, text_mask, mask) -
                   layer.apply(params, x, text, text_mask, mask))
    assert float(diff[:, 3:].max()) > 1e-3
    earlier = float(diff[:, :3].max())
    assert (earlier == 0.0) if earlier_fixed else (earlier > 1e-3)
  # The text tokens are attended to: changing an unmasked one changes every frame.
  diff = jnp.abs(layer.apply(params, x, text.at[:, 0].add(1.0), text_mask, jnp.zeros((B,))) -
                 layer.apply(params, x, text, text_mask, jnp.zeros((B,))))
  assert float(diff.max(axis=(0, 2, 3, 4)).min()) > 1e-4


def test_coordinates_vary_over_space_and_over_a_clip_but_not_a_frame_set():
  stem = spacetime_layers.CoordinateStem(8, time=True)
  flags = jnp.array([0.0, 1.0])
  params = randomise(nn.meta.unbox(stem.init(jax.random.PRNGKey(0), flags, T, 4, 6)), 1)
  out = layers.unfold_frames(stem.apply(params, flags, T, 4, 6), B)  # (B, T, 4, 6, 8)
  assert max_diff(out[:, :, 0, 0], out[:, :, -1, -1]) > 1e-3  # position is visible
  assert max_diff(out[0, 0], out[0, -1]) > 1e-3  # ordered clip: first and last frame differ
  np.testing.assert_array_equal(out[1], jnp.broadcast_to(out[1, :1], out[1].shape))  # frame set
  np.testing.assert_allclose(stem.apply(params, jnp.ones((1,)), 1, 4, 6)[0], out[1, 0], atol=1e-6)


def test_config_errors():
  with pytest.raises(ValueError, match="coord_channels"):
    unet.UNetConfig(coord_time=True)
  with pytest.raises(ValueError, match="out of range"):
    unet.UNetConfig(joint_attn_levels=(3,))
  with pytest.raises(ValueError, match="out of range"):
    unet.UNetConfig(spacetime_conv_levels=(-1,))
  with pytest.raises(ValueError, match="text_temporal"):
    unet.UNetConfig(text_temporal=True, temporal_conv=False, temporal_attn_levels=())
  cfg = unet.UNetConfig.from_config({"spacetime_conv_levels": [2], "joint_attn_levels": [2]})
  assert cfg.spacetime_conv_levels == (2,) and cfg.joint_attn_levels == (2,)
