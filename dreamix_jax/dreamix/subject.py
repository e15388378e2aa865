"""Subject-driven generation (paper §5, App. D): finetune on a few images of one subject with α = 0
(frames objective only: a collection of images has no motion to learn), then sample text-to-video
from noise with prompts that contain the rare token t*.
"""

from __future__ import annotations

import numpy as np


def pack_images(images: np.ndarray, num_frames: int) -> np.ndarray:
  """The image collection (N, H, W, 3) as the frames of one video (num_frames, H, W, 3), cycling
  through the images. With α = 0 the frames are independent, so their order does not matter."""
  if len(images) == 0:
    raise ValueError("The subject collection holds no images.")
  return images[np.arange(num_frames) % len(images)]


def mentions_subject(prompts, token: str) -> bool:
  """Whether any prompt asks for the finetuned subject (contains `token`)."""
  return any(token in p for p in prompts)
