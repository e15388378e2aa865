"""Train state, optimizers and the jitted train step shared by pretraining and finetuning.

The step's randomness is `fold_in(seed_key, step)`, so a resumed run draws exactly the noise an
uninterrupted one would. Non-finite losses or gradients never reach the parameters: the update is
skipped and counted in `state.skipped` (the job decides whether to stop).
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from dreamix_jax import parallel

OPTIMIZERS = ("adam", "adamw", "adafactor")


@flax.struct.dataclass
class TrainState:
  """step: int32 scalar; params: pytree; ema_params: its exponential moving average, or None when
  EMA is off; opt_state: the optax state; skipped: updates skipped for non-finite values."""

  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  skipped: jax.Array

  @property
  def eval_params(self):
    """The parameters to sample with: the EMA when there is one."""
    return self.params if self.ema_params is None else self.ema_params


DECAYS = ("none", "linear", "cosine")


def learning_rate_schedule(cfg: ml_collections.ConfigDict):
  """The learning rate of optimizer step n (a constant when the config asks for no schedule).

  Warm-up-stable-decay: a linear ramp 0 -> lr over `warmup_steps`, then lr until `decay_start`,
  then `decay` (linear or cosine) down to `lr * final_lr_fraction` over `decay_steps`, and that
  value afterwards. The step is the optimizer's own update count (`schedule_count`): a resumed
  run restores it, a run started from bare parameters (`init_from`) counts from 0. So
  `decay_start` can be a step of a run already under way (a cool-down appended to a long
  constant-rate run, the usual way to get the most out of a checkpoint without restarting it).
  """
  if cfg.decay not in DECAYS:
    raise ValueError(f"optimizer.decay {cfg.decay!r} is not one of {DECAYS}.")
  if cfg.decay != "none" and cfg.decay_steps <= 0:
    raise ValueError(f"optimizer.decay={cfg.decay!r} needs optimizer.decay_steps > 0, got "
                     f"{cfg.decay_steps}.")
  if cfg.decay != "none" and cfg.decay_start < cfg.warmup_steps:
    raise ValueError(f"optimizer.decay_start ({cfg.decay_start}) is inside the warm-up "
                     f"({cfg.warmup_steps} steps); start the decay after it.")
  if not 0.0 <= cfg.final_lr_fraction <= 1.0:
    raise ValueError(f"optimizer.final_lr_fraction must be in [0, 1], got {cfg.final_lr_fraction}.")
  if not cfg.warmup_steps and cfg.decay == "none":
    return cfg.lr

  def schedule(count):
    n = jnp.asarray(count, jnp.float32)
    lr = cfg.lr
    if cfg.warmup_steps:
      lr = lr * jnp.minimum(n / cfg.warmup_steps, 1.0)
    if cfg.decay != "none":
      progress = jnp.clip((n - cfg.decay_start) / cfg.decay_steps, 0.0, 1.0)
      shape = 1.0 - progress if cfg.decay == "linear" else 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
      lr = lr * (cfg.final_lr_fraction + (1.0 - cfg.final_lr_fraction) * shape)
    return lr

  return schedule


def schedule_count(opt_state) -> jax.Array:
  """The update count that `optimizer`'s learning-rate schedule reads from `opt_state`."""
  is_schedule_state = lambda x: isinstance(x, optax.ScaleByScheduleState)
  found = [x for x in jax.tree_util.tree_leaves(opt_state, is_leaf=is_schedule_state)
           if is_schedule_state(x)]
  if len(found) != 1:
    raise ValueError("Expected one learning-rate schedule in the optimizer state, found "
                     f"{len(found)}.")
  return found[0].count


def make_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Optimizer from config: name (adam | adamw | adafactor), lr and its schedule
  (`learning_rate_schedule`), weight_decay, b1, b2, grad_clip (global norm; 0 disables)."""
  if cfg.name not in OPTIMIZERS:
    raise ValueError(f"optimizer.name {cfg.name!r} is not one of {OPTIMIZERS}.")
  if cfg.lr <= 0:
    raise ValueError(f"optimizer.lr must be positive, got {cfg.lr}.")
  lr = learning_rate_schedule(cfg)
  if cfg.name == "adam":
    opt = optax.adam(lr, b1=cfg.b1, b2=cfg.b2)
  elif cfg.name == "adamw":
    opt = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
  else:
    opt = optax.adafactor(lr)
  if cfg.grad_clip:
    opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), opt)
  return opt


def optimizer_config(name="adam", lr=1e-4, warmup_steps=0, weight_decay=0.0, b1=0.9, b2=0.999,
                     grad_clip=1.0, decay="none", decay_start=0, decay_steps=0,
                     final_lr_fraction=0.0) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(name=name, lr=lr, warmup_steps=warmup_steps,
                                        weight_decay=weight_decay, b1=b1, b2=b2,
                                        grad_clip=grad_clip, decay=decay, decay_start=decay_start,
                                        decay_steps=decay_steps,
                                        final_lr_fraction=final_lr_fraction))


def init_state(params, optimizer: optax.GradientTransformation, *, ema: bool) -> TrainState:
  ema_params = jax.tree_util.tree_map(jnp.copy, params) if ema else None
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=ema_params,
                    opt_state=optimizer.init(params), skipped=jnp.zeros((), jnp.int32))


def abstract_state_shardings(layout: parallel.Layout, boxed_params,
                             optimizer: optax.GradientTransformation, *, ema: bool):
  """(abstract TrainState, its shardings on `layout`) from boxed parameter shapes
  (`cascade.abstract_params(stage)`), without allocating anything."""
  params = nn.meta.unbox(boxed_params)
  param_shardings = layout.param_shardings(boxed_params)
  abstract = jax.eval_shape(lambda p: init_state(p, optimizer, ema=ema), params)
  return abstract, layout.state_shardings(abstract, params, param_shardings)


def init_state_on(layout: parallel.Layout, boxed_params, params,
                  optimizer: optax.GradientTransformation, *, ema: bool):
  """(TrainState, its shardings): `params` (host or device arrays, identical on every process)
  placed slice by slice on `layout`, and the optimizer state and EMA created under `jit` with
  output shardings, so no device ever holds a full copy of a sharded tensor."""
  _, shardings = abstract_state_shardings(layout, boxed_params, optimizer, ema=ema)
  params = parallel.put(params, shardings.params)
  state = jax.jit(lambda p: init_state(p, optimizer, ema=ema), out_shardings=shardings)(params)
  return state, shardings


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation, *,
                    ema_decay: float = 0.0, learning_rate=None):
  """Builds `step(state, batch, seed_key) -> (state, metrics)`.

  loss_fn(params, batch, rng) -> (scalar loss, dict of scalar metrics). Jit it with the state donated.
  `ema_decay` applies when the state carries EMA parameters (`init_state(..., ema=True)`).
  `learning_rate` (`learning_rate_schedule`'s output), when given, is logged as the metric
  `learning_rate`: the rate of this step's update.
  """

  def step(state: TrainState, batch, seed_key):
    rng = jax.random.fold_in(seed_key, state.step)
    if callable(learning_rate):
      rate = learning_rate(schedule_count(state.opt_state))
    elif learning_rate is not None:
      rate = jnp.float32(learning_rate)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, new_opt = optimizer.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    new_ema = None
    if state.ema_params is not None:
      new_ema = jax.tree_util.tree_map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p,
                                       state.ema_params, new_params)
    keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)
    state = TrainState(step=state.step + 1, params=keep(new_params, state.params),
                       ema_params=keep(new_ema, state.ema_params),
                       opt_state=keep(new_opt, state.opt_state),
                       skipped=state.skipped + (~finite).astype(jnp.int32))
    metrics = dict(metrics, loss=loss, grad_norm=grad_norm, finite=finite)
    if learning_rate is not None:
      metrics["learning_rate"] = rate
    return state, metrics

  return step
