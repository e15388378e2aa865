"""Pools the finished clips of several moving-shapes ablation runs into one set of tables.

  python -m dreamix_jax.tools.pool_ablation --out=runs/ablation_pooled runs/abl_seed0 runs/abl_seed1

An ablation (`configs/eval.py:benchmark=shapes`) edits its clips one after another; runs over
different data seeds (`--config.ablation.data_seed`: other source clips) can go side by side, one
per core or host, and this tool writes their edits as one benchmark: ablation_edits.csv,
ablation.csv/.md with the 95% intervals, ablation_paired.csv/.md and the plots
(`shapes.ablation.write_results`). Runs made with other settings than the first (checkpoint,
cascade, world, methods, finetuning; the data seed and clip count aside), or of a data seed
already pooled, are refused.
"""

from __future__ import annotations

import os
import sys

from absl import app
from absl import flags
from absl import logging

from dreamix_jax.shapes import ablation


def define_flags():
  """Registers this tool's flags (only when it runs as a program, so importing it defines none)."""
  flags.DEFINE_string("out", None, "Folder for the pooled tables (created; not one of the runs).",
                      required=True)


def pool(workdirs, out: str) -> dict[str, str]:
  """Writes the pooled tables of the ablation runs in `workdirs` to `out`; returns their paths."""
  if not workdirs:
    raise ValueError("Give the ablation workdirs to pool after the flags.")
  rows, key, first, seeds = [], None, None, {}
  for workdir in workdirs:
    if os.path.abspath(workdir) == os.path.abspath(out):
      raise ValueError(f"--out={out} is one of the runs; write the pooled tables elsewhere.")
    settings, found = ablation.finished_rows(workdir)
    seed = settings["ablation"]["data_seed"]
    if seed in seeds:  # the same source clips edited the same way: they would count twice
      raise ValueError(f"{workdir} and {seeds[seed]} both edit data seed {seed}; pool runs of "
                       "different data seeds.")
    seeds[seed] = workdir
    if key is None:
      key, first = ablation.pooling_key(settings), workdir
    elif ablation.pooling_key(settings) != key:
      raise ValueError(f"{workdir} was edited with other settings than {first} (beyond the data "
                       "seed); pool only runs of one benchmark.")
    rows += found
  os.makedirs(out, exist_ok=True)
  return ablation.write_results(out, rows)


def main(argv):
  try:
    paths = pool(argv[1:], flags.FLAGS.out)
  except (ValueError, OSError) as e:  # bad input: one line, exit code 2, nothing written
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  logging.info("pooled ablation written to %s", paths["table_md"])
  print(open(paths["table_md"], encoding="utf-8").read())
  print(open(paths["paired_md"], encoding="utf-8").read())


if __name__ == "__main__":
  define_flags()
  app.run(main)
