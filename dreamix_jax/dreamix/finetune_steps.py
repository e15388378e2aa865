"""Finetuning read out at several step counts: one training run per stage, continued, not restarted.

A sweep asks for the same finetune at 150, 200 and 300 steps (paper App. F.1). Training is a pure
function of the step (fixed batch, step randomness `fold_in(seed, step)`, a learning-rate schedule
of the optimizer's update count, `train.state.learning_rate_schedule`, never of the run's length),
so the 150-step parameters of a 300-step run are exactly those of a 150-step run:
`finetune_at_steps` trains to the smallest count, hands the parameters out, and continues.

The train step of a (stage, α, optimizer) is built once per process and cached, so every further
finetune with the same settings (another step count, another input video) reuses its compiled
program. The objective, batch and loop are those of `dreamix.finetune.finetune_stage` (without
orbax checkpoints: these runs are short and their parameters are consumed at once), on the
cascade's layout (mesh) when it has one.
"""

from __future__ import annotations

import functools
from typing import Iterator, Sequence

import jax.numpy as jnp
import ml_collections
from absl import logging

from dreamix_jax import cascade as cascade_lib
from dreamix_jax.diffusion import schedules
from dreamix_jax.dreamix import finetune
from dreamix_jax.backbones import unet
from dreamix_jax.train import loop as loop_lib, losses, state as state_lib


@functools.lru_cache(maxsize=None)
def _trainer(stage: cascade_lib.Stage, schedule: schedules.CosineLogSNR, alpha: float,
             weighting: str, ema_decay: float, optimizer_items: tuple):
  """(optimizer, un-jitted train step) for one stage and objective; cached so jit reuses it."""
  _, apply = unet.make_denoiser(stage.unet)
  loss_fn = losses.make_stage_loss(apply, stage, schedule, weighting=weighting)
  mixed = losses.make_mixed_loss(loss_fn, stage, alpha)
  optimizer_cfg = ml_collections.ConfigDict(dict(optimizer_items))
  optimizer = state_lib.make_optimizer(optimizer_cfg)
  return optimizer, state_lib.make_train_step(
      mixed, optimizer, ema_decay=ema_decay,
      learning_rate=state_lib.learning_rate_schedule(optimizer_cfg))


def _stage_batch(cascade: cascade_lib.Cascade, stage: cascade_lib.Stage, views: dict, text,
                 text_mask, batch_size: int) -> dict:
  """The fixed finetuning batch of `finetune.finetune_stage`: the input view repeated."""
  rep = lambda x: jnp.repeat(jnp.asarray(x), batch_size, axis=0)
  batch = dict(video=rep(views[stage.name]), text=rep(text), text_mask=rep(text_mask),
               temporal_mask=jnp.zeros((batch_size,), jnp.float32))
  if stage.kind != "base":
    batch["low"] = rep(views[cascade.names[cascade.names.index(stage.name) - 1]])
  return batch


def finetune_at_steps(cascade: cascade_lib.Cascade, params: dict, video, text, text_mask,
                      cfg: ml_collections.ConfigDict, steps: Sequence[int]
                      ) -> Iterator[tuple[int, dict]]:
  """Yields `(k, params finetuned for k steps)` for each k of `sorted(set(steps))`.

  video: (1, T, H, W, 3) at the resolution of the highest stage in `cfg.stages`; text, text_mask:
  (1, L, D), (1, L) for t*. `cfg` is a `finetune.finetune_config` (its `steps` is ignored). Stages
  not in `cfg.stages` keep `params`. k = 0 yields `params` unchanged.
  """
  targets = sorted(set(int(k) for k in steps))
  if not targets or targets[0] < 0:
    raise ValueError(f"Finetuning step counts must be a non-empty set of integers >= 0, got "
                     f"{list(steps)}.")
  names = [n for n in cascade.names if n in cfg.stages]
  if not names:
    logging.warning("finetune.stages %s names no stage of this cascade (%s): nothing is finetuned.",
                    tuple(cfg.stages), cascade.names)
  views = finetune.stage_views(cascade, jnp.asarray(video), names[-1]) if names else {}
  optimizer_items = tuple(sorted(cfg.optimizer.to_dict().items()))
  states, shardings, step_fns, batches = {}, {}, {}, {}
  for name in names:
    stage = cascade.stage(name)
    optimizer, step_fns[name] = _trainer(stage, cascade.schedule, float(cfg.alpha), cfg.weighting,
                                         float(cfg.ema_decay), optimizer_items)
    if cascade.layout is None:
      states[name] = state_lib.init_state(params[name], optimizer, ema=cfg.ema_decay > 0)
      shardings[name] = None
    else:
      states[name], shardings[name] = state_lib.init_state_on(
          cascade.layout, cascade.abstract_params(stage), params[name], optimizer,
          ema=cfg.ema_decay > 0)
    batches[name] = _stage_batch(cascade, stage, views, text, text_mask, cfg.batch_size)
  for k in targets:
    for name in names:
      loop_cfg = loop_lib.LoopConfig(steps=k, seed=cfg.seed, log_every=cfg.log_every,
                                     checkpoint_every=max(k, 1), on_nonfinite=cfg.on_nonfinite,
                                     name=f"finetune/{name}")
      batch = batches[name]
      states[name], _ = loop_lib.run(loop_cfg, states[name], step_fns[name], lambda step: batch,
                                     checkpoint_dir=None, layout=cascade.layout,
                                     state_shardings=shardings[name])
    yield k, dict(params, **{name: states[name].eval_params for name in names})
