r"""Forward + backward of the full-size ModelScope UNet3D (1.41B parameters) on this machine, as a
fraction of measured matmul peak.

What one row times: `jax.value_and_grad` of the project's ε-weighted denoising loss
(`train.losses.make_stage_loss(..., weighting="eps")`, the video variant, as Dreamix's finetune
computes it) with respect to every U-Net parameter — no optimizer update; the step returns the
loss and the gradients' global norm (what gradient clipping reads), so the 2.6 GB gradient tree is
reduced inside the program instead of written out — at a reduced size:
batch 1, `--frames` frames of `--latent`×`--latent` latents (8× that in pixels), 77×1024 text.
The U-Net is `tools.memory.MODELSCOPE_UNET` (the real architecture of
damo-vilab/text-to-video-ms-1.7b) with random weights, compute in `--dtype` and `--remat` per
block (default full, as the ModelScope cascade config sets it). Parameters (and so gradients) are *stored*
in `--dtype` too: the finetune keeps float32 parameters, but 5.6 GB of them plus 5.6 GB of
gradients does not fit a ~11 GiB budget; with bfloat16 storage the step holds 2.8 + 2.8 GB.
Columns: XLA cost-analysis GFLOP of the compiled program, best wall time, achieved GFLOP/s, that
as a fraction of a `--dtype` matmul measured in the same process right before, compile seconds,
and XLA's buffers for the step (arguments + outputs + temporaries, GiB).

  python benchmarks/unet3d_step.py [--dtype=bfloat16|float32] [--frames=8] [--latent=8]

`--tiny` swaps in a two-level toy UNet3D (the tests' size) and a tiny matmul.
"""

from __future__ import annotations

import math
import sys
import time

import common  # pylint: disable=g-bad-import-order

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from configs.cascades import modelscope
from dreamix_jax.backbones import base as backbone_base
from dreamix_jax.dreamix import objective
from dreamix_jax.tools import memory
from dreamix_jax.train import losses

COLUMNS = ("config", "latent_TxHxW", "params_M", "param_dtype", "GFLOP", "time_s", "GFLOP/s",
           "peak_GFLOP/s", "frac_peak", "compile_s", "xla_GiB")
# Two levels, the tests' toy size (tests/diffusers_tiny.py's UNET_KW), for --tiny.
TINY_UNET = {"block_out_channels": [32, 64], "layers_per_block": 1,
             "down_block_types": ["CrossAttnDownBlock3D", "DownBlock3D"],
             "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D"], "cross_attention_dim": 32,
             "attention_head_dim": 8, "norm_num_groups": 32}


def stage_and_cascade(tiny: bool, dtype: str, frames: int, latent: int, remat: str = "full"):
  """The ModelScope cascade (shape only: `tools.memory.shape_only_cascade`) with its base stage
  set to `frames` frames of `8·latent` pixels square and the U-Net computing in `dtype` with
  `remat`."""
  cfg = modelscope.get_config("tiny" if tiny else None)
  with cfg.unlocked():
    stage = cfg.stages.base
    stage.frames, stage.height, stage.width = frames, 8 * latent, 8 * latent
    stage.backbone.dtype, stage.backbone.remat = dtype, remat
  casc = memory.shape_only_cascade(cfg, None, TINY_UNET if tiny else None)
  return casc.stage("base"), casc


def random_params(boxed, dtype: str, rng):
  """Parameters of the abstract (boxed) tree stored in `dtype`: kernels and embeddings
  N(0, 1/fan_in), vectors 1 (scales) or 0 (biases); drawn in one `jit` whose only output is the
  `dtype` tree, so no float32 copy of the whole tree exists."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(boxed))

  def draw(key):
    out = []
    for (path, leaf), k in zip(leaves, jax.random.split(key, len(leaves))):
      if len(leaf.shape) == 1:
        out.append(jnp.full(leaf.shape, 1.0 if "scale" in str(path[-1]) else 0.0, dtype))
      else:
        fan_in = math.prod(leaf.shape[:-1])
        out.append((jax.random.normal(k, leaf.shape) / math.sqrt(fan_in)).astype(dtype))
    return jax.tree_util.tree_unflatten(treedef, out)

  return jax.jit(draw)(rng)


def main():
  p = common.parser(__doc__.splitlines()[0])
  p.set_defaults(dtype="bfloat16", repeats=2)
  p.add_argument("--frames", type=int, default=8, help="Frames of the clip.")
  p.add_argument("--latent", type=int, default=8, help="Latent height = width (pixels / 8).")
  p.add_argument("--remat", default="full", choices=("full", "none"),
                 help="Per-block remat (full: the ModelScope cascade config's).")
  p.add_argument("--max_gib", type=float, default=9.5,
                 help="Do not run a step whose XLA buffers exceed this (GiB).")
  args = p.parse_args()
  frames, latent = (2, 2) if args.tiny else (args.frames, args.latent)
  stage, casc = stage_and_cascade(args.tiny, args.dtype, frames, latent, args.remat)
  boxed = casc.abstract_params(stage)
  loss = objective.make_mixed_loss(
      losses.make_stage_loss(casc.denoiser(stage), stage, casc.schedule, weighting="eps"), stage,
      1.0)
  t, h, w, c = casc.latent_shape(stage)
  k = jax.random.split(jax.random.PRNGKey(1), 2)
  batch = dict(video=jax.random.normal(k[0], (1, t, h, w, c)),
               text=jax.random.normal(k[1], (1, casc.text_len, casc.text_dim)),
               text_mask=jnp.ones((1, casc.text_len), bool),
               temporal_mask=jnp.zeros((1,), jnp.float32))
  value_and_grad = jax.value_and_grad(lambda p, b, r: loss(p, b, r)[0])

  def grad_fn(p, b, r):  # the loss and the gradients' global norm: every gradient is computed
    value, grads = value_and_grad(p, b, r)
    return value, optax.global_norm(grads)

  grad_fn = jax.jit(grad_fn)
  rng = jax.random.PRNGKey(2)
  abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, args.dtype),
                                    nn.meta.unbox(boxed))
  t0 = time.perf_counter()
  compiled = grad_fn.lower(abstract, batch, rng).compile()  # before the parameters exist
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  xla_gib = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes) / 2**30
  print(f"XLA buffers: arguments {mem.argument_size_in_bytes / 2**30:.2f} GiB, outputs "
        f"{mem.output_size_in_bytes / 2**30:.2f} GiB, temporaries {mem.temp_size_in_bytes / 2**30:.2f}"
        " GiB", file=sys.stderr, flush=True)
  if xla_gib > args.max_gib:
    raise SystemExit(f"The step needs {xla_gib:.2f} GiB of XLA buffers (> --max_gib={args.max_gib})"
                     f"; not run. XLA cost analysis: {common.flops(compiled) / 1e9:.0f} GFLOP.")
  params = random_params(boxed, args.dtype, jax.random.PRNGKey(0))
  gflop = common.flops(compiled) / 1e9
  common.header("Full-size ModelScope UNet3D forward + backward (ε loss, no optimizer)",
                args.dtype)
  peak, _, _ = common.matmul_peak(args.dtype, args.tiny)
  seconds = common.best_time(lambda: compiled(params, batch, rng), 1 if args.tiny else
                             args.repeats)
  table = common.Table(COLUMNS)
  table.row("toy" if args.tiny else "modelscope", f"{t}x{h}x{w}",
            backbone_base.count_params(boxed) / 1e6, args.dtype, gflop, seconds,
            gflop / seconds, peak / 1e9, gflop * 1e9 / seconds / peak, compile_s, xla_gib)


if __name__ == "__main__":
  main()
