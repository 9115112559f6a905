"""How a user's model's outputs are read: logits, probabilities, and the logits view worked on.

`output_form` decides what a model outputs ("auto": a functional or Sequential model whose last
layer is a Softmax or has a softmax activation ends in probabilities; otherwise logits, unless the
first images' outputs are non-negative rows that sum to 1). Trigger optimisation and hardening need
logits (a softmax saturates, and its gradients vanish), so `logits_model` takes a softmax layer or
activation off a copy of the model, or works on the logarithm of probabilities that have no softmax
to take off. `clone` copies a model with its weights: functional and Sequential models layer by
layer, subclassed ones through their config or a temporary .keras file.
Importing this module does not import TensorFlow.
"""

import os
import shutil
import tempfile
from typing import Optional

import numpy as np

from moth_tf import inputs

OUTPUTS = ("auto", "logits", "probabilities")
# Images whose outputs "auto" checks for probability rows.
PROBE_IMAGES = 64


def softmax_end(model) -> Optional[str]:
  """How `model` ends in a softmax that can be taken off: "layer", "activation", or None."""
  import keras
  layers = getattr(model, "layers", None)
  if not layers or not inputs.is_graph_model(model):
    # A subclassed model's layers are in attribute order, not call order: its softmax, if any,
    # is found by its outputs (probabilities).
    return None
  last = layers[-1]
  if isinstance(last, keras.layers.Softmax):
    return "layer"
  activation = getattr(last, "activation", None)
  if activation is not None and getattr(activation, "__name__", "") == "softmax":
    return "activation"
  return None


def looks_like_probabilities(model, x) -> bool:
  scores = np.asarray(model.predict(x[:PROBE_IMAGES], verbose=0), np.float64)
  return bool(scores.min() >= 0.0 and np.allclose(scores.sum(axis=-1), 1.0, atol=1e-3))


def output_form(model, outputs: str, x) -> str:
  """"logits", "softmax_layer", "softmax_activation" or "probabilities" (no softmax to take off)."""
  if outputs not in OUTPUTS:
    raise ValueError(f"outputs={outputs!r}: use one of {', '.join(OUTPUTS)}")
  if outputs == "logits":
    return "logits"
  end = softmax_end(model)
  if end:
    return "softmax_" + end
  if outputs == "probabilities" or looks_like_probabilities(model, x):
    return "probabilities"
  return "logits"


FORM_NOTES = {
    "logits": "the model outputs logits",
    "softmax_layer": "the model ends in a Softmax layer: worked on without it, returned with it",
    "softmax_activation": ("the last layer has a softmax activation: worked on with a linear one, "
                           "returned with the softmax"),
    "probabilities": ("the model outputs probabilities without a softmax layer to take off: worked "
                      "on as their logarithm"),
}


def copy_subclassed(model, sample):
  """A copy of a subclassed model with its weights: rebuilt from its config (Keras records a
  subclass's constructor arguments), else through a temporary .keras file; None if neither
  works."""
  import keras

  try:
    copy = model.__class__.from_config(model.get_config())
    copy(np.asarray(sample[:1], np.float32))
    copy.set_weights(model.get_weights())
    return copy
  except Exception:  # Any failure of the user's code means: try the next way.
    pass
  folder = tempfile.mkdtemp(prefix="moth_tf_copy_")
  try:
    path = os.path.join(folder, "model.keras")
    model.save(path)
    copy = keras.saving.load_model(path, compile=False)
    copy.set_weights(model.get_weights())
    return copy
  except Exception:
    return None
  finally:
    shutil.rmtree(folder, ignore_errors=True)


def clone(model, strip_softmax: bool = False, sample=None):
  """A copy of `model` with its weights (the softmax taken off when asked); the original is never
  touched."""
  import keras
  if not inputs.is_graph_model(model):
    copy = copy_subclassed(model, sample)
    if copy is None:
      raise ValueError(
          f"cannot copy the subclassed model {type(model).__name__} (neither from_config("
          "get_config()) nor a .keras save and load rebuilds it); give its __init__ arguments a "
          "get_config() or register the class with @keras.saving.register_keras_serializable(), "
          "or pass in_place=True to harden the model itself")
    return copy
  last = model.layers[-1]

  def clone_layer(layer):
    if strip_softmax and layer is last:
      if isinstance(layer, keras.layers.Softmax):
        return keras.layers.Identity(name=layer.name)
      return layer.__class__.from_config({**layer.get_config(), "activation": "linear"})
    return layer.__class__.from_config(layer.get_config())

  try:
    copy = keras.models.clone_model(model, clone_function=clone_layer)
  except (TypeError, ValueError, NotImplementedError) as e:
    raise ValueError(f"keras.models.clone_model cannot copy this model ({type(e).__name__}: "
                     f"{str(e).splitlines()[0][:100]}); build it with the functional or "
                     "Sequential API, or save it and pass the path") from e
  copy.set_weights(model.get_weights())
  return copy


def log_probabilities(model, image_shape=None):
  """`model` (probabilities) with the logarithm on top: logits up to a constant per image."""
  import keras

  images = keras.Input(inputs.input_shape(model) or tuple(image_shape))
  scores = keras.layers.Lambda(lambda p: keras.ops.log(keras.ops.maximum(p, 1e-12)),
                               name="log_probabilities")(model(images))
  return keras.Model(images, scores, name="log_" + model.name)


def logits_model(model, form: str, copy: bool, sample=None, image_shape=None):
  """A logits view of `model` (form from `output_form`); a copy when `copy` or when the softmax is
  taken off (`sample`: images to build a subclassed model's copy with)."""
  if form.startswith("softmax_"):
    return clone(model, strip_softmax=True, sample=sample)
  base = clone(model, sample=sample) if copy else model
  return log_probabilities(base, image_shape) if form == "probabilities" else base
