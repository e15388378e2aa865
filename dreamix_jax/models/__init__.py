"""Flax modules: the space-time U-Net, its layers, and the T5 text encoder."""
