"""Runs of the command line that several test modules make with the same flags, made once per pytest
process (session fixtures) instead of once per module.

Each fixture's workdir is shared: a test that writes into a run (another phase, a re-run) works on a
copy (cli_testing.copied_workdir), so what one module does never reaches another, in any order. Run alone (as
Bazel runs each module), a module makes the shared run itself, as it did its own.
"""

import contextlib
import io
import os

import pytest

from cli_testing import DIGITS_PIPELINE_FLAGS  # pylint: disable=g-bad-import-order
from cli_testing import run_cli


def _run_capturing(*args):
  out = io.StringIO()  # Session fixtures cannot use the function-scoped capsys.
  with contextlib.redirect_stdout(out):
    run_cli(*args)
  return out.getvalue()


@pytest.fixture(scope="session")
def digits_pipeline(tmp_path_factory):
  """(workdir, stdout) of `--phase=pipeline` with DIGITS_PIPELINE_FLAGS and --seed=0. Read only."""
  workdir = os.path.join(str(tmp_path_factory.mktemp("pipeline")), "seed0")
  stdout = _run_capturing(*DIGITS_PIPELINE_FLAGS, "--seed=0", f"--workdir={workdir}")
  return workdir, stdout


def _trained(tmp_path_factory, epochs):
  workdir = os.path.join(str(tmp_path_factory.mktemp(f"trained{epochs}")), "work")
  stdout = _run_capturing("--phase=train", f"--epochs={epochs}", f"--workdir={workdir}")
  return workdir, stdout


@pytest.fixture(scope="session")
def digits_trained_1_epoch(tmp_path_factory):
  """(workdir, stdout) of `--phase=train --epochs=1` (a digits LeNet), for tests/test_bad_input.py
  and tests/test_method_registry.py. Read only."""
  return _trained(tmp_path_factory, 1)


@pytest.fixture(scope="session")
def digits_trained_2_epochs(tmp_path_factory):
  """(workdir, stdout) of `--phase=train --epochs=2` (a digits LeNet), for tests/test_cli.py,
  tests/test_pipeline_cli.py and tests/test_nad.py. Read only."""
  return _trained(tmp_path_factory, 2)
