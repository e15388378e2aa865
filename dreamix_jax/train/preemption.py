"""Preemption-safe training: SIGTERM/SIGINT become "checkpoint now and exit", not a lost run.

Preemptible VMs get a SIGTERM some seconds before they go away, and a user stops a run with Ctrl-C
(SIGINT). While a `Guard` is active, either signal only sets a flag; the training loop checks it
after every step, saves a checkpoint at that step and raises `Preempted`, which the entry point
turns into exit code `EXIT_CODE` and a message saying how to resume (re-run the same command). A
second signal while the first is being handled falls through to the previous handler (Ctrl-C twice
still interrupts at once).

Outside the training loop (loading weights, sampling, writing outputs) a `JobGuard`, held for a
whole job, turns the first signal into `Preempted` raised where the job is: the job unwinds through
its `finally` blocks and atomic writers (no half-written file is left in place, locks are released)
and ends with the same exit code. Work done so far is kept: finished results, the finetune's
checkpoints and the run marker that lets the same command resume. The loop's `Guard` takes
precedence while it is active, so training still stops at a step boundary with a checkpoint.

`CheckpointClock` decides when the periodic checkpoints are due: every `every_steps` steps and/or
every `every_minutes` minutes of wall time. On several processes every decision is agreed on
(any process's "yes" counts), so all of them save the same step together.
"""

from __future__ import annotations

import signal
import threading
import time

import jax
import numpy as np

# EX_TEMPFAIL (sysexits.h): a temporary failure; the caller is invited to retry (here: resume).
EXIT_CODE = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(BaseException):
  """The run was stopped by a signal; the message says what was kept and to re-run to resume.

  A BaseException, as KeyboardInterrupt: `JobGuard` raises it from a signal handler, i.e. in
  whatever code is running, and an `except Exception` there (logging's handlers, a library's
  fallback) must not swallow it."""

  def __init__(self, message: str, step: int | None = None, checkpoint_dir: str | None = None):
    super().__init__(message)
    self.step, self.checkpoint_dir = step, checkpoint_dir

  @classmethod
  def in_training(cls, name: str, step: int, checkpoint_dir: str | None,
                  signal_name: str) -> "Preempted":
    """Stopped by the training loop after saving a checkpoint at `step` in `checkpoint_dir`."""
    where = (f"a checkpoint at step {step} is in {checkpoint_dir}" if checkpoint_dir else
             "no checkpoint directory was configured, so nothing was saved")
    return cls(f"[{name}] preempted by {signal_name} at step {step}: {where}. Re-run the same "
               "command to resume from it.", step, checkpoint_dir)


class Guard:
  """Context manager: while active, SIGTERM/SIGINT set `requested` instead of ending the process.

  Only the main thread can install signal handlers; elsewhere the guard is inert (`requested` stays
  None) and the signals keep their usual effect.
  """

  def __init__(self):
    self.requested: str | None = None  # name of the first signal received
    self._previous: dict[int, object] = {}

  def __enter__(self) -> "Guard":
    if threading.current_thread() is threading.main_thread():
      for sig in SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()

  def _handle(self, signum, frame) -> None:
    if self.requested is None:
      self.requested = signal.Signals(signum).name
      return
    previous = self._previous.get(signum, signal.SIG_DFL)
    signal.signal(signum, previous)  # a second signal: act as if no guard were there
    if callable(previous):
      previous(signum, frame)
    else:
      signal.raise_signal(signum)

  def should_stop(self) -> bool:
    """Whether any process received a signal (agreed across processes)."""
    return agree(self.requested is not None)


class JobGuard:
  """Context manager for a whole job: the first SIGTERM/SIGINT raises `Preempted` wherever the job
  is (outside an active `Guard`) and restores the previous handlers, so a second signal acts as
  if no guard were there. Inert off the main thread, as `Guard`."""

  def __init__(self, job: str):
    self.job = job
    self._previous: dict[int, object] = {}

  def __enter__(self) -> "JobGuard":
    if threading.current_thread() is threading.main_thread():
      for sig in SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    self._restore()

  def _restore(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()

  def _handle(self, signum, frame) -> None:
    self._restore()
    raise Preempted(f"[{self.job}] preempted by {signal.Signals(signum).name} outside training "
                    "(loading, sampling or writing): finished results and checkpoints are kept, "
                    "nothing half-written. Re-run the same command to resume.")


class CheckpointClock:
  """Periodic checkpoints by steps (`every_steps`, 0 = never) and wall time (`every_minutes`,
  0 = never), counted from the last save."""

  def __init__(self, every_steps: int, every_minutes: float):
    if every_steps < 0 or every_minutes < 0:
      raise ValueError(f"checkpoint_every ({every_steps}) and checkpoint_every_minutes "
                       f"({every_minutes}) must be >= 0 (0 turns that trigger off).")
    self.every_steps, self.every_seconds = every_steps, 60.0 * every_minutes
    self._last = time.monotonic()

  def due(self, step: int) -> bool:
    """Whether a checkpoint is due after finishing `step` steps."""
    by_steps = bool(self.every_steps) and step % self.every_steps == 0
    by_time = bool(self.every_seconds) and time.monotonic() - self._last >= self.every_seconds
    return by_steps or agree(by_time)  # the step count is the same everywhere; clocks are not

  def saved(self) -> None:
    self._last = time.monotonic()


def agree(flag: bool) -> bool:
  """True when `flag` is true on any process (a no-op on one process)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils
  return bool(np.max(multihost_utils.process_allgather(np.int32(flag))))
