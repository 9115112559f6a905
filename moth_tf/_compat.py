"""Every use of Keras internals (`keras.src...`, private attributes), in one place.

moth_tf works around three Keras behaviours and needs one function Keras does not export. Each
needs an internal that a Keras release may rename or remove, so setup.py caps Keras at the minor
versions the tests ran on (KERAS_RANGE), and importing this module (which distribute.py and
models/io.py do) checks that every internal is still there: a Keras without them fails here, in one
line naming its version, the tested range and the fix, instead of deep inside a training run. A
newer Keras that still has them is used, with a one-line warning.
"""

import importlib
import warnings

import keras

# The Keras versions moth_tf supports: from 3.8, the first release that scales compiled losses by
# the replica count under tf.distribute, to the minor version its tests ran on (3.15.1). Every
# internal used below exists from 3.8 on. setup.py pins the same range.
KERAS_MIN = (3, 8)
KERAS_BELOW = (3, 16)
KERAS_RANGE = ">=3.8,<3.16"
KERAS_FIX = f'pip install "keras{KERAS_RANGE}"'


class KerasInternalsError(ImportError):
  """The installed Keras lacks an internal that moth_tf patches or calls."""
  # moth_tf.cli.main prints this as one line (no traceback) when it comes up while importing the
  # phases.
  keras_compat = True


def _version_tuple(text):
  parts = []
  for part in text.split(".")[:2]:
    digits = "".join(ch for ch in part if ch.isdigit())
    parts.append(int(digits) if digits else 0)
  return tuple(parts)


def missing_message(what: str, version: str = keras.__version__) -> str:
  """The one line for a missing internal `what` on Keras `version`."""
  return (f"moth_tf cannot run on Keras {version}: it lacks {what}, which moth_tf relies on; "
          f"moth_tf is tested with keras{KERAS_RANGE}. Fix: {KERAS_FIX}")


def _module(name):
  try:
    return importlib.import_module(name)
  except ImportError:
    return None


def missing_internals() -> list:
  """The internals (as "module.name" strings) this Keras does not have; empty when all are there."""
  missing = []
  trainer = _module("keras.src.backend.tensorflow.trainer")
  if trainer is None or not callable(getattr(trainer, "reduce_per_replica", None)):
    missing.append("keras.src.backend.tensorflow.trainer.reduce_per_replica")
  for name in ("_symbolic_build", "_maybe_symbolic_build"):
    if not callable(getattr(keras.Model, name, None)):
      missing.append(f"keras.Model.{name}")
  export_utils = _module("keras.src.export.export_utils")
  if export_utils is None or not callable(getattr(export_utils, "get_input_signature", None)):
    missing.append("keras.src.export.export_utils.get_input_signature")
  return missing


def check_keras(version: str = keras.__version__):
  """Raises KerasInternalsError (one line) if an internal is missing; warns outside the range.

  Deciding by the internals rather than by the version number lets a newer Keras that keeps them
  work (with a warning) and names exactly what a breaking release removed.
  """
  missing = missing_internals()
  if missing:
    raise KerasInternalsError(missing_message(", ".join(missing), version))
  parsed = _version_tuple(version)
  if not KERAS_MIN <= parsed < KERAS_BELOW:
    warnings.warn(f"moth_tf is tested with keras{KERAS_RANGE}, and Keras {version} is installed; "
                  f"the internals it needs are there, but if training or saving misbehaves: "
                  f"{KERAS_FIX}", RuntimeWarning, stacklevel=2)


check_keras()


# ------------------------------------------------------------------------------------------------
# The uses. Each names the Keras behaviour it works around and the versions it was checked with.


def replace_reduce_per_replica(make_replacement):
  """Replaces Keras's per-step reduction of the train/test logs, once per process.

  Keras 3 (from 3.8; checked with 3.15) reduces every step's logs with
  `strategy.reduce("MEAN", value, axis=0)` under multi-worker strategies, which fails on scalar
  logs ("Invalid reduction dimension 0 for input with 0 dimensions"). The TF trainer calls the
  module-level function `keras.src.backend.tensorflow.trainer.reduce_per_replica`;
  `make_replacement(original)` returns the function that takes its place (moth_tf.distribute
  reduces scalars over replicas only).
  """
  from keras.src.backend.tensorflow import trainer as keras_trainer
  original = keras_trainer.reduce_per_replica
  if getattr(original, "moth_tf_fixed", False):
    return
  replacement = make_replacement(original)
  replacement.moth_tf_fixed = True
  keras_trainer.reduce_per_replica = replacement


def build_from_local_batch(model, strategy, sample_batch):
  """Makes `fit` and `evaluate` build `model` from `sample_batch` instead of the first batch.

  Keras 3 (from 3.8; checked with 3.15) builds a model at the start of `fit`/`evaluate` in
  `Trainer._maybe_symbolic_build`, from the first batch reduced across replicas with
  `strategy.reduce(MEAN, (x, y))` in eager mode; on MultiWorkerMirroredStrategy that reduce takes
  no tuple and `fit` fails with "Attempt to convert a value (PerReplica...) to a Tensor". The
  instance's `_maybe_symbolic_build` is replaced by a call of the private `_symbolic_build` on
  the local (x, y) batch `sample_batch`, under the strategy's scope.
  """

  def symbolic_build(iterator=None, data_batch=None):
    del iterator, data_batch
    with strategy.scope():
      model._symbolic_build(data_batch=sample_batch)  # pylint: disable=protected-access

  model._maybe_symbolic_build = symbolic_build  # pylint: disable=protected-access


def export_input_signature(model):
  """The input signature `model.export` gives its `serve` endpoint.

  Keras 3 (from 3.8; checked with 3.15) keeps it in
  `keras.src.export.export_utils.get_input_signature`, with no public name; moth_tf.models.io
  needs the same signature to export a SavedModel with a training endpoint next to `serve` (what
  `model.export` does, plus that endpoint).
  """
  from keras.src.export import export_utils
  return export_utils.get_input_signature(model)


def set_variable_path(variable, path: str):
  """Sets a Keras variable's `path`, which Keras exposes read-only.

  A SavedModel wrapped in TFSMLayer keeps TF1-style variable names ("conv1_kernel:0"); Keras 3
  (checked with 3.15) builds optimizer slot names from the variable path without removing the
  ":", which then fails as a scope name when the model is fine-tuned. The path lives in the
  private `_path` attribute of `keras.Variable`.
  """
  if not hasattr(variable, "_path"):
    raise KerasInternalsError(missing_message("keras.Variable._path"))
  variable._path = path  # pylint: disable=protected-access
