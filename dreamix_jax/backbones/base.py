"""The backbone seam: what a cascade stage needs from its denoiser network.

A backbone is a frozen (hashable) dataclass built from a stage config's `backbone` dict by
`dreamix_jax.backbones.make`; compiled samplers and train steps are cached per backbone, so two
stages with equal backbones share their programs. Everything above it — the diffusion losses and
samplers, the cascade, the Dreamix method — sees only this protocol:

- `init(rng, spec)` / `abstract_params(spec)`: parameters for inputs of `spec` (`InputSpec`);
  the abstract ones are `jax.ShapeDtypeStruct`s boxed with logical axis names (`nn.Partitioned`),
  from which `param_shardings` lays them out on a mesh.
- `apply(params, z, noise_level, text, text_mask, *, cond=None, cond_logsnr=None,
  temporal_mask=None, train=False, rng=None, frames_only=False)`: the pure denoiser call.
  z: (B, T, H, W, C); noise_level: (B,) or (B, T), a log-SNR or a timestep (`time_input`);
  text: (B, L, D); text_mask: (B, L) bool; cond: (B, T, H, W, C_cond) the upsampled,
  noise-augmented previous stage's output (super-resolution stages) and cond_logsnr its level;
  temporal_mask: (B,) 1 where an example is a set of independent images. Returns the prediction
  named by `prediction` ('v' or 'eps'), (B, T, H, W, C) float32.
- The frames-only variant (Dreamix's frame objective) is `apply(..., frames_only=True)` (static):
  every frame computed exactly as if it were alone, so permuting the frames permutes the output
  and changing one frame leaves the others' outputs unchanged.
- `prediction` / `time_input` say what the network was trained for; `diffusion.parametrisation`
  adapts any combination to the sampler's interface (v̂ from z and a log-SNR).
- `spatial_factor`: frame heights and widths must be divisible by it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import flax.linen as nn
import jax

PREDICTIONS = ("v", "eps")
TIME_INPUTS = ("logsnr", "timestep")


@dataclasses.dataclass(frozen=True)
class InputSpec:
  """The shapes a backbone is built for: z (frames, height, width, channels), the text embeddings
  (text_len, text_dim) and, for super-resolution stages, the conditioning video's channels
  (`cond_channels`, 0 for a base stage)."""

  frames: int
  height: int
  width: int
  channels: int
  text_len: int
  text_dim: int
  cond_channels: int = 0


class Backbone(Protocol):
  """See the module docstring."""

  prediction: str
  time_input: str

  @property
  def spatial_factor(self) -> int: ...

  def init(self, rng, spec: InputSpec) -> Any: ...

  def abstract_params(self, spec: InputSpec) -> Any: ...

  def apply(self, params, z, noise_level, text, text_mask, *, cond=None, cond_logsnr=None,
            temporal_mask=None, train=False, rng=None, frames_only=False) -> jax.Array: ...


def param_shardings(backbone: Backbone, spec: InputSpec, layout) -> Any:
  """Shardings of `backbone`'s parameters on `layout` (a `parallel.Layout`), from the logical
  axis names its abstract parameters carry and the layout's rules."""
  return layout.param_shardings(backbone.abstract_params(spec))


def check(backbone: Backbone) -> Backbone:
  """Raises a ValueError if `backbone` declares a prediction or time input the diffusion package
  cannot adapt; returns it."""
  if backbone.prediction not in PREDICTIONS:
    raise ValueError(f"Backbone {type(backbone).__name__} predicts {backbone.prediction!r}; "
                     f"supported: {PREDICTIONS}.")
  if backbone.time_input not in TIME_INPUTS:
    raise ValueError(f"Backbone {type(backbone).__name__} takes {backbone.time_input!r} as its "
                     f"noise level; supported: {TIME_INPUTS}.")
  return backbone


def count_params(params) -> int:
  """Number of parameters of a (possibly boxed, possibly abstract) parameter tree."""
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(nn.meta.unbox(params)))
