"""dreamix_jax: Dreamix video editing on an Imagen-Video-style cascade, in JAX/Flax."""

__version__ = "0.1.0"
