"""The fit loop shared by every hardening method: optimiser, schedule, data, callbacks, checks.

Each method (moth_tf.hardening.methods) builds a `HardeningModel` subclass and, for the trigger
methods, a host-side driver callback; `fit_hardening` then runs the same `model.fit` for all of
them, so they differ only in what a training step trains on (the comparison table compares like
with like: same optimiser, learning-rate schedule, batches, budget, checkpointing and NaN checks).
"""

import os
import time
from typing import Callable, Optional

import keras
import tensorflow as tf

from moth_tf import config as config_lib
from moth_tf.hardening import callbacks as callbacks_lib


def learning_rate_schedule(config: config_lib.HardenConfig, num_train: int,
                           total_steps: Optional[int] = None, decay: Optional[str] = None):
  """The hardening learning rate: a linear ramp over `lr_warmup_steps`, then constant or cosine.

  Args:
    config: the hardening configuration.
    num_train: training images (sets the run's length when `total_steps` is None).
    total_steps: the run's length in steps, if not the configured budget.
    decay: "constant" or "cosine" instead of `config.lr_decay` (a method whose length is not known
      in advance cannot decay to 0 at its end).
  """
  total_steps = total_steps or config.total_steps_for(num_train)
  decay = decay or config.lr_decay
  warmup = config.lr_ramp_steps_for(num_train, total_steps)
  if not warmup and decay == "constant":
    return config.learning_rate
  return keras.optimizers.schedules.CosineDecay(
      initial_learning_rate=0.0 if warmup else config.learning_rate,
      decay_steps=max(total_steps - warmup, 1),
      alpha=1.0 if decay == "constant" else 0.0,
      warmup_target=config.learning_rate if warmup else None, warmup_steps=warmup)


def build_hardening_model(strategy, make_model: Callable[[], keras.Model],
                          config: config_lib.HardenConfig, num_train: int, sample,
                          learning_rate=None):
  """Builds and compiles a HardeningModel inside the strategy's scope.

  Args:
    strategy: the tf.distribute strategy.
    make_model: returns the (uncompiled) HardeningModel; called inside the scope so every variable
      is distributed.
    config: the hardening configuration (optimiser settings).
    num_train: training images.
    sample: a batch of images to build the model with (before BackupAndRestore restores into it).
    learning_rate: a rate or schedule instead of `learning_rate_schedule(config, num_train)`.
  """
  from moth_tf import progress
  from moth_tf.models import io as model_io

  with strategy.scope():
    model = make_model()
    model.batchnorm = config.batchnorm
    # Said before any step: fine-tuning a SavedModel without a training endpoint silently leaves
    # BatchNorm statistics and dropout in inference mode.
    warning = model_io.inference_mode_warning(model.classifier)
    if warning:
      progress.warn(warning)
    if learning_rate is None:
      learning_rate = learning_rate_schedule(config, num_train)
    model.default_optimizer = recipe_optimizer(config, learning_rate)
    # The recipe's optimizer, sparse cross-entropy on logits, accuracy; a mixed_float16
    # classifier's wrapper takes its policy, so compile wraps the optimizer in a
    # LossScaleOptimizer.
    model.compile(jit_compile=config.jit_compile)
    model(sample)
  from moth_tf import training
  training.warn_if_jit_refused(model, config.jit_compile, "hardening")
  return model


def recipe_optimizer(config: config_lib.HardenConfig, learning_rate):
  """The hardening recipes' optimizer: SGD with Nesterov momentum at `learning_rate` (a rate or a
  schedule, see learning_rate_schedule)."""
  return keras.optimizers.SGD(learning_rate, momentum=config.momentum, nesterov=True)


def resume_epoch(run_dir: str, name: str = "harden") -> int:
  """The epoch a run resumes at: what BackupAndRestore's metadata in `backup_{name}/` says (0 for
  a fresh run)."""
  import json
  path = os.path.join(run_dir, f"backup_{name}", "training_metadata.json")
  if not os.path.exists(path):
    return 0
  try:
    with open(path) as f:
      return int(json.load(f).get("epoch", 0))
  except (OSError, ValueError):
    return 0  # Keras itself decides what to do with a damaged backup.


def training_data(splits, config: config_lib.HardenConfig, run_dir: str, name: str = "harden"):
  """The endless training batches of a hardening fit and their epoch length in steps.

  In-memory splits: the seeded, shuffled pipeline of moth_tf.data.make_pipeline; a resumed run
  continues the uninterrupted run's stream of batches (the seeded shuffle is replayed and the
  batches of the finished epochs skipped; augmentation is seeded by each batch's place in that
  stream, so the resumed batches are augmented as in the uninterrupted run). A stream
  (`splits.train_stream`): its examples as they come, batched (moth_tf.data.stream); a resumed
  run starts the stream again at its beginning.
  """
  from moth_tf import data as data_lib
  from moth_tf.data import stream

  steps_per_epoch = config.steps_per_epoch_for(splits.num_train)
  if splits.streaming:
    buffer = (stream.shuffle_buffer_size(splits.image_shape, splits.num_train)
              if splits.shuffle_stream else 0)
    return stream.training_batches(splits.train_stream, config.batch_size,
                                   augment=splits.augmentation, seed=config.seed,
                                   shuffle_buffer=buffer), steps_per_epoch
  return data_lib.make_pipeline(splits.x_train, splits.y_train, config.batch_size, shuffle=True,
                                augment=splits.augmentation, seed=config.seed, repeat=True,
                                skip_batches=resume_epoch(run_dir, name) * steps_per_epoch
                                ), steps_per_epoch


def fit_hardening(model, splits, config: config_lib.HardenConfig, run_dir: str,
                  epochs: Optional[int] = None, verbose: int = 1, what: str = "hardening",
                  start: Optional[float] = None, name: str = "harden",
                  total_steps: Optional[int] = None):
  """Runs `model.fit` for a hardening method and checks that it did not diverge.

  Args:
    model: a compiled HardeningModel (see build_hardening_model); its own driver callbacks
      (`model.driver_callbacks`, e.g. MOTH's trigger generation) run before the checkpointing
      callback, so that their state is in the model's variables when BackupAndRestore saves them.
    splits: moth_tf.data.DatasetSplits (in memory, or streaming: `splits.train_stream`).
    config: the hardening configuration (batch size, budget, seed).
    run_dir: logs go to `logs/{name}`, the resumable backup to `backup_{name}/` (deleted by Keras
      when the fit completes).
    epochs: the number of epochs (default: the configured budget). A driver may end the fit early
      by setting `model.stop_training`.
    verbose: 0 silent, 1 one live progress bar over the run's steps, 2 plain progress lines (at
      most moth_tf.progress.MAX_LINES for the run); see moth_tf.progress.StepProgress.
    what: the name used in a divergence error.
    start: when this process started the run (default: now); the wall time counts from it.
    name: the fit's name in `run_dir`: logs under `logs/{name}`, the backup in `backup_{name}/`.
      A method that runs several fits (NAD's teacher, then its student) gives each its own name so
      that their logs do not mix and a resume finds each fit's own backup.
    total_steps: stop after this many steps (default: the configured budget when `epochs` is not
      given, else every step of the epochs).

  Returns:
    (history, wall seconds of the whole run: earlier processes' completed epochs and this one).

  Raises:
    NonFiniteTrainingError: the loss or the classifier's weights became NaN or infinite (the
      caller must not save it).
  """
  from moth_tf import data as data_lib
  from moth_tf import distribute
  from moth_tf import progress
  from moth_tf import rundir
  from moth_tf import training

  clock = callbacks_lib.RunClock(start or time.time())
  train_ds, steps_per_epoch = training_data(splits, config, run_dir, name)
  if epochs is None:
    epochs = config.epochs_for(splits.num_train)
    total_steps = total_steps or config.total_steps_for(splits.num_train)
  total_steps = total_steps or epochs * steps_per_epoch
  val_ds = data_lib.make_pipeline(splits.x_val, splits.y_val, 512) if len(splits.x_val) else None
  callbacks = [clock,
      keras.callbacks.TerminateOnNaN(),  # No point in running the epochs after a divergence.
      keras.callbacks.TensorBoard(rundir.logs_dir(run_dir, name)),
      keras.callbacks.BackupAndRestore(os.path.join(run_dir, f"backup_{name}")),
  ]
  if total_steps < epochs * steps_per_epoch:
    callbacks.insert(0, callbacks_lib.StopAtStep(total_steps))
  # Progress is shown by StepProgress, and Keras's own display is off (verbose=0): a hardening
  # epoch is one pass over the training data, on digits 10 steps, so Keras would count 200 epochs
  # (200 lines, or 200 redraws of a bar) for the 2,000-step budget. StepProgress counts the run's
  # steps instead, in one bar or in at most ~20 lines, and only reads the absolute epoch numbers
  # Keras passes, so BackupAndRestore's checkpoints and resumes work exactly as without it.
  if verbose:
    callbacks.append(progress.StepProgress(epochs, steps_per_epoch, verbose=verbose, what=what,
                                           total_steps=total_steps))
  distribute.prepare_fit(model, model.distribute_strategy, (splits.x_train[:1], splits.y_train[:1]))
  history = model.fit(train_ds, epochs=epochs, steps_per_epoch=steps_per_epoch,
                      validation_data=val_ds, callbacks=callbacks, verbose=0,
                      shuffle=False)  # The pipeline shuffles.
  training.check_finite_training(history, model.classifier, what, "--harden_learning_rate",
                                 config.learning_rate)
  if model.batchnorm_rule == "recalibrate":
    recalibrate_batchnorm(model.classifier, splits.x_train, seed=config.seed)
  return history, clock.total_seconds()


def recalibrate_batchnorm(classifier, x, batch_size: int = 256, batches: int = 50, seed: int = 0):
  """Re-estimates every BatchNorm layer's moving mean and variance from clean images.

  Runs `batches` seeded random batches of `x` through the classifier in training mode with each
  layer's momentum set so that its moving statistics become the plain average of the batches'
  statistics (the k-th batch weighs 1/k), then restores the momenta. Nothing else changes: no
  gradient is taken.

  Args:
    classifier: the Keras model (its variables may be distributed).
    x: clean images, e.g. the un-augmented training images.
    batch_size: images per batch.
    batches: batches averaged (fewer if `x` holds fewer images).
    seed: which images are drawn.

  Returns:
    The number of batches run (0 when the model has no BatchNorm layer).
  """
  import numpy as np

  from moth_tf.hardening import model as model_lib

  layers = model_lib.batchnorm_layers(classifier)
  count = min(batches, -(-len(x) // batch_size))
  if not layers or not count:
    return 0
  order = np.random.default_rng(seed).permutation(len(x))
  momenta = [layer.momentum for layer in layers]
  try:
    for k in range(count):
      for layer in layers:
        # Keras: moving = moving * momentum + batch * (1 - momentum); k / (k + 1) averages.
        layer.momentum = k / (k + 1)
      classifier(x[order[k * batch_size:(k + 1) * batch_size]], training=True)
  finally:
    for layer, momentum in zip(layers, momenta):
      layer.momentum = momentum
  return count


def common_results(history, wall_seconds: float, steps: int, config: config_lib.HardenConfig,
                   num_train: int, epochs: Optional[int] = None, **extra) -> dict:
  """The results every method reports (summary.json's `harden` entry), plus `extra`."""
  accuracy = history.history.get("accuracy")
  results = {
      "wall_seconds": wall_seconds,
      "steps": int(steps),
      "steps_per_epoch": config.steps_per_epoch_for(num_train),
      "epochs": epochs or config.epochs_for(num_train),
      "generation_seconds": 0.0,
      "warmup_seconds": 0.0,
      "final_train_accuracy": float(accuracy[-1]) if accuracy else None,
      "config": config_lib.flat_dict(config),
  }
  results.update(extra)
  results["training_seconds"] = (results["wall_seconds"] - results["generation_seconds"]
                                 - results["warmup_seconds"])
  return results


def describe_schedule(config: config_lib.HardenConfig, num_train: int) -> str:
  """The budget and optimiser part of a method's start line."""
  ramp = config.lr_ramp_steps_for(num_train)
  schedule = (f" (ramp {ramp} steps)" if ramp > 0 else "") + (
      ", cosine decay" if config.lr_decay == "cosine" else "")
  total, epochs = config.total_steps_for(num_train), config.epochs_for(num_train)
  per_epoch = config.steps_per_epoch_for(num_train)
  partial = " (the last cut short)" if total < epochs * per_epoch else ""
  return (f"{total} steps of batch {config.batch_size} ({epochs} epoch(s) of {per_epoch} steps"
          f"{partial}), SGD lr {config.learning_rate}{schedule}")


def run_plain_method(make_model: Callable[[], keras.Model], splits,
                     config: config_lib.HardenConfig, run_dir: str, strategy=None,
                     verbose: int = 1, **extra_results):
  """Hardens with a HardeningModel whose train_step needs no host-side driver (finetune,
  adv_train, uap): builds it under the strategy, fits the configured budget, returns
  (classifier, results)."""
  strategy = strategy or tf.distribute.get_strategy()
  keras.utils.set_random_seed(config.seed)
  start = time.time()
  num_train = splits.num_train
  model = build_hardening_model(strategy, make_model, config, num_train, splits.x_train[:1])
  history, wall = fit_hardening(model, splits, config, run_dir, verbose=verbose, start=start)
  steps = int(model.optimizer.iterations.numpy())
  results = common_results(history, wall, steps, config, num_train, **extra_results)
  return model, results
