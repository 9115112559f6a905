"""Streaming training data: a `tf.data.Dataset` used as it comes, with a bounded sample in memory.

A hardening (or a base training) on a stream never reads the stream into memory: its batches go
straight into `model.fit`. What has to be in memory is small and bounded:

* the trigger images: up to `per_class` images of every class (`class_sample`), the first ones the
  stream yields, read once before training (MOTH draws each generation's images from them, Neural
  Cleanse and NAD their clean images);
* the validation and test images, which the caller passes as arrays or reads with `read_all`.

A stream is a `tf.data.Dataset` of (image, label) pairs, batched or not, finite or endless: images
float in [0, 1] (uint8 is refused: map it to x / 255 first), labels integer class indices (scalars
or one-element vectors). `examples` turns it into single (float32 image, int64 label) examples and
`training_batches` into the batches a fit trains on.
"""

from typing import Optional, Tuple

import numpy as np

# Images per class held in memory for trigger generation when the training data is a stream
# (HardenConfig.trigger_pool); 200 per class holds every training image of the digits.
DEFAULT_PER_CLASS = 200
# A training stream's shuffle buffer (`shuffle_buffer_size`): at most this many images and this
# many bytes of them, so that large images keep the buffer small.
SHUFFLE_BUFFER_IMAGES = 10_000
SHUFFLE_BUFFER_BYTES = 256 * 2**20
# `class_sample` stops after reading this many times `per_class * num_classes` images, whatever
# it has found by then (a class missing from the stream would otherwise read all of it).
SCAN_FACTOR = 10


def check_spec(ds, what: str):
  """Raises a one-line ValueError unless `ds` is a tf.data.Dataset of (image, label) tensors with
  float (or integer, not uint8) [H, W, C] images, batched or not. Returns the images' rank."""
  import tensorflow as tf

  if not isinstance(ds, tf.data.Dataset):
    raise ValueError(f"{what} must be a tf.data.Dataset of (image, label), got "
                     f"{type(ds).__name__}")
  spec = ds.element_spec
  if not (isinstance(spec, tuple) and len(spec) == 2 and
          all(isinstance(s, tf.TensorSpec) for s in spec)):
    raise ValueError(f"{what}: a tf.data.Dataset must yield (image, label) pairs of tensors, but "
                     f"its elements are {spec}; map it to (image, label) first")
  rank = spec[0].shape.rank
  if rank not in (3, 4):
    raise ValueError(f"{what}: the tf.data.Dataset's images have shape {spec[0].shape}; give "
                     "[H, W, C] images, or batches of them [B, H, W, C]")
  if spec[0].dtype == tf.uint8:
    raise ValueError(f"{what}: the tf.data.Dataset's images are uint8 (0..255); map them to "
                     "floats in [0, 1] first, e.g. ds.map(lambda x, y: (x / 255, y))")
  if not (spec[0].dtype.is_floating or spec[0].dtype.is_integer):
    raise ValueError(f"{what}: the tf.data.Dataset's images are {spec[0].dtype.name}, not numbers")
  if not spec[1].dtype.is_integer and not spec[1].dtype.is_floating:
    raise ValueError(f"{what}: the tf.data.Dataset's labels are {spec[1].dtype.name}; give "
                     "integer class indices")
  return rank


def examples(ds, what: str = "train"):
  """Single (float32 [H, W, C] image, int64 label) examples of a (batched or not) dataset."""
  import tensorflow as tf

  rank = check_spec(ds, what)
  if rank == 4:
    ds = ds.unbatch()
  return ds.map(lambda x, y: (tf.cast(x, tf.float32), tf.cast(tf.reshape(y, []), tf.int64)))


def image_shape(ds) -> Tuple[Optional[int], ...]:
  """(H, W, C) of a dataset's images as its element spec says (None where it does not)."""
  shape = ds.element_spec[0].shape
  return tuple(shape[-3:].as_list())


def known_count(ds) -> Optional[int]:
  """The number of elements of a dataset when tf.data knows it without reading (else None)."""
  import tensorflow as tf

  count = int(ds.cardinality())
  return None if count in (int(tf.data.INFINITE_CARDINALITY),
                           int(tf.data.UNKNOWN_CARDINALITY)) else count


def is_endless(ds) -> bool:
  """Whether tf.data knows the dataset to be endless (a repeat(), say)."""
  import tensorflow as tf
  return int(ds.cardinality()) == int(tf.data.INFINITE_CARDINALITY)


def class_sample(ds, num_classes: int, per_class: int = DEFAULT_PER_CLASS,
                 max_images: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
  """Up to `per_class` images of every class: the first ones of the stream, in stream order.

  Reads single examples one at a time and stops as soon as every class has `per_class` images, the
  stream ends, or `max_images` have been read (default SCAN_FACTOR * per_class * num_classes),
  so an endless or very large stream is read only as far as the sample needs.

  Args:
    ds: single (image, label) examples (`examples`).
    num_classes: n; labels outside 0..n-1 are a ValueError.
    per_class: images kept per class.
    max_images: the most images read.

  Returns:
    (images float32 [N, H, W, C], labels int64 [N]) in the order the stream gave them.
  """
  limit = max_images or SCAN_FACTOR * per_class * num_classes
  counts = np.zeros(num_classes, np.int64)
  images, labels = [], []
  read = 0
  for x, y in ds.take(limit).as_numpy_iterator():
    read += 1
    y = int(y)
    if not 0 <= y < num_classes:
      raise ValueError(f"train: label {y} (image {read} of the stream) is outside the model's "
                       f"classes 0..{num_classes - 1}")
    if counts[y] < per_class:
      counts[y] += 1
      images.append(x)
      labels.append(y)
      if counts.min() >= per_class:
        break
  if not images:
    raise ValueError("train: the tf.data.Dataset is empty")
  x = np.stack(images).astype(np.float32, copy=False)
  low, high = float(x.min()), float(x.max())
  if not (np.isfinite(low) and np.isfinite(high)) or low < 0.0 or high > 1.0:
    raise ValueError(f"train: the stream's images span [{low:.4g}, {high:.4g}], outside [0, 1] "
                     "(or not finite); scale them to [0, 1] (e.g. x / 255) and move any "
                     "normalisation into the model")
  return x, np.asarray(labels, np.int64)


def read_all(ds, what: str) -> Tuple[np.ndarray, np.ndarray]:
  """Every (image, label) of a finite dataset as two arrays (validation and test images)."""
  if is_endless(ds):
    raise ValueError(f"{what}: the tf.data.Dataset is endless (a repeat()?); pass a finite one")
  images, labels = [], []
  for x, y in examples(ds, what).batch(1024).as_numpy_iterator():
    images.append(x)
    labels.append(y)
  if not images:
    raise ValueError(f"{what}: the tf.data.Dataset is empty")
  return np.concatenate(images), np.concatenate(labels)


def shuffle_buffer_size(image_shape, count: Optional[int] = None) -> int:
  """The shuffle buffer of a stream of float32 images of `image_shape` (and `count` images, when
  known): SHUFFLE_BUFFER_IMAGES, fewer where their bytes would pass SHUFFLE_BUFFER_BYTES, at
  least 1, never more than the stream holds."""
  image_bytes = 4 * int(np.prod(image_shape))
  size = min(SHUFFLE_BUFFER_IMAGES, SHUFFLE_BUFFER_BYTES // max(image_bytes, 1))
  if count:
    size = min(size, count)
  return max(1, int(size))


def count(ds) -> int:
  """The number of elements of a finite dataset: tf.data's own count, else one pass over it."""
  known = known_count(ds)
  if known is not None:
    return known
  if is_endless(ds):
    raise ValueError("the tf.data.Dataset is endless (a repeat()?); its size cannot be counted")
  return int(ds.reduce(np.int64(0), lambda n, *_: n + 1))


def training_batches(ds, batch_size: int, augment=None, seed: int = 0, shuffle_buffer: int = 0):
  """The endless batches a fit trains on: `ds`'s examples in stream order (no shuffle by default:
  the stream is used as it is), batched, repeated, augmented like moth_tf.data.make_pipeline's
  batches.

  Args:
    ds: single (image, label) examples (`examples`).
    batch_size: the global batch size.
    augment: moth_tf.data.augment.Augmentation or None.
    seed: the augmentation's (and the shuffle's) seed (with each batch's index in the stream).
    shuffle_buffer: > 0: shuffle the examples through a buffer of this many (seeded, a new order
      every pass over the stream); memory holds the buffer, never the whole stream.
  """
  import tensorflow as tf
  from moth_tf.data import augment as augment_lib

  if shuffle_buffer:
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
  ds = ds.repeat().batch(batch_size)
  if augment is not None and augment.active:
    base_seed = tf.constant(seed or 0, tf.int64)
    ds = ds.enumerate().map(lambda index, batch: (
        augment_lib.augment_batch(batch[0], augment, tf.stack([base_seed, index])), batch[1]),
                            num_parallel_calls=tf.data.AUTOTUNE)
  options = tf.data.Options()
  # A generator or a user's pipeline may have no files to shard by: every worker takes its
  # replicas' part of each global batch (no effect on one machine).
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
  return ds.with_options(options).prefetch(2)
