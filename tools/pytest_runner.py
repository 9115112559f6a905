"""Runs one pytest module as a Bazel test: `pytest_runner.py tests/test_x.py` (tools/testing.bzl).

Bazel runs this from the runfiles tree, which holds symlinks to the sources, so nothing may be
written next to them: no bytecode caches (here and in subprocesses the tests start) and no
.pytest_cache. pytest's temporary directories go under $TEST_TMPDIR, which Bazel owns and cleans.
The exit code is pytest's, so "no tests collected" (5) fails the target as it fails CI.
"""

import os
import sys

sys.dont_write_bytecode = True
os.environ["PYTHONDONTWRITEBYTECODE"] = "1"

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


def main(argv):
  if len(argv) < 2:
    sys.exit("usage: pytest_runner.py TEST_FILE [PYTEST_ARGS...]")
  args = [argv[1], "-q", "-p", "no:cacheprovider", *argv[2:]]
  tmp = os.environ.get("TEST_TMPDIR")
  if tmp:
    args.append("--basetemp=" + os.path.join(tmp, "pytest"))
  return pytest.main(args)


if __name__ == "__main__":
  sys.exit(main(sys.argv))
