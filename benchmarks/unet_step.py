r"""Train-step and sampler-step speed of the space-time U-Net, as a fraction of measured matmul peak.

For each config (shapes base / tsr / ssr stages, and "small": a ~37M-parameter base stage at
16×24×40, see `common.small_stage_config`) it times, with the project's own code:
  video    one jitted, state-donating train step (`train.state.make_train_step`) on the video variant
           only (`dreamix.objective.make_mixed_loss(..., alpha=1)`, i.e. pretraining's loss);
  mixed    the same with Dreamix's mixed loss (alpha=0.35: one U-Net call on the videos, one
           frames-only call on the shuffled frames; see `dreamix.objective.make_mixed_loss`);
  sampler  one guided denoiser call as the sampler makes it (`sampling.guided_v_fn`: CFG's two
           branches batched), batch 1 (one prompt).
Columns: XLA cost-analysis GFLOP of the compiled program, best wall time, achieved GFLOP/s, that
as a fraction of a `--dtype` matmul measured right before the row, and mixed / video time.

  python benchmarks/unet_step.py [--dtype=float32|bfloat16] [--configs=base,tsr,ssr,small]
"""

from __future__ import annotations

import common  # pylint: disable=g-bad-import-order

import jax
import jax.numpy as jnp

from dreamix_jax.diffusion import sampling
from dreamix_jax.backbones import base as backbone_base
from dreamix_jax.dreamix import objective
from dreamix_jax.train import losses
from dreamix_jax.train import state as state_lib

COLUMNS = ("config", "step", "batch", "params_M", "GFLOP", "time_s", "GFLOP/s", "peak_GFLOP/s",
           "frac_peak", "x_video")
MIXED_ALPHA = 0.35


def make_batch(stage, casc, batch: int, rng):
  """A random training batch for `stage` (see `train.losses`)."""
  k = jax.random.split(rng, 3)
  out = dict(
      video=jax.random.uniform(k[0], (batch,) + stage.shape + (3,), minval=-1.0, maxval=1.0),
      text=jax.random.normal(k[1], (batch, casc.text_len, casc.text_dim)),
      text_mask=jnp.ones((batch, casc.text_len), bool),
      temporal_mask=jnp.zeros((batch,), jnp.float32))
  if stage.conditional:
    out["low"] = jax.random.uniform(k[2], (batch,) + stage.input_shape() + (3,), minval=-1.0,
                                    maxval=1.0)
  return out


def train_step(stage, casc, params, alpha: float):
  """(train step function, initial state) for the given loss weighting (α = 1: the video loss)."""
  loss_fn = losses.make_stage_loss(casc.denoiser(stage), stage, casc.schedule)
  optimizer = state_lib.make_optimizer(state_lib.optimizer_config())
  step = state_lib.make_train_step(objective.make_mixed_loss(loss_fn, stage, alpha), optimizer)
  state = state_lib.init_state(jax.tree_util.tree_map(jnp.copy, params), optimizer, ema=False)
  return step, state


def compiled_train_step(stage, casc, params, batch, alpha: float):
  """(compiled donating step, initial state) for the given loss weighting."""
  step, state = train_step(stage, casc, params, alpha)
  compiled = jax.jit(step, donate_argnums=(0,)).lower(state, batch, jax.random.PRNGKey(0)).compile()
  return compiled, state


def train_row(stage, casc, params, batch, alpha, repeats):
  """(GFLOP, seconds) of one train step."""
  compiled, state = compiled_train_step(stage, casc, params, batch, alpha)
  flops = common.flops(compiled)
  holder = [state]
  key = jax.random.PRNGKey(1)

  def call():
    holder[0], metrics = compiled(holder[0], batch, key)
    return metrics

  return flops / 1e9, common.best_time(call, repeats)


def sampler_row(stage, casc, params, repeats):
  """(GFLOP, seconds) of one denoiser call of the sampler (CFG batched when the stage guides)."""
  apply = casc.denoiser(stage)
  batch = make_batch(stage, casc, 1, jax.random.PRNGKey(2))
  kwargs = {}
  if stage.conditional:
    kwargs = dict(cond=stage.upsample(batch["low"]), cond_logsnr=jnp.zeros((1,)))

  def v(params, z, lam, text, mask, kwargs):
    v_fn = sampling.guided_v_fn(apply, params, text, mask, guided=stage.sampler.guided, **kwargs)
    v_c, v_u = v_fn(z, lam)
    return v_c if v_u is None else (v_c, v_u)

  args = (params, batch["video"], jnp.zeros((1,)), batch["text"], batch["text_mask"], kwargs)
  compiled = jax.jit(v).lower(*args).compile()
  return common.flops(compiled) / 1e9, common.best_time(lambda: compiled(*args), repeats)


def main():
  p = common.parser(__doc__.splitlines()[0])
  p.add_argument("--configs", default=None,
                 help="Comma-separated configs (base,tsr,ssr,small; default: all).")
  p.add_argument("--steps", default="video,mixed,sampler",
                 help="Comma-separated rows per config: video, mixed, sampler.")
  args = p.parse_args()
  names = common.parse_configs(args.configs, args.tiny)
  steps = [s for s in args.steps.split(",") if s]
  bad = sorted(set(steps) - {"video", "mixed", "sampler"})
  if bad:
    raise SystemExit(f"Unknown --steps {bad}; choose from video, mixed, sampler.")
  repeats = 1 if args.tiny else args.repeats
  all_stages, casc = common.stages(args.tiny, args.dtype)
  common.header("U-Net train and sampler steps", args.dtype)
  table = common.Table(COLUMNS)
  for name in names:
    stage = all_stages[name]
    params = casc.init_params(jax.random.PRNGKey(0), stage)
    n_params = backbone_base.count_params(params) / 1e6
    batch_size = common.default_batch(name, args.tiny)
    batch = make_batch(stage, casc, batch_size, jax.random.PRNGKey(0))
    video_time = None
    for step in steps:
      # Peak right before each row: on a shared machine the available throughput drifts.
      peak, _, _ = common.matmul_peak(args.dtype, args.tiny)
      if step == "sampler":
        gflop, seconds = sampler_row(stage, casc, params, repeats)
        rows = 2 if stage.sampler.guided else 1
      else:
        alpha = 1.0 if step == "video" else MIXED_ALPHA
        gflop, seconds = train_row(stage, casc, params, batch, alpha, repeats)
        rows = batch_size
      if step == "video":
        video_time = seconds
      ratio = seconds / video_time if (step == "mixed" and video_time) else "-"
      table.row(name, step, rows, n_params, gflop, seconds, gflop / seconds,
                peak / 1e9, gflop * 1e9 / seconds / peak, ratio)


if __name__ == "__main__":
  main()
