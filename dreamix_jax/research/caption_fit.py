"""Can the base stage tie a caption word to what the video shows? A memorisation test.

Clips that differ in one attribute only (`ATTRIBUTE_VALUES`: motion left / right / up / down, four
colors, or the three shapes or backgrounds), the object of fixed size and speed on a path through
the frame's center, and their captions. A copy of the base stage's weights is trained on exactly
these clips at the schedule's lowest log-SNR, where the noisy input says nothing about the clip:
the loss can fall below that of predicting the clips' average only through the caption. Every
`report_every` steps the x̂0 of each caption from pure noise (averaged over two draws) is compared
with the clips: `matched` counts the captions whose prediction is nearest their own clip (all of
them = every word tied to its clip; 1 = one prediction for all), `relative_error` is the mean
squared error to the own clip over the clips' variance.

The pretraining data ask for the same mapping, only more weakly (`research.mean_drift` measures
how much the motion words change the caption-mean video); this benchmark asks whether the weights
can learn it at all, and how fast compared with another attribute.

Files: `caption_fit.csv` / `.md` (one row per attribute and report step).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dreamix_jax.shapes import world as shapes
from dreamix_jax.diffusion import schedules
from dreamix_jax.data import report

ATTRIBUTE_VALUES = {
    "motion": ("left", "right", "up", "down"),
    "color": ("red", "green", "blue", "yellow"),
    "shape": ("circle", "square", "triangle"),
    "background": ("black", "gray", "purple"),
}
_DEFAULTS = dict(shape="circle", color="red", background="black", motion="right")
SIZE, SPEED = 14.0, 1.0  # reference pixels, reference pixels per reference frame


def fit_clips(attribute: str, shape: tuple[int, int, int]
              ) -> tuple[list[shapes.ClipAttributes], np.ndarray]:
  """The clips of `attribute`'s values (all else fixed) and their videos (N, T, H, W, 3) in
  [-1, 1] at `shape` = (frames, height, width) (rendered at the world's reference size, then
  derived)."""
  if attribute not in ATTRIBUTE_VALUES:
    raise ValueError(f"caption_fit attribute {attribute!r} is not one of {list(ATTRIBUTE_VALUES)}.")
  travel = SPEED * (shapes.REF_FRAMES - 1)
  clips = []
  for value in ATTRIBUTE_VALUES[attribute]:
    attrs = {**_DEFAULTS, attribute: value}
    dx, dy = shapes.MOTION_DIRECTION[attrs["motion"]]
    clips.append(shapes.ClipAttributes(
        **attrs, x=shapes.REF_WIDTH / 2 - dx * travel / 2, y=shapes.REF_HEIGHT / 2 - dy * travel / 2,
        size=SIZE, speed=SPEED, texture_seed=7))
  videos = shapes.render_batch(clips)
  return clips, np.stack([shapes.derive(v, *shape) for v in videos])


@functools.lru_cache(maxsize=4)
def _fit_functions(apply, learning_rate: float):
  """The optimizer and the jitted Adam step and x̂0 prediction of `fit` for one denoiser and
  learning rate: the clips, captions and log-SNRs are arguments, so every fit of the same shapes
  (each attribute's four clips) reuses one compilation."""
  optimizer = optax.adam(learning_rate)

  def loss_fn(p, key, videos, lam, text, text_mask):
    eps = jax.random.normal(key, videos.shape)
    z = schedules.diffuse(videos, eps, lam)
    v = apply(p, z, lam, text, text_mask, temporal_mask=jnp.zeros_like(lam))
    return jnp.mean(jnp.square(v - schedules.v_target(videos, eps, lam)))

  @jax.jit
  def step(p, opt_state, key, *data):
    loss, grads = jax.value_and_grad(loss_fn)(p, key, *data)
    updates, opt_state = optimizer.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, loss

  @jax.jit
  def predict(p, key, videos, lam, text, text_mask):
    eps = jax.random.normal(key, videos.shape)
    v = apply(p, eps, lam, text, text_mask, temporal_mask=jnp.zeros_like(lam))
    return schedules.x_from_v(eps, v, lam)

  return optimizer, step, predict


def fit(apply, params, text: np.ndarray, text_mask: np.ndarray, videos: np.ndarray, *,
        logsnr: float, steps: int, learning_rate: float, report_every: int, seed: int
        ) -> list[dict]:
  """Adam on the v-loss of `videos` (N, T, H, W, 3) at `logsnr` from `params`; rows
  {step, loss, matched, relative_error} at step 0 and every `report_every` steps."""
  n = len(videos)
  data = (jnp.asarray(videos), jnp.full((n,), logsnr, jnp.float32), jnp.asarray(text),
          jnp.asarray(text_mask))
  optimizer, step, predict = _fit_functions(apply, float(learning_rate))
  variance = float(jnp.var(data[0]))
  eval_keys = jax.random.split(jax.random.PRNGKey(seed + 1), 2)

  def row(i, p, loss):
    x0 = np.mean([np.asarray(predict(p, k, *data)) for k in eval_keys], axis=0)
    errors = np.square(x0[:, None] - np.asarray(videos)[None]).mean(axis=(2, 3, 4, 5))  # (pred, clip)
    return dict(step=i, loss=loss, matched=int((errors.argmin(axis=1) == np.arange(n)).sum()),
                relative_error=float(np.diag(errors).mean() / variance))

  opt_state = optimizer.init(params)
  rows = [row(0, params, float("nan"))]
  key = jax.random.PRNGKey(seed)
  for i in range(1, steps + 1):
    params, opt_state, loss = step(params, opt_state, jax.random.fold_in(key, i), *data)
    if i % report_every == 0 or i == steps:
      rows.append(row(i, params, float(loss)))
  return rows


def run_benchmark(config, workdir: str, *, cascade, params, embedder, timer) -> dict[str, str]:
  """The eval job's `benchmark=caption_fit` (arguments: `jobs.evaluate.Benchmark`): fits every
  attribute in `config.caption_fit.attributes` (with steps, learning_rate, report_every), each from
  the base stage's loaded weights, and writes `write_results`' files; returns {kind: path}.
  `config.seed` seeds noise."""
  cfg = config.caption_fit
  if cfg.steps < 1 or cfg.report_every < 1 or cfg.learning_rate <= 0:
    raise ValueError(f"caption_fit.steps ({cfg.steps}) and report_every ({cfg.report_every}) must "
                     f"be >= 1 and learning_rate ({cfg.learning_rate}) > 0.")
  unknown = [a for a in cfg.attributes if a not in ATTRIBUTE_VALUES]
  if unknown:
    raise ValueError(f"caption_fit.attributes {unknown} are not among {list(ATTRIBUTE_VALUES)}.")
  base = cascade.stages[0]
  if base.conditional:
    raise ValueError(f"caption_fit needs a base stage first; {base.name!r} is {base.kind}.")
  apply = cascade.denoiser(base)
  rows = []
  for attribute in cfg.attributes:
    clips, videos = fit_clips(attribute, base.shape)
    text, mask = embedder([shapes.caption(c) for c in clips])
    with timer(f"caption_fit_{attribute}"):
      fitted = fit(apply, params[base.name], text, mask, videos,
                   logsnr=cascade.schedule.logsnr_min, steps=cfg.steps,
                   learning_rate=cfg.learning_rate, report_every=cfg.report_every,
                   seed=config.seed)
    rows += [dict(attribute=attribute, captions=len(clips), **r) for r in fitted]
  return write_results(workdir, rows)


def write_results(workdir: str, rows: Sequence[dict]) -> dict[str, str]:
  """Writes caption_fit.csv/.md; returns {kind: path}."""
  paths = {}
  paths["table_csv"], paths["table_md"] = report.write_tables(
      f"{workdir}/caption_fit", rows,
      title="Caption fit (base stage): clips differing in one attribute, memorised from pure "
            "noise; `matched`: captions whose x̂0 is nearest their own clip")
  return paths
