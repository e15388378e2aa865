"""Does the base stage's caption-mean video move the way the caption says?

At a very low log-SNR the noisy input carries almost nothing about the clip, so the best x0
prediction is the caption's mean video E[x0 | caption]. In the moving-shapes world that mean moves:
an object moving right must stay in the frame, so it starts on the left and ends on the right, and
the average of many such clips is a smear that drifts right over the clip. A denoiser that has tied
the motion words to time reproduces that drift; one whose temporal layers only see relative frame
offsets (translation-equivariant over frames) gets the same input at every frame — noise and one
caption — and predicts a still smear.

For each motion, with the object, color and background fixed (`object_caption`), this benchmark
averages x̂0 = x_from_v(z, v̂) over `num_noise` pure-noise draws at each of `logsnrs`, and compares
the displacement of its salient centroid (first quarter of the frames → last quarter) with the
same statistic of the world's own mean over `num_clips` rendered clips of that caption. Forward
passes only (seconds), so it can be run at every checkpoint.

It also reports how much the loss asks for that drift (`still_mean_cost`): the extra x0 error of
a still smear over the drifting mean, as a share of the mean's own error. A small share means the
loss rewards the motion words only weakly, so pretraining learns them late.

With `num_samples` > 0 it also asks whether learning that drift would be enough for the samples
to move the caption's way (`direction_from_mean`): the guided sampler is started at the log-SNR of
its second step from where its first step would have put it if the base predicted every caption's
mean from pure noise, and the probe reads the samples' motion, against samples from pure noise.

Files: `drift.csv` / `.md` (one row per motion: data dx, dy and still-mean cost; model dx, dy per
log-SNR; pixels of the stage's frame; with `num_samples`, the share of samples that move the
caption's way from the mean start and from pure noise).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dreamix_jax.shapes import world as shapes
from dreamix_jax.diffusion import parametrisation, sampling, schedules
from dreamix_jax.shapes import probe
from dreamix_jax.data import report

Denoise = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


def centroid_drift(video: np.ndarray, background: str) -> tuple[float, float]:
  """(dx, dy) in pixels: the salient centroid's mean over the last quarter of the frames minus
  its mean over the first quarter. video: (T, H, W, 3) in [-1, 1]; salience is the distance from
  the background color above its median over the clip (the smear of a mean video counts, the
  background does not)."""
  t, h, w, _ = video.shape
  if t < 4:
    raise ValueError(f"centroid_drift needs at least 4 frames, got {t}.")
  rgb = np.asarray(shapes.BACKGROUND_RGB[background], np.float32) * 2 - 1
  distance = np.linalg.norm(video - rgb, axis=-1)  # (T, H, W)
  salience = np.maximum(distance - np.median(distance), 0.0)
  mass = salience.sum(axis=(1, 2))
  if np.any(mass <= 0):
    return float("nan"), float("nan")
  ys, xs = np.mgrid[:h, :w] + 0.5
  cx = (salience * xs).sum(axis=(1, 2)) / mass
  cy = (salience * ys).sum(axis=(1, 2)) / mass
  q = t // 4
  return float(cx[-q:].mean() - cx[:q].mean()), float(cy[-q:].mean() - cy[:q].mean())


def world_clips(target: shapes.Attributes, shape: tuple[int, int, int], num_clips: int,
                seed: int) -> np.ndarray:
  """`num_clips` clips of the caption of `target`: positions, sizes and speeds drawn as the
  dataset draws them for `target.motion`, the object and background as `target`.
  (N, T, H, W, 3); their mean over N estimates E[x0 | caption]."""
  rng = np.random.default_rng(seed)
  clips = []
  while len(clips) < num_clips:
    attrs = shapes.sample_attributes(rng)
    if attrs.motion == target.motion:
      clips.append(dataclasses.replace(attrs, shape=target.shape, color=target.color,
                                       background=target.background))
  return shapes.render_batch(clips, *shape)


def still_mean_cost(clips: np.ndarray) -> float:
  """How much the loss asks for the drift: the extra squared x0 error of predicting the caption's
  mean frame at every frame (a still smear) instead of its mean video, as a share of the error of
  the mean video itself. clips: (N, T, H, W, C)."""
  mean = clips.mean(axis=0)
  still = mean.mean(axis=0, keepdims=True)
  return float(np.mean(np.square(mean - still)) / np.mean(np.square(clips - mean)))


def predicted_mean_video(denoise: Denoise, text: np.ndarray, text_mask: np.ndarray,
                         shape: tuple[int, int, int], logsnr: float, num_noise: int,
                         seed: int) -> np.ndarray:
  """x̂0 averaged over `num_noise` draws of z ~ N(0, I) at `logsnr`, one caption `(L, D)`:
  (T, H, W, 3). `denoise(z, logsnr (N,), text (N, L, D), mask (N, L)) -> v̂`."""
  z = jax.random.normal(jax.random.PRNGKey(seed), (num_noise,) + tuple(shape) + (3,))
  lam = jnp.full((num_noise,), logsnr, jnp.float32)
  text = jnp.broadcast_to(jnp.asarray(text, jnp.float32), (num_noise,) + text.shape)
  mask = jnp.broadcast_to(jnp.asarray(text_mask, bool), (num_noise,) + text_mask.shape)
  x0 = schedules.x_from_v(z, denoise(z, lam, text, mask), lam)
  return np.asarray(jax.device_get(x0.mean(axis=0)))


def measure(denoise: Denoise, embedder, *, shape: tuple[int, int, int],
            object_caption: shapes.Attributes, logsnrs: Sequence[float], num_noise: int,
            num_clips: int, seed: int) -> list[dict]:
  """One row per motion of `shapes.MOTIONS`: `motion`, `data_dx`, `data_dy`, `still_mean_cost`
  (`still_mean_cost` of the world's clips) and `model_dx_at_<λ>`, `model_dy_at_<λ>` per log-SNR
  (pixels at `shape`)."""
  rows = []
  for motion in shapes.MOTIONS:
    target = dataclasses.replace(object_caption, motion=motion)
    text, mask = embedder([shapes.caption(target)])
    clips = world_clips(target, shape, num_clips, seed)
    dx, dy = centroid_drift(clips.mean(axis=0), target.background)
    row = dict(motion=motion, data_dx=dx, data_dy=dy, still_mean_cost=still_mean_cost(clips))
    for lam in logsnrs:
      mean = predicted_mean_video(denoise, text[0], mask[0], shape, lam, num_noise, seed)
      row[f"model_dx_at_{lam:g}"], row[f"model_dy_at_{lam:g}"] = centroid_drift(
          mean, target.background)
    rows.append(row)
  return rows


def guided_start(means: dict[str, np.ndarray], guidance: float) -> dict[str, np.ndarray]:
  """The x̂0 a guided sampler's first step makes of a base that predicts every caption's mean video
  from pure noise: m_c + w (m_c − m̄), with m̄ the mean over the motions (the object's mean
  whatever its motion, standing in for the unconditional prediction).
  means: motion -> (T, H, W, 3)."""
  unconditional = np.mean(list(means.values()), axis=0)
  return {m: v + guidance * (v - unconditional) for m, v in means.items()}


def direction_from_mean(sample: Callable, embedder, *, object_caption: shapes.Attributes,
                        starts: dict[str, np.ndarray], schedule: schedules.CosineLogSNR,
                        start_logsnr: float, num_samples: int, seed: int) -> dict[str, tuple]:
  """Would the caption's mean at pure noise set the sample's motion? For each motion,
  `num_samples` samples started at `start_logsnr` from z = α x̂0 + σ ε with x̂0 = `starts[motion]`
  (e.g. `guided_start`), and as many from pure noise, both with the caption; the probe reads
  their motion.

  `sample(text (N, L, D), mask (N, L), z_start (N, T, H, W, 3) or None, t_start) -> (N, T, H, W, 3)`
  (None: from pure noise). Returns motion -> (share of the mean-started samples whose motion is
  the caption's, the same share from pure noise).
  """
  motions = list(starts)
  captions = [shapes.caption(dataclasses.replace(object_caption, motion=m)) for m in motions]
  text, mask = embedder(captions)
  text, mask = np.repeat(text, num_samples, 0), np.repeat(mask, num_samples, 0)
  x0 = np.repeat(np.stack([starts[m] for m in motions]), num_samples, 0)
  lam = jnp.full((x0.shape[0],), start_logsnr, jnp.float32)
  eps = jax.random.normal(jax.random.PRNGKey(seed), x0.shape)
  z = schedules.diffuse(jnp.asarray(x0), eps, lam)
  t_start = float(schedule.t_from_logsnr(start_logsnr))
  want = np.repeat(motions, num_samples)
  shares = []
  for z_start in (z, None):
    read = [r.motion for r in probe.probe_batch(np.asarray(sample(text, mask, z_start, t_start)))]
    right = np.asarray(read) == want
    shares.append({m: float(right[want == m].mean()) for m in motions})
  return {m: (shares[0][m], shares[1][m]) for m in motions}


@functools.lru_cache(maxsize=None)
def _compiled_denoise(backbone, schedule):
  return jax.jit(parametrisation.v_on_logsnr(backbone, schedule))


def run_benchmark(config, workdir: str, *, cascade, params, embedder, timer) -> dict[str, str]:
  """The eval job's `benchmark=drift` (arguments: `jobs.evaluate.Benchmark`): `drift_rows`, then
  `write_results`; returns {kind: path}."""
  return write_results(workdir, drift_rows(cascade, params, embedder, config, timer))


def drift_rows(cascade, params, embedder, config, timer) -> list[dict]:
  """The base stage's rows; `config.drift` carries object (a caption of the world), logsnrs,
  num_noise, num_clips and num_samples; `config.seed` seeds noise and clips."""
  cfg = config.drift
  if cfg.num_noise < 1 or cfg.num_clips < 1:
    raise ValueError(f"drift.num_noise and drift.num_clips must be at least 1, got "
                     f"{cfg.num_noise} and {cfg.num_clips}.")
  if not cfg.logsnrs:
    raise ValueError("drift.logsnrs is empty; give log-SNRs where the input is nearly pure noise, "
                     "e.g. '(-10,-6)'.")
  base = cascade.stages[0]
  if base.conditional:
    raise ValueError(f"The drift benchmark needs a base stage first; {base.name!r} is {base.kind}.")
  apply = _compiled_denoise(base.backbone, cascade.schedule)
  denoise = functools.partial(apply, params[base.name])
  target = shapes.parse_caption(cfg.object)
  with timer("drift"):
    rows = measure(denoise, embedder, shape=base.shape, object_caption=target,
                   logsnrs=tuple(float(l) for l in cfg.logsnrs), num_noise=cfg.num_noise,
                   num_clips=cfg.num_clips, seed=config.seed)
  if cfg.num_samples < 1:
    return rows
  means = {m: world_clips(dataclasses.replace(target, motion=m), base.shape, cfg.num_clips,
                          config.seed).mean(axis=0) for m in shapes.MOTIONS}
  guidance = float(base.sampler.guidance_weights()[0])
  # The sampler's first step goes from pure noise to the log-SNR of its second step.
  start_logsnr = float(cascade.schedule.logsnr(
      sampling.step_times(base.sampler.num_steps, 1.0, base.sampler.time_shift)[1]))

  def sample(text, mask, z_start, t_start):
    rng = jax.random.PRNGKey(config.seed + 1)
    if z_start is None:
      return cascade.sample_stage(base, params[base.name], text, mask, rng)
    return cascade.sample_stage(base, params[base.name], text, mask, rng, z_start=z_start,
                                t_start=t_start)

  with timer("direction_from_mean"):
    shares = direction_from_mean(sample, embedder, object_caption=target,
                                 starts=guided_start(means, guidance), schedule=cascade.schedule,
                                 start_logsnr=start_logsnr, num_samples=cfg.num_samples,
                                 seed=config.seed)
  for row in rows:
    row["from_mean_motion_right"], row["from_noise_motion_right"] = shares[row["motion"]]
  return rows


def write_results(workdir: str, rows: Sequence[dict]) -> dict[str, str]:
  """Writes drift.csv/.md; returns {kind: path}."""
  paths = {}
  paths["table_csv"], paths["table_md"] = report.write_tables(
      f"{workdir}/drift", rows,
      title="Caption-mean drift (base stage): centroid displacement, first → last quarter of the "
            "frames, of the world's mean clip (data) and of the mean x̂0 from pure noise (model), "
            "pixels")
  return paths
