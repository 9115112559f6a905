"""Models under a Keras dtype policy (--precision): rebuilding a model under a policy, a float32
copy for saving, and a scope that sets the global policy without leaking it.

The classifier computes in the policy's dtype (its variables stay float32); triggers, masks,
patterns and their losses stay float32 whatever it computes in (moth_tf.triggers.engine).
"""

import contextlib
from typing import Optional

import keras
import tensorflow as tf

from moth_tf.models import io


# The dtype policies of --precision (moth_tf.config.PRECISIONS).
FLOAT32 = "float32"


def check_precision(precision: Optional[str]):
  """A one-line ValueError unless `precision` is None (the model's own policy) or one of
  moth_tf.config.PRECISIONS."""
  from moth_tf import config as config_lib  # pylint: disable=g-import-not-at-top
  if precision is not None and precision not in config_lib.PRECISIONS:
    raise ValueError(f"precision={precision!r}: use None (the model's own) or one of "
                     f"{', '.join(config_lib.PRECISIONS)}")


@contextlib.contextmanager
def policy_scope(precision: Optional[str]):
  """Sets Keras's global dtype policy to `precision` inside the block and puts the previous one
  back after it, also when the block raises; None changes nothing.

  Models and layers built inside take the policy; nothing outside the block sees it.
  """
  if precision is None:
    yield
    return
  previous = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy(precision)
  try:
    yield
  finally:
    keras.mixed_precision.set_global_policy(previous)


def _policy_name(layer) -> Optional[str]:
  policy = getattr(layer, "dtype_policy", None)
  return getattr(policy, "name", None)


def model_precision(model) -> Optional[str]:
  """The dtype policy of every layer of `model` when they all share one, else None (mixed)."""
  names = {_policy_name(layer) for layer in model._flatten_layers(include_self=False)  # pylint: disable=protected-access
           if not isinstance(layer, keras.layers.InputLayer) and _policy_name(layer)}
  names.add(_policy_name(model))
  names.discard(None)
  return names.pop() if len(names) == 1 else None


def with_precision(model: keras.Model, precision: Optional[str], sample=None) -> keras.Model:
  """`model` computing under the dtype policy `precision`: the model itself when every layer has
  that policy already (or `precision` is None), else a copy with every layer's policy replaced
  and the weights copied (variables stay float32 under the mixed policies, so the weights are the
  same numbers).

  * Functional and Sequential models: keras.models.clone_model, each layer re-created from its
    config with `dtype=precision` (nested models too).
  * Subclassed models: `from_config(get_config())` (its own `dtype` set to the policy) called
    under the policy (`policy_scope`), so the layers its `__init__` creates take it (a layer given an explicit dtype there keeps it),
    built on one image and given the weights. A model whose config does not rebuild it, or whose
    copy keeps another policy, is refused (ValueError, one line).
  * A model that runs a TF SavedModel (a TFSMLayer) computes in the dtypes the SavedModel was
    exported with and is refused for any policy but its own.

  `sample`: images to build a subclassed model's copy with (default: zeros of the input shape it
  was built with). The global policy is unchanged afterwards. Build or load the model under a strategy's scope and
  call this there too: the copy's variables are then the strategy's.
  """
  if precision is None or model_precision(model) == precision:
    return model
  if io.savedmodel_layers(model):
    raise ValueError(f"--precision={precision}: the model runs a TF SavedModel, which computes "
                     "in the dtypes it was exported with; use --precision=float32 or pass a .keras "
                     "file")
  try:
    is_graph = bool(model.inputs)
  except (AttributeError, ValueError):
    is_graph = False
  with policy_scope(precision):
    if is_graph:
      copy = keras.models.clone_model(
          model, clone_function=lambda layer: layer.__class__.from_config(
              {**layer.get_config(), "dtype": precision}), recursive=True)
    else:
      copy = _rebuild_subclassed(model, precision, sample)
  copy.set_weights(model.get_weights())
  return copy


def _rebuild_subclassed(model, precision, sample):
  name = type(model).__name__
  try:
    config = model.get_config()
    if "dtype" in config:  # The model's own policy; the layers its __init__ makes take the global.
      config = {**config, "dtype": precision}
    copy = type(model).from_config(config)
    if sample is None:
      shapes = getattr(model, "_build_shapes_dict", None) or {}
      shape = next(iter(shapes.values()), None)
      if shape is None:
        raise ValueError("no input shape recorded; pass sample images")
      sample = tf.zeros([1, *tuple(shape)[1:]])
    copy(tf.constant(sample[:1], tf.float32))
  except Exception as e:  # Any failure of the user's code: refused in one line below.
    raise ValueError(f"cannot rebuild the subclassed model {name} under --precision={precision} "
                     f"({type(e).__name__}: {io.short_reason(e, 80)}); give it a get_config() "
                     "that rebuilds it, build it under the policy yourself, or use "
                     f"--precision={model_precision(model) or FLOAT32}") from e
  if model_precision(copy) != precision:
    raise ValueError(f"the subclassed model {name} keeps dtype policies other than {precision} "
                     "when rebuilt (its layers set their own dtype); build it under the policy "
                     "yourself")
  return copy


def float32_copy(model: keras.Model) -> keras.Model:
  """`model` with float32 dtype policies (the same weights): what a mixed-precision run saves,
  so that the saved model loads and computes in plain float32 (`model` itself if it does)."""
  return with_precision(model, FLOAT32)


def float32_for_saving(model):
  """The float32 copy `save_model` writes; the model as it is (with a warning) when it cannot be
  rebuilt, so that a finished run is never lost at its save."""
  if io.savedmodel_layers(model) or model_precision(model) == FLOAT32:
    return model
  try:
    return float32_copy(model)
  except ValueError as e:
    from moth_tf import progress  # pylint: disable=g-import-not-at-top
    progress.warn(f"saved with its own dtype policies, not as float32: {e}")
    return model
