"""Sharding on 8 simulated CPU devices: meshes from config, parameter/state shardings, the mixed
finetune step on data=2 × fsdp=2 × tensor=2 equal to one device, one compile per loop, checkpoints
restored onto another mesh, sharded sampling and init equal to unsharded, remat policies."""

import dataclasses
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from dreamix_jax import cascade as cascade_lib, parallel
from dreamix_jax.dreamix import finetune, objective
from dreamix_jax.backbones import unet
from dreamix_jax.train import checkpoints, loop as loop_lib, losses, state as state_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
MESH = dict(data=2, fsdp=2, tensor=2)


def _shapes_tiny_config():
  spec = importlib.util.spec_from_file_location("c", ROOT / "configs/cascades/shapes.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config("tiny")


@pytest.fixture(scope="module")
def setup():
  cascade = cascade_lib.Cascade.from_config(_shapes_tiny_config())
  stage = cascade.stage("base")
  initial = cascade.init_params(jax.random.PRNGKey(0), stage)
  params = jax.tree_util.tree_map(  # no zero-initialised layers: every gradient flows
      lambda x: x + 0.05 * jnp.cos(jnp.arange(x.size, dtype=jnp.float32).reshape(x.shape)), initial)
  k = jax.random.split(jax.random.PRNGKey(1), 2)
  video = jnp.tanh(jax.random.normal(k[0], (1,) + stage.shape + (3,)))
  text = jax.random.normal(k[1], (1, cascade.text_len, cascade.text_dim))
  mask = jnp.arange(cascade.text_len)[None] < 5
  b = 4
  batch = dict(video=jnp.repeat(video, b, 0), text=jnp.repeat(text, b, 0),
               text_mask=jnp.repeat(mask, b, 0), temporal_mask=jnp.zeros((b,), jnp.float32))
  layout = parallel.Layout(parallel.make_mesh(MESH))
  return cascade, stage, params, batch, layout, initial


def _step_fn(cascade, stage, optimizer, counter=None):
  apply = cascade.denoiser(stage)
  mixed = objective.make_mixed_loss(losses.make_stage_loss(apply, stage, cascade.schedule), stage,
                                    0.35)

  def loss(params, batch, rng):
    if counter is not None:
      counter.append(1)  # runs once per trace
    return mixed(params, batch, rng)

  return state_lib.make_train_step(loss, optimizer, ema_decay=0.9)


def test_mesh_shape_fills_and_validates():
  assert parallel.mesh_shape({"data": -1}, 8) == (8, 1, 1)
  assert parallel.mesh_shape({"fsdp": -1, "tensor": 2}, 8) == (1, 4, 2)
  assert parallel.mesh_shape({"fsdp": 4}, 8) == (1, 4, 1)
  assert parallel.parse_mesh("data:2,fsdp:2,tensor:2") == MESH
  assert parallel.make_mesh({"fsdp": 4}).devices.size == 4
  for bad, msg in (({"model": 2}, "Unknown mesh axes"), ({"data": -1, "fsdp": -1}, "at most one"),
                   ({"data": 16}, "needs 16 devices"), ({"data": -1, "fsdp": 3}, "not divisible")):
    with pytest.raises(ValueError, match=msg):
      parallel.mesh_shape(bad, 8)
  with pytest.raises(ValueError, match="axis:size"):
    parallel.parse_mesh("fsdp=4")


def test_param_and_state_shardings(setup):
  cascade, stage, _, _, layout, _ = setup
  shardings = cascade_lib.Cascade(cascade.stages, cascade.schedule, cascade.text_len,
                                  cascade.text_dim, layout).param_shardings(stage)
  # The strided 3×3 conv kernel (in 8, out 8): input channels over fsdp, output channels over tensor.
  assert shardings["down_1"]["kernel"].spec == P(None, None, "fsdp", "tensor")
  # The stem's 3 input channels are not divisible by fsdp=2: that axis stays unsharded.
  assert shardings["stem"]["kernel"].spec == P(None, None, None, "tensor")
  optimizer = state_lib.make_optimizer(state_lib.optimizer_config(name="adam"))
  abstract, state_sh = state_lib.abstract_state_shardings(
      layout, cascade.abstract_params(stage), optimizer, ema=True)
  assert state_sh.step.spec == P()
  assert state_sh.ema_params["down_1"]["kernel"].spec == P(None, None, "fsdp", "tensor")
  adam = state_sh.opt_state[1][0]  # chain(clip, adam): ScaleByAdamState
  assert adam.mu["down_1"]["kernel"].spec == adam.nu["down_1"]["kernel"].spec == P(
      None, None, "fsdp", "tensor")
  assert adam.count.spec == P()
  # Adafactor: factored statistics have other shapes and are replicated, never mis-sharded.
  ada = state_lib.make_optimizer(state_lib.optimizer_config(name="adafactor"))
  _, ada_sh = state_lib.abstract_state_shardings(layout, cascade.abstract_params(stage), ada,
                                                 ema=False)
  assert ada_sh.ema_params is None
  assert len(jax.tree_util.tree_leaves(ada_sh.opt_state)) > 0


def test_sharded_init_equals_unsharded(setup):
  cascade, stage, _, _, layout, initial = setup
  sharded = cascade_lib.Cascade(cascade.stages, cascade.schedule, cascade.text_len,
                                cascade.text_dim, layout)
  a = sharded.init_params_sharded(jax.random.PRNGKey(0), stage)
  b = initial
  assert a["down_1"]["kernel"].sharding.spec == P(None, None, "fsdp", "tensor")
  shard = a["down_1"]["kernel"].addressable_shards[0].data
  assert shard.shape == (3, 3, 4, 4)  # (3, 3, 8, 8): each device holds a quarter
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def trained(setup, tmp_path_factory):
  """Three mixed steps on one device and on data=2 × fsdp=2 × tensor=2 (with a trace counter).

  SGD with momentum: its updates are linear in the gradients, so a 1e-5 agreement of the states is
  meaningful (Adam's first steps, ≈ lr·sign(g), turn rounding noise in near-zero gradients into
  lr-sized differences)."""
  cascade, stage, params, batch, layout, _ = setup
  optimizer = optax.sgd(0.1, momentum=0.9)
  loop_cfg = loop_lib.LoopConfig(steps=3, log_every=1, checkpoint_every=3, name="t")
  single, single_hist = loop_lib.run(
      loop_cfg, state_lib.init_state(params, optimizer, ema=True),
      _step_fn(cascade, stage, optimizer), lambda s: batch, checkpoint_dir=None)
  traces = []
  state, state_sh = state_lib.init_state_on(layout, cascade.abstract_params(stage), params,
                                            optimizer, ema=True)
  ckpt_dir = str(tmp_path_factory.mktemp("ckpt"))
  sharded, sharded_hist = loop_lib.run(
      loop_cfg, state, _step_fn(cascade, stage, optimizer, traces), lambda s: batch,
      checkpoint_dir=ckpt_dir, layout=layout, state_shardings=state_sh)
  return single, single_hist, sharded, sharded_hist, traces, ckpt_dir, state_sh, optimizer


def test_sharded_mixed_step_equals_single_device(trained):
  single, single_hist, sharded, sharded_hist, *_ = trained
  for key in ("loss", "loss_video", "loss_frames", "grad_norm"):
    np.testing.assert_allclose([h[key] for h in sharded_hist], [h[key] for h in single_hist],
                               rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves((single.params, single.ema_params, single.opt_state)),
                  jax.tree_util.tree_leaves((sharded.params, sharded.ema_params,
                                             sharded.opt_state))):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)
  kernel = sharded.params["down_1"]["kernel"]
  assert kernel.sharding.spec == P(None, None, "fsdp", "tensor")
  assert len(kernel.sharding.device_set) == 8


def test_train_loop_compiles_once(trained):
  traces = trained[4]
  assert len(traces) == 1


def test_checkpoint_restores_onto_another_mesh(setup, trained):
  cascade, stage, *_ = setup
  _, _, sharded, _, _, ckpt_dir, _, optimizer = trained
  other = parallel.Layout(parallel.make_mesh({"fsdp": 4, "tensor": 2}))
  abstract, other_sh = state_lib.abstract_state_shardings(
      other, cascade.abstract_params(stage), optimizer, ema=True)
  template = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, other_sh)
  ckpt = checkpoints.TrainCheckpointer(ckpt_dir)
  restored, meta = ckpt.restore(template)
  ckpt.close()
  assert int(restored.step) == 3
  kernel = restored.params["down_1"]["kernel"]
  assert kernel.sharding.mesh.shape == {"data": 1, "fsdp": 4, "tensor": 2}
  assert kernel.addressable_shards[0].data.shape == (3, 3, 2, 4)
  for a, b in zip(jax.tree_util.tree_leaves(sharded), jax.tree_util.tree_leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_unet_gradient_on_three_axis_mesh(setup):
  """The bare U-Net's parameter gradient on data=2 × fsdp=2 × tensor=2 equals one device's.

  A regression test for the 'activation_batch' rule: with it ordered ("data", "fsdp") this
  gradient was off by ~6% of its largest entry (forward exact); see parallel.DEFAULT_RULES."""
  cascade, stage, params, _, layout, _ = setup
  apply = cascade.denoiser(stage)
  b, t = 4, stage.shape[0]
  k = jax.random.split(jax.random.PRNGKey(5), 4)
  z = jax.random.normal(k[0], (b,) + stage.shape + (3,))
  lam = jax.random.uniform(k[1], (b, t), minval=-5.0, maxval=5.0)
  text = jax.random.normal(k[2], (b, cascade.text_len, cascade.text_dim))
  text_mask = jnp.arange(cascade.text_len)[None].repeat(b, 0) < 5
  frame_mask = (jnp.arange(b) >= b // 2).astype(jnp.float32)
  weights = jax.random.normal(k[3], z.shape)

  def grad(p):
    return jax.grad(lambda q: jnp.sum(apply(q, z, lam, text, text_mask,
                                            temporal_mask=frame_mask) * weights))(p)

  expected = jax.jit(grad)(params)
  shardings = cascade_lib.Cascade(cascade.stages, cascade.schedule, cascade.text_len,
                                  cascade.text_dim, layout).param_shardings(stage)
  got = jax.jit(layout.wrap(grad), out_shardings=shardings)(jax.device_put(params, shardings))
  scale = max(float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(expected))
  for a, e in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=0, atol=1e-5 * scale)


def test_sharded_sampling_equals_unsharded(setup):
  cascade, _, params, batch, layout, _ = setup
  sharded = cascade_lib.Cascade(cascade.stages, cascade.schedule, cascade.text_len,
                                cascade.text_dim, layout)
  text, mask = batch["text"][:2], batch["text_mask"][:2]
  rng = jax.random.PRNGKey(7)
  # The base sampler: guided (conditional and unconditional branches), temporal attention.
  expected = cascade.sample({"base": params}, text, mask, rng, upto="base")["base"]
  got = sharded.sample({"base": params}, text, mask, rng, upto="base")["base"]
  assert len(got.sharding.device_set) == 8
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5)


def test_remat_policies_keep_params_and_gradients(setup):
  cascade, stage, params, batch, *_ = setup
  grads = {}
  for policy in ("none", "dots_saveable"):
    backbone = unet.UNetBackbone(dataclasses.replace(stage.backbone.config, remat=policy))
    s = dataclasses.replace(stage, backbone=backbone)
    loss_fn = losses.make_stage_loss(cascade.denoiser(s), s, cascade.schedule)
    assert jax.tree_util.tree_structure(cascade.abstract_params(s)) == \
        jax.tree_util.tree_structure(cascade.abstract_params(stage))
    grads[policy] = jax.jit(jax.grad(lambda p: loss_fn(p, batch, jax.random.PRNGKey(0)).mean()))(
        params)
  for a, b in zip(jax.tree_util.tree_leaves(grads["none"]),
                  jax.tree_util.tree_leaves(grads["dots_saveable"])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert unet.UNetConfig(remat=True).remat is True  # bool configs still mean 'full' / 'none'
  with pytest.raises(ValueError, match="remat"):
    unet.UNetConfig(remat="sometimes")
