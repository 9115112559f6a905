"""`python -m moth_tf.report --logdir=DIR`: compare runs from their TensorBoard logs alone.

Walks DIR for event files (run directories of `python -m moth_tf.main`, possibly copied together
from several machines), reads them with TensorBoard's own API, prints one comparison table per
(data set, model) and draws the figures into --out (default DIR/report). Nothing is re-run.

    python -m moth_tf.report --logdir=saved_models/
    python -m moth_tf.report --logdir=runs/ --baseline=natural --format=csv --out=/tmp/report

Intentionally thin: the flags go to moth_tf.reporting.reader (reading),
moth_tf.reporting.comparison (the table) and moth_tf.reporting.report_figures (the figures).
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if __name__ == "__main__":
  from moth_tf.cli import stderr_filter  # pylint: disable=g-import-not-at-top
  if stderr_filter.wanted(sys.argv, os.environ):
    stderr_filter.install()  # Before TensorBoard's reader loads TensorFlow.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

FLAGS = flags.FLAGS


def define_flags():
  """The report's flags (all optional here; main checks --logdir)."""
  flags.DEFINE_string("logdir", None, "Folder to walk for runs: a --workdir of moth_tf.main, or "
                      "run directories copied together.")
  flags.DEFINE_string("baseline", "natural", "The row the accuracy change and the enlargement "
                      "are measured against (a method, e.g. natural, or a label as printed, e.g. "
                      "'natural from poisoned').")
  flags.DEFINE_enum("format", "markdown", ["markdown", "csv", "json"],
                    "Format of the table printed on stdout (and written to --out as report.md, "
                    "report.csv or report.json).")
  flags.DEFINE_string("out", None, "Folder for the figures and the table file (default: "
                      "LOGDIR/report).")
  flags.DEFINE_bool("figures", True, "Draw the figures (with matplotlib; --nofigures: the table "
                    "alone, faster).")


def _error(message: str):
  print(f"moth_tf.report: error: {message}", file=sys.stderr)
  sys.exit(1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.logdir:
    _error("--logdir is required: the folder holding the runs to compare")
  from moth_tf.reporting import comparison
  from moth_tf import rundir
  from moth_tf.reporting import reader

  start = time.time()
  try:
    runs = reader.read_runs(FLAGS.logdir)
  except FileNotFoundError as e:
    _error(str(e))
  groups = comparison.build_groups(runs, FLAGS.baseline)
  text = comparison.format_groups(groups, FLAGS.format)
  sys.stdout.write(text)
  out_dir = FLAGS.out or os.path.join(FLAGS.logdir, "report")
  written = []
  try:
    table_file = os.path.join(out_dir, "report." + comparison.FORMATS[FLAGS.format][1])
    rundir.write_bytes(table_file, text.encode("utf-8"))
    written.append(table_file)
    if FLAGS.figures:
      from moth_tf.reporting import report_figures  # pylint: disable=g-import-not-at-top
      written += report_figures.write_figures(groups, out_dir)
  except rundir.OutputNotWritableError as e:
    _error(f"{e} (--out)")
  # Stderr, so that stdout stays the table alone (CSV and JSON are read by programs).
  print(f"{len(runs)} run(s) in {len(groups)} group(s) read from {FLAGS.logdir}; wrote "
        f"{len(written)} file(s) to {out_dir} in {time.time() - start:.1f} s:", file=sys.stderr)
  for path in written:
    print(f"  {path}", file=sys.stderr)


def run_main():
  define_flags()
  app.run(main)


if __name__ == "__main__":
  run_main()
