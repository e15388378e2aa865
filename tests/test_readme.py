"""README commands are tested: every command in a README.md code block that starts with
`python -m dreamix_jax`, `python -m pytest` or a launcher (`python launch/...`, `launch/...`) is run
by `.ci/run` or by the test `COVERED` names for it, which takes its argv from the README itself
(`readme_commands.argv`), so the README cannot drift from the code.

A new README command fails here until it gets a row in `COVERED` and a test that runs it.
"""

import ast
import pathlib
import subprocess

import pytest

import readme_commands

ROOT = pathlib.Path(__file__).resolve().parents[1]

# README command (comments stripped, whitespace normalised) -> the test ("file::function") that runs
# it through `readme_commands.argv(<the command>)`.
COVERED = {
    "python -m dreamix_jax.main --config=configs/text2video.py:runlocal --workdir=/tmp/t2v":
        "tests/test_jobs.py::test_text2video_cli_runs_end_to_end",
    "python -m dreamix_jax.main --config=configs/edit.py":
        "tests/test_jobs.py::test_demo_edit_cli_on_the_shipped_cascade",
    "python -m dreamix_jax.tools.summary --config=configs/cascades/imagen_video.py":
        "tests/test_cascade.py::test_imagen_video_config_matches_paper_table_within_15_percent",
    "python -m dreamix_jax.tools.encode_prompts --t5=<hf t5 dir> --prompts=prompts.txt "
    "--out=<cache dir>": "tests/test_t5.py::test_cli_builds_cache_for_cached_embedder",
    "python -m dreamix_jax.tools.make_tiny_t5 --out=assets/shapes_t5":
        "tests/test_make_tiny_t5.py::test_readme_command_remakes_the_shipped_copy",
    "python -m dreamix_jax.tools.make_demo_assets --out=assets":
        "tests/test_readme.py::test_make_demo_assets_command_reproduces_the_shipped_inputs",
    "python -m dreamix_jax.main --config=configs/edit.py:cascade=modelscope "
    "--config.checkpoint=<folder> --config.input=<video> --workdir=<dir>":
        "tests/test_modelscope_jobs.py::test_edit_and_text2video_on_a_pipeline_folder",
    # The "Launching" section.
    "python launch/xm_launch.py --config=configs/edit.py --sweep=paper --dry_run":
        "tests/test_launch.py::test_xm_dry_run_paper_sweep_covers_the_12_settings",
    "launch/tpu_vm/launch.sh --name dreamix --zone us-central2-b --type v4-32 "
    "--config configs/edit.py --dry-run":
        "tests/test_launch.py::test_tpu_vm_launch_dry_run_runs_everything_on_every_host",
}


def ci_commands() -> list[str]:
  lines = (ROOT / ".ci" / "run").read_text().splitlines()
  return [" ".join(l.split()) for l in lines if l.strip().startswith("python -m pytest")]


def _argv_calls(node_id: str) -> list[str]:
  """The constant commands the test `node_id` passes to `readme_commands.argv`."""
  path, name = node_id.split("::")
  tree = ast.parse((ROOT / path).read_text())
  [function] = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name] or [None]
  assert function is not None, f"{node_id} does not exist: fix COVERED."
  return [call.args[0].value for call in ast.walk(function)
          if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
          and call.func.attr == "argv" and getattr(call.func.value, "id", "") == "readme_commands"
          and call.args and isinstance(call.args[0], ast.Constant)]


def test_commands_are_read_from_code_blocks_only():
  text = ("Run `python -m dreamix_jax.main --config=inline.py` inline.\n\n```bash\n"
          "python -m dreamix_jax.main \\\n  --config=configs/edit.py   # the demo\n"
          "echo not a command\n```\n")
  assert readme_commands.commands(text) == ["python -m dreamix_jax.main --config=configs/edit.py"]


def test_readme_has_commands_and_ci_runs_the_test_command():
  commands = readme_commands.commands()
  assert "python -m dreamix_jax.main --config=configs/text2video.py:runlocal --workdir=/tmp/t2v" in (
      commands)
  assert "python -m pytest -q tests" in commands and "python -m pytest -q tests" in ci_commands()


def test_every_readme_command_is_run_by_a_test_or_ci():
  missing = [c for c in readme_commands.commands() if c not in COVERED and c not in ci_commands()]
  assert not missing, (f"README commands no test runs: {missing}. Add a test that runs each "
                       "through readme_commands.argv and a row to COVERED in tests/test_readme.py.")


@pytest.mark.parametrize("command", sorted(COVERED))
def test_covering_tests_take_the_command_from_the_readme(command):
  assert command in _argv_calls(COVERED[command]), (
      f"{COVERED[command]} does not run readme_commands.argv({command!r}).")


def test_make_demo_assets_command_reproduces_the_shipped_inputs(tmp_path):
  """The README's make_demo_assets command, with --out= in a temporary folder."""
  argv = readme_commands.argv("python -m dreamix_jax.tools.make_demo_assets --out=assets",
                              {"--out=assets": f"--out={tmp_path}"})
  proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
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
