"""Video metrics for any video: frame-level CLIP score, temporal LPIPS, temporal distance."""
