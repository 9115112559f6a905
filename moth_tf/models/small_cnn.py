"""A small three-block CNN for 28x28 grey images: the default model of Fashion-MNIST.

Chosen for the cost of class distance, not only for accuracy: every inversion step runs one forward
and backward pass of every direction's images, so the model's per-image cost is the distance
measure's and MOTH's trigger generation's cost. Pooling after each 3x3 convolution keeps the
full-resolution layer at 16 channels, which keeps an inversion step cheaper than `lenet`'s at
28x28 (docs/results.md, "Fashion-MNIST: model cost", has the measured costs and accuracy).
"""

import keras

from moth_tf import models


def small_cnn(input_shape, num_classes, normalization=None):
  """[Conv3x3 ReLU MaxPool2] x 3 (16, 32, 64 filters) -> Dense(128) ReLU -> Dense(n); logits.

  No BatchNorm or Dropout: the model behaves the same in training and inference mode, so hardening
  a SavedModel export of it needs no training endpoint.
  """
  inputs, x = models.input_layers(input_shape, normalization)
  for i, filters in enumerate((16, 32, 64), start=1):
    x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i}")(x)
    x = keras.layers.MaxPooling2D(name=f"pool{i}")(x)
  x = keras.layers.Flatten(name="flatten")(x)
  x = keras.layers.Dense(128, activation="relu", name="fc1")(x)
  logits = keras.layers.Dense(num_classes, name="logits")(x)
  return keras.Model(inputs, logits, name="small_cnn")
