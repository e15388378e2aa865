"""Prints a cascade's stages and parameter counts (counted with `jax.eval_shape`: no memory used).

  python -m dreamix_jax.tools.summary --config=configs/cascades/imagen_video.py
"""

from __future__ import annotations

from absl import app
from absl import flags
from ml_collections import config_flags

from dreamix_jax import cascade as cascade_lib
from dreamix_jax.backbones import base as backbone_base


def define_flags():
  """Registers this tool's flags (only when it runs as a program, so importing it defines none)."""
  config_flags.DEFINE_config_file("config", None, "A cascade config file.", lock_config=True)


def summary_rows(cascade: cascade_lib.Cascade) -> list[tuple[str, str, str, int]]:
  """(stage name, kind, 'frames×H×W', parameter count) per stage."""
  rows = []
  for stage in cascade.stages:
    n = backbone_base.count_params(cascade.abstract_params(stage))
    kind = f"{stage.kind} {stage.factor}×" if stage.conditional else stage.kind
    rows.append((stage.name, kind, "×".join(map(str, stage.shape)), n))
  return rows


def format_table(rows) -> str:
  lines = [f"{'stage':<8} {'kind':<8} {'output':>14} {'params':>16}"]
  for name, kind, shape, n in rows:
    lines.append(f"{name:<8} {kind:<8} {shape:>14} {n:>16,}")
  lines.append(f"{'total':<8} {'':<8} {'':>14} {sum(r[3] for r in rows):>16,}")
  return "\n".join(lines)


def main(argv):
  del argv
  cfg = flags.FLAGS.config
  print(f"cascade {cfg.name!r}")
  print(format_table(summary_rows(cascade_lib.Cascade.from_config(cfg))))


if __name__ == "__main__":
  define_flags()
  app.run(main)
