"""LeNet-style small CNN, the default model for the embedded 8x8 digits data set."""

import keras

from moth_tf import models


def lenet(input_shape, num_classes, normalization=None):
  """LeNet: Conv3x3(32) ReLU -> Conv3x3(64, stride 2) ReLU -> Flatten -> Dense(128) ReLU -> Dense(n).

  Outputs logits.
  """
  inputs, x = models.input_layers(input_shape, normalization)
  x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1")(x)
  x = keras.layers.Conv2D(64, 3, strides=2, padding="same", activation="relu", name="conv2")(x)
  x = keras.layers.Flatten(name="flatten")(x)
  x = keras.layers.Dense(128, activation="relu", name="fc1")(x)
  logits = keras.layers.Dense(num_classes, name="logits")(x)
  return keras.Model(inputs, logits, name="lenet")
