"""The one training loop of the project (pretraining and Dreamix finetuning of one stage).

Resumable: the state is checkpointed with orbax every `checkpoint_every` steps, every
`checkpoint_every_minutes` of wall time, and at the end; a restarted run continues from the latest
checkpoint in its directory. Batches are a function of the step (`batch_fn(step)`) and the step's
randomness is `fold_in(seed, step)`, so a resumed run repeats exactly what an uninterrupted one
would have done. SIGTERM/SIGINT save a checkpoint at the current step and raise `preemption.Preempted`
(see `dreamix_jax.train.preemption`). Non-finite losses/gradients are never applied;
`on_nonfinite='stop'` ends the run with the step, the run's name (stage) and the loss variants named
(the last good checkpoint is kept).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from dreamix_jax import parallel
from dreamix_jax.train import checkpoints, preemption, state as state_lib


class NonFiniteLossError(RuntimeError):
  """The loss or gradient norm became NaN/inf."""


@dataclasses.dataclass
class LoopConfig:
  steps: int
  seed: int = 0
  log_every: int = 10
  checkpoint_every: int = 100  # steps; 0: no step-count checkpoints
  checkpoint_every_minutes: float = 0.0  # wall time; 0: no timed checkpoints
  on_nonfinite: str = "stop"  # or "skip"
  name: str = "stage"
  prefetch: int = 0  # batches built ahead on as many worker threads; 0: each built in the loop

  def __post_init__(self):
    if self.steps < 0:
      raise ValueError(f"steps must be ≥ 0, got {self.steps}.")
    if self.checkpoint_every < 0 or self.checkpoint_every_minutes < 0:
      raise ValueError(f"checkpoint_every ({self.checkpoint_every}) and checkpoint_every_minutes "
                       f"({self.checkpoint_every_minutes}) must be ≥ 0 (0 turns that trigger off).")
    if self.prefetch < 0:
      raise ValueError(f"prefetch must be ≥ 0, got {self.prefetch}.")
    if self.on_nonfinite not in ("stop", "skip"):
      raise ValueError(f"on_nonfinite must be 'stop' or 'skip', got {self.on_nonfinite!r}.")


def run(loop: LoopConfig, train_state: state_lib.TrainState, step_fn: Callable,
        batch_fn: Callable[[int], Any], *, checkpoint_dir: str | None, meta: dict | None = None,
        writer=None, on_checkpoint: Callable[[int, Any], None] | None = None,
        layout: parallel.Layout | None = None, state_shardings=None
        ) -> tuple[state_lib.TrainState, list[dict]]:
  """Runs `step_fn` (un-jitted `make_train_step` output) until `loop.steps`; returns the final state
  and the logged metrics (one dict per logged step). `on_checkpoint(step, state)` runs after every
  checkpoint (e.g. to export EMA parameters and write samples).

  With a `layout` the step is `jax.jit(..., in_shardings, out_shardings, donate_argnums=0)` on its
  mesh: the state laid out as `state_shardings` (see `parallel.Layout.state_shardings`), batches
  over the batch axes (`batch_fn` returns host arrays identical on every process, or global
  `jax.Array`s it assembled itself, e.g. with `parallel.put_process_local`), metrics replicated; a
  checkpoint restores onto the layout whatever mesh wrote it. Only process 0 logs.
  """
  if (layout is None) != (state_shardings is None):
    raise ValueError("Pass `layout` and `state_shardings` together (or neither).")
  ckpt = checkpoints.TrainCheckpointer(checkpoint_dir) if checkpoint_dir else None
  if layout is not None:
    # A fresh copy on the mesh: the step donates its state and the caller's arrays must survive.
    train_state = parallel.copy_to(train_state, state_shardings)
  last_good = None  # the step of the newest checkpoint in `checkpoint_dir`, once there is one
  if ckpt is not None and ckpt.latest_step() is not None:
    train_state, _ = ckpt.restore(train_state)
    last_good = int(train_state.step)
    _log(logging.INFO, "[%s] resumed from step %d (%s).", loop.name, int(train_state.step),
         checkpoint_dir)
  elif layout is None:
    # The step donates its state; copy once so the caller's arrays (e.g. pretrained params) survive.
    train_state = jax.tree_util.tree_map(jnp.copy, train_state)
  seed_key = jax.random.PRNGKey(loop.seed)
  start = int(train_state.step)
  put_batch = lambda batch: batch
  if layout is None:
    jitted = jax.jit(step_fn, donate_argnums=(0,))
  elif start < loop.steps:
    batch_shardings = layout.batch_shardings(batch_fn(start))
    put_batch = lambda batch: parallel.put(batch, batch_shardings)
    seed_key = parallel.put(seed_key, layout.replicated)
    jitted = jax.jit(layout.wrap(step_fn), donate_argnums=(0,),
                     in_shardings=(state_shardings, batch_shardings, layout.replicated),
                     out_shardings=(state_shardings, layout.replicated))
  history = []
  t0 = time.time()
  clock = preemption.CheckpointClock(loop.checkpoint_every, loop.checkpoint_every_minutes)

  def save(done):
    ckpt.save(done, train_state, dict(meta or {}, step=done))
    clock.saved()
    if on_checkpoint is not None:
      on_checkpoint(done, train_state)

  batches = Prefetcher(batch_fn, range(start, loop.steps), loop.prefetch)
  try:
    with preemption.Guard() as guard:
      for step, batch in zip(range(start, loop.steps), batches):
        train_state, metrics = jitted(train_state, put_batch(batch), seed_key)
        done = step + 1
        if loop.on_nonfinite == "stop" or done % loop.log_every == 0 or done == loop.steps:
          metrics = jax.device_get(metrics)
          if not bool(metrics["finite"]):
            _nonfinite(loop, step, metrics, last_good, checkpoint_dir)
        if done % loop.log_every == 0 or done == loop.steps:
          elapsed = time.time() - t0
          rate = (done - start) / max(elapsed, 1e-9)
          row = {k: float(np.asarray(v)) for k, v in metrics.items()}
          row.update(step=done, steps_per_s=rate, skipped=int(train_state.skipped))
          history.append(row)
          eta = (loop.steps - done) / max(rate, 1e-9)
          _log(logging.INFO, "[%s] step %d/%d loss %.4f (%.2f steps/s, ETA %.0fs)", loop.name,
               done, loop.steps, row["loss"], rate, eta)
          if writer is not None and parallel.is_primary():
            writer.write_scalars(done, {k: v for k, v in row.items() if k != "step"})
        if ckpt is not None and (clock.due(done) or done == loop.steps):
          save(done)
          last_good = done
        if done < loop.steps and guard.should_stop():
          if ckpt is not None and last_good != done:
            save(done)
          raise preemption.Preempted.in_training(loop.name, done, checkpoint_dir,
                                                guard.requested or "signal")
  finally:
    batches.close()
    if ckpt is not None:
      ckpt.close()
  return train_state, history


class Prefetcher:
  """Iterates `batch_fn(step)` over `steps`, building up to `depth` batches ahead on `depth` worker
  threads (0: each batch is built when asked for). Batches are pure functions of the step, so the
  sequence is the same either way; what changes is that building a batch (rendering, resizing,
  host-to-device copies: numpy releases the GIL) overlaps the accelerator's step instead of
  following it. `close()` drops the batches not yet taken."""

  def __init__(self, batch_fn: Callable[[int], Any], steps: range, depth: int):
    self._batch_fn, self._steps, self._depth = batch_fn, steps, depth
    self._pool = concurrent.futures.ThreadPoolExecutor(depth) if depth else None
    self._pending: collections.deque = collections.deque()

  def __iter__(self):
    if self._pool is None:
      yield from map(self._batch_fn, self._steps)
      return
    upcoming = iter(self._steps)
    for step in itertools.islice(upcoming, self._depth):
      self._pending.append(self._pool.submit(self._batch_fn, step))
    while self._pending:
      batch = self._pending.popleft().result()
      step = next(upcoming, None)
      if step is not None:
        self._pending.append(self._pool.submit(self._batch_fn, step))
      yield batch

  def close(self):
    if self._pool is not None:
      self._pool.shutdown(wait=True, cancel_futures=True)


def _nonfinite(loop: LoopConfig, step: int, metrics: dict, last_good: int | None,
               checkpoint_dir):
  """Warns (`on_nonfinite='skip'`) or raises `NonFiniteLossError` naming the step, the run (stage),
  which loss variants (e.g. loss_video / loss_frames of the mixed objective) were non-finite and
  the newest checkpoint there is (`last_good`: its step, None when none was saved)."""
  variants = {k: float(v) for k, v in metrics.items() if k.startswith("loss_")}
  bad = sorted(k for k, v in variants.items() if not np.isfinite(v))
  which = f"; non-finite variants: {', '.join(bad)}" if bad else ""
  msg = (f"[{loop.name}] non-finite loss/gradient at step {step} (loss={float(metrics['loss'])}, "
         f"grad_norm={float(metrics['grad_norm'])}{which}); the update was not applied.")
  if loop.on_nonfinite == "stop":
    if not checkpoint_dir:
      kept = "No checkpoint directory was configured, so nothing was saved"
    elif last_good is not None:
      kept = f"Last good checkpoint: step {last_good} in {checkpoint_dir}"
    else:  # e.g. a run started from `init_from` weights that diverged before its first checkpoint
      kept = (f"No checkpoint was saved yet in {checkpoint_dir}: the run diverged from its initial "
              "parameters (a re-run starts from them again)")
    raise NonFiniteLossError(f"{msg} {kept}. Lower the learning rate, check the data and the "
                             "initial weights (init_from), or set on_nonfinite='skip' to skip "
                             "such updates.")
  _log(logging.WARNING, "%s", msg)


def _log(level, msg, *args):
  """Logs on process 0 only (every process runs the loop)."""
  if parallel.is_primary():
    logging.log(level, msg, *args)
