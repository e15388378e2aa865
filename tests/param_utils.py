"""Parameter helpers shared by the tests."""

import jax


def randomise(params, seed, scale=0.2):
  """`params` plus Gaussian noise of std `scale` on every leaf, so the zero-initialised layers
  (temporal, output, frame embedding) are non-zero too and really take part in the output."""
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree_util.tree_unflatten(
      tree, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
