"""Parameter helpers shared by the tests."""

import jax


def randomise(params, seed, scale=0.2):
  """`params` plus Gaussian noise of std `scale` on every leaf, so the zero-initialised layers
  (temporal, output, frame embedding) are non-zero too and really take part in the output."""
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree_util.tree_unflatten(
      tree, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def unet_init(config, rng, *, frames, height, width, text_len, text_dim, in_channels=3):
  """`UNetBackbone(config).init` for inputs of these sizes (SR configs: conditioning of
  `in_channels` channels)."""
  from dreamix_jax.backbones import base, unet
  spec = base.InputSpec(frames, height, width, in_channels, text_len, text_dim,
                        cond_channels=in_channels if config.conditional else 0)
  return unet.UNetBackbone(config).init(rng, spec)


def unet_abstract(config, *, frames, height, width, text_len, text_dim, in_channels=3):
  """`UNetBackbone(config).abstract_params` for inputs of these sizes."""
  from dreamix_jax.backbones import base, unet
  spec = base.InputSpec(frames, height, width, in_channels, text_len, text_dim,
                        cond_channels=in_channels if config.conditional else 0)
  return unet.UNetBackbone(config).abstract_params(spec)
