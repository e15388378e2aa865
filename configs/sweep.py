"""The paper's hyperparameter sweep (App. F.1) on one video: 12 (finetuning, s) settings side by side.

  python -m dreamix_jax.main --config=configs/sweep.py --workdir=/tmp/dreamix
  python -m dreamix_jax.main --config=configs/sweep.py:video=my.mp4,prompt="a blue square moving up on a gray background"
  python -m dreamix_jax.main --config=configs/sweep.py:runlocal --workdir=/tmp/sweep   # tiny, random

`config.settings` lists (mode, finetuning steps, s): mode `none` (no finetuning, 0 steps) or a key of
`config.alphas` (`video`: α = 1, `mixed`: α = 0.35). Override it, e.g.
--config.settings="(('none',0,0.6),('mixed',100,0.9))". `config.finetune` holds what the modes share
(stages, learning rate, batch, t*); each mode's α and steps come from the grid.
Outputs: `<workdir>/sweep/<name>/index.html` and per prompt × seed a `grid.png` (see jobs/sweep.py).
"""

from configs import common
from dreamix_jax import config_utils as cu
from dreamix_jax.dreamix import finetune
from dreamix_jax.dreamix import sweep

# The runlocal grid: the paper's structure (4 s without finetuning, one video finetune read once,
# one mixed finetune read at three step counts, one of them shared by two s values), tiny steps.
RUNLOCAL_GRID = (
    ("none", 0, 0.4), ("none", 0, 0.8),
    ("video", 2, 0.8), ("video", 2, 0.95),
    ("mixed", 1, 0.98), ("mixed", 2, 0.98), ("mixed", 2, 1.0), ("mixed", 3, 1.0),
)


def get_config(arg=None):
  arg = cu.parse_arg(arg, runlocal=False, cascade="", video="", prompt="")
  config = common.base_config("sweep", arg.runlocal, arg.cascade)
  config.input = arg.video or common.SHAPES_CLIP
  config.prompts = (arg.prompt,) if arg.prompt else (
      "a red circle moving left on a black background",)
  config.settings = RUNLOCAL_GRID if arg.runlocal else sweep.PAPER_GRID
  config.alphas = dict(sweep.PAPER_ALPHAS)
  config.finetune = finetune.finetune_config(
      batch_size=1 if arg.runlocal else 4, log_every=1 if arg.runlocal else 10,
      stages=("base",) if arg.runlocal else ("base", "tsr", "ssr"))
  config.finetune.optimizer.lr = 1e-4  # as configs/edit.py: the toy cascade takes a larger step
  for unused in ("alpha", "steps", "checkpoint_every"):  # set per setting by the grid
    del config.finetune[unused]
  return config
