"""The authors' Network-in-Network (used for SVHN), outputting non-negative logits."""

import keras

from moth_tf import models

_WEIGHT_DECAY = 1e-4


def _conv(filters, kernel_size, name, activation="relu"):
  # Glorot-uniform init is the Keras default, as in the authors' network.
  return keras.layers.Conv2D(
      filters, kernel_size, padding="same", activation=activation,
      kernel_regularizer=keras.regularizers.L2(_WEIGHT_DECAY), name=name)


def nin(input_shape, num_classes, normalization=None):
  """Builds the authors' NiN: three mlpconv blocks and global average pooling, no BN.

  Blocks (all convs 'same', ReLU, L2 1e-4):
    1: Conv5x5-192, 1x1-160, 1x1-96, MaxPool 3x3/2 'same', Dropout 0.5.
    2: Conv5x5-192, 1x1-192, 1x1-192, MaxPool 3x3/2 'same', Dropout 0.5.
    3: Conv3x3-192, 1x1-192, 1x1-num_classes, ReLU, GlobalAveragePooling.

  The ReLU before the pooling of the class maps is the authors' design, kept on purpose: every logit
  is >= 0, so a class can never score below zero. Code that assumes logits of either sign (margins,
  losses relying on negative logits) should allow for it.

  Args:
    input_shape: (H, W, C) of the [0,1] input images. Any size works: the pools are 'same'.
    num_classes: number of output logits.
    normalization: optional ((mean per channel), (std per channel)) applied as the first layer.

  Returns:
    A functional `keras.Model` named `nin` that outputs logits.
  """
  inputs, x = models.input_layers(input_shape, normalization)
  x = _conv(192, 5, "block1_conv")(x)
  x = _conv(160, 1, "block1_mlp1")(x)
  x = _conv(96, 1, "block1_mlp2")(x)
  x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="block1_pool")(x)
  x = keras.layers.Dropout(0.5, name="block1_dropout")(x)

  x = _conv(192, 5, "block2_conv")(x)
  x = _conv(192, 1, "block2_mlp1")(x)
  x = _conv(192, 1, "block2_mlp2")(x)
  x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="block2_pool")(x)
  x = keras.layers.Dropout(0.5, name="block2_dropout")(x)

  x = _conv(192, 3, "block3_conv")(x)
  x = _conv(192, 1, "block3_mlp1")(x)
  x = _conv(num_classes, 1, "block3_mlp2", activation=None)(x)
  # As the authors' network: a ReLU on the class maps, so the pooled logits are never negative.
  x = keras.layers.ReLU(name="class_map_relu")(x)
  logits = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
  return keras.Model(inputs, logits, name="nin")
