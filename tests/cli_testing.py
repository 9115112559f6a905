"""Helpers for driving `python -m moth_tf.main` in-process from tests.

Flags are parsed with FLAGS([...]) inside `flagsaver.flagsaver()`, which restores every flag (value
and `present`) afterwards.
"""

import glob
import os
import shutil

from absl import flags
from absl.testing import flagsaver

from moth_tf.cli import flags as cli_flags
from moth_tf.cli import main as main_lib

FLAGS = flags.FLAGS

# A tiny `--phase=pipeline` (natural + moth, distance before and after) on the digits: 2 epochs of
# LeNet, one hardening epoch of 13 steps (1,257 digits in batches of 100), 10 of them warm-up and
# one 3-step pair period. tests/test_pipeline_cli.py asserts on its stages and tables,
# tests/test_report_cli.py reports it (with a second seed).
DIGITS_PIPELINE_FLAGS = ("--phase=pipeline", "--epochs=2", "--harden_epochs=1",
                         "--harden_batch_size=100", "--trigger_samples=8", "--warmup_steps=60",
                         "--pair_steps=30", "--fast_steps=10", "--seeds=1", "--distance_steps=20",
                         "--distance_samples=10")


def define_flags_once():
  # define_flags() may run only once per process (absl raises DuplicateFlagError otherwise).
  if "distance_steps" not in FLAGS:
    cli_flags.define_flags()


def run_cli(*args):
  """Runs `python -m moth_tf.main ARGS` in-process (flags restored afterwards)."""
  define_flags_once()
  with flagsaver.flagsaver():
    FLAGS(["prog", *args])
    main_lib.main(["prog"])


def parsed_config(*args):
  """The RunConfig that `main` would build from ARGS (nothing is run)."""
  define_flags_once()
  with flagsaver.flagsaver():
    FLAGS(["prog", *args])
    return main_lib.config_from_flags(FLAGS)


def event_files(directory):
  return glob.glob(os.path.join(directory, "**", "events.out.tfevents.*"), recursive=True)


def trained_workdir(tmp_path_factory, epochs: int, *more_runs):
  """A fresh workdir with a digits LeNet trained for `epochs` epochs by --phase=train, then each
  of `more_runs` (tuples of extra flags) run in it; their output is swallowed."""
  import contextlib
  import io
  work = str(tmp_path_factory.mktemp("work"))
  with contextlib.redirect_stdout(io.StringIO()):
    run_cli("--phase=train", f"--epochs={epochs}", f"--workdir={work}")
    for run_flags in more_runs:
      run_cli(*run_flags, f"--workdir={work}")
  return work


def copied_workdir(source, tmp_path_factory, name="work"):
  """A fresh copy of the shared workdir `source` (to write into without touching it)."""
  copy = os.path.join(str(tmp_path_factory.mktemp(name)), os.path.basename(source))
  shutil.copytree(source, copy)
  return copy
