"""A hardening method defined here, registered with one line, and run through the command line.

The method is this module itself: `harden` and `describe` below are the two entry points every
method has (moth_tf.hardening.methods). It is clean fine-tuning with a twist: every training image
is mirrored left to right, so the hardened model must differ from plain fine-tuning's.
"""

import json
import os

import numpy as np
import pytest

from cli_testing import copied_workdir
from cli_testing import run_cli
from moth_tf import config as config_lib
from moth_tf import data as data_lib
from moth_tf.hardening import fitting
from moth_tf.hardening import methods
from moth_tf.hardening import model as model_lib

NAME = "mirror_finetune"


def describe(config, num_train, pgd_settings=None):
  del pgd_settings
  return f"mirrored fine-tuning: {fitting.describe_schedule(config, num_train)}"


def harden(classifier_factory, splits, config, run_dir, strategy=None, verbose=1,
           pgd_settings=None):
  del pgd_settings
  import dataclasses
  mirrored = dataclasses.replace(splits, x_train=np.ascontiguousarray(splits.x_train[:, :, ::-1]))
  model, results = fitting.run_plain_method(
      lambda: model_lib.HardeningModel(classifier_factory(), splits.num_classes), mirrored, config,
      run_dir, strategy, verbose, twist="mirrored images")
  return model.classifier, results


@pytest.fixture
def registered():
  import sys
  methods.register_method(NAME, sys.modules[__name__], "fine-tuning on mirrored images")
  yield NAME
  methods.unregister_method(NAME)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, digits_trained_1_epoch):
  """A digits LeNet trained for 1 epoch: the session's `--phase=train --epochs=1`
  (tests/conftest.py), copied."""
  return copied_workdir(digits_trained_1_epoch[0], tmp_path_factory)


def test_a_registered_method_runs_through_the_cli(registered, workdir, capsys):
  assert registered in config_lib.methods()
  capsys.readouterr()
  run_cli("--phase=harden", f"--method={registered}", "--harden_steps=10",
          f"--workdir={workdir}")
  out = capsys.readouterr().out
  assert "mirrored fine-tuning" in out
  run_dir = os.path.join(workdir, f"digits_lenet_{registered}")
  with open(os.path.join(run_dir, "summary.json")) as f:
    summary = json.load(f)
  assert summary["method"] == registered
  assert summary["harden"]["twist"] == "mirrored images"
  assert summary["harden"]["steps"] == 10
  assert os.path.exists(os.path.join(run_dir, "model.keras"))


def test_the_registry_refuses_bad_entries(registered):
  import sys
  with pytest.raises(ValueError, match="registered already"):
    methods.register_method(registered, sys.modules[__name__], "again")
  with pytest.raises(ValueError, match="lower-case"):
    methods.register_method("Bad-Name", "x", "")
  with pytest.raises(ValueError, match="has no harden or describe"):
    methods.register_method("empty", data_lib, "")
  with pytest.raises(ValueError, match="built-in"):
    methods.unregister_method("moth")


def test_an_unregistered_method_is_refused():
  with pytest.raises(ValueError, match="method must be one of"):
    config_lib.RunConfig(phase="harden", method=NAME)
