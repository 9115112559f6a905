"""What the library tells the user while it works: fits' progress (a live bar on a terminal, a few
plain lines in a log) and the warnings a run must not pass silently.

The run setting `progress` (the command line's --progress) is one of moth_tf.config.PROGRESS:

  * bar: Keras's live progress bar (it redraws its line with carriage returns);
  * epoch: plain lines, one per epoch of base training and at most ~20 per hardening run;
  * none: no progress output (the start and result lines are still printed);
  * auto: bar when stdout is a terminal, epoch lines otherwise.

Library functions take the Keras-style verbosity that `keras_verbose` makes of it (0 none, 1 bar,
2 lines) as their `verbose` argument.
"""

import math
import sys
import time
from typing import Optional

import keras

from moth_tf import config as config_lib

# Plain-line mode prints at most about this many progress lines for one hardening fit.
MAX_LINES = 20


def warn(text: str):
  """A warning the user must see: one line "WARNING: ..." on stderr, before the work it is about.

  Not `warnings.warn`: Python's filters show a warning once per place and may hide it, while these
  say that a run is degraded (its summary.json records the same text).
  """
  print(f"WARNING: {text}", file=sys.stderr, flush=True)


def keras_verbose(progress: str, stream=None) -> int:
  """The Keras `verbose` value of a progress setting: none 0, bar 1, epoch 2.

  Args:
    progress: one of moth_tf.config.PROGRESS ("auto" is resolved against `stream`).
    stream: the output stream "auto" looks at (default sys.stdout).
  """
  if progress not in config_lib.PROGRESS:
    raise ValueError(f"progress must be one of {', '.join(config_lib.PROGRESS)}, got {progress!r}")
  resolved = config_lib.resolve_progress(progress, _is_terminal(stream or sys.stdout))
  return {"none": 0, "bar": 1, "epoch": 2}[resolved]


def _is_terminal(stream) -> bool:
  try:
    return bool(stream.isatty())
  except (AttributeError, ValueError):  # No isatty, or a closed stream.
    return False


class StepProgress(keras.callbacks.Callback):
  """Reports a fit's progress in steps of the whole run rather than in Keras epochs.

  A hardening budget is counted in steps, and its fit's epochs are single passes over the training
  data: on digits that is 10 steps, so Keras's own display would print 200 epochs ("Epoch 200/200")
  for a 2,000-step run. This callback replaces it (the fit runs with verbose=0):

    * verbose 1: one Keras progress bar over all steps of the run ("1200/2000");
    * verbose 2: a line "hardening step 1200/2000 (epoch 120/200) - 35s - loss: ... - accuracy:
      ..." at the end of every `max(1, ceil(epochs / max_lines))`-th epoch and at the last one,
      so a run prints at most `max_lines` lines, and none holds a carriage return.

  It only reads the epoch numbers Keras passes, which are absolute: a run that BackupAndRestore
  resumes continues the count where the interrupted one stopped, and checkpointing is untouched.
  """

  def __init__(self, epochs: int, steps_per_epoch: int, verbose: int = 2,
               what: str = "hardening", max_lines: int = MAX_LINES,
               total_steps: Optional[int] = None):
    super().__init__()
    if verbose not in (1, 2):
      raise ValueError(f"StepProgress shows a bar (verbose=1) or lines (verbose=2), got {verbose}")
    self.epochs = int(epochs)
    self.steps_per_epoch = int(steps_per_epoch)
    # A budget in steps may end inside the last epoch.
    self.total_steps = int(total_steps or self.epochs * self.steps_per_epoch)
    self.verbose = verbose
    self.what = what
    self.every = max(1, math.ceil(self.epochs / max(1, max_lines)))
    self._bar = None
    self._epoch = 0
    self._start = time.time()
    self._last_shown = None  # The last epoch printed (lines), or "final" once the bar is closed.
    self._last_logs = {}

  def on_train_begin(self, logs=None):
    self._start = time.time()

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch = epoch
    if self.verbose == 1 and self._bar is None:
      self._bar = keras.utils.Progbar(self.total_steps, unit_name="step", stateless_metrics=())
      if epoch:
        self._bar.update(epoch * self.steps_per_epoch, finalize=False)

  def on_train_batch_end(self, batch, logs=None):
    if self._bar is not None:
      step = min(self._epoch * self.steps_per_epoch + batch + 1, self.total_steps)
      self._bar.update(step, values=_numbers(logs), finalize=False)

  def on_epoch_end(self, epoch, logs=None):
    self._last_logs = dict(logs or {})
    done = epoch + 1
    if self._bar is not None:
      self._update_bar(done, finalize=done >= self.epochs)
    elif done % self.every == 0 or done >= self.epochs:
      self._print_line(done)

  def on_train_end(self, logs=None):
    # A driver that ends the fit early (model.stop_training) still gets its closing line, and the
    # bar its line break.
    done = self._epoch + 1
    if self._bar is not None:
      if self._last_shown != "final":
        self._update_bar(done, finalize=True)
    elif self._last_logs and self._last_shown != done:
      self._print_line(done)

  def _steps(self, done_epochs):
    return min(done_epochs * self.steps_per_epoch, self.total_steps)

  def _update_bar(self, done, finalize):
    self._bar.update(self._steps(done), values=_numbers(self._last_logs),
                     finalize=finalize)
    if finalize:
      self._last_shown = "final"

  def _print_line(self, done):
    self._last_shown = done
    metrics = "".join(f" - {name}: {_format(value)}" for name, value in _numbers(self._last_logs))
    print(f"{self.what} step {self._steps(done)}/{self.total_steps} (epoch "
          f"{done}/{self.epochs}) - {time.time() - self._start:.0f}s{metrics}", flush=True)


def _numbers(logs):
  """The scalar entries of Keras logs as (name, float) pairs."""
  out = []
  for name, value in (logs or {}).items():
    try:
      out.append((name, float(value)))
    except (TypeError, ValueError):
      continue  # Not a scalar (a method may log arrays); the bar and lines show numbers only.
  return out


def _format(value):
  return f"{value:.4f}" if abs(value) > 1e-3 or value == 0 else f"{value:.4e}"
