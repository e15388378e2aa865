"""CLIP (ViT image tower + causal text tower) in Flax Linen, Hugging Face weight import, CLIP score.

The paper measures text alignment with the frame-level CLIP score (Dreamix App. G): the cosine
similarity between the CLIP embedding of each frame and the CLIP embedding of the prompt, averaged
over frames. `ClipScorer.score` returns that mean cosine as is (in [−1, 1]; about 0.30 for the
paper's methods, its Table 2 convention), not multiplied by 100 and without CLIPScore's
`2.5 · max(cos, 0)` rescaling.

The modules mirror `transformers.CLIPModel` (pre-LN transformer blocks, class token and learned
position embeddings, bias-free patch convolution and projections, pre/post layer norms, a causal
text tower pooled at the end-of-text token) so that a local Hugging Face CLIP directory
(`config.json`, `model.safetensors` or sharded safetensors with an index, tokenizer files,
optionally `preprocessor_config.json`) loads through an explicit name map. Every matmul runs at
`Precision.HIGHEST`: this is a metric, and accelerators would otherwise use reduced precision.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import safetensors

from dreamix_jax.metrics import frames as frames_lib

Params = Mapping[str, Any]

_PRECISION = jax.lax.Precision.HIGHEST
# Defaults of Hugging Face's CLIPImageProcessor (OpenAI's CLIP normalisation).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Buffers that older Hugging Face checkpoints saved; they carry no learned values.
_IGNORED_TENSORS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")
# Configs with this eos id predate transformers PR #24773: pool at the argmax token id instead.
_LEGACY_EOS_TOKEN_ID = 2

_ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


@dataclasses.dataclass(frozen=True)
class TowerConfig:
  """One transformer tower of CLIP (fields of a Hugging Face vision or text config)."""
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  hidden_act: str
  layer_norm_eps: float

  def __post_init__(self):
    if self.hidden_act not in _ACTIVATIONS:
      raise ValueError(f"Unsupported CLIP hidden_act {self.hidden_act!r}; supported: "
                       f"{sorted(_ACTIVATIONS)}.")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads "
                       f"{self.num_heads}.")


@dataclasses.dataclass(frozen=True)
class ClipConfig:
  """Architecture of a CLIP model, read from a Hugging Face `CLIPConfig`."""
  vision: TowerConfig
  text: TowerConfig
  image_size: int
  patch_size: int
  num_channels: int
  vocab_size: int
  max_position_embeddings: int
  eos_token_id: int
  projection_dim: int

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size)**2

  @classmethod
  def from_hf(cls, hf_config) -> ClipConfig:
    """Builds the config from a `transformers.CLIPConfig`."""
    vc, tc = hf_config.vision_config, hf_config.text_config
    if tc.eos_token_id is None:
      raise ValueError("The CLIP text config has no eos_token_id; set it to the tokenizer's "
                       "end-of-text id (text pooling happens at that token).")

    def tower(c) -> TowerConfig:
      return TowerConfig(c.hidden_size, c.intermediate_size, c.num_hidden_layers,
                         c.num_attention_heads, c.hidden_act, c.layer_norm_eps)

    return cls(vision=tower(vc), text=tower(tc), image_size=vc.image_size,
               patch_size=vc.patch_size, num_channels=vc.num_channels,
               vocab_size=tc.vocab_size, max_position_embeddings=tc.max_position_embeddings,
               eos_token_id=tc.eos_token_id, projection_dim=hf_config.projection_dim)


class SelfAttention(nn.Module):
  """Multi-head self-attention with biased q/k/v/out projections."""
  hidden_size: int
  num_heads: int

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """x: (B, L, D); mask: (L, L) bool, True where attending is allowed. Returns (B, L, D)."""
    head_dim = self.hidden_size // self.num_heads

    def project(name: str) -> jax.Array:
      y = nn.Dense(self.hidden_size, precision=_PRECISION, name=name)(x)
      return y.reshape(*x.shape[:2], self.num_heads, head_dim)

    q, k, v = project("q_proj"), project("k_proj"), project("v_proj")
    logits = jnp.einsum("bqhd,bkhd->bhqk", q * head_dim**-0.5, k, precision=_PRECISION)
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v, precision=_PRECISION)
    out = out.reshape(*x.shape[:2], self.hidden_size)
    return nn.Dense(self.hidden_size, precision=_PRECISION, name="out_proj")(out)


class MLP(nn.Module):
  """fc1 -> activation -> fc2."""
  config: TowerConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (B, L, D) -> (B, L, D)."""
    h = nn.Dense(self.config.intermediate_size, precision=_PRECISION, name="fc1")(x)
    h = _ACTIVATIONS[self.config.hidden_act](h)
    return nn.Dense(self.config.hidden_size, precision=_PRECISION, name="fc2")(h)


class EncoderLayer(nn.Module):
  """Pre-LN transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""
  config: TowerConfig

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """x: (B, L, D) -> (B, L, D)."""
    c = self.config
    h = nn.LayerNorm(epsilon=c.layer_norm_eps, name="layer_norm1")(x)
    x = x + SelfAttention(c.hidden_size, c.num_heads, name="self_attn")(h, mask)
    h = nn.LayerNorm(epsilon=c.layer_norm_eps, name="layer_norm2")(x)
    h = MLP(c, name="mlp")(h)
    return x + h


class Encoder(nn.Module):
  """A stack of `EncoderLayer`s named `layers_{i}`."""
  config: TowerConfig

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """x: (B, L, D) -> (B, L, D)."""
    for i in range(self.config.num_layers):
      x = EncoderLayer(self.config, name=f"layers_{i}")(x, mask)
    return x


class VisionTower(nn.Module):
  """ViT image tower; returns the post-layer-normed class token."""
  config: ClipConfig

  @nn.compact
  def __call__(self, pixels: jax.Array) -> jax.Array:
    """pixels: (B, S, S, C) normalised images, S = image_size. Returns (B, hidden)."""
    c = self.config
    if pixels.shape[1:] != (c.image_size, c.image_size, c.num_channels):
      raise ValueError(f"CLIP expects images of shape (B, {c.image_size}, {c.image_size}, "
                       f"{c.num_channels}), got {pixels.shape}.")
    width = c.vision.hidden_size
    emb = nn.Conv(width, (c.patch_size, c.patch_size), strides=(c.patch_size, c.patch_size),
                  padding="VALID", use_bias=False, precision=_PRECISION,
                  name="patch_embedding")(pixels)
    emb = emb.reshape(pixels.shape[0], -1, width)
    class_embedding = self.param("class_embedding", nn.initializers.normal(0.02), (width,))
    cls = jnp.broadcast_to(class_embedding, (pixels.shape[0], 1, width))
    emb = jnp.concatenate([cls.astype(emb.dtype), emb], axis=1)
    positions = nn.Embed(c.num_patches + 1, width, name="position_embedding")
    x = emb + positions(jnp.arange(c.num_patches + 1))[None]
    x = nn.LayerNorm(epsilon=c.vision.layer_norm_eps, name="pre_layrnorm")(x)
    x = Encoder(c.vision, name="encoder")(x)
    return nn.LayerNorm(epsilon=c.vision.layer_norm_eps, name="post_layernorm")(x[:, 0])


def eos_positions(input_ids: jax.Array, eos_token_id: int) -> jax.Array:
  """Index of the pooled token of each sequence, as Hugging Face's CLIP text model.

  Args:
    input_ids: (B, L) int token ids.
    eos_token_id: the config's end-of-text id. The legacy value 2 selects the largest token id
      (the end-of-text token of the original vocabulary); otherwise the first `eos_token_id`.

  Returns:
    (B,) int32 positions.
  """
  if eos_token_id == _LEGACY_EOS_TOKEN_ID:
    return jnp.argmax(input_ids, axis=-1).astype(jnp.int32)
  return jnp.argmax(input_ids == eos_token_id, axis=-1).astype(jnp.int32)


class TextTower(nn.Module):
  """Causal text transformer; returns the final-layer-normed end-of-text token."""
  config: ClipConfig

  @nn.compact
  def __call__(self, input_ids: jax.Array) -> jax.Array:
    """input_ids: (B, L) int, L <= max_position_embeddings. Returns (B, hidden)."""
    c = self.config
    length = input_ids.shape[1]
    if length > c.max_position_embeddings:
      raise ValueError(f"Token sequence of length {length} exceeds CLIP's "
                       f"max_position_embeddings ({c.max_position_embeddings}).")
    width = c.text.hidden_size
    x = nn.Embed(c.vocab_size, width, name="token_embedding")(input_ids)
    x = x + nn.Embed(c.max_position_embeddings, width,
                     name="position_embedding")(jnp.arange(length))[None]
    causal = jnp.tril(jnp.ones((length, length), dtype=bool))
    x = Encoder(c.text, name="encoder")(x, causal)
    x = nn.LayerNorm(epsilon=c.text.layer_norm_eps, name="final_layer_norm")(x)
    pooled = eos_positions(input_ids, c.eos_token_id)
    return x[jnp.arange(x.shape[0]), pooled]


class ClipModel(nn.Module):
  """CLIP: both towers, bias-free projections and the learned logit scale."""
  config: ClipConfig

  def setup(self):
    self.vision_model = VisionTower(self.config)
    self.text_model = TextTower(self.config)
    self.visual_projection = nn.Dense(self.config.projection_dim, use_bias=False,
                                      precision=_PRECISION)
    self.text_projection = nn.Dense(self.config.projection_dim, use_bias=False,
                                    precision=_PRECISION)
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(np.log(1 / 0.07)), ())

  def image_features(self, pixels: jax.Array) -> jax.Array:
    """pixels: (B, S, S, C) normalised images -> (B, projection_dim), not unit-normalised."""
    return self.visual_projection(self.vision_model(pixels))

  def text_features(self, input_ids: jax.Array) -> jax.Array:
    """input_ids: (B, L) -> (B, projection_dim), not unit-normalised."""
    return self.text_projection(self.text_model(input_ids))

  def __call__(self, pixels: jax.Array, input_ids: jax.Array) -> jax.Array:
    """Returns logits_per_image (B_img, B_txt) = exp(logit_scale) · cos(image_i, text_j)."""
    image = _unit(self.image_features(pixels))
    text = _unit(self.text_features(input_ids))
    return jnp.exp(self.logit_scale) * jnp.matmul(image, text.T, precision=_PRECISION)


def _unit(x: jax.Array) -> jax.Array:
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


# ----------------------------------------------------------------------------- weight import

# How a Hugging Face tensor becomes a Flax leaf of the same values.
_TRANSFORMS = {
    "linear": lambda w: w.T,  # (out, in) -> (in, out)
    "conv": lambda w: w.transpose(2, 3, 1, 0),  # (O, I, kh, kw) -> (kh, kw, I, O)
    "copy": lambda w: w,
}
FlaxPath = tuple[str, ...]


def _dense(hf: str, fx: FlaxPath, bias: bool = True) -> dict[str, tuple[FlaxPath, str]]:
  specs = {f"{hf}.weight": (fx + ("kernel",), "linear")}
  if bias:
    specs[f"{hf}.bias"] = (fx + ("bias",), "copy")
  return specs


def _norm(hf: str, fx: FlaxPath) -> dict[str, tuple[FlaxPath, str]]:
  return {f"{hf}.weight": (fx + ("scale",), "copy"), f"{hf}.bias": (fx + ("bias",), "copy")}


def _tower_specs(prefix: str, tower: TowerConfig) -> dict[str, tuple[FlaxPath, str]]:
  specs = {}
  for i in range(tower.num_layers):
    hf, fx = f"{prefix}.encoder.layers.{i}", (prefix, "encoder", f"layers_{i}")
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
      specs.update(_dense(f"{hf}.self_attn.{proj}", fx + ("self_attn", proj)))
    for fc in ("fc1", "fc2"):
      specs.update(_dense(f"{hf}.mlp.{fc}", fx + ("mlp", fc)))
    for norm in ("layer_norm1", "layer_norm2"):
      specs.update(_norm(f"{hf}.{norm}", fx + (norm,)))
  return specs


def hf_name_map(config: ClipConfig) -> dict[str, tuple[FlaxPath, str]]:
  """Hugging Face tensor name -> (Flax parameter path, transform name) for every parameter."""
  v, t = "vision_model", "text_model"
  specs = {
      "logit_scale": (("logit_scale",), "copy"),
      f"{v}.embeddings.class_embedding": ((v, "class_embedding"), "copy"),
      f"{v}.embeddings.patch_embedding.weight": ((v, "patch_embedding", "kernel"), "conv"),
      f"{v}.embeddings.position_embedding.weight": ((v, "position_embedding", "embedding"),
                                                    "copy"),
      f"{t}.embeddings.token_embedding.weight": ((t, "token_embedding", "embedding"), "copy"),
      f"{t}.embeddings.position_embedding.weight": ((t, "position_embedding", "embedding"),
                                                    "copy"),
  }
  specs.update(_dense("visual_projection", ("visual_projection",), bias=False))
  specs.update(_dense("text_projection", ("text_projection",), bias=False))
  specs.update(_norm(f"{v}.pre_layrnorm", (v, "pre_layrnorm")))
  specs.update(_norm(f"{v}.post_layernorm", (v, "post_layernorm")))
  specs.update(_norm(f"{t}.final_layer_norm", (t, "final_layer_norm")))
  specs.update(_tower_specs(v, config.vision))
  specs.update(_tower_specs(t, config.text))
  return specs


def params_from_hf(tensors: Mapping[str, np.ndarray], config: ClipConfig) -> dict[str, Any]:
  """Converts Hugging Face `CLIPModel` tensors to Flax variables of `ClipModel(config)`.

  Args:
    tensors: Hugging Face tensor name -> array (any float dtype; cast to float32).
    config: the model's architecture.

  Returns:
    {"params": nested dict} for `ClipModel(config).apply`.

  Raises:
    ValueError: naming every missing or unexpected tensor, or the first one whose shape differs
      from what `config` requires.
  """
  name_map = hf_name_map(config)
  missing = sorted(set(name_map) - set(tensors))
  unexpected = sorted(set(tensors) - set(name_map) - set(_IGNORED_TENSORS))
  if missing or unexpected:
    raise ValueError(f"CLIP checkpoint does not match its config: missing tensors {missing}, "
                     f"unexpected tensors {unexpected}.")
  expected = jax.eval_shape(
      ClipModel(config).init, jax.random.key(0),
      jax.ShapeDtypeStruct((1, config.image_size, config.image_size, config.num_channels),
                           jnp.float32), jax.ShapeDtypeStruct((1, 1), jnp.int32))["params"]
  params: dict[str, Any] = {}
  for hf_name, (path, transform) in name_map.items():
    value = _TRANSFORMS[transform](np.asarray(tensors[hf_name], dtype=np.float32))
    want = _lookup(expected, path).shape
    if value.shape != want:
      raise ValueError(f"CLIP tensor {hf_name} has shape {tuple(tensors[hf_name].shape)}; the "
                       f"config requires {want} in Flax layout (got {value.shape}).")
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = jnp.asarray(value)
  return {"params": params}


def _lookup(tree: Mapping[str, Any], path: Sequence[str]) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def load_safetensors_dir(model_dir: str) -> dict[str, np.ndarray]:
  """Reads `model.safetensors`, or the shards named by `model.safetensors.index.json`."""
  single = os.path.join(model_dir, "model.safetensors")
  index = os.path.join(model_dir, "model.safetensors.index.json")
  if os.path.exists(single):
    files = [single]
  elif os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
    files = [os.path.join(model_dir, name) for name in sorted(set(weight_map.values()))]
  else:
    raise FileNotFoundError(f"No model.safetensors or model.safetensors.index.json in "
                            f"{model_dir}; save the model with `save_pretrained(..., "
                            "safe_serialization=True)`.")
  tensors = {}
  for path in files:
    if not os.path.exists(path):
      raise FileNotFoundError(f"Safetensors shard {path} listed in {index} does not exist.")
    with safetensors.safe_open(path, framework="numpy") as f:
      for name in f.keys():
        tensors[name] = f.get_tensor(name)
  return tensors


def load_clip(model_dir: str) -> tuple[ClipModel, dict[str, Any]]:
  """Loads a local Hugging Face CLIP directory. Returns (module, variables)."""
  import transformers  # pylint: disable=g-import-not-at-top  (heavy; only needed to load)

  if not os.path.isfile(os.path.join(model_dir, "config.json")):
    raise FileNotFoundError(f"{model_dir} is not a Hugging Face CLIP directory: no config.json.")
  config = ClipConfig.from_hf(transformers.CLIPConfig.from_pretrained(model_dir))
  return ClipModel(config), params_from_hf(load_safetensors_dir(model_dir), config)


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

    self.model, self.variables = load_clip(clip_dir)
    self.tokenizer = transformers.AutoTokenizer.from_pretrained(clip_dir)
    self.preprocessing = ImagePreprocessing.from_dir(clip_dir, self.model.config.image_size)
    self.target_fps = target_fps
    self.max_frames = max_frames
    self._embed_frames = jax.jit(self._embed_frames_impl)
    self._embed_tokens = jax.jit(self._embed_tokens_impl)

  def _embed_frames_impl(self, variables: Params, unit_frames: jax.Array) -> jax.Array:
    p = self.preprocessing
    pixels = frames_lib.resize_center_crop(unit_frames, resize_to=p.resize_to, crop_to=p.crop_to)
    pixels = (pixels - jnp.asarray(p.mean)) / jnp.asarray(p.std)
    return _unit(self.model.apply(variables, pixels, method=ClipModel.image_features))

  def _embed_tokens_impl(self, variables: Params, input_ids: jax.Array) -> jax.Array:
    return _unit(self.model.apply(variables, input_ids, method=ClipModel.text_features))

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
