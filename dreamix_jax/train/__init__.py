"""Training: state, optimizers, losses, the loop, checkpoints."""
