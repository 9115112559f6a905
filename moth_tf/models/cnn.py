"""The authors' small CNN for LISA traffic signs, outputting logits."""

import keras

from moth_tf import models

# Smallest side that leaves a 1x1 map: the 'same' stride-2 conv gives ceil(s / 2), which the
# 'valid' 6x6 stride-2 conv needs to be >= 6 + 2 * (5 - 1) = 14 so that the 'valid' 5x5 conv
# still has a 5x5 input; ceil(s / 2) >= 14 means s >= 27.
_MIN_SIZE = 27


def cnn(input_shape, num_classes, normalization=None):
  """Builds the authors' LISA CNN: three convs and one dense layer.

  Conv 64 8x8 stride 2 'same' ReLU -> Conv 128 6x6 stride 2 'valid' ReLU -> Conv 128 5x5 'valid'
  ReLU -> Flatten -> Dense num_classes. No regularisation and Keras-default initialisers, as in the
  original; on 32x32 images the flattened map is 2x2x128.

  Args:
    input_shape: (H, W, C) of the [0,1] input images, with H, W >= 27.
    num_classes: number of output logits (18 for LISA).
    normalization: optional ((mean per channel), (std per channel)) applied as the first layer.

  Returns:
    A functional `keras.Model` named `cnn` that outputs logits.

  Raises:
    ValueError: if the images are too small for the 'valid' convs.
  """
  height, width = input_shape[0], input_shape[1]
  if any(side is not None and side < _MIN_SIZE for side in (height, width)):
    raise ValueError(f"cnn needs images of at least {_MIN_SIZE}x{_MIN_SIZE} (its 'valid' convs "
                     f"shrink them), got {height}x{width}; resize them, e.g. --image_size=32")

  inputs, x = models.input_layers(input_shape, normalization)
  x = keras.layers.Conv2D(64, 8, strides=2, padding="same", activation="relu", name="conv1")(x)
  x = keras.layers.Conv2D(128, 6, strides=2, padding="valid", activation="relu", name="conv2")(x)
  x = keras.layers.Conv2D(128, 5, strides=1, padding="valid", activation="relu", name="conv3")(x)
  x = keras.layers.Flatten(name="flatten")(x)
  logits = keras.layers.Dense(num_classes, name="logits")(x)
  return keras.Model(inputs, logits, name="cnn")
