"""`python -m moth_tf.cli` is the same as `python -m moth_tf.main`."""

import os
import sys

from moth_tf.cli import stderr_filter

if __name__ == "__main__" and stderr_filter.wanted(sys.argv, os.environ):
  stderr_filter.install()  # Before moth_tf.cli.main's imports load TensorFlow.

from moth_tf.cli import main  # pylint: disable=g-import-not-at-top

if __name__ == "__main__":
  main.run_main()
