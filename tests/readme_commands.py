"""The README's commands, for the tests that run them.

A test that covers a README command takes its argv from here (`argv`), so what runs is the README's
own text: a README command that drifts from the code fails its test, and a README command that no
longer exists fails `argv` itself. `tests/test_readme.py` checks that every command has such a test.
"""

import pathlib
import re
import shlex
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PREFIXES = ("python -m dreamix_jax", "python -m pytest", "python launch/", "launch/")


def commands(text: str | None = None) -> list[str]:
  """The checked commands of the README's fenced code blocks (continuations joined, comments
  stripped, whitespace normalised)."""
  text = (ROOT / "README.md").read_text() if text is None else text
  found = []
  for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M):
    for line in block.replace("\\\n", " ").splitlines():
      command = " ".join(re.split(r"(?:^|\s)#", line)[0].split())  # a `#` after a space: comment
      if command.startswith(PREFIXES):
        found.append(command)
  return found


def argv(command: str, replace: dict[str, str] | None = None) -> list[str]:
  """The argv of README command `command` (which must be in the README, word for word), with each
  `replace` key (a placeholder such as `<folder>`, or a whole `--flag=value`) replaced by its value
  and a leading `python` replaced by this interpreter: ready for `subprocess.run(..., cwd=ROOT)`."""
  if command not in commands():
    raise AssertionError(f"The README has no command {command!r}: update the test with the README.")
  for old, new in (replace or {}).items():
    if old not in command:
      raise AssertionError(f"{old!r} is not in the README command {command!r}.")
    command = command.replace(old, new)
  words = shlex.split(command)
  return [sys.executable] + words[1:] if words[0] == "python" else words
