"""The paper's classifiers, built by name. Every model takes [0,1] NHWC images and outputs logits.

    model = moth_tf.models.build_model("lenet", (8, 8, 1), 10)

Per-dataset input normalisation, when given, is the model's first layer, so triggers and attacks
always work on [0,1] pixels.
"""

import importlib
from typing import Optional, Sequence, Tuple

# name -> (module, builder). Families live in their own modules.
_FAMILIES = {
    "lenet": ("moth_tf.models.lenet", "lenet"),
    "resnet20": ("moth_tf.models.resnet", "resnet20"),
    "resnet32": ("moth_tf.models.resnet", "resnet32"),
    "resnet56": ("moth_tf.models.resnet", "resnet56"),
    "resnet110": ("moth_tf.models.resnet", "resnet110"),
    "vgg19": ("moth_tf.models.vgg", "vgg19"),
    "nin": ("moth_tf.models.nin", "nin"),
    "cnn": ("moth_tf.models.cnn", "cnn"),
    "small_cnn": ("moth_tf.models.small_cnn", "small_cnn"),
}

MODELS = tuple(_FAMILIES)


def build_model(name: str, input_shape: Sequence[int], num_classes: int,
                normalization: Optional[Tuple[Sequence[float], Sequence[float]]] = None):
  """Builds an untrained classifier that outputs logits.

  Args:
    name: one of MODELS.
    input_shape: (H, W, C) of the [0,1] input images.
    num_classes: number of output logits.
    normalization: optional ((mean per channel), (std per channel)) applied as the first layer.

  Returns:
    A functional `keras.Model` named after the architecture.
  """
  if name not in _FAMILIES:
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
  module_name, builder = _FAMILIES[name]
  module = importlib.import_module(module_name)
  return getattr(module, builder)(tuple(input_shape), num_classes, normalization=normalization)


def input_layers(input_shape, normalization, name="image"):
  """Returns (inputs, x): the Input tensor and, if asked, its per-channel normalisation."""
  import keras
  inputs = keras.Input(shape=tuple(input_shape), name=name)
  x = inputs
  if normalization is not None:
    mean, std = normalization
    channels = input_shape[-1]
    mean = list(mean) if len(mean) == channels else [float(mean[0])] * channels
    std = list(std) if len(std) == channels else [float(std[0])] * channels
    x = keras.layers.Normalization(mean=mean, variance=[s * s for s in std],
                                   name="input_normalization")(x)
  return inputs, x


__all__ = ["MODELS", "build_model", "input_layers"]
