"""The launchers: the Colab notebook executed headlessly on the tiny cascade, the XManager launcher's
dry-run job specs (the paper's 12 editing settings), and the TPU VM scripts' dry-run commands."""

import importlib.util
import json
import pathlib
import shlex
import subprocess
import sys

import nbclient
import nbformat
import pytest

from dreamix_jax.dreamix import sweep
import readme_commands

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "launch" / "colab" / "dreamix.ipynb"
TPU_VM = ROOT / "launch" / "tpu_vm"
PROMPT = "a blue square moving up on a gray background"


def _tagged(nb, tag):
  return [i for i, cell in enumerate(nb.cells) if tag in cell.get("metadata", {}).get("tags", [])]


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
  """The notebook run as papermill would: parameters injected after the `parameters` cell."""
  workdir = tmp_path_factory.mktemp("colab")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  [params] = _tagged(nb, "parameters")
  injected = (f"RUNLOCAL = True\nWORKDIR = {str(workdir)!r}\nPROMPT = {PROMPT!r}\n"
              "FINETUNE_STEPS = 1\nFINETUNE_STAGES = ('base',)")
  nb.cells.insert(params + 1, nbformat.v4.new_code_cell(injected))
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": str(ROOT)}})
  client.execute()
  return nb, workdir


def test_notebook_defaults_to_the_demo_cascade_and_documents_real_weights():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  [params] = _tagged(nb, "parameters")
  assert "RUNLOCAL = False" in nb.cells[params].source
  skipped = "\n".join(nb.cells[i].source for i in _tagged(nb, "skip-execution"))
  for needle in ("jax[tpu]", "config.checkpoint", "config.text.t5_dir", "t5-v1_1",
                 "configs/cascades/imagen_video.py"):
    assert needle in skipped


def test_notebook_edits_and_shows_the_videos(executed):
  nb, workdir = executed
  errors = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
            if o.output_type == "error"]
  assert not errors, errors
  for i in _tagged(nb, "skip-execution"):  # the TPU cells are documentation here
    assert nb.cells[i].get("outputs", []) == [] and nb.cells[i].execution_count is None
  shown = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
           if o.output_type == "display_data"]
  html = "".join(o["data"].get("text/html", "") for o in shown)
  # mediapy when installed, else <video> tags with base64 mp4 data: input and output either way.
  assert html.count("<video") == 2 or any("image/png" in o["data"] for o in shown), shown
  folders = sorted((workdir / "edit" / "colab").glob("000_*"))
  assert len(folders) == 1
  assert {"input.mp4", "output.mp4", "output.gif", "meta.json"} <= {p.name for p in
                                                                    folders[0].iterdir()}
  meta = json.loads((folders[0] / "meta.json").read_text())
  assert meta["prompt"] == PROMPT and meta["finetune"]["steps"] == 1
  assert meta["finetune"]["stages"] == ["base"] and meta["checkpoint"] == ""


def _xm(*args):
  proc = subprocess.run([sys.executable, "launch/xm_launch.py", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  return proc


def test_xm_dry_run_paper_sweep_covers_the_12_settings():
  argv = readme_commands.argv(
      "python launch/xm_launch.py --config=configs/edit.py --sweep=paper --dry_run")
  proc = subprocess.run(argv + ["--multihost", "--accelerator=tpu_v4=32", "--workdir=/tmp/xm",
                                "--set=config.seeds=(0,1)"],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  specs = json.loads(proc.stdout)
  by_alpha = {v: k for k, v in sweep.PAPER_ALPHAS.items()}
  settings = []
  for spec in specs:
    args = spec["args"]
    assert spec["entrypoint"] == "dreamix_jax.main"
    assert spec["requirements"] == {"tpu_v4": 32}
    assert args["config"] == "configs/edit.py" and args["config.seeds"] == "(0,1)"
    assert args["config.distributed.enabled"] == "True"
    assert args["workdir"] == f"/tmp/xm/{spec['name']}"
    assert shlex.split(spec["command"]) == ["python", "-m", "dreamix_jax.main"] + [
        f"--{k}={v}" for k, v in args.items()]
    levels = eval(args["config.noise_levels"])  # a tuple literal, as --config.* parses it
    if args.get("config.finetune.enabled") == "False":
      settings += [("none", 0, s) for s in levels]
    else:
      mode = by_alpha[float(args["config.finetune.alpha"])]
      settings += [(mode, int(args["config.finetune.steps"]), s) for s in levels]
  assert len(specs) == 5  # none, video 64, mixed 150 / 200 / 300
  assert sorted(settings) == sorted(sweep.PAPER_GRID) and len(settings) == 12
  assert len({spec["args"]["workdir"] for spec in specs}) == len(specs)


@pytest.fixture(scope="module")
def xm_launch():
  spec = importlib.util.spec_from_file_location("xm_launch", ROOT / "launch" / "xm_launch.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_xm_axis_sweep_is_a_product_and_bad_input_is_named(xm_launch):
  specs = xm_launch.job_specs("configs/edit.py:runlocal", "/w", "a100=2", "local", "none",
                              ["finetune.alpha=0|0.35", "config.noise_levels=(0.7,)|(0.9,)|(1.0,)"],
                              [])
  assert len(specs) == 6 and all(s["requirements"] == {"a100": 2} for s in specs)
  pairs = {(s["args"]["config.finetune.alpha"], s["args"]["config.noise_levels"]) for s in specs}
  assert pairs == {(a, s) for a in ("0", "0.35") for s in ("(0.7,)", "(0.9,)", "(1.0,)")}
  assert all("config.distributed.enabled" not in s["args"] for s in specs)
  with pytest.raises(ValueError, match="no field 'finetune.alhpa'"):
    xm_launch.job_specs("configs/edit.py", "/w", "a100=1", "local", "none", ["finetune.alhpa=1"], [])
  with pytest.raises(ValueError, match="RESOURCE=COUNT"):
    xm_launch.job_specs("configs/edit.py", "/w", "tpu=8", "local", "none", [], [])
  with pytest.raises(ValueError, match="sweeps the edit job"):
    xm_launch.job_specs("configs/text2video.py", "/w", "a100=1", "local", "paper", [], [])
  with pytest.raises(ValueError, match="No config file"):
    xm_launch.job_specs("configs/nope.py", "/w", "a100=1", "local", "none", [], [])
  proc = _xm("--config=configs/edit.py")  # a real launch without xmanager: a clear error
  assert proc.returncode == 2 and "pip install xmanager" in proc.stderr


def _sh(script, *args):
  return subprocess.run(["bash", str(TPU_VM / script), *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=60)


def _commands(stdout):
  return [shlex.split(line) for line in stdout.splitlines() if line and not line.startswith("#")]


def test_tpu_vm_launch_dry_run_runs_everything_on_every_host():
  argv = readme_commands.argv("launch/tpu_vm/launch.sh --name dreamix --zone us-central2-b "
                              "--type v4-32 --config configs/edit.py --dry-run",
                              {"--name dreamix": "--name dx"})
  proc = subprocess.run(
      ["bash", *argv, "--project=proj", "--workdir=/tmp/out",
       "--data", "gs://bucket/cascade=/home/me/cascade", "--",
       "--config.finetune.steps=300", "--config.prompts=('a blue square moving up',)"],
      cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  assert "v4-32, 4 host(s)" in proc.stdout
  commands = _commands(proc.stdout)
  gcloud = [c for c in commands if c[0] == "gcloud"]
  assert [c[:5] for c in gcloud] == [["gcloud", "compute", "tpus", "tpu-vm", verb] for verb in
                                     ("create", "scp", "ssh", "ssh", "ssh")]
  assert "--accelerator-type=v4-32" in gcloud[0] and gcloud[0][5] == "dx"
  for c in gcloud:
    assert "--zone=us-central2-b" in c and "--project=proj" in c
  for c in gcloud[1:]:
    assert "--worker=all" in c
  install = next(a for a in gcloud[2] if a.startswith("--command="))
  jax_pin = next(l for l in (ROOT / "requirements.txt").read_text().splitlines()
                 if l.startswith("jax=="))
  assert f"jax[tpu]=={jax_pin.split('==')[1]}" in install and "pip install -q -e" in install
  assert "gs://bucket/cascade /home/me/cascade" in gcloud[3][-1]
  remote = shlex.split(gcloud[4][-1].removeprefix("--command="))
  job = remote[remote.index("python"):]
  assert job == ["python", "-m", "dreamix_jax.main", "--config=configs/edit.py",
                 "--workdir=/tmp/out", "--config.distributed.enabled=True",
                 "--config.finetune.steps=300", "--config.prompts=('a blue square moving up',)"]


def test_tpu_vm_single_host_run_and_fetch():
  proc = _sh("run.sh", "--name=dx", "--zone=z", "--type=v5litepod-8", "--config",
             "configs/text2video.py:runlocal", "--fetch-to", "/tmp/res", "--dry-run")
  assert proc.returncode == 0, proc.stderr
  ssh, mkdir, scp = _commands(proc.stdout)
  assert "--worker=all" in ssh and "distributed" not in ssh[-1]
  assert "--config=configs/text2video.py:runlocal" in ssh[-1]
  assert mkdir == ["mkdir", "-p", "/tmp/res"]
  assert scp[4] == "scp" and "dx:/tmp/dreamix" in scp and "--worker=0" in scp


@pytest.mark.parametrize("tpu_type, hosts", [("v4-8", 1), ("v4-32", 4), ("v3-8", 1), ("v2-32", 4),
                                             ("v5p-128", 16), ("v5litepod-8", 1),
                                             ("v5litepod-16", 4), ("v6e-64", 16)])
def test_tpu_host_counts(tpu_type, hosts):
  proc = subprocess.run(["bash", "-c", f'source {TPU_VM}/lib.sh && hosts_of_type {tpu_type}'],
                        capture_output=True, text=True)
  assert proc.returncode == 0 and proc.stdout.strip() == str(hosts)


@pytest.mark.parametrize("script, args, message", [
    ("run.sh", ["--name=dx", "--type=v4-8", "--config=configs/edit.py"], "--zone ZONE"),
    ("run.sh", ["--name=dx", "--zone=z", "--type=v4-8"], "give the job config"),
    ("run.sh", ["--name=dx", "--zone=z", "--type=v4-8", "--config=configs/nope.py"],
     "no config file 'configs/nope.py'"),
    ("run.sh", ["--name=dx", "--zone=z", "--type=v4-8", "--config=configs/edit.py", "--",
                "steps=3"], "must look like --config.field=value"),
    ("run.sh", ["--name=dx", "--zone=z", "--type=x9-8", "--config=configs/edit.py"], "--hosts N"),
    ("create.sh", ["--name=dx", "--zone=z", "--bogus"], "unknown option '--bogus'"),
    ("data.sh", ["--name=dx", "--zone=z", "--src=/nonexistent", "--dest=d"], "does not exist"),
    ("data.sh", ["--name=dx", "--zone=z", "--src=assets", "--dest=d", "--mount"], "gs:// sources"),
])
def test_tpu_vm_bad_arguments_are_named(script, args, message):
  proc = _sh(script, *args, "--dry-run")
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_tpu_vm_install_from_git_and_mounted_data():
  proc = _sh("install.sh", "--name=dx", "--zone=z", "--repo-url=https://example.org/d.git",
             "--ref=v1", "--dry-run")
  assert proc.returncode == 0, proc.stderr
  [ssh] = _commands(proc.stdout)
  assert "git clone --depth=1 --branch=v1 https://example.org/d.git" in ssh[-1]
  proc = _sh("data.sh", "--name=dx", "--zone=z", "--src=gs://b/ckpt/shapes", "--dest=/data/c",
             "--mount", "--dry-run")
  [ssh] = _commands(proc.stdout)
  assert "gcsfuse -o ro --implicit-dirs --only-dir=ckpt/shapes b /data/c" in ssh[-1]
  assert "--worker=all" in ssh
