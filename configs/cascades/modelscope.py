"""The public ModelScope text-to-video model (`damo-vilab/text-to-video-ms-1.7b`; Zeroscope
`cerspense/zeroscope_v2_576w` is the same network) as a one-stage latent cascade, as the paper ran
Dreamix on it (App. C.5).

Its weights are a local diffusers pipeline folder given as `--config.checkpoint=<folder>`
(`cascade.source = "diffusers"`): the loader (`jobs.common.load_cascade`) reads the UNet3D's
architecture and the DDPM schedule from the folder's configs, the SD autoencoder from `vae/` and
the CLIP text tower from `text_encoder/` + `tokenizer/`. What this file sets is how to run it:
the clip size the stage denoises (pixels; 16 frames of 192×320 as in App. C.5 by default, the
model's native sizes by overriding `cascade.stages.base.{frames,height,width}`, e.g. 256×256 for
ModelScope or 24 frames of 320×576 for Zeroscope), the compute dtype and remat, and the sampler.
`get_config("tiny")`: 4 frames of 32×32 pixels for the tiny random pipelines of the tests.

  python -m dreamix_jax.main --config=configs/edit.py:cascade=modelscope \
      --config.checkpoint=<pipeline folder> --config.input=<video> --workdir=<dir>
"""

from dreamix_jax import config_utils as cu

TEXT_LEN = 77  # the CLIP tokenizer pads every prompt to 77 tokens


def get_config(arg=None):
  arg = cu.parse_arg(arg, tiny=False)
  frames, height, width = (4, 32, 32) if arg.tiny else (16, 192, 320)
  backbone = dict(name="unet3d", pipeline_dir="", dtype="float32" if arg.tiny else "bfloat16",
                  remat="none" if arg.tiny else "full")
  # DDIM as in the diffusers pipeline: 50 steps, guidance 9, no thresholding (latents).
  sampler = dict(num_steps=4 if arg.tiny else 50, eta=0.0, guidance=9.0, thresholding="none")
  stage = cu.stage("base", frames, height, width, 8, backbone=backbone, sampler=sampler)
  config = cu.cascade("modelscope_tiny" if arg.tiny else "modelscope", {"base": stage},
                      text_len=TEXT_LEN, text_dim=32 if arg.tiny else 1024,
                      schedule=dict(kind="ddpm", num_steps=1000, beta_start=0.00085,
                                    beta_end=0.012, beta_schedule="scaled_linear"),
                      autoencoder=dict(name="sd_vae"))
  config.source = "diffusers"
  config.text.encoder = "clip"
  return config
