"""Data: video and image input/output, preprocessing, datasets and input pipelines."""
