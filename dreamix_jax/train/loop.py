"""The one training loop of the project (pretraining and Dreamix finetuning of one stage).

Resumable: the state is checkpointed with orbax every `checkpoint_every` steps and at the end; a
restarted run continues from the latest checkpoint in its directory. Batches are a function of the
step (`batch_fn(step)`) and the step's randomness is `fold_in(seed, step)`, so a resumed run repeats
exactly what an uninterrupted one would have done. Non-finite losses/gradients are never applied;
`on_nonfinite='stop'` ends the run with the step named (the last good checkpoint is kept).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from dreamix_jax.train import checkpoints, state as state_lib


class NonFiniteLossError(RuntimeError):
  """The loss or gradient norm became NaN/inf."""


@dataclasses.dataclass
class LoopConfig:
  steps: int
  seed: int = 0
  log_every: int = 10
  checkpoint_every: int = 100
  on_nonfinite: str = "stop"  # or "skip"
  name: str = "stage"

  def __post_init__(self):
    if self.steps < 0:
      raise ValueError(f"steps must be ≥ 0, got {self.steps}.")
    if self.on_nonfinite not in ("stop", "skip"):
      raise ValueError(f"on_nonfinite must be 'stop' or 'skip', got {self.on_nonfinite!r}.")


def run(loop: LoopConfig, train_state: state_lib.TrainState, step_fn: Callable,
        batch_fn: Callable[[int], Any], *, checkpoint_dir: str | None, meta: dict | None = None,
        writer=None) -> tuple[state_lib.TrainState, list[dict]]:
  """Runs `step_fn` (un-jitted `make_train_step` output) until `loop.steps`; returns the final state
  and the logged metrics (one dict per logged step)."""
  ckpt = checkpoints.TrainCheckpointer(checkpoint_dir) if checkpoint_dir else None
  if ckpt is not None and ckpt.latest_step() is not None:
    train_state, _ = ckpt.restore(train_state)
    logging.info("[%s] resumed from step %d (%s).", loop.name, int(train_state.step), checkpoint_dir)
  # The step donates its state; copy once so the caller's arrays (e.g. pretrained params) survive.
  train_state = jax.tree_util.tree_map(jnp.copy, train_state)
  jitted = jax.jit(step_fn, donate_argnums=(0,))
  seed_key = jax.random.PRNGKey(loop.seed)
  start = int(train_state.step)
  history = []
  t0 = time.time()
  last_good = start
  for step in range(start, loop.steps):
    train_state, metrics = jitted(train_state, batch_fn(step), seed_key)
    done = step + 1
    if loop.on_nonfinite == "stop" or done % loop.log_every == 0 or done == loop.steps:
      metrics = jax.device_get(metrics)
      if not bool(metrics["finite"]):
        msg = (f"[{loop.name}] non-finite loss/gradient at step {step} (loss={metrics['loss']}, "
               f"grad_norm={metrics['grad_norm']}); the update was not applied.")
        if loop.on_nonfinite == "stop":
          raise NonFiniteLossError(msg + f" Last good checkpoint: step {last_good} in "
                                   f"{checkpoint_dir}. Lower the learning rate or check the data.")
        logging.warning(msg)
    if done % loop.log_every == 0 or done == loop.steps:
      elapsed = time.time() - t0
      rate = (done - start) / max(elapsed, 1e-9)
      row = {k: float(np.asarray(v)) for k, v in metrics.items()}
      row.update(step=done, steps_per_s=rate, skipped=int(train_state.skipped))
      history.append(row)
      eta = (loop.steps - done) / max(rate, 1e-9)
      logging.info("[%s] step %d/%d loss %.4f (%.2f steps/s, ETA %.0fs)", loop.name, done,
                   loop.steps, row["loss"], rate, eta)
      if writer is not None:
        writer.write_scalars(done, {k: v for k, v in row.items() if k != "step"})
    if ckpt is not None and (done % loop.checkpoint_every == 0 or done == loop.steps):
      ckpt.save(done, train_state, dict(meta or {}, step=done))
      last_good = done
  if ckpt is not None:
    ckpt.close()
  return train_state, history
