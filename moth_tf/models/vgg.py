"""The authors' CIFAR VGG19 with batch normalisation, outputting (batch-normalised) logits."""

import keras

from moth_tf import models

_WEIGHT_DECAY = 1e-4
# Filters of the 3x3 convs in each of the five blocks; every block ends with a 2x2 max-pool.
_BLOCKS = ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4)
# Five stride-2 'valid' pools need at least 2**5 pixels per side to leave a 1x1 map.
_MIN_SIZE = 2 ** len(_BLOCKS)


def _regularized(layer_cls, *args, **kwargs):
  return layer_cls(*args, kernel_initializer="he_normal",
                   kernel_regularizer=keras.regularizers.L2(_WEIGHT_DECAY), **kwargs)


def vgg19(input_shape, num_classes, normalization=None):
  """Builds the authors' VGG19: 16 conv-BN-ReLU layers in five pooled blocks and a 3-layer head.

  Convs are named `block{b}_conv{k}` and pools `block{b}_pool`. The head is Flatten ->
  Dense 4096 (`fc_cifa10`) -> BN -> ReLU -> Dropout 0.5 -> Dense 4096 (`fc2`) -> BN -> ReLU ->
  Dropout 0.5 -> Dense n (`predictions_cifa10`) -> BN. The final BatchNormalization on the logits is
  a peculiarity of the authors' network, kept so that their weights and behaviour carry over: the model's
  output is the batch-normalised logits. All convs and dense layers use he_normal and L2 1e-4; the
  BNs use Keras defaults.

  Args:
    input_shape: (H, W, C) of the [0,1] input images, with H, W >= 32.
    num_classes: number of output logits.
    normalization: optional ((mean per channel), (std per channel)) applied as the first layer.

  Returns:
    A functional `keras.Model` named `vgg19` that outputs logits.

  Raises:
    ValueError: if the images are smaller than 32x32.
  """
  height, width = input_shape[0], input_shape[1]
  if any(side is not None and side < _MIN_SIZE for side in (height, width)):
    raise ValueError(f"vgg19 needs images of at least {_MIN_SIZE}x{_MIN_SIZE} (it max-pools 5 "
                     f"times), got {height}x{width}; resize them, e.g. --image_size=32")

  inputs, x = models.input_layers(input_shape, normalization)
  for b, block in enumerate(_BLOCKS, start=1):
    for k, filters in enumerate(block, start=1):
      x = _regularized(keras.layers.Conv2D, filters, 3, padding="same",
                       name=f"block{b}_conv{k}")(x)
      x = keras.layers.BatchNormalization(name=f"block{b}_bn{k}")(x)
      x = keras.layers.ReLU(name=f"block{b}_relu{k}")(x)
    x = keras.layers.MaxPooling2D(2, strides=2, name=f"block{b}_pool")(x)

  x = keras.layers.Flatten(name="flatten")(x)
  for name in ("fc_cifa10", "fc2"):
    x = _regularized(keras.layers.Dense, 4096, name=name)(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    x = keras.layers.ReLU(name=f"{name}_relu")(x)
    x = keras.layers.Dropout(0.5, name=f"{name}_dropout")(x)
  x = _regularized(keras.layers.Dense, num_classes, name="predictions_cifa10")(x)
  # As the authors' network: BN on the logits (their softmax followed it).
  logits = keras.layers.BatchNormalization(name="predictions_bn")(x)
  return keras.Model(inputs, logits, name="vgg19")
