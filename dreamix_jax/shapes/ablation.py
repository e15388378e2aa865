"""The moving-shapes ablation benchmark: the analogue of the paper's Table 1 and Fig. 12.

Source clips are the first `num_clips` clips of the moving-shapes test split. Each clip is edited
in the four categories of docs/design.md (the moving-shapes world) — motion (change the
direction), object (change the shape), appearance (change the color), background (change the
background color) — by changing exactly one attribute of its caption (which value:
`edit_attributes`, deterministic from the clip index), with four methods:

- `none`: Dreamix without finetuning (noise to `s`, denoise with the pretrained cascade);
- `video`: finetuned on the clip with α = 1 (video objective only), then edited;
- `mixed`: finetuned with α = 0.35 (mixed video-image objective), then edited (each finetuned
  method with its own number of steps, `ablation.steps`: App. F.1 tunes video-only for 64 steps
  and mixed for 150–300);
- `text2video`: the unconditional baseline, the prompt sampled from pure noise.

Each edit is scored by the probe (`shapes.scoring`): alignment, fidelity, temporal stability,
success. Per method × category the means are tabulated, the shares with their 95% Wilson
intervals, and the success rates plotted.

In a restricted world (`config.vocabulary`, e.g. the motion-only world of the direction-of-motion
A/B: a white square on black) the source clips are drawn from it, an edit changes its attribute to
another value of the restricted vocabulary, and a category whose attribute has one value there is
not edited.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from dreamix_jax.data import outputs, report
from dreamix_jax.metrics import proportions
from dreamix_jax.dreamix import corrupt, edit, finetune
from dreamix_jax.shapes import scoring, world as shapes

# Edit category -> the caption attribute it changes.
CATEGORIES = {"motion": "motion", "object": "shape", "appearance": "color",
              "background": "background"}
METHODS = ("none", "video", "mixed", "text2video")
SUMMARY_COLUMNS = ("method", "category", "edits", "alignment", "alignment_ci95", "fidelity",
                   "kept", "texture", "stability", "success", "success_ci95", "success_kept",
                   "success_kept_ci95")
# Summary column -> the per-edit score it averages.
_MEANS = {"alignment": "alignment", "fidelity": "fidelity", "kept": "kept",
          "texture": "texture_correlation", "stability": "stability", "success": "success",
          "success_kept": "success_kept"}
# Summary shares given with their 95% Wilson interval (column `<share>_ci95`).
_INTERVALS = ("alignment", "success", "success_kept")
# Method pairs and per-edit scores compared edit by edit (`paired`).
PAIRS = (("mixed", "video"), ("mixed", "none"), ("video", "none"))
PAIRED_SCORES = ("alignment", "kept", "success_kept")
PAIRED_COLUMNS = ("category", "method_a", "method_b", "score", "edits", "only_a", "only_b",
                  "sign_test_p")


@dataclasses.dataclass(frozen=True)
class Method:
  """An editing method: finetune with `alpha` for `steps` steps (no finetuning when `alpha` is
  None), then edit from noise level `s` (`s` None: sample from pure noise, text-to-video)."""

  name: str
  alpha: float | None
  steps: int
  s: float | None


def methods_from_config(cfg, alphas) -> list[Method]:
  """The four methods from `config.ablation` (noise levels, finetuning steps per finetuned method:
  `steps = {"video": n, "mixed": m}`) and `config.alphas`."""
  corrupt.check_noise_level(cfg.s_none)
  corrupt.check_noise_level(cfg.s_finetuned)
  steps = dict(cfg.steps)
  if sorted(steps) != ["mixed", "video"]:
    raise ValueError(f"ablation.steps must name the finetuned methods video and mixed, got "
                     f"{sorted(steps)}.")
  for name, n in steps.items():
    if n < 1:
      raise ValueError(f"ablation.steps.{name} must be at least 1, got {n}.")
  return [Method("none", None, 0, cfg.s_none),
          Method("video", float(alphas["video"]), steps["video"], cfg.s_finetuned),
          Method("mixed", float(alphas["mixed"]), steps["mixed"], cfg.s_finetuned),
          Method("text2video", None, 0, None)]


def edit_categories(vocabulary=None) -> list[str]:
  """The categories that can be edited in the world restricted to `vocabulary`
  (`shapes.restricted`; all four in the whole world): those whose attribute has another value."""
  vocab = shapes.restricted(vocabulary)
  return [c for c, field in CATEGORIES.items() if len(vocab[field]) > 1]


def edit_attributes(attrs: shapes.Attributes, category: str, index: int,
                    vocabulary=None) -> shapes.Attributes:
  """`attrs` with the category's attribute changed to another value of the (restricted)
  vocabulary: the `index % (n − 1)`-th of the n − 1 other values, in vocabulary order."""
  if category not in CATEGORIES:
    raise ValueError(f"Unknown edit category {category!r}; use one of {list(CATEGORIES)}.")
  field = CATEGORIES[category]
  others = [v for v in shapes.restricted(vocabulary)[field] if v != getattr(attrs, field)]
  if not others:
    raise ValueError(f"The {category} category cannot be edited in this world: its {field} has "
                     "one value; use edit_categories(vocabulary).")
  return dataclasses.replace(attrs.discrete(), **{field: others[index % len(others)]})


def source_clips(num_clips: int, data_seed: int,
                 vocabulary=None) -> list[shapes.ClipAttributes]:
  """The first `num_clips` clips of the moving-shapes test split built with `data_seed`, in the
  world restricted to `vocabulary` (`shapes.restricted`; the whole world by default)."""
  if num_clips < 1:
    raise ValueError(f"ablation.num_clips must be at least 1, got {num_clips}.")
  return [shapes.clip_attributes(data_seed, "test", i, vocabulary) for i in range(num_clips)]


def run_benchmark(config, workdir: str, *, cascade, params, embedder, timer) -> dict[str, str]:
  """The eval job's `benchmark=shapes`: `edit_clips`, then `write_results`; returns {kind: path}.
  The arguments are those of every benchmark of the eval job (`jobs.evaluate.Benchmark`)."""
  rows = edit_clips(cascade, params, embedder, config, workdir, timer)
  return write_results(workdir, rows)


def edit_clips(cascade, params, embedder, config, workdir: str, timer) -> list[dict]:
  """Edits and scores every clip × category × method; returns one row per edit.

  Outputs are scored at stage `ablation.upto` ("" = the last; the later stages are not sampled).
  `config` carries `ablation` (num_clips, data_seed, steps, s_none, s_finetuned, upto), `alphas`
  (video, mixed), `finetune` (what the finetuned methods share), `seed` (the sampling seed) and
  optionally `vocabulary` (a restricted world, `shapes.restricted`).
  A grid png per clip (the source over every method × category output) goes to
  `<workdir>/ablation_clips/`, with the clip's rows and the run's settings in a json beside it:
  a run stopped part-way resumes in the same workdir from the clips already done (and refuses a
  workdir whose finished clips were made with other settings).
  """
  methods = methods_from_config(config.ablation, config.alphas)
  settings = run_settings(config)
  top = cascade.stage(finetune.top_finetune_stage(cascade.names, config.finetune))
  scored = cascade.stage(config.ablation.upto or cascade.names[-1])
  t_star, t_star_mask = embedder([config.finetune.prompt])
  vocabulary = _vocabulary(config)
  categories = edit_categories(vocabulary)
  rows = []
  for index, clip in enumerate(source_clips(config.ablation.num_clips, config.ablation.data_seed,
                                            vocabulary)):
    record = os.path.join(workdir, "ablation_clips", f"clip{index:03d}.json")
    done = _read_clip_record(record, settings)
    if done is not None:
      logging.info("ablation clip %d/%d: reusing %s.", index + 1, config.ablation.num_clips,
                   record)
      rows.extend(done)
      continue
    source_top = shapes.render(clip, top.frames, top.height, top.width)[None]
    source_out = shapes.render(clip, scored.frames, scored.height, scored.width)
    base_view = corrupt.to_stage(cascade, jnp.asarray(source_top), top.name, cascade.names[0])
    targets = {c: edit_attributes(clip, c, index, vocabulary) for c in categories}
    text, mask = embedder([shapes.caption(t) for t in targets.values()])
    grid, labels = [source_out], [f"source: {shapes.caption(clip)}"]
    clip_rows = []
    for method in methods:
      with timer(f"finetune_{method.name}"):
        tuned = _method_params(cascade, params, source_top, t_star, t_star_mask, config, method)
      for j, (category, target) in enumerate(targets.items()):
        with timer("sample"):
          out = _edit(cascade, tuned, base_view, text[j:j + 1], mask[j:j + 1], method,
                      config.seed, scored.name)
        scores = scoring.edit_scores(out, source_out, target, clip)
        clip_rows.append(dict(clip=index, category=category, method=method.name,
                              source=shapes.caption(clip), prompt=shapes.caption(target),
                              **scores.row()))
        grid.append(out)
        labels.append(f"{method.name} / {category}")
      logging.info("ablation clip %d/%d: method %s done.", index + 1, config.ablation.num_clips,
                   method.name)
    outputs.write_comparison_png(os.path.join(workdir, "ablation_clips", f"clip{index:03d}.png"),
                                 grid, labels)
    report.write_text(record, json.dumps(dict(settings=settings, rows=clip_rows), indent=1))
    rows.extend(clip_rows)
  return rows


def _vocabulary(config) -> dict:
  return dict(config.get("vocabulary", {}))


def run_settings(config) -> dict:
  """What an ablation row depends on besides its clip: the checkpoint, cascade, sampling seed,
  world, methods and finetuning settings (`num_clips` aside: a longer run extends a shorter one),
  as plain json values."""
  ablation = {k: v for k, v in config.ablation.items() if k != "num_clips"}
  settings = dict(checkpoint=_checkpoint_digest(config.checkpoint), cascade=config.cascade,
                  seed=config.seed, world=shapes.restricted(_vocabulary(config)),
                  ablation=ablation, alphas=config.alphas, finetune=config.finetune)
  return json.loads(json.dumps(settings, sort_keys=True, default=_plain))


def _checkpoint_digest(checkpoint: str) -> dict[str, str]:
  """{file: sha256} of a checkpoint directory's safetensors (so retrained weights at the same path
  do not pass for the old ones); {} for random weights (`checkpoint = ""`)."""
  if not checkpoint:
    return {}
  digests = {}
  for name in sorted(os.listdir(checkpoint)):
    if name.endswith(".safetensors"):
      with open(os.path.join(checkpoint, name), "rb") as f:
        digests[name] = hashlib.sha256(f.read()).hexdigest()
  return digests


def _plain(value):
  return value.to_dict() if hasattr(value, "to_dict") else str(value)


def _read_clip_record(path: str, settings: dict) -> list[dict] | None:
  """The rows of a clip finished earlier in this workdir, or None when there is none."""
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    record = json.load(f)
  if record.get("settings") != settings:
    raise ValueError(
        f"{path} holds a clip edited with other settings than this run's (checkpoint, cascade, "
        "seed, ablation, alphas or finetune differ). Use a new --workdir, or delete "
        f"{os.path.dirname(path)} to start this workdir over.")
  return record["rows"]


def finished_rows(workdir: str) -> tuple[dict, list[dict]]:
  """(settings, rows) of the clips finished in an ablation workdir (`ablation_clips/*.json`);
  each row's `clip` becomes `seed<data seed>/<clip index>`, which names its source clip across
  runs (`source_clips`)."""
  folder = os.path.join(workdir, "ablation_clips")
  names = sorted(n for n in os.listdir(folder) if n.endswith(".json")) if os.path.isdir(
      folder) else []
  if not names:
    raise ValueError(f"{workdir} holds no finished ablation clip ({folder}/clip*.json); give the "
                     "--workdir of a benchmark=shapes run.")
  settings, rows = None, []
  for name in names:
    with open(os.path.join(folder, name), encoding="utf-8") as f:
      record = json.load(f)
    settings = settings or record["settings"]
    seed = record["settings"]["ablation"]["data_seed"]
    rows += [dict(row, clip=f"seed{seed}/{row['clip']}") for row in record["rows"]]
  return settings, rows


def pooling_key(settings: dict) -> str:
  """The settings two ablation runs must share for their edits to be pooled: all but the data
  seed (which picks other source clips)."""
  ablation = {k: v for k, v in settings["ablation"].items() if k != "data_seed"}
  return json.dumps(dict(settings, ablation=ablation), sort_keys=True)


def _method_params(cascade, params, source_top, t_star, t_star_mask, config, method: Method):
  if method.alpha is None:
    return params
  cfg = config.finetune.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.alpha = method.alpha
  (_, tuned), = finetune.finetune_at_steps(cascade, params, source_top, t_star,
                                           t_star_mask, cfg, [method.steps])
  return tuned


def _edit(cascade, params, base_view, text, mask, method: Method, seed: int,
          upto: str) -> np.ndarray:
  if method.s is not None:
    return edit.edit_video(cascade, params, base_view, text, mask, method.s, seed, upto=upto)
  outs = cascade.sample(params, jnp.asarray(text), jnp.asarray(mask), jax.random.PRNGKey(seed),
                        upto=upto)
  return np.asarray(jax.device_get(outs[upto][0]))


def summarize(rows: Sequence[dict]) -> list[dict]:
  """Means per method × category, then per method over all categories ("all", when there are
  several), and the 95% Wilson interval of each share in `_INTERVALS` (edits without a score,
  NaN, left out)."""
  summary = []
  categories = list(dict.fromkeys(r["category"] for r in rows))
  for method in dict.fromkeys(r["method"] for r in rows):
    for category in categories + (["all"] if len(categories) > 1 else []):
      group = [r for r in rows if r["method"] == method and category in ("all", r["category"])]
      if not group:
        continue
      row = dict(method=method, category=category, edits=len(group))
      for column, key in _MEANS.items():
        row[column] = float(np.nanmean([r[key] for r in group]))
      for column in _INTERVALS:
        scored = [r[_MEANS[column]] for r in group if not np.isnan(r[_MEANS[column]])]
        row[f"{column}_ci95"] = proportions.interval_text(int(sum(scored)), len(scored))
      summary.append(row)
  return summary


def paired(rows: Sequence[dict]) -> list[dict]:
  """Methods compared on the same edits (same clip and category), per category: for each pair
  in `PAIRS` and score in `PAIRED_SCORES`, the edits only method a got right, only b, and the
  two-sided sign test's p-value (edits without a score in either method left out)."""
  scores = {(r["clip"], r["category"], r["method"]): r for r in rows}
  table = []
  for category in dict.fromkeys(r["category"] for r in rows):
    edits = list(dict.fromkeys(r["clip"] for r in rows if r["category"] == category))
    for a, b in PAIRS:
      both = [c for c in edits if (c, category, a) in scores and (c, category, b) in scores]
      for score in PAIRED_SCORES:
        pairs = [(scores[c, category, a][score], scores[c, category, b][score]) for c in both]
        pairs = [(x, y) for x, y in pairs if not (np.isnan(x) or np.isnan(y))]
        only_a = sum(x == 1 and y == 0 for x, y in pairs)
        only_b = sum(y == 1 and x == 0 for x, y in pairs)
        table.append(dict(category=category, method_a=a, method_b=b, score=score,
                          edits=len(pairs), only_a=only_a, only_b=only_b,
                          sign_test_p=proportions.sign_test(only_a, only_b)))
  return table


def write_results(workdir: str, rows: Sequence[dict]) -> dict[str, str]:
  """Writes ablation_edits.csv (every edit), ablation.csv/.md (the summary), ablation_paired.csv/.md
  (`paired`), ablation_success.png and ablation_success_kept.png (success, and success without
  the texture criterion, per category and method); returns {kind: path}."""
  summary = summarize(rows)
  paths = {"edits": os.path.join(workdir, "ablation_edits.csv")}
  report.write_text(paths["edits"], report.csv_text(rows))
  paths["table_csv"], paths["table_md"] = report.write_tables(
      os.path.join(workdir, "ablation"), summary, SUMMARY_COLUMNS,
      title="Moving-shapes ablation: probe alignment, fidelity (kept: without the texture; "
            "texture: mean correlation), temporal distance (lower is stabler), success")
  paths["paired_csv"], paths["paired_md"] = report.write_tables(
      os.path.join(workdir, "ablation_paired"), paired(rows), PAIRED_COLUMNS,
      title="Moving-shapes ablation, methods on the same edits: how many edits only method a "
            "(only_a) or only method b (only_b) got right, two-sided sign test")
  categories = list(dict.fromkeys(r["category"] for r in summary))
  methods = list(dict.fromkeys(r["method"] for r in summary))
  for kind, column, title in (("plot", "success", "Edit success per category"),
                              ("plot_kept", "success_kept",
                               "Edit success per category, texture not required")):
    series = {m: [next((r[column] for r in summary if r["method"] == m and r["category"] == c),
                       float("nan")) for c in categories] for m in methods}
    paths[kind] = os.path.join(workdir, f"ablation_{column}.png")
    report.write_bar_chart(paths[kind], categories, series, title)
  return paths
