r"""Overhead of the sampling loop: a stage's full compiled sampler against `steps ×` one denoiser call.

The full loop is the cascade's own cached sampler (`cascade._compiled_stage_sampler`: one `lax.scan`
over `sampling.ddim_sample` steps, CFG branches batched, thresholding, noise). The bare call is the
same guided denoiser (`sampling.guided_v_fn`) jitted alone. overhead = loop / (steps × call) − 1
(target ≤ 5%). Also checks that a second prompt, seed and start time reuse the compiled sampler.

  python benchmarks/sampler_loop.py [--dtype=float32|bfloat16] [--configs=base,tsr,ssr,small]
"""

from __future__ import annotations

import common  # pylint: disable=g-bad-import-order

import jax
import jax.numpy as jnp

from dreamix_jax import cascade as cascade_lib
from dreamix_jax.diffusion import sampling

COLUMNS = ("config", "steps", "guided", "loop_s", "call_s", "steps_x_call_s", "overhead_pct",
           "recompiles")


def loop_row(stage, casc, params, repeats):
  """(loop seconds, one-call seconds, recompiles on a new prompt/seed/t_start)."""
  fn = cascade_lib._compiled_stage_sampler(  # pylint: disable=protected-access
      stage, casc.schedule, casc.layout)
  k = jax.random.split(jax.random.PRNGKey(0), 4)
  text = jax.random.normal(k[0], (1, casc.text_len, casc.text_dim))
  mask = jnp.ones((1, casc.text_len), bool)
  null = casc.null_condition
  z = jax.random.normal(k[1], (1,) + stage.shape + (3,))
  low = None
  if stage.conditional:
    low = jax.random.uniform(k[2], (1,) + stage.input_shape() + (3,), minval=-1.0, maxval=1.0)
  loop_s = common.best_time(lambda: fn(params, text, mask, k[3], z, jnp.float32(1.0), low, null), repeats)
  before = fn._cache_size()  # pylint: disable=protected-access
  common.block(fn(params, text + 1.0, mask, k[2], z, jnp.float32(0.7), low, null))
  recompiles = fn._cache_size() - before  # pylint: disable=protected-access

  apply = casc.denoiser(stage)
  kwargs = {}
  if low is not None:
    kwargs = dict(cond=stage.upsample(low), cond_logsnr=jnp.zeros((1,)))

  @jax.jit
  def call(params, z, lam, text, mask, kwargs):
    return sampling.guided_v_fn(apply, params, text, mask, guided=stage.sampler.guided,
                                **kwargs)(z, lam)

  lam = jnp.zeros((1,))
  call_s = common.best_time(lambda: call(params, z, lam, text, mask, kwargs), repeats)
  return loop_s, call_s, recompiles


def main():
  p = common.parser(__doc__.splitlines()[0])
  p.add_argument("--configs", default=None,
                 help="Comma-separated configs (base,tsr,ssr,small; default: all).")
  args = p.parse_args()
  names = common.parse_configs(args.configs, args.tiny)
  repeats = 1 if args.tiny else args.repeats
  all_stages, casc = common.stages(args.tiny, args.dtype)
  common.header("Sampler loop vs steps × denoiser call (batch 1)", args.dtype)
  table = common.Table(COLUMNS)
  for name in names:
    stage = all_stages[name]
    params = casc.init_params(jax.random.PRNGKey(0), stage)
    loop_s, call_s, recompiles = loop_row(stage, casc, params, repeats)
    n = stage.sampler.num_steps
    table.row(name, n, stage.sampler.guided, loop_s, call_s, n * call_s,
              100.0 * (loop_s / (n * call_s) - 1.0), recompiles)


if __name__ == "__main__":
  main()
