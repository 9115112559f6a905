"""`python -m moth_tf.report` on the logs of tiny real runs of the command line (digits, LeNet).

The runs go through `moth_tf.main` in-process (tests/cli_testing.py); the report runs as its own
process, as a user runs it, on the copied-together logs of two workdirs (two seeds).
"""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from moth_tf.reporting import comparison

from cli_testing import DIGITS_PIPELINE_FLAGS  # pylint: disable=g-bad-import-order
from cli_testing import run_cli

_TINY = ("--epochs=2", "--harden_epochs=1", "--harden_batch_size=100", "--trigger_samples=8",
         "--warmup_steps=60", "--pair_steps=30", "--fast_steps=10", "--seeds=1",
         "--distance_steps=20", "--distance_samples=10")
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _quiet(*args):
  with contextlib.redirect_stdout(io.StringIO()):
    run_cli(*args)


def _read_json(path):
  with open(path) as f:
    return json.load(f)


def _report(*args):
  env = dict(os.environ, PYTHONPATH=_REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, "-m", "moth_tf.report", *args], capture_output=True,
                        text=True, env=env, check=False, timeout=600)


def test_the_shared_pipeline_run_has_these_flags():
  assert DIGITS_PIPELINE_FLAGS == ("--phase=pipeline", *_TINY)


@pytest.fixture(scope="module")
def logdir(tmp_path_factory, digits_pipeline):
  """Two workdirs (seeds 0 and 1), each a pipeline run (natural + moth, distances) plus the
  robustness of its MOTH model.

  Seed 0's pipeline run is the session's `digits_pipeline` (tests/conftest.py: the same flags,
  also asserted on by tests/test_pipeline_cli.py), copied here before its robustness is measured.
  """
  root = str(tmp_path_factory.mktemp("runs"))
  for seed in (0, 1):
    workdir = os.path.join(root, f"seed{seed}")
    if seed == 0:
      shutil.copytree(digits_pipeline[0], workdir)
    else:
      _quiet("--phase=pipeline", *_TINY, f"--seed={seed}", f"--workdir={workdir}")
    _quiet("--phase=robustness", "--method=moth", f"--workdir={workdir}")
  return root


def test_report_prints_what_the_runs_recorded(logdir, tmp_path):
  out_dir = str(tmp_path / "report")
  result = _report(f"--logdir={logdir}", "--format=json", f"--out={out_dir}")
  assert result.returncode == 0, result.stderr[-3000:]
  rows = {r["method"]: r for r in comparison.rows_from_json(result.stdout)}
  assert set(rows) == {"natural", "moth"}
  summaries = {m: [_read_json(os.path.join(logdir, f"seed{s}", f"digits_lenet_{m}",
                                           "summary.json")) for s in (0, 1)]
               for m in ("natural", "moth")}
  for method, row in rows.items():
    assert row["runs"] == 2 and row["seeds"] == "0 1"
    accuracy = [s["test_accuracy"] for s in summaries[method]]
    assert row["test_accuracy"] == pytest.approx(np.mean(accuracy), rel=1e-6)
    assert row["test_accuracy_std"] == pytest.approx(np.std(accuracy, ddof=1), rel=1e-4, abs=1e-7)
    distances = [s["distance"]["mean"] for s in summaries[method]]
    assert row["mean_distance"] == pytest.approx(np.mean(distances), rel=1e-6)
  moth = rows["moth"]
  assert moth["robust_accuracy"] == pytest.approx(
      np.mean([s["robustness"]["accuracy"] for s in summaries["moth"]]), rel=1e-6)
  assert moth["wall_seconds"] == pytest.approx(
      np.mean([s["harden"]["wall_seconds"] for s in summaries["moth"]]), rel=1e-5)
  assert moth["steps"] == summaries["moth"][0]["harden"]["steps"]
  # One seed each: the enlargement against the mean of the two natural matrices.
  naturals = [np.array(_read_json(os.path.join(logdir, f"seed{s}", "digits_lenet_natural",
                                               "distance.json"))["matrix"], float)
              for s in (0, 1)]
  assert np.isfinite(moth["enlargement_mean_relative"])
  assert moth["notes"] == "" and rows["natural"]["notes"] == ""
  names = sorted(os.listdir(out_dir))
  for figure in ("distance_heatmaps", "distance_change", "training_curves", "trigger_sizes",
                 "pair_counts"):
    assert f"digits_lenet_{figure}.png" in names
  assert "report.json" in names
  assert naturals[0].shape == (10, 10)


def test_report_formats_agree(logdir, tmp_path):
  markdown = _report(f"--logdir={logdir}", f"--out={tmp_path}", "--nofigures")
  csv_text = _report(f"--logdir={logdir}", "--format=csv", f"--out={tmp_path}", "--nofigures")
  assert markdown.returncode == 0 and csv_text.returncode == 0, markdown.stderr[-2000:]
  assert "## digits / lenet: 4 run(s), baseline natural" in markdown.stdout
  assert "| natural | 2 |" in markdown.stdout and "| moth | 2 |" in markdown.stdout
  rows = comparison.rows_from_csv(csv_text.stdout)
  assert [r["method"] for r in rows] == ["natural", "moth"]
  assert f"{rows[1]['test_accuracy']:.4f} ± " in markdown.stdout
  assert os.path.exists(tmp_path / "report.md") and os.path.exists(tmp_path / "report.csv")


def test_killed_run_and_truncated_file_are_reported(logdir, tmp_path):
  copy = str(tmp_path / "copy")
  shutil.copytree(os.path.join(logdir, "seed0"), copy)
  # A hardening that was killed: its phase started (metadata) but wrote no final metrics.
  _quiet("--phase=harden", "--method=finetune", *_TINY, f"--workdir={copy}")
  harden_logs = os.path.join(copy, "digits_lenet_finetune", "logs", "harden")
  for name in os.listdir(harden_logs):
    path = os.path.join(harden_logs, name)
    if os.path.isfile(path):
      with open(path, "rb+") as f:
        f.truncate(os.path.getsize(path) - 5)  # Its last record (the final metrics) cut short.
  result = _report(f"--logdir={copy}", f"--out={tmp_path / 'out'}", "--nofigures")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "| finetune (!) | 1 |" in result.stdout
  assert "truncated or corrupt event file" in result.stdout


def test_distance_heatmap_png_is_the_labelled_figure(logdir):
  with open(os.path.join(logdir, "seed0", "digits_lenet_moth", "distance_heatmap.png"), "rb") as f:
    png = f.read()
  assert png.startswith(b"\x89PNG") and b"matplotlib" in png[:200]  # Its Software text chunk.


def test_no_runs_is_one_line_and_exit_1(tmp_path):
  result = _report(f"--logdir={tmp_path}")
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
      f"moth_tf.report: error: no TensorBoard event files under {tmp_path}: nothing to report "
      "(point --logdir at a --workdir of python -m moth_tf.main, or at a folder of copied run "
      "directories)"]


def test_help_imports_neither_tensorflow_nor_matplotlib():
  code = ("import sys; import moth_tf.reporting.report as r; r.define_flags(); "
          "print('tensorflow' in sys.modules, 'matplotlib' in sys.modules)")
  env = dict(os.environ, PYTHONPATH=_REPO)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       check=True).stdout
  assert out.strip() == "False False"
  help_text = _report("--help")
  assert "--logdir" in help_text.stdout  # absl ends --help with exit code 1, as for moth_tf.main.
