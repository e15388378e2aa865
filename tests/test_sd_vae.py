"""SD AutoencoderKL parity with diffusers' PyTorch model (encoder mean, decoder), posterior
sampling, and the `autoencoders.Autoencoder` protocol of `SDVAE`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from dreamix_jax.autoencoders import sd_vae
from dreamix_jax.backbones import diffusers_import
from diffusers_tiny import max_rel_error, tiny_vae, write_pipeline

B, T, H, W = 2, 3, 16, 16
TOL = 1e-4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  model = tiny_vae()
  root = write_pipeline(tmp_path_factory.mktemp("pipe"), vae=model)
  vae = diffusers_import.load_vae(root, frames_per_call=4)  # 6 frames: two chunks, one padded
  video = np.random.default_rng(0).uniform(-1, 1, (B, T, H, W, 3)).astype(np.float32)
  return dict(model=model, vae=vae, video=video, encode=jax.jit(vae.encode),
              decode=jax.jit(vae.decode))


def _frames_nchw(x):
  b, t = x.shape[:2]
  return torch.tensor(x.reshape((b * t,) + x.shape[2:]).transpose(0, 3, 1, 2))


def _video_nhwc(x, b):
  x = x.numpy().transpose(0, 2, 3, 1)
  return x.reshape((b, -1) + x.shape[1:])


def test_protocol(setup):
  vae = setup["vae"]
  assert (vae.channels, vae.spatial_factor, vae.pixel_space) == (4, 2, False)
  assert sd_vae.VAEConfig(dtype="float32").spatial_factor == 8  # SD's four blocks
  with pytest.raises(ValueError, match="divisible"):
    vae.encode(jnp.zeros((1, 1, 15, 16, 3)))


def test_encode_mean_matches_pytorch(setup):
  model, video = setup["model"], setup["video"]
  with torch.no_grad():
    mean = model.encode(_frames_nchw(video)).latent_dist.mean
  ref = _video_nhwc(mean, B) * model.config.scaling_factor
  out = np.asarray(setup["encode"](video))
  err = max_rel_error(out, ref)
  print(f"VAE encode (mean): max|ref| {np.abs(ref).max():.3f}, relative max error {err:.2e}")
  assert out.shape == (B, T, H // 2, W // 2, 4)
  assert err <= TOL


def test_decode_matches_pytorch(setup):
  model = setup["model"]
  latents = np.random.default_rng(1).standard_normal((B, T, H // 2, W // 2, 4)).astype(np.float32)
  with torch.no_grad():
    ref = _video_nhwc(model.decode(_frames_nchw(latents / model.config.scaling_factor)).sample, B)
  out = np.asarray(setup["decode"](latents))
  err = max_rel_error(out, ref)
  print(f"VAE decode: max|ref| {np.abs(ref).max():.3f}, relative max error {err:.2e}")
  assert out.shape == (B, T, H, W, 3)
  assert err <= TOL


def test_sample_is_mean_plus_scaled_noise(setup):
  """With an rng the latents are (mean + std·ε)·scale: deterministic per key, and their
  deviation from the mean matches the PyTorch posterior's std."""
  model, video, encode = setup["model"], setup["video"], setup["encode"]
  key = jax.random.PRNGKey(3)
  a, b = np.asarray(encode(video, key)), np.asarray(encode(video, key))
  np.testing.assert_array_equal(a, b)
  mean = np.asarray(encode(video))
  with torch.no_grad():
    std = _video_nhwc(model.encode(_frames_nchw(video)).latent_dist.std, B)
  noise = (a - mean) / (model.config.scaling_factor * std)
  assert abs(noise.mean()) < 0.15 and 0.8 < noise.std() < 1.2
