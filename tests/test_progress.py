"""Tests of moth_tf.progress: the progress setting and the step-counted progress of hardening fits.

The command line's output into a pipe is tested end to end in tests/test_cli.py.
"""

import io
import contextlib

import pytest

from moth_tf import config as config_lib
from moth_tf import progress


class _Stream(io.StringIO):

  def __init__(self, terminal):
    super().__init__()
    self.terminal = terminal

  def isatty(self):
    return self.terminal


def test_auto_is_a_bar_on_a_terminal_and_lines_elsewhere():
  assert config_lib.resolve_progress("auto", True) == "bar"
  assert config_lib.resolve_progress("auto", False) == "epoch"
  assert progress.keras_verbose("auto", _Stream(True)) == 1
  assert progress.keras_verbose("auto", _Stream(False)) == 2
  assert progress.keras_verbose("auto", object()) == 2  # No isatty: not a terminal.
  for name, verbose in (("bar", 1), ("epoch", 2), ("none", 0)):
    assert progress.keras_verbose(name, _Stream(False)) == verbose
    assert progress.keras_verbose(name, _Stream(True)) == verbose


def test_unknown_progress_is_refused():
  with pytest.raises(ValueError, match="progress must be one of auto, bar, epoch, none"):
    progress.keras_verbose("fancy")
  with pytest.raises(ValueError, match="progress must be one of"):
    config_lib.RunConfig(progress="fancy")


def _run(callback, epochs, steps_per_epoch, first_epoch=0, stop_after=None):
  """Drives the callback as Keras's fit would, from `first_epoch` (a resumed run) on."""
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    callback.on_train_begin()
    for epoch in range(first_epoch, epochs):
      callback.on_epoch_begin(epoch)
      for batch in range(steps_per_epoch):
        callback.on_train_batch_end(batch, {"loss": 1.0 / (epoch + 1), "accuracy": 0.5})
      callback.on_epoch_end(epoch, {"loss": 1.0 / (epoch + 1), "accuracy": 0.5,
                                    "val_accuracy": 0.25})
      if stop_after is not None and epoch + 1 == stop_after:
        break
    callback.on_train_end()
  return out.getvalue()


def test_lines_count_steps_and_stay_under_twenty():
  # The digits budget: 2,000 steps as 200 epochs of 10 steps.
  out = _run(progress.StepProgress(200, 10, verbose=2), 200, 10)
  lines = out.splitlines()
  assert len(lines) == 20 and "\r" not in out
  assert lines[0].startswith("hardening step 100/2000 (epoch 10/200) - ")
  assert lines[-1].startswith("hardening step 2000/2000 (epoch 200/200) - ")
  assert "loss: 0.0050" in lines[-1] and "val_accuracy: 0.2500" in lines[-1]
  assert "Epoch" not in out


def test_lines_of_short_runs_and_odd_lengths():
  # Fewer epochs than lines: one line per epoch.
  assert len(_run(progress.StepProgress(3, 50, verbose=2), 3, 50).splitlines()) == 3
  # 45 epochs: every 3rd, and the last.
  lines = _run(progress.StepProgress(45, 2, verbose=2), 45, 2).splitlines()
  assert len(lines) == 15 and lines[-1].startswith("hardening step 90/90 ")


def test_lines_of_a_resumed_run_continue_the_count():
  lines = _run(progress.StepProgress(200, 10, verbose=2, what="NAD student distillation"),
               200, 10, first_epoch=150).splitlines()
  assert len(lines) == 5
  assert lines[0].startswith("NAD student distillation step 1600/2000 (epoch 160/200)")


def test_a_fit_ended_early_still_gets_its_last_line():
  lines = _run(progress.StepProgress(200, 10, verbose=2), 200, 10, stop_after=33).splitlines()
  assert len(lines) == 4
  assert lines[-1].startswith("hardening step 330/2000 (epoch 33/200)")


def test_bar_counts_the_steps_of_the_whole_run():
  out = _run(progress.StepProgress(200, 10, verbose=1), 200, 10)
  assert "2000/2000" in out and "Epoch" not in out
  assert out.endswith("\n")  # The bar's line is closed.
  stopped = _run(progress.StepProgress(200, 10, verbose=1), 200, 10, stop_after=5)
  assert "50/2000" in stopped and stopped.endswith("\n")
