"""Loads a job config file the way `--config=<path>[:args]` does (locked), for the tests."""

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load(config_arg: str):
  """`load("configs/edit.py:runlocal")` -> the locked ConfigDict of that file's get_config(arg)."""
  path, _, arg = config_arg.partition(":")
  spec = importlib.util.spec_from_file_location("job_config", ROOT / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  config.lock()
  return config
