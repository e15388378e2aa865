"""Evaluation: score a folder of results, or run the moving-shapes ablation benchmark.

  python -m dreamix_jax.main --config=configs/eval.py:outputs=/tmp/dreamix/sweep --workdir=/tmp/eval
  python -m dreamix_jax.main --config=configs/eval.py:outputs=<dir>,clip_dir=<hf clip>,lpips_weights=<file>
  python -m dreamix_jax.main --config=configs/eval.py:benchmark=shapes --workdir=/tmp/ablation
  python -m dreamix_jax.main --config=configs/eval.py:benchmark=shapes,runlocal --workdir=/tmp/abl

`outputs`: scores every result folder under it into `<workdir>/scores.csv` and `scores.md` (temporal
distance always; CLIP score with `clip_dir`, a local Hugging Face CLIP; temporal LPIPS with
`lpips_weights`, a file from tools/convert_lpips; the moving-shapes probe for shapes prompts).
`benchmark=shapes`: edits `ablation.num_clips` test-split clips × 4 edit categories with 4 methods
(no finetuning at s = `ablation.s_none`; video (α = 1) and mixed (α = 0.35) finetuning for
`ablation.steps` steps at s = `ablation.s_finetuned`; text-to-video) on the demo cascade and writes
ablation.csv/.md, ablation_edits.csv and ablation_success.png. `runlocal`: tiny random cascade, one
clip, a few steps.
"""

from configs import common
from dreamix_jax import config_utils as cu
from dreamix_jax.dreamix import finetune
from dreamix_jax.jobs import sweep


def get_config(arg=None):
  arg = cu.parse_arg(arg, runlocal=False, outputs="", benchmark="", clip_dir="", lpips_weights="")
  config = common.base_config("eval", arg.runlocal)
  config.outputs = arg.outputs
  config.clip_dir = arg.clip_dir
  config.lpips_weights = arg.lpips_weights
  config.benchmark = arg.benchmark
  config.ablation = dict(num_clips=1 if arg.runlocal else 12, data_seed=0,
                         steps=2 if arg.runlocal else 150, s_none=0.8, s_finetuned=0.9)
  config.alphas = dict(sweep.PAPER_ALPHAS)
  config.finetune = finetune.finetune_config(
      batch_size=1 if arg.runlocal else 4, log_every=1 if arg.runlocal else 10,
      stages=("base",) if arg.runlocal else ("base", "tsr", "ssr"))
  config.finetune.optimizer.lr = 1e-4  # as configs/edit.py: the toy cascade takes a larger step
  for unused in ("alpha", "steps", "checkpoint_every"):  # set per method by config.ablation
    del config.finetune[unused]
  return config
