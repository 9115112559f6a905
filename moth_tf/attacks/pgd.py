"""L-infinity projected gradient descent (PGD) on [0, 1] images, as an in-graph loop.

MOTH uses PGD twice (reference spec sections 2.1 and 3.4): to make adversarial batches while
hardening in "adv" mode, and to measure robustness. Both use an L-infinity ball, a uniform random
start and signed-gradient steps followed by a projection onto the ball and onto the valid pixel
range. All images in moth_tf are float in [0, 1] (normalisation lives inside the model), so the
attack works on that scale; CIFAR's 8/255 budget is epsilon=8/255 here.

The attack expects a model that returns LOGITS and uses the true softmax cross-entropy on them.
(The reference `measure` ran its attack on the softmax output as if it were logits; this
is not reproduced.)

The loop is a `tf.while_loop`, so inside a `tf.function` (for example a Keras `train_step`, per
replica under tf.distribute) it stays one loop in the graph instead of being unrolled `steps` times,
and `steps` may be a tensor. Called eagerly, the same code runs step by step.
"""

from typing import Optional, Union

import numpy as np
import tensorflow as tf

from moth_tf import _deprecated

SeedLike = Union[int, tf.Tensor, np.ndarray]


def _stateless_seed(seed: SeedLike) -> tf.Tensor:
  """Turns an int or a scalar / [2] integer tensor into the [2] int64 seed of stateless ops."""
  seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
  if seed.shape.rank == 0:
    seed = tf.stack([seed, tf.constant(0, tf.int64)])
  return tf.reshape(seed, [2])


def _sparse_labels(y) -> tf.Tensor:
  """Integer class labels of shape [B]; [B, 1] is accepted and squeezed."""
  y = tf.convert_to_tensor(y)
  if y.shape.rank == 2 and y.shape[-1] == 1:
    y = tf.squeeze(y, axis=-1)
  if y.shape.rank != 1:
    raise ValueError(f"labels must be sparse class indices of shape [B], got shape {y.shape}")
  if not y.dtype.is_integer:
    y = tf.cast(y, tf.int64)
  return y


def _input_gradient(model, x_adv, y, training):
  """Gradient of the summed cross-entropy on the logits with respect to the input images."""
  with tf.GradientTape() as tape:
    tape.watch(x_adv)
    logits = tf.cast(model(x_adv, training=training), tf.float32)
    # Summed rather than averaged: only the sign of the gradient is used, and a mean over a large
    # batch could underflow small per-image gradients to 0 (no step at all).
    loss = tf.reduce_sum(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
  # A pixel the loss does not depend on has no gradient; treat it as 0 (no move).
  return tape.gradient(loss, x_adv, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def pgd_attack(model, x, y, epsilon, steps, step_size, random_start: bool = True,
               seed: Optional[SeedLike] = None, training: bool = False) -> tf.Tensor:
  """Untargeted L-infinity PGD that maximises the cross-entropy of the true labels.

  x_0 = clip(x + U(-epsilon, epsilon), 0, 1) (or x without a random start), then `steps` times
  x_{k+1} = clip(x_k + step_size * sign(grad), max(x - epsilon, 0), min(x + epsilon, 1)), which is
  the projection onto the epsilon-ball around x followed by the one onto [0, 1].

  Works eagerly and inside a `tf.function` (including a Keras `train_step`, per replica). Scalars
  may be Python numbers or tensors; passing tensors lets one trace serve several settings.

  Args:
    model: callable (e.g. a Keras model) mapping a batch of images to LOGITS [B, num_classes].
    x: [B, ...] float images in [0, 1]. Non-float input is cast to float32.
    y: [B] integer true labels ([B, 1] is accepted).
    epsilon: L-infinity radius in [0, 1] pixel units; 0 returns x unchanged.
    steps: number of gradient steps (int or scalar int tensor); 0 returns the random start.
    step_size: size of each signed-gradient step.
    random_start: start from a uniform random point of the epsilon-ball (Madry et al.).
    seed: None to draw the random start from TF's stateful RNG (different on every call), or an
      int / scalar / [2] integer tensor for a stateless, reproducible random start.
    training: passed to the model call. Keep False for models with batch normalisation: a
      training-mode call would update the moving statistics at every attack step.

  Returns:
    [B, ...] adversarial images of x's dtype, with gradients stopped. Every entry is within
    epsilon of x and within [0, 1] (provided x itself is in [0, 1]).
  """
  x = tf.convert_to_tensor(x)
  if not x.dtype.is_floating:
    x = tf.cast(x, tf.float32)
  y = _sparse_labels(y)
  epsilon = tf.cast(epsilon, x.dtype)
  step_size = tf.cast(step_size, x.dtype)
  steps = tf.cast(steps, tf.int32)

  # The intersection of the epsilon-ball and [0, 1] is a box, so one clip does both projections.
  lower = tf.maximum(x - epsilon, 0.0)
  upper = tf.minimum(x + epsilon, 1.0)

  if random_start:
    if seed is None:
      noise = tf.random.uniform(tf.shape(x), -1.0, 1.0, dtype=x.dtype)
    else:
      noise = tf.random.stateless_uniform(
          tf.shape(x), seed=_stateless_seed(seed), minval=-1.0, maxval=1.0, dtype=x.dtype)
    x_adv = tf.clip_by_value(x + epsilon * noise, lower, upper)
  else:
    x_adv = x

  def body(i, x_adv):
    grad = _input_gradient(model, x_adv, y, training)
    x_adv = x_adv + step_size * tf.cast(tf.sign(grad), x.dtype)
    return i + 1, tf.clip_by_value(x_adv, lower, upper)

  # An explicit while_loop (not a Python loop) so that graph mode keeps a single loop body.
  _, x_adv = tf.while_loop(
      lambda i, _: i < steps, body, (tf.constant(0, tf.int32), x_adv), parallel_iterations=1)
  return tf.stop_gradient(x_adv)


# Robust accuracy is an evaluation: moth_tf.evaluation.robustness.
__getattr__ = _deprecated.moved_attributes(__name__, {
    "robust_accuracy": "moth_tf.evaluation.robustness",
    "RobustnessResult": "moth_tf.evaluation.robustness",
})
