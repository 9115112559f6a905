"""Training-time augmentation: named recipes, applied per batch in the `tf.data` pipeline.

Every fit of a run (base training, poisoning, each hardening method, NAD's teacher and student, Neural
Cleanse's unlearning) draws its training batches through `moth_tf.data.make_pipeline`, which applies
the run's `Augmentation` there, before the batch reaches the model's `train_step`. So triggers, PGD
and UAP perturbations are applied to the augmented images, as in the reference, while validation,
test, class-distance and trigger-generation images are never augmented (they do not come from the
training pipeline).

Recipes (`--augment`):

  none        no augmentation
  flip        horizontal flip with probability 1/2
  crop        random crop with `pad` pixels of zero padding (an integer shift of up to `pad` pixels
              in each axis, the usual "pad and crop"), per image
  crop_flip   both
  shift       a continuous uniform shift in [-pad, pad] pixels with bilinear interpolation and zero
              fill (the reference's CIFAR-10 `ImageDataGenerator` shift)
  shift_flip  both (the reference's CIFAR-10 recipe with pad 4)

The transforms are TensorFlow's stateless image ops, seeded by (run seed, batch index in the stream),
rather than Keras's random preprocessing layers: a layer's random state restarts with the process, so
a resumed hardening run would not see the batches an uninterrupted one sees, and Keras's
`RandomCrop` draws one crop offset for the whole batch. Here a resumed run that skips the finished
batches draws exactly the same augmented batches as the uninterrupted run.
"""

import dataclasses
from typing import Optional

RECIPES = ("none", "flip", "crop", "crop_flip", "shift", "shift_flip")
# The value of --augment that keeps the data set's own recipe.
DEFAULT = "default"


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """A training-time augmentation recipe.

  Attributes:
    recipe: one of RECIPES.
    pad: the largest shift in pixels of the crop and shift recipes (ignored by none and flip).
  """
  recipe: str = "none"
  pad: int = 0

  def __post_init__(self):
    if self.recipe not in RECIPES:
      raise ValueError(f"--augment={self.recipe!r}: use one of {DEFAULT}, {', '.join(RECIPES)}")
    if self.pad < 0:
      raise ValueError(f"--augment_pad={self.pad}: use a number of pixels >= 0")
    if self.translates and self.pad < 1:
      raise ValueError(f"--augment={self.recipe} shifts images by up to --augment_pad pixels; give "
                       "--augment_pad >= 1")

  @property
  def active(self) -> bool:
    return self.recipe != "none"

  @property
  def flips(self) -> bool:
    return self.recipe.endswith("flip")

  @property
  def translates(self) -> bool:
    return self.recipe.startswith(("crop", "shift"))

  def describe(self) -> str:
    """E.g. "random crop (2 px padding) + horizontal flip", or "none"."""
    parts = []
    if self.recipe.startswith("crop"):
      parts.append(f"random crop ({self.pad} px padding)")
    elif self.recipe.startswith("shift"):
      parts.append(f"random shift (up to {self.pad} px, bilinear)")
    if self.flips:
      parts.append("horizontal flip")
    return " + ".join(parts) or "none"

  def to_json(self) -> dict:
    return {"recipe": self.recipe, "pad": self.pad if self.translates else 0,
            "description": self.describe()}


NONE = Augmentation()


def resolve(default: Augmentation, recipe: Optional[str] = None, pad: Optional[int] = None,
            image_side: int = 32) -> Augmentation:
  """The augmentation of a run: `recipe` and `pad` where given, else the data set's `default`.

  Args:
    default: the data set's recipe (DatasetInfo.augment).
    recipe: a name from RECIPES, DEFAULT or None (the data set's).
    pad: pixels of the crop/shift recipes; None keeps the default's or, when the default does not
      translate, an eighth of `image_side` (CIFAR-10's 4 px of 32; 1 px on 8x8 digits).
    image_side: the images' height as trained (after any resize).
  """
  if recipe in (None, DEFAULT):
    recipe = default.recipe
  if pad is None:
    pad = default.pad if default.translates else max(1, round(image_side / 8))
  if recipe not in RECIPES:
    raise ValueError(f"--augment={recipe!r}: use one of {DEFAULT}, {', '.join(RECIPES)}")
  return Augmentation(recipe, pad if recipe.startswith(("crop", "shift")) else 0)


def augment_batch(images, augmentation: Augmentation, seed):
  """Applies `augmentation` to a batch [B, H, W, C], each image drawing its own transform.

  Args:
    images: float images in [0, 1].
    augmentation: the recipe.
    seed: a [2] integer tensor; the same seed gives the same batch.

  Returns:
    The augmented batch, same shape and dtype.
  """
  import tensorflow as tf

  if not augmentation.active:
    return images
  seed = tf.cast(seed, tf.int64)
  flip_seed, shift_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  if augmentation.translates:
    images = _translate(images, augmentation.pad, shift_seed,
                        integer=augmentation.recipe.startswith("crop"))
  if augmentation.flips:
    images = tf.image.stateless_random_flip_left_right(images, flip_seed)
  return images


def _translate(images, pad: int, seed, integer: bool):
  """Shifts each image by its own (dy, dx) in [-pad, pad] pixels, filling with zeros."""
  import tensorflow as tf

  shape = tf.shape(images)
  batch, height, width = shape[0], shape[1], shape[2]
  if integer:
    offsets = tf.cast(tf.random.stateless_uniform([batch, 2], seed, minval=-pad, maxval=pad + 1,
                                                  dtype=tf.int32), tf.float32)
  else:
    offsets = tf.random.stateless_uniform([batch, 2], seed, minval=-pad, maxval=pad)
  # crop_and_resize samples output pixel (i, j) at input (y1 * (H - 1) + i, x1 * (W - 1) + j) for
  # a box of the image's own size; a box moved by -offset therefore shifts the content by +offset,
  # and samples outside the image take the extrapolation value (zero fill).
  h = tf.cast(tf.maximum(height - 1, 1), tf.float32)
  w = tf.cast(tf.maximum(width - 1, 1), tf.float32)
  y1 = -offsets[:, 0] / h
  x1 = -offsets[:, 1] / w
  boxes = tf.stack([y1, x1, y1 + 1.0, x1 + 1.0], axis=1)
  out = tf.image.crop_and_resize(images, boxes, tf.range(batch), tf.stack([height, width]),
                                 method="nearest" if integer else "bilinear",
                                 extrapolation_value=0.0)
  return tf.cast(out, images.dtype)
