"""moth_tf: MOTH (Model Orthogonalization) class-distance hardening in TensorFlow 2 / Keras 3.

The Python API (moth_tf.api; docs/user-guide.md, "Python API reference"), for a Keras model and
arrays in memory:

    hardened, results = moth_tf.harden(model, (x_train, y_train), test=(x_test, y_test))
    moth_tf.class_distance(model, x, y)           # pairwise class distance: .matrix, .mean
    moth_tf.detect_backdoor(model, x, y)          # Neural Cleanse: .flagged
    moth_tf.backdoor_metrics(model, x, y, trigger)

Hardening in your own `compile`/`fit` (moth_tf.hardening.wrapper):

    hardening = moth_tf.hardening_model(classifier, samples=train_ds)
    hardening.compile(optimizer, metrics=["accuracy"]); hardening.fit(train_ds, epochs=...)

They are loaded on first use, so that `import moth_tf` does not import TensorFlow.
"""

import importlib as _importlib

from moth_tf import _deprecated as _deprecated_paths

__version__ = "0.1.0"

# The module paths that moved into subpackages (moth_tf.distance, moth_tf.phases, ...) import with
# a DeprecationWarning for one release; python -m moth_tf.main / .report / .prepare keep working.
_deprecated_paths.install()

# Public name -> the module that defines it.
_LAZY = {
    "harden": "moth_tf.api",
    "HardenResults": "moth_tf.api",
    "class_distance": "moth_tf.api",
    "detect_backdoor": "moth_tf.api",
    "backdoor_metrics": "moth_tf.api",
    "hardening_model": "moth_tf.hardening.wrapper",
    "HardeningModel": "moth_tf.hardening.model",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
  if name in _LAZY:
    value = getattr(_importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # Later lookups skip this function.
    return value
  raise AttributeError(f"module 'moth_tf' has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_LAZY))
