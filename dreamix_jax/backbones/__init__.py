"""Backbones: the denoiser networks a cascade stage can use, behind one protocol."""
