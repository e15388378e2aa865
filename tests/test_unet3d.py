"""UNet3D (ModelScope / Zeroscope) parity with diffusers' PyTorch UNet3DConditionModel, the
frames-only variant (against PyTorch run frame by frame with its temporal layers bypassed, and as
invariances), bf16 + remat, and logical sharding of its parameters."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers.models.resnet import TemporalConvLayer
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

from dreamix_jax import parallel
from dreamix_jax.backbones import base
from dreamix_jax.backbones import diffusers_import
from dreamix_jax.backbones import unet3d
from diffusers_tiny import max_rel_error, tiny_unet, write_pipeline

B, T, H, W, C, L = 2, 4, 8, 8, 4, 7
TOL = 1e-4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  model = tiny_unet()
  root = write_pipeline(tmp_path_factory.mktemp("pipe"), unet=model)
  backbone, params = diffusers_import.load_unet(root)
  rng = np.random.default_rng(0)
  z = rng.standard_normal((B, T, H, W, C)).astype(np.float32)
  text = rng.standard_normal((B, L, 32)).astype(np.float32)
  steps = np.array([17.0, 803.5], np.float32)  # fractional: the embedding is sinusoidal
  jitted = jax.jit(backbone.apply, static_argnames=("frames_only",))

  def apply(z, steps=steps, **kw):
    """Our forward on channels-last z (B, T, H, W, C), as numpy."""
    return np.asarray(jitted(params, jnp.asarray(z), jnp.asarray(steps), jnp.asarray(text), None,
                             **kw))

  return dict(model=model, root=root, backbone=backbone, params=params, z=z, text=text,
              steps=steps, apply=apply)


def _torch(model, z, steps, text):
  """PyTorch forward on channels-last z (B, T, H, W, C) -> channels-last output."""
  with torch.no_grad():
    out = model(torch.tensor(z.transpose(0, 4, 1, 2, 3)), torch.tensor(steps),
                torch.tensor(text)).sample
  return out.numpy().transpose(0, 2, 3, 4, 1)


def test_forward_matches_pytorch(setup):
  ref = _torch(setup["model"], setup["z"], setup["steps"], setup["text"])
  out = setup["apply"](setup["z"])
  err = max_rel_error(out, ref)
  print(f"UNet3D forward: max|ref| {np.abs(ref).max():.3f}, relative max error {err:.2e}")
  assert out.shape == (B, T, H, W, C) and out.dtype == np.float32
  assert err <= TOL


def test_frames_only_matches_pytorch_per_frame(setup, monkeypatch):
  """Reference: PyTorch with every temporal layer (transformer_in, temp_convs, temp_attentions)
  replaced by the identity, each frame run alone."""
  model = setup["model"]
  for module in model.modules():
    if isinstance(module, TemporalConvLayer):
      monkeypatch.setattr(module, "forward", lambda h, num_frames=1: h)
    elif isinstance(module, TransformerTemporalModel):
      monkeypatch.setattr(module, "forward", lambda h, *a, **k: (h,))
  ref = np.concatenate([_torch(model, setup["z"][:, j:j + 1], setup["steps"], setup["text"])
                        for j in range(T)], axis=1)
  out = setup["apply"](setup["z"], frames_only=True)
  err = max_rel_error(out, ref)
  print(f"UNet3D frames-only: relative max error {err:.2e}")
  assert err <= TOL


def test_frames_only_invariances(setup):
  z, apply = setup["z"], setup["apply"]
  base_out = apply(z, frames_only=True)
  perm = np.array([2, 0, 3, 1])
  np.testing.assert_allclose(apply(z[:, perm], frames_only=True), base_out[:, perm], atol=1e-5)
  changed = z.copy()
  changed[:, 1] = np.random.default_rng(1).standard_normal(changed[:, 1].shape)
  out = apply(changed, frames_only=True)
  others = [0, 2, 3]
  np.testing.assert_allclose(out[:, others], base_out[:, others], atol=1e-5)
  assert np.abs(out[:, 1] - base_out[:, 1]).max() > 1e-2
  # temporal_mask: 1 bypasses the temporal layers of that example, 0 leaves the full network
  # (called with per-frame (B, T) timesteps equal to the per-example ones: the same values).
  full = apply(z)
  steps = np.repeat(setup["steps"][:, None], T, axis=1)
  mixed = apply(z, steps=steps, temporal_mask=jnp.array([1.0, 0.0]))
  np.testing.assert_allclose(mixed[0], base_out[0], atol=1e-5)
  np.testing.assert_allclose(mixed[1], full[1], atol=1e-5)
  assert np.abs(full[0] - base_out[0]).max() > 1e-2  # the temporal layers do matter
  with pytest.raises(ValueError, match="frames_only"):
    setup["backbone"].apply(setup["params"], z, setup["steps"], setup["text"], None,
                            temporal_mask=jnp.ones(B), frames_only=True)


def test_protocol(setup):
  """The backbone declares what the diffusion package needs; stage configs build it from a
  pipeline folder."""
  backbone = setup["backbone"]
  assert base.check(backbone) is backbone
  assert (backbone.prediction, backbone.time_input, backbone.spatial_factor) == ("eps",
                                                                                "timestep", 2)
  spec = base.InputSpec(2, 4, 4, C, L, 32)
  fresh = jax.eval_shape(lambda key: backbone.init(key, spec), jax.random.PRNGKey(0))
  assert jax.tree_util.tree_map(np.shape, fresh) == jax.tree_util.tree_map(np.shape,
                                                                           setup["params"])
  with pytest.raises(ValueError, match="base-stage"):
    backbone.apply(setup["params"], setup["z"], setup["steps"], setup["text"], None,
                   cond=setup["z"])
  from_cfg = unet3d.UNet3DBackbone.from_config({"pipeline_dir": setup["root"], "dtype": "bfloat16"})
  assert from_cfg.config == dataclasses.replace(backbone.config, dtype="bfloat16")


def test_bfloat16_with_remat_close_to_float32(setup):
  cfg = dataclasses.replace(setup["backbone"].config, dtype="bfloat16", remat="full")
  backbone = unet3d.UNet3DBackbone(cfg)
  args = (jnp.asarray(setup["z"]), setup["steps"], jnp.asarray(setup["text"]), None)
  out = jax.jit(backbone.apply)(setup["params"], *args)
  assert out.dtype == jnp.float32
  assert max_rel_error(out, setup["apply"](setup["z"])) < 0.05
  # The rematerialised backward pass traces (training with dropout and a temporal mask).
  loss = lambda p: jnp.mean(backbone.apply(p, *args, temporal_mask=jnp.array([0.0, 1.0]),
                                           train=True, rng=jax.random.PRNGKey(0)) ** 2)
  grads = jax.eval_shape(jax.grad(loss), setup["params"])
  assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(setup["params"])


def test_parameters_shard_by_logical_names(setup):
  backbone = setup["backbone"]
  spec = base.InputSpec(T, H, W, C, L, 32)
  boxed = backbone.abstract_params(spec)
  names = {n for spec_ in jax.tree_util.tree_leaves(
      nn.get_partition_spec(boxed), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
           for n in spec_ if n is not None}
  assert names <= {name for name, _ in parallel.DEFAULT_RULES}, names
  shapes = jax.tree_util.tree_map(lambda x: x.shape, setup["params"])
  assert jax.tree_util.tree_map(lambda x: x.shape, nn.meta.unbox(boxed)) == shapes
  layout = parallel.Layout(parallel.make_mesh({"fsdp": 4, "tensor": 2}))
  shardings = base.param_shardings(backbone, spec, layout)
  kernel = shardings["down_blocks_0"]["attentions_0"]["transformer_blocks_0"]["attn1"]["to_q"][
      "kernel"]
  assert kernel.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  # The import places every tensor straight onto its shards.
  _, placed = diffusers_import.load_unet(setup["root"], sharding=layout)
  leaf = placed["down_blocks_0"]["attentions_0"]["transformer_blocks_0"]["attn1"]["to_q"]["kernel"]
  assert leaf.sharding.spec == kernel.spec and leaf.addressable_shards[0].data.shape == (8, 16)
  np.testing.assert_array_equal(np.asarray(leaf), np.asarray(
      setup["params"]["down_blocks_0"]["attentions_0"]["transformer_blocks_0"]["attn1"]["to_q"][
          "kernel"]))
