"""The toy moving-shapes cascade (docs/design.md, the moving-shapes world): base 16×24×40 → TSR 2× (32×24×40) → SSR 2× (32×48×80).

`get_config()` is the demo cascade trained on the moving-shapes world; `get_config("tiny")` keeps the
stage structure at a fraction of the size (tests and `:runlocal` jobs on random weights).

  python -m dreamix_jax.tools.summary --config=configs/cascades/shapes.py
"""

from dreamix_jax import config_utils as cu

# The shapes world's text encoder: a tiny frozen T5 (see dreamix_jax/tools/make_tiny_t5.py).
TEXT_LEN = 16
TEXT_DIM = 64


def get_config(arg=None):
  arg = cu.parse_arg(arg, tiny=False)
  if arg.tiny:
    return _tiny()
  sampler_base = dict(num_steps=32, eta=0.0, guidance=3.0, thresholding="dynamic")
  sampler_sr = dict(num_steps=16, eta=0.0, guidance=1.0, thresholding="dynamic")
  stages = dict(
      base=cu.stage("base", 16, 24, 40, 3, unet=dict(
          channels=32, channel_mult=(1, 2, 3), num_res_blocks=(1, 1, 2), attn_levels=(2,),
          cross_attn_levels=(1,), temporal_attn_levels=(1, 2), temporal_conv=True, head_dim=32,
          frame_embedding=True),
          sampler=sampler_base),
      tsr=cu.stage("tsr", 32, 24, 40, 6, factor=2, unet=dict(
          channels=24, channel_mult=(1, 2), num_res_blocks=(1, 1), attn_levels=(),
          cross_attn_levels=(1,), temporal_attn_levels=(), temporal_conv=True, head_dim=24),
          sampler=sampler_sr, cond_aug_t=0.15, cond_aug_max_t=0.3),
      ssr=cu.stage("ssr", 32, 48, 80, 6, factor=2, unet=dict(
          channels=16, channel_mult=(1, 2, 3), num_res_blocks=(1, 1, 1), attn_levels=(),
          cross_attn_levels=(2,), temporal_attn_levels=(), temporal_conv=True, head_dim=16),
          sampler=sampler_sr, cond_aug_t=0.15, cond_aug_max_t=0.3),
  )
  return cu.cascade("shapes", stages, text_len=TEXT_LEN, text_dim=TEXT_DIM)


def _tiny():
  """Same structure, tiny sizes: base 4×8×16 → TSR 2× 8×8×16 → SSR 2× 8×16×32."""
  sampler = dict(num_steps=4, eta=0.0, guidance=2.0, thresholding="dynamic")
  sr_sampler = dict(num_steps=3, eta=0.5, guidance=1.0, thresholding="static")
  stages = dict(
      base=cu.stage("base", 4, 8, 16, 3, unet=dict(
          channels=8, channel_mult=(1, 2), num_res_blocks=(1, 1), attn_levels=(1,),
          cross_attn_levels=(0,), temporal_attn_levels=(1,), temporal_conv=True, head_dim=8),
          sampler=sampler),
      tsr=cu.stage("tsr", 8, 8, 16, 6, factor=2, unet=dict(
          channels=8, channel_mult=(1, 2), num_res_blocks=(1, 1), attn_levels=(),
          cross_attn_levels=(1,), temporal_attn_levels=(), temporal_conv=True, head_dim=8),
          sampler=sr_sampler, cond_aug_t=0.15, cond_aug_max_t=0.3),
      ssr=cu.stage("ssr", 8, 16, 32, 6, factor=2, unet=dict(
          channels=8, channel_mult=(1, 2), num_res_blocks=(1, 1), attn_levels=(),
          cross_attn_levels=(1,), temporal_attn_levels=(), temporal_conv=True, head_dim=8),
          sampler=sr_sampler, cond_aug_t=0.15, cond_aug_max_t=0.3, chunk_frames=4),
  )
  return cu.cascade("shapes_tiny", stages, text_len=TEXT_LEN, text_dim=TEXT_DIM)
