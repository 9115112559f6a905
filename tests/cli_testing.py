"""Helpers for driving `python -m moth_tf.main` in-process from tests.

Flags are parsed with FLAGS([...]) inside `flagsaver.flagsaver()`, which restores every flag (value
and `present`) afterwards.
"""

import glob
import os

from absl import flags
from absl.testing import flagsaver

from moth_tf import cli_flags
from moth_tf import main as main_lib

FLAGS = flags.FLAGS


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
