"""Text-to-video job: sample the whole cascade from noise for each prompt × seed.

  python -m dreamix_jax.main --config=configs/text2video.py:runlocal --workdir=/tmp/t2v
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from absl import logging

from dreamix_jax.jobs import common


def run(config, workdir: str) -> list[str]:
  """Writes `<workdir>/text2video/<name>/<k>_<prompt>_seed<s>/` per sample; returns those folders.
  A run stopped part-way (preempted) leaves its finished samples, and the same command resumes it
  (`common.output_run`)."""
  common.check_config(config)
  timer = common.Timer()
  with timer("load"):
    cascade, params = common.load_cascade(config)
    embedder = common.make_embedder(config, cascade)
  embedder(list(config.prompts))  # unusable prompts fail (long ones warn) before any output exists
  with common.output_run(workdir, "text2video", config) as out_root:
    return sample_prompts(cascade, params, embedder, list(config.prompts), list(config.seeds),
                          out_root, timer, extra_meta={"checkpoint": config.checkpoint})


def sample_prompts(cascade, params, embedder, prompts, seeds, out_root, timer, extra_meta=None):
  """Text-to-video for every prompt × seed (shared by the text2video and subject jobs)."""
  text, mask = embedder(prompts)
  folders = []
  total = len(prompts) * len(seeds)
  for i, prompt in enumerate(prompts):
    for seed in seeds:
      with timer("sample"):
        outs = cascade.sample(params, jnp.asarray(text[i:i + 1]), jnp.asarray(mask[i:i + 1]),
                              jax.random.PRNGKey(seed))
        outs = {k: jax.device_get(v[0]) for k, v in outs.items()}
      final = outs[cascade.names[-1]]
      folder = os.path.join(out_root, f"{i:03d}_{common.slug(prompt)}_seed{seed}")
      meta = dict(extra_meta or {}, job="text2video", prompt=prompt, seed=seed,
                  stages=cascade.names, output_shape=list(final.shape),
                  fps=cascade.stages[-1].fps, timings=dict(timer.phases))
      common.write_result(folder, final, cascade.stages[-1].fps, meta, stage_outputs=outs)
      folders.append(folder)
      logging.info("sample %d/%d written to %s", len(folders), total, folder)
  return folders
