"""Helpers for `configs/`: argument strings and stage/cascade ConfigDicts.

Config files follow big_vision: `get_config(arg=None)` where `arg` is a comma-separated string such as
`"runlocal,video=clip.mp4,prompt=a red circle"`; `parse_arg` turns it into a locked ConfigDict of typed
defaults, so a misspelt key is an error.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from dreamix_jax.diffusion import sampling
from dreamix_jax.backbones import unet as unet_lib


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses `"a=1,flag,b=x"` against `defaults` (which fix each key's type).

  A bare name sets a boolean default to True. Unknown keys are errors listing the valid ones.
  """
  out = ml_collections.ConfigDict(defaults)
  if not arg:
    out.lock()
    return out
  for part in arg.split(","):
    part = part.strip()
    if not part:
      continue
    key, has_value, value = part.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"Unknown config argument {key!r}; valid arguments: {sorted(defaults)}.")
    default = defaults[key]
    if not has_value:
      if not isinstance(default, bool):
        raise ValueError(f"Config argument {key!r} needs a value ({key}=...).")
      out[key] = True
    elif isinstance(default, bool):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"Config argument {key}={value!r} must be true or false.")
      out[key] = value.lower() in ("true", "1")
    elif default is None or isinstance(default, str):
      out[key] = value
    else:
      out[key] = type(default)(value)
  out.lock()
  return out


def stage(kind: str, frames: int, height: int, width: int, fps: float, *, factor: int = 1,
          unet: dict | None = None, backbone: dict | None = None, sampler: dict,
          cond_aug_t: float = 0.0, cond_aug_max_t: float = 0.0, chunk_frames: int = 0,
          finetune: bool = True) -> ml_collections.ConfigDict:
  """One stage's ConfigDict (fields of `dreamix_jax.cascade.Stage`).

  The backbone is the space-time U-Net with the fields in `unet` (the backbone dict then holds
  `name='unet'` and every `UNetConfig` field, defaults filled in, `conditional` following `kind`),
  or any registered backbone given whole as `backbone` (`name` plus its fields). The sampler dict
  holds every `SamplerConfig` field. So each can be set from the command line (but for None-valued
  ones, which ml_collections cannot override there: set those in the config file)."""
  if (unet is None) == (backbone is None):
    raise ValueError("Give a stage either `unet` fields or a whole `backbone` dict.")
  if unet is not None:
    backbone = {"name": "unet", **dataclasses.asdict(unet_lib.UNetConfig()),
                "conditional": kind != "base", **unet}
  sampler = {**dataclasses.asdict(sampling.SamplerConfig()), **sampler}
  return ml_collections.ConfigDict(dict(
      kind=kind, frames=frames, height=height, width=width, fps=fps, factor=factor,
      backbone=backbone,
      sampler=dict(sampler), cond_aug_t=cond_aug_t, cond_aug_max_t=cond_aug_max_t,
      chunk_frames=chunk_frames, finetune=finetune))


def cascade(name: str, stages: dict[str, ml_collections.ConfigDict], *, text_len: int,
            text_dim: int, logsnr_min: float = -20.0, logsnr_max: float = 20.0,
            schedule: dict | None = None, autoencoder: dict | None = None
            ) -> ml_collections.ConfigDict:
  """A cascade ConfigDict; stage order is the dict's order. The schedule is the cosine log-SNR
  schedule on [logsnr_min, logsnr_max] unless `schedule` gives another
  (`diffusion.schedules.from_config`); the autoencoder is the identity unless `autoencoder` names
  one (`dreamix_jax.autoencoders`)."""
  return ml_collections.ConfigDict(dict(
      name=name, order=tuple(stages), stages=stages,
      schedule=schedule or dict(kind="cosine", logsnr_min=logsnr_min, logsnr_max=logsnr_max),
      autoencoder=autoencoder or dict(name="identity"),
      text=dict(max_length=text_len, dim=text_dim)))


# --------------------------------------------------------------------------------------------------
# Checks the jobs run on config values before anything is loaded or written. Each raises a
# ValueError naming the field and what it accepts (the entry point turns it into exit code 2).

def field(config: ml_collections.ConfigDict, dotted: str) -> Any:
  """The value of the config field `dotted`, e.g. "text.t5_dir"."""
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def check_path_component(field: str, value: Any) -> str:
  """`value` as one plain folder name: it is joined under the workdir, so an absolute path, `..`
  or a separator would write (and, with overwrite, delete) outside it."""
  text = value if isinstance(value, str) else ""
  if not text or text in (".", "..") or any(c in text for c in ("/", "\\", "\0")):
    raise ValueError(f"config.{field}={value!r} must be one plain folder name (non-empty, no '/' "
                     "or '\\', not '.' or '..', no NUL): it names a folder "
                     f"inside the workdir; fix --config.{field}.")
  return text


def check_not_empty(field: str, values: Any) -> None:
  """A list the job iterates over (prompts, seeds, noise levels, a grid) must hold at least one
  item, or the run would end 'successfully' with nothing made."""
  if not values:
    raise ValueError(f"config.{field} is empty: give at least one, e.g. "
                     f"--config.{field}='(...,)'.")


def check_stage(field: str, value: Any, stages, *, empty_means: str = "") -> None:
  """`value` must be one of the cascade's `stages` (or "" where `empty_means` says what that
  stands for)."""
  if value == "" and empty_means:
    return
  if value not in tuple(stages):
    allowed = f"one of {list(stages)}" + (f" or '' ({empty_means})" if empty_means else "")
    raise ValueError(f"config.{field}={value!r} is not a stage of the cascade; use {allowed}: fix "
                     f"--config.{field}.")
