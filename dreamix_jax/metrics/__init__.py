"""Video metrics that work on any video: frame-level CLIP score, temporal LPIPS, temporal distance."""
