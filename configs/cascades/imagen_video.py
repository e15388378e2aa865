"""The paper-scale cascade (Dreamix App. C.1, sizes from Imagen Video; docs/design.md, "Stages").

T5-XXL text (4096-d, 128 tokens) → base 16×24×40 @3fps → TSR 2× → SSR 2× → SSR 4× → TSR 2× → TSR 2× →
SSR 4× (128×768×1280 @24fps). Parameter counts match Imagen Video's table within ±15%:

  python -m dreamix_jax.tools.summary --config=configs/cascades/imagen_video.py

Samplers follow the paper: base distilled (64 steps), ssr1/ssr2 undistilled (128 steps), the rest
distilled (8 steps), guidance weight 1 (off) everywhere; the last SSR samples chunks of 32 input frames.
Only base, ssr1 and ssr2 are finetuned by Dreamix. `get_config("tiny")` keeps the seven-stage structure
at toy sizes (base 2×4×8) for tests.
"""

from dreamix_jax import config_utils as cu


def get_config(arg=None):
  arg = cu.parse_arg(arg, tiny=False)
  if arg.tiny:
    return _tiny()

  def sampler(steps):
    return dict(num_steps=steps, eta=0.0, guidance=1.0, thresholding="dynamic")

  def sr_unet(channels, mult, blocks, attn, cross, head_dim=64):
    return dict(channels=channels, channel_mult=mult, num_res_blocks=blocks, attn_levels=attn,
                cross_attn_levels=cross, temporal_attn_levels=(), temporal_conv=True,
                head_dim=head_dim, dtype="bfloat16", remat=True)

  aug = dict(cond_aug_t=0.15, cond_aug_max_t=0.3)
  stages = dict(
      base=cu.stage("base", 16, 24, 40, 3, unet=dict(
          channels=704, channel_mult=(1, 2, 4, 4), num_res_blocks=(2, 3, 4, 5), attn_levels=(1, 2, 3),
          cross_attn_levels=(0,), temporal_attn_levels=(0, 1, 2, 3), temporal_conv=False,
          head_dim=64, dtype="bfloat16", remat=True), sampler=sampler(64)),
      tsr1=cu.stage("tsr", 32, 24, 40, 6, factor=2, unet=sr_unet(
          384, (1, 2, 4, 4), (2, 3, 4, 4), (2, 3), (0, 1)), sampler=sampler(8), finetune=False, **aug),
      ssr1=cu.stage("ssr", 32, 48, 80, 6, factor=2, unet=sr_unet(
          352, (1, 2, 4, 4), (2, 3, 4, 4), (2, 3), (1,), head_dim=32), sampler=sampler(128), **aug),
      ssr2=cu.stage("ssr", 32, 192, 320, 6, factor=4, unet=sr_unet(
          160, (1, 2, 4, 8, 8), (2, 2, 3, 4, 4), (4,), (3,), head_dim=32), sampler=sampler(128),
          **aug),
      tsr2=cu.stage("tsr", 64, 192, 320, 12, factor=2, unet=sr_unet(
          144, (1, 2, 4, 8, 8), (2, 2, 3, 4, 4), (), (), head_dim=48), sampler=sampler(8),
          finetune=False, **aug),
      tsr3=cu.stage("tsr", 128, 192, 320, 24, factor=2, unet=sr_unet(
          144, (1, 2, 4, 8, 8), (1, 2, 3, 3, 3), (), (), head_dim=48), sampler=sampler(8),
          finetune=False, **aug),
      ssr3=cu.stage("ssr", 128, 768, 1280, 24, factor=4, unet=sr_unet(
          128, (1, 2, 4, 4, 8), (1, 2, 2, 3, 3), (), ()), sampler=sampler(8), chunk_frames=32,
          finetune=False, **aug),
  )
  return cu.cascade("imagen_video", stages, text_len=128, text_dim=4096)


def _tiny():
  """Seven stages at toy size: base 2×4×8 → … → ssr3 16×64×128 (tests, CPU smoke runs)."""
  sampler = dict(num_steps=2, eta=0.0, guidance=1.0, thresholding="dynamic")

  def unet(mult=(1, 2), attn=(1,), cross=(), temporal_attn=()):
    return dict(channels=8, channel_mult=mult, num_res_blocks=(1,) * len(mult), attn_levels=attn,
                cross_attn_levels=cross, temporal_attn_levels=temporal_attn, temporal_conv=True,
                head_dim=8)

  aug = dict(cond_aug_t=0.15, cond_aug_max_t=0.3)
  stages = dict(
      base=cu.stage("base", 2, 4, 8, 3, unet=unet(temporal_attn=(0, 1)), sampler=sampler),
      tsr1=cu.stage("tsr", 4, 4, 8, 6, factor=2, unet=unet(), sampler=sampler, **aug),
      ssr1=cu.stage("ssr", 4, 8, 16, 6, factor=2, unet=unet(), sampler=sampler, **aug),
      ssr2=cu.stage("ssr", 4, 32, 64, 6, factor=4, unet=unet(), sampler=sampler, **aug),
      tsr2=cu.stage("tsr", 8, 32, 64, 12, factor=2, unet=unet(attn=()), sampler=sampler, **aug),
      tsr3=cu.stage("tsr", 16, 32, 64, 24, factor=2, unet=unet(attn=()), sampler=sampler, **aug),
      ssr3=cu.stage("ssr", 16, 128, 256, 24, factor=4, unet=unet(attn=()), sampler=sampler,
                    chunk_frames=8, **aug),
  )
  return cu.cascade("imagen_video_tiny", stages, text_len=8, text_dim=16)
