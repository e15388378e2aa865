"""Continuous-time Gaussian diffusion: schedules, objectives and samplers."""
