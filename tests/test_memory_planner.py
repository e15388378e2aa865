"""The memory planner (`python -m dreamix_jax.tools.memory`): per-device bytes from an ahead-of-time
compile of the mixed finetune step, on simulated CPU devices and (when libtpu is installed) for a
TPU topology."""

import importlib.util
import math

import jax
import pytest

from dreamix_jax import cascade as cascade_lib, parallel
from dreamix_jax.tools import memory
from dreamix_jax.train import state as state_lib
from config_loading import load

@pytest.fixture(scope="module")
def tiny():
  return load("configs/cascades/shapes.py:tiny")


@pytest.fixture(scope="module")
def plans(tiny):
  """The tiny base stage planned with Adam on one device and on fsdp=4 (compiled), Adafactor on
  fsdp=4 (its analytic state bytes only)."""
  one = parallel.Layout(parallel.make_mesh({"fsdp": 1}))
  four = parallel.Layout(parallel.make_mesh({"fsdp": 4}))
  return dict(adam1=memory.plan(tiny, "base", one, optimizer="adam"),
              adam4=memory.plan(tiny, "base", four, optimizer="adam", hbm_bytes=1024),
              adafactor4=memory.plan(tiny, "base", four, optimizer="adafactor", compile=False))


def test_plan_counts_parameters_and_optimizer_bytes(plans, tiny):
  """Parameter and Adam bytes equal those of a real initialisation and a real `opt.init`; fsdp=4
  holds far less per device; Adafactor's factored moments are smaller than Adam's."""
  one, four, ada = plans["adam1"], plans["adam4"], plans["adafactor4"]
  cascade = cascade_lib.Cascade.from_config(tiny)
  params = cascade.init_params(jax.random.PRNGKey(0), cascade.stage("base"))
  opt = state_lib.make_optimizer(state_lib.optimizer_config(name="adam", lr=6e-6))
  assert one["params"] == one["gradients"] == _nbytes(params)
  assert one["params_count"] == sum(x.size for x in jax.tree_util.tree_leaves(params))
  assert one["optimizer_state"] == _nbytes(opt.init(params))
  # fsdp=4 shards every weight whose input channels it divides: far less than a full copy each.
  assert four["params"] < one["params"] / 2
  assert 2 * four["params"] <= four["optimizer_state"] <= 2 * four["params"] + 64
  assert ada["optimizer_state"] < 1.1 * ada["params"] < four["optimizer_state"]
  assert one["target"] == "cpu"


def test_plan_peak_and_fit(plans, tiny):
  """XLA's buffers of the compiled step against sizes computed here: its arguments are exactly the
  train state (parameters, Adam moments and their int32 count, the int32 step) plus the batch
  (base latents 4×8×16×3 and text 16×64 in float32, the text mask, the temporal mask, the key);
  its temporaries hold at least the gradients; the donated state is aliased. A plan fits a memory
  of its own peak and not one byte less."""
  base = tiny.stages.base
  video = 4 * base.frames * base.height * base.width * 3  # RGB pixels: the base has no autoencoder
  text = 4 * 16 * 64 + 16 + 4 + 8  # float32 text, bool mask, float32 temporal mask, uint32 key
  for name in ("adam1", "adam4"):
    p = plans[name]
    assert p["arguments"] == p["params"] + p["optimizer_state"] + 4 + video + text, name
    assert p["xla_temp"] >= p["gradients"] and p["aliased"] >= p["params"], name
  p = plans["adam1"]
  assert memory.fits(p, p["peak"]) and not memory.fits(p, p["peak"] - 1)
  assert p["fits"] and not plans["adam4"]["fits"]  # 32 GiB; 1 KiB
  text = memory.format_plan(plans["adam4"])
  assert "mesh {'data': 1, 'fsdp': 4, 'tensor': 1} on cpu" in text
  assert text.splitlines()[-1].endswith(": NO")


def test_topology_without_libtpu_says_what_to_install(monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "libtpu" else real(name, *a))
  # The pin JAX's own `tpu` extra names, so the wheel matches the installed JAX.
  with pytest.raises(ValueError, match=r"pip install --no-deps --target DIR 'libtpu==\d+\.\d+\.\d+"):
    memory.topology_devices("v4:2x2x1")


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="the deviceless TPU compile needs the libtpu wheel")
def test_plan_on_a_tpu_topology(tiny):
  devices = memory.topology_devices("v4:2x2x1")
  assert len(devices) == 4 and devices[0].device_kind == "TPU v4"
  layout = parallel.Layout(parallel.make_mesh({"fsdp": 4}, devices=devices))
  p = memory.plan(tiny, "base", layout, optimizer="adam")
  assert p["target"] == "TPU v4" and p["fits"]
  # TPU layouts pad small arrays to whole tiles: at least the analytic state, all of it donated.
  assert p["aliased"] >= p["params"] + p["optimizer_state"]
  assert p["arguments"] > p["aliased"]  # and the batch


# The shape-only path of a diffusers cascade (ModelScope): a toy UNet3D of the tests' size.
TINY_UNET3D = {"block_out_channels": [32, 64], "layers_per_block": 1,
               "down_block_types": ["CrossAttnDownBlock3D", "DownBlock3D"],
               "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D"], "cross_attention_dim": 32,
               "attention_head_dim": 8, "norm_num_groups": 32}


@pytest.fixture(scope="module")
def modelscope_tiny():
  return load("configs/cascades/modelscope.py:tiny")


def _nbytes(tree):
  """Bytes of a tree of arrays or shape structs (global shapes)."""
  return sum(math.prod(leaf.shape) * leaf.dtype.itemsize
             for leaf in jax.tree_util.tree_leaves(tree))


def test_diffusers_cascade_plans_from_shapes_alone(modelscope_tiny):
  """Parameter, gradient and Adam bytes of the toy UNet3D equal those of a real initialisation
  (and diffusers' own parameter count); on fsdp=2, those of the shards one device holds."""
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  one = parallel.Layout(parallel.make_mesh({"fsdp": 1}))
  p = memory.plan(modelscope_tiny, "base", one, optimizer="adam", unet_config=TINY_UNET3D,
                  compile=False)
  with torch.device("meta"):
    reference = diffusers.UNet3DConditionModel(**TINY_UNET3D)
  assert p["params_count"] == sum(t.numel() for t in reference.parameters())
  assert p["latent"] == (4, 4, 4, 4)  # 4 frames of 32×32 pixels, the SD autoencoder's 8×

  # One real initialisation (sharded over fsdp=2; its global arrays are the unsharded state).
  two = parallel.Layout(parallel.make_mesh({"fsdp": 2}))
  sharded = memory.shape_only_cascade(modelscope_tiny, two, TINY_UNET3D)
  params = sharded.init_params_sharded(jax.random.PRNGKey(0), sharded.stage("base"))
  opt = state_lib.make_optimizer(state_lib.optimizer_config(name="adam", lr=1e-5))
  assert p["params"] == p["gradients"] == _nbytes(params) == 4 * p["params_count"]
  assert p["optimizer_state"] == _nbytes(jax.eval_shape(opt.init, params))
  assert 2 * p["params"] < p["optimizer_state"] <= 2 * p["params"] + 64  # mu, nu and a count
  assert p["xla_temp"] is None and "analytic" in memory.format_plan(p)

  p2 = memory.plan(modelscope_tiny, "base", two, optimizer="adam", unet_config=TINY_UNET3D,
                   compile=False)
  device = two.mesh.devices.flat[0]
  held = sum(s.data.nbytes for leaf in jax.tree_util.tree_leaves(params)
             for s in leaf.addressable_shards if s.device == device)
  assert p2["params"] == held < p["params"]


def test_diffusers_cascade_compiles_and_xla_sees_the_planned_state(modelscope_tiny):
  """XLA's argument bytes of the compiled toy step are exactly the analytic state (plus the int32
  step counter) and the batch: float32 video latents 4×4×4×4 and text 77×32, the temporal mask
  and the key (the text mask is dropped: the UNet3D attends to every position)."""
  one = parallel.Layout(parallel.make_mesh({"fsdp": 1}))
  p = memory.plan(modelscope_tiny, "base", one, optimizer="adam", unet_config=TINY_UNET3D,
                  alpha=1.0)
  batch = 4 * (4 * 4 * 4 * 4) + 4 * 77 * 32 + 4 + 8
  assert p["arguments"] == p["params"] + p["optimizer_state"] + 4 + batch
  assert p["xla_temp"] > p["gradients"] and p["fits"]
