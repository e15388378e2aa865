"""Text encoders: T5 v1.1 in Flax, Hugging Face weight import, prompt embedder and cache."""
