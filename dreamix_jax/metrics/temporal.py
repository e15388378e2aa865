"""Temporal distance: how much a video changes from frame to frame, in pixel space.

The paper measures temporal stability with LPIPS between consecutive frames (`metrics.lpips`),
which needs converted VGG or AlexNet weights. This is the weight-free stand-in every evaluation
can report: for a video `(T, H, W, 3)` in [-1, 1], the RMS pixel difference of each pair of
consecutive frames, averaged over the T − 1 pairs (in [-1, 1] units; 0 for a still video, lower
is stabler). It does not subsample frames or resize: it scores the video as stored.
"""

from __future__ import annotations

import numpy as np


def temporal_distance(video: np.ndarray) -> float:
  """Mean over consecutive frame pairs of the RMS pixel difference; video: (T, H, W, 3) in
  [-1, 1]."""
  video = np.asarray(video, np.float32)
  if video.ndim != 4 or video.shape[0] < 2:
    raise ValueError(f"Temporal distance needs a video (T >= 2, H, W, 3), got {video.shape}.")
  diff = video[1:] - video[:-1]
  return float(np.sqrt((diff * diff).mean(axis=(1, 2, 3))).mean())
