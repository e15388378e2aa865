"""Entry point: `python -m dreamix_jax.main --config=configs/<job>.py[:args] --workdir=<dir>`.

The config (locked: a misspelt field is an error; any field can be overridden, e.g.
`--config.finetune.steps=300`) names the job in `config.job`; each job is a plain
`run(config, workdir)` function in `dreamix_jax.jobs`.
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

JOBS = ("sample", "edit", "image2video", "subject", "pretrain", "sweep", "eval")


def get_job(name: str):
  """The `run(config, workdir)` function of a job name."""
  if name == "sample":
    from dreamix_jax.jobs import sample
    return sample.run
  if name == "edit":
    from dreamix_jax.jobs import edit
    return edit.run_edit
  if name == "image2video":
    from dreamix_jax.jobs import edit
    return edit.run_image2video
  if name == "subject":
    from dreamix_jax.jobs import edit
    return edit.run_subject
  if name == "pretrain":
    from dreamix_jax.jobs import pretrain
    return pretrain.run
  if name == "sweep":
    from dreamix_jax.jobs import sweep
    return sweep.run
  if name == "eval":
    from dreamix_jax.jobs import evaluate
    return evaluate.run
  raise ValueError(f"Unknown job {name!r}; config.job must be one of {JOBS}.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = flags.FLAGS.config
  workdir = flags.FLAGS.workdir
  run = get_job(config.job)
  logging.info("job %s, workdir %s\n%s", config.job, workdir, config)
  try:
    run(config, workdir)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    # Bad input: one clear message instead of a traceback.
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Job config file (configs/*.py[:args]).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", "/tmp/dreamix", "Where the job writes checkpoints and outputs.")
  flags.mark_flags_as_required(["config"])
  app.run(main)
