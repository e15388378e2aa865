"""The memory planner (`python -m dreamix_jax.tools.memory`): per-device bytes from an ahead-of-time
compile of the mixed finetune step, on simulated CPU devices and (when libtpu is installed) for a
TPU topology."""

import importlib.util

import pytest

from dreamix_jax import parallel
from dreamix_jax.tools import memory
from config_loading import load

@pytest.fixture(scope="module")
def tiny():
  return load("configs/cascades/shapes.py:tiny")


@pytest.fixture(scope="module")
def plans(tiny):
  """The tiny base stage planned with Adam on one device and on fsdp=4, Adafactor on fsdp=4."""
  one = parallel.Layout(parallel.make_mesh({"fsdp": 1}))
  four = parallel.Layout(parallel.make_mesh({"fsdp": 4}))
  return dict(adam1=memory.plan(tiny, "base", one, optimizer="adam"),
              adam4=memory.plan(tiny, "base", four, optimizer="adam", hbm_bytes=1024),
              adafactor4=memory.plan(tiny, "base", four, optimizer="adafactor"))


def test_plan_counts_parameters_and_optimizer_bytes(plans):
  one, four, ada = plans["adam1"], plans["adam4"], plans["adafactor4"]
  assert one["params"] == 4 * one["params_count"]  # float32, unsharded
  assert one["gradients"] == one["params"]
  # Adam: two parameter-shaped moments plus a step count.
  assert 2 * one["params"] <= one["optimizer_state"] <= 2 * one["params"] + 64
  # fsdp=4 shards every weight whose input channels it divides: far less than a full copy each.
  assert four["params"] < one["params"] / 2
  assert 2 * four["params"] <= four["optimizer_state"] <= 2 * four["params"] + 64
  # Adafactor: no first moment; second moments at most parameter-sized (factored for large dims).
  assert ada["optimizer_state"] < 1.1 * ada["params"] < four["optimizer_state"]
  assert one["target"] == "cpu"


def test_plan_peak_and_fit(plans):
  for p in plans.values():
    assert p["xla_temp"] > 0
    assert p["peak"] == p["arguments"] + p["outputs"] - p["aliased"] + p["xla_temp"]
    assert p["aliased"] > 0  # the train state is donated
  assert plans["adam1"]["fits"] and not plans["adam4"]["fits"]  # the latter against 1 KiB
  text = memory.format_plan(plans["adam4"])
  assert "mesh {'data': 1, 'fsdp': 4, 'tensor': 1} on cpu" in text
  assert text.splitlines()[-1].endswith(": NO")


def test_topology_without_libtpu_says_what_to_install(monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "libtpu" else real(name, *a))
  with pytest.raises(ValueError, match=r"pip install 'jax\[tpu\]=="):
    memory.topology_devices("v4:2x2x1")


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="the deviceless TPU compile needs the libtpu wheel")
def test_plan_on_a_tpu_topology(tiny):
  devices = memory.topology_devices("v4:2x2x1")
  assert len(devices) == 4 and devices[0].device_kind == "TPU v4"
  layout = parallel.Layout(parallel.make_mesh({"fsdp": 4}, devices=devices))
  p = memory.plan(tiny, "base", layout, optimizer="adam")
  assert p["target"] == "TPU v4" and p["xla_temp"] > 0 and p["fits"]
