"""`--method=moth`: MOTH (Tao et al., S&P 2022), the method's entry points.

`wrap` makes the hardening model (a StampingModel whose `fit` runs MOTH's driver, the callback of
moth_tf.hardening.callbacks around moth_tf.hardening.driver.MothHardener); `harden` fits it with
the recipe (the command line's `--phase=harden`, `moth_tf.harden`); `describe` is the line said
before a run. What the driver does, and where it departs from the authors' code: the docstring
of moth_tf.hardening.driver.
"""

import time
from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf

from moth_tf import config as config_lib
from moth_tf.hardening import callbacks
from moth_tf.hardening import driver
from moth_tf.hardening import fitting


def check_model(classifier, config: config_lib.HardenConfig):
  """Raises pairs_per_period's one-line ValueError before the run writes anything (a model
  without an output shape, a subclassed one, is checked when the hardening model is built)."""
  try:
    classes = int(classifier.output_shape[-1])
  except (AttributeError, TypeError, ValueError):
    return
  driver.pairs_per_period(config, classes)



def wrap(classifier, num_classes: int, config: config_lib.HardenConfig, samples,
         pgd_settings=None, hardener_class=None, hardener_kwargs=None,
         writer: Optional[tf.summary.SummaryWriter] = None, verbose: bool = True,
         **model_kwargs):
  """A StampingModel around `classifier` whose `fit` runs MOTH's driver (MothCallback) first.

  Args:
    classifier: the logits model (trained in place).
    num_classes: n.
    config: the HardenConfig (the stamping shares, the driver's settings).
    samples: (images, labels) arrays the triggers are generated on: the training images, or a
      bounded sample of them per class (moth_tf.data.stream.class_sample).
    pgd_settings: (epsilon, steps, step_size) of mode "adv".
    hardener_class: the host-side driver (default MothHardener; Universal passes its own).
    hardener_kwargs: its extra constructor arguments (Pairwise's scheduler).
    writer: TensorBoard writer for the driver's scalars and images (None: none written).
    verbose: the driver's progress lines.
    **model_kwargs: image_shape, start_step, start_epoch (moth_tf.hardening.model.HardeningModel).

  Returns:
    The StampingModel, uncompiled; its driver is `model.hardener`.
  """
  from moth_tf.hardening import model as model_lib

  model = model_lib.StampingModel(
      classifier, num_classes, portion=config.moth.portion, warm_ratio=config.moth.warm_ratio,
      replay=config.moth.replay, families=config.moth.families, pairs=config.pairs_for(num_classes),
      adversarial=config.moth.mode == "adv", pgd_settings=pgd_settings or (0.03, 8, 0.005),
      batchnorm=config.batchnorm, **model_kwargs)
  x, y = samples
  missing = [c for c in range(num_classes) if not np.any(np.asarray(y) == c)]
  if missing:
    raise ValueError(f"the trigger images hold no image of class(es) "
                     f"{', '.join(map(str, missing[:10]))}; every class needs some (a stream's "
                     "first images fill the sample: shuffle it, or raise trigger_pool)")
  hardener = (hardener_class or driver.MothHardener)(
      model, x, y, config, writer=writer, verbose=verbose, **(hardener_kwargs or {}))
  model.hardener = hardener
  model.driver_callbacks.append(callbacks.MothCallback(hardener))
  return model


def harden(classifier_factory: Callable[[], keras.Model], splits,
           config: config_lib.HardenConfig, run_dir: str,
           strategy=None, verbose: int = 1, pgd_settings=None,
           hardener_class=None, hardener_kwargs=None, epochs: Optional[int] = None,
           lr_decay: Optional[str] = None, log_name: str = "harden_moth"):
  """Hardens a classifier with MOTH (or a trigger baseline's driver) and returns it with results.

  The model is `wrap`'s, the one users `compile` and `fit` themselves
  (moth_tf.hardening.wrapper.hardening_model), fitted with the recipe's optimizer and budget.

  Args:
    classifier_factory: returns a fresh copy of the classifier to harden; it is called inside the
      strategy scope so its variables are distributed. The original model is never modified.
    splits: moth_tf.data.DatasetSplits (in memory, or streaming: triggers are generated on its
      per-class sample `x_train`).
    config: config_lib.HardenConfig.
    run_dir: where TensorBoard logs (`logs/harden`, `logs/<log_name>`) and the resumable backup
      (`backup_harden/`) go.
    strategy: tf.distribute strategy (default: the current one).
    verbose: progress output: 0 none, 1 a live bar, 2 plain lines (moth_tf.progress).
    pgd_settings: (epsilon, steps, step_size) for mode "adv".
    hardener_class: the host-side driver (default MothHardener; the Universal and Pairwise
      baselines pass their own).
    hardener_kwargs: extra constructor arguments of the driver (a scheduler, say).
    epochs: epochs of the fit, if not the configured budget (an upper bound for a driver that
      ends the fit itself).
    lr_decay: the learning-rate decay, if not the configured one.
    log_name: the driver's TensorBoard log folder under `logs/`.

  Returns:
    (classifier, results) where results holds wall time, the time spent generating triggers vs
    training, trigger-generation counters and the scheduler's pair counts.

  Raises:
    NonFiniteTrainingError: the loss or the classifier's weights became NaN or infinite (the
      caller must not save it).
  """
  from moth_tf import rundir

  strategy = strategy or tf.distribute.get_strategy()
  keras.utils.set_random_seed(config.seed)
  num_train = splits.num_train
  steps_per_epoch = config.steps_per_epoch_for(num_train)
  total_steps = epochs * steps_per_epoch if epochs else config.total_steps_for(num_train)
  start = time.time()
  writer = tf.summary.create_file_writer(rundir.logs_dir(run_dir, log_name))

  def make_model():
    return wrap(classifier_factory(), splits.num_classes, config, (splits.x_train, splits.y_train),
                pgd_settings=pgd_settings, hardener_class=hardener_class,
                hardener_kwargs=hardener_kwargs, writer=writer, verbose=bool(verbose),
                image_shape=splits.image_shape)

  stamping = fitting.build_hardening_model(
      strategy, make_model, config, num_train, splits.x_train[:1],
      learning_rate=fitting.learning_rate_schedule(config, num_train, total_steps, lr_decay))
  hardener = stamping.hardener
  history, wall = fitting.fit_hardening(stamping, splits, config, run_dir, epochs=epochs,
                                        verbose=verbose, start=start)
  writer.flush()
  results = fitting.common_results(
      history, wall, hardener.step, config, num_train,
      epochs=-(-hardener.step // steps_per_epoch),
      warmup_seconds=hardener.warmup_seconds, generation_seconds=hardener.generation_seconds,
      events=dict(hardener.events), **hardener.extra_results())
  return stamping.classifier, results


def describe(config: config_lib.HardenConfig, num_train: int, pgd_settings=None) -> str:
  """One line saying what a MOTH run will do (printed before it starts)."""
  h = config.moth
  adv = (f", PGD eps {pgd_settings[0]:g} first ({h.mode} mode)" if h.mode == "adv" and pgd_settings
         else "")
  pairs = (h.pairs_per_period if h.pairs_per_period is not None
           else f"up to {config_lib.AUTO_PAIRS_PER_PERIOD}")
  generations = ("a generation every step" if h.generations_per_period is None
                 else f"{h.generations_per_period} generation(s) per period")
  ablations = [text for text, on in (
      ("one-sided generation", h.generation == "one_sided"),
      (f"{h.schedule} pair schedule", h.schedule != "karm"),
      ("no trigger reuse (every generation from a random trigger)", not h.trigger_reuse)) if on]
  return (f"{fitting.describe_schedule(config, num_train)}, {pairs} class pair(s) per period with "
          f"{generations}, {100 * h.portion:g}% of each pair class "
          f"stamped, replay {h.replay:.0%}, {h.families} trigger famil"
          f"{'y' if h.families == 1 else 'ies'} per direction{adv}"
          f"{''.join('; ablation: ' + a for a in ablations)}")
