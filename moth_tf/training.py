"""Natural (base) training of a classifier with `model.fit`."""

import os
import time

import keras
import numpy as np

from moth_tf import config as config_lib

from moth_tf import recipes
from moth_tf import data as data_lib
from moth_tf.data import stream as stream_lib
from moth_tf import distribute
from moth_tf import evaluation
from moth_tf import models
from moth_tf import rundir
from moth_tf.models import io as model_io
from moth_tf.models import precision as precision_lib

# The base training recipes per data set live in moth_tf.config (TRAIN_RECIPES), which imports no
# TensorFlow, so that the command line's help can state them.
RECIPES = recipes.TRAIN_RECIPES
OWN_DATA_RECIPE = recipes.OWN_DATA_TRAIN_RECIPE


def recipe(dataset: str) -> config_lib.TrainConfig:
  """The base training recipe of a data set: its RECIPES entry, OWN_DATA_RECIPE for own data."""
  if dataset in RECIPES:
    return RECIPES[dataset]
  if data_lib.is_own(dataset):
    return OWN_DATA_RECIPE
  raise ValueError(f"unknown dataset {dataset!r}; use one of {data_lib.choices_text()}")


# The resumable backup of an unfinished training run (Keras deletes it when the fit completes).
BACKUP_DIR = "backup"


class NonFiniteTrainingError(RuntimeError):
  """Training or hardening diverged (a NaN or infinite loss or weight); no model was saved."""


def check_finite_training(history, model, what: str, learning_rate_flag: str, learning_rate):
  """Raises NonFiniteTrainingError unless `history`'s losses and `model`'s weights are all finite.

  Called after `fit` and before anything is saved: a diverged model must never be written as the
  run's model (TerminateOnNaN only stops the fit; the caller would still save its weights).

  Args:
    history: what `fit` returned.
    model: the trained classifier.
    what: "training" or "hardening", for the message.
    learning_rate_flag: the flag that sets this learning rate, for the message.
    learning_rate: its value.
  """
  hint = (f"no model was saved; lower the learning rate ({learning_rate_flag}, now "
          f"{learning_rate:g}) or check the data for extreme values")
  for key, name in (("loss", "loss"), ("val_loss", "validation loss")):
    values = history.history.get(key, [])
    for epoch, value in enumerate(values, start=1):
      if not np.isfinite(value):
        raise NonFiniteTrainingError(f"{what} diverged: the {name} became {float(value)} in epoch "
                                     f"{epoch}; {hint}")
  bad_weight = nonfinite_weight(model)
  if bad_weight:
    raise NonFiniteTrainingError(f"{what} diverged: the weight {bad_weight} holds NaN or infinite "
                                 f"values; {hint}")


def nonfinite_weight(model):
  """The path of the first of `model`'s weights holding a NaN or infinite value, else None."""
  for weight in model.weights:
    if not np.all(np.isfinite(keras.ops.convert_to_numpy(weight))):
      return weight.path
  return None


class _FiniteCheckpoint(keras.callbacks.ModelCheckpoint):
  """ModelCheckpoint that skips an epoch that ended diverged: a NaN model is no checkpoint (the
  last finite epoch's file stays). The loss can still be finite when the last step's update
  overflowed the weights, so both are checked."""

  def on_epoch_end(self, epoch, logs=None):
    if logs and "loss" in logs and not np.isfinite(logs["loss"]):
      return
    if nonfinite_weight(self.model):
      return
    super().on_epoch_end(epoch, logs)


def make_optimizer(recipe: config_lib.TrainConfig, steps_per_epoch: int):
  """The recipe's optimizer, with its learning-rate schedule."""
  lr = recipe.learning_rate
  if recipe.schedule == "cosine":
    lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=recipe.epochs * steps_per_epoch)
  if recipe.optimizer == "sgd":
    return keras.optimizers.SGD(lr, momentum=recipe.momentum, nesterov=True)
  return keras.optimizers.Adam(lr)


def warn_if_jit_refused(model, jit_compile: bool, what: str):
  """Says so (a WARNING line) when XLA was asked for `model`'s training step and Keras turned it
  off (a layer without XLA support, op determinism on, run_eagerly): never a silent fallback."""
  if jit_compile and not model.jit_compile:
    from moth_tf import progress
    progress.warn(f"--jit_compile: Keras cannot compile the {what} step with XLA for this model "
                  "(a layer that does not support it, or op determinism on); it runs without XLA")


def train_natural(model_name: str, splits: data_lib.DatasetSplits,
                  recipe: config_lib.TrainConfig, run_dir: str, strategy, seed: int = 0,
                  verbose: int = 1, precision: str = "float32", jit_compile: bool = False):
  """Trains `model_name` from scratch on `splits` and saves it into `run_dir`.

  Uses `model.fit` with TensorBoard logs (`logs/train`), a per-epoch checkpoint and
  BackupAndRestore, so an interrupted run continues from its last epoch.

  Args:
    model_name: a name in moth_tf.models.MODELS.
    splits: the data set's splits (train to fit, validation each epoch, test at the end); a
      streaming one trains from its `train_stream` (shuffled through a bounded buffer) for
      ceil(num_train / batch_size) steps per epoch.
    recipe: epochs, batch size, optimiser and learning rate.
    run_dir: where the model, logs, checkpoint and backup go.
    strategy: the tf.distribute strategy to build and train under.
    seed: the random seed of initialisation, shuffling and augmentation.
    verbose: Keras's `verbose` of the fit: 0 silent, 1 live progress bar (for a terminal), 2 one
      line per epoch (for logs: a bar's carriage returns make each epoch one unreadable line).
    precision: the Keras dtype policy the model is built under (moth_tf.config.PRECISIONS);
      mixed_float16 gets Keras's LossScaleOptimizer from compile. The saved model is a float32
      copy (moth_tf.models.io.save_model).
    jit_compile: compile the training step with XLA.

  Returns:
    (model, results) where results holds test/val accuracy and wall time.

  Raises:
    NonFiniteTrainingError: the loss or the weights became NaN or infinite; nothing was saved.
  """
  keras.utils.set_random_seed(seed)
  start = time.time()
  num_train = splits.num_train
  if num_train is None:  # A stream of unknown size: counted once, so that epochs have an end.
    num_train = stream_lib.count(splits.train_stream)
  steps_per_epoch = int(np.ceil(num_train / recipe.batch_size))
  with strategy.scope(), precision_lib.policy_scope(precision):
    model = models.build_model(model_name, splits.image_shape, splits.num_classes,
                               normalization=splits.info.normalization)
    model.compile(
        optimizer=make_optimizer(recipe, steps_per_epoch),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"], jit_compile=jit_compile)
  warn_if_jit_refused(model, jit_compile, "training")
  if splits.streaming:
    # Never in memory: shuffled through a bounded buffer, endless, cut into epochs of
    # steps_per_epoch batches.
    train_ds = stream_lib.training_batches(
        splits.train_stream, recipe.batch_size, augment=splits.augmentation, seed=seed,
        shuffle_buffer=stream_lib.shuffle_buffer_size(splits.image_shape, num_train))
  else:
    train_ds = data_lib.make_pipeline(splits.x_train, splits.y_train, recipe.batch_size,
                                      shuffle=True, augment=splits.augmentation, seed=seed)
  val_ds = data_lib.make_pipeline(splits.x_val, splits.y_val, 512)
  os.makedirs(run_dir, exist_ok=True)
  callbacks = [
      keras.callbacks.TerminateOnNaN(),  # No point in running the epochs after a divergence.
      keras.callbacks.TensorBoard(rundir.logs_dir(run_dir, "train"), update_freq="epoch"),
      _FiniteCheckpoint(os.path.join(run_dir, "checkpoints", "last.keras")),
      keras.callbacks.BackupAndRestore(os.path.join(run_dir, BACKUP_DIR)),
  ]
  distribute.prepare_fit(model, strategy, (splits.x_train[:1], splits.y_train[:1]))
  history = model.fit(train_ds, validation_data=val_ds, epochs=recipe.epochs, callbacks=callbacks,
                      steps_per_epoch=steps_per_epoch if splits.streaming else None,
                      verbose=verbose, shuffle=False)  # The pipeline shuffles.
  check_finite_training(history, model, "training", "--learning_rate", recipe.learning_rate)
  train_seconds = time.time() - start
  results = {
      "test_accuracy": evaluation.accuracy(model, splits.x_test, splits.y_test),
      "val_accuracy": evaluation.accuracy(model, splits.x_val, splits.y_val),
      "train_seconds": train_seconds,
      "epochs": recipe.epochs,
      "final_train_loss": float(history.history["loss"][-1]) if history.history else None,
  }
  model_io.save_model(model, run_dir)
  return model, results
