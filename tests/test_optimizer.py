"""The optimizer's learning-rate schedule: warm-up, constant, then a linear or cosine cool-down,
as values and as the steps an optimizer actually takes (and restores)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dreamix_jax.train import state as state_lib


def _schedule(**kw):
  return state_lib.learning_rate_schedule(state_lib.optimizer_config(name="adam", **kw))


def test_warmup_stable_linear_decay_values():
  lr = _schedule(lr=1e-3, warmup_steps=100, decay="linear", decay_start=1000, decay_steps=400,
                 final_lr_fraction=0.1)
  got = [float(lr(n)) for n in (0, 50, 100, 999, 1000, 1200, 1400, 5000)]
  np.testing.assert_allclose(got, [0.0, 5e-4, 1e-3, 1e-3, 1e-3, 5.5e-4, 1e-4, 1e-4], rtol=1e-6)


def test_cosine_decay_midpoint_and_end():
  lr = _schedule(lr=2e-3, decay="cosine", decay_start=10, decay_steps=20)
  np.testing.assert_allclose([float(lr(n)) for n in (0, 10, 20, 30, 99)],
                             [2e-3, 2e-3, 1e-3, 0.0, 0.0], atol=1e-9)


def test_no_schedule_is_a_plain_constant():
  assert _schedule(lr=3e-4) == 3e-4


@pytest.mark.parametrize("kw, match", [
    (dict(decay="step"), "not one of"),
    (dict(decay="linear", decay_steps=0), "decay_steps > 0"),
    (dict(decay="linear", decay_steps=10, warmup_steps=50, decay_start=20), "inside the warm-up"),
    (dict(decay="linear", decay_steps=10, final_lr_fraction=1.5), r"\[0, 1\]"),
])
def test_bad_schedules_say_what_is_wrong(kw, match):
  with pytest.raises(ValueError, match=match):
    _schedule(lr=1e-3, **kw)


def test_adam_steps_follow_the_schedule_across_a_restored_count():
  """With a constant gradient Adam's normalised step is exactly the learning rate, so the
  parameter's decrements are the schedule's values at counts 0, 1, 2, ...; an optimizer state
  rebuilt from saved arrays (as a resumed run's) continues at its count, not from the start."""
  cfg = state_lib.optimizer_config(name="adam", lr=1.0, warmup_steps=2, decay="linear",
                                   decay_start=3, decay_steps=4, grad_clip=0.0)
  opt = state_lib.make_optimizer(cfg)
  params = jnp.zeros(())
  opt_state = opt.init(params)
  decrements = []
  for n in range(9):
    if n == 5:  # Round-trip the state through host arrays, as a checkpoint restore does.
      opt_state = _host_round_trip(opt_state)
    updates, opt_state = opt.update(jnp.ones(()), opt_state, params)
    new = optax.apply_updates(params, updates)
    decrements.append(float(params - new))
    params = new
  np.testing.assert_allclose(decrements, [0.0, 0.5, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0],
                             atol=1e-4)  # Adam eps and float32 sums.


def _host_round_trip(tree):
  return jax.tree_util.tree_map(lambda x: jnp.asarray(np.asarray(x)), tree)


def test_train_step_logs_the_rate_of_its_update():
  """The logged rate is the schedule at the optimizer's count, which a run started from bare
  parameters (state.step set ahead, fresh optimizer) restarts at 0."""
  cfg = state_lib.optimizer_config(name="adam", lr=1.0, warmup_steps=4)
  opt = state_lib.make_optimizer(cfg)
  loss = lambda p, batch, rng: (jnp.sum(p * batch), {})
  step = jax.jit(state_lib.make_train_step(loss, opt,
                                           learning_rate=state_lib.learning_rate_schedule(cfg)))
  state = state_lib.init_state(jnp.zeros(3), opt, ema=False).replace(step=jnp.int32(100))
  rates = []
  for _ in range(3):
    state, metrics = step(state, jnp.ones(3), jax.random.PRNGKey(0))
    rates.append(float(metrics["learning_rate"]))
  assert rates == [0.0, 0.25, 0.5]
  assert int(state.step) == 103
