"""Evaluation: the moving-shapes pixel probe and video metrics."""
