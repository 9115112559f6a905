"""Tests of what an installation needs: setup.py's requirements and moth_tf._compat's Keras guard."""

import os
import runpy
import subprocess
import sys
import warnings

import keras
import pytest
import setuptools

from moth_tf import _compat

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def setup_kwargs():
  """The keyword arguments setup.py passes to setuptools.setup (nothing is built)."""
  captured = {}
  original = setuptools.setup
  setuptools.setup = lambda **kwargs: captured.update(kwargs)
  try:
    runpy.run_path(os.path.join(_REPO, "setup.py"))
  finally:
    setuptools.setup = original
  return captured


def _requirement(requirements, name):
  from packaging.requirements import Requirement
  found = [Requirement(r) for r in requirements if Requirement(r).name == name]
  assert len(found) == 1, (name, requirements)
  return found[0]


def test_keras_is_capped_at_the_tested_minor_version(setup_kwargs):
  keras_req = _requirement(setup_kwargs["install_requires"], "keras")
  assert str(keras_req.specifier) == ",".join(sorted(_compat.KERAS_RANGE.split(",")))
  for ok in ("3.8.0", "3.15.1", "3.15.9"):
    assert keras_req.specifier.contains(ok)
  for too_new_or_old in ("3.16.0", "4.0.0", "3.7.0"):
    assert not keras_req.specifier.contains(too_new_or_old)
  # The installed (tested) Keras is inside the range.
  assert keras_req.specifier.contains(keras.__version__)


def test_matplotlib_is_a_core_dependency_and_report_an_alias(setup_kwargs):
  _requirement(setup_kwargs["install_requires"], "matplotlib")
  # Old install commands (pip install -e ".[report]") still resolve.
  assert "report" in setup_kwargs["extras_require"]


def test_guard_passes_on_the_installed_keras():
  assert _compat.missing_internals() == []
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    _compat.check_keras()


@pytest.mark.parametrize("owner, name, expected", [
    ("trainer", "reduce_per_replica", "keras.src.backend.tensorflow.trainer.reduce_per_replica"),
    ("model", "_symbolic_build", "keras.Model._symbolic_build"),
    ("model", "_maybe_symbolic_build", "keras.Model._maybe_symbolic_build"),
    ("export_utils", "get_input_signature",
     "keras.src.export.export_utils.get_input_signature"),
])
def test_guard_names_a_missing_internal_in_one_line(owner, name, expected, monkeypatch):
  from keras.src.backend.tensorflow import trainer
  from keras.src.export import export_utils
  target = {"trainer": trainer, "model": keras.Model, "export_utils": export_utils}[owner]
  # As a Keras release that renamed it: gone from the module, or not a method any more.
  if owner == "model":
    monkeypatch.setattr(target, name, None)
  else:
    monkeypatch.delattr(target, name)
  with pytest.raises(ImportError) as info:
    _compat.check_keras("3.99.0")
  message = str(info.value)
  assert isinstance(info.value, _compat.KerasInternalsError)
  assert "\n" not in message
  assert message == (f"moth_tf cannot run on Keras 3.99.0: it lacks {expected}, which moth_tf "
                     f"relies on; moth_tf is tested with keras>=3.8,<3.16. Fix: pip install "
                     f"\"keras>=3.8,<3.16\"")


def test_a_newer_keras_that_keeps_the_internals_only_warns():
  with pytest.warns(RuntimeWarning, match=r"tested with keras>=3\.8,<3\.16, and Keras 3\.16\.0 is "
                                           r"installed"):
    _compat.check_keras("3.16.0")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    _compat.check_keras("3.8.0")
    _compat.check_keras("3.15.1")


def test_variable_path_without_the_private_attribute_is_the_same_one_line():
  with pytest.raises(_compat.KerasInternalsError, match=r"it lacks keras\.Variable\._path"):
    _compat.set_variable_path(object(), "x")


def test_the_command_line_stops_in_one_line_on_a_keras_without_the_internals(tmp_path):
  # A Keras release without reduce_per_replica, as seen by a fresh process: importing the phases
  # (distribute.py, models/io.py) stops in moth_tf._compat, and main prints its line.
  script = (
      "import sys\n"
      "from keras.src.backend.tensorflow import trainer\n"
      "del trainer.reduce_per_replica\n"
      "from moth_tf.cli import main\n"
      f"sys.argv = ['moth_tf', '--phase=test', '--workdir={tmp_path}']\n"
      "main.run_main()\n")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      p for p in (_REPO, os.environ.get("PYTHONPATH")) if p))
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        timeout=300, cwd=str(tmp_path), env=env)
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last == (f"moth_tf: error: moth_tf cannot run on Keras {keras.__version__}: it lacks "
                  "keras.src.backend.tensorflow.trainer.reduce_per_replica, which moth_tf relies "
                  "on; moth_tf is tested with keras>=3.8,<3.16. Fix: pip install "
                  "\"keras>=3.8,<3.16\"")
