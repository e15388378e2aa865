"""Entry point: `python -m dreamix_jax.main --config=configs/<job>.py[:args] --workdir=<dir>`.

The config (locked: a misspelt field is an error; any field can be overridden, e.g.
`--config.finetune.steps=300`) names the job in `config.job`; each job is a plain
`run(config, workdir)` function, found through the registry in `dreamix_jax.jobs`.

Exit codes: 0 done; 2 bad input or config, or a file system that refuses a write (full disk, quota,
permissions, read-only): one line on stderr saying what is wrong and what to do; 1 anything else
(a bug: a traceback); 3 training stopped on a non-finite loss (the last good checkpoint is kept);
`preemption.EXIT_CODE` (75) preempted by SIGTERM/SIGINT (in training after saving a checkpoint;
elsewhere with every finished result kept and nothing half-written): re-run the same command to
resume. The whole catalogue: docs/failures.md.
"""

from __future__ import annotations

import errno
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

EXIT_BAD_INPUT = 2
EXIT_NONFINITE = 3

# errno of a file-system failure the user can fix -> (what happened, how to fix it).
_FIX_WORKDIR = "or give a --workdir elsewhere, then re-run the same command (it resumes)"
USER_OS_ERRORS = {
    errno.ENOSPC: ("no space left on the device", f"free space there {_FIX_WORKDIR}"),
    errno.EDQUOT: ("disk quota exceeded", f"free space within your quota {_FIX_WORKDIR}"),
    errno.EACCES: ("permission denied", f"make it accessible to this user {_FIX_WORKDIR}"),
    errno.EPERM: ("operation not permitted", f"make it accessible to this user {_FIX_WORKDIR}"),
    errno.EROFS: ("read-only file system", f"mount it writable {_FIX_WORKDIR}"),
    errno.EIO: ("input/output error reading or writing a file",
                "check the disk (or network file system) and copy the file anew"),
    errno.ENAMETOOLONG: ("file name too long", "choose shorter names or a shorter --workdir"),
    errno.ENOTDIR: ("a path component is a file, not a folder", "fix the path"),
    errno.EISDIR: ("a folder where a file is expected", "give the path of a file"),
}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    config = flags.FLAGS.config
    job = config.job  # a config file that failed to load surfaces on first use
  except OSError as e:
    last = [line.strip() for line in str(e).splitlines() if line.strip()][-1]
    _usage_error(f"could not load the --config file ({last}); give configs/<job>.py[:args] "
                 "relative to the repository root.")
  workdir = flags.FLAGS.workdir
  from dreamix_jax import jobs
  from dreamix_jax.train import loop, preemption
  try:
    run = jobs.get(job)
    logging.info("job %s, workdir %s\n%s", job, workdir, config)
    run(config, workdir)
  except preemption.Preempted as e:
    _exit(f"preempted: {e}", preemption.EXIT_CODE)
  except loop.NonFiniteLossError as e:
    _exit(f"error: {e}", EXIT_NONFINITE)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    # Bad input: one clear message instead of a traceback.
    _exit(f"error: {one_line(e)}", EXIT_BAD_INPUT)
  except OSError as e:
    message = user_os_error(e)
    if message is None:
      raise  # not the user's to fix: exit 1 with the traceback
    _exit(message, EXIT_BAD_INPUT)


def one_line(error: BaseException) -> str:
  """The error's message on one line (multi-line messages, e.g. lists of mismatched tensors, are
  joined with '; ')."""
  return "; ".join(line.strip() for line in str(error).splitlines() if line.strip())


def user_os_error(error: OSError) -> str | None:
  """'error: <what> (<path>): <how to fix>' for a file-system failure the user can fix (its errno
  in `USER_OS_ERRORS`), else None."""
  if error.errno not in USER_OS_ERRORS:
    return None
  what, fix = USER_OS_ERRORS[error.errno]
  paths = [p for p in (error.filename, error.filename2) if p is not None]
  where = f" ({', '.join(map(str, paths))})" if paths else ""
  return f"error: {what}{where}: {fix}."


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every config problem (a missing config file, an unknown `:arg`, a
  misspelt `--config.<field>` override on the locked config, a value of the wrong type) answered by
  one line on stderr and exit code 2 instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError):
    config_arg = next((a.partition("=")[2] for a in argv[1:] if a.startswith("--config=")), None)
    config = flags.FLAGS["config"].parser.parse(config_arg) if config_arg else None
    overrides = [a[len("--config."):].partition("=")[0] for a in argv[1:]
                 if a.startswith("--config.")]
    unknown = [o for o in overrides if not _has_field(config, o)]
    valid = sorted(config.keys()) if config is not None else []
    _usage_error(f"unknown config field(s) {unknown}: the config is locked, so a misspelt "
                 f"--config.<field> is an error; its top-level fields are {valid}.")
  except (flags.Error, OSError, ValueError, TypeError) as e:
    # Errors raised inside a config file arrive wrapped with their traceback; keep the last line.
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    _usage_error(f"bad flags: {lines[-1] if lines else e}")


def _usage_error(message: str):
  print(f"error: {message}", file=sys.stderr)  # logging is not set up before the flags are parsed
  sys.exit(EXIT_BAD_INPUT)


def _has_field(config, path: str) -> bool:
  node = config
  for part in path.split("."):
    if node is None or not hasattr(node, "keys") or part not in node.keys():
      return False
    node = node[part]
  return True


def _exit(message: str, code: int):
  logging.error("%s", message)
  print(message, file=sys.stderr)
  sys.exit(code)


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Job config file (configs/*.py[:args]).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", "/tmp/dreamix", "Where the job writes checkpoints and outputs.")
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=parse_flags)
