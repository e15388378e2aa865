"""README commands are tested: every command in a README.md code block that starts with
`python -m dreamix_jax`, `python -m pytest` or a launcher (`python launch/...`, `launch/...`) is run
by `.ci/run` or by the test `COVERED` names for it, so the README cannot drift from the code.

A new README command fails here until it gets a row in `COVERED` (or CI runs it).
"""

import ast
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PREFIXES = ("python -m dreamix_jax", "python -m pytest", "python launch/", "launch/")

# README command (comments stripped, whitespace normalised) -> (test "file::function", strings that
# test's source must contain: what shows it runs this command).
COVERED = {
    "python -m dreamix_jax.main --config=configs/text2video.py:runlocal --workdir=/tmp/t2v": (
        "tests/test_jobs.py::test_text2video_cli_runs_end_to_end",
        ("dreamix_jax.main", "--config=configs/text2video.py:runlocal", "--workdir=")),
    "python -m dreamix_jax.main --config=configs/edit.py": (
        "tests/test_jobs.py::test_demo_edit_cli_on_the_shipped_cascade",
        ("dreamix_jax.main", "--config=configs/edit.py", "--workdir=")),
    "python -m dreamix_jax.tools.summary --config=configs/cascades/imagen_video.py": (
        "tests/test_cascade.py::test_imagen_video_config_matches_paper_table_within_15_percent",
        ("summary.summary_rows", "summary.format_table", "imagen_video")),
    "python -m dreamix_jax.tools.encode_prompts --t5=<hf t5 dir> --prompts=prompts.txt "
    "--out=<cache dir>": (
        "tests/test_t5.py::test_cli_builds_cache_for_cached_embedder",
        ("encode_prompts.main", "--t5=", "--prompts=", "--out=")),
    "python -m dreamix_jax.tools.make_tiny_t5 --out=assets/shapes_t5": (
        "tests/test_make_tiny_t5.py::test_shipped_copy_equals_a_fresh_run",
        ("make_tiny_t5.shipped_dir()", "make_tiny_t5.make_tiny_t5(")),
    "python -m dreamix_jax.tools.make_demo_assets --out=assets": (
        "tests/test_readme.py::test_make_demo_assets_command_reproduces_the_shipped_inputs",
        ("make_demo_assets", "--out=")),
    "python -m dreamix_jax.main --config=configs/edit.py:cascade=modelscope "
    "--config.checkpoint=<folder> --config.input=<video> --workdir=<dir>": (
        "tests/test_modelscope_jobs.py::test_edit_and_text2video_on_a_pipeline_folder",
        ("_run(", "--config=configs/edit.py:cascade=modelscope", "--config.checkpoint=",
         "--config.input=")),
    # The "Launching" section.
    "python launch/xm_launch.py --config=configs/edit.py --sweep=paper --dry_run": (
        "tests/test_launch.py::test_xm_dry_run_paper_sweep_covers_the_12_settings",
        ("_xm(", "--config=configs/edit.py", "--sweep=paper", "--dry_run")),
    "launch/tpu_vm/launch.sh --name dreamix --zone us-central2-b --type v4-32 "
    "--config configs/edit.py --dry-run": (
        "tests/test_launch.py::test_tpu_vm_launch_dry_run_runs_everything_on_every_host",
        ("launch.sh", "--type", "v4-32", "--config", "configs/edit.py", "--dry-run")),
}


def readme_commands(text: str) -> list[str]:
  """The checked commands of the README's fenced code blocks (continuations joined, comments
  stripped, whitespace normalised)."""
  commands = []
  for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M):
    for line in block.replace("\\\n", " ").splitlines():
      command = " ".join(re.split(r"(?:^|\s)#", line)[0].split())  # a `#` after a space: comment
      if command.startswith(PREFIXES):
        commands.append(command)
  return commands


def ci_commands() -> list[str]:
  lines = (ROOT / ".ci" / "run").read_text().splitlines()
  return [" ".join(l.split()) for l in lines if l.strip().startswith("python -m pytest")]


def _test_source(node_id: str) -> str:
  path, name = node_id.split("::")
  tree = ast.parse((ROOT / path).read_text())
  for node in tree.body:
    if isinstance(node, ast.FunctionDef) and node.name == name:
      return ast.get_source_segment((ROOT / path).read_text(), node)
  raise AssertionError(f"{node_id} does not exist: fix COVERED.")


def test_readme_has_commands_and_ci_runs_the_test_command():
  commands = readme_commands((ROOT / "README.md").read_text())
  assert "python -m dreamix_jax.main --config=configs/text2video.py:runlocal --workdir=/tmp/t2v" in (
      commands)
  assert "python -m pytest -q tests" in commands and "python -m pytest -q tests" in ci_commands()


def test_every_readme_command_is_run_by_a_test_or_ci():
  missing = [c for c in readme_commands((ROOT / "README.md").read_text())
             if c not in COVERED and c not in ci_commands()]
  assert not missing, (f"README commands no test runs: {missing}. Add a test that runs each and a "
                       "row to COVERED in tests/test_readme.py.")


@pytest.mark.parametrize("command", sorted(COVERED))
def test_covering_tests_exist_and_run_the_command(command):
  node_id, evidence = COVERED[command]
  source = _test_source(node_id)
  absent = [e for e in evidence if e not in source]
  assert not absent, f"{node_id} does not show it runs {command!r}: no {absent} in its source."


def test_make_demo_assets_command_reproduces_the_shipped_inputs(tmp_path):
  """The README's make_demo_assets command, with --out= in a temporary folder."""
  [command] = [c for c in COVERED if "make_demo_assets" in c]
  argv = shlex.split(command.replace("--out=assets", f"--out={tmp_path}"))
  proc = subprocess.run([sys.executable] + argv[1:], cwd=ROOT, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  shipped = ROOT / "assets"
  for name in ("shapes_frame.png", "shapes_subject"):
    made, ref = tmp_path / name, shipped / name
    files = sorted(p.relative_to(made) for p in made.rglob("*")) if made.is_dir() else [None]
    assert files == (sorted(p.relative_to(ref) for p in ref.rglob("*")) if ref.is_dir() else [None])
    pairs = [(made / f, ref / f) for f in files] if made.is_dir() else [(made, ref)]
    for a, b in pairs:
      if a.is_file():
        assert a.read_bytes() == b.read_bytes(), a
  assert (tmp_path / "shapes_clip.mp4").stat().st_size > 0
