"""Backbones: the denoiser networks a cascade stage can use, behind one protocol (`base.Backbone`).

A stage config names its backbone, `stage.backbone.name`, and carries that backbone's fields beside
the name; `make` is the one place that turns it into an object. Adding a backbone: a module in this
package with a frozen dataclass implementing `base.Backbone` and a `from_config(dict)` classmethod,
and one line in `REGISTRY`.
"""

from __future__ import annotations

from typing import Any, Mapping

from dreamix_jax.backbones import base, unet, unet3d

REGISTRY = {
    "unet": unet.UNetBackbone,
    "unet3d": unet3d.UNet3DBackbone,
}


def make(config: Mapping[str, Any]) -> base.Backbone:
  """The backbone a stage config's `backbone` dict names (`name` plus that backbone's fields)."""
  fields = dict(config)
  name = fields.pop("name", None)
  if name not in REGISTRY:
    raise ValueError(f"Unknown backbone {name!r}; stage.backbone.name must be one of "
                     f"{sorted(REGISTRY)}.")
  return base.check(REGISTRY[name].from_config(fields))
