"""Tiny random diffusers text-to-video pipeline folders for the parity and import tests.

Each builder makes a PyTorch model of the real architecture at toy width (built in well under a
second on CPU), with every parameter randomised — including those diffusers initialises to zero
(the temporal convolutions' last layer) or to one (norm scales) — so a misplaced tensor cannot
hide. `write_pipeline` saves them with `save_pretrained` in a diffusers pipeline layout.
"""

import json
import os

import numpy as np
import tokenizers
import torch
import transformers
from diffusers import AutoencoderKL, UNet3DConditionModel

UNET_KW = dict(block_out_channels=(32, 64), layers_per_block=1, sample_size=16,
               down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
               up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), cross_attention_dim=32,
               attention_head_dim=8, norm_num_groups=32)
VAE_KW = dict(block_out_channels=(32, 64), down_block_types=["DownEncoderBlock2D"] * 2,
              up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=32)
TEXT_KW = dict(vocab_size=600, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu",
               bos_token_id=0, eos_token_id=1, pad_token_id=1)
SCHEDULER = {"_class_name": "DDIMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
             "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
             "prediction_type": "epsilon", "clip_sample": False, "set_alpha_to_one": False,
             "steps_offset": 1}


def randomise(module, seed=0):
  """Every parameter random: vectors 1 ± 0.2 (weights) or ±0.2 (biases), tensors N(0, 1/fan_in)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if p.ndim == 1:
        p.copy_(1 + 0.2 * noise if name.endswith("weight") else 0.2 * noise)
      else:
        p.copy_(noise / np.sqrt(p[0].numel()))
  return module.eval()


def tiny_unet(seed=0):
  torch.manual_seed(seed)
  return randomise(UNet3DConditionModel(**UNET_KW), seed)


def tiny_vae(seed=0):
  torch.manual_seed(seed)
  return randomise(AutoencoderKL(**VAE_KW), seed)


def tiny_text_encoder(seed=0):
  torch.manual_seed(seed)
  return randomise(transformers.CLIPTextModel(transformers.CLIPTextConfig(**TEXT_KW)), seed)


def write_tokenizer(folder):
  """A byte-level CLIP BPE tokenizer (every byte, with and without `</w>`, no merges)."""
  vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
  for c in sorted(tokenizers.pre_tokenizers.ByteLevel.alphabet()):
    vocab[c] = len(vocab)
    vocab[c + "</w>"] = len(vocab)
  transformers.CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77).save_pretrained(folder)


def write_pipeline(root, *, unet=None, vae=None, text_encoder=None, tokenizer=False,
                   scheduler=None, **save_kw):
  """A diffusers pipeline folder at `root` holding the given components (and always
  model_index.json and scheduler/). Returns `root` as a str."""
  root = str(root)
  os.makedirs(os.path.join(root, "scheduler"), exist_ok=True)
  with open(os.path.join(root, "model_index.json"), "w") as f:
    json.dump({"_class_name": "TextToVideoSDPipeline"}, f)
  with open(os.path.join(root, "scheduler", "scheduler_config.json"), "w") as f:
    json.dump(scheduler or SCHEDULER, f)
  for name, model in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
    if model is not None:
      model.save_pretrained(os.path.join(root, name), **save_kw)
  if tokenizer:
    write_tokenizer(os.path.join(root, "tokenizer"))
  return root


def max_rel_error(ours, ref):
  """max |ours − ref| / max |ref| (the parity tests' criterion, ≤ 1e-4 in float32)."""
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.abs(ours - ref).max() / np.abs(ref).max())
