"""Data sets: one registry, one module per source.

    splits = moth_tf.data.load_dataset("digits")
    train_ds = moth_tf.data.make_pipeline(splits.x_train, splits.y_train, batch_size=128,
                                          shuffle=True, augment=splits.augmentation)

All images are float32 in [0, 1], NHWC; labels are int64 class indices.

Besides the registered names (DATASETS), users' own data loads by name, with a streamed training
split (moth_tf.data.own): `tfds:NAME` (a tensorflow_datasets image-classification set) and
`folder:PATH` (one sub-folder of images per class).
"""

import importlib
from typing import Dict, Optional, Tuple

import numpy as np

from moth_tf.data import augment as augment_lib
from moth_tf.data.augment import Augmentation
from moth_tf.data.base import DatasetInfo
from moth_tf.data.base import DatasetSplits
from moth_tf.data.base import DatasetUnavailableError
from moth_tf.data.base import check_splits
from moth_tf.data.base import PGDSettings
from moth_tf.data import own as own_lib
from moth_tf.data import stream as stream_lib

# name -> (module, info attribute, loader function). Modules are imported lazily so that importing
# moth_tf does not import tensorflow_datasets or scikit-learn.
_REGISTRY: Dict[str, Tuple[str, str, str]] = {
    "digits": ("moth_tf.data.digits", "INFO", "load"),
    "cifar10": ("moth_tf.data.tfds_sets", "CIFAR10_INFO", "load_cifar10"),
    "svhn": ("moth_tf.data.tfds_sets", "SVHN_INFO", "load_svhn"),
    "gtsrb": ("moth_tf.data.local_sets", "GTSRB_INFO", "load_gtsrb"),
    "lisa": ("moth_tf.data.local_sets", "LISA_INFO", "load_lisa"),
    "fashion_mnist": ("moth_tf.data.fashion_mnist", "INFO", "load"),
}

DATASETS = tuple(_REGISTRY)
# The data sets that tfds can download and prepare itself (the others come from local files).
DOWNLOADABLE = ("cifar10", "svhn")


def choices_text() -> str:
  """Every form --dataset takes, for messages."""
  return (f"{', '.join(DATASETS)}, tfds:NAME (a tensorflow_datasets image-classification set) or "
          "folder:PATH (a folder with one sub-folder of images per class)")


def check_dataset_name(name: str) -> Optional[str]:
  """Why `name` is no data set (one line), or None: a registered name, `tfds:NAME`, or
  `folder:PATH` naming a directory. The contents are checked when the data set is loaded."""
  if own_lib.is_own(name):
    return own_lib.check_name(name)
  if name not in _REGISTRY:
    return f"unknown dataset {name!r}; use one of {choices_text()}"
  return None


def is_own(name: str) -> bool:
  """Whether `name` is users' own data (`tfds:NAME`, `folder:PATH`) rather than a registered set."""
  return own_lib.is_own(name)


def dataset_dir_name(name: str) -> str:
  """`name` as a directory-name component (run directories): registered names as they are,
  `tfds:NAME` -> `tfds-NAME`, `folder:PATH` -> `folder-BASENAME-HASH` (moth_tf.data.own)."""
  return own_lib.run_dir_name(name)


def _entry(name: str):
  if name not in _REGISTRY:
    raise ValueError(f"unknown dataset {name!r}; use one of {choices_text()}")
  module_name, info_attr, loader_attr = _REGISTRY[name]
  module = importlib.import_module(module_name)
  return getattr(module, info_attr), getattr(module, loader_attr)


def dataset_info(name: str, data_dir: Optional[str] = None,
                 image_size: Optional[int] = None) -> DatasetInfo:
  """Static facts (class count, shape, default model, PGD budgets) of a data set.

  A registered set's are fixed. Those of `tfds:NAME` / `folder:PATH` come from the tfds builder's
  metadata (nothing is downloaded) or the folder's class folders and first image, with
  `image_size` applied (moth_tf.data.own.describe; its DatasetUnavailableError for a set that
  cannot be used).
  """
  if own_lib.is_own(name):
    return own_lib.describe(name, data_dir, image_size)
  return _entry(name)[0]


def load_dataset(name: str, data_dir: Optional[str] = None,
                 image_size: Optional[int] = None, augment: Optional[str] = None,
                 augment_pad: Optional[int] = None, download: bool = True,
                 trigger_pool: int = stream_lib.DEFAULT_PER_CLASS) -> DatasetSplits:
  """Loads a data set's train/val/test splits.

  A registered set comes as arrays. `tfds:NAME` and `folder:PATH` stream their training split
  (`train_stream`, `train_count`; x_train/y_train then hold up to `trigger_pool` images per class)
  and hold validation and test as arrays; their split rules are in moth_tf.data.own.

  Args:
    name: one of DATASETS, `tfds:NAME` or `folder:PATH`.
    data_dir: where tfds data, prepared `.npz` files or the Fashion-MNIST IDX files live (None:
      each loader's default locations).
    image_size: if given, every split is resized (bilinear) to image_size x image_size.
    augment: the training augmentation recipe (moth_tf.data.augment.RECIPES); None or "default":
      the data set's own.
    augment_pad: pixels of the crop/shift recipes (None: the data set's, else an eighth of the
      image side).
    download: let tfds download and prepare a missing DOWNLOADABLE data set into `data_dir` (or
      tfds's default directory). False, or $MOTH_TF_NO_DOWNLOAD=1, never touches the network;
      the other data sets are never downloaded. `tfds:NAME` follows the same rules.
    trigger_pool: streamed sets: the training images per class held in memory (the first ones of
      the stream; HardenConfig.trigger_pool).

  Returns:
    DatasetSplits with float32 [0,1] NHWC images, int64 labels, and the resolved `augmentation`.

  Raises:
    DatasetUnavailableError: the files are missing (and, where allowed, could not be
      downloaded), or hold data no model should train on
      (non-finite or out-of-range pixels, bad labels or shapes); the message says what to do.
  """
  if own_lib.is_own(name):
    error = own_lib.check_name(name)
    if error:
      raise DatasetUnavailableError(f"{name}: {error}")
    # Resolved first: a bad recipe is refused before the data is read (own data: no default).
    augmentation = augment_lib.resolve(augment_lib.NONE, augment, augment_pad, image_size or 32)
    splits = own_lib.load(name, data_dir, image_size, download, trigger_pool)
    if augment_pad is None and not image_size:
      # The default shift is an eighth of the image side, known only now.
      augmentation = augment_lib.resolve(augment_lib.NONE, augment, None, splits.image_shape[0])
    check_splits(splits, name)
    splits.augmentation = augmentation
    return splits
  info, loader = _entry(name)
  # Resolved first: a bad recipe is refused before the data is read.
  augmentation = augment_lib.resolve(info.augment, augment, augment_pad,
                                     image_size or info.image_shape[0])
  if name == "digits":
    splits = loader()
  elif name in DOWNLOADABLE:
    splits = loader(data_dir, download=download)
  else:
    splits = loader(data_dir)
  # Checked before resizing: the resize clips to [0, 1], which would hide out-of-range values; a
  # resize of checked splits keeps them valid (same size everywhere, finite, clipped).
  check_splits(splits, f"{name} data set" + (f" in {data_dir}" if data_dir else ""))
  if image_size and tuple(splits.x_train.shape[1:3]) != (image_size, image_size):
    splits = resize_splits(splits, image_size)
  splits.augmentation = augmentation
  return splits


def resize_splits(splits: DatasetSplits, image_size: int) -> DatasetSplits:
  """Returns a copy of `splits` with every image resized (bilinear) to image_size x image_size."""
  import tensorflow as tf

  def resize(x):
    out = []
    for start in range(0, len(x), 4096):  # Chunks keep peak memory small for the large sets.
      chunk = tf.image.resize(x[start:start + 4096], (image_size, image_size), method="bilinear")
      out.append(np.clip(chunk.numpy(), 0.0, 1.0))
    if not out:
      return np.zeros((0, image_size, image_size, x.shape[-1]), np.float32)
    return np.concatenate(out).astype(np.float32)

  import dataclasses
  return dataclasses.replace(splits, x_train=resize(splits.x_train), x_val=resize(splits.x_val),
                             x_test=resize(splits.x_test))


def make_pipeline(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool = False,
                  augment: Optional[Augmentation] = None, seed: Optional[int] = 0,
                  repeat: bool = False, drop_remainder: bool = False, skip_batches: int = 0):
  """A `tf.data` pipeline of (image, label) batches.

  Args:
    x, y: arrays from DatasetSplits.
    batch_size: the global batch size (under a distribution strategy Keras splits it per replica).
    shuffle: reshuffle every epoch (seeded).
    augment: the training augmentation (moth_tf.data.augment), applied to each batch with a seed
      of (seed, the batch's index in the stream); None applies none. Only training pipelines pass
      one.
    seed: shuffle/augmentation seed.
    repeat: repeat forever (for step-counted training).
    drop_remainder: drop the last partial batch.
    skip_batches: start after this many batches of the stream (a resumed run's finished epochs);
      the batches after them are shuffled and augmented exactly as in an uninterrupted run.
  """
  import tensorflow as tf
  ds = tf.data.Dataset.from_tensor_slices((x, y))
  if shuffle:
    ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
  if repeat:
    ds = ds.repeat()
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  if augment is not None and augment.active:
    # Numbered before the skip, so a resumed stream keeps its batches' augmentation seeds.
    ds = ds.enumerate()
  if skip_batches:
    ds = ds.skip(skip_batches)
  if augment is not None and augment.active:
    base_seed = tf.constant(seed or 0, tf.int64)
    ds = ds.map(lambda index, batch: (
        augment_lib.augment_batch(batch[0], augment, tf.stack([base_seed, index])), batch[1]),
                num_parallel_calls=tf.data.AUTOTUNE)
  options = tf.data.Options()
  # In-memory arrays have no files to shard by: under MultiWorkerMirroredStrategy every worker
  # takes its replicas' part of each global batch (no effect on one machine).
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
  return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def samples_per_class(x: np.ndarray, y: np.ndarray, num_classes: int, per_class: int,
                      rng: np.random.Generator) -> Dict[int, np.ndarray]:
  """Up to `per_class` random images of every class, as {class: images}."""
  out = {}
  for c in range(num_classes):
    idx = np.flatnonzero(y == c)
    if len(idx) > per_class:
      idx = np.sort(rng.choice(idx, per_class, replace=False))
    out[c] = x[idx]
  return out


__all__ = [
    "Augmentation", "DATASETS", "DOWNLOADABLE", "DatasetInfo", "DatasetSplits",
    "DatasetUnavailableError", "PGDSettings", "check_dataset_name", "check_splits", "choices_text",
    "dataset_dir_name", "dataset_info", "is_own", "load_dataset",
    "make_pipeline", "resize_splits", "samples_per_class",
]
