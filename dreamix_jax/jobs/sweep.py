"""The hyperparameter sweep of the paper's raters (App. F.1): one input, a grid of (finetuning, s).

  python -m dreamix_jax.main --config=configs/sweep.py --workdir=/tmp/dreamix
  python -m dreamix_jax.main --config=configs/sweep.py:runlocal --workdir=/tmp/sweep  # tiny, random

The grid and its schedule are `dreamix.sweep` (one finetune per mode, read at every step count on
the way); each finetuned state edits for every s the grid pairs with it and for every
prompt × seed.

Outputs in `<workdir>/sweep/<name>/`: per prompt × seed a folder `<k>_<prompt>_seed<n>/` holding one
result folder per setting (`<j>_<setting>/`: output.mp4, input.mp4, output.gif, comparison.png,
meta.json) and `grid.png` (the input, then one row per setting, frames side by side, labelled);
`input.mp4` and `index.html`, which embeds every video under its label. A sweep stopped part-way
(SIGTERM, Ctrl-C, a crash) is resumed by the same command: its finetunes continue from their
checkpoints in `finetune/` (removed when the sweep is done), so the results are those of an
uninterrupted run.
"""

from __future__ import annotations

import collections
import html
import os
import shutil

from dreamix_jax.data import outputs, report, video as video_io
from dreamix_jax.dreamix import edit, finetune
from dreamix_jax.dreamix.sweep import Setting, parse_settings, plan
from dreamix_jax.jobs import common


def run(config, workdir: str) -> list[str]:
  """Runs the sweep; returns the result folders in the order they were made."""
  common.check_config(config)
  finetune.check_config(config.finetune)
  finetune.top_finetune_stage(list(config.cascade.order), config.finetune)  # known stages
  alphas = dict(config.alphas)
  settings = parse_settings(config.settings, alphas)
  runs = plan(settings, alphas)
  timer = common.Timer()
  with timer("load"):
    cascade, params = common.load_cascade(config)
    embedder = common.make_embedder(config, cascade)
  top = cascade.stage(finetune.top_finetune_stage(cascade.names, config.finetune))
  with timer("read_input"):
    video = video_io.read_video(config.input, top.frames, top.height, top.width,
                                fps=top.fps)[None]
  text, mask = embedder(list(config.prompts))  # before any output: long prompts warn, bad ones fail
  t_star, t_star_mask = embedder([config.finetune.prompt])
  with common.output_run(workdir, "sweep", config) as out_root:
    folders = _sweep(config, out_root, cascade, params, video, top.name, (text, mask),
                     (t_star, t_star_mask), settings, runs, timer)
    shutil.rmtree(os.path.join(out_root, "finetune"), ignore_errors=True)
  return folders


def _sweep(config, out_root, cascade, params, video, top_name, prompts, t_star, settings, runs,
           timer) -> list[str]:
  """The sweep's finetunes and edits into `out_root`, then each case's grid, `input.mp4` and
  `index.html`. The finetunes checkpoint into `<out_root>/finetune/<mode>/` (a re-run after a
  preemption resumes them exactly); every file is rewritten on a resumed run."""
  alphas = dict(config.alphas)
  text, mask = prompts
  base_view = edit.base_view(cascade, video, top_name)
  input_at_output = edit.input_at_output_resolution(cascade, video, top_name)
  fps = cascade.stages[-1].fps
  cases = [(i, prompt, seed) for i, prompt in enumerate(config.prompts) for seed in config.seeds]
  case_dirs = {(i, seed): os.path.join(out_root, f"{i:03d}_{common.slug(prompt)}_seed{seed}")
               for i, prompt, seed in cases}
  order = {setting: j for j, setting in enumerate(settings)}
  videos: dict[tuple, dict[Setting, object]] = collections.defaultdict(dict)
  folders = []
  for finetune_run in runs:
    if finetune_run.alpha is None:
      states = [(0, params)]
    else:
      cfg = config.finetune.copy_and_resolve_references()
      with cfg.unlocked():
        cfg.alpha = finetune_run.alpha
      states = finetune.finetune_at_steps(
          cascade, params, video, *t_star, cfg, finetune_run.steps,
          checkpoint_root=os.path.join(out_root, "finetune", finetune_run.mode))
    for steps, tuned in _timed(states, timer, f"finetune_{finetune_run.mode}"):
      for s in finetune_run.noise_levels[steps]:
        setting = Setting(finetune_run.mode, steps, s)
        label = setting.label(finetune_run.alpha)
        for i, prompt, seed in cases:
          with timer("sample"):
            out = edit.edit_video(cascade, tuned, base_view, text[i:i + 1], mask[i:i + 1], s, seed)
          folder = os.path.join(case_dirs[i, seed], f"{order[setting]:02d}_{setting.slug}")
          meta = dict(job="sweep", setting=label, mode=setting.mode, alpha=finetune_run.alpha,
                      finetune_steps=steps, s=s, input=config.input, prompt=prompt, seed=seed,
                      checkpoint=config.checkpoint, finetune=config.finetune.to_dict(),
                      output_shape=list(out.shape), fps=fps, timings=dict(timer.phases))
          common.write_result(folder, out, fps, meta, input_video=input_at_output)
          videos[i, seed][setting] = (folder, out)
          folders.append(folder)
  for i, prompt, seed in cases:
    rows = [input_at_output] + [videos[i, seed][s][1] for s in settings]
    labels = ["input"] + [s.label(alphas.get(s.mode)) for s in settings]
    outputs.write_comparison_png(os.path.join(case_dirs[i, seed], "grid.png"), rows, labels)
  outputs.write_mp4(os.path.join(out_root, "input.mp4"), input_at_output, fps)
  report.write_text(os.path.join(out_root, "index.html"),
                    _index_html(out_root, config.input, cases, case_dirs, settings, alphas, videos))
  return folders


def _timed(iterable, timer, name):
  """Yields from `iterable`, timing the work of producing each item as phase `name`."""
  iterator = iter(iterable)
  while True:
    with timer(name):
      item = next(iterator, None)
    if item is None:
      return
    yield item


def _index_html(out_root, source, cases, case_dirs, settings, alphas, videos) -> str:
  """A page with, per prompt × seed, the grid png and every video under its setting's label."""
  rel = lambda path: html.escape(os.path.relpath(path, out_root))
  cell = lambda src, label: (f'<figure><video src="{src}" autoplay loop muted playsinline '
                             f'controls></video><figcaption>{html.escape(label)}</figcaption>'
                             "</figure>")
  parts = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8"><title>Dreamix sweep</title>',
           "<style>figure{display:inline-block;margin:4px}video{width:240px}"
           "figcaption{font:12px sans-serif}</style></head><body>",
           f"<h1>Dreamix sweep of {html.escape(str(source))}</h1>",
           cell("input.mp4", "input")]
  for i, prompt, seed in cases:
    parts.append(f"<h2>{html.escape(prompt)} (seed {seed})</h2>")
    parts.append(f'<img src="{rel(os.path.join(case_dirs[i, seed], "grid.png"))}" '
                 f'alt="grid of {html.escape(prompt)}">')
    parts.append("<div>" + "".join(
        cell(rel(os.path.join(videos[i, seed][s][0], "output.mp4")), s.label(alphas.get(s.mode)))
        for s in settings) + "</div>")
  parts.append("</body></html>")
  return "\n".join(parts) + "\n"
