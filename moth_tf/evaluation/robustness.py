"""Robust accuracy under L-infinity PGD (the `--phase=robustness` measurement, reference 3.4).

The attack itself is moth_tf.attacks.pgd; this module attacks held-out images with it in batches
and counts what the model still classifies correctly.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from moth_tf.attacks.pgd import pgd_attack


@dataclasses.dataclass(frozen=True)
class RobustnessResult:
  """Outcome of `robust_accuracy`.

  Attributes:
    accuracy: fraction of all images still classified correctly after PGD (trace / total).
    per_class_accuracy: [num_classes] float64, robust accuracy of the images of each true class;
      NaN for a class with no images.
    confusion: [num_classes, num_classes] int64, confusion[true, adversarial prediction].
    num_examples: number of images attacked.
  """
  accuracy: float
  per_class_accuracy: np.ndarray
  confusion: np.ndarray
  num_examples: int

  def __float__(self) -> float:
    return self.accuracy


def _make_attack_fn(model, image_shape, epsilon, steps, step_size):
  """One tf.function that attacks a batch and predicts on it; the batch size is left open."""

  @tf.function(input_signature=[
      tf.TensorSpec([None, *image_shape], tf.float32),
      tf.TensorSpec([None], tf.int64),
      tf.TensorSpec([2], tf.int64),
  ])
  def attack_and_predict(x, y, seed):
    x_adv = pgd_attack(model, x, y, epsilon, steps, step_size, random_start=True, seed=seed)
    return tf.argmax(model(x_adv, training=False), axis=-1, output_type=tf.int64)

  return attack_and_predict


def robust_accuracy(model, x, y, epsilon, steps, step_size, batch_size: int = 256,
                    seed: int = 0) -> RobustnessResult:
  """Robust accuracy under random-start L-infinity PGD, as the reference's `measure` (3.4).

  The images are attacked in batches by one `tf.function` whose batch dimension is unspecified, so
  it is traced once per call for the given image shape (a smaller last batch does not retrace).
  Batch k uses the stateless seed (seed, k), which makes the result reproducible.

  Args:
    model: Keras model (or callable) returning LOGITS, called with training=False.
    x: [N, ...] images in [0, 1] (array-like; converted to float32).
    y: [N] integer labels.
    epsilon: L-infinity radius in [0, 1] pixel units.
    steps: number of PGD steps.
    step_size: size of each step.
    batch_size: images per attacked batch.
    seed: non-negative integer seed of the random starts.

  Returns:
    A `RobustnessResult`; `float(result)` and `result.accuracy` give the overall robust accuracy.

  Raises:
    ValueError: if x is empty, x and y disagree in length, or a label is outside the model's
      classes.
  """
  x = np.asarray(x, np.float32)
  y = np.asarray(y).astype(np.int64).reshape(-1)
  if len(x) == 0:
    raise ValueError("robust_accuracy needs at least one image")
  if len(x) != len(y):
    raise ValueError(f"{len(x)} images but {len(y)} labels")
  if batch_size <= 0:
    raise ValueError(f"batch_size must be > 0, got {batch_size}")

  # One clean image tells the number of classes, so bad labels fail before any attack runs.
  num_classes = int(model(tf.constant(x[:1]), training=False).shape[-1])
  if y.min() < 0 or y.max() >= num_classes:
    raise ValueError(f"labels must be in [0, {num_classes}), got [{y.min()}, {y.max()}]")

  attack_and_predict = _make_attack_fn(model, x.shape[1:], epsilon, steps, step_size)
  predictions = []
  for k, start in enumerate(range(0, len(x), batch_size)):
    batch = slice(start, start + batch_size)
    pred = attack_and_predict(
        tf.constant(x[batch]), tf.constant(y[batch]), tf.constant([seed, k], tf.int64))
    predictions.append(pred.numpy())
  predictions = np.concatenate(predictions)

  confusion = np.bincount(y * num_classes + predictions, minlength=num_classes * num_classes)
  confusion = confusion.reshape(num_classes, num_classes).astype(np.int64)
  per_class_total = confusion.sum(axis=1)
  per_class = np.full(num_classes, np.nan)
  present = per_class_total > 0
  per_class[present] = np.diag(confusion)[present] / per_class_total[present]
  return RobustnessResult(
      accuracy=float(np.trace(confusion)) / len(y),
      per_class_accuracy=per_class,
      confusion=confusion,
      num_examples=len(y))
