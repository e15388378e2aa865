"""The frame-level CLIP score of a video against its prompt (the paper's text-alignment metric).

The paper measures text alignment with the frame-level CLIP score (Dreamix App. G): the cosine
similarity between the CLIP embedding of each frame and the CLIP embedding of the prompt, averaged
over frames. `ClipScorer.score` returns that mean cosine as is (in [−1, 1]; about 0.30 for the
paper's methods, its Table 2 convention), not multiplied by 100 and without CLIPScore's
`2.5 · max(cos, 0)` rescaling.

The model is `metrics.clip_model` (CLIP in Flax), its weights come from a local Hugging Face CLIP
directory through `metrics.clip_weights` (plus the tokenizer files and, optionally,
`preprocessor_config.json`), and frames are subsampled and resized as for every video metric
(`metrics.frames`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dreamix_jax.metrics import clip_model, clip_weights
from dreamix_jax.metrics import frames as frames_lib

Params = Mapping[str, Any]

# Defaults of Hugging Face's CLIPImageProcessor (OpenAI's CLIP normalisation).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class ImagePreprocessing:
  """Resize/crop sizes and normalisation of CLIP's image processor."""
  resize_to: int
  crop_to: int
  mean: tuple[float, float, float] = CLIP_MEAN
  std: tuple[float, float, float] = CLIP_STD

  @classmethod
  def from_dir(cls, model_dir: str, image_size: int) -> ImagePreprocessing:
    """Reads `preprocessor_config.json` when present; CLIP's defaults at `image_size` otherwise."""
    path = os.path.join(model_dir, "preprocessor_config.json")
    if not os.path.exists(path):
      return cls(image_size, image_size)
    with open(path) as f:
      cfg = json.load(f)
    size, crop = cfg.get("size", image_size), cfg.get("crop_size", image_size)
    resize_to = size["shortest_edge"] if isinstance(size, dict) else size
    if isinstance(crop, dict):
      if crop["height"] != crop["width"]:
        raise ValueError(f"{path}: CLIP needs a square crop, got crop_size {crop}.")
      crop = crop["height"]
    if crop != image_size:
      raise ValueError(f"{path}: crop_size {crop} differs from the vision tower's image_size "
                       f"{image_size}.")
    return cls(int(resize_to), int(crop), tuple(cfg.get("image_mean", CLIP_MEAN)),
               tuple(cfg.get("image_std", CLIP_STD)))


class ClipScorer:
  """Frame-level CLIP score of a video against a prompt (the paper's alignment metric).

  Usage: `ClipScorer("/path/to/clip-vit-large-patch14").score(video, "a bear dancing", fps=24)`.
  """

  def __init__(self,
               clip_dir: str,
               *,
               target_fps: float = frames_lib.PAPER_FPS,
               max_frames: int = frames_lib.PAPER_MAX_FRAMES):
    import transformers  # pylint: disable=g-import-not-at-top  (heavy; only needed to load)

    self.model, self.variables = clip_weights.load_clip(clip_dir)
    self.tokenizer = transformers.AutoTokenizer.from_pretrained(clip_dir, local_files_only=True)
    self.preprocessing = ImagePreprocessing.from_dir(clip_dir, self.model.config.image_size)
    self.target_fps = target_fps
    self.max_frames = max_frames
    self._embed_frames = jax.jit(self._embed_frames_impl)
    self._embed_tokens = jax.jit(self._embed_tokens_impl)

  def _embed_frames_impl(self, variables: Params, unit_frames: jax.Array) -> jax.Array:
    p = self.preprocessing
    pixels = frames_lib.resize_center_crop(unit_frames, resize_to=p.resize_to, crop_to=p.crop_to)
    pixels = (pixels - jnp.asarray(p.mean)) / jnp.asarray(p.std)
    return clip_model.unit(
        self.model.apply(variables, pixels, method=clip_model.ClipModel.image_features))

  def _embed_tokens_impl(self, variables: Params, input_ids: jax.Array) -> jax.Array:
    return clip_model.unit(
        self.model.apply(variables, input_ids, method=clip_model.ClipModel.text_features))

  def tokenize(self, prompts: Sequence[str]) -> np.ndarray:
    """prompts: B strings -> (B, max_position_embeddings) int32 ids, padded and truncated."""
    length = self.model.config.max_position_embeddings
    ids = self.tokenizer(list(prompts), padding="max_length", max_length=length,
                         truncation=True, return_tensors="np")["input_ids"]
    return ids.astype(np.int32)

  def image_embeddings(self, unit_frames: np.ndarray) -> np.ndarray:
    """unit_frames: (N, H, W, 3) in [0, 1], any size -> (N, projection_dim) unit vectors."""
    return np.asarray(self._embed_frames(self.variables, jnp.asarray(unit_frames, jnp.float32)))

  def text_embeddings(self, prompts: Sequence[str]) -> np.ndarray:
    """prompts: B strings -> (B, projection_dim) unit vectors."""
    return np.asarray(self._embed_tokens(self.variables, self.tokenize(prompts)))

  def frame_scores(self, video: np.ndarray, prompt: str, fps: float) -> np.ndarray:
    """Cosine similarity of each evaluation frame with the prompt.

    Args:
      video: (T, H, W, 3) uint8 in [0, 255] or float in [-1, 1].
      prompt: the text the video should show.
      fps: frame rate of `video`; frames are subsampled to `target_fps`, at most `max_frames`.

    Returns:
      (N,) float array of cosines, N = number of subsampled frames.
    """
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3:
      raise ValueError(f"Expected a video of shape (T, H, W, 3), got {video.shape}.")
    indices = frames_lib.subsample_indices(video.shape[0], fps, self.target_fps, self.max_frames)
    image = self.image_embeddings(frames_lib.to_unit_range(video[indices]))
    text = self.text_embeddings([prompt])[0]
    return image @ text

  def score(self, video: np.ndarray, prompt: str, fps: float) -> float:
    """Mean over frames of cos(CLIP image embedding, CLIP text embedding); see `frame_scores`."""
    return float(np.mean(self.frame_scores(video, prompt, fps)))
