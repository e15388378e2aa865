"""Video metrics for any video: frame-level CLIP score, temporal LPIPS, temporal distance; and the
confidence interval of a share of successes (`proportions`)."""
