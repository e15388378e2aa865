"""Mixed video-image finetuning of a cascade on one input (paper §4.2, App. C.2).

Each finetuned stage learns to denoise the input at its own resolution (through the cascade's
autoencoder), conditioned on the rare prompt t*: the base on the video downsampled to its size, an
SR stage on (its input view → its output view) pairs with noise-conditioning augmentation. The
objective is α·L_vid + (1 − α)·L_frame (one jitted step; `dreamix.objective.make_mixed_loss`).
α = 0 finetunes on frames only (image-to-video and subject-driven generation, where there is no
real video).

Two ways to run it, one trainer (`_trainer`, cached per stage and objective so every finetune with
the same settings reuses its compiled step):
- `finetune_cascade`: the job's finetune. Checkpoints go to `<workdir>/finetune/<stage>/` (orbax,
  resumable: every `checkpoint_every` steps and `checkpoint_every_minutes`, and on SIGTERM/SIGINT);
  the finetuned parameters are exported to `<workdir>/finetuned_cascade/` beside — never over — the
  pretrained cascade (by process 0).
- `finetune_at_steps`: the sweep's, read out at several step counts from one run. Training is a
  pure function of the step (fixed batch, step randomness `fold_in(seed, step)`, a learning-rate
  schedule of the optimizer's update count), so the 150-step parameters of a 300-step run are
  exactly those of a 150-step run: it trains to the smallest count, hands the parameters out and
  continues. With a checkpoint folder each leg (to one count) keeps its own orbax checkpoints, so
  a resumed sweep gets back the exact state at every count it reads.
With `cascade.layout` set, the state is sharded on its mesh and the step is jitted with shardings.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from dreamix_jax import cascade as cascade_lib, parallel
from dreamix_jax.diffusion import parametrisation
from dreamix_jax.dreamix import corrupt, objective
from dreamix_jax.train import checkpoints, loop as loop_lib, losses, state as state_lib


def finetune_config(**overrides) -> ml_collections.ConfigDict:
  """Defaults from the paper: α = 0.35, 300 steps, Adam at 6e-6, stages base/ssr1/ssr2.
  `export`: write the finetuned stages to `<workdir>/finetuned_cascade/` (a cascade directory that
  the sampling jobs read back with --config.checkpoint)."""
  cfg = ml_collections.ConfigDict(dict(
      enabled=True, alpha=0.35, steps=300, batch_size=1, prompt="sks", stages=("base", "ssr1", "ssr2"),
      ema_decay=0.0, weighting="v", seed=0, log_every=10, checkpoint_every=100,
      checkpoint_every_minutes=10.0, on_nonfinite="stop", export=True,
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
  """{stage name: the input at that stage's resolution, encoded} for every stage up to `top_stage`.

  video: (1, T, H, W, 3) pixels at `top_stage`'s resolution (a collection of images is packed as
  the frames of one video; with α = 0 their order does not matter). Views are
  (1, *cascade.latent_shape(stage)).
  """
  views = {}
  for name in cascade.names[:cascade.names.index(top_stage) + 1]:
    views[name] = cascade.encode(corrupt.to_stage(cascade, video, top_stage, name))
  return views


@functools.lru_cache(maxsize=None)
def _trainer(schedule, stage: cascade_lib.Stage, alpha: float, weighting: str, ema_decay: float,
             optimizer_items: tuple):
  """(optimizer, un-jitted train step) for one stage and objective; every argument is hashable
  by value, so equal settings share the step and jit reuses its program."""
  apply = parametrisation.v_on_logsnr(stage.backbone, schedule)
  loss_fn = losses.make_stage_loss(apply, stage, schedule, weighting=weighting)
  mixed = objective.make_mixed_loss(loss_fn, stage, alpha)
  optimizer_cfg = ml_collections.ConfigDict(dict(optimizer_items))
  optimizer = state_lib.make_optimizer(optimizer_cfg)
  return optimizer, state_lib.make_train_step(
      mixed, optimizer, ema_decay=ema_decay,
      learning_rate=state_lib.learning_rate_schedule(optimizer_cfg))


def _start(cascade: cascade_lib.Cascade, stage: cascade_lib.Stage, params, views: dict, text,
           text_mask, cfg: ml_collections.ConfigDict):
  """(train state, its shardings or None, train step, the fixed batch) of one stage's finetune."""
  optimizer, step_fn = _trainer(cascade.schedule, stage,
                                float(cfg.alpha), cfg.weighting, float(cfg.ema_decay),
                                tuple(sorted(cfg.optimizer.to_dict().items())))
  if cascade.layout is None:
    state, shardings = state_lib.init_state(params, optimizer, ema=cfg.ema_decay > 0), None
  else:
    state, shardings = state_lib.init_state_on(cascade.layout, cascade.abstract_params(stage),
                                               params, optimizer, ema=cfg.ema_decay > 0)
  rep = lambda x: jnp.repeat(jnp.asarray(x), cfg.batch_size, axis=0)
  batch = dict(video=rep(views[stage.name]), text=rep(text), text_mask=rep(text_mask),
               temporal_mask=jnp.zeros((cfg.batch_size,), jnp.float32))
  if stage.conditional:
    batch["low"] = rep(views[cascade.previous(stage).name])
  return state, shardings, step_fn, batch


def _loop_config(cfg, steps: int, name: str, checkpoint_every: int, minutes: float):
  return loop_lib.LoopConfig(steps=steps, seed=cfg.seed, log_every=cfg.log_every,
                             checkpoint_every=checkpoint_every, checkpoint_every_minutes=minutes,
                             on_nonfinite=cfg.on_nonfinite, name=f"finetune/{name}")


def finetune_stage(cascade: cascade_lib.Cascade, stage: cascade_lib.Stage, params, views: dict,
                   text, text_mask, cfg: ml_collections.ConfigDict, workdir: str | None):
  """Finetunes one stage for `cfg.steps` steps; returns (params to sample with, logged metrics).

  views: stage name -> (1, *latent_shape) input views; text, text_mask: (1, L, D), (1, L) for t*.
  """
  state, shardings, step_fn, batch = _start(cascade, stage, params, views, text, text_mask, cfg)
  loop_cfg = _loop_config(cfg, cfg.steps, stage.name, cfg.checkpoint_every,
                          cfg.get("checkpoint_every_minutes", 0.0))
  ckpt_dir = os.path.join(workdir, "finetune", stage.name) if workdir else None
  final, history = loop_lib.run(loop_cfg, state, step_fn, lambda step: batch,
                                checkpoint_dir=ckpt_dir, meta={"stage": stage.name},
                                layout=cascade.layout, state_shardings=shardings)
  return final.eval_params, history


def finetune_at_steps(cascade: cascade_lib.Cascade, params: dict, video, text, text_mask,
                      cfg: ml_collections.ConfigDict, steps: Sequence[int],
                      checkpoint_root: str | None = None) -> Iterator[tuple[int, dict]]:
  """Yields `(k, params finetuned for k steps)` for each k of `sorted(set(steps))`.

  video: (1, T, H, W, 3) at the resolution of the highest stage in `cfg.stages`; text, text_mask:
  (1, L, D), (1, L) for t*. `cfg` is a `finetune_config` (its `steps` is ignored). Stages not in
  `cfg.stages` keep `params`. k = 0 yields `params` unchanged.

  With `checkpoint_root` the leg that trains up to k checkpoints into `<checkpoint_root>/<k>/<stage>/`
  (at its end, on SIGTERM/SIGINT, and every `cfg.checkpoint_every` steps or
  `cfg.checkpoint_every_minutes` where set), and resumes from there: a re-run after a preemption
  yields exactly what an uninterrupted one would.
  """
  targets = sorted(set(int(k) for k in steps))
  if not targets or targets[0] < 0:
    raise ValueError(f"Finetuning step counts must be a non-empty set of integers >= 0, got "
                     f"{list(steps)}.")
  names = finetuned_stages(cascade.names, cfg)
  views = stage_views(cascade, jnp.asarray(video), names[-1]) if names else {}
  runs = {name: _start(cascade, cascade.stage(name), params[name], views, text, text_mask, cfg)
          for name in names}
  states = {name: run[0] for name, run in runs.items()}
  every, minutes = cfg.get("checkpoint_every", 0), cfg.get("checkpoint_every_minutes", 0.0)
  for k in targets:
    for name, (_, shardings, step_fn, batch) in runs.items():
      ckpt_dir = os.path.join(checkpoint_root, str(k), name) if checkpoint_root else None
      states[name], _ = loop_lib.run(_loop_config(cfg, k, name, every, minutes), states[name],
                                     step_fn, lambda step, batch=batch: batch,
                                     checkpoint_dir=ckpt_dir, meta={"stage": name},
                                     layout=cascade.layout, state_shardings=shardings)
    yield k, dict(params, **{name: states[name].eval_params for name in names})


def finetuned_stages(names: Sequence[str], cfg: ml_collections.ConfigDict) -> list[str]:
  """The stages of `cfg.stages` in cascade order (`names`: the cascade's stage names); a name the
  cascade lacks is an error."""
  unknown = sorted(set(cfg.stages) - set(names))
  if unknown:
    raise ValueError(f"finetune.stages names {unknown}, which the cascade does not have (stages: "
                     f"{list(names)}); fix --config.finetune.stages.")
  return [n for n in names if n in cfg.stages]


def finetune_cascade(cascade: cascade_lib.Cascade, params: dict, video, text, text_mask,
                     cfg: ml_collections.ConfigDict, workdir: str | None,
                     cascade_config: ml_collections.ConfigDict | None = None, timer=None):
  """Finetunes `cfg.stages` (those the cascade has) on `video`, returns (new params, histories).

  video: (1, T, H, W, 3) at the resolution of the highest finetuned stage. The finetuned stages are
  exported to `<workdir>/finetuned_cascade/` when a workdir is given and `cfg.export`. With a `timer`
  (`jobs.common.Timer`) each stage is timed as phase `finetune_<stage>`.
  """
  names = finetuned_stages(cascade.names, cfg)
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
    export = workdir and cfg.export
    if export:
      host_params = parallel.to_host(new_params[name])  # every process takes part in the gather
    if export and parallel.is_primary():
      checkpoints.save_cascade_stage(os.path.join(workdir, "finetuned_cascade"), name,
                                     host_params, cascade_config,
                                     metadata={"finetuned_on": "input", "steps": str(cfg.steps),
                                               "alpha": str(cfg.alpha)})
  return new_params, histories


def top_finetune_stage(names: Sequence[str], cfg: ml_collections.ConfigDict) -> str:
  """The highest-resolution stage the finetune touches (the base stage when finetuning is off);
  `names`: the cascade's stage names in order."""
  tuned = finetuned_stages(names, cfg) if cfg.enabled else []
  return tuned[-1] if tuned else names[0]
