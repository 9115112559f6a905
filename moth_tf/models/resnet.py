"""The authors' pre-activation CIFAR ResNets (resnet20/32/56/110), outputting logits.

Architecture of `resnet{D}` with `stack_n = (D - 2) // 6` blocks per stage:

  stem:    Conv 3x3, 16 filters (no BN: the first block pre-activates it)
  stage 1: stack_n blocks of 16 filters
  stage 2: one down-sampling block of 32 filters, then stack_n - 1 blocks of 32
  stage 3: the same with 64 filters
  head:    BN -> ReLU -> GlobalAveragePooling -> Dense(num_classes)

Each block computes `o1 = ReLU(BN(x))`, `c1 = Conv3x3(o1)` (stride 2 when down-sampling),
`o2 = ReLU(BN(c1))`, `c2 = Conv3x3(o2)` and returns `c2 + shortcut`. The shortcut is `x` itself, or
a strided 1x1 conv of `o1` (not of `x`) when the block down-samples. Nothing follows the addition:
the next block's BN pre-activates it.

Layers are created in the same order as in the authors' Keras 2 code (c1, c2, then the projection),
so their legacy `.h5` weights, which Keras assigns by topological order, land on the right layers.
"""

import keras

from moth_tf import models

_WEIGHT_DECAY = 1e-4
# The authors' BN settings (Keras defaults would be momentum 0.99, epsilon 1e-3).
_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5


def _conv(filters, kernel_size, strides, name):
  return keras.layers.Conv2D(
      filters, kernel_size, strides=strides, padding="same", use_bias=True,
      kernel_initializer="he_normal",
      kernel_regularizer=keras.regularizers.L2(_WEIGHT_DECAY), name=name)


def _bn_relu(x, prefix, suffix=""):
  x = keras.layers.BatchNormalization(
      momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, name=f"{prefix}_bn{suffix}")(x)
  return keras.layers.ReLU(name=f"{prefix}_relu{suffix}")(x)


def _block(x, filters, down, name):
  """One pre-activation residual block; `down` halves the resolution and projects the shortcut."""
  o1 = _bn_relu(x, name, 1)
  c1 = _conv(filters, 3, 2 if down else 1, f"{name}_conv1")(o1)
  o2 = _bn_relu(c1, name, 2)
  c2 = _conv(filters, 3, 1, f"{name}_conv2")(o2)
  if down:
    # Projected from the pre-activated o1, as the authors do, and created after c2 to keep their
    # layer order.
    shortcut = _conv(filters, 1, 2, f"{name}_shortcut")(o1)
  else:
    shortcut = x
  return keras.layers.Add(name=f"{name}_add")([c2, shortcut])


def resnet(depth, input_shape, num_classes, normalization=None):
  """Builds the authors' pre-activation ResNet of the given depth.

  Args:
    depth: total depth D, with D = 6 * stack_n + 2 for stack_n >= 1 (20, 32, 56, 110, ...).
    input_shape: (H, W, C) of the [0,1] input images. Any size works: two stride-2 stages and
      global pooling at the end.
    num_classes: number of output logits.
    normalization: optional ((mean per channel), (std per channel)) applied as the first layer.

  Returns:
    A functional `keras.Model` named `resnet{depth}` that outputs logits.

  Raises:
    ValueError: if depth is not of the form 6 * n + 2 with n >= 1.
  """
  if depth < 8 or (depth - 2) % 6:
    raise ValueError(f"resnet depth must be 6*n+2 with n >= 1 (20, 32, 56, 110), got {depth}")
  stack_n = (depth - 2) // 6

  inputs, x = models.input_layers(input_shape, normalization)
  x = _conv(16, 3, 1, "stem_conv")(x)
  for stage, filters in enumerate((16, 32, 64), start=1):
    for block in range(1, stack_n + 1):
      # Stage 1 keeps the stem's 16 channels and resolution, so only later stages down-sample.
      down = stage > 1 and block == 1
      x = _block(x, filters, down, f"stage{stage}_block{block}")
  x = _bn_relu(x, "head")
  x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
  logits = keras.layers.Dense(
      num_classes, kernel_initializer="he_normal",
      kernel_regularizer=keras.regularizers.L2(_WEIGHT_DECAY), name="logits")(x)
  return keras.Model(inputs, logits, name=f"resnet{depth}")


def resnet20(input_shape, num_classes, normalization=None):
  """ResNet-20 (3 blocks per stage); see `resnet`."""
  return resnet(20, input_shape, num_classes, normalization=normalization)


def resnet32(input_shape, num_classes, normalization=None):
  """ResNet-32 (5 blocks per stage); see `resnet`."""
  return resnet(32, input_shape, num_classes, normalization=normalization)


def resnet56(input_shape, num_classes, normalization=None):
  """ResNet-56 (9 blocks per stage); see `resnet`."""
  return resnet(56, input_shape, num_classes, normalization=normalization)


def resnet110(input_shape, num_classes, normalization=None):
  """ResNet-110 (18 blocks per stage); see `resnet`."""
  return resnet(110, input_shape, num_classes, normalization=normalization)
