"""LPIPS parity with a plain-PyTorch reference of lpips 0.1.4, weight import, temporal LPIPS.

The reference is written here with torch.nn layers because the `lpips` package needs torchvision,
whose PyPI wheels need CUDA torch (its `_C.so` links `libtorch_cuda.so`); this CPU-torch
environment cannot import it. It follows lpips 0.1.4 line by line: torchvision's `features`
layout and slice boundaries, `ScalingLayer` constants, `normalize_tensor`, `NetLinLayer`
(dropout + bias-free 1×1 conv, hence the `lin{k}.model.1.weight` names) and `spatial_average`.
"""

import subprocess
import sys

import jax
import numpy as np
import pytest
import safetensors.numpy
import torch
from torch import nn

from dreamix_jax.metrics import frames
from dreamix_jax.metrics import lpips
from dreamix_jax.tools import convert_lpips

_VGG_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
               "M"]
# lpips.pretrained_networks: the `features` index ranges of the five slices.
_SLICES = {"vgg": [(0, 4), (4, 9), (9, 16), (16, 23), (23, 30)],
           "alex": [(0, 2), (2, 5), (5, 8), (8, 10), (10, 12)]}
_CHANNELS = {"vgg": [64, 128, 256, 512, 512], "alex": [64, 192, 384, 256, 256]}


def _torchvision_features(net):
  """torchvision's vgg16().features / alexnet().features, same indices."""
  if net == "alex":
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(), nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
  layers, channels = [], 3
  for item in _VGG_LAYOUT:
    if item == "M":
      layers.append(nn.MaxPool2d(2, 2))
    else:
      layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU()]
      channels = item
  return nn.Sequential(*layers)


class _NetLinLayer(nn.Module):

  def __init__(self, channels):
    super().__init__()
    self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))


class _ReferenceLpips(nn.Module):
  """lpips.LPIPS(net=..., version="0.1") forward, with a random trunk and non-negative heads."""

  def __init__(self, net):
    super().__init__()
    self.features = _torchvision_features(net)
    self.slices = _SLICES[net]
    self.lins = nn.ModuleList([_NetLinLayer(c) for c in _CHANNELS[net]])
    for lin in self.lins:
      nn.init.uniform_(lin.model[1].weight, 0.0, 1.0)
    self.register_buffer("shift", torch.tensor([-.030, -.088, -.188])[None, :, None, None])
    self.register_buffer("scale", torch.tensor([.458, .448, .450])[None, :, None, None])

  def backbone_state_dict(self):
    return {f"features.{k}": v for k, v in self.features.state_dict().items()}

  def heads_state_dict(self):
    return {f"lin{k}.model.1.weight": lin.model[1].weight for k, lin in enumerate(self.lins)}

  def _taps(self, x):
    taps = []
    for start, stop in self.slices:
      for i in range(start, stop):
        x = self.features[i](x)
      taps.append(x)
    return taps

  def forward(self, in0, in1):
    outs0 = self._taps((in0 - self.shift) / self.scale)
    outs1 = self._taps((in1 - self.shift) / self.scale)
    val = 0
    for lin, f0, f1 in zip(self.lins, outs0, outs1):
      f0 = f0 / (torch.sqrt(torch.sum(f0**2, dim=1, keepdim=True)) + 1e-10)
      f1 = f1 / (torch.sqrt(torch.sum(f1**2, dim=1, keepdim=True)) + 1e-10)
      val = val + lin.model((f0 - f1)**2).mean([2, 3], keepdim=True)
    return val.reshape(-1)


def _save_pth(state, path):
  torch.save({k: v.detach().clone() for k, v in state.items()}, path)


@pytest.fixture(scope="module", params=["vgg", "alex"])
def reference(request, tmp_path_factory):
  """(net, torch reference, backbone .pth path, heads .pth path, LpipsModel loaded from them)."""
  net = request.param
  torch.manual_seed(0)
  ref = _ReferenceLpips(net).eval()
  out = tmp_path_factory.mktemp(f"lpips_{net}")
  backbone = dict(ref.backbone_state_dict())
  backbone["classifier.0.weight"] = torch.zeros(4, 8)  # torchvision files carry the classifier
  _save_pth(backbone, out / "backbone.pth")
  _save_pth(ref.heads_state_dict(), out / "heads.pth")
  model = lpips.LpipsModel.from_torch(str(out / "backbone.pth"), str(out / "heads.pth"))
  return net, ref, out / "backbone.pth", out / "heads.pth", model


def test_parity_with_reference(reference):
  net, ref, _, _, model = reference
  assert model.net == net
  rng = np.random.default_rng(0)
  x0 = rng.uniform(-1, 1, size=(3, 64, 64, 3)).astype(np.float32)
  x1 = rng.uniform(-1, 1, size=(3, 64, 64, 3)).astype(np.float32)
  x1[2] = x0[2]  # identical pair
  with torch.no_grad():
    want = ref(*(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()) for x in (x0, x1))).numpy()
  got = model(x0, x1)
  assert got.shape == (3,)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  assert got[2] == pytest.approx(0.0, abs=1e-9)  # 0 up to batch-dependent conv rounding
  assert np.all(got[:2] > 0.01)


def test_converted_safetensors_round_trip(reference, tmp_path):
  net, _, backbone_path, heads_path, model = reference
  out = tmp_path / "lpips.safetensors"
  assert convert_lpips.convert(str(backbone_path), str(heads_path), str(out)) == net
  assert [p.name for p in tmp_path.iterdir()] == ["lpips.safetensors"]  # no temporary left
  converted = lpips.LpipsModel.from_safetensors(str(out))
  assert converted.net == net
  jax.tree.map(np.testing.assert_array_equal, converted.variables, model.variables)


@pytest.fixture(scope="module")
def alex_state():
  torch.manual_seed(1)
  ref = _ReferenceLpips("alex")
  backbone = {k: v.numpy() for k, v in ref.backbone_state_dict().items()}
  heads = {k: v.detach().numpy() for k, v in ref.heads_state_dict().items()}
  return backbone, heads


def test_convert_command_line(alex_state, tmp_path):
  backbone, heads = alex_state
  _save_pth({k: torch.from_numpy(v) for k, v in backbone.items()}, tmp_path / "alexnet.pth")
  _save_pth({k: torch.from_numpy(v) for k, v in heads.items()}, tmp_path / "alex.pth")
  out = tmp_path / "alex.safetensors"
  subprocess.run([sys.executable, "-m", "dreamix_jax.tools.convert_lpips",
                  f"--backbone={tmp_path / 'alexnet.pth'}", f"--heads={tmp_path / 'alex.pth'}",
                  f"--out={out}"], check=True, capture_output=True)
  net, converted_backbone, converted_heads = lpips.load_converted(str(out))
  assert net == "alex"
  assert converted_backbone.keys() == backbone.keys()
  for name, value in heads.items():
    np.testing.assert_array_equal(converted_heads[name], value)


def test_import_rejects_missing_and_unexpected_tensors(alex_state):
  backbone, heads = alex_state
  missing = {k: v for k, v in backbone.items() if k != "features.8.bias"}
  with pytest.raises(ValueError, match=r"backbone .*missing tensors \['features.8.bias'\]"):
    lpips.params_from_state_dicts("alex", missing, heads)
  extra = dict(heads, **{"lin5.model.1.weight": np.ones((1, 8, 1, 1), np.float32)})
  with pytest.raises(ValueError, match=r"heads .*unexpected tensors \['lin5.model.1.weight'\]"):
    lpips.params_from_state_dicts("alex", backbone, extra)


def test_import_rejects_misshaped_tensor(alex_state):
  backbone, heads = alex_state
  broken = dict(backbone, **{"features.3.weight": np.zeros((192, 64, 3, 3), np.float32)})
  with pytest.raises(ValueError, match=r"features.3.weight has shape \(192, 64, 3, 3\)"):
    lpips.params_from_state_dicts("alex", broken, heads)


def test_import_rejects_negative_heads(alex_state):
  backbone, heads = alex_state
  negative = dict(heads, **{"lin2.model.1.weight": -np.ones((1, 384, 1, 1), np.float32)})
  with pytest.raises(ValueError, match="lin2.model.1.weight has negative weights"):
    lpips.params_from_state_dicts("alex", backbone, negative)


def test_infer_net_and_unknown_net(alex_state):
  backbone, _ = alex_state
  assert lpips.infer_net(backbone) == "alex"
  assert lpips.infer_net({"features.0.weight": np.zeros((64, 3, 3, 3))}) == "vgg"
  with pytest.raises(ValueError, match="squeeze"):
    lpips.name_map("squeeze")


def test_torch_files_need_torch(tmp_path, monkeypatch):
  path = tmp_path / "heads.pth"
  path.write_bytes(b"")
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(ImportError, match="convert_lpips"):
    lpips.load_torch_state_dict(str(path))


def test_non_lpips_safetensors_is_rejected(tmp_path):
  path = tmp_path / "other.safetensors"
  safetensors.numpy.save_file({"x": np.zeros(2, np.float32)}, str(path))
  with pytest.raises(ValueError, match="not an LPIPS file"):
    lpips.load_converted(str(path))
  with pytest.raises(FileNotFoundError, match="convert_lpips"):
    lpips.load_converted(str(tmp_path / "absent.safetensors"))


@pytest.fixture(scope="module")
def alex_model(alex_state):
  return lpips.LpipsModel.from_state_dicts("alex", *alex_state)


def test_temporal_lpips_of_static_video_is_zero(alex_model):
  frame = np.random.default_rng(2).integers(0, 256, size=(1, 40, 60, 3), dtype=np.uint8)
  video = np.repeat(frame, 12, axis=0)
  got = lpips.temporal_lpips(video, alex_model, fps=10, resize_to=64, crop_to=64)
  assert got == pytest.approx(0.0, abs=1e-9)  # 0 up to batch-dependent conv rounding


def test_temporal_lpips_is_mean_over_consecutive_subsampled_pairs(alex_model):
  video = np.random.default_rng(3).uniform(-1, 1, size=(12, 40, 60, 3)).astype(np.float32)
  got = lpips.temporal_lpips(video, alex_model, fps=10, resize_to=64, crop_to=64)
  kept = frames.paper_frames(video, fps=10, resize_to=64, crop_to=64) * 2 - 1
  assert kept.shape == (6, 64, 64, 3)  # frames 0, 2, ..., 10
  pairwise = alex_model(kept[:-1], kept[1:])
  assert got > 0
  np.testing.assert_allclose(got, pairwise.mean(), rtol=1e-5)
  with pytest.raises(ValueError, match="at least 2 frames"):
    lpips.temporal_lpips(video[:1], alex_model, fps=10, resize_to=64, crop_to=64)
