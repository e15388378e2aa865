"""Text-to-video on moving-shapes test captions, read back by the probe.

The captions are those of the first `num_captions` clips of the moving-shapes test split (so the
attribute mix is the dataset's). Each caption is sampled once through the cascade (up to stage
`upto`, default the last), the probe reads the four captioned attributes from the pixels, and the
benchmark reports, per attribute, the share of samples that show the caption's value — the
alignment figure of docs/design.md (the moving-shapes world) — plus the share that show all four,
and the motion of the moving captions alone (`direction`).

Files written into the workdir: `text2video_samples.csv` (one row per sample: the caption, what the
probe read, a 0/1 per attribute), `text2video.csv` / `.md` (the per-attribute table),
`text2video_confusion_<attribute>.csv` / `.md` (captioned value × read value counts: e.g. whether a
missed motion went to the wrong axis or the wrong sign) and `text2video_grid.png` (the first 16
samples, captioned). With `trace` (base stage only) also `text2video_decision.csv` / `.md`: per
sampler step, the share of samples whose x̂0 at that step already shows each attribute as the final
sample does, and as the caption says — the noise level at which an attribute is decided, which is
where the denoiser has to use the caption's word for it.
"""

from __future__ import annotations

import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from dreamix_jax.data import outputs
from dreamix_jax.shapes import world as shapes
from dreamix_jax.diffusion import sampling
from dreamix_jax.shapes import probe
from dreamix_jax.data import report

ATTRIBUTES = ("color", "shape", "motion", "background")
SUMMARY_COLUMNS = ("attribute", "samples", "found")
GRID_SAMPLES = 16


def test_captions(num_captions: int, data_seed: int,
                  vocabulary=None) -> list[shapes.Attributes]:
  """The captioned attributes of the first `num_captions` test-split clips built with
  `data_seed` (of the world restricted to `vocabulary`, `shapes.restricted`)."""
  if num_captions < 1:
    raise ValueError(f"text2video.num_captions must be at least 1, got {num_captions}.")
  return [shapes.clip_attributes(data_seed, "test", i, vocabulary).discrete()
          for i in range(num_captions)]


def score_samples(videos: np.ndarray, targets: Sequence[shapes.Attributes]) -> list[dict]:
  """One row per video `(B, T, H, W, 3)` in [-1, 1]: its caption, each attribute as the probe read
  it (`read_<attribute>`, empty when no object was found), 1/0 whether it matches the caption, and
  `all` (1 when every attribute matches)."""
  if len(videos) != len(targets):
    raise ValueError(f"{len(videos)} videos but {len(targets)} captions.")
  rows = []
  for result, target in zip(probe.probe_batch(videos), targets):
    read, matches = result.attributes(), result.matches(target)
    row = {"caption": shapes.caption(target)}
    row.update({f"read_{a}": read[a] or "" for a in ATTRIBUTES})
    row.update({a: int(matches[a]) for a in ATTRIBUTES})
    row["all"] = int(all(matches.values()))
    rows.append(row)
  return rows


def summarize(rows: Sequence[dict]) -> list[dict]:
  """Per attribute (then `all`): the number of samples and the share in which the probe found the
  caption's value; then `direction`, the motion of the samples whose caption moves (absent when
  every caption stands still): moving vs still is learnt early, the direction words late."""
  if not rows:
    raise ValueError("No samples to summarize.")
  table = [dict(attribute=a, samples=len(rows), found=float(np.mean([r[a] for r in rows])))
           for a in ATTRIBUTES + ("all",)]
  moving = [r["motion"] for r in rows if shapes.parse_caption(r["caption"]).motion != "still"]
  if moving:
    table.append(dict(attribute="direction", samples=len(moving), found=float(np.mean(moving))))
  return table


def confusion(rows: Sequence[dict], attribute: str) -> list[dict]:
  """Counts of (captioned value, read value) for one attribute: one row per value of the
  vocabulary, as {"caption": value, <read value>: count, ..., "none": count}; the read columns are
  the vocabulary in its order, then "none" (the probe found no object)."""
  vocabulary = shapes.VOCABULARIES[attribute]
  counts = {value: dict.fromkeys(vocabulary + ("none",), 0) for value in vocabulary}
  for row in rows:
    captioned = getattr(shapes.parse_caption(row["caption"]), attribute)
    counts[captioned][row[f"read_{attribute}"] or "none"] += 1
  return [{"caption": value, **counts[value]} for value in vocabulary]


def sample_captions(cascade, params, embedder, targets: Sequence[shapes.Attributes], *,
                    upto: str, batch_size: int, seed: int, trace: bool = False):
  """Text-to-video samples `(N, T, H, W, 3)` of stage `upto` for `targets`, `batch_size` at a time
  (the last batch padded, so every batch reuses one compiled sampler); batch i uses the key
  `fold_in(PRNGKey(seed), i)`.

  Returns `(videos, step_reads)`; step_reads is None unless `trace` (`upto` must then be the base
  stage): step_reads[k][n] is what the probe reads (`ProbeResult.attributes()`) in sample n's x̂0
  at sampler step k. The samples are the same with or without `trace`.
  """
  if batch_size < 1:
    raise ValueError(f"text2video.batch_size must be at least 1, got {batch_size}.")
  base = cascade.stages[0]
  if trace and upto != base.name:
    raise ValueError(f"text2video.trace follows the base stage's sampler; set text2video.upto="
                     f"{base.name!r} (got {upto!r}).")
  captions = [shapes.caption(t) for t in targets]
  videos, step_reads = [], [[] for _ in range(base.sampler.num_steps)] if trace else None
  for i, start in enumerate(range(0, len(captions), batch_size)):
    chunk = captions[start:start + batch_size]
    text, mask = embedder(chunk + [chunk[-1]] * (batch_size - len(chunk)))
    text, mask = jnp.asarray(text), jnp.asarray(mask)
    key = jax.random.fold_in(jax.random.PRNGKey(seed), i)
    if trace:  # the base stage's key as `cascade.sample` derives it, so the samples are the same
      out, xs = cascade.sample_stage(base, params[base.name], text, mask,
                                     jax.random.fold_in(key, 0), trajectory=True)
      xs = np.asarray(jax.device_get(xs))[:, :len(chunk)]
      for reads, x in zip(step_reads, xs):
        reads.extend(r.attributes() for r in probe.probe_batch(x))
    else:
      out = cascade.sample(params, text, mask, key, upto=upto)[upto]
    videos.append(np.asarray(jax.device_get(out))[:len(chunk)])
    logging.info("text2video: %d/%d samples.", start + len(chunk), len(captions))
  return np.concatenate(videos), step_reads


def decision_table(step_reads: Sequence[Sequence[dict]], targets: Sequence[shapes.Attributes],
                   logsnrs: Sequence[float]) -> list[dict]:
  """One row per sampler step: `step`, `logsnr` (where the denoiser was evaluated) and per
  attribute `<attribute>_as_final` (share of samples whose x̂0 at this step reads as the last
  step's does) and `<attribute>_as_caption` (reads as the caption says). step_reads[k][n]: the
  probe's reading (attribute -> value or None) of sample n at step k."""
  final = step_reads[-1]
  rows = []
  for k, (reads, logsnr) in enumerate(zip(step_reads, logsnrs, strict=True)):
    row = dict(step=k, logsnr=float(logsnr))
    for a in ATTRIBUTES:
      row[f"{a}_as_final"] = float(np.mean([r[a] == f[a] for r, f in zip(reads, final)]))
      row[f"{a}_as_caption"] = float(np.mean([r[a] == getattr(t, a)
                                              for r, t in zip(reads, targets)]))
    rows.append(row)
  return rows


def run_benchmark(config, workdir: str, *, cascade, params, embedder, timer) -> dict[str, str]:
  """The eval job's `benchmark=text2video` (arguments: `jobs.evaluate.Benchmark`): samples and
  scores `config.text2video.num_captions` test captions, writes the captioned grid of the first
  samples and `write_results`' files; returns {kind: path}.

  `config.text2video` carries num_captions, data_seed, upto (a stage name; "" = the last stage),
  batch_size and trace; `config.seed` seeds the sampler. `params` must hold the stages up to `upto`.
  """
  cfg = config.text2video
  upto = cfg.upto or cascade.names[-1]
  targets = test_captions(cfg.num_captions, cfg.data_seed, dict(config.get("vocabulary", {})))
  with timer("sample"):
    videos, step_reads = sample_captions(cascade, params, embedder, targets, upto=upto,
                                         batch_size=cfg.batch_size, seed=config.seed,
                                         trace=cfg.trace)
  decision = None
  if cfg.trace:
    sampler = cascade.stages[0].sampler
    times = np.asarray(sampling.step_times(sampler.num_steps, 1.0, sampler.time_shift))[:-1]
    decision = decision_table(step_reads, targets,
                              [float(cascade.schedule.logsnr(t)) for t in times])
  with timer("probe"):
    rows = score_samples(videos, targets)
  shown = range(min(GRID_SAMPLES, len(rows)))
  outputs.write_comparison_png(os.path.join(workdir, "text2video_grid.png"),
                               [videos[i] for i in shown], [rows[i]["caption"] for i in shown],
                               scale=2)
  return write_results(workdir, rows, upto, decision)


def write_results(workdir: str, rows: Sequence[dict], stage: str,
                  decision: Sequence[dict] | None = None) -> dict[str, str]:
  """Writes text2video_samples.csv, text2video.csv/.md, the per-attribute confusion tables
  text2video_confusion_<attribute>.csv/.md and, given `decision`, text2video_decision.csv/.md;
  returns {kind: path}."""
  paths = {"samples": os.path.join(workdir, "text2video_samples.csv")}
  report.write_text(paths["samples"], report.csv_text(rows))
  paths["table_csv"], paths["table_md"] = report.write_tables(
      os.path.join(workdir, "text2video"), summarize(rows), SUMMARY_COLUMNS,
      title=f"Text-to-video ({stage} stage): share of samples in which the probe finds the "
            "caption's attribute")
  for attribute in ATTRIBUTES:
    paths[f"confusion_{attribute}_csv"], paths[f"confusion_{attribute}_md"] = report.write_tables(
        os.path.join(workdir, f"text2video_confusion_{attribute}"), confusion(rows, attribute),
        title=f"Text-to-video ({stage} stage), {attribute}: captioned value (rows) × value the "
              "probe read (columns), sample counts")
  if decision is not None:
    paths["decision_csv"], paths["decision_md"] = report.write_tables(
        os.path.join(workdir, "text2video_decision"), decision,
        title=f"Text-to-video ({stage} stage), per sampler step (log-SNR where the denoiser ran): "
              "share of samples whose x̂0 already reads as the final sample (_as_final) and as the "
              "caption (_as_caption)")
  paths["grid"] = os.path.join(workdir, "text2video_grid.png")
  return paths
