"""Autoencoders: where a cascade's diffusion runs. Pixel cascades use the identity; latent ones
(e.g. Stable Diffusion's AutoencoderKL, per frame) encode the video before the stages see it and
decode the last stage's output.

The protocol (`Autoencoder`): `encode(video)` (B, T, H, W, 3) in [−1, 1] → latents
(B, T, H/f, W/f, C), already multiplied by the model's scaling factor; `decode(latents)` the
inverse map back to pixels; `channels` = C; `spatial_factor` = f; `pixel_space`: True for the
identity, which is what turns pixel clipping and dynamic thresholding on. An autoencoder with
weights carries them (it is built by the loader that reads them), so callers pass none.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Protocol

import jax


class Autoencoder(Protocol):
  channels: int
  spatial_factor: int
  pixel_space: bool

  def encode(self, video, rng=None) -> jax.Array: ...

  def decode(self, latents) -> jax.Array: ...


@dataclasses.dataclass(frozen=True)
class Identity:
  """Pixel space: the stages denoise RGB videos directly."""

  channels: int = 3
  spatial_factor: int = 1
  pixel_space: bool = True

  def encode(self, video, rng=None):
    return video

  def decode(self, latents):
    return latents


REGISTRY = {"identity": Identity}


def make(config: Mapping[str, Any] | None) -> Autoencoder:
  """The autoencoder a cascade config's `autoencoder` dict names (`name`; identity when absent).
  Autoencoders with weights are built by their loaders, not from a config alone."""
  fields = dict(config or {"name": "identity"})
  name = fields.pop("name", "identity")
  if name not in REGISTRY:
    raise ValueError(f"Unknown autoencoder {name!r}; cascade.autoencoder.name must be one of "
                     f"{sorted(REGISTRY)}.")
  return REGISTRY[name](**fields)
