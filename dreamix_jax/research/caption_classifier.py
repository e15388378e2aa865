"""Does the base stage listen to each caption attribute? Its denoiser as a zero-shot classifier.

A text-conditioned denoiser that has learnt what a caption word means predicts a real clip better
under the true caption than under one that changes that word (Li et al. 2023, "Your diffusion model
is secretly a zero-shot classifier"). For each of the first `num_clips` moving-shapes test clips
and each captioned attribute, the clip (rendered at the stage's size) is noised with the same noise
at every log-SNR of `logsnrs`, the U-Net predicts v̂ under every caption that differs from the
true one in that attribute alone (5 colors, 3 shapes, 5 motions, 3 backgrounds), and the caption
with the lowest v-error wins. The benchmark reports, per attribute, the share of clips on which the
true caption wins (summed over noise levels, and at each level) against chance (1 / candidates),
and `direction`: the motion row of the moving clips with "still" left out (chance 1/4).

Why it exists: sampling + the pixel probe (`shapes.text2video`) says *whether* samples show an
attribute; this says whether the model *uses* the words at all, from forward passes only (no
sampling loop), so it is cheap enough to track an attribute during pretraining. An attribute at
chance here is ignored by the denoiser, whatever the sampler or guidance weight.

Files written into the workdir: `classifier_clips.csv` (one row per clip and attribute: the true
value, the winner, the v-error of every candidate; on a moving clip's motion row also whether the
true direction beats the other three), `classifier.csv` / `.md` (the table).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from dreamix_jax.shapes import world as shapes
from dreamix_jax.diffusion import parametrisation, schedules
from dreamix_jax.data import report

VOCABULARIES = shapes.VOCABULARIES
MAX_CANDIDATES = max(len(v) for v in VOCABULARIES.values())


def candidate_captions(target: shapes.Attributes, attribute: str) -> list[str]:
  """The captions of `target` with `attribute` set to each value of its vocabulary, in vocabulary
  order (the true caption is among them)."""
  if attribute not in VOCABULARIES:
    raise ValueError(f"Unknown attribute {attribute!r}; use one of {tuple(VOCABULARIES)}.")
  return [shapes.caption(dataclasses.replace(target, **{attribute: value}))
          for value in VOCABULARIES[attribute]]


@functools.lru_cache(maxsize=None)
def _compiled_errors(backbone):
  apply = parametrisation.v_on_logsnr(backbone, schedules.CosineLogSNR())

  def errors(params, video, text, text_mask, eps, logsnrs):
    """video (1, T, H, W, C); text (K, L, D); eps (N, 1, T, H, W, C); logsnrs (N,) -> (K, N)."""
    k, frames = text.shape[0], video.shape[1]

    def at_level(lam, e):
      lam = jnp.full((1, frames), lam)  # one log-SNR per frame, as the U-Net takes it in training
      z = jnp.broadcast_to(schedules.diffuse(video, e, lam), (k,) + video.shape[1:])
      v = apply(params, z, jnp.broadcast_to(lam, (k, frames)), text, text_mask)
      per_frame = jnp.mean(jnp.square(v - schedules.v_target(video, e, lam)), axis=(2, 3, 4))
      # The mean over frames as a dot product with ones: bit for bit the errors of earlier runs.
      return per_frame @ jnp.ones((frames,), per_frame.dtype) / frames

    return jax.lax.map(lambda xs: at_level(*xs), (logsnrs, eps)).T

  return jax.jit(errors)


def denoising_errors(stage, params, video: np.ndarray, text: np.ndarray, text_mask: np.ndarray,
                     eps: np.ndarray, logsnrs: Sequence[float]) -> np.ndarray:
  """Mean squared v-error of the (base) stage's U-Net on `video` (T, H, W, C) noised with `eps[n]`
  (N, T, H, W, C) at `logsnrs[n]`, under each of K texts `(K, L, D)`: `(K, N)`. The same noise is
  used for every text, so the errors of different captions are paired."""
  if stage.conditional:
    raise ValueError(f"The caption classifier needs a base stage (no low-resolution condition); "
                     f"{stage.name!r} is a {stage.kind} stage.")
  if eps.shape != (len(logsnrs),) + video.shape:
    raise ValueError(f"eps must be (num_logsnrs,) + video.shape = "
                     f"{(len(logsnrs),) + video.shape}, got {eps.shape}.")
  out = _compiled_errors(stage.backbone)(
      params, jnp.asarray(video[None], jnp.float32), jnp.asarray(text, jnp.float32),
      jnp.asarray(text_mask, bool), jnp.asarray(eps[:, None], jnp.float32),
      jnp.asarray(logsnrs, jnp.float32))
  return np.asarray(jax.device_get(out))


def classify_clips(errors_fn: Callable[..., np.ndarray], embedder,
                   targets: Sequence[shapes.ClipAttributes], *, shape: tuple[int, int, int],
                   logsnrs: Sequence[float], seed: int) -> list[dict]:
  """One row per (clip, attribute): `clip`, `attribute`, `true`, `winner` (lowest v-error summed
  over noise levels), `correct`, `correct_at_<λ>` per level, and `error_<value>` per candidate;
  a moving clip's motion row also has `direction_correct` and `direction_correct_at_<λ>` (the
  same with "still" left out of the candidates).

  `errors_fn(video, text, text_mask, eps, logsnrs) -> (K, N)` is `denoising_errors` with its
  stage and parameters bound. Every clip is rendered at `shape` (frames, height, width); its noise
  is drawn from `default_rng((seed, clip))` and shared by all attributes and candidates. Candidate
  lists are padded to the longest vocabulary with repeats of the last caption, so one compiled
  function serves every attribute.
  """
  rows = []
  for i, attrs in enumerate(targets):
    truth = attrs.discrete()
    video = shapes.render_batch([attrs], *shape)[0]
    eps = np.random.default_rng((seed, i)).standard_normal(
        (len(logsnrs),) + video.shape).astype(np.float32)
    for attribute, vocabulary in VOCABULARIES.items():
      captions = candidate_captions(truth, attribute)
      padded = captions + [captions[-1]] * (MAX_CANDIDATES - len(captions))
      text, mask = embedder(padded)
      errors = errors_fn(video, text, mask, eps, logsnrs)[:len(captions)]
      true_index = vocabulary.index(getattr(truth, attribute))
      winner = int(np.argmin(errors.sum(axis=1)))
      row = dict(clip=i, attribute=attribute, true=vocabulary[true_index],
                 winner=vocabulary[winner], correct=int(winner == true_index))
      for n, lam in enumerate(logsnrs):
        row[f"correct_at_{lam:g}"] = int(np.argmin(errors[:, n]) == true_index)
      row.update({f"error_{value}": float(errors[j].sum()) for j, value in enumerate(vocabulary)})
      if attribute == "motion" and truth.motion != "still":
        row.update(_direction_scores(errors, vocabulary, true_index, logsnrs))
      rows.append(row)
    logging.info("caption classifier: %d/%d clips.", i + 1, len(targets))
  return rows


def _direction_scores(errors: np.ndarray, vocabulary: Sequence[str], true_index: int,
                      logsnrs: Sequence[float]) -> dict:
  """A moving clip's motion row, with "still" left out of the candidates: is the true direction's
  error the lowest of the four directions? (`direction_correct`, and `direction_correct_at_<λ>`
  per level; `errors` is (candidates, levels).) Moving vs still is learnt early and the right
  *direction* late, so this is the measure of the direction words alone: chance is 1/4."""
  moving = [j for j, value in enumerate(vocabulary) if value != "still"]
  best = lambda e: moving[int(np.argmin(e[moving]))]
  scores = dict(direction_correct=int(best(errors.sum(axis=1)) == true_index))
  for n, lam in enumerate(logsnrs):
    scores[f"direction_correct_at_{lam:g}"] = int(best(errors[:, n]) == true_index)
  return scores


def summarize(rows: Sequence[dict], logsnrs: Sequence[float]) -> list[dict]:
  """Per attribute: clips, chance (1 / candidates), accuracy over all levels and at each level;
  then `direction`, the motion row of the moving clips among the four directions alone (absent
  when every clip stands still)."""
  if not rows:
    raise ValueError("No classified clips to summarize.")

  def entry(name, mine, chance, key):
    out = dict(attribute=name, clips=len(mine), chance=chance,
               accuracy=float(np.mean([r[key] for r in mine])))
    for lam in logsnrs:
      out[f"at_logsnr_{lam:g}"] = float(np.mean([r[f"{key}_at_{lam:g}"] for r in mine]))
    return out

  table = [entry(attribute, [r for r in rows if r["attribute"] == attribute],
                 1.0 / len(vocabulary), "correct")
           for attribute, vocabulary in VOCABULARIES.items()]
  moving = [r for r in rows if "direction_correct" in r]
  if moving:
    table.append(entry("direction", moving, 1.0 / (len(VOCABULARIES["motion"]) - 1),
                       "direction_correct"))
  return table


def run_benchmark(config, workdir: str, *, cascade, params, embedder, timer) -> dict[str, str]:
  """The eval job's `benchmark=classifier` (arguments: `jobs.evaluate.Benchmark`): classifies the
  first `config.classifier.num_clips` test clips with the base stage and writes `write_results`'
  files; returns {kind: path}. `config.classifier` carries num_clips, data_seed and logsnrs;
  `config.seed` seeds the noise."""
  cfg = config.classifier
  if cfg.num_clips < 1:
    raise ValueError(f"classifier.num_clips must be at least 1, got {cfg.num_clips}.")
  logsnrs = tuple(float(l) for l in cfg.logsnrs)
  if not logsnrs:
    raise ValueError("classifier.logsnrs is empty; give the log-SNRs to noise at, e.g. "
                     "'(-6,-4,-2,0,2)'.")
  vocabulary = dict(config.get("vocabulary", {}))  # a restricted world's test clips
  targets = [shapes.clip_attributes(cfg.data_seed, "test", i, vocabulary)
             for i in range(cfg.num_clips)]
  base = cascade.stages[0]
  with timer("classify"):
    errors_fn = functools.partial(denoising_errors, base, params[base.name])
    rows = classify_clips(errors_fn, embedder, targets, shape=base.shape, logsnrs=logsnrs,
                          seed=config.seed)
  return write_results(workdir, rows, logsnrs)


def write_results(workdir: str, rows: Sequence[dict], logsnrs: Sequence[float]) -> dict[str, str]:
  """Writes classifier_clips.csv and classifier.csv/.md; returns {kind: path}."""
  paths = {"clips": os.path.join(workdir, "classifier_clips.csv")}
  report.write_text(paths["clips"], report.csv_text(rows))
  paths["table_csv"], paths["table_md"] = report.write_tables(
      os.path.join(workdir, "classifier"), summarize(rows, logsnrs),
      title="Caption classifier (base stage): share of test clips whose true caption gives the "
            "lowest v-error among captions changing one attribute")
  return paths
