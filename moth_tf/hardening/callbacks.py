"""The Keras callbacks of a hardening fit: what runs around its steps besides the train step.

* `MothCallback` runs a trigger method's driver (moth_tf.hardening.driver) before and after every
  step and saves its state at every epoch end; a StampingModel puts it in its `driver_callbacks`,
  which its `fit` runs in front of the caller's callbacks.
* `StartPerturbing` switches a HardeningModel's perturbation on at its `start_step` or
  `start_epoch` (a delayed start: the first steps train on clean batches).
* `StopAtStep` ends a fit after a number of steps, inside an epoch if need be.
* `RunClock` keeps a run's wall time across restarts in the model's `elapsed_seconds`.
"""

import time

import keras


class MothCallback(keras.callbacks.Callback):
  """Runs the hardener around every training step; must come before BackupAndRestore.

  A StampingModel adds it to its own `driver_callbacks` (`wrap`), so every `fit` of the model runs
  it first. With a delayed start (the model's `start_step` / `start_epoch`) the steps before the
  start train on clean batches and the hardener does nothing; its warm-up runs at the first step
  that stamps.
  """

  def __init__(self, hardener):
    super().__init__()
    self.hardener = hardener
    self._active = False

  def on_train_batch_begin(self, batch, logs=None):
    self._active = perturbing_now(self.hardener.model)
    if self._active:
      self.hardener.before_step()

  def on_train_batch_end(self, batch, logs=None):
    if self._active:
      self.hardener.after_step()

  def on_epoch_end(self, epoch, logs=None):
    if self.hardener.ready:  # Nothing to keep before the first stamping step.
      self.hardener.save_state()
      self.hardener.log_epoch(epoch)


class StartPerturbing(keras.callbacks.Callback):
  """Switches a HardeningModel's perturbation on at its `start_step` or `start_epoch`.

  Runs first among the model's driver callbacks, so a driver that sees `perturbing` set (MOTH's
  trigger generation) starts at the same step as the train step's perturbation.
  """

  def __init__(self):
    super().__init__()
    self._epoch = 0

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch = epoch

  def on_train_batch_begin(self, batch, logs=None):
    model = self.model
    if int(model.perturbing.numpy()):
      return
    if model.start_epoch is not None:
      due = self._epoch >= model.start_epoch
    else:
      due = int(model.optimizer.iterations.numpy()) >= model.start_step
    if due:
      model.perturbing.assign(1)


def perturbing_now(model) -> bool:
  """Whether `model`'s next step perturbs: always, unless its start is delayed and not reached."""
  return not model.delayed_start or bool(int(model.perturbing.numpy()))



class StopAtStep(keras.callbacks.Callback):
  """Ends a fit after its optimizer's `total_steps`-th step, inside an epoch if need be (a budget
  in steps that is no whole number of epochs)."""

  def __init__(self, total_steps: int):
    super().__init__()
    self.total_steps = int(total_steps)

  def on_train_batch_end(self, batch, logs=None):
    if int(self.model.optimizer.iterations.numpy()) >= self.total_steps:
      self.model.stop_training = True


class RunClock(keras.callbacks.Callback):
  """Keeps the run's wall time across restarts in the model's `elapsed_seconds` variable.

  At every epoch end (before BackupAndRestore saves) it stores the earlier processes' seconds plus
  this process's since `start`; the first batch reads back what a resume restored. A killed
  process's unfinished epoch is redone and counted once, like its steps.
  """

  def __init__(self, start: float):
    super().__init__()
    self.start = start
    self.earlier_seconds = 0.0
    self._read = False

  def on_train_batch_begin(self, batch, logs=None):
    if not self._read:  # BackupAndRestore restores in on_train_begin, before the first batch.
      self.earlier_seconds = float(self.model.elapsed_seconds.numpy())
      self._read = True

  def on_epoch_end(self, epoch, logs=None):
    self.model.elapsed_seconds.assign(self.total_seconds())

  def total_seconds(self) -> float:
    return self.earlier_seconds + time.time() - self.start
