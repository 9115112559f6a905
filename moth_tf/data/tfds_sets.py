"""CIFAR-10 and SVHN (cropped digits) from a prepared tensorflow_datasets directory.

The splits follow the reference implementation:

  * CIFAR-10: validation = the first 2,000 training images, train = the other 48,000, test = the
    10,000 test images.
  * SVHN (tfds `svhn_cropped`): validation = the first 6,000 training images, train = the other
    67,257, test = the 26,032 test images; the 531,131 "extra" images are not used.

"First" means in the original file order (CIFAR-10's data_batch_1..5, SVHN's train_32x32.mat), the
order the reference got from `keras.datasets.cifar10` and `scipy.io.loadmat`. tfds stores examples
in a hashed order, so each split is sorted back by the `id` feature ("train_00000", ...), which tfds
writes as the zero-padded index into the original files.

Nothing is ever downloaded: on a machine without the data the loaders raise
`DatasetUnavailableError` within a fraction of a second, naming the directory they looked in and
how to fill it.
"""

import os

import numpy as np

from moth_tf.data import augment
from moth_tf.data import base

CIFAR10_INFO = base.DatasetInfo(
    name="cifar10", num_classes=10, image_shape=(32, 32, 3),
    class_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"),
    normalization=((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    # The authors' recipe: flip and a continuous +-4 px shift with zero fill.
    augment=augment.Augmentation("shift_flip", 4),
    train_pgd=base.PGDSettings(8 / 255, 7, 2 / 255),
    eval_pgd=base.PGDSettings(8 / 255, 20, 2 / 255),
    default_model="resnet20")

SVHN_INFO = base.DatasetInfo(
    name="svhn", num_classes=10, image_shape=(32, 32, 3),
    class_names=tuple(str(i) for i in range(10)),
    train_pgd=base.PGDSettings(0.03, 8, 0.005),
    eval_pgd=base.PGDSettings(0.03, 100, 0.001),
    default_model="nin")

# Number of leading training images (in original order) held out for validation.
CIFAR10_VAL_SIZE = 2000
SVHN_VAL_SIZE = 6000

# Examples per tfds batch while reading a split into memory. A finite size is used instead of
# batch_size=-1: for -1 tfds batches by the split sizes recorded in the data set's metadata, and
# where those are unknown (as under `tfds.testing.mock_data`) it batches by sys.maxsize, which
# aborts the whole process inside tf.data.
_READ_BATCH = 8192


def load_cifar10(data_dir=None) -> base.DatasetSplits:
  """Loads CIFAR-10 from tfds: 48,000 train / 2,000 validation / 10,000 test images.

  Args:
    data_dir: the tfds data directory (None: $TFDS_DATA_DIR, else ~/tensorflow_datasets).

  Returns:
    DatasetSplits with float32 [0,1] 32x32x3 images and int64 labels.

  Raises:
    DatasetUnavailableError: `cifar10` is not prepared in the data directory.
  """
  return _load_carved(CIFAR10_INFO, "cifar10", CIFAR10_VAL_SIZE, data_dir)


def load_svhn(data_dir=None) -> base.DatasetSplits:
  """Loads SVHN (tfds `svhn_cropped`): 67,257 train / 6,000 validation / 26,032 test images.

  Args:
    data_dir: the tfds data directory (None: $TFDS_DATA_DIR, else ~/tensorflow_datasets).

  Returns:
    DatasetSplits with float32 [0,1] 32x32x3 images and int64 labels.

  Raises:
    DatasetUnavailableError: `svhn_cropped` is not prepared in the data directory.
  """
  return _load_carved(SVHN_INFO, "svhn_cropped", SVHN_VAL_SIZE, data_dir)


def _load_carved(info, tfds_name, val_size, data_dir):
  """Reads train and test, then holds out the first `val_size` training images for validation."""
  x_train, y_train = _read_split(info.name, tfds_name, "train", data_dir)
  x_test, y_test = _read_split(info.name, tfds_name, "test", data_dir)
  if len(x_train) <= val_size:
    raise ValueError(f"{tfds_name} train split has only {len(x_train)} images; the validation "
                     f"split alone needs the first {val_size}")
  return base.DatasetSplits(
      info,
      base.as_float_images(x_train[val_size:]), y_train[val_size:],
      base.as_float_images(x_train[:val_size]), y_train[:val_size],
      base.as_float_images(x_test), y_test)


def _read_split(name, tfds_name, split, data_dir):
  """One tfds split as (uint8 images, int64 labels), in the original files' order."""
  import tensorflow_datasets as tfds  # Imported lazily: tfds is slow to import.

  try:
    # The examples are read as dicts rather than (image, label) pairs to get the `id` feature.
    ds = tfds.load(tfds_name, split=split, data_dir=data_dir, download=False,
                   batch_size=_READ_BATCH)
  except (AssertionError, tfds.core.registered.DatasetNotFoundError) as err:
    # With download=False, tfds signals missing data with an AssertionError ("could not find data
    # in ...") after only looking at the local directory, so this fails fast without network.
    raise base.DatasetUnavailableError(_missing_message(name, tfds_name, data_dir)) from err
  images, labels, ids = [], [], []
  for batch in tfds.as_numpy(ds):
    images.append(batch["image"])
    labels.append(batch["label"])
    ids.append(batch["id"])
  if not images:
    return np.zeros((0, 32, 32, 3), np.uint8), np.zeros((0,), np.int64)
  # Stable, so any duplicate ids keep tfds's (deterministic) relative order.
  order = np.argsort(np.concatenate(ids), kind="stable")
  return np.concatenate(images)[order], np.concatenate(labels)[order].astype(np.int64)


def _missing_message(name, tfds_name, data_dir):
  """One line: where tfds looked, that we do not download, and how to get the data here."""
  looked_in = data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.join(
      os.path.expanduser("~"), "tensorflow_datasets")
  return (
      f"{_display_name(name, tfds_name)} is not in the tfds data dir {looked_in}, and moth_tf "
      f"never downloads data (download=False; this machine cannot reach the download servers). "
      f"To get it: on a machine with internet run `python -c \"import tensorflow_datasets as tfds; "
      f"tfds.builder('{tfds_name}').download_and_prepare()\"` (or `tfds build {tfds_name}`), "
      f"then copy ~/tensorflow_datasets (at least its {tfds_name}/ folder) to {looked_in} on this "
      f"machine, or pass --data_dir=DIR pointing at such a copy.")


def _display_name(name, tfds_name):
  """The registry name, plus tfds's where they differ: "svhn (tfds name svhn_cropped)"."""
  return name if name == tfds_name else f"{name} (tfds name {tfds_name})"
