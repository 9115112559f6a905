"""Hardening in your own `compile` and `fit`: the public hardening model.

    hardening = moth_tf.hardening_model(classifier, samples=train_ds)   # MOTH by default
    hardening.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), metrics=["accuracy"])
    hardening.fit(train_ds, epochs=4, steps_per_epoch=500,
                  callbacks=[keras.callbacks.ModelCheckpoint("ckpt.weights.h5",
                                                             save_weights_only=True)])
    classifier.save("hardened.keras")   # a plain Keras model: nothing of moth_tf needed to load it

`hardening_model` wraps a trained logits classifier in the method's `HardeningModel`
(moth_tf.hardening.model): its `train_step` perturbs each batch (MOTH stamps its current pair
triggers on a share of the batch, labels kept) and trains the classifier on it with the caller's
optimizer and loss; its `fit` runs the method's driver (MOTH's trigger generation and pair
scheduler) as a callback in front of the caller's own callbacks. The classifier is trained in
place: it is the hardened model, with its own class and nothing of moth_tf in it.

`moth_tf.harden` and `--phase=harden` build the same model (the method's `wrap`) and fit it with
the recipe's optimizer and budget on the run's data.
"""

import os
from typing import Any, Mapping, Optional, Union

import numpy as np

# The methods that train with one fit of one HardeningModel; the others (nc, nad) run several
# stages of their own and are only available through moth_tf.harden / --phase=harden.
WRAPPABLE = ("moth", "universal", "pairwise", "finetune", "adv_train", "uap")
# The methods that generate triggers, and so need trigger images (`samples`).
NEEDS_SAMPLES = ("moth", "universal", "pairwise")


def _samples(samples, num_classes: int, per_class: int):
  """(images, labels) of `samples`: arrays as given, or a per-class sample of a dataset."""
  import tensorflow as tf
  from moth_tf.data import stream

  if isinstance(samples, tf.data.Dataset):
    return stream.class_sample(stream.examples(samples, "samples"), num_classes, per_class)
  if isinstance(samples, (tuple, list)) and len(samples) == 2:
    x = np.asarray(samples[0], np.float32)
    y = np.asarray(samples[1]).reshape(-1).astype(np.int64)
    if x.ndim != 4 or len(x) != len(y) or not len(x):
      raise ValueError(f"samples: images of shape {x.shape} with {len(y)} labels; give "
                       "[N, H, W, C] images and one integer label each")
    low, high = float(x.min()), float(x.max())
    if not (np.isfinite(low) and np.isfinite(high)) or low < 0.0 or high > 1.0:
      raise ValueError(f"samples: image values span [{low:.4g}, {high:.4g}], outside [0, 1] (or "
                       "not finite); scale them to [0, 1] (e.g. x / 255.0)")
    if y.min() < 0 or y.max() >= num_classes:
      raise ValueError(f"samples: labels span {y.min()}..{y.max()}, outside the classifier's "
                       f"classes 0..{num_classes - 1}")
    return x, y
  raise ValueError("samples must be (images, labels) arrays or a tf.data.Dataset of (image, "
                   f"label), got {type(samples).__name__}")


def _output_count(classifier, sample) -> int:
  try:
    return int(classifier.output_shape[-1])
  except (AttributeError, TypeError, ValueError):
    if sample is None:
      raise ValueError("the classifier has no output shape (a subclassed model?) and no samples "
                       "to call it on; pass num_classes") from None
    return int(classifier(sample[:1]).shape[-1])


def _image_shape(classifier, sample):
  try:
    return tuple(int(v) for v in classifier.input_shape[1:])
  except (AttributeError, TypeError, ValueError):
    if sample is None:
      raise ValueError("the classifier has no input shape (a subclassed model?) and no samples "
                       "to take it from; pass image_shape=(H, W, C)") from None
    return tuple(sample.shape[1:])


def hardening_model(classifier, method: str = "moth", samples=None, *,
                    config: Union[None, Any, Mapping[str, Any]] = None,
                    dataset: Optional[str] = None, start_step: int = 0,
                    start_epoch: Optional[int] = None, log_dir: Optional[str] = None,
                    num_classes: Optional[int] = None, image_shape=None, verbose: int = 1,
                    precision: Optional[str] = None):
  """Wraps a classifier in a Keras model that hardens it in your own `compile` and `fit`.

  Build it inside your strategy's scope if you use one (as you would build any model), then
  `compile` (optimizer, loss and metrics are yours; left out: the recipe's SGD with its
  learning-rate ramp and decay over `config.steps`, sparse cross-entropy on logits, accuracy) and
  `fit` it on your training batches (a finite or endless `tf.data.Dataset`, with `steps_per_epoch`
  for an endless one). Your callbacks run after the method's driver, so ModelCheckpoint and
  BackupAndRestore save the driver's state with the weights, and a resumed fit continues it.

  Args:
    classifier: the trained Keras classifier, outputting logits (a model ending in a softmax:
      use moth_tf.harden, which takes it off and puts it back). It is trained in place. A path of
      a .keras file or SavedModel directory is loaded (moth_tf.models.io.load_model); the file is
      never changed, and the hardened model is the wrapper's `.classifier`.
    method: one of WRAPPABLE: "moth" (default), "universal", "pairwise" (trigger methods),
      "finetune", "adv_train", "uap".
    samples: the trigger methods' trigger images: (images, labels) arrays, or a tf.data.Dataset of
      (image, label) of which the first `config.trigger_pool` images of every class are read
      (moth_tf.data.stream.class_sample). Float images in [0, 1].
    config: a moth_tf.config.HardenConfig, or a dict of its settings to change on the method's
      recipe (e.g. {"portion": 0.3}); the budget settings (steps, batch size, learning rate)
      only shape the default optimizer: your `fit` decides the length.
    dataset: a registered data set's name, for its recipe and PGD budgets (None: your own data).
    start_step: optimizer steps of plain training before the method starts (its warm-up then
      runs at that step): harden during training, not only after.
    start_epoch: or the first epoch that hardens.
    log_dir: a TensorBoard folder for the driver's scalars and images (None: not written).
    num_classes: n, when the classifier has no output shape and no samples are given.
    image_shape: (H, W, C), when the classifier has no input shape and no samples are given.
    verbose: 0 silent, else the driver's progress lines (warm-up, resumes).
    precision: None: the classifier computes in its own dtype policy. "float32",
      "mixed_bfloat16" or "mixed_float16": where the classifier has another policy, a copy
      rebuilt under it (moth_tf.models.precision.with_precision, the same weights) is wrapped and
      trained instead: take the hardened weights from `.classifier`
      (moth_tf.models.precision.float32_copy gives a float32 model of it). A mixed_float16 model's compile adds Keras's loss scaling. XLA is
      `compile(jit_compile=True)` for the step, and config={"jit_compile": True} for the
      trigger engine.

  Returns:
    A moth_tf.hardening.model.HardeningModel (uncompiled); `.classifier` is your classifier.

  Raises:
    ValueError: an unknown or unwrappable method, missing samples, or bad settings (one line).
  """
  import tensorflow as tf
  from moth_tf import data as data_lib
  from moth_tf.hardening import fitting
  from moth_tf.hardening import methods
  from moth_tf.hardening import runner

  import keras
  if isinstance(classifier, (str, os.PathLike)):
    from moth_tf.models import io as model_io
    classifier = model_io.load_model(os.fspath(classifier))  # Trained in place: `.classifier`.
  elif not isinstance(classifier, keras.Model):
    raise ValueError("classifier must be a keras.Model or the path of a .keras file or SavedModel "
                     f"directory, got {type(classifier).__name__}")
  module = methods.get_method(method)
  if method not in WRAPPABLE or not hasattr(module, "wrap"):
    raise ValueError(f"method {method!r} runs several fits of its own and has no hardening model "
                     f"for your fit; use moth_tf.harden(model, data, method={method!r}) (or one "
                     f"of {', '.join(WRAPPABLE)})")
  harden_config = runner.hardening_config("default", dataset or "user", method, config)
  if samples is None and method in NEEDS_SAMPLES:
    raise ValueError(f"method {method!r} generates triggers on training images: pass samples="
                     "(images, labels) or samples=your training tf.data.Dataset")
  n = num_classes
  x, y = (None, None)
  if samples is not None:
    if n is None:
      probe = samples
      if isinstance(samples, tf.data.Dataset):
        from moth_tf.data import stream
        probe = next(iter(stream.examples(samples, "samples").batch(1)))
        probe = (probe[0].numpy(),)
      n = _output_count(classifier, np.asarray(probe[0][:1], np.float32))
    x, y = _samples(samples, n, harden_config.trigger_pool)
  elif n is None:
    n = _output_count(classifier, None)
  if precision is not None:
    from moth_tf.models import precision as precision_lib
    precision_lib.check_precision(precision)
    classifier = precision_lib.with_precision(classifier, precision, x)
  shape = tuple(image_shape) if image_shape else _image_shape(classifier, x)
  info = (data_lib.dataset_info(dataset) if dataset is not None else
          data_lib.DatasetInfo(name="user", num_classes=n, image_shape=shape, class_names=()))
  p = info.train_pgd
  pgd_settings = (p.epsilon, p.steps, p.step_size)
  extra = {}
  if method in NEEDS_SAMPLES:
    extra = {"writer": tf.summary.create_file_writer(log_dir) if log_dir else None,
             "verbose": bool(verbose)}
  model = module.wrap(classifier, n, harden_config, samples=(x, y), pgd_settings=pgd_settings,
                      image_shape=shape, start_step=start_step, start_epoch=start_epoch, **extra)
  model.batchnorm = harden_config.batchnorm
  model.default_optimizer = fitting.recipe_optimizer(
      harden_config, fitting.learning_rate_schedule(harden_config, None))
  return model
