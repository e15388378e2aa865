"""LPIPS (Zhang et al., 2018) in Flax Linen with VGG16 / AlexNet trunks, and temporal LPIPS.

The paper measures stability with LPIPS between consecutive frames (Dreamix App. G), averaged over
the pairs of a video. LPIPS v0.1 of an image pair `(x0, x1)` in [-1, 1]:
  1. scaling layer: `(x − shift) / scale` with lpips' fixed per-channel constants;
  2. the trunk's activations at five taps (VGG16: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3;
     AlexNet: relu1..relu5), each unit-normalised over channels (`f / (‖f‖₂ + 1e-10)`);
  3. per tap, a learned non-negative 1×1 head (no bias) on the squared difference, averaged over
     space; 4. the sum over taps.

Weights: the trunk is torchvision's `vgg16` / `alexnet` `features` state dict (the
`vgg16-*.pth` / `alexnet-*.pth` files; the classifier tensors in them are not used), the heads are
lpips' `weights/v0.1/{vgg,alex}.pth` (`lin{k}.model.1.weight`, shape (1, C, 1, 1)). They load from
those PyTorch files (needs torch) or from one safetensors file written by
`python -m dreamix_jax.tools.convert_lpips` (no torch at run time), through one explicit name map.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dreamix_jax import weight_files as weight_io
from dreamix_jax.data import outputs
from dreamix_jax.metrics import frames as frames_lib

_PRECISION = jax.lax.Precision.HIGHEST
# lpips.ScalingLayer: maps [-1, 1] inputs to the trunk's ImageNet normalisation.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
_EPS = 1e-10


@dataclasses.dataclass(frozen=True)
class ConvSpec:
  """A conv of torchvision's `features` at index `index`, followed by a ReLU."""
  index: int
  out_channels: int
  kernel: int
  stride: int
  padding: int


@dataclasses.dataclass(frozen=True)
class TrunkSpec:
  """A feature trunk: stages of (optional max pool, convs), each stage ending at an LPIPS tap.

  `pool` is (window, stride) of the max pools; `pooled_stages` are the stages that open with one.
  """
  stages: tuple[tuple[ConvSpec, ...], ...]
  pool: tuple[int, int]
  pooled_stages: tuple[int, ...]

  @property
  def tap_channels(self) -> tuple[int, ...]:
    return tuple(stage[-1].out_channels for stage in self.stages)

  @property
  def convs(self) -> tuple[ConvSpec, ...]:
    return tuple(conv for stage in self.stages for conv in stage)


def _vgg_stage(first_index: int, channels: int, num_convs: int) -> tuple[ConvSpec, ...]:
  return tuple(ConvSpec(first_index + 2 * i, channels, 3, 1, 1) for i in range(num_convs))


# torchvision vgg16().features: conv/relu pairs, max pools at 4, 9, 16, 23.
VGG16 = TrunkSpec(stages=(_vgg_stage(0, 64, 2), _vgg_stage(5, 128, 2), _vgg_stage(10, 256, 3),
                          _vgg_stage(17, 512, 3), _vgg_stage(24, 512, 3)),
                  pool=(2, 2), pooled_stages=(1, 2, 3, 4))
# torchvision alexnet().features: max pools (3, stride 2) at 2 and 5; taps after every ReLU.
ALEXNET = TrunkSpec(stages=((ConvSpec(0, 64, 11, 4, 2),), (ConvSpec(3, 192, 5, 1, 2),),
                            (ConvSpec(6, 384, 3, 1, 1),), (ConvSpec(8, 256, 3, 1, 1),),
                            (ConvSpec(10, 256, 3, 1, 1),)),
                    pool=(3, 2), pooled_stages=(1, 2))
TRUNKS = {"vgg": VGG16, "alex": ALEXNET}


class Trunk(nn.Module):
  """torchvision's VGG16 / AlexNet `features`, returning the five LPIPS taps."""
  net: str

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
    """x: (B, H, W, 3) scaled images -> five (B, H_k, W_k, C_k) post-ReLU activations."""
    spec = TRUNKS[self.net]
    window, stride = spec.pool
    taps = []
    for s, stage in enumerate(spec.stages):
      if s in spec.pooled_stages:
        x = nn.max_pool(x, (window, window), strides=(stride, stride), padding="VALID")
      for conv in stage:
        pad = ((conv.padding, conv.padding),) * 2
        x = nn.Conv(conv.out_channels, (conv.kernel, conv.kernel),
                    strides=(conv.stride, conv.stride), padding=pad, precision=_PRECISION,
                    name=f"features_{conv.index}")(x)
        x = nn.relu(x)
      taps.append(x)
    return tuple(taps)


def _unit_normalise(features: jax.Array) -> jax.Array:
  """lpips.normalize_tensor over the channel axis: f / (‖f‖₂ + 1e-10)."""
  return features / (jnp.sqrt(jnp.sum(features**2, axis=-1, keepdims=True)) + _EPS)


class Lpips(nn.Module):
  """LPIPS v0.1 distance with a VGG16 (`net="vgg"`) or AlexNet (`net="alex"`) trunk."""
  net: str

  def setup(self):
    if self.net not in TRUNKS:
      raise ValueError(f"LPIPS net must be one of {sorted(TRUNKS)}, got {self.net!r}.")
    self.trunk = Trunk(self.net)
    self.heads = [self.param(f"lin{k}", nn.initializers.ones, (c,))
                  for k, c in enumerate(TRUNKS[self.net].tap_channels)]

  def features(self, images: jax.Array) -> tuple[jax.Array, ...]:
    """images: (B, H, W, 3) in [-1, 1] -> five unit-normalised (B, H_k, W_k, C_k) taps."""
    scaled = (images - jnp.asarray(SHIFT)) / jnp.asarray(SCALE)
    return tuple(_unit_normalise(f) for f in self.trunk(scaled))

  def distance_from_features(self, feats0, feats1) -> jax.Array:
    """Two outputs of `features` (same shapes) -> (B,) LPIPS distances."""
    total = 0.0
    for head, f0, f1 in zip(self.heads, feats0, feats1):
      weighted = jnp.einsum("bhwc,c->bhw", (f0 - f1)**2, head, precision=_PRECISION)
      total = total + jnp.mean(weighted, axis=(1, 2))
    return total

  def __call__(self, images0: jax.Array, images1: jax.Array) -> jax.Array:
    """images0, images1: (B, H, W, 3) in [-1, 1] -> (B,) LPIPS distances (one trunk pass)."""
    feats = self.features(jnp.concatenate([images0, images1], axis=0))
    batch = images0.shape[0]
    return self.distance_from_features(tuple(f[:batch] for f in feats),
                                       tuple(f[batch:] for f in feats))

  def consecutive(self, frames: jax.Array) -> jax.Array:
    """frames: (N, H, W, 3) in [-1, 1] -> (N − 1,) LPIPS(frame_i, frame_{i+1}), one trunk pass."""
    feats = self.features(frames)
    return self.distance_from_features(tuple(f[:-1] for f in feats), tuple(f[1:] for f in feats))


# ----------------------------------------------------------------------------- weight import

FlaxPath = tuple[str, ...]


def name_map(net: str) -> dict[str, tuple[str, FlaxPath, str]]:
  """PyTorch tensor name -> (source, Flax parameter path, transform) for every parameter.

  `source` is "backbone" (torchvision state dict) or "heads" (lpips head state dict).
  """
  if net not in TRUNKS:
    raise ValueError(f"LPIPS net must be one of {sorted(TRUNKS)}, got {net!r}.")
  specs = {}
  for conv in TRUNKS[net].convs:
    module = ("trunk", f"features_{conv.index}")
    specs[f"features.{conv.index}.weight"] = ("backbone", module + ("kernel",), "conv")
    specs[f"features.{conv.index}.bias"] = ("backbone", module + ("bias",), "copy")
  for k in range(len(TRUNKS[net].stages)):
    specs[f"lin{k}.model.1.weight"] = ("heads", (f"lin{k}",), "head")
  return specs


_TRANSFORMS = {
    "conv": lambda w: w.transpose(2, 3, 1, 0),  # (O, I, kh, kw) -> (kh, kw, I, O)
    "head": lambda w: w.reshape(-1),  # (1, C, 1, 1) -> (C,)
    "copy": lambda w: w,
}
# The torchvision files also hold the ImageNet classifier, which LPIPS does not use.
_UNUSED_BACKBONE_PREFIX = "classifier."


def params_from_state_dicts(net: str, backbone: Mapping[str, np.ndarray],
                            heads: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """Converts torchvision trunk and lpips head tensors to variables of `Lpips(net)`.

  Args:
    net: "vgg" or "alex".
    backbone: torchvision `vgg16` / `alexnet` state dict (name -> array).
    heads: lpips v0.1 head state dict (`lin{k}.model.1.weight`).

  Returns:
    {"params": nested dict} for `Lpips(net).apply`.

  Raises:
    ValueError: naming missing, unexpected or mis-shaped tensors, or negative head weights.
  """
  specs = name_map(net)
  sources = {"backbone": backbone, "heads": heads}
  for source, tensors in sources.items():
    wanted = {name for name, (src, _, _) in specs.items() if src == source}
    missing = sorted(wanted - set(tensors))
    unexpected = sorted(name for name in set(tensors) - wanted
                        if not (source == "backbone" and name.startswith(_UNUSED_BACKBONE_PREFIX)))
    if missing or unexpected:
      raise ValueError(f"LPIPS-{net} {source} weights do not match: missing tensors {missing}, "
                       f"unexpected tensors {unexpected}.")
  expected = jax.eval_shape(Lpips(net).init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32),
                            jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))["params"]
  params: dict[str, Any] = {}
  for name, (source, path, transform) in specs.items():
    raw = np.asarray(sources[source][name], dtype=np.float32)
    value = _TRANSFORMS[transform](raw)
    want = expected
    for key in path:
      want = want[key]
    if value.shape != want.shape:
      raise ValueError(f"LPIPS-{net} {source} tensor {name} has shape {raw.shape}; expected "
                       f"{want.shape} in Flax layout (got {value.shape}).")
    if transform == "head" and np.any(value < 0):
      raise ValueError(f"LPIPS-{net} head {name} has negative weights; LPIPS heads are "
                       "non-negative (lpips clamps them during training).")
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = jnp.asarray(value)
  return {"params": params}


def infer_net(backbone: Mapping[str, np.ndarray]) -> str:
  """"vgg" or "alex" from the first conv of a torchvision state dict (3×3 vs 11×11 kernel)."""
  first = backbone.get("features.0.weight")
  if first is None:
    raise ValueError("Backbone state dict has no features.0.weight; expected torchvision's "
                     "vgg16 or alexnet state dict.")
  kernel = tuple(np.shape(first)[2:])
  nets = {(3, 3): "vgg", (11, 11): "alex"}
  if kernel not in nets:
    raise ValueError(f"features.0.weight has kernel {kernel}: neither vgg16 (3×3) nor alexnet "
                     "(11×11).")
  return nets[kernel]


def load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a PyTorch state dict file with `torch.load(weights_only=True)` onto the CPU (through
  `weight_files.torch_state_dict`: torch >= 2.6 only); name -> float32 array."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No PyTorch weights file at {path}.")
  state = weight_io.torch_state_dict(
      path, mmap=False, how_to_convert="convert the weights once with `python -m "
      "dreamix_jax.tools.convert_lpips` and load the safetensors file")
  return {name: weight_io.torch_to_numpy(tensor).astype(np.float32)
          for name, tensor in state.items()}


_FORMAT = "dreamix_jax.lpips"


def save_converted(path: str, net: str, backbone: Mapping[str, np.ndarray],
                   heads: Mapping[str, np.ndarray]) -> None:
  """Validates the weights, then writes them to one safetensors file (atomically).

  Tensors are stored under their PyTorch names prefixed with "backbone." or "heads.";
  the metadata records the net.
  """
  params_from_state_dicts(net, backbone, heads)  # raises on any mismatch before writing
  specs = name_map(net)
  sources = {"backbone": backbone, "heads": heads}
  tensors = {f"{source}.{name}": np.ascontiguousarray(sources[source][name], dtype=np.float32)
             for name, (source, _, _) in specs.items()}
  with outputs.atomic_path(path) as tmp:
    weight_io.save_safetensors(tmp, tensors, {"format": _FORMAT, "net": net})


def load_converted(path: str) -> tuple[str, dict[str, np.ndarray], dict[str, np.ndarray]]:
  """Reads a file written by `save_converted`. Returns (net, backbone, heads)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No converted LPIPS weights at {path}; create them with "
                            "`python -m dreamix_jax.tools.convert_lpips`.")
  parts: dict[str, dict[str, np.ndarray]] = {"backbone": {}, "heads": {}}
  tensors, metadata = weight_io.read_safetensors(path)
  if metadata.get("format") != _FORMAT or "net" not in metadata:
    raise ValueError(f"{path} is not an LPIPS file written by dreamix_jax.tools.convert_lpips "
                     f"(metadata {json.dumps(metadata)}).")
  for name, tensor in tensors.items():
    source, _, torch_name = name.partition(".")
    if source not in parts:
      raise ValueError(f"{path}: tensor {name} is neither backbone.* nor heads.*.")
    parts[source][torch_name] = tensor
  return metadata["net"], parts["backbone"], parts["heads"]


class LpipsModel:
  """A loaded LPIPS metric: `model(x0, x1)` gives (B,) distances of images in [-1, 1]."""

  def __init__(self, net: str, variables: Mapping[str, Any]):
    self.net = net
    self.module = Lpips(net)
    self.variables = variables
    self._distance = jax.jit(self.module.apply)
    self._consecutive = jax.jit(lambda v, x: self.module.apply(v, x, method=Lpips.consecutive))

  @classmethod
  def from_state_dicts(cls, net: str, backbone: Mapping[str, np.ndarray],
                       heads: Mapping[str, np.ndarray]) -> LpipsModel:
    return cls(net, params_from_state_dicts(net, backbone, heads))

  @classmethod
  def from_torch(cls, backbone_path: str, heads_path: str) -> LpipsModel:
    """From torchvision's `vgg16-*.pth` / `alexnet-*.pth` and lpips' `weights/v0.1/*.pth`."""
    backbone = load_torch_state_dict(backbone_path)
    return cls.from_state_dicts(infer_net(backbone), backbone, load_torch_state_dict(heads_path))

  @classmethod
  def from_safetensors(cls, path: str) -> LpipsModel:
    """From a file written by `python -m dreamix_jax.tools.convert_lpips`."""
    return cls.from_state_dicts(*load_converted(path))

  def __call__(self, images0: np.ndarray, images1: np.ndarray) -> np.ndarray:
    """images0, images1: (B, H, W, 3) float in [-1, 1] -> (B,) float32 distances."""
    images0, images1 = jnp.asarray(images0, jnp.float32), jnp.asarray(images1, jnp.float32)
    if images0.shape != images1.shape or images0.ndim != 4 or images0.shape[-1] != 3:
      raise ValueError(f"LPIPS needs two (B, H, W, 3) batches of one shape, got {images0.shape} "
                       f"and {images1.shape}.")
    return np.asarray(self._distance(self.variables, images0, images1))

  def consecutive(self, frames: np.ndarray) -> np.ndarray:
    """frames: (N, H, W, 3) float in [-1, 1], N >= 2 -> (N − 1,) distances of neighbours."""
    frames = jnp.asarray(frames, jnp.float32)
    if frames.ndim != 4 or frames.shape[0] < 2 or frames.shape[-1] != 3:
      raise ValueError(f"Need (N >= 2, H, W, 3) frames, got {frames.shape}.")
    return np.asarray(self._consecutive(self.variables, frames))


def temporal_lpips(video: np.ndarray,
                   lpips_model: LpipsModel,
                   fps: float,
                   *,
                   target_fps: float = frames_lib.PAPER_FPS,
                   max_frames: int = frames_lib.PAPER_MAX_FRAMES,
                   resize_to: int = frames_lib.PAPER_IMAGE_SIZE,
                   crop_to: int = frames_lib.PAPER_IMAGE_SIZE) -> float:
  """Mean LPIPS between consecutive evaluation frames: the stability metric (lower: stabler).

  Args:
    video: (T, H, W, 3) uint8 in [0, 255] or float in [-1, 1].
    lpips_model: the loaded metric.
    fps: frame rate of `video`; frames are subsampled to `target_fps`, at most `max_frames`,
      resized/cropped as for CLIP (see `frames.paper_frames`), then mapped to [-1, 1].

  Returns:
    The mean over the N − 1 consecutive pairs of the N evaluation frames.
  """
  unit = frames_lib.paper_frames(video, fps, target_fps=target_fps, max_frames=max_frames,
                                 resize_to=resize_to, crop_to=crop_to)
  if unit.shape[0] < 2:
    raise ValueError(f"Temporal LPIPS needs at least 2 frames after subsampling to "
                     f"{target_fps} fps; the video gives {unit.shape[0]}.")
  return float(np.mean(lpips_model.consecutive(unit * 2.0 - 1.0)))
