"""Mixed video-image finetuning of a cascade on one input (paper §4.2, App. C.2).

Each finetuned stage learns to denoise the input at its own resolution, conditioned on the rare
prompt t*: the base on the video downsampled to 16×24×40, an SR stage on (its input view → its output
view) pairs with noise-conditioning augmentation. The objective is α·L_vid + (1 − α)·L_frame (one
jitted step; the frame variant's U-Net call in its frames-only form; see
`dreamix_jax.train.losses.make_mixed_loss`). α = 0 finetunes on frames only (image-to-video and
subject-driven generation, where there is no real video).

Checkpoints go to `<workdir>/finetune/<stage>/` (orbax, resumable: every `checkpoint_every` steps
and `checkpoint_every_minutes`, and on SIGTERM/SIGINT); the finetuned parameters are exported to
`<workdir>/finetuned_cascade/` beside — never over — the pretrained cascade (by process 0).
With `cascade.layout` set, the state is sharded on its mesh and the step is jitted with shardings.
"""

from __future__ import annotations

import contextlib
import os

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from dreamix_jax import cascade as cascade_lib, parallel
from dreamix_jax.dreamix import corrupt
from dreamix_jax.backbones import unet
from dreamix_jax.train import checkpoints, loop as loop_lib, losses, state as state_lib


def finetune_config(**overrides) -> ml_collections.ConfigDict:
  """Defaults from the paper: α = 0.35, 300 steps, Adam at 6e-6, stages base/ssr1/ssr2."""
  cfg = ml_collections.ConfigDict(dict(
      enabled=True, alpha=0.35, steps=300, batch_size=1, prompt="sks", stages=("base", "ssr1", "ssr2"),
      ema_decay=0.0, weighting="v", seed=0, log_every=10, checkpoint_every=100,
      checkpoint_every_minutes=10.0, on_nonfinite="stop",
      optimizer=state_lib.optimizer_config(name="adam", lr=6e-6, grad_clip=1.0)))
  cfg.update(overrides)
  return cfg


def check_config(cfg: ml_collections.ConfigDict) -> None:
  """Raises a ValueError naming the field and its valid range for an out-of-range finetune setting
  (called before a job creates anything; fields a job sets per run, e.g. the sweep's α and steps,
  may be absent)."""
  checks = dict(alpha=(lambda v: 0.0 <= v <= 1.0, "in [0, 1] (the weight of the full-video loss)"),
                steps=(lambda v: v >= 0, "≥ 0"), batch_size=(lambda v: v >= 1, "≥ 1"),
                log_every=(lambda v: v >= 1, "≥ 1"),
                checkpoint_every=(lambda v: v >= 0, "≥ 0 (0: no step-count checkpoints)"),
                checkpoint_every_minutes=(lambda v: v >= 0, "≥ 0 (0: no timed checkpoints)"),
                on_nonfinite=(lambda v: v in ("stop", "skip"), "'stop' or 'skip'"))
  for field, (ok, valid) in checks.items():
    if field in cfg and not ok(cfg[field]):
      raise ValueError(f"finetune.{field} must be {valid}, got {cfg[field]!r}; fix "
                       f"--config.finetune.{field}.")


def stage_views(cascade: cascade_lib.Cascade, video, top_stage: str) -> dict:
  """{stage name: the input at that stage's resolution} for every stage up to `top_stage`.

  video: (1, T, H, W, 3) at `top_stage`'s resolution (a collection of images is packed as the
  frames of one video; with α = 0 their order does not matter).
  """
  views = {}
  for name in cascade.names[:cascade.names.index(top_stage) + 1]:
    views[name] = corrupt.to_stage(cascade, video, top_stage, name)
  return views


def finetune_stage(cascade: cascade_lib.Cascade, stage: cascade_lib.Stage, params, views: dict,
                   text, text_mask, cfg: ml_collections.ConfigDict, workdir: str | None):
  """Finetunes one stage; returns (params to sample with, logged metrics).

  views: stage name -> (1, T, H, W, 3) input views; text, text_mask: (1, L, D), (1, L) for t*.
  """
  _, apply = unet.make_denoiser(stage.unet)
  loss_fn = losses.make_stage_loss(apply, stage, cascade.schedule, weighting=cfg.weighting)
  mixed = losses.make_mixed_loss(loss_fn, stage, cfg.alpha)
  optimizer = state_lib.make_optimizer(cfg.optimizer)
  step_fn = state_lib.make_train_step(mixed, optimizer, ema_decay=cfg.ema_decay,
                                      learning_rate=state_lib.learning_rate_schedule(cfg.optimizer))
  layout, state_shardings = cascade.layout, None
  if layout is None:
    train_state = state_lib.init_state(params, optimizer, ema=cfg.ema_decay > 0)
  else:
    train_state, state_shardings = state_lib.init_state_on(
        layout, cascade.abstract_params(stage), params, optimizer, ema=cfg.ema_decay > 0)

  b = cfg.batch_size
  rep = lambda x: jnp.repeat(x, b, axis=0)
  batch = dict(video=rep(views[stage.name]), text=rep(text), text_mask=rep(text_mask),
               temporal_mask=jnp.zeros((b,), jnp.float32))
  if stage.kind != "base":
    batch["low"] = rep(views[cascade.names[cascade.names.index(stage.name) - 1]])

  loop_cfg = loop_lib.LoopConfig(steps=cfg.steps, seed=cfg.seed, log_every=cfg.log_every,
                                 checkpoint_every=cfg.checkpoint_every,
                                 checkpoint_every_minutes=cfg.get("checkpoint_every_minutes", 0.0),
                                 on_nonfinite=cfg.on_nonfinite, name=f"finetune/{stage.name}")
  ckpt_dir = os.path.join(workdir, "finetune", stage.name) if workdir else None
  final, history = loop_lib.run(loop_cfg, train_state, step_fn, lambda step: batch,
                                checkpoint_dir=ckpt_dir, meta={"stage": stage.name},
                                layout=layout, state_shardings=state_shardings)
  return final.eval_params, history


def finetune_cascade(cascade: cascade_lib.Cascade, params: dict, video, text, text_mask,
                     cfg: ml_collections.ConfigDict, workdir: str | None,
                     cascade_config: ml_collections.ConfigDict | None = None, timer=None):
  """Finetunes `cfg.stages` (those the cascade has) on `video`, returns (new params, histories).

  video: (1, T, H, W, 3) at the resolution of the highest finetuned stage. The finetuned stages are
  exported to `<workdir>/finetuned_cascade/` when a workdir is given. With a `timer`
  (`jobs.common.Timer`) each stage is timed as phase `finetune_<stage>`.
  """
  names = [n for n in cascade.names if n in cfg.stages]
  unknown = sorted(set(cfg.stages) - set(cascade.names))
  if unknown:
    logging.warning("finetune.stages names %s, which this cascade (%s) does not have; skipped.",
                    unknown, cascade.names)
  if not names:
    return params, {}
  views = stage_views(cascade, video, names[-1])
  new_params, histories = dict(params), {}
  for name in names:
    with timer(f"finetune_{name}") if timer else contextlib.nullcontext():
      new_params[name], histories[name] = finetune_stage(
          cascade, cascade.stage(name), params[name], views, text, text_mask, cfg, workdir)
      if timer:
        new_params[name] = jax.block_until_ready(new_params[name])
    if workdir:
      host_params = parallel.to_host(new_params[name])  # every process takes part in the gather
    if workdir and parallel.is_primary():
      checkpoints.save_cascade_stage(os.path.join(workdir, "finetuned_cascade"), name,
                                     host_params, cascade_config,
                                     metadata={"finetuned_on": "input", "steps": str(cfg.steps),
                                               "alpha": str(cfg.alpha)})
  return new_params, histories


def top_finetune_stage(cascade: cascade_lib.Cascade, cfg: ml_collections.ConfigDict) -> str:
  """The highest-resolution stage the finetune touches (the base stage when finetuning is off)."""
  names = [n for n in cascade.names if cfg.enabled and n in cfg.stages]
  return names[-1] if names else cascade.names[0]
