"""The Python API: moth_tf on a Keras model and arrays in memory, with no run directory.

    import moth_tf
    hardened, results = moth_tf.harden(model, (x_train, y_train), test=(x_test, y_test))
    before = moth_tf.class_distance(model, x_test, y_test)
    after = moth_tf.class_distance(hardened, x_test, y_test)

Each function is the library call of a command-line phase (moth_tf.cli.phases) with the run
directory and the flags taken away: `harden` builds the same DatasetSplits and HardenConfig and runs
the same method (moth_tf.hardening.runner) as `--phase=harden`; `class_distance`, `detect_backdoor`
and `backdoor_metrics` wrap moth_tf.evaluation.distance.measure_distance,
moth_tf.evaluation.detection.neural_cleanse and moth_tf.evaluation.backdoor.backdoor_metrics.

Data: images are float arrays in [0, 1], NHWC ([N, H, W, C]; grey images have C = 1), labels integer
class indices, as `(images, labels)` arrays. `harden` also takes its data as `tf.data.Dataset`s of
(image, label) pairs, batched or not: the training set is streamed (never read into memory), the
validation and test sets are read into memory. `class_distance`, `detect_backdoor` and
`backdoor_metrics` take arrays (x, y). Models map such images to one score per class: logits, or
probabilities when the model ends in a softmax (see `outputs` below). Bad input is a ValueError
with one line that names the problem and the fix.

`outputs` (every function but `backdoor_metrics`, which only compares predicted labels):

* "auto" (default): a model whose last layer is a `keras.layers.Softmax`, or has
  `activation="softmax"`, ends in probabilities; any other outputs as logits, unless the first
  images' outputs are non-negative and sum to 1 per image (probabilities after all: a SavedModel,
  say, whose softmax is not a layer).
* "logits": the outputs are logits, as they are.
* "probabilities": the outputs are probabilities.

Trigger optimisation and hardening need logits (a softmax saturates, and its gradients vanish), so a
softmax layer or activation is taken off a copy of the model for the work and the hardened model is
returned ending in it again. Probabilities without a softmax that can be taken off are worked on as
their logarithm (logits up to a constant per image), which does not undo the saturation.
"""

import dataclasses
import os
import shutil
import tempfile
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from moth_tf import inputs
from moth_tf import logits

OUTPUTS = logits.OUTPUTS
# Share of `train` kept for validation when `harden` gets no `val`.
VALIDATION_SHARE = 0.1


# --- Hardening ------------------------------------------------------------------------------------


@dataclasses.dataclass
class HardenResults:
  """What `harden` did.

  Attributes:
    method: the hardening method.
    test_accuracy_before, test_accuracy_after: accuracy of the input and the hardened model on
      `test` (or, without it, on the validation images: see `accuracy_split`).
    accuracy_split: "test" or "val", the images the accuracies are measured on.
    wall_seconds: the hardening's wall time (training and trigger generation).
    steps: training steps run.
    config: the moth_tf.config.HardenConfig used.
    outputs: how the model's outputs were read: "logits", "softmax_layer", "softmax_activation"
      (taken off for hardening, put back on the returned model) or "probabilities" (hardened as
      their logarithm).
    note: `outputs` in words.
    workdir: where logs went (None: a temporary directory, deleted).
    raw: the method's results dict (as in a run's summary.json, key "harden").
  """
  method: str
  test_accuracy_before: float
  test_accuracy_after: float
  accuracy_split: str
  wall_seconds: float
  steps: int
  config: Any
  outputs: str
  note: str
  workdir: Optional[str]
  raw: dict

  def __str__(self) -> str:
    return (f"{self.method}: {self.accuracy_split} accuracy {self.test_accuracy_before:.4f} -> "
            f"{self.test_accuracy_after:.4f} "
            f"({100 * (self.test_accuracy_after - self.test_accuracy_before):+.2f} points), "
            f"{self.steps} steps in {self.wall_seconds:.1f} s; {self.note}")


def _dataset_info(dataset: Optional[str], num_classes: int, image_shape):
  """The DatasetInfo of user data: a registered data set's (PGD budgets, augmentation) or "user"."""
  from moth_tf import data as data_lib

  shape = tuple(int(v) for v in image_shape)
  if dataset is None:
    return data_lib.DatasetInfo(name="user", num_classes=num_classes, image_shape=shape,
                                class_names=tuple(str(i) for i in range(num_classes)))
  info = data_lib.dataset_info(dataset)
  if info.num_classes != num_classes:
    raise ValueError(f"dataset={dataset!r} has {info.num_classes} classes but the model has "
                     f"{num_classes} outputs; pass dataset=None for your own data")
  return dataclasses.replace(info, image_shape=shape)


def harden(model, train, val=None, method: str = "moth", *, test=None,
           dataset: Optional[str] = None,
           config: Union[None, Any, Mapping[str, Any]] = None, outputs: str = "auto",
           strategy=None, workdir: Optional[str] = None, augment: Optional[str] = None,
           seed: int = 0, verbose: int = 1, unsafe_load: bool = False, in_place: bool = False,
           precision: Optional[str] = None, jit_compile: bool = False):
  """Hardens a copy of a classifier with MOTH (or a baseline) and returns it.

  The hardening is the model users fit themselves (moth_tf.hardening_model), fitted here with the
  method's recipe: its optimizer, learning-rate schedule and budget (`config`).

  Args:
    model: a trained keras.Model (functional, Sequential or subclassed), or the path of a .keras
      file or SavedModel directory (loaded with moth_tf.models.io.load_model). It is never
      modified (unless `in_place`): a copy is hardened.
    train: training data: (images, labels) arrays, or a tf.data.Dataset of (image, label), batched
      or not, finite or endless, which is streamed: its batches go into the fit as they come
      (re-batched to the config's batch size, not shuffled) and only the first
      `config.trigger_pool` images of every class are held in memory, for trigger generation.
    val: validation data, arrays or a finite tf.data.Dataset (read into memory); None: a
      stratified 10% of `train` when it is arrays, none when it is a stream.
    method: "moth" or a baseline (moth_tf.hardening.methods.METHODS).
    test: data the accuracy before and after is measured on; None: `val`.
    dataset: a registered data set's name (moth_tf.data.DATASETS) when the data is that set: its
      hardening recipe, PGD budgets and augmentation are used. None: your own data, with the
      method's recipe for every data set and no augmentation.
    config: a moth_tf.config.HardenConfig, used as it is, or a dict of its fields to change on
      the default recipe (e.g. {"steps": 500}; "nc" may be a dict of NeuralCleanseConfig fields).
      The run takes exactly `steps` training steps (unless `epochs` is set).
    outputs: "auto", "logits" or "probabilities" (see the module docstring).
    strategy: None (the current tf.distribute strategy), a tf.distribute.Strategy, or "mirrored".
    workdir: where the TensorBoard logs and the resumable backup go; a call killed part-way and
      made again with the same workdir resumes (arrays: exactly where the uninterrupted run would
      be; a stream: at its last finished epoch, the stream read again from its start). None: a
      temporary directory, deleted at the end.
    augment: training augmentation (moth_tf.data.augment.RECIPES); None: the data set's default.
    seed: the run's seed (config.seed unless `config` is a HardenConfig) and the validation
      split's.
    verbose: 0 silent, 1 a progress bar, 2 plain lines.
    unsafe_load: load a `model` path that needs safe_mode=False (only for files you trust).
    in_place: harden `model` itself instead of a copy (for a subclassed model that cannot be
      copied; the returned model is then `model`).
    precision: None: the model computes in its own dtype policy; "float32", "mixed_bfloat16" or
      "mixed_float16": a copy rebuilt under that policy is hardened (moth_tf.models.io.
      with_precision; mixed_float16 trains with loss scaling) and the returned model has the
      input's policies again (the same weights). The global policy is left as it was.
    jit_compile: compile the training step and the trigger engine's step loop with XLA (the
      config's `jit_compile`).

  Returns:
    (hardened keras.Model, HardenResults). The hardened model outputs what the input did (logits,
    or probabilities through the same softmax).

  Raises:
    ValueError: bad input (shapes, labels, pixel range, unknown method or setting), one line.
    moth_tf.training.NonFiniteTrainingError: the hardening diverged (lower the learning rate).
  """
  from moth_tf import evaluation
  from moth_tf.hardening import methods
  from moth_tf.hardening import runner
  from moth_tf.models import io as model_io
  from moth_tf.models import precision as precision_lib

  methods.get_method(method)  # An unknown method is refused before anything is loaded.
  base, path = inputs.load(model, unsafe_load)
  if in_place and path:
    raise ValueError("in_place=True hardens a model object; a path is loaded, so pass the model "
                     "or leave in_place out")
  precision_lib.check_precision(precision)
  own_precision = precision_lib.model_precision(base)
  if in_place and precision not in (None, own_precision):
    raise ValueError(f"in_place=True hardens the model itself, which computes in its own dtype "
                     f"policy; precision={precision!r} needs a copy: leave one of them out")
  splits, harden_config = _harden_splits(base, train, val, test, dataset, method, config, augment,
                                         seed)
  num_classes = splits.num_classes
  if jit_compile:
    harden_config = dataclasses.replace(harden_config, jit_compile=True)
  plan = runner.plan(method, base, splits, harden_config)
  form = logits.output_form(base, outputs, splits.x_train)
  if in_place and form.startswith("softmax_"):
    form = "probabilities"  # Its softmax stays on: worked on as log-probabilities.
  if not (path or in_place or inputs.is_graph_model(base)):
    logits.clone(base, sample=splits.x_train[:1])  # Refused now if it cannot be copied, not mid-run.
  strategy = inputs.strategy(strategy)
  image_shape = splits.image_shape

  def classifier_factory():
    # Called inside the strategy's scope: the copy's variables are the strategy's.
    original = model_io.load_model(path, unsafe_load=unsafe_load) if path else base
    return precision_lib.with_precision(
        logits.logits_model(original, form, copy=path is None and not in_place,
                            sample=splits.x_train[:1], image_shape=image_shape),
        precision, splits.x_train[:1])

  accuracy_before = evaluation.accuracy(base, splits.x_test, splits.y_test)
  if verbose:
    print(f"{method} hardening: {plan.describe(splits)}; {logits.FORM_NOTES[form]}", flush=True)
  run_dir = workdir or tempfile.mkdtemp(prefix="moth_tf_harden_")
  try:
    classifier, raw = plan.run(classifier_factory, splits, run_dir, strategy, verbose=verbose)
  finally:
    if workdir is None:
      shutil.rmtree(run_dir, ignore_errors=True)
  if form.startswith("softmax_"):
    # The input's own architecture, softmax included, with the hardened weights (the softmax has
    # none, and a linear activation has the same weights as a softmax one).
    hardened = logits.clone(base)
    hardened.set_weights(classifier.get_weights())
  elif form == "probabilities":
    hardened = classifier.layers[1]  # Under the log_probabilities layer.
  else:
    hardened = classifier
  # The input's own policies again (the same weights), so the caller gets back what it gave.
  hardened = precision_lib.with_precision(hardened, own_precision, splits.x_train[:1])
  accuracy_after = evaluation.accuracy(hardened, splits.x_test, splits.y_test)
  results = HardenResults(
      method=method, test_accuracy_before=accuracy_before, test_accuracy_after=accuracy_after,
      accuracy_split="test" if test is not None else "val", wall_seconds=raw["wall_seconds"],
      steps=raw["steps"], config=harden_config, outputs=form, note=logits.FORM_NOTES[form],
      workdir=workdir, raw={**raw, "method": method, "batchnorm": plan.batchnorm,
                            "streamed": splits.streaming, "num_classes": num_classes})
  if verbose:
    print(results, flush=True)
  return hardened, results


def _harden_splits(base, train, val, test, dataset, method, config, augment, seed):
  """The DatasetSplits and HardenConfig of a `harden` call: arrays checked, or a stream with its
  per-class sample in memory."""
  import tensorflow as tf
  from moth_tf import data as data_lib
  from moth_tf.data import augment as augment_lib
  from moth_tf.data import base as data_base
  from moth_tf.data import stream
  from moth_tf.hardening import runner

  streaming = isinstance(train, tf.data.Dataset)
  if streaming:
    examples = stream.examples(train, "train")
    shape = stream.image_shape(train)
    if None in shape:
      raise ValueError(f"train: the tf.data.Dataset's images have no fixed shape {shape}; resize "
                       "them to one size (e.g. keras.layers.Resizing) first")
    first = next(iter(examples.take(1).batch(1)), None)
    if first is None:
      raise ValueError("train: the tf.data.Dataset is empty")
    num_classes = inputs.class_count(base, None, first[0].numpy())
  else:
    x_train, y_train = inputs.arrays(train, "train")
    x_train = inputs.check_images(x_train, "train")
    num_classes = inputs.class_count(base, None, x_train)
    x_train, y_train = inputs.images_and_labels(x_train, y_train, "train", base, num_classes)
    shape = x_train.shape[1:]
  info = _dataset_info(dataset, num_classes, shape)
  harden_config = runner.hardening_config("default", info.name, method, config, seed=seed)
  if streaming:
    x_train, y_train = stream.class_sample(examples, num_classes, harden_config.trigger_pool)
    x_train, y_train = inputs.images_and_labels(x_train, y_train, "train", base, num_classes)
    count = stream.known_count(train) if train.element_spec[0].shape.rank == 3 else None
  if val is not None:
    x_val, y_val = inputs.data(val, "val", base, num_classes)
  elif streaming:
    if test is None:
      raise ValueError("a streamed train set has no validation split to hold out; pass val= or "
                       "test= (images the accuracy is measured on)")
    x_val, y_val = np.zeros((0, *shape), np.float32), np.zeros((0,), np.int64)
  else:
    keep, held = data_base.stratified_split(y_train, (1 - VALIDATION_SHARE, VALIDATION_SHARE), seed)
    if not len(held):
      raise ValueError(f"train has too few images ({len(x_train)}) to hold out a validation "
                       "split; pass val")
    x_train, y_train, x_val, y_val = x_train[keep], y_train[keep], x_train[held], y_train[held]
  x_test, y_test = inputs.data(test, "test", base, num_classes) if test is not None else (x_val, y_val)
  augmentation = augment_lib.resolve(info.augment, augment, None, shape[0])
  splits = data_lib.DatasetSplits(info, x_train, y_train, x_val, y_val, x_test, y_test,
                                  augmentation=augmentation)
  if streaming:
    splits.train_stream, splits.train_count = examples, count
  return splits, harden_config


# --- Measurements ---------------------------------------------------------------------------------


def _measured_model(base, path: Optional[str], x, outputs: str, strategy, precision=None):
  """The logits model to optimise triggers on, built in the strategy's scope (`base` loaded from
  `path`, or the caller's model when `path` is None), computing under `precision` (None: its
  own policy; else a copy rebuilt under it)."""
  import tensorflow as tf
  from moth_tf.models import precision as precision_lib
  precision_lib.check_precision(precision)
  form = logits.output_form(base, outputs, x)
  default = strategy is tf.distribute.get_strategy()
  with strategy.scope():
    if path and not default:  # Loaded again in the scope, as the command line does.
      base = inputs.load(path)[0]
    return precision_lib.with_precision(
        logits.logits_model(base, form, copy=not default and path is None, sample=x[:1],
                            image_shape=x.shape[1:]), precision, x[:1])


def _seed_values(seeds: Union[int, Sequence[int]]) -> Tuple[int, ...]:
  """Seeds as the command line's --seeds=N picks them (the reference's first), or as given."""
  from moth_tf import config as config_lib
  if isinstance(seeds, (int, np.integer)):
    if seeds < 1:
      raise ValueError(f"seeds={seeds}: give a number of seeds >= 1 or a list of seed values")
    return (config_lib.REFERENCE_SEEDS + tuple(range(1, seeds + 1)))[:seeds]
  return tuple(int(s) for s in seeds)


def class_distance(model, x, y, *, num_classes: Optional[int] = None, samples: int = 100,
                   steps: int = 1000, seeds: Union[int, Sequence[int]] = 3,
                   pairs: Optional[Sequence[Tuple[int, int]]] = None, asr_bound: float = 0.9,
                   early_stop_patience: int = 200, outputs: str = "auto", strategy=None,
                   verbose: int = 1, precision: Optional[str] = None, jit_compile: bool = False):
  """Measures the class distance of a model: the smallest trigger that flips class s into t.

  The defaults are the command line's (`--phase=distance`): 100 images per direction, 1,000 steps,
  the reference's first three seeds.

  Args:
    model: a built keras.Model or the path of a .keras file or SavedModel directory.
    x, y: held-out images (float [0, 1], NHWC) and integer labels to draw each direction's images
      from.
    num_classes: n; None: the model's number of outputs.
    samples: images of the source class per direction (up to).
    steps: optimisation steps per direction.
    seeds: the number of seeds (the reference's values first) or a list of seed values; the
      distance is the element-wise minimum over seeds.
    pairs: ordered (source, target) pairs to measure; None: all n(n-1).
    asr_bound: the share of images a trigger must flip.
    early_stop_patience: stop a direction after this many steps without a 1% smaller trigger
      (0: run every step).
    outputs: "auto", "logits" or "probabilities" (see the module docstring).
    strategy: None, a tf.distribute.Strategy or "mirrored": its replicas share the directions.
    verbose: 0 silent, 1 a progress bar, 2 one line at the end.
    precision: None: the model's own dtype policy; or "float32", "mixed_bfloat16",
      "mixed_float16": a copy rebuilt under it computes (triggers and losses stay float32).
    jit_compile: compile the engine's step loop with XLA.

  Returns:
    moth_tf.evaluation.distance.DistanceResult: `matrix` [n, n] (source, target; NaN on the
    diagonal and where no seed reached the bound), `mean`, `failures`, `per_seed`, `wall_seconds`.

  Raises:
    ValueError: bad input or settings (one line).
  """
  from moth_tf import config as config_lib
  from moth_tf.evaluation import distance

  strategy = inputs.strategy(strategy)
  base, path, x, y, n = inputs.model_and_data(model, x, y, num_classes)
  settings = config_lib.DistanceConfig(samples=samples, steps=steps, seeds=_seed_values(seeds),
                                       asr_bound=asr_bound,
                                       early_stop_patience=early_stop_patience)
  measured = _measured_model(base, path, x, outputs, strategy, precision)
  return distance.measure_distance(
      measured, x, y, n, distance.inversion_settings(settings, jit_compile), settings.seeds,
      samples=samples,
      pairs=[tuple(p) for p in pairs] if pairs is not None else None, split_name="user",
      verbose=verbose, strategy=strategy)


def detect_backdoor(model, x, y, *, num_classes: Optional[int] = None,
                    config: Union[None, Any, Mapping[str, Any]] = None, outputs: str = "auto",
                    strategy=None, verbose: int = 1, precision: Optional[str] = None,
                    jit_compile: bool = False):
  """Neural Cleanse: reverse-engineers one trigger per label and flags the outlying small ones.

  Args:
    model: a built keras.Model or the path of a .keras file or SavedModel directory.
    x, y: clean held-out images (float [0, 1], NHWC) and integer labels.
    num_classes: n; None: the model's number of outputs.
    config: a moth_tf.config.NeuralCleanseConfig, or a dict of its fields to change on the
      defaults (e.g. {"steps": 300, "samples": 10}).
    outputs: "auto", "logits" or "probabilities" (see the module docstring).
    strategy: None, a tf.distribute.Strategy or "mirrored": its replicas share the labels.
    verbose: 0 silent, 1 a progress bar, 2 one line at the end.
    precision: None: the model's own dtype policy; else a copy rebuilt under it computes.
    jit_compile: compile the engine's step loop with XLA.

  Returns:
    moth_tf.evaluation.detection.DetectionResult: `flagged` (the suspected backdoor targets),
    `l1_norms`, `anomaly_index`, `masks`, `patterns`.

  Raises:
    ValueError: bad input or an unknown setting (one line).
  """
  from moth_tf.evaluation import detection
  from moth_tf.hardening import runner

  nc = runner.neural_cleanse_config(config)
  strategy = inputs.strategy(strategy)
  base, path, x, y, n = inputs.model_and_data(model, x, y, num_classes)
  measured = _measured_model(base, path, x, outputs, strategy, precision)
  return detection.neural_cleanse(measured, x, y, n, nc, verbose=verbose, strategy=strategy,
                                  jit_compile=jit_compile)


def _trigger(trigger, image_shape):
  """A BackdoorTrigger of a trigger, a saved trigger's path, or (mask, pattern, target)."""
  from moth_tf.attacks import backdoor

  if isinstance(trigger, backdoor.BackdoorTrigger):
    found = trigger
  elif isinstance(trigger, (str, os.PathLike)):
    return backdoor.load_trigger(os.fspath(trigger), image_shape)
  elif isinstance(trigger, (tuple, list)) and len(trigger) == 3:
    mask, pattern, target = trigger
    mask = np.asarray(mask, np.float32)
    found = backdoor.BackdoorTrigger(mask=mask[..., None] if mask.ndim == 2 else mask,
                                     pattern=np.asarray(pattern, np.float32), target=int(target))
  else:
    raise ValueError("trigger must be a moth_tf.attacks.backdoor.BackdoorTrigger, the path of a "
                     "poisoned run (trigger.npz + trigger.json), or (mask [H, W], pattern "
                     f"[H, W, C], target); got {type(trigger).__name__}")
  h, w, _ = image_shape
  if found.mask.shape != (h, w, 1) or tuple(found.pattern.shape) != tuple(image_shape):
    raise ValueError(f"the trigger's mask {found.mask.shape} and pattern {found.pattern.shape} do "
                     f"not fit {tuple(image_shape)} images; give a mask [H, W] and a pattern "
                     "[H, W, C] of the images' size")
  return found


def backdoor_metrics(model, x, y, trigger, num_classes: Optional[int] = None) -> dict:
  """C-Acc, ASR and R-Acc of a model under a backdoor trigger.

  Args:
    model: a built keras.Model or the path of a .keras file or SavedModel directory (logits or
      probabilities: only predicted labels count).
    x, y: clean held-out images (float [0, 1], NHWC) and integer labels.
    trigger: a moth_tf.attacks.backdoor.BackdoorTrigger (e.g. from make_trigger); the path of a
      poisoned run directory or its trigger.npz; or a tuple (mask, pattern, target): mask [H, W]
      or [H, W, 1] and pattern [H, W, C] in [0, 1], stamped as (1 - mask) * x + mask * pattern,
      sending every other class to `target` (all-to-one).
    num_classes: n; None: the model's number of outputs.

  Returns:
    dict: "c_acc" (clean accuracy), "asr" (stamped images of the other classes classified as the
    target), "r_acc" (stamped images still classified as their class), "images",
    "stamped_images".

  Raises:
    ValueError: bad input, or a trigger that does not fit the images (one line).
    FileNotFoundError: no trigger at the path.
  """
  from moth_tf.evaluation import backdoor as backdoor_eval

  base, _, x, y, n = inputs.model_and_data(model, x, y, num_classes)
  return backdoor_eval.backdoor_metrics(base, x, y, _trigger(trigger, x.shape[1:]), n)
