r"""End-to-end phases of the demo edit: `jobs.edit.run_edit` on `configs/edit.py`, time per phase.

The job times its phases with `jobs.common.Timer` (load, read_input, finetune, sample) and records
them in each output's meta.json; this script runs the job once in a temporary workdir and prints
them, plus the untimed remainder (prompt embedding, writing outputs). Randomly initialised stages:
the demo checkpoint is not needed (`--cascade=shapes` times the full-size cascade's phases with a
chosen number of finetuning steps). First calls include compilation, as in a real run.

  python benchmarks/edit_phases.py [--dtype=float32|bfloat16] [--cascade=tiny|shapes]
      [--finetune_steps=N]
"""

from __future__ import annotations

import common  # pylint: disable=g-bad-import-order

import json
import os
import tempfile
import time

from configs import edit as edit_config
from dreamix_jax.jobs import edit

COLUMNS = ("phase", "seconds", "share_pct")


def edit_config_for(cascade: str, dtype: str, finetune_steps: int | None, *,
                    base_only: bool = False):
  """configs/edit.py (runlocal for `tiny`), random stages, U-Nets in `dtype`; `base_only`
  finetunes the base stage alone."""
  config = edit_config.get_config("runlocal" if cascade == "tiny" else None)
  config.checkpoint = ""
  config.overwrite = True
  for name in config.cascade.stages:
    config.cascade.stages[name].backbone.dtype = dtype
  if finetune_steps is not None:
    config.finetune.steps = finetune_steps
  if base_only:
    config.finetune.stages = ("base",)
  return config


def main():
  p = common.parser(__doc__.splitlines()[0])
  p.add_argument("--cascade", default="tiny", choices=("tiny", "shapes"),
                 help="tiny: the runlocal config; shapes: the full-size demo cascade (random).")
  p.add_argument("--finetune_steps", type=int, default=None,
                 help="Finetuning steps (default: the config's; --tiny: 1, base stage only).")
  args = p.parse_args()
  steps = 1 if (args.tiny and args.finetune_steps is None) else args.finetune_steps
  config = edit_config_for("tiny" if args.tiny else args.cascade, args.dtype, steps,
                           base_only=args.tiny)
  common.header(f"Edit job phases ({'tiny' if args.tiny else args.cascade} cascade, "
                f"{config.finetune.steps} finetuning steps)", args.dtype)
  with tempfile.TemporaryDirectory() as workdir:
    t0 = time.perf_counter()
    folders = edit.run(config, workdir)
    total = time.perf_counter() - t0
    with open(os.path.join(folders[-1], "meta.json")) as f:
      phases = json.load(f)["timings"]
  table = common.Table(COLUMNS)
  for name, seconds in phases.items():
    table.row(name, seconds, 100.0 * seconds / total)
  untimed = total - sum(phases.values())
  table.row("untimed", untimed, 100.0 * untimed / total)
  table.row("total", total, 100.0)


if __name__ == "__main__":
  main()
